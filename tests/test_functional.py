"""ferroquant.nn.quantized.functional against torch.ao.nn.quantized.functional: same inputs, same
weights and qparams, outputs within 1 LSB (equal for the exact integer ops)."""

from __future__ import annotations

import warnings

import ferroquant as fq
import ferroquant.nn.quantized.functional as qF
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.quantized.functional as tF


def _pair(x: torch.Tensor, scale: float, zp: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fq.quantize_per_tensor(x, scale, zp, fq.quint8), torch.quantize_per_tensor(x, scale, zp, torch.quint8)


def _wpair(w: torch.Tensor, per_channel: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if per_channel:
            s = (w.flatten(1).abs().amax(1) / 127).double()
            z = torch.zeros(w.shape[0], dtype=torch.long)
            return fq.quantize_per_channel(w, s, z, 0, fq.qint8), torch.quantize_per_channel(w, s, z, 0, torch.qint8)
        s = float(w.abs().max() / 127)
        return fq.quantize_per_tensor(w, s, 0, fq.qint8), torch.quantize_per_tensor(w, s, 0, torch.qint8)


def _same(ours, theirs, lsb: int) -> None:
    assert isinstance(ours, fq.QTensor) and tuple(ours.shape) == tuple(theirs.shape)
    assert ours.q_scale() == pytest.approx(theirs.q_scale()) and ours.q_zero_point() == theirs.q_zero_point()
    assert (ours.int_repr().int() - theirs.int_repr().int()).abs().max() <= lsb


@pytest.mark.parametrize("per_channel", [False, True])
def test_weighted_ops_match_torch(per_channel):
    torch.manual_seed(0)
    # activations within 0..127: torch's int8 kernels are exact on every CPU there
    x2, t2 = _pair(torch.rand(2, 4, 9, 9) * 6 - 3, 0.05, 60)
    w, tw = _wpair(torch.randn(6, 4, 3, 3) * 0.1, per_channel)
    b = torch.randn(6) * 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = tF.conv2d(t2, tw, b, stride=2, padding=1, dilation=1, groups=1, scale=0.1, zero_point=60)
        _same(qF.conv2d(x2, w, b, stride=2, padding=1, scale=0.1, zero_point=60), want, 1)
        x1, t1 = _pair(torch.rand(2, 4, 11) * 6 - 3, 0.05, 60)
        w1, tw1 = _wpair(torch.randn(4, 2, 3) * 0.1, per_channel)
        _same(
            qF.conv1d(x1, w1, None, padding=1, groups=2, scale=0.1, zero_point=64),
            tF.conv1d(t1, tw1, None, padding=1, groups=2, scale=0.1, zero_point=64),
            1,
        )
        x3, t3 = _pair(torch.rand(1, 2, 5, 6, 6) * 6 - 3, 0.05, 60)
        w3, tw3 = _wpair(torch.randn(4, 2, 3, 3, 3) * 0.1, per_channel)
        _same(
            qF.conv3d(x3, w3, None, stride=(1, 2, 2), scale=0.1, zero_point=64),
            tF.conv3d(t3, tw3, None, stride=(1, 2, 2), scale=0.1, zero_point=64),
            1,
        )
        lw, tlw = _wpair(torch.randn(5, 9) * 0.1, per_channel)
        lb = torch.randn(5) * 0.1
        _same(qF.linear(x2, lw, lb, 0.07, 50), tF.linear(t2, tlw, lb, 0.07, 50), 1)
        _same(qF.linear(x2, lw), tF.linear(t2, tlw), 1)


OPS = [
    ("max_pool1d", lambda F, x1, x2, x3: F.max_pool1d(x1, 2), 0),
    ("max_pool2d", lambda F, x1, x2, x3: F.max_pool2d(x2, 3, 2, 1), 0),
    ("avg_pool2d", lambda F, x1, x2, x3: F.avg_pool2d(x2, 3, 2, 1), 0),
    ("avg_pool3d", lambda F, x1, x2, x3: F.avg_pool3d(x3, 2), 0),
    ("adaptive_avg_pool2d", lambda F, x1, x2, x3: F.adaptive_avg_pool2d(x2, (3, 4)), 0),
    ("adaptive_avg_pool3d", lambda F, x1, x2, x3: F.adaptive_avg_pool3d(x3, (2, 3, 3)), 0),
    ("interpolate", lambda F, x1, x2, x3: F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False), 0),
    ("upsample", lambda F, x1, x2, x3: F.upsample(x2, size=(12, 11)), 0),
    ("upsample_nearest", lambda F, x1, x2, x3: F.upsample_nearest(x2, scale_factor=2), 0),
    ("upsample_bilinear", lambda F, x1, x2, x3: F.upsample_bilinear(x2, size=(12, 12)), 0),
    ("hardtanh", lambda F, x1, x2, x3: F.hardtanh(x2, -0.5, 1.5), 0),
    ("clamp", lambda F, x1, x2, x3: F.clamp(x2, -0.5, 1.5), 0),
    ("threshold", lambda F, x1, x2, x3: F.threshold(x2, 0.3, -1.0), 0),
    ("hardsigmoid", lambda F, x1, x2, x3: F.hardsigmoid(x2), 0),
    ("hardswish", lambda F, x1, x2, x3: F.hardswish(x2, 0.04, 10), 1),
    ("elu", lambda F, x1, x2, x3: F.elu(x2, 0.04, 60, 0.7), 1),
    ("celu", lambda F, x1, x2, x3: F.celu(x2, 0.04, 60, 0.7), 1),
    ("leaky_relu", lambda F, x1, x2, x3: F.leaky_relu(x2, 0.1), 1),
    ("leaky_relu with qparams", lambda F, x1, x2, x3: F.leaky_relu(x2, 0.1, scale=0.03, zero_point=30), 1),
]


@pytest.mark.parametrize("name,call,lsb", OPS, ids=[o[0] for o in OPS])
def test_unweighted_ops_match_torch(name, call, lsb):
    torch.manual_seed(1)
    pairs = [_pair(torch.randn(*s) * 2, 0.05, 120) for s in ((2, 4, 11), (2, 4, 9, 9), (1, 2, 5, 6, 6))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(call(qF, *(p[0] for p in pairs)), call(tF, *(p[1] for p in pairs)), lsb)


def test_every_name_of_torchs_module_is_there_and_bad_inputs_are_clear():
    assert set(tF.__all__) <= set(qF.__all__)
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(TypeError, match="quantized input"):
        qF.max_pool2d(x, 2)
    q = fq.quantize_per_tensor(x, 0.05, 60, fq.quint8)
    with pytest.raises(TypeError, match="qint8 QTensor"):
        qF.conv2d(q, torch.randn(2, 2, 1, 1), None)
    w = fq.quantize_per_tensor(torch.randn(2, 2, 1, 1), 0.01, 0, fq.qint8)
    with pytest.raises(NotImplementedError, match="padding_mode"):
        qF.conv2d(q, w, None, padding_mode="reflect")
    with pytest.raises(ValueError, match="4-D input"):
        qF.conv2d(q[0], w, None)
