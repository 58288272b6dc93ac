"""fp16 dynamic modules (torch's float16_dynamic_qconfig) and int8 weight-only Linear (ferroquant's
int8_weight_only_qconfig): float activations, low-precision weights."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
from conftest import engines
from torch import nn

nnqd = fq.nn.quantized.dynamic


def _torch_fp16(model: nn.Module, types: set) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.quantize_dynamic(model, types, dtype=torch.float16)


@pytest.mark.parametrize("shape", [(1, 64, 32), (5, 33, 17), (16, 256, 129)])
def test_fp16_linear_matches_torch_and_fp32(shape):
    m, k, n = shape
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, n)).eval()
    x = torch.randn(m, k)
    ours = fq.quantize_dynamic(model, {nn.Linear}, dtype=torch.float16)
    theirs = _torch_fp16(model, {nn.Linear})
    assert isinstance(ours[0], nnqd.Float16Linear) and "dtype=torch.float16" in repr(ours[0])
    with torch.no_grad():
        got, want, ref = ours(x), theirs(x), model(x)
    # the same fp16 weights; only the float summation order differs
    assert (got - want).abs().max() <= 1e-5 * ref.abs().max()
    assert (got - ref).abs().mean() <= (want - ref).abs().mean() * 1.05 + 1e-7
    # the weights are exactly the fp16 rounding of the float weights
    assert torch.equal(ours[0].weight(), model[0].weight.detach().half().float())


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_weight_only_is_the_dequantized_weights_in_float(per_channel):
    torch.manual_seed(1)
    lin = nn.Linear(96, 40).eval()
    qc = fq.int8_weight_only_qconfig
    if not per_channel:
        qc = fq.QConfig(activation=qc.activation, weight=fq.default_weight_observer)
    q = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: qc})[0]
    assert isinstance(q, fq.nn.quantized.WeightOnlyLinear) and q.weight().is_per_channel == per_channel
    x = torch.randn(7, 96) * 3
    with torch.no_grad():
        deq = q.weight().dequantize().double()
        expect = (x.double() @ deq.T + lin.bias.double()).float()
        got = q(x)
        assert (got - expect).abs().max() <= 1e-5 * expect.abs().max()
        # more accurate than dynamic int8 (activations stay float)
        dyn = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: fq.per_channel_dynamic_qconfig})[0]
        ref = lin(x)
        assert (got - ref).abs().mean() < (dyn(x) - ref).abs().mean()
    # a quarter (int8) or half (fp16) of the float weights' memory
    big = nn.Sequential(nn.Linear(512, 256))
    fp16 = fq.quantize_dynamic(big, {nn.Linear}, dtype=torch.float16)[0]
    wo = fq.quantize_dynamic(big, {nn.Linear: fq.int8_weight_only_qconfig})[0]
    assert wo._fresh_packed().nbytes < 0.26 * 512 * 256 * 4
    assert fp16._fresh_packed().nbytes < 0.51 * 512 * 256 * 4


@pytest.mark.parametrize("engine", engines())
def test_every_engine_and_thread_count_gives_identical_output(engine, parallel_kernels):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(130, 70), nn.ReLU(), nn.Linear(70, 33)).eval()
    variants = [
        fq.quantize_dynamic(model, {nn.Linear}, dtype=torch.float16),
        fq.quantize_dynamic(model, {nn.Linear: fq.int8_weight_only_qconfig}),
        fq.quantize_dynamic(nn.Sequential(nn.GRU(20, 24, 2)).eval(), dtype=torch.float16),
    ]
    inputs = [torch.randn(9, 130), torch.randn(9, 130), torch.randn(5, 3, 20)]

    def run(q, x):
        y = q(x)
        return y[0] if isinstance(y, tuple) else y

    fq.backends.engine = "scalar"
    fq.set_num_threads(1)
    with torch.no_grad():
        base = [run(q, x) for q, x in zip(variants, inputs)]
        fq.backends.engine = engine
        for threads in (1, 2):
            fq.set_num_threads(threads)
            for q, x, b in zip(variants, inputs, base):
                assert torch.equal(run(q, x), b), (engine, threads, type(q[0]).__name__)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_fp16_recurrent_layers_match_torch(cls):
    torch.manual_seed(3)
    model = nn.Sequential(cls(12, 20, num_layers=2, bidirectional=True)).eval()
    x = torch.randn(8, 3, 12)
    ours = fq.quantize_dynamic(model, {cls}, dtype=torch.float16)
    theirs = _torch_fp16(model, {cls})
    assert ours[0].dtype == torch.float16 and "dtype=torch.float16" in repr(ours[0])
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    assert (got[0] - want[0]).abs().max() < 1e-5
    assert set(ours[0].get_weight()) == {
        f"weight_{k}_l{i}{s}" for k in ("ih", "hh") for i in (0, 1) for s in ("", "_reverse")
    }
    for make in (lambda: nn.LSTMCell(12, 20), lambda: nn.GRUCell(12, 20), lambda: nn.RNNCell(12, 20)):
        cell = nn.Sequential(make()).eval()
        a, b = fq.quantize_dynamic(cell, dtype=torch.float16)[0], _torch_fp16(cell, {type(cell[0])})[0]
        with torch.no_grad():
            ya, yb = a(x[0]), b(x[0])
        ya, yb = (ya[0], yb[0]) if isinstance(ya, tuple) else (ya, yb)
        assert (ya - yb).abs().max() < 1e-5


def test_state_dicts_pickling_and_bad_values():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4)).eval()
    x = torch.randn(3, 16)
    for q, fresh in (
        (
            fq.quantize_dynamic(model, {nn.Linear}, dtype=torch.float16),
            lambda: nn.Sequential(nnqd.Float16Linear(16, 8), nnqd.Float16Linear(8, 4)),
        ),
        (
            fq.quantize_dynamic(model, {nn.Linear: fq.int8_weight_only_qconfig}),
            lambda: nn.Sequential(fq.nn.quantized.WeightOnlyLinear(16, 8), fq.nn.quantized.WeightOnlyLinear(8, 4)),
        ),
    ):
        with torch.no_grad():
            want = q(x)
            buf = io.BytesIO()
            torch.save(q.state_dict(), buf)
            loaded = fresh()
            loaded.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
            for other in (loaded, pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
                assert torch.equal(other(x), want)
            bad = q.state_dict()
            bad["0.weight"] = bad["0.weight"][:, :3].clone()
            with pytest.raises(RuntimeError, match="0.weight"):
                loaded.load_state_dict(bad)
            assert torch.equal(loaded(x), want), "a failed load changes nothing"
            with pytest.raises(TypeError, match="QTensor"):
                q(fq.quantize_per_tensor(x, 0.1, 0, fq.quint8))
            with pytest.raises(TypeError, match="floating point"):
                q(x.to(torch.int64))
            with pytest.raises(ValueError, match=r"\[\.\.\., 16\]"):
                q(torch.randn(3, 15))
    fp16 = nnqd.Float16Linear(2, 2)
    with pytest.warns(UserWarning, match="65504"):
        fp16.set_weight_bias(torch.tensor([[1e6, 0.5], [0.0, -7e4]]), None)
    assert fp16.weight().tolist() == [[65504.0, 0.5], [0.0, -65504.0]]
    with pytest.raises(ValueError, match="NaN"):
        fp16.set_weight_bias(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]), None)
    assert fp16.weight()[0, 0] == 65504.0, "a rejected weight changes nothing"
    with pytest.raises(NotImplementedError, match="TorchScript"):
        torch.jit.script(nn.Sequential(fp16))


def test_quantize_dynamic_float16_default_spec():
    model = nn.ModuleDict({"fc": nn.Linear(4, 4), "lstm": nn.LSTM(4, 4), "cell": nn.GRUCell(4, 4)})
    q = fq.quantize_dynamic(model, dtype=torch.float16)
    assert isinstance(q["fc"], nnqd.Float16Linear)
    assert isinstance(q["lstm"], nnqd.LSTM) and q["lstm"].dtype == torch.float16
    assert isinstance(q["cell"], nnqd.GRUCell) and q["cell"].dtype == torch.float16
    with pytest.raises(NotImplementedError, match="float16"):
        fq.quantize_dynamic(model, dtype=torch.bfloat16)
