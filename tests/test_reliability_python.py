"""Reliability of the Python layer: qparams validated and copied, exact qint32 pooling,
all-or-nothing load_state_dict with packed weights that follow in-place edits, and observers
that stay finite (or say clearly why not) at the ends of float32's range."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from fractions import Fraction

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
F32_TINY = torch.finfo(torch.float32).tiny
F32_MAX = torch.finfo(torch.float32).max


# -- 1. qparams validated and copied ---------------------------------------------------------------


def test_per_channel_qparams_are_private_copies():
    x = torch.randn(3, 4)
    scales = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    zps = torch.tensor([0, 1, -1])
    q = fq.quantize_per_channel(x, scales, zps, 0, fq.qint8)
    data = torch.randint(-128, 128, (3, 4), dtype=torch.int8)
    qt = fq.QTensor(data, scales, zps, fq.qint8, axis=0)
    before, before_t = q.dequantize(), qt.dequantize()
    scales.mul_(10)
    zps.add_(5)
    q.q_per_channel_scales().mul_(3)  # the accessors return copies too
    q.q_per_channel_zero_points().add_(1)
    qt.to_tuple()[1].mul_(2)
    assert torch.equal(q.dequantize(), before) and torch.equal(qt.dequantize(), before_t)
    assert q.q_per_channel_scales().tolist() == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    "dtype,zp",
    [
        (fq.quint8, 256),
        (fq.quint8, -1),
        (fq.quint8, 2**32 + 1),  # used to wrap to 1
        (fq.qint8, 128),
        (fq.qint8, -129),
        (fq.qint32, 2**31),  # used to raise OverflowError
        (fq.qint32, -(2**31) - 1),
    ],
)
def test_zero_point_outside_the_dtype_range_is_a_clear_error(dtype, zp):
    x = torch.randn(4)
    with pytest.raises(ValueError, match=rf"quantize_per_tensor: zero_point {zp} is outside the {dtype.name} range"):
        fq.quantize_per_tensor(x, 0.1, zp, dtype)
    with pytest.raises(ValueError, match=r"QTensor: zero_point .* outside"):
        fq.QTensor(torch.zeros(4, dtype=dtype.storage), 0.1, zp, dtype)
    with pytest.raises(
        ValueError, match=r"quantize_per_channel: zero_points: each zero point must lie in the .* range.*channel 1"
    ):
        fq.quantize_per_channel(x.reshape(2, 2), torch.ones(2), torch.tensor([0, zp]), 0, dtype)
    if abs(zp) < 2**40:  # torch agrees that these are errors
        with warnings.catch_warnings(), pytest.raises(RuntimeError):
            warnings.simplefilter("ignore")
            torch.quantize_per_tensor(x, 0.1, zp, getattr(torch, dtype.name))


@pytest.mark.parametrize("dtype", [fq.quint8, fq.qint8, fq.qint32])
def test_zero_points_at_the_dtype_limits_are_accepted(dtype):
    x = torch.randn(6)
    for zp in (dtype.qmin, dtype.qmax):
        assert fq.quantize_per_tensor(x, 0.5, zp, dtype).q_zero_point() == zp
        q = fq.quantize_per_channel(x.reshape(2, 3), torch.ones(2), torch.tensor([zp, zp]), 0, dtype)
        assert q.q_per_channel_zero_points().tolist() == [zp, zp]


def test_non_integral_zero_points_are_rejected_integral_floats_accepted():
    x = torch.randn(4)
    with pytest.raises(ValueError, match=r"zero_point must be an integer, got 1\.5"):
        fq.quantize_per_tensor(x, 0.1, 1.5, fq.quint8)
    with pytest.raises(ValueError, match=r"zero_point must be an integer"):
        fq.quantize_per_tensor(x, 0.1, torch.tensor(2.5), fq.quint8)  # torch truncates this to 2
    with pytest.raises(ValueError, match=r"zero_point must be an integer, got nan"):
        fq.quantize_per_tensor(x, 0.1, float("nan"), fq.quint8)
    with pytest.raises(ValueError, match=r"zero_points must be integers, got 0\.5 for channel 1"):
        fq.quantize_per_channel(x.reshape(2, 2), torch.ones(2), torch.tensor([1.0, 0.5]), 0, fq.qint8)
    with pytest.raises(TypeError, match=r"zero_point must be an integer, got str"):
        fq.quantize_per_tensor(x, 0.1, "3", fq.quint8)
    with pytest.raises(ValueError, match=r"zero_point must be a single integer, got a tensor of shape \[2\]"):
        fq.quantize_per_tensor(x, 0.1, torch.tensor([1, 2]), fq.quint8)
    assert fq.quantize_per_tensor(x, 0.1, 3.0, fq.quint8).q_zero_point() == 3
    assert fq.quantize_per_tensor(x, torch.tensor(0.1), torch.tensor(3.0), fq.quint8).q_zero_point() == 3
    q = fq.quantize_per_channel(x.reshape(2, 2), torch.ones(2), torch.tensor([1.0, -2.0]), 0, fq.qint8)
    assert q.q_per_channel_zero_points().dtype == torch.int64 and q.q_per_channel_zero_points().tolist() == [1, -2]


# torch accepts all of these and quantizes garbage (0 → 255 for subnormal scales, since 1/scale = inf)
BAD_SCALES = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -0.1, 1e-45, 1e-39, F32_TINY / 2, 1e39]


@pytest.mark.parametrize("scale", BAD_SCALES)
def test_invalid_scales_are_rejected_everywhere(scale):
    x = torch.randn(2, 3)
    rule = r"must be a finite number in \[1\.1754944e-38, 3\.4028235e\+38\] \(a positive, normal float32\)"
    with pytest.raises(ValueError, match="quantize_per_tensor: scale " + rule):
        fq.quantize_per_tensor(x, scale, 0, fq.quint8)
    with pytest.raises(ValueError, match="QTensor: scale " + rule):
        fq.QTensor(torch.zeros(3, dtype=torch.uint8), scale, 0)
    with pytest.raises(ValueError, match=r"quantize_per_channel: scales: each scale .* channel 1"):
        fq.quantize_per_channel(x, torch.tensor([0.1, scale], dtype=torch.float64), torch.zeros(2), 0, fq.qint8)
    with pytest.raises(ValueError, match=r"QTensor: scale: each scale .* channel 0"):
        fq.QTensor(torch.zeros(2, 3, dtype=torch.int8), torch.tensor([scale, 1.0]), torch.zeros(2), axis=0)


def test_smallest_normal_and_largest_scales_work():
    x = torch.tensor([0.0, 1e-38, -1e-38, 2e38])
    q = fq.quantize_per_tensor(x, F32_TINY, 0, fq.qint32)
    assert q.int_repr().tolist()[:3] == [0, round(1e-38 / F32_TINY), -round(1e-38 / F32_TINY)]
    q = fq.quantize_per_tensor(x, F32_MAX, 0, fq.quint8)
    assert q.int_repr().tolist() == [0, 0, 0, 1]


def test_per_channel_axis_normalized_or_clear_error():
    x = torch.randn(3, 4)
    ref = torch.quantize_per_channel(x, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.long), 1, torch.qint8)
    q = fq.quantize_per_channel(x, torch.full((4,), 0.1), torch.zeros(4), -1, fq.qint8)
    assert q.q_per_channel_axis() == 1 and torch.equal(q.int_repr(), ref.int_repr())
    assert fq.QTensor(q.int_repr(), q.q_per_channel_scales(), torch.zeros(4), axis=-1).q_per_channel_axis() == 1
    for axis in (-5, -3, 2, 7):
        with pytest.raises(IndexError, match=rf"axis {axis} is out of range for a 2-d tensor: .*\[-2, 1\]"):
            fq.quantize_per_channel(x, torch.ones(3), torch.zeros(3), axis, fq.qint8)
        with pytest.raises(IndexError, match=rf"QTensor: axis {axis} is out of range"):
            fq.QTensor(q.int_repr(), torch.ones(3), torch.zeros(3), axis=axis)
    with pytest.raises(TypeError, match=r"axis must be an int, got float"):
        fq.quantize_per_channel(x, torch.ones(3), torch.zeros(3), 0.0, fq.qint8)
    with pytest.raises(ValueError, match=r"scales must be a 1-d tensor with one value per channel \(4 along"):
        fq.quantize_per_channel(x, torch.ones(3), torch.zeros(4), 1, fq.qint8)
    with pytest.raises(TypeError, match=r"zero_points must be a 1-d torch.Tensor"):
        fq.quantize_per_channel(x, torch.ones(4), [0, 0, 0, 0], 1, fq.qint8)


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    fortran = x.t().contiguous().t()
    return {
        "float64": x.double(),
        "float16": x.half().float().half(),
        "transposed view": x.t().contiguous().t(),
        "fortran": fortran,
        "strided": torch.cat([x, x], dim=1)[:, ::2],
        "expanded": x[:1].expand_as(x),
        "requires_grad": x.clone().requires_grad_(),
    }


def test_inputs_in_any_float_dtype_or_layout_are_converted():
    x = torch.randn(4, 6) * 3
    for name, v in _layouts(x).items():
        want = v.detach().float().contiguous()
        a = fq.quantize_per_tensor(v, 0.05, 3, fq.quint8)
        b = fq.quantize_per_tensor(want, 0.05, 3, fq.quint8)
        assert torch.equal(a.int_repr(), b.int_repr()), name
        a = fq.quantize_per_channel(v, torch.full((6,), 0.05), torch.arange(6), 1, fq.qint8)
        b = fq.quantize_per_channel(want, torch.full((6,), 0.05), torch.arange(6), 1, fq.qint8)
        assert torch.equal(a.int_repr(), b.int_repr()), name
    # per-channel qparams in other dtypes and layouts too
    want = fq.quantize_per_channel(x, torch.full((6,), 0.0625), torch.zeros(6, dtype=torch.long), 1, fq.qint8)
    for scales, zps in (
        (torch.full((1,), 0.0625, dtype=torch.float64).expand(6), torch.zeros(1, dtype=torch.int32).expand(6)),
        (torch.full((12,), 0.0625)[::2], torch.zeros(12, dtype=torch.int16)[1::2]),
        (torch.full((6,), 0.0625, dtype=torch.float16).float(), torch.zeros(6)),
    ):
        got = fq.quantize_per_channel(x, scales, zps, 1, fq.qint8)
        assert torch.equal(got.int_repr(), want.int_repr())
    x4 = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert torch.equal(
        fq.quantize_per_tensor(x4, 0.1, 0, fq.qint8).int_repr(),
        fq.quantize_per_tensor(x4.contiguous(), 0.1, 0, fq.qint8).int_repr(),
    )
    with pytest.raises(TypeError, match=r"quantize_per_tensor: input must be a floating point tensor, got torch.int64"):
        fq.quantize_per_tensor(torch.arange(4), 0.1, 0, fq.quint8)
    with pytest.raises(TypeError, match=r"quantize_per_channel: input must be a torch.Tensor, got ndarray"):
        fq.quantize_per_channel(x.numpy(), torch.ones(4), torch.zeros(4), 0, fq.qint8)


# -- 2. qint32 pooling stays in integers ----------------------------------------------------------


def _windows_1d(n: int, k: int, s: int, p: int, ceil_mode: bool, count_include_pad: bool) -> list:
    """torch's pooling windows along one dim: (start, end, divisor) per output position."""
    num = n + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    wins = []
    for i in range(out):
        start = i * s - p
        end = min(start + k, n + p)
        size = end - start
        start, end = max(start, 0), min(end, n)
        wins.append((start, end, size if count_include_pad else end - start))
    return wins


def _ref_avg_pool(q: torch.Tensor, zp: int, qmin: int, qmax: int, dim_windows: list) -> torch.Tensor:
    """rne(mean(q − zp) + zp) with exact rationals (torch's rule: the zero point is added before
    rounding), over the last len(dim_windows) dims."""
    nd = len(dim_windows)
    lead = q.shape[:-nd]
    v = q.long() - zp
    out = torch.empty(*lead, *[len(w) for w in dim_windows], dtype=torch.int64)
    for idx in itertools.product(*[range(len(w)) for w in dim_windows]):
        wins = [dim_windows[d][i] for d, i in enumerate(idx)]
        block = v[(..., *[slice(a, b) for a, b, _ in wins])]
        sums = block.reshape(math.prod(lead), -1).sum(-1).tolist()
        divisor = math.prod(w[2] for w in wins)
        vals = [min(max(round(Fraction(t, divisor) + zp), qmin), qmax) for t in sums]
        out[(..., *idx)] = torch.tensor(vals).reshape(lead)
    return out


def _extreme_int32(shape: tuple, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    picks = torch.tensor([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX], dtype=torch.int64)
    t = picks[torch.randint(0, len(picks), shape, generator=g)]
    mixed = torch.randint(I32_MIN, I32_MAX, shape, generator=g, dtype=torch.int64)
    return torch.where(torch.rand(shape, generator=g) < 0.5, t, mixed).to(torch.int32)


@pytest.mark.parametrize("fn", [F.max_pool1d, torch.max_pool1d, F.max_pool2d, torch.max_pool2d, F.max_pool3d])
def test_qint32_max_pool_is_exact_at_the_extremes(fn):
    nd = 3 if fn is F.max_pool3d else (1 if "1d" in fn.__name__ else 2)
    data = _extreme_int32((2, 3, *([5] * nd)), 0)
    data.view(-1)[0] = I32_MAX  # 2147483647 used to come back as -2147483648
    q = fq.QTensor(data, 0.5, 7, fq.qint32)
    got = fn(q, 2, 1, 1).int_repr()
    ref = F.max_pool3d if nd == 3 else F.max_pool2d
    want = ref(data.long().unsqueeze(-2), (1, 2), (1, 1), (0, 1)).squeeze(-2) if nd == 1 else ref(data.long(), 2, 1, 1)
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert got.view(-1)[0] == I32_MAX


AVG_CASES = [
    (F.avg_pool1d, (2, 3, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (torch.avg_pool1d, (3, 9), dict(kernel_size=2)),
    (F.avg_pool1d, (2, 3, 10), dict(kernel_size=4, stride=3, padding=2, count_include_pad=False, ceil_mode=True)),
    (F.avg_pool2d, (2, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (F.avg_pool2d, (2, 6, 5), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), count_include_pad=False)),
    (F.avg_pool2d, (1, 2, 6, 6), dict(kernel_size=2, divisor_override=3)),
    (F.avg_pool3d, (1, 2, 4, 5, 3), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
]


def _avg_windows(shape: tuple, kw: dict, nd: int) -> list:
    def per_dim(v, default=None):
        v = default if v is None else v
        return list(v) if isinstance(v, (tuple, list)) else [v] * nd

    k, p = per_dim(kw["kernel_size"]), per_dim(kw.get("padding", 0))
    s = per_dim(kw.get("stride"), kw["kernel_size"])
    wins = [
        _windows_1d(shape[-nd + d], k[d], s[d], p[d], kw.get("ceil_mode", False), kw.get("count_include_pad", True))
        for d in range(nd)
    ]
    if kw.get("divisor_override"):  # all the divisor into the first dim, 1 for the others
        wins = [[(a, b, kw["divisor_override"] if d == 0 else 1) for a, b, _ in w] for d, w in enumerate(wins)]
    return wins


@pytest.mark.parametrize("fn,shape,kw", AVG_CASES, ids=[f"{f.__name__}-{i}" for i, (f, _, _) in enumerate(AVG_CASES)])
def test_qint32_avg_pool_is_exact_at_the_extremes(fn, shape, kw):
    nd = 3 if fn is F.avg_pool3d else (2 if fn is F.avg_pool2d else 1)
    wins = _avg_windows(shape, kw, nd)
    for seed, zp in ((1, 0), (2, I32_MAX), (3, I32_MIN), (4, 12345)):
        data = _extreme_int32(shape, seed)
        q = fq.QTensor(data, 0.25, zp, fq.qint32)
        got = fn(q, **kw).int_repr()
        assert got.dtype == torch.int32
        assert torch.equal(got.long(), _ref_avg_pool(data, zp, I32_MIN, I32_MAX, wins)), (seed, zp)


def test_qint32_avg_pool_rounds_half_to_even_at_int32_max():
    data = torch.tensor([[[I32_MAX, I32_MAX - 1, I32_MAX, I32_MAX, I32_MIN, I32_MIN + 1]]], dtype=torch.int32)
    q = fq.QTensor(data, 1.0, 0, fq.qint32)
    # (MAX + MAX−1)/2 = MAX − 0.5 → MAX − 1 (even); MIN + 0.5 → MIN (even)
    assert F.avg_pool1d(q, 2).int_repr().tolist() == [[[I32_MAX - 1, I32_MAX, I32_MIN]]]


@pytest.mark.parametrize(
    "fn,shape,size",
    [
        (F.adaptive_avg_pool1d, (2, 3, 10), 4),
        (torch.adaptive_avg_pool1d, (2, 3, 7), 3),
        (F.adaptive_avg_pool2d, (2, 2, 7, 9), (3, None)),
        (F.adaptive_avg_pool2d, (3, 5, 6), 4),
        (F.adaptive_avg_pool3d, (1, 2, 5, 4, 6), (2, 3, 4)),
        (F.adaptive_avg_pool2d, (1, 2, 9, 9), 1),
    ],
)
def test_qint32_adaptive_avg_pool_is_exact(fn, shape, size):
    nd = 3 if fn is F.adaptive_avg_pool3d else (2 if fn is F.adaptive_avg_pool2d else 1)
    sizes = list(size) if isinstance(size, tuple) else [size] * nd
    wins = []
    for d in range(nd):
        n = shape[-nd + d]
        o = n if sizes[d] is None else sizes[d]
        wins.append([((i * n) // o, -(-((i + 1) * n) // o), -(-((i + 1) * n) // o) - (i * n) // o) for i in range(o)])
    for seed, zp in ((5, 0), (6, -7), (7, I32_MAX)):
        data = _extreme_int32(shape, seed)
        got = fn(fq.QTensor(data, 2.0, zp, fq.qint32), size).int_repr()
        assert torch.equal(got.long(), _ref_avg_pool(data, zp, I32_MIN, I32_MAX, wins)), (seed, zp)


@pytest.mark.parametrize("fn,shape,kw", AVG_CASES[:2] + AVG_CASES[3:5], ids=["1d", "1d-torch", "2d", "2d-nopad"])
def test_8bit_avg_pool_keeps_torchs_rule(fn, shape, kw):
    # the exact reference is torch's rule for quint8 too (and ferroquant's 8-bit path is unchanged)
    nd = 2 if fn is F.avg_pool2d else 1
    x = torch.rand(shape) * 4
    ours = fq.quantize_per_tensor(x, 0.05, 9, fq.quint8)
    theirs = torch.quantize_per_tensor(x, 0.05, 9, torch.quint8)
    want = _ref_avg_pool(ours.int_repr(), 9, 0, 255, _avg_windows(shape, kw, nd))
    assert torch.equal(fn(ours, **kw).int_repr().long(), want)
    if fn is not torch.avg_pool1d:
        assert torch.equal(fn(theirs, **kw).int_repr().long(), want)


# -- 3. load_state_dict all or nothing, packed weights follow the weights ---------------------------


class _Static(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.body = body
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.body(self.quant(x)))


def _static_model(kind: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    if kind == "linear":
        body, x = nn.Linear(6, 5), torch.randn(4, 6)
    else:
        body, x = nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 5, 5)
    m = _Static(body).eval()
    m.qconfig = fq.QConfig(
        activation=fq.MinMaxObserver.with_args(quant_min=0, quant_max=127),
        weight=fq.default_per_channel_weight_observer,
    )
    p = fq.prepare(m)
    p(x)
    return fq.convert(p), x


def _dynamic_model(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return fq.quantize_dynamic(
        nn.Sequential(nn.Linear(6, 5)), {nn.Linear: fq.per_channel_dynamic_qconfig}
    ), torch.randn(3, 6)


def _model(kind: str, seed: int) -> tuple[nn.Module, torch.Tensor, str]:
    if kind == "dynamic":
        m, x = _dynamic_model(seed)
        return m, x, "0."
    m, x = _static_model(kind, seed)
    return m, x, "body."


def _other_state(m: nn.Module, other: nn.Module, p: str) -> dict:
    """``m``'s state_dict with the weighted module's keys (prefix ``p``) taken from ``other``:
    loading it changes only that module (and, all or nothing, either all of it or none)."""
    sd = m.state_dict()
    sd.update({k: v for k, v in other.state_dict().items() if k.startswith(p)})
    return sd


def _snapshot(m: nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}, m(x)


def _assert_unchanged(m: nn.Module, x: torch.Tensor, snap: tuple[dict, torch.Tensor]) -> None:
    sd, y = snap
    now = m.state_dict()
    assert now.keys() == sd.keys()
    for k, v in now.items():
        assert torch.equal(v, sd[k]), k
    assert torch.equal(m(x), y)
    assert torch.equal(copy.deepcopy(m)(x), y)


# (key, corrupt value builder, what the error must say); applied to a state_dict from another model
CORRUPTIONS = [
    ("weight_scale", lambda t: torch.zeros_like(t), r"weight_scale'?: each scale must be a finite number"),
    ("weight_scale", lambda t: torch.full_like(t, float("nan")), r"weight_scale'?: each scale .* got nan"),
    ("weight_scale", lambda t: t[:-1], r"size mismatch for '{p}weight_scale': expected shape \[\d+\]"),
    (
        "weight_scale",
        lambda t: t.to(torch.int64),
        r"'{p}weight_scale': expected a floating point tensor \(float32\), got torch.int64",
    ),
    ("weight_zero_point", lambda t: torch.full_like(t, 200), r"weight_zero_point'?: each zero point must lie in"),
    (
        "weight_zero_point",
        lambda t: t.double(),
        r"'{p}weight_zero_point': expected an integer tensor \(int64\), got torch.float64",
    ),
    ("weight", lambda t: t[:, :-1], r"size mismatch for '{p}weight': expected int8 \[.*\], got torch.int8"),
    ("weight", lambda t: t.float(), r"size mismatch for '{p}weight': expected int8 .* got torch.float32"),
    ("weight_axis", lambda t: torch.tensor(1), r"'{p}weight_axis': expected -1 \(per-tensor weights\) or 0"),
    ("weight_axis", lambda t: torch.tensor([0, 0]), r"'{p}weight_axis': expected a single int .* shape \[2\]"),
    ("bias", lambda t: t[:-1], r"size mismatch for '{p}bias': expected a float tensor of shape \[\d+\]"),
    ("bias", lambda t: t.to(torch.int32), r"size mismatch for '{p}bias'"),
]
STATIC_CORRUPTIONS = [
    ("scale", lambda t: torch.tensor(0.0), r"'{p}scale' \(the output scale\) must be a finite number"),
    ("scale", lambda t: torch.tensor([0.1, 0.2]), r"'{p}scale': expected a single float .* shape \[2\]"),
    ("zero_point", lambda t: torch.tensor(300), r"'{p}zero_point': the output zero point must lie in the quint8"),
    ("zero_point", lambda t: torch.tensor(1.5), r"'{p}zero_point': expected an integer, got 1.5"),
    ("quant_min", lambda t: t + 300, r"quant_max': the output clamp range .* must"),
]
DYNAMIC_CORRUPTIONS = [
    ("reduce_range", lambda t: torch.tensor([True, False]), r"'{p}reduce_range': expected a single bool"),
    ("per_row_activations", lambda t: torch.tensor(3), r"'{p}per_row_activations': expected a bool \(0 or 1\)"),
]


def _cases() -> list:
    out = []
    for kind in ("dynamic", "linear", "conv"):
        extra = DYNAMIC_CORRUPTIONS if kind == "dynamic" else STATIC_CORRUPTIONS
        for i, (key, fn, msg) in enumerate(CORRUPTIONS + extra):
            out.append(pytest.param(kind, key, fn, msg, id=f"{kind}-{key}-{i}"))
    return out


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("kind,key,corrupt,message", _cases())
def test_failed_load_leaves_the_module_exactly_as_it_was(kind, key, corrupt, message, strict):
    m, x, p = _model(kind, 0)
    other, _, _ = _model(kind, 1)  # different weights and qparams: a partial load would show
    snap = _snapshot(m, x)
    sd = _other_state(m, other, p)
    sd[p + key] = corrupt(sd[p + key])
    with pytest.raises(RuntimeError, match=message.format(p=p.replace(".", r"\."))) as err:
        m.load_state_dict(sd, strict=strict)
    assert "nothing in this module was loaded" in str(err.value)
    _assert_unchanged(m, x, snap)
    m.load_state_dict(_other_state(m, other, p))  # and a good load still works afterwards
    assert not torch.equal(m(x), snap[1])


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("kind", ["dynamic", "linear", "conv"])
def test_missing_or_unexpected_keys_leave_the_module_as_it_was(kind, strict):
    # a module loads all of its keys or none: torch passes strict=True to every module, so the
    # rule is the same for strict=False, where load_state_dict reports the keys instead of raising
    m, x, p = _model(kind, 0)
    other, _, _ = _model(kind, 1)
    snap = _snapshot(m, x)
    keys = ["weight_scale", "bias", "weight", "weight_axis"] + (["reduce_range"] if kind == "dynamic" else ["scale"])
    for key in keys:
        sd = _other_state(m, other, p)
        del sd[p + key]
        if strict:
            with pytest.raises(RuntimeError, match=rf"Missing key\(s\) in state_dict: \"{p}{key}\""):
                m.load_state_dict(sd)
        else:
            result = m.load_state_dict(sd, strict=False)
            assert result.missing_keys == [p + key] and not result.unexpected_keys
        _assert_unchanged(m, x, snap)
    sd = _other_state(m, other, p)
    sd[p + "surprise"] = torch.zeros(1)
    if strict:
        with pytest.raises(RuntimeError, match=rf"Unexpected key\(s\) in state_dict: \"{p}surprise\""):
            m.load_state_dict(sd)
    else:
        result = m.load_state_dict(sd, strict=False)
        assert result.unexpected_keys == [p + "surprise"] and not result.missing_keys
    _assert_unchanged(m, x, snap)
    # the complete state_dict loads, all of it
    sd = _other_state(m, other, p)
    assert not m.load_state_dict(sd, strict=strict).missing_keys
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert not torch.equal(m(x), snap[1])


def test_a_module_without_bias_reports_a_saved_bias_as_unexpected():
    torch.manual_seed(0)
    m = fq.quantize_dynamic(nn.Sequential(nn.Linear(4, 3, bias=False)))
    other = fq.quantize_dynamic(nn.Sequential(nn.Linear(4, 3, bias=False)))
    x = torch.randn(2, 4)
    snap = _snapshot(m, x)
    sd = other.state_dict()
    sd["0.bias"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "0.bias"'):
        m.load_state_dict(sd)
    _assert_unchanged(m, x, snap)
    assert m.load_state_dict(sd, strict=False).unexpected_keys == ["0.bias"]
    _assert_unchanged(m, x, snap)
    m.load_state_dict(other.state_dict())
    assert torch.equal(m(x), other(x)) and m[0].bias() is None


def test_loading_a_whole_model_applies_each_module_on_its_own():
    # torch loads module by module: a bad module raises, the good ones before and after it load
    torch.manual_seed(0)
    make = lambda: fq.quantize_dynamic(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)))  # noqa: E731
    m, other = make(), make()
    x = torch.randn(2, 4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = other.state_dict()
    sd["1.weight_scale"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"'1.weight_scale'"):
        m.load_state_dict(sd)
    now = m.state_dict()
    for k in now:
        want = before[k] if k.startswith("1.") else sd[k]
        assert torch.equal(now[k], want), k
    assert torch.equal(m[0](x), other[0](x)) and torch.equal(m[2](x), other[2](x))


@pytest.mark.parametrize("kind", ["dynamic", "linear", "conv"])
def test_forward_repacks_after_in_place_edits(kind):
    m, x, p = _model(kind, 0)
    mod = m[0] if kind == "dynamic" else m.body
    y0 = m(x)
    # 1. the int8 weight through weight().int_repr()
    mod.weight().int_repr().neg_()
    fresh, _, _ = _model(kind, 1)
    fresh.load_state_dict(m.state_dict())
    y1 = m(x)
    assert not torch.equal(y1, y0) and torch.equal(y1, fresh(x))
    # 2. the scales and zero points through the state_dict tensors
    sd = m.state_dict()
    sd[p + "weight_scale"].mul_(2)
    sd[p + "weight_zero_point"].fill_(1)
    fresh.load_state_dict(m.state_dict())
    y2 = m(x)
    assert not torch.equal(y2, y1) and torch.equal(y2, fresh(x))
    # 3. the bias tensor itself
    sd[p + "bias"].add_(1)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(m(x), fresh(x))
    # an edit that makes the weights invalid fails at forward with a message naming it
    sd[p + "weight_scale"].zero_()
    with pytest.raises(ValueError, match=r"weight scale: each scale must be a finite number"):
        m(x)


def test_set_weight_bias_is_all_or_nothing():
    m, x = _dynamic_model(0)
    lin = m[0]
    snap = _snapshot(m, x)
    w = torch.randint(-128, 128, (5, 6), dtype=torch.int8)
    along_inputs = fq.QTensor(w, torch.full((6,), 0.1), torch.zeros(6), fq.qint8, axis=1)
    with pytest.raises(ValueError, match=r"set_weight_bias: per-channel weights must be quantized along axis 0"):
        lin.set_weight_bias(along_inputs, torch.zeros(5))
    with pytest.raises(ValueError, match=r"set_weight_bias: b has shape \[4\], this module needs \[5\]"):
        lin.set_weight_bias(fq.QTensor(w, 0.1, 0, fq.qint8), torch.zeros(4))
    _assert_unchanged(m, x, snap)
    lin.set_weight_bias(fq.QTensor(w, 0.1, 0, fq.qint8), None)
    assert lin.bias() is None and "0.bias" not in m.state_dict()


def test_static_module_constructors_validate_output_qparams():
    with pytest.raises(ValueError, match=r"Quantize: output scale must be a finite number"):
        fq.nn.quantized.Quantize(0.0, 0)
    with pytest.raises(ValueError, match=r"Quantize: output zero_point 256 is outside the quint8 range"):
        fq.nn.quantized.Quantize(0.1, 256)


# -- 4. observers --------------------------------------------------------------------------------

OBSERVERS = [
    ("MinMaxObserver", {}),
    ("MinMaxObserver", {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
    ("MovingAverageMinMaxObserver", {"averaging_constant": 0.5}),
    ("PerChannelMinMaxObserver", {"ch_axis": 0}),
    ("PerChannelMinMaxObserver", {"ch_axis": 0, "qscheme": torch.per_channel_affine_float_qparams}),
    ("MovingAveragePerChannelMinMaxObserver", {"averaging_constant": 0.5}),
    ("HistogramObserver", {}),
    ("HistogramObserver", {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
]


def _check_qparams_cover(obs, batches) -> None:
    scale, zp = obs.calculate_qparams()
    assert scale.dtype == torch.float32 and bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    if zp.dtype == torch.float32:  # per_channel_affine_float_qparams
        assert bool(torch.isfinite(zp).all())
        return
    assert bool(((zp >= obs.quant_min) & (zp <= obs.quant_max)).all()), zp
    name = type(obs).__name__
    if "Histogram" in name or "MovingAverage" in name:
        return  # trimmed or averaged ranges: finite, valid qparams is the claim
    x = torch.cat([b.reshape(2, -1) for b in batches], dim=1)
    if "PerChannel" in name:
        q = fq.quantize_per_channel(x, scale, zp, 0, obs.dtype)
        s, z = scale.double().reshape(-1, 1), zp.reshape(-1, 1)
    else:
        q = fq.quantize_per_tensor(x, float(scale), int(zp), obs.dtype)
        s, z = scale.double(), zp
    # every observed value lies within one step of its grid point (dequantized in float64: the
    # outermost grid point can lie just beyond float32's range)
    assert bool((((q.int_repr().long() - z) * s - x.double()).abs() <= s * 1.001).all())


@pytest.mark.parametrize("name,kwargs", OBSERVERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OBSERVERS)])
@pytest.mark.parametrize("ends", [(-3e38, 3e38), (-F32_MAX, F32_MAX), (-F32_MAX, -1e38), (1e38, F32_MAX)])
def test_observers_give_finite_qparams_at_the_ends_of_float32(name, kwargs, ends):
    obs = getattr(fq, name)(**kwargs)
    lo, hi = ends
    # two batches with the extremes swapped between them: exercises the moving averages and
    # the histogram's range growth, whose float32 differences overflow
    batches = [torch.tensor([[lo, lo / 2], [lo, hi / 2]]), torch.tensor([[hi, hi / 3], [hi, lo / 3]])]
    for b in batches:
        obs(b)
    for buf in ("min_val", "max_val"):
        assert bool(torch.isfinite(getattr(obs, buf)).all()), buf
    if name == "HistogramObserver":
        assert float(obs.histogram.sum()) == 8.0  # no mass lost while merging wide histograms
    _check_qparams_cover(obs, batches)


@pytest.mark.parametrize("name,kwargs", OBSERVERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OBSERVERS)])
def test_observers_match_torch_where_torch_stays_finite(name, kwargs):
    # float64 data inside float32's range, and a range torch's float32 arithmetic handles (the
    # histogram's error terms cube the range: float32 overflows beyond about 7e12)
    x = torch.tensor([[-1e38, 2e37, 5.0], [1e37, -3.0, 1e38]], dtype=torch.float64)
    if name == "HistogramObserver":
        x = x / 1e28 + 0.1
    ours, theirs = getattr(fq, name)(**kwargs), getattr(tq, name)(**kwargs)
    ours(x)
    theirs(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s2, z2 = theirs.calculate_qparams()
    s1, z1 = ours.calculate_qparams()
    assert torch.equal(s1, s2) and torch.equal(z1, z2)


@pytest.mark.parametrize("name,kwargs", OBSERVERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OBSERVERS)])
def test_observer_errors_name_the_real_problem(name, kwargs):
    obs = getattr(fq, name)(**kwargs)
    big = torch.tensor([[1e300, -2.0], [1.0, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"{name} saw values as large as 1e\+300 \(torch.float64\), beyond float32's"):
        obs(big)
    for bad, kind in ((float("nan"), "NaN"), (float("inf"), "Inf")):
        with pytest.raises(ValueError, match=rf"{name} saw {kind} in its input"):
            obs(torch.tensor([[bad, 1.0], [2.0, 3.0]]))


def test_a_range_whose_scale_overflows_float32_is_a_clear_error():
    obs = fq.MinMaxObserver(quant_min=0, quant_max=1)
    obs(torch.tensor([-3e38, 3e38]))
    with pytest.raises(fq.CalibrationError, match=r"needs a scale beyond float32's range"):
        obs.calculate_qparams()


def test_histogram_on_constant_data_stops_searching_and_matches_torch(monkeypatch):
    x = torch.full((4, 100), 2.5)
    ours, theirs = fq.HistogramObserver(), tq.HistogramObserver()
    ours(x)
    theirs(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = theirs.calculate_qparams()
    import ferroquant.observer as obs

    steps = []
    real = obs._to_f32
    monkeypatch.setattr(obs, "_to_f32", lambda v: steps.append(v) or real(v))
    got = ours.calculate_qparams()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # the search used to walk all 100 000 steps of a one-bin histogram (3 s); it now stops once
    # one bin is left (each step rounds two thresholds)
    assert len(steps) <= 2 * 20, len(steps)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("shape", [(0, 4), (4, 0)])
def test_quantize_dynamic_with_an_empty_linear_names_it_and_how_to_keep_it_float(shape):
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(*shape)))
    with pytest.raises(ValueError, match=r"cannot quantize Linear '1\.0': its weight is empty .*qconfig"):
        fq.quantize_dynamic(model)
    q = fq.quantize_dynamic(model, {nn.Linear: fq.default_dynamic_qconfig, "1.0": None})
    assert isinstance(q[0], fq.nn.quantized.dynamic.Linear) and type(q[1][0]) is nn.Linear
    with pytest.raises(ValueError, match=r"cannot quantize an empty weight"):
        fq.nn.quantized.dynamic.Linear.from_float(nn.Linear(*shape))


def test_modules_work_when_built_and_loaded_under_inference_mode():
    ref = fq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)))
    sd = ref.state_dict()
    x = torch.randn(3, 8)
    with torch.inference_mode():
        q = fq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)))
        q.load_state_dict(sd)
        assert torch.equal(q(x), ref(x))
        static = fq.nn.quantized.Linear(8, 4)
        conv = fq.nn.quantized.Conv2d(4, 4, 1)
        bad = dict(sd)
        bad["0.weight_scale"] = torch.zeros(1)
        with pytest.raises(RuntimeError, match="weight_scale"):
            q.load_state_dict(bad)
        assert torch.equal(q(x), ref(x))  # a failed load leaves it usable
    assert torch.equal(q(x), ref(x))
    # the weights are normal tensors, so in-place edits still repack
    q[0].weight().int_repr().add_(1)
    assert not torch.equal(q(x), ref(x))
    assert static.weight().int_repr().shape == (4, 8) and conv.weight().int_repr().shape == (4, 4, 1, 1)


def test_scripted_model_loaded_under_inference_mode_reuses_packed_weights(tmp_path):
    import ferroquant._ops as ops

    q = fq.quantize_dynamic(nn.Sequential(nn.Linear(64, 32)))
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(q), str(path))
    x = torch.randn(2, 64)
    with torch.inference_mode():
        m = torch.jit.load(str(path))
        first = m(x)
        entries = dict(ops._CACHE)
        assert entries
        assert torch.equal(m(x), first)
        # the same cache entries served the second call (no repack)
        assert all(ops._CACHE.get(k) is e for k, e in entries.items())
        # in-place edits of an inference weight are still seen (values are compared)
        w = getattr(m, "0")._w
        assert w.is_inference() and w.dtype == torch.int8
        w.add_(1)
        assert not torch.equal(m(x), first)
