"""Quantized ConvTranspose1d/2d/3d: against torch.ao's conversion (per-tensor weights, torch's
"fbgemm" engine), per-channel weights (beyond torch) against the float64 reference of the integer
problem, [ConvTranspose, BN] fusion, state_dict, every engine and thread count, bad inputs."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from _torchvision import REFERENCE_ENGINE
from torch import nn

CASES = [
    (nn.ConvTranspose2d, dict(kernel_size=3, stride=2, padding=1, output_padding=1), (2, 4, 5, 6), 6),
    (
        nn.ConvTranspose2d,
        dict(kernel_size=(3, 2), stride=(2, 3), padding=(0, 1), dilation=(1, 2), groups=2),
        (2, 4, 5, 6),
        6,
    ),
    (nn.ConvTranspose2d, dict(kernel_size=3, padding=3), (1, 4, 9, 9), 4),  # padding beyond the span: cropped
    (nn.ConvTranspose2d, dict(kernel_size=1, stride=2, bias=False), (2, 8, 4, 4), 16),
    (nn.ConvTranspose1d, dict(kernel_size=4, stride=3, padding=2), (2, 3, 7), 5),
    (
        nn.ConvTranspose1d,
        dict(kernel_size=3, stride=2, groups=3, output_padding=1),
        (1, 6, 1),
        3,
    ),  # depthwise-like, length 1
    (nn.ConvTranspose3d, dict(kernel_size=3, stride=2, padding=1), (1, 2, 3, 4, 5), 4),
    (nn.ConvTranspose3d, dict(kernel_size=(1, 3, 2), stride=(1, 2, 2), dilation=(1, 1, 2)), (1, 3, 2, 3, 4), 2),
]
IDS = [f"{c.__name__[-2:]}-{i}" for i, (c, *_rest) in enumerate(CASES)]


def _per_tensor(lib):
    return lib.QConfig(
        activation=lib.HistogramObserver.with_args(reduce_range=True), weight=lib.default_weight_observer
    )


def _convert(lib, base: nn.Module, calib: list[torch.Tensor], qconfig) -> nn.Module:
    m = nn.Sequential(lib.QuantStub(), copy.deepcopy(base), lib.DeQuantStub()).eval()
    m.qconfig = qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = lib.prepare(m)
        with torch.no_grad():
            for c in calib:
                p(c)
        return lib.convert(p)


def _make(cls, kw, shape, out_channels):
    torch.manual_seed(0)
    base = cls(shape[1], out_channels, **kw).eval()
    x = torch.randn(shape)
    # calibrated on x too: activations stay in 0..127, where torch's FBGEMM is exact on every CPU
    calib = [torch.randn(shape) for _ in range(2)] + [x]
    return base, x, calib


@pytest.mark.parametrize("cls,kw,shape,cout", CASES, ids=IDS)
def test_conv_transpose_equals_torch_per_tensor(cls, kw, shape, cout):
    base, x, calib = _make(cls, kw, shape, cout)
    ours = _convert(fq, base, calib, _per_tensor(fq))
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = REFERENCE_ENGINE  # torch's x86 engine (oneDNN) was tens of LSB off here
    try:
        theirs = _convert(tq, base, calib, _per_tensor(tq))
        with torch.no_grad():
            want = theirs(x)
    finally:
        torch.backends.quantized.engine = previous
    q = ours[1]
    assert type(q).__name__ == cls.__name__ and q._get_name() == "Quantized" + cls.__name__
    # the float module's layout and values on the int8 grid (torch's unpacked weight() of a
    # quantized ConvTranspose comes back in its packed order, flipped)
    w = q.weight()
    assert w.shape == base.weight.shape
    assert (w.dequantize() - base.weight.detach()).abs().max() <= w.q_scale() / 2 + 1e-7
    assert q.weight().shape == base.weight.shape  # torch's transposed layout
    with torch.no_grad():
        got = ours(x)
    assert got.shape == base(x).shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("cls,kw,shape,cout", CASES, ids=IDS)
def test_conv_transpose_per_channel_is_the_exact_integer_problem(cls, kw, shape, cout):
    """Beyond torch (its ConvTranspose refuses per-channel observers): one weight scale per output
    channel, along axis 1 of the transposed layout; within 1 LSB of the float64 transposed conv of
    the dequantized integers, and every engine / thread count gives the same bits."""
    base, x, calib = _make(cls, kw, shape, cout)
    ours = _convert(fq, base, calib, fq.get_default_qconfig("x86"))
    q = ours[1]
    w = q.weight()
    assert w.is_per_channel and w.q_per_channel_axis() == 1 and w.q_per_channel_scales().numel() == cout // q.groups
    with torch.no_grad():
        qin = ours[0](x)
        got = q(qin)
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[q._NDIM]
        bias = None if q.bias() is None else q.bias().double()
        ref = fn(
            qin.dequantize().double(),
            w.dequantize().double(),
            bias,
            q.stride,
            q.padding,
            q.output_padding,
            q.groups,
            q.dilation,
        )
        ref_q = torch.clamp(torch.round(ref / q.scale) + q.zero_point, 0, 255)
    assert (got.int_repr().double() - ref_q).abs().max() <= 1
    base_bits = got.int_repr()
    for e in fq.backends.supported_engines:
        fq.backends.engine = e
        for t in (1, 2):
            fq.set_num_threads(t)
            assert torch.equal(q(qin).int_repr(), base_bits), (e, t)
    fq.backends.engine = "auto"


def test_conv_transpose_bn_fusion_equals_torch():
    class M(nn.Module):
        def __init__(self, stubs):
            super().__init__()
            self.quant, self.dequant = stubs[0](), stubs[1]()
            self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(6)

        def forward(self, x):
            return self.dequant(self.bn(self.up(self.quant(x))))

    torch.manual_seed(0)
    ours_f = M((fq.QuantStub, fq.DeQuantStub)).eval()
    with torch.no_grad():
        ours_f.bn.running_mean.uniform_(-0.5, 0.5)
        ours_f.bn.running_var.uniform_(0.5, 2)
        ours_f.bn.weight.uniform_(0.5, 1.5)
    theirs_f = M((tq.QuantStub, tq.DeQuantStub)).eval()
    theirs_f.load_state_dict(ours_f.state_dict())
    ours = fq.fuse_modules(ours_f, [["up", "bn"]])
    theirs = tq.fuse_modules(theirs_f, [["up", "bn"]])
    assert isinstance(ours.bn, nn.Identity) and torch.equal(ours.up.weight, theirs.up.weight)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(ours(x), ours_f(x), atol=1e-5)
    ours.qconfig, theirs.qconfig = _per_tensor(fq), _per_tensor(tq)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = REFERENCE_ENGINE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = []
            for lib, m in ((fq, ours), (tq, theirs)):
                p = lib.prepare(m)
                p(x)
                outs.append(lib.convert(p)(x))
    finally:
        torch.backends.quantized.engine = previous
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(NotImplementedError, match="quantization-aware training"):
        fq.fuse_modules_qat(M((fq.QuantStub, fq.DeQuantStub)).train(), [["up", "bn"]])


def test_conv_transpose_state_dict_pickle_and_errors():
    base, x, calib = _make(*CASES[1])
    for qconfig in (_per_tensor(fq), fq.get_default_qconfig("x86")):
        q = _convert(fq, base, calib, qconfig)
        m = q[1]
        qin = q[0](x)
        want = m(qin)
        fresh = fq.nn.quantized.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(0, 1), groups=2, dilation=(1, 2))
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        assert torch.equal(fresh(qin).int_repr(), want.int_repr())
        assert torch.equal(pickle.loads(pickle.dumps(m))(qin).int_repr(), want.int_repr())
        assert "output_padding=" in repr(m)
    bad = m.state_dict()
    bad["weight_axis"] = torch.tensor(0)
    with pytest.raises(RuntimeError, match="weight_axis"):
        fresh.load_state_dict(bad)
    assert torch.equal(fresh(qin).int_repr(), want.int_repr())  # nothing changed
    with pytest.raises(TypeError, match="QuantStub"):
        m(x)
    with pytest.raises(ValueError, match="expects input"):
        m(fq.quantize_per_tensor(torch.randn(2, 5, 4, 4), 0.1, 100, fq.quint8))
    with pytest.raises(NotImplementedError, match="TorchScript"):
        torch.jit.script(q)
    with pytest.raises(ValueError, match="output_padding"):
        fq.nn.quantized.ConvTranspose2d(4, 4, 3, stride=1, output_padding=1)
    with pytest.raises(ValueError, match="padding"):
        fq.nn.quantized.ConvTranspose2d(4, 4, 3, padding="same")
    w = fq.quantize_per_channel(
        torch.randn(4, 3, 3, 2), torch.full((4,), 0.1), torch.zeros(4, dtype=torch.long), 0, fq.qint8
    )
    with pytest.raises(ValueError, match="axis 1"):
        fresh.set_weight_bias(w, None)


@pytest.mark.parametrize("cin,cout", [(8, 8), (4, 8)])
def test_conv_transpose_in_a_qat_model_converts_per_output_channel(cin, cout):
    """A QAT model keeps nn.ConvTranspose float while training (as torch.ao); convert quantizes it
    with the QAT qconfig's weight fake-quant, per output channel along axis 1."""
    torch.manual_seed(0)
    model = nn.Sequential(fq.QuantStub(), nn.ConvTranspose2d(cin, cout, 3, stride=2), fq.DeQuantStub()).train()
    model.qconfig = fq.get_default_qat_qconfig("x86")
    prepared = fq.prepare_qat(model)
    for _ in range(3):
        prepared(torch.randn(2, cin, 5, 5))
    q = fq.convert(prepared.eval())
    w = q[1].weight()
    assert w.q_per_channel_axis() == 1 and w.q_per_channel_scales().numel() == cout
    float_w = model[1].weight.detach()
    assert (w.dequantize() - float_w).abs().max() <= w.q_per_channel_scales().max() / 2 + 1e-7
    x = torch.randn(2, cin, 5, 5)
    assert F.cosine_similarity(q(x).flatten(), prepared(x).flatten(), dim=0) > 0.99


@pytest.mark.parametrize("groups,cout", [(2, 6), (4, 4)])
def test_grouped_conv_transpose_bn_fusion_matches_the_float_pair(groups, cout):
    torch.manual_seed(0)
    up, bn = nn.ConvTranspose2d(4, cout, 3, stride=2, groups=groups), nn.BatchNorm2d(cout)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    model = nn.Sequential(up, bn).eval()
    fused = fq.fuse_modules(model, [["0", "1"]])
    assert fused[0].weight.shape == up.weight.shape and isinstance(fused[1], nn.Identity)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(fused(x), model(x), atol=1e-5)
    no_affine = nn.Sequential(nn.ConvTranspose2d(4, cout, 3, groups=groups), nn.BatchNorm2d(cout, affine=False)).eval()
    assert torch.allclose(fq.fuse_modules(no_affine, [["0", "1"]])(x), no_affine(x), atol=1e-5)
