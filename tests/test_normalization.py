"""Quantized LayerNorm, GroupNorm, InstanceNorm1d/2d/3d and Softmax (module and QTensor op) against
torch.ao's quantized ops."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import ferroquant as fq
import pytest
import torch
from _parity import convert_both
from torch import nn


class Net(nn.Module):
    def __init__(self, stubs, shape, affine: bool) -> None:
        super().__init__()
        self.quant = stubs[0]()
        self.ln = nn.LayerNorm(shape, elementwise_affine=affine)
        self.dequant = stubs[1]()
        if affine:
            with torch.no_grad():
                self.ln.weight.normal_()
                self.ln.bias.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.ln(self.quant(x)))


@pytest.mark.parametrize("shape,affine", [((8,), True), ((6, 8), True), ((5,), False)])
def test_layer_norm_converts_and_matches_torch(shape, affine):
    size = (4, 3, *shape)
    calib = [torch.randn(size) * 2 for _ in range(3)]
    ours, q_ours, q_theirs = convert_both(lambda stubs: Net(stubs, shape, affine), calib)
    x = torch.randn(size) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want = q_ours(x), q_theirs(x)
    assert isinstance(q_ours.ln, fq.nn.quantized.LayerNorm)
    step = q_ours.ln.scale
    assert (got - want).abs().max() <= step + 1e-6 and float(((got - want).abs() > 1e-6).float().mean()) <= 0.01
    assert (got - ours(x)).abs().max() <= 6 * step
    # state_dict round trip (weight / bias buffers and output qparams)
    buf = io.BytesIO()
    torch.save(q_ours.ln.state_dict(), buf)
    fresh = fq.nn.quantized.LayerNorm(
        shape,
        torch.zeros(shape) if affine else None,
        torch.zeros(shape) if affine else None,
        1.0,
        0,
        elementwise_affine=affine,
    )
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    q = q_ours.quant(x)
    assert torch.equal(fresh(q).int_repr(), q_ours.ln(q).int_repr())
    with pytest.raises(TypeError, match="QuantStub"):
        q_ours.ln(x)
    with pytest.raises(ValueError, match="normalized_shape"):
        q_ours.ln(fq.quantize_per_tensor(torch.randn(3, 7), 0.1, 128, fq.quint8))


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_softmax_on_quantized_tensors_matches_torch(dim):
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
        want_fixed = torch.ops.quantized.softmax(t, dim % 3, 1 / 256, 0)
        want_module = torch.ops.quantized.softmax(t, dim % 3, 0.005, 3)
    q = fq.quantize_per_tensor(x, 0.05, 128, fq.quint8)
    for got in (torch.softmax(q, dim), nn.functional.softmax(q, dim), q.softmax(dim), nn.Softmax(dim)(q)):
        assert got.q_scale() == 1 / 256 and got.q_zero_point() == 0
        assert (got.int_repr().int() - want_fixed.int_repr().int()).abs().max() <= 1
    module = fq.nn.quantized.Softmax(dim, 0.005, 3)
    got = module(q)
    assert (got.int_repr().int() - want_module.int_repr().int()).abs().max() <= 1
    assert "dim=" in repr(module) and module._get_name() == "QuantizedSoftmax"


def test_softmax_in_a_static_model_and_bad_inputs():
    """torch.ao's eager mode fails on softmax of a quantized tensor; ferroquant runs it (fixed qparams)."""
    torch.manual_seed(2)
    model = nn.Sequential(fq.QuantStub(), nn.Linear(8, 6), nn.Softmax(dim=-1), fq.DeQuantStub()).eval()
    model.qconfig = fq.get_default_qconfig("x86")
    prepared = fq.prepare(model)
    with torch.no_grad():
        prepared(torch.randn(16, 8))
        q = fq.convert(prepared)
        x = torch.randn(4, 8)
        assert (q(x) - model(x)).abs().max() < 0.03
    with pytest.raises(TypeError, match="quint8"):
        torch.softmax(fq.quantize_per_tensor(x, 0.05, 0, fq.qint8), 1)


# ---------------------------------------------------------------------------------------------
# GroupNorm and InstanceNorm1d/2d/3d


class NormNet(nn.Module):
    def __init__(self, stubs, norm: nn.Module) -> None:
        super().__init__()
        self.quant = stubs[0]()
        self.norm = norm
        self.dequant = stubs[1]()
        if getattr(norm, "weight", None) is not None:
            with torch.no_grad():
                norm.weight.normal_()
                norm.bias.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.norm(self.quant(x)))


NORMS = [
    ("GroupNorm", lambda: nn.GroupNorm(3, 6), (4, 6, 5, 7)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4, affine=False), (3, 4, 9)),
    ("GroupNorm", lambda: nn.GroupNorm(1, 4), (2, 4, 3, 4, 5)),
    ("InstanceNorm1d", lambda: nn.InstanceNorm1d(5, affine=True), (3, 5, 11)),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(4), (2, 4, 6, 5)),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(4, affine=True), (2, 4, 6, 5)),
    ("InstanceNorm3d", lambda: nn.InstanceNorm3d(3, affine=True), (2, 3, 4, 5, 3)),
]


@pytest.mark.parametrize("name,make,size", NORMS, ids=[f"{n}-{s}" for n, _, s in NORMS])
def test_group_and_instance_norm_convert_and_match_torch(name, make, size):
    calib = [torch.randn(size) * 2 + 0.5 for _ in range(3)]
    ours, q_ours, q_theirs = convert_both(lambda stubs: NormNet(stubs, make()), calib)
    assert type(q_ours.norm) is getattr(fq.nn.quantized, name)
    assert q_ours.norm._get_name() == f"Quantized{name}"
    x = torch.randn(size) * 2 + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want = q_ours(x), q_theirs(x)
    step = q_ours.norm.scale
    assert q_ours.norm.scale == pytest.approx(q_theirs.norm.scale)
    assert q_ours.norm.zero_point == q_theirs.norm.zero_point
    assert (got - want).abs().max() <= step + 1e-6 and float(((got - want).abs() > 1e-6).float().mean()) <= 0.01
    assert (got - ours(x)).abs().max() <= 6 * step
    # state_dict round trip into a fresh module, pickling, bad inputs
    q = q_ours.quant(x)
    fresh = copy.deepcopy(q_ours.norm)
    for buf in (fresh.weight, fresh.bias):
        if buf is not None:
            buf.zero_()
    fresh.scale, fresh.zero_point = 1.0, 0
    blob = io.BytesIO()
    torch.save(q_ours.norm.state_dict(), blob)
    fresh.load_state_dict(torch.load(io.BytesIO(blob.getvalue())))
    assert torch.equal(fresh(q).int_repr(), q_ours.norm(q).int_repr())
    assert torch.equal(pickle.loads(pickle.dumps(q_ours.norm))(q).int_repr(), q_ours.norm(q).int_repr())
    with pytest.raises(TypeError, match="QuantStub"):
        q_ours.norm(x)
    wrong = fq.quantize_per_tensor(torch.randn(size[0], size[1] + 1, *size[2:]), 0.1, 128, fq.quint8)
    with pytest.raises(ValueError, match="channels"):
        q_ours.norm(wrong)


def test_instance_norm_takes_unbatched_inputs_and_empty_batches():
    m = fq.nn.quantized.InstanceNorm2d(3, None, None, 0.05, 128)
    x = fq.quantize_per_tensor(torch.randn(2, 3, 4, 5), 0.1, 120, fq.quint8)
    batched = m(x)
    single = m(x[1])
    assert single.shape == (3, 4, 5) and torch.equal(single.int_repr(), batched.int_repr()[1])
    assert m(fq.quantize_per_tensor(torch.randn(0, 3, 4, 5), 0.1, 120, fq.quint8)).shape == (0, 3, 4, 5)
    with pytest.raises(ValueError, match="3 or 4 dims"):
        m(fq.quantize_per_tensor(torch.randn(3, 4), 0.1, 120, fq.quint8))
    with pytest.raises(ValueError, match="divisible"):
        fq.nn.quantized.GroupNorm(4, 6, None, None, 0.1, 0)
    with pytest.raises(ValueError, match="one per channel"):
        fq.nn.quantized.GroupNorm(2, 6, torch.ones(5), None, 0.1, 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fq.nn.quantized.GroupNorm(2, 6, torch.full((6,), float("nan")), None, 0.1, 0)(
            fq.quantize_per_tensor(torch.randn(1, 6, 4), 0.1, 120, fq.quint8)
        )
