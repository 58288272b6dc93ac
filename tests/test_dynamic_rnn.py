"""Dynamic quantized LSTM / GRU / RNN and their cells, against fp32 and torch.ao's dynamic modules."""

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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

nnqd = fq.nn.quantized.dynamic
TORCH_QCONFIG = {False: tq.default_dynamic_qconfig, True: tq.per_channel_dynamic_qconfig}
# torch's activation rule (per tensor, 0..127) with per-tensor or per-channel weights
FQ_TORCH_MODE = {
    False: fq.default_dynamic_qconfig_torch,
    True: fq.QConfig(
        activation=fq.default_dynamic_qconfig_torch.activation, weight=fq.default_per_channel_weight_observer
    ),
}


def _quantize_both(float_mod: nn.Module, per_channel: bool, torch_mode: bool) -> tuple[nn.Module, nn.Module]:
    """(ferroquant's, torch.ao's) dynamic versions of one float module, from the same weights."""
    t = type(float_mod)
    wrapped = nn.Sequential(copy.deepcopy(float_mod)).eval()
    if torch_mode:
        qc = FQ_TORCH_MODE[per_channel]
    else:
        qc = fq.per_channel_dynamic_qconfig if per_channel else fq.default_dynamic_qconfig
    ours = fq.quantize_dynamic(wrapped, {t: qc})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tq.quantize_dynamic(wrapped, {t: TORCH_QCONFIG[per_channel]}, dtype=torch.qint8)[0]
    return ours, theirs


def _flat(out) -> torch.Tensor:
    """Every tensor of an RNN's output (output, h_n[, c_n]) in one vector."""
    parts = []
    for o in out if isinstance(out, tuple) and not isinstance(out, PackedSequence) else (out,):
        if isinstance(o, PackedSequence):
            parts.append(o.data.reshape(-1))
        elif isinstance(o, tuple):
            parts += [t.reshape(-1) for t in o]
        else:
            parts.append(o.reshape(-1))
    return torch.cat(parts).detach()


CASES = [
    # (cls, input, hidden, layers, bidirectional, batch_first, T, B, with initial state)
    (nn.LSTM, 16, 32, 1, False, False, 7, 3, False),
    (nn.LSTM, 33, 17, 2, True, True, 5, 4, True),
    (nn.LSTM, 8, 64, 3, False, False, 12, 1, True),
    (nn.GRU, 16, 32, 1, False, True, 9, 2, False),
    (nn.GRU, 24, 15, 2, True, False, 6, 5, True),
    (nn.GRU, 7, 65, 3, True, True, 4, 1, False),
]


def _inputs(cls, i, h, layers, bidir, batch_first, t, b, with_state):
    x = torch.randn((b, t, i) if batch_first else (t, b, i))
    hx = None
    if with_state:
        shape = (layers * (2 if bidir else 1), b, h)
        hx = (torch.randn(shape) * 0.5, torch.randn(shape) * 0.5) if cls is nn.LSTM else torch.randn(shape) * 0.5
    return x, hx


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].__name__}-{c[1]}x{c[2]}-l{c[3]}-bi{int(c[4])}")
def test_torch_mode_reproduces_torch_and_default_is_no_less_accurate(case, per_channel):
    cls, i, h, layers, bidir, batch_first, t, b, with_state = case
    torch.manual_seed(1)
    fmod = cls(i, h, num_layers=layers, bidirectional=bidir, batch_first=batch_first).eval()
    x, hx = _inputs(*case)
    with torch.no_grad():
        ref = _flat(fmod(x, hx))
        ours_torch_mode, theirs = _quantize_both(fmod, per_channel, torch_mode=True)
        ours, _ = _quantize_both(fmod, per_channel, torch_mode=False)
        got_t, want = _flat(ours_torch_mode(x, hx)), _flat(theirs(x, hx))
        got = _flat(ours(x, hx))
    # torch's rules (per-tensor activations over 0..127, exact on every CPU): the same numbers
    # up to the last bits of sigmoid / tanh (D8: our own polynomial)
    assert (got_t - want).abs().max() < 1e-4, (got_t - want).abs().max()
    # the default (per-row activations): error vs fp32 no larger than torch's (D4)
    err_ours, err_torch = (got - ref).abs().mean(), (want - ref).abs().mean()
    assert err_ours <= err_torch * 1.02 + 1e-7, (err_ours, err_torch)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequences_match_torch(cls, bidir, enforce_sorted):
    torch.manual_seed(2)
    fmod = cls(10, 20, num_layers=2, bidirectional=bidir).eval()
    lengths = torch.tensor([6, 3, 5, 1]) if not enforce_sorted else torch.tensor([6, 5, 3, 1])
    x = torch.randn(6, 4, 10)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    shape = (2 * (2 if bidir else 1), 4, 20)
    hx = (torch.randn(shape), torch.randn(shape)) if cls is nn.LSTM else torch.randn(shape)
    ours_t, theirs = _quantize_both(fmod, False, torch_mode=True)
    with torch.no_grad():
        got, want = ours_t(packed, hx), theirs(packed, hx)
        assert torch.equal(got[0].batch_sizes, packed.batch_sizes)
        assert (_flat(got) - _flat(want)).abs().max() < 1e-4
        # padded positions of the unpacked output are zero, as torch's
        padded, lens = pad_packed_sequence(got[0])
        assert torch.equal(lens, lengths) and padded[5, 1].abs().sum() == 0
        # each sequence alone gives the same rows and final state (per-row activations)
        ours, _ = _quantize_both(fmod, False, torch_mode=False)
        full = ours(packed, hx)
        for j, n in enumerate(lengths.tolist()):
            hj = tuple(s[:, j : j + 1].contiguous() for s in hx) if cls is nn.LSTM else hx[:, j : j + 1].contiguous()
            alone = ours(x[:n, j : j + 1], hj)
            assert torch.equal(pad_packed_sequence(full[0])[0][:n, j], alone[0][:, 0])
            hn_full = full[1][0] if cls is nn.LSTM else full[1]
            hn_alone = alone[1][0] if cls is nn.LSTM else alone[1]
            assert torch.equal(hn_full[:, j], hn_alone[:, 0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.LSTMCell(12, 24),
        lambda: nn.GRUCell(12, 24),
        lambda: nn.RNNCell(12, 24),
        lambda: nn.RNNCell(12, 24, nonlinearity="relu"),
    ],
    ids=["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu"],
)
@pytest.mark.parametrize("per_channel", [False, True])
def test_cells_match_torch(make, per_channel):
    torch.manual_seed(3)
    fmod = make().eval()
    ours, theirs = _quantize_both(fmod, per_channel, torch_mode=True)
    ours_default, _ = _quantize_both(fmod, per_channel, torch_mode=False)
    x = torch.randn(5, 12)
    hx = (torch.randn(5, 24), torch.randn(5, 24)) if isinstance(fmod, nn.LSTMCell) else torch.randn(5, 24)
    with torch.no_grad():
        for args in ((x,), (x, hx)):
            assert (_flat(ours(*args)) - _flat(theirs(*args))).abs().max() < 1e-4
            ref = _flat(fmod(*args))
            err_ours = (_flat(ours_default(*args)) - ref).abs().mean()
            assert err_ours <= (_flat(theirs(*args)) - ref).abs().mean() * 1.02 + 1e-7
        # unbatched input, as torch's cells
        single = ours(x[0]) if not isinstance(fmod, nn.LSTMCell) else ours(x[0])[0]
        assert single.shape == (24,)
        assert torch.equal(single, (ours(x[:1]) if not isinstance(fmod, nn.LSTMCell) else ours(x[:1])[0])[0])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_beyond_torch_is_close_to_fp32_and_to_its_cell(nonlinearity):
    torch.manual_seed(4)
    fmod = nn.RNN(16, 32, num_layers=2, nonlinearity=nonlinearity, bidirectional=True).eval()
    q = fq.quantize_dynamic(nn.Sequential(fmod), {nn.RNN})[0]
    assert isinstance(q, nnqd.RNN) and "nonlinearity='relu'" in repr(q) or nonlinearity == "tanh"
    x = torch.randn(10, 3, 16)
    with torch.no_grad():
        out, hn = q(x)
        ref, ref_hn = fmod(x)
    cos = nn.functional.cosine_similarity(out.reshape(-1), ref.reshape(-1), dim=0)
    assert out.shape == ref.shape and hn.shape == ref_hn.shape and cos > 0.999
    # without biases (torch.ao's dynamic modules require them)
    nob = nn.LSTM(16, 32, bias=False).eval()
    qnob = fq.quantize_dynamic(nn.Sequential(nob))[0]
    assert qnob.get_bias()["bias_ih_l0"] is None
    with torch.no_grad():
        cos_nob = nn.functional.cosine_similarity(qnob(x)[0].reshape(-1), nob(x)[0].reshape(-1), dim=0)
    assert cos_nob > 0.999
    # unbatched input: the batched result's column
    out1, hn1 = q(x[:, 0])
    assert torch.equal(out1, out[:, 0]) and torch.equal(hn1, hn[:, 0])


def test_quantize_dynamic_default_spec_takes_torchs_recurrent_set():
    model = nn.ModuleDict(
        {
            "lstm": nn.LSTM(4, 8),
            "gru": nn.GRU(4, 8),
            "rnn": nn.RNN(4, 8),
            "lc": nn.LSTMCell(4, 8),
            "gc": nn.GRUCell(4, 8),
            "rc": nn.RNNCell(4, 8),
            "fc": nn.Linear(8, 2),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these is "unsupported" any more
        q = fq.quantize_dynamic(model)
        asked = fq.quantize_dynamic(model, {nn.RNN, nn.LSTM})
    kinds = {k: type(m).__name__ for k, m in q.items()}
    assert kinds == {
        "lstm": "LSTM",
        "gru": "GRU",
        "rnn": "RNN",
        "lc": "LSTMCell",
        "gc": "GRUCell",
        "rc": "RNNCell",
        "fc": "Linear",
    }
    assert isinstance(q["lstm"], nnqd.LSTM) and isinstance(q["rc"], nnqd.RNNCell) and isinstance(q["fc"], nnqd.Linear)
    assert type(q["rnn"]) is nn.RNN, "nn.RNN is opt-in (torch.ao has no dynamic RNN)"
    assert isinstance(asked["rnn"], nnqd.RNN) and isinstance(asked["gru"], nn.GRU)
    assert repr(q["lstm"]).startswith("DynamicQuantizedLSTM(")


@pytest.mark.parametrize("engine", engines())
def test_every_engine_and_thread_count_gives_identical_output(engine, parallel_kernels):
    torch.manual_seed(5)
    model = nn.Sequential(nn.LSTM(40, 70, num_layers=2, bidirectional=True)).eval()
    gru = nn.Sequential(nn.GRU(40, 33)).eval()
    q, qg = fq.quantize_dynamic(model), fq.quantize_dynamic(gru)
    x = torch.randn(9, 3, 40)
    fq.backends.engine = "scalar"
    fq.set_num_threads(1)
    base, base_g = _flat(q(x)), _flat(qg(x))
    fq.backends.engine = engine
    for threads in (1, 2):
        fq.set_num_threads(threads)
        assert torch.equal(_flat(q(x)), base), (engine, threads)
        assert torch.equal(_flat(qg(x)), base_g), (engine, threads)


@pytest.mark.parametrize("per_channel", [False, True])
def test_state_dict_round_trip_is_exact_and_bad_state_loses_nothing(per_channel):
    torch.manual_seed(6)
    fmod = nn.LSTM(12, 20, num_layers=2, bidirectional=True)
    q, _ = _quantize_both(fmod, per_channel, torch_mode=False)
    x = torch.randn(5, 2, 12)
    want = _flat(q(x))
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    fresh = nnqd.LSTM(12, 20, num_layers=2, bidirectional=True)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(_flat(fresh(x)), want)
    assert fresh.get_weight()["weight_hh_l1_reverse"].is_per_channel == per_channel
    assert set(fresh.get_bias()) == {
        f"bias_{k}_l{i}{s}" for k in ("ih", "hh") for i in (0, 1) for s in ("", "_reverse")
    }
    # pickling and deepcopy keep the weights exactly
    assert torch.equal(_flat(pickle.loads(pickle.dumps(q))(x)), want)
    assert torch.equal(_flat(copy.deepcopy(q)(x)), want)
    # a state_dict of another shape: error naming the key, module unchanged
    other = nnqd.LSTM(12, 21, num_layers=2, bidirectional=True).state_dict()
    with pytest.raises(RuntimeError, match="weight"):
        fresh.load_state_dict(other)
    assert torch.equal(_flat(fresh(x)), want)
    # one bad projection deep inside: none of the others loads either (all or nothing)
    donor = _quantize_both(nn.LSTM(12, 20, num_layers=2, bidirectional=True), per_channel, torch_mode=False)[0]
    bad = donor.state_dict()
    bad["_cells.3.hh.weight"] = bad["_cells.3.hh.weight"][:, :5].clone()
    with pytest.raises(RuntimeError, match=r"none of its parts was loaded(.|\n)*_cells.3.hh.weight"):
        fresh.load_state_dict(bad)
    assert torch.equal(_flat(fresh(x)), want)
    missing = donor.state_dict()
    del missing["_cells.2.ih.bias"]
    result = fresh.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["_cells.2.ih.bias"] and torch.equal(_flat(fresh(x)), want)
    # the activation scheme travels with the state_dict
    q.reduce_range, q.per_row_activations = False, False
    loaded = nnqd.LSTM(12, 20, num_layers=2, bidirectional=True)
    loaded.load_state_dict(q.state_dict())
    assert loaded.reduce_range is False and loaded.per_row_activations is False
    assert torch.equal(_flat(loaded(x)), _flat(q(x)))


def test_converted_modules_are_in_eval_mode_and_take_empty_batches():
    model = nn.Sequential(nn.LSTM(8, 16, num_layers=2, dropout=0.3), nn.GRU(16, 4, num_layers=2, dropout=0.5)).eval()
    model.forward = lambda x: model[1](model[0](x)[0])[0]  # type: ignore[method-assign]
    q = fq.quantize_dynamic(model)
    assert not q[0].training and not q[1].training
    x = torch.randn(6, 3, 8)
    with torch.no_grad():
        assert torch.equal(q[1](q[0](x)[0])[0], q[1](q[0](x)[0])[0]), "no dropout at inference"
        out, (h, c) = q[0](torch.randn(6, 0, 8))
        assert out.shape == (6, 0, 16) and h.shape == (2, 0, 16) and c.shape == (2, 0, 16)
        cell = fq.quantize_dynamic(nn.Sequential(nn.LSTMCell(8, 4)))[0]
        h1, c1 = cell(torch.randn(0, 8))
        assert h1.shape == (0, 4) and c1.shape == (0, 4)
    with pytest.raises(ValueError, match="dropout"):
        nnqd.LSTM(4, 4, dropout=2.0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert q[0](x)[0].dtype == torch.float32
        assert cell(torch.randn(2, 8))[0].dtype == torch.float32
    finally:
        torch.set_default_dtype(old)


def test_bad_inputs_get_clear_errors():
    q = fq.quantize_dynamic(nn.Sequential(nn.LSTM(6, 8, num_layers=2)))[0]
    x = torch.randn(4, 2, 6)
    with pytest.raises(TypeError, match="QTensor"):
        q(fq.quantize_per_tensor(x, 0.1, 0, fq.quint8))
    with pytest.raises(TypeError, match="floating point"):
        q(x.to(torch.int32))
    with pytest.raises(ValueError, match="input_size"):
        q(torch.randn(4, 2, 7))
    with pytest.raises(ValueError, match=r"h_0 of shape \[2, 2, 8\]"):
        q(x, (torch.zeros(1, 2, 8), torch.zeros(2, 2, 8)))
    with pytest.raises(TypeError, match="tuple"):
        q(x, torch.zeros(2, 2, 8))
    bad = x.clone()
    bad[1, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        q(bad)
    with pytest.raises(ValueError, match="cell state"):
        q(x, (torch.zeros(2, 2, 8), torch.full((2, 2, 8), float("inf"))))
    with pytest.raises(ValueError, match="sequence length larger than 0"):
        q(torch.randn(0, 2, 6))
    assert torch.isfinite(q(x)[0]).all(), "errors leave the module usable"
    cell = fq.quantize_dynamic(nn.Sequential(nn.GRUCell(6, 8)))[0]
    with pytest.raises(ValueError, match=r"h_0 of shape \[3, 8\]"):
        cell(torch.randn(3, 6), torch.zeros(2, 8))
    with pytest.raises(NotImplementedError, match="proj_size"):
        nnqd.LSTM.from_float(nn.LSTM(6, 8, proj_size=4))
    with pytest.raises(NotImplementedError, match="TorchScript is not available.*eager"):
        torch.jit.script(nn.Sequential(q))
    with pytest.raises(TypeError, match="nn.GRU|GRU"):
        nnqd.GRU.from_float(nn.LSTM(6, 8))


def _sum_sign_data(n: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences and whether their sum is positive (the whole sequence matters)."""
    x = torch.randn(n, t, 1)
    return x, (x.sum(dim=(1, 2)) > 0).long()


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_trained_sequence_task_keeps_accuracy():
    torch.manual_seed(7)
    model = _Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        x, y = _sum_sign_data(64, 12)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _sum_sign_data(4000, 12)
    with torch.no_grad():
        acc_fp32 = (model(x).argmax(1) == y).float().mean().item()
        q = fq.quantize_dynamic(model)
        acc_int8 = (q(x).argmax(1) == y).float().mean().item()
    assert isinstance(q.rnn, nnqd.LSTM) and isinstance(q.head, nnqd.Linear)
    assert acc_fp32 > 0.9, acc_fp32
    assert acc_int8 >= acc_fp32 - 0.01, (acc_fp32, acc_int8)
