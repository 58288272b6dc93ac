"""QTensor and quantize / dequantize: values vs torch, shape ops, clear errors."""

from __future__ import annotations

import ferroquant as fq
import pytest
import torch
import torch.nn.functional as F


def _torch_q(x, scale, zp, dtype):
    return torch.quantize_per_tensor(x, scale, zp, dtype)


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8, torch.qint32])
@pytest.mark.parametrize("scale,zp", [(0.05, 3), (0.013, 0), (1.7, -5), (0.25, 128)])
def test_quantize_per_tensor_matches_torch(dtype, scale, zp):
    info = {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-(2**31), 2**31 - 1)}[dtype]
    zp = min(max(zp, info[0]), info[1])
    x = torch.randn(1000) * 6
    q = fq.quantize_per_tensor(x, scale, zp, dtype)
    ref = _torch_q(x, scale, zp, dtype)
    diff = (q.int_repr().long() - ref.int_repr().long()).abs()
    # D3 (docs/numerics.md) differs from torch's fused legacy path only at exact ties: at most 1 LSB, rarely.
    assert diff.max().item() <= 1 and diff.float().mean().item() < 0.01
    assert torch.equal(q.dequantize(), (q.int_repr().long() - zp).float() * torch.tensor(scale, dtype=torch.float32))
    assert torch.allclose(q.dequantize(), ref.dequantize(), atol=scale * 1.01)
    assert q.q_scale() == scale and q.q_zero_point() == zp and q.dtype == dtype


def test_quantize_rounding_rule_d3():
    # x*inv = 2.5 exactly, zp odd: D3 rounds first (2) then adds zp (3); NaN -> max
    q = fq.quantize_per_tensor(torch.tensor([2.5, -2.5, float("nan"), 1e9]), 1.0, 1, fq.quint8)
    assert q.int_repr().tolist() == [3, 0, 255, 255]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quantize_per_channel_matches_torch(axis):
    x = torch.randn(4, 5, 6) * 3
    c = x.shape[axis]
    scales = torch.rand(c, dtype=torch.float64) * 0.1 + 0.01
    zps = torch.randint(-10, 10, (c,))
    q = fq.quantize_per_channel(x, scales, zps, axis, torch.qint8)
    ref = torch.quantize_per_channel(x, scales.float().double(), zps, axis, torch.qint8)
    assert (q.int_repr().int() - ref.int_repr().int()).abs().max() <= 1
    assert q.q_per_channel_axis() == axis
    assert torch.equal(q.q_per_channel_zero_points(), zps)
    assert torch.allclose(q.dequantize(), ref.dequantize(), atol=1e-6 + 0.11)


def test_accepts_strings_and_our_constants_and_other_float_dtypes():
    x = torch.randn(10, dtype=torch.float64)
    a = fq.quantize_per_tensor(x, 0.1, 0, "qint8")
    b = fq.quantize_per_tensor(x.float(), 0.1, 0, fq.qint8)
    assert torch.equal(a.int_repr(), b.int_repr())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="scale"):
        fq.quantize_per_tensor(torch.randn(3), 0.0, 0, fq.quint8)
    with pytest.raises(ValueError, match="zero_point"):
        fq.quantize_per_tensor(torch.randn(3), 0.1, 300, fq.quint8)
    with pytest.raises(TypeError, match="floating point"):
        fq.quantize_per_tensor(torch.arange(3), 0.1, 0, fq.quint8)
    with pytest.raises(TypeError, match="dtype"):
        fq.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.float16)
    with pytest.raises(ValueError, match="scales"):
        fq.quantize_per_channel(torch.randn(3, 4), torch.ones(2), torch.zeros(2), 1, fq.qint8)


def test_shape_ops_keep_qparams():
    q = fq.quantize_per_tensor(torch.randn(2, 3, 4), 0.1, 10, fq.quint8)
    d = q.int_repr()
    for got, want in [
        (q.view(6, 4), d.view(6, 4)),
        (q.reshape(-1), d.reshape(-1)),
        (torch.flatten(q, 1), torch.flatten(d, 1)),
        (q.permute(2, 0, 1), d.permute(2, 0, 1)),
        (torch.transpose(q, 0, 2), torch.transpose(d, 0, 2)),
        (q.unsqueeze(0).squeeze(0), d),
        (q[1, :2], d[1, :2]),
        (torch.narrow(q, 2, 1, 2), torch.narrow(d, 2, 1, 2)),
        (torch.cat([q, q], dim=1), torch.cat([d, d], dim=1)),
        (q.contiguous(), d),
    ]:
        assert isinstance(got, fq.QTensor)
        assert torch.equal(got.int_repr(), want)
        assert got.q_scale() == 0.1 and got.q_zero_point() == 10
    assert q.shape == (2, 3, 4) and q.size(1) == 3 and q.dim() == 3 and q.numel() == 24


def test_value_ops_exact_on_integers():
    x = torch.randn(1, 2, 6, 6)
    q = fq.quantize_per_tensor(x, 0.05, 100, fq.quint8)
    r = F.relu(q)
    assert torch.equal(r.int_repr(), torch.clamp(q.int_repr(), min=100))
    p = F.max_pool2d(q, 2)
    assert torch.equal(p.int_repr(), F.max_pool2d(q.int_repr().float(), 2).to(torch.uint8))
    ref = F.max_pool2d(torch.quantize_per_tensor(x, 0.05, 100, torch.quint8), 2)
    assert (p.int_repr().int() - ref.int_repr().int()).abs().max() <= 1
    assert p.q_scale() == 0.05 and p.q_zero_point() == 100


def test_unsupported_ops_name_the_op_and_the_fix():
    q = fq.quantize_per_tensor(torch.randn(4), 0.1, 0, fq.qint8)
    with pytest.raises(TypeError, match="'exp'.*DeQuantStub"):
        torch.exp(q)
    with pytest.raises(TypeError, match="sigmoid on a QTensor needs quint8"):
        torch.sigmoid(q)
    with pytest.raises(TypeError, match="no method or attribute 'logsumexp'.*DeQuantStub"):
        q.logsumexp(0)
    with pytest.raises(TypeError, match="equal qparams"):
        torch.cat([q, fq.quantize_per_tensor(torch.randn(4), 0.2, 0, fq.qint8)])
    with pytest.raises(RuntimeError, match="per-channel"):
        q.q_per_channel_scales()


def test_dequantize_function_and_torch_tuple():
    q = fq.quantize_per_tensor(torch.randn(5), 0.1, 3, fq.quint8)
    assert torch.equal(fq.dequantize(q), q.dequantize())
    data, s, z = q.to_tuple()
    out = torch.ops.ferroquant.dequantize(data, s, z, -1)
    assert torch.equal(out, q.dequantize())
    qc = fq.quantize_per_channel(
        torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2]), 0, fq.quint8
    )
    data, s, z = qc.to_tuple()
    assert torch.equal(torch.ops.ferroquant.dequantize(data, s, z, 0), qc.dequantize())
