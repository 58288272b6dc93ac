"""Dynamic quantized Linear and quantize_dynamic, against fp32 and torch.ao."""

from __future__ import annotations

import copy
import io
import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
from conftest import engines
from torch import nn

nnqd = fq.nn.quantized.dynamic


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Sequential(nn.Linear(128, 32), nn.Tanh()), nn.Linear(32, 10)
    ).eval()


def test_quantize_dynamic_swaps_nested_linears_and_keeps_others():
    model = _mlp()
    q = fq.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    kinds = [type(m).__name__ for m in q.modules()]
    assert kinds.count("Linear") == 3 and "ReLU" in kinds and "Tanh" in kinds
    assert all(isinstance(m, fq.nn.quantized.dynamic.Linear) for m in (q[0], q[2][0], q[3]))
    assert isinstance(model[0], nn.Linear), "inplace=False must not touch the original"
    assert not any(hasattr(m, "qconfig") for m in q.modules())
    x = torch.randn(8, 64)
    assert torch.allclose(q(x), model(x), atol=0.05)


def test_quantize_dynamic_default_spec_dict_spec_and_inplace():
    model = _mlp()
    q = fq.quantize_dynamic(model)
    assert isinstance(q[0], fq.nn.quantized.dynamic.Linear)
    q2 = fq.quantize_dynamic(model, {"2.0": fq.per_channel_dynamic_qconfig, "3": None, "0": fq.default_dynamic_qconfig})
    assert isinstance(q2[2][0], fq.nn.quantized.dynamic.Linear) and q2[2][0]._w_axis == 0
    assert isinstance(q2[3], nn.Linear) and not isinstance(q2[3], fq.nn.quantized.dynamic.Linear)
    same = fq.quantize_dynamic(model, {nn.Linear}, inplace=True)
    assert same is model and isinstance(model[0], fq.nn.quantized.dynamic.Linear)
    for dt in ("qint8", fq.qint8, torch.int8):
        fq.quantize_dynamic(_mlp(), {nn.Linear}, dtype=dt)
    assert isinstance(fq.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.float16)[0], nnqd.Float16Linear)
    # quint8 means weight-only embeddings (as torch): a Linear cannot take that qconfig
    with pytest.raises(TypeError, match="Linear '0'.*qint8"):
        fq.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.quint8)
    with pytest.raises(NotImplementedError, match="bfloat16"):
        fq.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.bfloat16)


def _torch_dynamic(lin: nn.Linear, per_channel: bool) -> nn.Module:
    m = nn.Sequential(copy.deepcopy(lin))
    qc = tq.per_channel_dynamic_qconfig if per_channel else tq.default_dynamic_qconfig
    return tq.quantize_dynamic(m, {nn.Linear: qc}, dtype=torch.qint8)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("shape", [(1, 64, 32), (16, 256, 100), (3, 7, 5)])
def test_error_vs_fp32_is_not_larger_than_torch(per_channel, shape):
    m, k, n = shape
    torch.manual_seed(m * 7 + k)
    lin = nn.Linear(k, n).eval()
    x = torch.randn(m, k) * 2 + 0.3
    qc = fq.per_channel_dynamic_qconfig if per_channel else fq.default_dynamic_qconfig
    ours = fq.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear: qc})
    theirs = _torch_dynamic(lin, per_channel)
    with torch.no_grad():
        ref = lin(x)
        e_ours = (ours(x) - ref).pow(2).mean().item()
        e_torch = (theirs(x) - ref).pow(2).mean().item()
    assert e_ours <= e_torch * 1.0001 + 1e-12, (e_ours, e_torch)


@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_qconfig_reproduces_torch_outputs(per_channel):
    torch.manual_seed(1)
    lin = nn.Linear(96, 48).eval()
    x = torch.randn(20, 96)
    wq = fq.per_channel_dynamic_qconfig.weight if per_channel else fq.default_dynamic_qconfig_torch.weight
    qc = fq.QConfig(activation=fq.default_dynamic_qconfig_torch.activation, weight=wq)
    ours = fq.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear: qc})
    theirs = _torch_dynamic(lin, per_channel)
    # same int8 weights and qparams as torch
    tw = theirs[0].weight()
    assert torch.equal(ours[0].weight().int_repr(), tw.int_repr())
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    # same activation qparams, exact accumulators, torch's FMA output stage: equal up to ties of
    # the activation rounding (docs/numerics.md D3) — in practice bit for bit
    assert torch.allclose(a, b, rtol=0, atol=1e-6 * b.abs().max().item())
    assert (a == b).float().mean().item() > 0.99


def test_activation_qparams_match_torch_choose_qparams():
    from ferroquant import _core

    for lo, hi in [(-1.0, 2.0), (0.0, 0.0), (-3e-6, 1e-6), (2.0, 5.0), (-7.0, -1.0), (-1.0, 1.0)]:
        for qmax in (127, 255):
            s, z = torch._choose_qparams_per_tensor(torch.tensor([lo, hi]), qmax == 127)
            ours = _core.choose_qparams_dynamic(lo, hi, 0, qmax)
            assert (ours[0], ours[1]) == (s, z), (lo, hi, qmax, ours, (s, z))


def test_state_dict_round_trip_exact_and_versioned():
    q = fq.quantize_dynamic(_mlp(), {nn.Linear: fq.per_channel_dynamic_qconfig})
    sd = q.state_dict()
    assert sd["0.weight"].dtype == torch.int8 and sd["0.weight_scale"].dtype == torch.float32
    assert sd["0.weight_zero_point"].shape == (128,) and int(sd["0.weight_axis"]) == 0
    assert sd._metadata["0"]["version"] == fq.nn.quantized.dynamic.Linear._version
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh = fq.quantize_dynamic(_mlp().apply(lambda m: None))
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), q(x))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_mismatched_state_dict_names_key_and_shapes():
    q = fq.quantize_dynamic(_mlp())
    sd = q.state_dict()
    sd["0.weight"] = torch.zeros(128, 65, dtype=torch.int8)
    with pytest.raises(RuntimeError, match=r"0\.weight.*\[128, 64\].*\[128, 65\]"):
        q.load_state_dict(sd)
    sd = q.state_dict()
    del sd["3.weight_scale"]
    with pytest.raises(RuntimeError, match=r"3\.weight_scale"):
        q.load_state_dict(sd)


@pytest.mark.parametrize("engine", engines())
def test_every_engine_and_thread_count_gives_identical_output(engine, parallel_kernels):
    torch.manual_seed(5)
    lin = nn.Linear(300, 257)
    q = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: fq.per_channel_dynamic_qconfig})
    x = torch.randn(64, 300)
    fq.backends.engine = "scalar"
    fq.set_num_threads(1)
    base = q(x)
    fq.backends.engine = engine
    for threads in (1, 2):
        fq.set_num_threads(threads)
        jobs = parallel_kernels()
        assert torch.equal(q(x), base), (engine, threads)
        assert (parallel_kernels() > jobs) == (threads > 1), "the 2-thread call must really use 2 threads"
    x1 = torch.randn(1, 300)  # GEMV-like
    fq.backends.engine = "scalar"
    b1 = q(x1)
    fq.backends.engine = engine
    assert torch.equal(q(x1), b1)


def test_shapes_empty_rows_and_bad_inputs():
    q = fq.quantize_dynamic(nn.Sequential(nn.Linear(4, 3)))[0]
    assert q(torch.randn(0, 4)).shape == (0, 3)
    assert q(torch.randn(2, 5, 4)).shape == (2, 5, 3)
    assert q(torch.randn(4)).shape == (3,)
    assert q(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="in_features = 4"):
        q(torch.randn(2, 5))
    with pytest.raises(TypeError, match="QTensor"):
        q(fq.quantize_per_tensor(torch.randn(2, 4), 0.1, 0, fq.quint8))
    with pytest.raises(TypeError, match="floating point"):
        q(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))


def test_weight_bias_accessors_and_from_float_errors():
    lin = nn.Linear(8, 4)
    q = fq.nn.quantized.dynamic.Linear.from_float(lin)
    w = q.weight()
    assert isinstance(w, fq.QTensor) and w.dtype == fq.qint8 and w.shape == (4, 8)
    assert torch.equal(q.bias(), lin.bias.detach())
    q.set_weight_bias(w, None)
    assert q.bias() is None
    with pytest.raises(ValueError, match="shape"):
        q.set_weight_bias(fq.quantize_per_tensor(torch.randn(4, 9), 0.1, 0, fq.qint8), None)
    with pytest.raises(TypeError):
        fq.nn.quantized.dynamic.Linear.from_float(nn.Conv1d(1, 1, 1))
    assert "in_features=8" in repr(q)


def test_torchscript_smoke():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    q = fq.quantize_dynamic(model, {nn.Linear})
    scripted = torch.jit.script(q)
    x = torch.randn(3, 16)
    assert torch.equal(scripted(x), q(x))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert torch.equal(loaded(x), q(x))


def test_pytorch_docs_dynamic_example():
    # The PyTorch docs' dynamic quantization example, with torch.quantization -> ferroquant.
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            x = self.fc(x)
            return x

    model_fp32 = M()
    model_int8 = fq.quantize_dynamic(model_fp32, {torch.nn.Linear}, dtype=torch.qint8)
    input_fp32 = torch.randn(4, 4, 4, 4)
    res = model_int8(input_fp32)
    assert res.shape == (4, 4, 4, 4)
    assert torch.allclose(res, model_fp32(input_fp32), atol=0.05)


def test_per_row_activation_quantization_option():
    torch.manual_seed(2)
    lin = nn.Linear(64, 32).eval()
    # rows of very different magnitudes (tokens): per-row qparams keep small rows precise
    x = torch.randn(8, 64) * torch.logspace(-2, 1, 8).unsqueeze(1)
    per_row = fq.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear: fq.per_row_dynamic_qconfig})
    full_range = fq.QConfig(
        activation=fq.full_range_dynamic_qconfig.activation, weight=fq.default_per_channel_weight_observer
    )
    per_tensor = fq.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear: full_range})
    assert per_row[0].per_row_activations and "per_row_activations=True" in repr(per_row[0])
    with torch.no_grad():
        ref = lin(x)
        e_row = (per_row(x) - ref).pow(2).mean().item()
        e_tensor = (per_tensor(x) - ref).pow(2).mean().item()
    assert e_row < e_tensor
    # one row: identical to per-tensor
    assert torch.equal(per_row(x[:1]), per_tensor(x[:1]))
    # identical on every engine and through save/load and TorchScript
    base = per_row(x)
    for engine in engines():
        fq.backends.engine = engine
        assert torch.equal(per_row(x), base)
    fq.backends.engine = "auto"
    fresh = fq.quantize_dynamic(nn.Sequential(nn.Linear(64, 32)))
    fresh.load_state_dict(per_row.state_dict())
    assert fresh[0].per_row_activations and torch.equal(fresh(x), base)
    assert torch.equal(torch.jit.script(per_row)(x), base)


def test_quantize_dynamic_warns_for_module_types_it_cannot_quantize():
    model = nn.Sequential(nn.Conv1d(8, 8, 1), nn.LSTM(8, 8), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"no dynamic quantized form for Conv1d .* stay float \(supported: .*LSTM"):
        q = fq.quantize_dynamic(model, {nn.Linear, nn.LSTM, nn.Conv1d})
    assert type(q[0]) is nn.Conv1d and isinstance(q[2], fq.nn.quantized.dynamic.Linear)
    assert isinstance(q[1], fq.nn.quantized.dynamic.LSTM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a type asked for but absent from the model: no warning
        fq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)), {nn.Linear, nn.Conv1d})
