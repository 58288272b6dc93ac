"""TorchScript: converted models script (and save / load) with bit-identical outputs, the packed-weight
cache of the torch.ops.ferroquant ops never serves a stale weight, QFunctional.matmul, and the
dynamic Linear treats non-float input the same eager and scripted."""

from __future__ import annotations

import gc

import ferroquant as fq
import numpy as np
import pytest
import torch
import torch.ao.nn.quantized as tnnq
import torch.ao.quantization as tq
from ferroquant import _ops
from torch import nn

FF = fq.nn.quantized.FloatFunctional


def _script_roundtrip(model: nn.Module, path) -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(path))
    return scripted, torch.jit.load(str(path))


def _convert(model: nn.Module, calib: torch.Tensor, qconfig=None, fuse=None) -> nn.Module:
    model = model.eval()
    model.qconfig = qconfig or fq.get_default_qconfig("x86")
    if fuse:
        model = fq.fuse_modules(model, fuse)
    prepared = fq.prepare(model)
    with torch.no_grad():
        prepared(calib)
    return fq.convert(prepared)


def _assert_scripted_matches(converted: nn.Module, x: torch.Tensor, tmp_path) -> None:
    eager = converted(x)
    scripted, loaded = _script_roundtrip(converted, tmp_path / "m.pt")
    assert torch.equal(scripted(x), eager)
    assert torch.equal(loaded(x), eager)
    x2 = x * 0.7 + 0.1  # another input through the same scripted modules
    assert torch.equal(loaded(x2), converted(x2))
    assert torch.equal(converted(x), eager)  # scripting left the eager model as it was


# -- 1. the packed-weight cache ------------------------------------------------------------------
def _dyn(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> float:
    return torch.ops.ferroquant.linear_dynamic(x, w, s, z, None, False).item()


def test_linear_dynamic_op_repacks_weights_allocated_after_a_free():
    # the repro: each weight is a temporary, freed after its call, so the allocator may hand
    # the next one the same address (and it starts at _version 0 too)
    x, s, z = torch.ones(1, 64), torch.ones(1), torch.zeros(1, dtype=torch.int64)
    for _ in range(20):
        out = [_dyn(x, torch.full((1, 64), v, dtype=torch.int8), s, z) for v in (1, -1, 5, 2)]
        assert out == pytest.approx([64, -64, 320, 128], abs=0.01)


def test_cache_never_serves_a_freed_weight_whose_memory_was_reused():
    # the same memory, for certain: two tensors over one numpy buffer, the first freed before the
    # buffer is rewritten without torch knowing (a fresh tensor has _version 0 as the old one had)
    x, s, z = torch.ones(1, 64), torch.ones(1), torch.zeros(1, dtype=torch.int64)
    buf = np.ones((1, 64), dtype=np.int8)
    w = torch.from_numpy(buf)
    ptr = w.data_ptr()
    assert _dyn(x, w, s, z) == pytest.approx(64, abs=0.01)
    del w
    gc.collect()
    buf[:] = 5
    w2 = torch.from_numpy(buf)
    assert w2.data_ptr() == ptr and w2._version == 0
    assert _dyn(x, w2, s, z) == pytest.approx(320, abs=0.01)

    # the static ops: a linear and a conv weight over reused memory
    a = torch.full((1, 64), 130, dtype=torch.uint8)

    def lin(w: torch.Tensor) -> int:
        out = torch.ops.ferroquant.linear_static(a, 1.0, 128, w, s, z, None, 1.0, 0, 0, 255, False, "quint8")
        return int(out.item())

    buf[:] = 1
    assert lin(torch.from_numpy(buf)) == 128
    buf[:] = 2
    assert lin(torch.from_numpy(buf)) == 255  # 256, clamped
    buf[:] = 0
    assert lin(torch.from_numpy(buf)) == 0

    cbuf = np.ones((2, 1, 3, 3), dtype=np.int8)
    img = torch.full((1, 1, 5, 5), 129, dtype=torch.uint8)

    def conv(w: torch.Tensor) -> torch.Tensor:
        return torch.ops.ferroquant.conv_static(
            img, 1.0, 128, w, s, z, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, 1.0, 0, 0, 255, False, "quint8"
        )

    assert torch.equal(conv(torch.from_numpy(cbuf)), torch.full((1, 2, 3, 3), 9, dtype=torch.uint8))
    cbuf[:] = 3
    assert torch.equal(conv(torch.from_numpy(cbuf)), torch.full((1, 2, 3, 3), 27, dtype=torch.uint8))


def test_cache_sees_in_place_edits_of_weights_and_qparams():
    x = torch.ones(1, 64)
    w, s, z = torch.ones(1, 64, dtype=torch.int8), torch.ones(1), torch.zeros(1, dtype=torch.int64)
    assert _dyn(x, w, s, z) == pytest.approx(64, abs=0.01)
    w.fill_(5)
    assert _dyn(x, w, s, z) == pytest.approx(320, abs=0.01)
    w.copy_(torch.full((1, 64), -2, dtype=torch.int8))
    assert _dyn(x, w, s, z) == pytest.approx(-128, abs=0.01)
    s.fill_(0.5)  # the weight scale
    assert _dyn(x, w, s, z) == pytest.approx(-64, abs=0.01)
    z.fill_(-2)  # the weight zero point: (w - z) = 0
    assert _dyn(x, w, s, z) == pytest.approx(0, abs=0.01)
    # equal values in new qparam tensors reuse the packed weights; other values do not
    p1 = _ops.packed_linear_for(w, s, z)
    assert _ops.packed_linear_for(w, s.clone(), z.clone()) is p1
    assert _ops.packed_linear_for(w, s * 2, z) is not p1


def test_cache_entries_live_and_die_with_their_weight():
    w, s, z = torch.ones(4, 8, dtype=torch.int8), torch.ones(1), torch.zeros(1, dtype=torch.int64)
    key = (id(w), ("linear",))
    packed = _ops.packed_linear_for(w, s, z)
    assert _ops.packed_linear_for(w, s, z) is packed and key in _ops._CACHE
    del w
    gc.collect()
    assert key not in _ops._CACHE


def test_loaded_script_module_reuses_its_packed_weights(tmp_path):
    torch.manual_seed(0)
    q = fq.quantize_dynamic(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval())
    _, loaded = _script_roundtrip(q, tmp_path / "dyn.pt")
    del q
    gc.collect()
    x = torch.randn(3, 16)
    before = set(_ops._CACHE)
    y = loaded(x)
    entries = {k: e.packed for k, e in list(_ops._CACHE.items()) if k not in before}
    assert len(entries) == 2  # one per Linear, built on the first call
    assert torch.equal(loaded(x), y)
    assert {k: _ops._CACHE[k].packed for k in entries} == entries  # the same objects: no repacking
    del loaded
    gc.collect()
    assert not set(entries) & set(_ops._CACHE)  # freed with the module's weights


# -- 2. statically converted models script --------------------------------------------------------
class Everything(nn.Module):
    """Every kind of module convert produces, in a 2-d CNN with a residual MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()  # fused into conv: an Identity is left behind
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 1, bias=False)
        self.mm = FF()
        self.relu6 = nn.ReLU6()
        self.hardswish = nn.Hardswish()
        self.drop = nn.Dropout(0.2)
        self.pool = nn.MaxPool2d(2)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True))
        self.plain_relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 16)
        self.fc_relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 16)
        self.add, self.mul, self.cat, self.add_relu, self.scalars = FF(), FF(), FF(), FF(), FF()
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.relu(self.conv(x))
        x = self.mm.matmul(self.conv2(x), self.conv3(x))
        x = self.drop(self.hardswish(self.relu6(x)))
        x = self.plain_relu(self.block(self.pool(x)))
        a = self.fc_relu(self.fc(self.flat(self.gap(x))))
        b = self.fc2(a)
        y = self.add.add(a, b)
        z = self.mul.mul(a, b)
        w = self.cat.cat([y, z], dim=1)
        v = self.add_relu.add_relu(w, w)
        v = self.scalars.mul_scalar(self.scalars.add_scalar(v, 0.25), -1.5)
        return self.dequant(v)


@pytest.mark.parametrize("backend", ["x86", "qnnpack"])  # per-channel and per-tensor weights
def test_every_static_module_kind_scripts_bit_identically(backend, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    c = _convert(Everything(), x, fq.get_default_qconfig(backend), [["conv", "relu"], ["fc", "fc_relu"]])
    kinds = {type(m) for m in c.modules()}
    for cls in (
        fq.nn.quantized.Quantize,
        fq.nn.quantized.DeQuantize,
        fq.nn.intrinsic.quantized.ConvReLU2d,
        fq.nn.quantized.Conv2d,
        fq.nn.intrinsic.quantized.LinearReLU,
        fq.nn.quantized.Linear,
        fq.nn.quantized.QFunctional,
        fq.nn.quantized.ReLU6,
        fq.nn.quantized.Hardswish,
        fq.nn.quantized.Dropout,
    ):
        assert cls in kinds, cls
    assert isinstance(c.relu, nn.Identity) and isinstance(c.block, nn.Sequential) and isinstance(c.pool, nn.MaxPool2d)
    assert repr(c.pool) == "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    _assert_scripted_matches(c, x, tmp_path)


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv = nn.Conv1d(4, 6, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(6, 6, 4, padding="same")  # even kernel: asymmetric padding
        self.pools = nn.Sequential(nn.MaxPool1d(2), nn.AvgPool1d(2, count_include_pad=False, padding=1))
        self.gap = nn.AdaptiveAvgPool1d(3)
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.gap(self.pools(self.conv2(x))))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv3d(4, 4, (1, 2, 2), dilation=(1, 2, 1), groups=2)
        self.max = nn.MaxPool3d(2, ceil_mode=True)
        self.avg = nn.AvgPool3d(2, stride=1, divisor_override=3)
        self.gap = nn.AdaptiveAvgPool3d((1, 2, 1))
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.gap(self.avg(self.max(self.conv2(x)))))


@pytest.mark.parametrize(
    "make, shape",
    [(Conv1dNet, (3, 4, 21)), (Conv3dNet, (2, 2, 6, 7, 8))],
    ids=["conv1d", "conv3d"],
)
def test_conv1d_and_conv3d_models_script_bit_identically(make, shape, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(shape)
    c = _convert(make(), x, fuse=[["conv", "relu"]])
    assert isinstance(c.conv, (fq.nn.intrinsic.quantized.ConvReLU1d, fq.nn.intrinsic.quantized.ConvReLU3d))
    _assert_scripted_matches(c, x, tmp_path)


def test_sequential_models_script_whatever_they_hold(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(fq.QuantStub(), nn.Conv2d(3, 4, 3), nn.ReLU()),  # float in, quantized out
        nn.Sequential(nn.MaxPool2d(2), nn.Identity()),  # passes either through
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.Flatten(), fq.DeQuantStub()),  # quantized in, float out
        nn.Sequential(nn.Tanh(), nn.Identity()),  # float only: back to a plain nn.Sequential
    )
    x = torch.randn(2, 3, 8, 8)
    c = _convert(model, x)
    assert type(c[3]) is nn.Sequential and type(c[3][0]) is nn.Tanh
    assert all(isinstance(m, nn.Sequential) and repr(m).startswith("Sequential(") for m in c)
    _assert_scripted_matches(c, x, tmp_path)


def test_docs_static_example_scripts(tmp_path):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = fq.QuantStub()
            self.conv = torch.nn.Conv2d(1, 1, 1)
            self.relu = torch.nn.ReLU()
            self.dequant = fq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.relu(self.conv(self.quant(x))))

    x = torch.randn(4, 1, 4, 4)
    c = _convert(M(), x, fuse=[["conv", "relu"]])
    _assert_scripted_matches(c, x, tmp_path)


def test_scripted_modules_take_and_return_the_tuple_form():
    # a module scripted on its own takes QTensor.to_tuple() and returns the eager result's parts
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    c = _convert(nn.Sequential(fq.QuantStub(), nn.Conv2d(3, 4, 3), nn.Hardswish()), x)
    q = c[0](x)
    for mod in (c[1], c[2], fq.nn.quantized.ReLU6(), c[2]):
        out, tup = mod(q), torch.jit.script(mod)(q.to_tuple())
        assert torch.equal(tup[0], out.int_repr())
        assert tup[1].dtype == torch.float64 and tup[1].item() == out.q_scale()
        assert tup[2].item() == out.q_zero_point()
        q = out
    assert torch.equal(torch.jit.script(c[0])(x)[0], c[0](x).int_repr())


def test_scripted_qfunctional_errors_are_clear():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.quant2 = fq.QuantStub(), fq.QuantStub()
            self.mm = FF()
            self.dequant = fq.DeQuantStub()

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.dequant(self.mm.matmul(self.quant(a), self.quant2(b)))

    torch.manual_seed(0)
    m = M().eval()
    m.qconfig = fq.default_qconfig
    p = fq.prepare(m)
    p(torch.randn(3, 4), torch.randn(4, 5))
    c = fq.convert(p)
    s = torch.jit.script(c)
    a, b = torch.randn(3, 4), torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"x has shape \[3, 4\] and y \[5, 2\]"):
        c(a, b)
    with pytest.raises(torch.jit.Error, match=r"ValueError: QFunctional.matmul: x has shape \[3, 4\] and y \[5, 2\]"):
        s(a, b)


# -- 3. QFunctional.matmul ------------------------------------------------------------------------
def _float64_matmul_reference(qa, qb, scale: float, zero_point: int) -> torch.Tensor:
    da = (qa.int_repr().double() - qa.q_zero_point()) * qa.q_scale()
    db = (qb.int_repr().double() - qb.q_zero_point()) * qb.q_scale()
    return torch.clamp(torch.round(torch.matmul(da, db) / scale) + zero_point, 0, 255)


@pytest.mark.parametrize(
    "sa, sb",
    [((7, 40), (40, 9)), ((3, 5, 64), (3, 64, 6)), ((2, 3, 4, 8), (8, 5)), ((12,), (12, 3)), ((4, 12), (12,))],
)
def test_qfunctional_matmul_matches_torch_and_float64(sa, sb):
    g = torch.Generator().manual_seed(sum(sa) + sum(sb))
    a, b = torch.randn(sa, generator=g), torch.randn(sb, generator=g) * 0.5
    qs = dict(a=(0.021, 121), b=(0.013, 126), out=(0.09, 131))
    ours = fq.nn.quantized.QFunctional()
    ours._init_output(*qs["out"], 0, 255, fq.quint8)
    theirs = tnnq.QFunctional()
    theirs.scale, theirs.zero_point = qs["out"]
    qa, qb = fq.quantize_per_tensor(a, *qs["a"], fq.quint8), fq.quantize_per_tensor(b, *qs["b"], fq.quint8)
    ta, tb = torch.quantize_per_tensor(a, *qs["a"], torch.quint8), torch.quantize_per_tensor(b, *qs["b"], torch.quint8)
    assert torch.equal(qa.int_repr(), ta.int_repr()) and torch.equal(qb.int_repr(), tb.int_repr())
    out = ours.matmul(qa, qb)
    assert (out.q_scale(), out.q_zero_point(), out.dtype) == (*qs["out"], fq.quint8)
    got = out.int_repr().double()
    ref_torch = theirs.matmul(ta, tb).int_repr().double()
    ref64 = _float64_matmul_reference(qa, qb, *qs["out"])
    assert got.shape == ref_torch.shape == ref64.shape
    assert (got - ref_torch).abs().max() <= 1 and (got - ref64).abs().max() <= 1
    assert (got == ref64).double().mean() >= 0.99
    assert got.std() > 2  # the test data spreads over many output codes


class MatmulNet(nn.Module):
    def __init__(self, lib, ff_cls) -> None:
        super().__init__()
        self.qa, self.qb = lib.QuantStub(), lib.QuantStub()
        self.mm = ff_cls()
        self.dequant = lib.DeQuantStub()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.mm.matmul(self.qa(a), self.qb(b)))


def test_converted_float_functional_matmul_matches_torch_eager_and_scripted(tmp_path):
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 6, 32, generator=g), torch.randn(2, 32, 5, generator=g)
    kw = dict(quant_min=0, quant_max=255)
    ours, theirs = MatmulNet(fq, FF).eval(), MatmulNet(tq, tnnq.FloatFunctional).eval()
    ours.qconfig = fq.QConfig(activation=fq.MinMaxObserver.with_args(**kw), weight=fq.default_weight_observer)
    theirs.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(**kw), weight=tq.default_weight_observer)
    po, pt = fq.prepare(ours), tq.prepare(theirs)
    po(a, b)
    pt(a, b)
    co, ct = fq.convert(po), tq.convert(pt)
    assert isinstance(co.mm, fq.nn.quantized.QFunctional)
    assert co.mm.scale == pytest.approx(float(ct.mm.scale), rel=1e-6) and co.mm.zero_point == int(ct.mm.zero_point)
    out, ref = co(a, b), ct(a, b)
    assert ((out - ref).abs() / co.mm.scale).max() <= 1 + 1e-3
    scripted, loaded = _script_roundtrip(co, tmp_path / "mm.pt")
    assert torch.equal(scripted(a, b), out) and torch.equal(loaded(a, b), out)


def test_qfunctional_matmul_needs_calibration():
    m = MatmulNet(fq, FF).eval()
    m.qconfig = fq.default_qconfig
    p = fq.prepare(m)
    p.qa(torch.randn(2, 2))  # the stubs see data, the matmul never does
    p.qb(torch.randn(2, 2))
    c = fq.convert(p)
    with pytest.raises(fq.observer.CalibrationError, match="saw no data during calibration"):
        c(torch.randn(2, 3), torch.randn(3, 2))


# -- 4. dynamic Linear: non-float input -----------------------------------------------------------
def test_dynamic_linear_rejects_integer_input_eager_and_scripted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8)).eval()
    q = fq.quantize_dynamic(model, {nn.Linear})
    scripted = torch.jit.script(q)
    x = torch.arange(64).reshape(1, 64)
    with pytest.raises(RuntimeError, match="expected scalar type Float"):  # torch rejects it too
        tq.quantize_dynamic(model, {nn.Linear})(x)
    msg = r"DynamicQuantizedLinear \(ferroquant.nn.quantized.dynamic.Linear\) expects a floating point input"
    with pytest.raises(TypeError, match=msg + r", got torch.int64; pass a float tensor \(e.g. x.float\(\)\)"):
        q(x)
    with pytest.raises(torch.jit.Error, match="TypeError: " + msg + r".*pass a float tensor \(e.g. x.float\(\)\)"):
        scripted(x)
    for bad in (torch.ones(1, 64, dtype=torch.bool), torch.ones(1, 64, dtype=torch.uint8)):
        with pytest.raises(TypeError, match=msg):
            q(bad)
        with pytest.raises(torch.jit.Error, match=msg):
            scripted(bad)
    with pytest.raises(TypeError, match=r"x must be a floating point tensor, got torch.int64"):
        torch.ops.ferroquant.linear_dynamic(x, q[0]._w, q[0]._w_scale, q[0]._w_zp, None, False)
    # float inputs of any width: the same result both ways
    for xf in (x.float(), x.double(), x.half()):
        assert torch.equal(scripted(xf), q(xf))
    # a wrong width: ValueError naming in_features, both ways
    with pytest.raises(ValueError, match=r"in_features = 64"):
        q(torch.ones(2, 32))
    with pytest.raises(torch.jit.Error, match=r"ValueError: DynamicQuantizedLinear expects .*in_features = 64"):
        scripted(torch.ones(2, 32))
