"""QFunctional.add / add_relu on u8 in one Rust pass: the same bits as the float definition
(dequantize as torch's vector loops, add in float32, quantize by D3), whatever the memory layout;
other cases fall back. Equal to torch's quantized add bit for bit."""

from __future__ import annotations

import copy

import ferroquant as fq
import pytest
import torch
from ferroquant import _core
from ferroquant.nn.quantized.functional_modules import QFunctional, addend


def _qf(scale: float, zp: int, qmin: int = 0, qmax: int = 255, dtype: str = "quint8") -> QFunctional:
    q = QFunctional()
    q.scale, q.zero_point, q.quant_min, q.quant_max = scale, zp, qmin, qmax
    q._out_dtype = fq.qint8 if dtype == "qint8" else fq.quint8
    q._out_dtype_name = dtype
    return q


def _operand(shape: tuple[int, ...], scale: float, zp: int, channels_last: bool, seed: int) -> fq.QTensor:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    return fq.QTensor(data, scale, zp, fq.quint8)


def _float_definition(q: QFunctional, a: fq.QTensor, b: fq.QTensor, relu: bool) -> torch.Tensor:
    # torch's vectorised add: each operand as fma(q, s, fl(s·−zp)) (exact in float64, one rounding)
    v = addend(a.int_repr(), a.q_scale(), a.q_zero_point()) + addend(b.int_repr(), b.q_scale(), b.q_zero_point())
    if relu:
        v = torch.relu(v)
    return torch.clamp(
        fq.quantize_per_tensor(v, q.scale, q.zero_point, q._out_dtype).int_repr(), q.quant_min, q.quant_max
    )


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("out", "qmin", "qmax", "dtype"),
    [((0.11, 128), 0, 255, "quint8"), ((0.05, 3), 0, 127, "quint8"), ((0.2, -5), -128, 127, "qint8")],
)
def test_fused_add_equals_the_float_definition(
    relu: bool,
    channels_last: bool,
    out: tuple[float, int],
    qmin: int,
    qmax: int,
    dtype: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = _qf(*out, qmin=qmin, qmax=qmax, dtype=dtype)
    a = _operand((2, 24, 7, 9), 0.05, 3, channels_last, 0)
    b = _operand((2, 24, 7, 9), 0.07, 200, channels_last, 1)
    calls = []
    real = _core.add_requant

    def spy(*args: object) -> object:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_core, "add_requant", spy)
    got = q.add_relu(a, b) if relu else q.add(a, b)
    assert calls, "the fused path did not run"
    want = _float_definition(q, a, b, relu)
    assert torch.equal(got.int_repr(), want)
    assert got.int_repr().stride() == a.int_repr().stride()  # the layout is kept
    assert got.q_scale() == q.scale and got.q_zero_point() == q.zero_point


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(
    ("a_qp", "b_qp", "out_qp"),
    [
        ((0.05, 3), (0.07, 200), (0.11, 128)),
        ((0.0625, 17), (0.125, 9), (0.25, 31)),  # power-of-two scales, odd zero points: ties
        ((0.0302, 0), (0.0686, 0), (0.0440, 0)),  # a residual block's add_relu
    ],
)
def test_fused_add_equals_torch_quantized_add(relu, a_qp, b_qp, out_qp) -> None:
    """torch's own ``quantized::add`` / ``add_relu`` on tensors whose size is a multiple of its
    vector width (its scalar tail rounds the legacy way): bit for bit."""
    q = _qf(*out_qp)
    a = _operand((2, 64, 6, 8), *a_qp, True, 3)
    b = _operand((2, 64, 6, 8), *b_qp, True, 4)
    got = q.add_relu(a, b) if relu else q.add(a, b)
    ta = torch.quantize_per_tensor(a.dequantize(), a_qp[0], a_qp[1], torch.quint8)
    tb = torch.quantize_per_tensor(b.dequantize(), b_qp[0], b_qp[1], torch.quint8)
    assert torch.equal(ta.int_repr(), a.int_repr()) and torch.equal(tb.int_repr(), b.int_repr())
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    want = op(ta, tb, out_qp[0], out_qp[1])
    assert torch.equal(got.int_repr(), want.int_repr())
    # the float path (other layouts) and TorchScript give the same bits
    c = fq.QTensor(b.int_repr().contiguous(), *b_qp, fq.quint8)
    other = q.add_relu(a, c) if relu else q.add(a, c)
    assert torch.equal(other.int_repr(), want.int_repr())


def test_mixed_layouts_and_broadcasting_take_the_float_path() -> None:
    q = _qf(0.1, 10)
    a = _operand((1, 8, 5, 5), 0.05, 3, True, 0)
    b = _operand((1, 8, 5, 5), 0.07, 9, False, 1)
    assert torch.equal(q.add(a, b).int_repr(), _float_definition(q, a, b, False))
    c = _operand((1, 8, 1, 1), 0.07, 9, False, 2)  # broadcast
    assert torch.equal(q.add(a, c).int_repr(), _float_definition(q, a, c, False))


def test_add_requant_validates_its_arguments() -> None:
    import numpy as np

    a = np.zeros(4, dtype=np.uint8)
    with pytest.raises(ValueError, match="one shape"):
        _core.add_requant(a, 0.1, 0, np.zeros(3, dtype=np.uint8), 0.1, 0, 0.1, 0, 0, 255)
    with pytest.raises(TypeError, match="uint8"):
        _core.add_requant(a.astype(np.int8), 0.1, 0, a, 0.1, 0, 0.1, 0, 0, 255)
    with pytest.raises(ValueError, match="scale"):
        _core.add_requant(a, float("nan"), 0, a, 0.1, 0, 0.1, 0, 0, 255)
    with pytest.raises(TypeError, match="quint8 or qint8"):
        _core.add_requant(a, 0.1, 0, a, 0.1, 0, 0.1, 0, 0, 255, False, "qint32")


@pytest.mark.parametrize(
    ("nd", "shape", "args", "kwargs"),
    [
        (2, (2, 16, 11, 9), (3, 2, 1), {}),
        (2, (1, 64, 12, 12), (3,), {"stride": 2, "padding": 1}),
        (2, (2, 5, 9, 10), (2,), {}),
        (2, (1, 17, 13, 11), ((3, 2),), {"stride": (2, 1), "padding": (1, 0), "dilation": (2, 1)}),
        (1, (2, 7, 13), (3, 2, 1), {}),
        (3, (1, 4, 5, 6, 7), (3, 2, 1), {}),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_on_u8_equals_the_float_path(
    nd: int, shape: tuple[int, ...], args: tuple, kwargs: dict, channels_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(nd)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if channels_last and nd == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    q = fq.QTensor(x, 0.1, 3, fq.quint8)
    calls = []
    real = _core.max_pool_nhwc
    monkeypatch.setattr(_core, "max_pool_nhwc", lambda *a: calls.append(1) or real(*a))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    got = pool(q, *args, **kwargs)
    assert calls, "the u8 path did not run"
    want = pool(x.float(), *args, **kwargs).to(torch.uint8)
    assert torch.equal(got.int_repr(), want)
    assert got.q_scale() == 0.1 and got.q_zero_point() == 3


def test_max_pool_cases_the_u8_path_leaves_to_torch() -> None:
    import torch.nn.functional as F

    x = torch.randint(0, 256, (1, 3, 7, 7), dtype=torch.uint8)
    q = fq.QTensor(x, 0.1, 3, fq.quint8)
    # ceil_mode, qint8 data: the float path, same answers as torch
    assert torch.equal(F.max_pool2d(q, 2, ceil_mode=True).int_repr(), F.max_pool2d(x.float(), 2, ceil_mode=True).byte())
    qi = fq.QTensor(x.to(torch.int8), 0.1, 0, fq.qint8)
    assert torch.equal(F.max_pool2d(qi, 3).int_repr(), F.max_pool2d(x.to(torch.int8).float(), 3).to(torch.int8))
    # torch's own errors for what torch rejects
    with pytest.raises(RuntimeError, match="pad should be"):
        F.max_pool2d(q, 2, padding=2)
    with pytest.raises(RuntimeError):
        F.max_pool2d(q, 9)
    with pytest.raises(TypeError, match="max_pool2d_with_indices"):
        F.max_pool2d(q, 2, return_indices=True)


def _avg_rule(pool, x: torch.Tensor, zp: int, args: tuple, kwargs: dict) -> torch.Tensor:
    """``rne(mean(q − zp) + zp)`` on float64 (exact for 8-bit sums), clamped to quint8."""
    return torch.round(pool(x.to(torch.float64) - zp, *args, **kwargs) + zp).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize(
    "nd, shape, args, kwargs",
    [
        (2, (2, 16, 11, 9), (3, 2, 1), {}),
        (2, (1, 64, 12, 12), (3,), {"stride": 2, "padding": 1, "count_include_pad": False}),
        (2, (1, 7, 7, 10), (3,), {"stride": 2, "padding": 1, "ceil_mode": True}),
        (2, (2, 5, 9, 10), (2,), {"divisor_override": 3}),
        (
            2,
            (1, 17, 13, 11),
            ((3, 2),),
            {"stride": (2, 1), "padding": (1, 0), "ceil_mode": True, "count_include_pad": False},
        ),
        (1, (2, 7, 13), (3, 2, 1), {}),
        (3, (1, 4, 5, 6, 7), (3, 2, 1), {}),
    ],
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_avg_pool_on_u8_equals_the_rule(
    nd: int, shape: tuple[int, ...], args: tuple, kwargs: dict, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(len(shape) + len(kwargs))
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if layout == "channels_last" and nd == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # the last two axes' memory order swapped (Fortran-like)
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    q = fq.QTensor(x, 0.1, 7, fq.quint8)
    calls = []
    real = _core.avg_pool_nhwc
    monkeypatch.setattr(_core, "avg_pool_nhwc", lambda *a: calls.append(1) or real(*a))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    got = pool(q, *args, **kwargs)
    assert calls, "the u8 path did not run"
    assert torch.equal(got.int_repr(), _avg_rule(pool, x, 7, args, kwargs))
    assert got.q_scale() == 0.1 and got.q_zero_point() == 7
    if layout == "channels_last" and nd == 2:
        assert got.int_repr().is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "nd, shape, size",
    [(2, (1, 1280, 7, 7), 1), (2, (2, 3, 7, 9), (3, None)), (1, (2, 5, 10), 4), (3, (1, 2, 5, 6, 7), (2, 3, 4))],
)
def test_adaptive_avg_pool_on_u8_equals_the_rule(
    nd: int, shape: tuple[int, ...], size: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(nd), dtype=torch.uint8)
    q = fq.QTensor(x, 0.05, 128, fq.quint8)
    calls = []
    real = _core.avg_pool_nhwc
    monkeypatch.setattr(_core, "avg_pool_nhwc", lambda *a: calls.append(1) or real(*a))
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[nd]
    got = pool(q, size)
    assert calls, "the u8 path did not run"
    assert torch.equal(got.int_repr(), _avg_rule(pool, x, 128, (size,), {}))


def test_avg_pool_cases_the_u8_path_leaves_to_torch() -> None:
    import torch.nn.functional as F

    x = torch.randint(0, 256, (1, 3, 7, 7), dtype=torch.uint8)
    q = fq.QTensor(x, 0.1, 3, fq.quint8)
    with pytest.raises(RuntimeError, match="pad should be"):
        F.avg_pool2d(q, 2, padding=2)
    with pytest.raises(RuntimeError):
        F.avg_pool2d(q, 9)
    with pytest.raises(RuntimeError):
        F.avg_pool2d(q, 2, divisor_override=0)
    # unbatched input and qint8 data: the float path, the same rule
    assert torch.equal(F.avg_pool2d(q[0], 3).int_repr(), _avg_rule(F.avg_pool2d, x[0], 3, (3,), {}))
    qi = fq.QTensor(x.to(torch.int8), 0.1, 0, fq.qint8)
    want = torch.round(F.avg_pool2d(x.to(torch.int8).double(), 3))
    assert torch.equal(F.avg_pool2d(qi, 3).int_repr(), want.to(torch.int8))


def test_u8_kernels_read_fortran_ordered_arrays_in_logical_order() -> None:
    """Regression: a Fortran-ordered numpy view (contiguous, but not in C order) was read in its
    memory order."""
    import numpy as np

    a = np.asfortranarray(np.arange(24, dtype=np.uint8).reshape(1, 1, 4, 6, 1))
    c = np.ascontiguousarray(a)
    ones = [1, 1, 1]
    assert np.array_equal(_core.max_pool_nhwc(a, ones, ones, [0, 0, 0], ones), c)
    whole = ([0], [1], [1])
    w = [whole, ([0, 1, 2, 3], [1, 2, 3, 4], [1, 1, 1, 1]), ([0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], [1] * 6)]
    assert np.array_equal(_core.avg_pool_nhwc(a, w, None, 0, 0, 255), c)
    f = np.asfortranarray(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6))
    assert np.array_equal(
        _core.quantize_per_tensor(f, 0.01, 0, -128, 127, "qint8"),
        _core.quantize_per_tensor(np.ascontiguousarray(f), 0.01, 0, -128, 127, "qint8"),
    )


class _ConvBNAct(torch.nn.Module):
    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        self.quant, self.dequant = fq.QuantStub(), fq.DeQuantStub()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = act
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.act(self.bn(self.conv(self.quant(x)))))


@pytest.mark.parametrize("act", [torch.nn.ReLU6(), torch.nn.Hardtanh(0.0, 2.5)])
def test_conv_bn_relu6_and_hardtanh_fuse_into_the_conv_output_stage(act: torch.nn.Module) -> None:
    """[Conv, BN, ReLU6 / Hardtanh(0, max)] fuse (beyond torch.ao) into a quantized ConvReLU2d: the
    activation runs in the float module while calibrating, so the output observer sees [0, max],
    and the fused ReLU clamp with that range is the activation's clamp: the same integers as a
    fused ReLU with the same calibration, outputs in [0, max], close to the float model."""
    torch.manual_seed(0)
    model = _ConvBNAct(act).eval()
    x = torch.randn(2, 4, 9, 9) * 3
    with torch.no_grad():
        want = model(x)
    fused = fq.fuse_modules(model, [["conv", "bn", "act"]])
    assert isinstance(fused.conv, fq.nn.intrinsic.ConvReLU2d) and isinstance(fused.conv[1], type(act))
    fused.qconfig = fq.get_default_qconfig("x86")
    prepared = fq.prepare(fused)
    with torch.no_grad():
        prepared(x)
    as_relu = copy.deepcopy(prepared)
    as_relu.conv[1] = torch.nn.ReLU()  # same observers and calibration, a plain fused ReLU
    q, q_relu = fq.convert(prepared), fq.convert(as_relu)
    assert isinstance(q.conv, fq.nn.intrinsic.quantized.ConvReLU2d)
    top = act.max_val
    assert 0 < q.conv.scale * (q.conv.quant_max - q.conv.zero_point) <= top + q.conv.scale
    with torch.no_grad():
        got, same = q(x), q_relu(x)
    # the same integers as a fused ReLU, capped at max quantized (a plain fused ReLU now clamps at
    # the dtype's top, as torch; the ReLU6 / Hardtanh one at its own max)
    cap = q.conv.scale * (q.conv.quant_max - q.conv.zero_point)
    assert q.conv.quant_max < 255
    assert torch.equal(got, torch.clamp(same, max=cap))
    assert got.min() >= 0 and got.max() <= top + 1e-6
    # input quantization dominates the error; a loose float check that the clamp is at `top`
    assert (got - want).abs().max() <= 0.1 * top


def test_hardtanh_with_a_negative_floor_is_not_fused() -> None:
    model = _ConvBNAct(torch.nn.Hardtanh(-1.0, 1.0)).eval()
    with pytest.raises(NotImplementedError, match="min_val=0"):
        fq.fuse_modules(model, [["conv", "bn", "act"]])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_dtype", ["quint8", "qint8"])
def test_table_ops_equal_their_float_definitions(channels_last: bool, out_dtype: str) -> None:
    """Hardswish and QFunctional.cat requantization on quint8 inputs run as 256-entry tables of
    their float definitions: the same integers as the float path, the layout kept."""
    from ferroquant.nn.quantized import Hardswish

    a = _operand((2, 16, 5, 7), 0.07, 120, channels_last, 3)
    b = _operand((2, 8, 5, 7), 0.03, 10, channels_last, 4)
    dt = fq.qint8 if out_dtype == "qint8" else fq.quint8
    zp = -3 if out_dtype == "qint8" else 40
    hs = Hardswish(0.04, 0)
    hs._init_output(0.04, zp, dt.qmin + 2, dt.qmax - 1, dt)
    got = hs(a)
    d = a.dequantize()
    want = torch.clamp(
        fq.quantize_per_tensor(d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0, 0.04, zp, dt).int_repr(),
        dt.qmin + 2,
        dt.qmax - 1,
    )
    assert torch.equal(got.int_repr(), want)
    assert got.int_repr().stride() == a.int_repr().stride()
    q = _qf(0.05, zp, dt.qmin + 1, dt.qmax - 2, out_dtype)
    got = q.cat([a, b], dim=1)
    want = torch.clamp(
        fq.quantize_per_tensor(torch.cat([a.dequantize(), b.dequantize()], 1), 0.05, zp, dt).int_repr(),
        dt.qmin + 1,
        dt.qmax - 2,
    )
    assert torch.equal(got.int_repr(), want)


def test_u8_paths_keep_torch_layouts() -> None:
    """Results are contiguous unless the input is channels-last (conv outputs), as torch.ao's
    are: `.view` after pooling a plain NCHW tensor or adding transposed operands works."""
    import torch.nn.functional as F

    q = fq.quantize_per_tensor(torch.randn(2, 3, 8, 8), 0.1, 10, fq.quint8)
    assert F.max_pool2d(q, 2).int_repr().is_contiguous()
    assert F.max_pool2d(q, 2).int_repr().view(2, -1).shape == (2, 48)
    q1 = fq.quantize_per_tensor(torch.randn(2, 4, 9), 0.1, 10, fq.quint8)
    assert F.max_pool1d(q1, 3, 2).int_repr().is_contiguous()
    cl = fq.QTensor(q.int_repr().contiguous(memory_format=torch.channels_last), 0.1, 10, fq.quint8)
    assert F.max_pool2d(cl, 2).int_repr().is_contiguous(memory_format=torch.channels_last)
    d = torch.randint(0, 256, (4, 6), dtype=torch.uint8).t()
    y = _qf(0.1, 3).add(fq.QTensor(d, 0.05, 3, fq.quint8), fq.QTensor(d.t().contiguous().t(), 0.07, 5, fq.quint8))
    assert y.int_repr().is_contiguous()


def test_concurrent_weight_calls_share_one_rebuilt_tensor() -> None:
    """A released int8 weight rebuilt by several threads at once: every caller gets the module's
    own tensor (an edit through any of them reaches the next forward)."""
    import threading

    for _ in range(20):
        m = fq.nn.quantized.Linear(64, 32)
        assert m._w is None
        got: list[torch.Tensor] = []
        barrier = threading.Barrier(4)

        def ask(m: torch.nn.Module, got: list, barrier: threading.Barrier) -> None:
            barrier.wait()
            got.append(m.weight().int_repr())

        threads = [threading.Thread(target=ask, args=(m, got, barrier)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(g is m._w for g in got)
