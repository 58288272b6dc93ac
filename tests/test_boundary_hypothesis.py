"""Hypothesis at the Python boundary (docs/reliability.md): random shapes (0 to 4 dims, zero sizes
included), strides (transposed, permuted, sliced with steps, expanded, channels_last; negative
and broadcast numpy strides for ``_core``), dtypes (float16 / bfloat16 / float32 / float64 and
wrong ones), devices (meta; CUDA when there is one) and qparams (valid and invalid) go into every
public function and module, and into the ``_core`` functions directly.

Every call either equals a reference (quantize / dequantize exactly as docs/numerics.md states
them; Linear / Conv within 1 LSB of the float64 reference of their integer problem; dynamic Linear
within 1 ulp of its float32 output formula; observers bitwise equal to torch.ao's) or raises one of
the documented exceptions — never a crash, a hang, a ``pyo3_runtime.PanicException`` (a
``BaseException``) or a silent wrong answer.
"""

from __future__ import annotations

import faulthandler
import math
import warnings

import ferroquant as fq
import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from _exactness import float64_reference
from ferroquant import _core
from ferroquant.nn.quantized.functional_modules import addend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Q = fq.nn.quantized
F32 = torch.finfo(torch.float32)
TINY, F32_MAX = float(F32.tiny), float(F32.max)
QDTYPES = [fq.quint8, fq.qint8, fq.qint32]
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
WRONG_DTYPES = [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool, torch.complex64]

#: What the boundary may raise (``fq.CalibrationError`` is a RuntimeError).
DOCUMENTED = (TypeError, ValueError, IndexError, RuntimeError, MemoryError)


def fast(n: int):
    """Reproducible, deadline-free settings sized so the whole file stays well under a minute."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(autouse=True)
def _a_hang_fails_loudly():
    # a hang inside the kernels would hold the GIL-free thread forever: dump every thread's stack
    # and exit instead, so CI shows where it hung
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def outcome(fn, allowed=DOCUMENTED):
    """``(result, None)`` or ``(None, exception)`` for a documented exception; anything else
    (a PanicException, SystemError, OverflowError, AttributeError, ...) fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation chatter is not the point here
            return fn(), None
    except allowed as e:
        return None, e
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3_runtime.PanicException derives from BaseException
        pytest.fail(f"{type(e).__module__}.{type(e).__name__} escaped the boundary: {e!r}")


def expect_ok(fn):
    res, err = outcome(fn)
    assert err is None, f"valid call raised {type(err).__name__}: {err}"
    return res


def expect_error(fn, types=(TypeError, ValueError)):
    res, err = outcome(fn)
    assert err is not None, f"invalid call returned {type(res).__name__} instead of raising"
    assert isinstance(err, types), f"{type(err).__name__}: {err}"
    return err


# -- references (docs/numerics.md) --------------------------------------------------------------


def f32(v: float) -> float:
    return float(np.float32(v))


def ref_quantize(x32: torch.Tensor, scale, zp, qmin: int, qmax: int, axis=None) -> torch.Tensor:
    """``clamp(rne(fl(x · fl(1/fl(scale)))) + zp, qmin, qmax)``, NaN → qmax, as int64; per channel
    along ``axis`` when ``scale`` / ``zp`` are 1-d."""
    s32 = torch.as_tensor(scale, dtype=torch.float64).to(torch.float32)
    zp = torch.as_tensor(zp, dtype=torch.int64)
    if axis is not None:
        shape = [1] * x32.dim()
        shape[axis] = -1
        s32, zp = s32.reshape(shape), zp.reshape(shape)
    inv = torch.ones((), dtype=torch.float32) / s32
    v = torch.round((x32 * inv).to(torch.float64))
    lo, hi = (qmin - zp).to(torch.float64), (qmax - zp).to(torch.float64)
    v = torch.where(torch.isnan(v), hi, torch.minimum(torch.maximum(v, lo), hi))
    return v.to(torch.int64) + zp


def ref_dequantize(q: torch.Tensor, scale, zp, axis=None) -> torch.Tensor:
    """``fl(fl(q − zp) · fl(scale))`` (q − zp formed in 64-bit integers)."""
    s32 = torch.as_tensor(scale, dtype=torch.float64).to(torch.float32)
    zp = torch.as_tensor(zp, dtype=torch.int64)
    if axis is not None:
        shape = [1] * q.dim()
        shape[axis] = -1
        s32, zp = s32.reshape(shape), zp.reshape(shape)
    return (q.to(torch.int64) - zp).to(torch.float32) * s32


def assert_same_floats(got: torch.Tensor, want: torch.Tensor, ulps: int = 0) -> None:
    """Equal element for element (NaN equal to NaN), or within ``ulps`` float32 ulps."""
    assert got.shape == want.shape, (got.shape, want.shape)
    got, want = got.to(torch.float32), want.to(torch.float32)
    both_nan = torch.isnan(got) & torch.isnan(want)
    if ulps == 0:
        ok = (got == want) | both_nan
    else:
        ulp = (torch.nextafter(want.abs(), torch.tensor(math.inf)) - want.abs()).nan_to_num(posinf=0.0)
        ok = ((got - want).abs() <= ulps * ulp) | (got == want) | both_nan
    bad = ~ok
    assert not bool(bad.any()), f"{int(bad.sum())} elements differ, e.g. got {got[bad][:4]} want {want[bad][:4]}"


# -- strategies -----------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "permuted", "sliced", "expanded", "channels_last", "requires_grad"]
SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-40, 3e38, -3e38, 1e30, 1e300, 2.5, -2.5]


def rare(n: int):
    """True about once in ``n`` draws (the rare branch is the largest integer: Hypothesis favours
    small ones, and 0 is what its simplest examples draw)."""
    return st.integers(0, n - 1).map(lambda v: v == n - 1)


def shapes(min_dims: int = 0, max_dims: int = 4, max_side: int = 5):
    return st.lists(st.integers(0, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def lay_out(values: torch.Tensor, dtype: torch.dtype, layout: str, perm_seed: int) -> torch.Tensor:
    """A tensor of ``dtype`` holding ``values`` (its logical shape) in memory laid out as
    ``layout`` says; "expanded" broadcasts the first element of some dims instead."""
    shape, nd = tuple(values.shape), values.dim()
    if layout == "transposed" and nd >= 2:
        return values.transpose(-1, -2).contiguous().to(dtype).transpose(-1, -2)
    if layout == "permuted" and nd >= 2:
        perm = torch.randperm(nd, generator=torch.Generator().manual_seed(perm_seed)).tolist()
        inv = [perm.index(i) for i in range(nd)]
        return values.permute(perm).contiguous().to(dtype).permute(inv)
    if layout == "sliced" and nd >= 1:
        step = 2 + perm_seed % 2
        big = torch.full([s * step for s in shape], 7.0, dtype=values.dtype)
        idx = tuple(slice(None, None, step) for _ in shape)
        big[idx] = values
        return big.to(dtype)[idx]
    if layout == "expanded" and nd >= 1:
        keep = [slice(None)] * nd
        for d in range(nd):
            if (perm_seed >> d) & 1 or d == 0:
                keep[d] = slice(0, 1)
        return values[tuple(keep)].to(dtype).expand(shape)
    if layout == "channels_last" and nd == 4:
        return values.to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "requires_grad" and dtype.is_floating_point:
        return values.to(dtype).requires_grad_()
    return values.to(dtype)


@st.composite
def float_values(draw, shape) -> torch.Tensor:
    """float64 values of ``shape``: scaled normal noise, sometimes with special values."""
    seed = draw(st.integers(0, 2**31 - 1))
    mag = draw(st.sampled_from([1e-3, 1.0, 7.0, 300.0, 1e6]))
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=torch.float64) * mag
    if v.numel() and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, v.numel() - 1))
            v.view(-1)[i] = draw(st.sampled_from(SPECIALS))
    return v


@st.composite
def float_inputs(draw, shape=None, min_dims=0, max_dims=4, wrong_ok=True):
    """(tensor, kind): kind is "float" (a valid float tensor), "wrong_dtype" or "meta"."""
    if shape is None:
        shape = draw(shapes(min_dims, max_dims))
    kind = draw(st.sampled_from(["float"] * 8 + (["wrong_dtype", "meta"] if wrong_ok else [])))
    values = draw(float_values(shape))
    if kind == "meta":
        return torch.empty(shape, dtype=draw(st.sampled_from(FLOAT_DTYPES)), device="meta"), kind
    dtype = draw(st.sampled_from(FLOAT_DTYPES if kind == "float" else WRONG_DTYPES))
    if not dtype.is_floating_point and not dtype.is_complex:
        values = values.nan_to_num(0.0, 0.0, 0.0).clamp(-100, 100)
    layout = draw(st.sampled_from(LAYOUTS))
    return lay_out(values, dtype, layout, draw(st.integers(0, 63))), kind


def valid_scales():
    return st.one_of(
        st.floats(1e-4, 10.0),
        st.floats(-37.9, 38.5).map(lambda e: min(max(10.0**e, TINY), F32_MAX)),
        st.sampled_from([TINY, F32_MAX, 1.0, 0.1, 2**-20, 3]),
    )


INVALID_SCALES = [0.0, -0.0, -0.1, -1e30, math.nan, math.inf, -math.inf, 1e-40, TINY / 2, 1e39, 5e-324]


@st.composite
def scale_args(draw):
    """(scale as passed, scale as a float, valid?) in the forms the functions accept."""
    if draw(rare(5)):
        bad = draw(st.sampled_from([*INVALID_SCALES, "0.1", None, True, "tensor2"]))
        if bad == "tensor2":
            return torch.tensor([0.1, 0.2]), None, False
        return bad, None, False
    s = draw(valid_scales())
    form = draw(st.sampled_from(["float", "float", "tensor64", "tensor1"]))
    if form == "tensor64":
        return torch.tensor(s, dtype=torch.float64), s, True
    if form == "tensor1":
        return torch.tensor([s], dtype=torch.float64), s, True
    return s, s, True


@st.composite
def zero_point_args(draw, qd):
    if draw(rare(5)):
        bad = draw(
            st.sampled_from([qd.qmin - 1, qd.qmax + 1, 2**40, -(2**63), 1.5, math.nan, math.inf, "3", None, True])
        )
        return bad, None, False
    z = draw(st.one_of(st.integers(qd.qmin, qd.qmax), st.sampled_from([qd.qmin, qd.qmax, 0])))
    form = draw(st.sampled_from(["int", "int", "float", "tensor"]))
    if form == "float" and abs(z) < 2**52:
        return float(z), z, True
    if form == "tensor":
        return torch.tensor(z), z, True
    return z, z, True


def random_ints(shape, qd, seed: int) -> torch.Tensor:
    """Integer data of ``qd``'s storage over its whole range, extremes included."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(qd.qmin, qd.qmax + 1, shape, generator=g, dtype=torch.int64)
    if v.numel():
        ends = torch.tensor([qd.qmin, qd.qmax, 0])[torch.randint(0, 3, (v.numel(),), generator=g)]
        pick = torch.rand(v.numel(), generator=g) < 0.2
        v.view(-1)[pick] = ends[pick]
    return v.to(qd.storage)


def lay_out_ints(v: torch.Tensor, layout: str, seed: int) -> torch.Tensor:
    return lay_out(v.to(torch.int64), v.dtype, "contiguous" if layout == "requires_grad" else layout, seed)


# -- 1. quantize_per_tensor / quantize_per_channel / dequantize ----------------------------------


@fast(300)
@given(data=st.data())
def test_quantize_per_tensor_equals_the_formula(data):
    x, kind = data.draw(float_inputs())
    qd = data.draw(st.sampled_from(QDTYPES))
    scale, s, s_ok = data.draw(scale_args())
    zp, z, z_ok = data.draw(zero_point_args(qd))
    call = lambda: fq.quantize_per_tensor(x, scale, zp, qd)  # noqa: E731
    if kind != "float" or not s_ok or not z_ok:
        expect_error(call)
        return
    q = expect_ok(call)
    assert isinstance(q, fq.QTensor) and q.dtype == qd and q.shape == x.shape
    assert q.int_repr().dtype == qd.storage and q.q_scale() == float(s) and q.q_zero_point() == z
    want = ref_quantize(x.detach().to(torch.float32), s, z, qd.qmin, qd.qmax)
    assert torch.equal(q.int_repr().to(torch.int64), want)
    # dequantize: the method, the function and torch.dequantize
    d = ref_dequantize(q.int_repr(), s, z)
    for got in (q.dequantize(), fq.dequantize(q), torch.dequantize(q)):
        assert_same_floats(got, d)


PC_FAULTS = ["axis", "count", "scale", "zero_point", "list", "2d", "meta", "bool"]


@st.composite
def per_channel_args(draw, shape, qd):
    """(axis, scales, zero_points, valid?, (axis, float64 scales, int zero points) when valid):
    valid ones, or ones with one fault."""
    nd = len(shape)
    fault = draw(st.sampled_from([None] * 6 + PC_FAULTS))
    axis = draw(st.integers(-nd, nd - 1)) if nd else 0
    if fault == "axis":
        axis = draw(st.sampled_from([nd, -nd - 1, 1.0, "0", None]))
    axis_ok = isinstance(axis, int) and -nd <= axis < nd
    c = shape[axis] if axis_ok else 2
    n = c + 1 if fault == "count" else c
    svals = [draw(valid_scales()) for _ in range(n)]
    zvals = [draw(st.integers(qd.qmin, qd.qmax)) for _ in range(n)]
    zdtype = draw(st.sampled_from([torch.int64, torch.int32, torch.float64]))
    if zdtype == torch.int32 and qd == fq.qint32 or zdtype == torch.float64 and qd == fq.qint32:
        zdtype = torch.int64
    if fault == "scale" and n:
        svals[draw(st.integers(0, n - 1))] = draw(st.sampled_from(INVALID_SCALES))
    elif fault == "zero_point" and n:
        zvals[draw(st.integers(0, n - 1))] = draw(st.sampled_from([qd.qmax + 1, qd.qmin - 1, 0.5]))
        zdtype = torch.float64
    elif fault in ("scale", "zero_point"):
        fault = None  # no channels: nothing to be wrong
    scales = torch.tensor(svals, dtype=torch.float64)
    if n and draw(st.booleans()):  # another layout / dtype of the qparams
        scales = lay_out(scales, draw(st.sampled_from([torch.float64, torch.float32])), "sliced", 0)
    zps = torch.tensor(zvals, dtype=zdtype)
    if fault == "list":
        scales = svals
    elif fault == "2d":
        zps = zps.reshape(1, -1)
    elif fault == "meta":
        scales = torch.empty(n, device="meta")
    elif fault == "bool":
        zps = torch.zeros(n, dtype=torch.bool)
    ok = fault is None and nd > 0
    return axis, scales, zps, ok, (axis % nd if ok else None, svals, zvals)


@fast(300)
@given(data=st.data())
def test_quantize_per_channel_equals_the_formula(data):
    x, kind = data.draw(float_inputs(min_dims=0, max_dims=4))
    qd = data.draw(st.sampled_from(QDTYPES))
    axis, scales, zps, ok, (ax, svals, zvals) = data.draw(per_channel_args(tuple(x.shape), qd))
    call = lambda: fq.quantize_per_channel(x, scales, zps, axis, qd)  # noqa: E731
    if kind != "float" or not ok:
        expect_error(call, (TypeError, ValueError, IndexError))
        return
    q = expect_ok(call)
    assert q.is_per_channel and q.q_per_channel_axis() == ax and q.shape == x.shape and q.dtype == qd
    assert q.q_per_channel_scales().tolist() == scales.to(torch.float64).tolist()  # as passed (a private copy)
    assert q.q_per_channel_zero_points().tolist() == zvals
    want = ref_quantize(x.detach().to(torch.float32), torch.tensor(svals), torch.tensor(zvals), qd.qmin, qd.qmax, ax)
    assert torch.equal(q.int_repr().to(torch.int64), want)
    assert_same_floats(q.dequantize(), ref_dequantize(q.int_repr(), torch.tensor(svals), torch.tensor(zvals), ax))


# -- 2. QTensor: construction, dequantize, shape ops ---------------------------------------------

SHAPE_OPS = [
    ("view(-1)", lambda t, a: t.view(-1)),
    ("reshape", lambda t, a: t.reshape(a["reshape"])),
    ("flatten", lambda t, a: t.flatten(a["d0"], a["d1"])),
    ("torch.flatten", lambda t, a: torch.flatten(t, a["d0"])),
    ("permute", lambda t, a: t.permute(*a["perm"])),
    ("torch.permute", lambda t, a: torch.permute(t, a["perm"])),
    ("transpose", lambda t, a: t.transpose(a["d0"], a["d1"])),
    ("torch.transpose", lambda t, a: torch.transpose(t, a["d0"], a["d1"])),
    ("squeeze()", lambda t, a: t.squeeze()),
    ("squeeze(d)", lambda t, a: t.squeeze(a["d0"])),
    ("unsqueeze", lambda t, a: t.unsqueeze(a["d1"])),
    ("torch.unsqueeze", lambda t, a: torch.unsqueeze(t, a["d1"])),
    ("narrow", lambda t, a: t.narrow(a["d0"], a["start"], a["length"])),
    ("index", lambda t, a: t[a["index"]]),
    ("slice", lambda t, a: t[:, a["start"] :: 2] if t.dim() >= 2 else t[a["start"] :]),
    ("contiguous", lambda t, a: t.contiguous()),
    ("clone", lambda t, a: t.clone()),
    ("cat", lambda t, a: torch.cat([t, t], dim=a["d0"])),
]


@fast(300)
@given(data=st.data())
def test_qtensor_construction_dequantize_and_shape_ops(data):
    qd = data.draw(st.sampled_from(QDTYPES))
    shape = data.draw(shapes())
    nd = len(shape)
    raw = random_ints(shape, qd, data.draw(st.integers(0, 2**31 - 1)))
    d = lay_out_ints(raw, data.draw(st.sampled_from(LAYOUTS)), data.draw(st.integers(0, 63)))
    per_channel = nd > 0 and data.draw(st.booleans())
    dtype_arg = data.draw(st.sampled_from([None, qd, qd.name, fq.quint8]))
    wrong_storage = dtype_arg is not None and fq.quint8 == dtype_arg and qd != fq.quint8
    if per_channel:
        axis, scales, zps, ok, (ax, svals, zvals) = data.draw(per_channel_args(shape, qd))
        call = lambda: fq.QTensor(d, scales, zps, dtype_arg, axis=axis)  # noqa: E731
    else:
        scale, s, s_ok = data.draw(scale_args())
        zp, z, z_ok = data.draw(zero_point_args(qd))
        ok = s_ok and z_ok
        call = lambda: fq.QTensor(d, scale, zp, dtype_arg)  # noqa: E731
    if data.draw(rare(10)):  # not integer data at all
        d, ok = d.to(data.draw(st.sampled_from([torch.float32, torch.bool, torch.int16]))), False
    if not ok or wrong_storage:
        expect_error(call, (TypeError, ValueError, IndexError))
        return
    qt = expect_ok(call)
    assert torch.equal(qt.int_repr(), d) and qt.shape == d.shape and qt.dtype == qd
    want = ref_dequantize(d, torch.tensor(svals), torch.tensor(zvals), ax) if per_channel else ref_dequantize(d, s, z)
    for got in (qt.dequantize(), fq.dequantize(qt), torch.dequantize(qt)):
        assert_same_floats(got, want)
    # a shape op: the same op on the integers, qparams unchanged (per-channel QTensors refuse
    # the ops that could move the channel axis)
    name, op = data.draw(st.sampled_from(SHAPE_OPS))
    n = max(nd, 1)
    args = {
        "d0": data.draw(st.integers(-n - 1, n)),
        "d1": data.draw(st.integers(-n - 1, n)),
        "perm": [0, 0] if data.draw(rare(6)) else data.draw(st.permutations(range(nd))),
        "reshape": data.draw(st.sampled_from([(-1,), (1, -1), tuple(reversed(shape)), (7,)])),
        "start": data.draw(st.integers(-2, 4)),
        "length": data.draw(st.integers(0, 3)),
        "index": data.draw(st.sampled_from([0, -1, 5, (Ellipsis, 0), slice(1, None), None])),
    }
    want_t, torch_err = outcome(lambda: op(d, args))
    got, err = outcome(lambda: op(qt, args))
    if torch_err is not None or (per_channel and name not in ("contiguous", "clone")):
        assert err is not None, f"{name}: torch raised {torch_err!r} but QTensor returned"
        return
    assert err is None, f"{name}: {err!r}"
    assert isinstance(got, fq.QTensor) and torch.equal(got.int_repr(), want_t), name
    assert got.same_qparams(qt)


# -- 3. observers ----------------------------------------------------------------------------------

OBSERVERS = [
    ("MinMaxObserver", {}),
    ("MinMaxObserver", {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
    ("MinMaxObserver", {"quant_min": 0, "quant_max": 127}),
    ("MinMaxObserver", {"dtype": torch.qint32}),
    ("MovingAverageMinMaxObserver", {"averaging_constant": 0.25}),
    ("PerChannelMinMaxObserver", {"ch_axis": 0}),
    ("PerChannelMinMaxObserver", {"ch_axis": -1, "dtype": torch.qint8, "qscheme": torch.per_channel_symmetric}),
    ("PerChannelMinMaxObserver", {"ch_axis": 1, "qscheme": torch.per_channel_affine_float_qparams}),
    ("MovingAveragePerChannelMinMaxObserver", {"averaging_constant": 0.5, "ch_axis": 1}),
    ("HistogramObserver", {"bins": 64}),
    ("HistogramObserver", {"bins": 16, "dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
]


@fast(250)
@given(data=st.data())
def test_observers_forward_and_calculate_qparams(data):
    name, kwargs = data.draw(st.sampled_from(OBSERVERS))
    ours = getattr(fq, name)(**kwargs)
    theirs = getattr(tq, name)(**kwargs) if "Histogram" not in name else None
    per_channel = "PerChannel" in name
    ch_axis = kwargs.get("ch_axis", 0)
    shape = data.draw(shapes(0, 3))  # one shape for all batches: per-channel observers keep their channels
    saw_data = False
    for _ in range(0 if data.draw(rare(8)) else data.draw(st.integers(1, 3))):
        x, kind = data.draw(float_inputs(shape=shape))
        res, err = outcome(lambda x=x: ours(x))
        if kind == "meta" or x.is_complex():
            assert isinstance(err, (TypeError, ValueError)) and name in str(err), err
            return
        if x.numel() == 0:  # empty batches are ignored
            assert err is None and res is x, err
            continue
        if per_channel and not -x.dim() <= ch_axis < x.dim():
            assert isinstance(err, (ValueError, IndexError)) and "ch_axis" in str(err), err
            return
        x64 = x.detach().to(torch.float64)
        if not bool(torch.isfinite(x64).all()) or bool((x64.abs() > F32_MAX).any()):
            assert isinstance(err, ValueError) and name in str(err), err  # NaN / Inf / beyond float32
            return
        assert err is None, f"{kind} {x.dtype} {tuple(x.shape)}: {err!r}"
        assert res is x  # observers pass their input through
        saw_data = True
        comparable = x.is_floating_point() and not bool((x64.abs() > 1e30).any())
        if theirs is not None and comparable and not (per_channel and x.dim() == 1):
            theirs(x.detach())
        else:
            # integer data, ranges where ferroquant widens to float64 where torch's float32 overflows,
            # 1-d per-channel data (each element a channel; torch.ao's observer raises)
            theirs = None
    qparams, err = outcome(ours.calculate_qparams)
    if not saw_data:
        assert isinstance(err, fq.CalibrationError), err
        return
    if isinstance(err, fq.CalibrationError) and "beyond float32's range" in str(err):
        return  # a range that needs a scale beyond float32: a clear error, not an Inf scale
    assert err is None, err
    scale, zp = qparams
    assert scale.dtype == torch.float32 and bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    if zp.dtype != torch.float32:  # (the float-qparams scheme has float zero points)
        assert bool(((zp >= ours.quant_min) & (zp <= ours.quant_max)).all()), (zp, ours.quant_min, ours.quant_max)
    if theirs is not None:
        want = theirs.calculate_qparams()
        assert torch.equal(scale, want[0]) and torch.equal(zp, want[1]), (scale, zp, want)


# -- 4. dynamic Linear ----------------------------------------------------------------------------


def int8_weights(shape, seed: int) -> torch.Tensor:
    return random_ints(shape, fq.qint8, seed)


@st.composite
def weight_qtensors(draw, out_features: int, in_features: int):
    w = int8_weights((out_features, in_features), draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):
        scales = torch.tensor([draw(st.floats(1e-4, 1.0)) for _ in range(out_features)])
        zps = torch.tensor([draw(st.sampled_from([0, 0, -3, 5, 127, -128])) for _ in range(out_features)])
        return fq.QTensor(w, scales, zps, fq.qint8, axis=0)
    return fq.QTensor(w, draw(st.floats(1e-4, 1.0)), draw(st.sampled_from([0, 0, 3, -128])), fq.qint8)


def dynamic_reference(x32, w: fq.QTensor, bias, reduce_range: bool, per_row: bool, relu: bool = False):
    """docs/numerics.md, "Dynamic activation qparams": FBGEMM's qparams per row or per tensor
    (``_core.choose_qparams_dynamic``, checked against torch elsewhere), the quantize rule clamped
    to 0..255, the exact integer GEMM, then ``fma(float(acc), fl(xs·ws[j]), b[j])``."""
    k = x32.shape[-1]
    x2 = x32.reshape(-1, k)
    m, n = x2.shape[0], w.shape[0]
    qmax = 127 if reduce_range else 255
    groups = [x2[i : i + 1] for i in range(m)] if per_row else ([x2] if m else [])
    qs, xs, xz = [], [], []
    for g in groups:
        lo, hi = (float(g.min()), float(g.max())) if g.numel() else (0.0, 0.0)
        s64, z = _core.choose_qparams_dynamic(lo, hi, 0, qmax)
        qs.append(ref_quantize(g, f32(s64), z, 0, 255) - z)
        xs += [f32(s64)] * g.shape[0]
        xz += [z] * g.shape[0]
    a = torch.cat(qs) if qs else torch.zeros((0, k), dtype=torch.int64)
    if w.is_per_channel:
        ws, wz = w.q_per_channel_scales().to(torch.float32), w.q_per_channel_zero_points()
    else:
        ws, wz = torch.full((n,), w.q_scale(), dtype=torch.float32), torch.full((n,), w.q_zero_point())
    acc = a @ (w.int_repr().to(torch.int64) - wz[:, None]).T
    s = torch.tensor(xs, dtype=torch.float32)[:, None] * ws[None, :]  # fl(xs·ws[j])
    b = torch.zeros(n) if bias is None else bias.to(torch.float32)
    y = (acc.to(torch.float32).to(torch.float64) * s.to(torch.float64) + b.to(torch.float64)).to(torch.float32)
    if relu:
        y = y.clamp(min=0)
    return y.reshape(*x32.shape[:-1], n)


@fast(250)
@given(data=st.data())
def test_dynamic_linear_equals_its_formula_or_raises(data):
    k, n = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 6))
    mod = Q.dynamic.Linear(k, n, bias_=data.draw(st.booleans()))
    w = data.draw(weight_qtensors(n, k))
    bias = torch.randn(n) * 3 if mod.bias() is not None else None
    mod.set_weight_bias(w, bias)
    mod.reduce_range, mod.per_row_activations = data.draw(st.booleans()), data.draw(st.booleans())
    lead = data.draw(shapes(0, 2, 4))
    last = data.draw(st.sampled_from([k + 1, k - 1])) if data.draw(rare(8)) else k
    shape = () if data.draw(rare(10)) else (*lead, last)
    x, kind = data.draw(float_inputs(shape=shape))
    if data.draw(rare(20)):
        x, kind = fq.quantize_per_tensor(torch.randn(shape), 0.1, 0, fq.quint8), "qtensor"
    res, err = outcome(lambda: mod(x))
    if kind in ("wrong_dtype", "qtensor"):
        assert isinstance(err, TypeError), err
        return
    if kind == "meta" or shape == () or last != k:
        assert isinstance(err, ValueError), err
        return
    x32 = x.detach().to(torch.float32)
    if x32.numel() and not bool(torch.isfinite(x32).all()):
        assert isinstance(err, ValueError) and "NaN or Inf" in str(err), err
        return
    assert err is None, err
    assert res.dtype == torch.float32 and res.shape == (*lead, n)
    assert_same_floats(res, dynamic_reference(x32, w, bias, mod.reduce_range, mod.per_row_activations), ulps=1)


# -- 5. static Quantize / DeQuantize, Linear, LinearReLU, Conv1d/2d/3d ---------------------------


@st.composite
def output_qparams(draw, extreme=False):
    dt = draw(st.sampled_from([fq.quint8, fq.quint8, fq.qint8]))
    lo = draw(st.integers(dt.qmin, dt.qmin + 10))
    hi = draw(st.integers(max(lo, dt.qmax - 140), dt.qmax))
    scale = draw(valid_scales()) if extreme else draw(st.floats(1e-3, 100.0))
    return scale, draw(st.integers(dt.qmin, dt.qmax)), lo, hi, dt


@st.composite
def static_inputs(draw, shape, extreme=False):
    """(input, kind): a quint8 QTensor with random qparams in some layout, or a wrong input."""
    kind = draw(st.sampled_from(["ok"] * 12 + ["float", "qint8", "qint32", "per_channel", "meta"]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(valid_scales()) if extreme else draw(st.floats(1e-3, 10.0))
    if kind == "float":
        return torch.randn(shape), kind
    if kind == "meta":
        return fq.QTensor(torch.zeros(shape, dtype=torch.uint8, device="meta"), scale, 0), kind
    qd = {"qint8": fq.qint8, "qint32": fq.qint32}.get(kind, fq.quint8)
    d = lay_out_ints(random_ints(shape, qd, seed), draw(st.sampled_from(LAYOUTS)), seed % 64)
    if kind == "per_channel" and len(shape):
        return fq.QTensor(d, torch.full((shape[0],), scale), torch.zeros(shape[0]), qd, axis=0), kind
    return fq.QTensor(d, scale, draw(st.integers(qd.qmin, min(qd.qmax, 255))), qd), (
        "ok" if kind == "per_channel" else kind
    )


def _check_static_result(mod, x, kind, res, err, extreme: bool, shape_ok: bool) -> None:
    name = type(mod).__name__
    if kind in ("float", "per_channel") or (kind in ("qint8", "qint32") and shape_ok):
        assert isinstance(err, TypeError) and name in str(err), err
        return
    if kind in ("meta", "qint8", "qint32") or not shape_ok:
        assert isinstance(err, ValueError) and name in str(err), err
        return
    if mod._FUSED_RELU and mod.zero_point > mod.quant_max:
        # a fused ReLU clamps at the zero point: above quant_max the output range is empty
        assert isinstance(err, ValueError) and name in str(err), err
        assert "fused ReLU" in str(err) or extreme and "requantization" in str(err), err
        return
    if extreme and isinstance(err, ValueError) and "requantization" in str(err):
        assert name in str(err)
        return  # scales whose float32 requantization over- or underflows: refused, not garbage
    assert err is None, err
    assert isinstance(res, fq.QTensor) and res.dtype == mod._out_dtype
    assert res.q_scale() == mod.scale and res.q_zero_point() == mod.zero_point
    want = float64_reference(mod, x)
    assert res.shape == want.shape
    if want.numel():
        assert int((res.int_repr().to(torch.int64) - want).abs().max()) <= 1


@fast(250)
@given(data=st.data())
def test_static_linear_within_one_lsb_of_float64(data):
    cls = data.draw(st.sampled_from([Q.Linear, fq.nn.intrinsic.quantized.LinearReLU]))
    k, n = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 6))
    extreme = data.draw(rare(5))
    mod = cls(k, n, bias_=data.draw(st.booleans()))
    mod.set_weight_bias(data.draw(weight_qtensors(n, k)), torch.randn(n) * 5 if mod.bias() is not None else None)
    mod._init_output(*data.draw(output_qparams(extreme)))
    lead = data.draw(shapes(0, 2, 4))
    last = k + 1 if data.draw(rare(8)) else k
    x, kind = data.draw(static_inputs((*lead, last), extreme))
    res, err = outcome(lambda: mod(x))
    _check_static_result(mod, x, kind, res, err, extreme, last == k)


CONVS = {1: (Q.Conv1d, fq.nn.intrinsic.quantized.ConvReLU1d), 2: (Q.Conv2d, fq.nn.intrinsic.quantized.ConvReLU2d)}
CONVS[3] = (Q.Conv3d, fq.nn.intrinsic.quantized.ConvReLU3d)


@fast(200)
@given(data=st.data())
def test_static_conv_within_one_lsb_of_float64(data):
    nd = data.draw(st.integers(1, 3))
    cls = data.draw(st.sampled_from(CONVS[nd]))
    groups = data.draw(st.integers(1, 3))
    cin, cout = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    padding = data.draw(
        st.one_of(st.integers(0, 2), st.tuples(*[st.integers(0, 2)] * nd), st.sampled_from(["same", "valid"]))
    )
    if padding == "same":
        stride = (1,) * nd
    extreme = data.draw(rare(7))
    mod = cls(cin, cout, kernel, stride, padding, dilation, groups, bias=data.draw(st.booleans()))
    w = int8_weights((cout, cin // groups, *kernel), data.draw(st.integers(0, 2**31 - 1)))
    if data.draw(st.booleans()):
        wq = fq.QTensor(w, torch.rand(cout) * 0.05 + 1e-3, torch.zeros(cout), fq.qint8, axis=0)
    else:
        wq = fq.QTensor(w, data.draw(st.floats(1e-4, 0.1)), 0, fq.qint8)
    mod.set_weight_bias(wq, torch.randn(cout) if mod.bias() is not None else None)
    mod._init_output(*data.draw(output_qparams(extreme)))
    spatial = tuple(data.draw(st.integers(1, 7 if nd < 3 else 4)) for _ in range(nd))
    shape = (data.draw(st.integers(0, 2)), cin, *spatial)
    if data.draw(rare(10)):
        shape = shape[1:]  # a missing batch dimension
    x, kind = data.draw(static_inputs(shape, extreme))
    res, err = outcome(lambda: mod(x))
    fits = len(shape) == nd + 2 and all(
        size + before + after >= d * (kk - 1) + 1
        for size, (before, after), kk, d in zip(spatial, mod._pads(), kernel, dilation)
    )
    if kind == "ok" and len(shape) == nd + 2 and not fits:
        assert isinstance(err, ValueError) and cls.__name__ in str(err), err  # names the module
        return
    _check_static_result(mod, x, kind, res, err, extreme, len(shape) == nd + 2)


@fast(150)
@given(data=st.data())
def test_quantize_and_dequantize_modules(data):
    dt = data.draw(st.sampled_from([fq.quint8, fq.qint8]))
    scale = data.draw(valid_scales())
    zp = data.draw(st.integers(dt.qmin, dt.qmax))
    quant = Q.Quantize(scale, zp, dt)
    lo = data.draw(st.integers(dt.qmin, min(zp, dt.qmax - 1)))
    hi = data.draw(st.integers(max(zp, lo + 1), dt.qmax))
    quant._init_output(scale, zp, lo, hi, dt)
    x, kind = data.draw(float_inputs())
    q, err = outcome(lambda: quant(x))
    if kind != "float":
        assert isinstance(err, (TypeError, ValueError)) and "Quantize" in str(err), err
        return
    assert err is None, err
    want = ref_quantize(x.detach().to(torch.float32), scale, zp, dt.qmin, dt.qmax).clamp(lo, hi)
    assert torch.equal(q.int_repr().to(torch.int64), want)
    assert_same_floats(Q.DeQuantize()(q), ref_dequantize(q.int_repr(), scale, zp))
    expect_error(lambda: Q.DeQuantize()(x), TypeError)
    expect_error(lambda: quant(q), TypeError)


# -- 6. FloatFunctional → QFunctional ------------------------------------------------------------


@st.composite
def qtensor_pair(draw):
    shape_a = draw(shapes(1, 3, 4))
    shape_b = draw(st.sampled_from([shape_a, shape_a[1:], tuple(reversed(shape_a)), (*shape_a[:-1], 1)]))
    out = []
    for shape in (shape_a, shape_b):
        qd = draw(st.sampled_from([fq.quint8, fq.quint8, fq.qint8, fq.qint32]))
        d = lay_out_ints(random_ints(shape, qd, draw(st.integers(0, 2**31 - 1))), draw(st.sampled_from(LAYOUTS)), 3)
        out.append(
            fq.QTensor(d, draw(st.floats(1e-3, 2.0)), draw(st.integers(max(qd.qmin, -300), min(qd.qmax, 300))), qd)
        )
    return out


def _float_op(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if op == "cat":
        return torch.cat([a, b], dim=0)
    if op == "add_relu":
        return torch.relu(a + b)
    return {"add": torch.add, "mul": torch.mul, "matmul": torch.matmul}[op](a, b)


@fast(250)
@given(data=st.data())
def test_qfunctional_ops(data):
    a, b = data.draw(qtensor_pair())
    op = data.draw(st.sampled_from(["add", "mul", "cat", "add_relu", "matmul"]))
    da, db = a.dequantize(), b.dequantize()
    floats, torch_err = outcome(lambda: _float_op(op, da, db))
    ff = Q.FloatFunctional()
    obs_dtype = data.draw(st.sampled_from([torch.quint8, torch.qint8, torch.qint32]))
    ff.activation_post_process = fq.MinMaxObserver(dtype=obs_dtype)
    calibrated = torch_err is None and floats.numel() > 0 and not data.draw(rare(10))
    if calibrated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(ff, op)(*([[da, db]] if op == "cat" else [da, db]))
    qf = Q.QFunctional.from_float(ff)
    args = [[a, b]] if op == "cat" else [a, b]
    res, err = outcome(lambda: getattr(qf, op)(*args))
    if torch_err is not None:
        assert err is not None, f"{op}: float op raised {torch_err!r}, the quantized one returned"
        return
    if not calibrated:
        assert isinstance(err, fq.CalibrationError) or (op == "cat" and err is None), err
        return
    assert err is None, err
    assert res.dtype == qf._out_dtype and res.shape == floats.shape
    s, z, lo, hi = qf.scale, qf.zero_point, qf.quant_min, qf.quant_max
    got = res.int_repr().to(torch.int64)
    if op in ("add", "add_relu"):
        # exact: each operand dequantized as torch's vector loops, fma(q, s, fl(s·−zp)), a float32 add
        # (docs/numerics.md "Other quantized ops"), quantized to the output qparams
        fa, fb = (addend(t.int_repr(), t.q_scale(), t.q_zero_point()) for t in (a, b))
        assert torch.equal(got, ref_quantize(_float_op(op, fa, fb), s, z, lo, hi))
    elif op == "cat" and not all(t.same_qparams(res) for t in (a, b)):
        assert torch.equal(got, ref_quantize(floats, s, z, lo, hi))
    elif op == "cat":
        assert torch.equal(got, torch.cat([a.int_repr(), b.int_repr()]).to(torch.int64))
    elif op == "mul":
        # torch's rule: q = oz + rne(fl(float((qa − za)(qb − zb)) · m)), m = fl(fl(sa·sb)/os)
        pa = a.int_repr().to(torch.float64) - a.q_zero_point()
        pb = b.int_repr().to(torch.float64) - b.q_zero_point()
        m = (torch.tensor(a.q_scale(), dtype=torch.float32) * torch.tensor(b.q_scale(), dtype=torch.float32)) / (
            torch.tensor(s, dtype=torch.float32)
        )
        want = (torch.round((pa * pb).to(torch.float32) * m).to(torch.float64) + z).clamp(lo, hi)
        assert torch.equal(got, want.to(torch.int64))
    else:
        # matmul: the exact integer product requantized once; within 1 LSB of float64
        pa = a.int_repr().to(torch.float64) - a.q_zero_point()
        pb = b.int_repr().to(torch.float64) - b.q_zero_point()
        want = (torch.round(torch.matmul(pa, pb) * (a.q_scale() * b.q_scale() / s)) + z).clamp(lo, hi)
        if got.numel():
            assert int((got - want.to(torch.int64)).abs().max()) <= 1


@fast(150)
@given(data=st.data())
def test_qfunctional_scalar_ops(data):
    (a, _) = data.draw(qtensor_pair())
    qf = Q.QFunctional()
    op = data.draw(st.sampled_from(["add_scalar", "mul_scalar"]))
    c = data.draw(st.one_of(st.floats(-100, 100), st.sampled_from([0.0, math.nan, math.inf, 1e300, -1e-300, True])))
    res, err = outcome(lambda: getattr(qf, op)(a, c))
    if isinstance(c, bool) or not math.isfinite(c):
        assert isinstance(err, (TypeError, ValueError)) and op in str(err), err
        return
    if err is not None:  # only when the result's scale cannot be a float32
        assert isinstance(err, ValueError) and op in str(err) and "scale" in str(err), err
        return
    x = a.dequantize().to(torch.float64)
    got = res.dequantize().to(torch.float64)
    if op == "mul_scalar":
        assert torch.allclose(got, x * c, rtol=1e-5, atol=1e-30), (got, x * c)
    else:
        c_q = round(c / a.q_scale())
        # the integers are kept (zero point shifted) or requantized once to a wider range
        step = max(res.q_scale(), a.q_scale())
        assert bool(((got - (x + c_q * a.q_scale())).abs() <= step * 0.5001 + 1e-6 * x.abs()).all())


# -- 7. relu and pooling on QTensors --------------------------------------------------------------


@fast(200)
@given(data=st.data())
def test_relu_and_pooling_on_qtensors(data):
    nd = data.draw(st.integers(1, 2))
    qd = data.draw(st.sampled_from(QDTYPES))
    shape = (
        data.draw(st.integers(0, 2)),
        data.draw(st.integers(1, 3)),
        *[data.draw(st.integers(1, 7)) for _ in range(nd)],
    )
    d = lay_out_ints(
        random_ints(shape, qd, data.draw(st.integers(0, 2**31 - 1))), data.draw(st.sampled_from(LAYOUTS)), 1
    )
    zp = data.draw(st.integers(max(qd.qmin, -1000), min(qd.qmax, 1000)))
    qt = fq.QTensor(d, data.draw(st.floats(1e-3, 1.0)), zp, qd)
    op = data.draw(st.sampled_from(["relu", "torch.relu", "max", "avg", "adaptive"]))
    k = data.draw(st.integers(1, 4))
    s = data.draw(st.integers(1, 3))
    p = data.draw(st.integers(0, 2))
    ceil_mode, include_pad = data.draw(st.booleans()), data.draw(st.booleans())
    v = d.to(torch.float64) - zp  # exact for every dtype
    if op in ("relu", "torch.relu"):
        fn = F.relu if op == "relu" else torch.relu
        res = expect_ok(lambda: fn(qt))
        assert torch.equal(res.int_repr(), torch.clamp(d, min=zp))
        return
    if op == "max":
        pool = F.max_pool1d if nd == 1 else F.max_pool2d
        call = lambda t: pool(t, k, s, p, ceil_mode=ceil_mode)  # noqa: E731
        want, torch_err = outcome(lambda: pool(v, k, s, p, ceil_mode=ceil_mode))
        if want is not None:
            want = want + zp
    else:
        if op == "avg":
            pool = F.avg_pool1d if nd == 1 else F.avg_pool2d
            call = lambda t: pool(t, k, s, p, ceil_mode, include_pad)  # noqa: E731
        else:
            pool = F.adaptive_avg_pool1d if nd == 1 else F.adaptive_avg_pool2d
            call = lambda t: pool(t, k)  # noqa: E731
        want, torch_err = outcome(lambda: call(v))
        if want is not None:  # rne(mean(q − zp) + zp), clamped to the dtype
            want = torch.round(want + zp).clamp(qd.qmin, qd.qmax)
    res, err = outcome(lambda: call(qt))
    if torch_err is not None:
        assert err is not None, f"{op}: torch raised {torch_err!r} on the float data, the QTensor op returned"
        return
    assert err is None, err
    assert res.same_qparams(qt) and torch.equal(res.int_repr().to(torch.float64), want), op


# -- 8. _core directly: numpy arrays of any strides and dtypes --------------------------------------

NP_LAYOUTS = ["c", "fortran", "reversed", "strided", "broadcast", "readonly", "zero_d"]
NP_WRONG = [np.float64, np.float16, np.int32, np.int8, np.uint8, np.int64, np.bool_, np.complex64]
I32 = (-(2**31), 2**31 - 1)


def np_lay_out(base: np.ndarray, layout: str) -> np.ndarray:
    """``base``'s values (a broadcast of part of them for "broadcast") in another memory layout."""
    if base.ndim == 0 or layout == "c":
        return base
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "reversed":  # negative strides on every axis
        flip = tuple(slice(None, None, -1) for _ in range(base.ndim))
        return base[flip].copy()[flip]
    if layout == "strided":
        big = np.zeros([2 * s for s in base.shape], dtype=base.dtype)
        idx = tuple(slice(None, None, 2) for _ in range(base.ndim))
        big[idx] = base
        return big[idx]
    if layout == "broadcast":  # zero strides
        return np.broadcast_to(base[tuple(slice(0, 1) for _ in range(base.ndim))], base.shape)
    if layout == "readonly":
        out = base.copy()
        out.setflags(write=False)
        return out
    return base


@st.composite
def np_arrays(draw, dtype, shape=None, values="float"):
    """(array, right dtype?) for ``_core``."""
    if shape is None:
        shape = draw(shapes(0, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if values == "float":
        base = draw(float_values(shape)).numpy()
    else:
        info = np.iinfo(dtype)
        base = rng.integers(info.min, int(info.max) + 1, size=shape)
    right = not draw(rare(7))
    dt = dtype if right else draw(st.sampled_from([t for t in NP_WRONG if t is not dtype]))
    with np.errstate(all="ignore"):
        arr = np.ascontiguousarray(base).astype(dt)
    layout = draw(st.sampled_from(NP_LAYOUTS))
    if layout == "zero_d":
        arr = np.asarray(arr.reshape(-1)[:1].reshape(())) if arr.size else arr
    return np_lay_out(arr, layout), right


def as_torch(a: np.ndarray) -> torch.Tensor:
    """A torch copy of any numpy array (read-only and broadcast ones too, without torch's
    warn-once about non-writable arrays)."""
    return torch.from_numpy(np.array(a, copy=True))


def core_outcome(fn, int_args_fit: bool = True):
    """``outcome`` for ``_core``: pyo3 raises OverflowError (a clean Python exception) for an
    integer argument outside its Rust type; allowed only when the test passed one."""
    return outcome(fn, DOCUMENTED if int_args_fit else (*DOCUMENTED, OverflowError))


CORE_DTYPES = {"quint8": (0, 255, np.uint8), "qint8": (-128, 127, np.int8), "qint32": (*I32, np.int32)}


@fast(300)
@given(data=st.data())
def test_core_quantize_and_dequantize(data):
    name = data.draw(st.sampled_from(["quint8", "qint8", "qint32", "float16"]))
    qmin, qmax, np_t = CORE_DTYPES.get(name, (0, 255, np.uint8))
    per_channel = data.draw(st.booleans())
    x, right = data.draw(np_arrays(np.float32))
    scale = data.draw(st.one_of(valid_scales(), st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e-40, 1e39])))
    zp = data.draw(st.one_of(st.integers(qmin, qmax), st.sampled_from([qmin - 1, qmax + 1, 2**40])))
    lo = data.draw(st.one_of(st.just(qmin), st.integers(qmin - 2, qmax)))
    hi = data.draw(st.one_of(st.just(qmax), st.integers(lo, qmax + 2)))
    s32 = f32(scale) if not 3.5e38 < abs(scale) < math.inf else math.copysign(math.inf, scale)
    axis = data.draw(st.integers(-x.ndim - 1, max(x.ndim, 1)))
    # _core counts negative axes from the end, as torch does
    ax = axis + x.ndim if axis < 0 else axis
    c = 1
    if per_channel:
        zp = min(max(zp, I32[0]), I32[1])
        c = x.shape[ax] if 0 <= ax < x.ndim else 1
        scales = np_lay_out(np.full(c, s32, dtype=np.float32), data.draw(st.sampled_from(NP_LAYOUTS[:5])))
        zps = np_lay_out(np.full(c, zp, dtype=np.int32), data.draw(st.sampled_from(NP_LAYOUTS[:5])))
        call = lambda: _core.quantize_per_channel(x, scales, zps, axis, lo, hi, name)  # noqa: E731
        res, err = core_outcome(call, I32[0] <= lo <= hi <= I32[1])
    else:
        fits = all(I32[0] <= v <= I32[1] for v in (zp, lo, hi))
        res, err = core_outcome(lambda: _core.quantize_per_tensor(x, scale, zp, lo, hi, name), fits)
    channels = c if per_channel else 1  # per channel with no channels: no qparams to check
    follows_formula = (
        right
        and name != "float16"
        and (channels == 0 or (math.isfinite(s32) and s32 > 0 and qmin <= zp <= qmax))
        and qmin <= lo < hi <= qmax
        and (not per_channel or 0 <= ax < x.ndim)
    )
    if not follows_formula:
        # (an empty per-channel input has nothing to quantize: the kernel may return it unchecked)
        assert err is not None or (per_channel and x.size == 0 and right), (name, right, scale, zp, lo, hi, axis)
        return
    if err is not None:
        # subnormal scales are the Python layer's to refuse (fq.quantize_* do); _core may too
        assert s32 < TINY and isinstance(err, ValueError), err
        return
    assert res.dtype == np_t and res.shape == x.shape
    x32 = as_torch(x)
    assert torch.equal(torch.from_numpy(res).to(torch.int64), ref_quantize(x32, s32, zp, lo, hi))
    if s32 < TINY:
        return
    # dequantize back, from any layout of the integers
    q = np_lay_out(np.ascontiguousarray(res), data.draw(st.sampled_from(NP_LAYOUTS)))
    dq_scale = data.draw(st.sampled_from([s32, s32, 0.0, -1.0, math.nan, math.inf]))
    if per_channel and q.ndim:
        c = q.shape[ax]
        call = lambda: _core.dequantize_per_channel(  # noqa: E731
            q, np.full(c, dq_scale, dtype=np.float32), np.full(c, zp, dtype=np.int32), axis
        )
    else:
        call = lambda: _core.dequantize_per_tensor(q, dq_scale, zp)  # noqa: E731
    out, err = core_outcome(call)
    if not math.isfinite(dq_scale) and err is not None:
        assert isinstance(err, ValueError), err
        return
    assert err is None, err
    assert_same_floats(torch.from_numpy(out), ref_dequantize(as_torch(q), dq_scale, zp))


@fast(250)
@given(data=st.data())
def test_core_packed_linear(data):
    k, n = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 6))
    w_np, w_right = data.draw(np_arrays(np.int8, (n, k), "int"))
    per_channel = data.draw(st.booleans())
    c = n if per_channel else 1
    ws = np.array([data.draw(st.floats(1e-4, 1.0)) for _ in range(c)], dtype=np.float32)
    wz = np.array([data.draw(st.sampled_from([0, 3, -128, 127])) for _ in range(c)], dtype=np.int32)
    bad_qparams = data.draw(st.sampled_from([None] * 6 + ["float64 scales", "int64 zero points", "count"]))
    if bad_qparams is not None:
        args = {
            "float64 scales": (ws.astype(np.float64), wz),
            "int64 zero points": (ws, wz.astype(np.int64)),
            "count": (np.ones(n + 1, dtype=np.float32), np.zeros(n + 1, dtype=np.int32)),
        }[bad_qparams]
        expect_error(lambda: _core.PackedLinear(w_np, *args))
        return
    packed, err = core_outcome(lambda: _core.PackedLinear(w_np, ws, wz))
    if not w_right or w_np.ndim != 2:
        assert isinstance(err, (TypeError, ValueError)), err
        return
    assert err is None, err
    assert np.array_equal(packed.unpack(), w_np) and (packed.in_features, packed.out_features) == (k, n)
    wt = as_torch(w_np).to(torch.int64)
    wzt = torch.from_numpy(wz).to(torch.int64).expand(n) if c == 1 else torch.from_numpy(wz).to(torch.int64)
    wst = torch.from_numpy(ws).expand(n) if c == 1 else torch.from_numpy(ws)
    wq = fq.QTensor(wt.to(torch.int8), wst.double(), wzt, fq.qint8, axis=0)
    m = data.draw(st.integers(0, 5))
    bias = np.random.default_rng(m).standard_normal(n).astype(np.float32) if data.draw(st.booleans()) else None
    threads = data.draw(st.integers(1, 4))
    if data.draw(st.booleans()):
        x, right = data.draw(np_arrays(np.float32, (m, k)))
        reduce_range, relu, per_row = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
        res, err = core_outcome(lambda: packed.linear_dynamic(x, bias, reduce_range, relu, threads, per_row))
        if not right or x.ndim != 2:
            assert isinstance(err, (TypeError, ValueError)), err
            return
        x32 = as_torch(x)
        if x32.numel() and not bool(torch.isfinite(x32).all()):
            assert isinstance(err, ValueError), err
            return
        assert err is None, err
        y, scales, zps = res
        b = None if bias is None else torch.from_numpy(bias)
        want = dynamic_reference(x32, wq, b, reduce_range, per_row, relu)
        assert_same_floats(torch.from_numpy(y), want, ulps=1)
        assert len(scales) == (m if per_row else 1) and len(zps) == len(scales)
        return
    a, right = data.draw(np_arrays(np.uint8, (m, k), "int"))
    a_scale, a_zp = data.draw(st.floats(1e-3, 10.0)), data.draw(st.integers(0, 255))
    out_dtype = data.draw(st.sampled_from(["quint8", "qint8", "qint32"]))
    olo, ohi, out_np = CORE_DTYPES[out_dtype]
    o_scale, o_zp = data.draw(st.floats(1e-3, 100.0)), data.draw(st.integers(max(olo, -500), min(ohi, 500)))
    relu = data.draw(st.booleans())
    res, err = core_outcome(
        lambda: packed.linear_static(
            a, a_scale, a_zp, bias, o_scale, o_zp, olo, min(ohi, 255), relu, out_dtype, threads
        )
    )
    if not right or a.ndim != 2 or out_dtype == "qint32":
        assert isinstance(err, (TypeError, ValueError)), err
        return
    assert err is None, err
    at = as_torch(a).to(torch.float64)
    x = (at - a_zp) * f32(a_scale)
    wf = (wt - wzt[:, None]).to(torch.float64) * wst.double()[:, None]
    y = x @ wf.T + (0.0 if bias is None else torch.from_numpy(bias).double())
    if relu:
        y = y.clamp(min=0)
    lo = max(olo, o_zp) if relu else olo
    want = (torch.round(y / f32(o_scale)) + o_zp).clamp(lo, min(ohi, 255))
    assert res.dtype == out_np and res.shape == (m, n)
    if want.numel():
        assert float((torch.from_numpy(res).to(torch.float64) - want).abs().max()) <= 1


@fast(200)
@given(data=st.data())
def test_core_packed_conv(data):
    groups = data.draw(st.integers(1, 2))
    cin, cout = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
    kernel = [data.draw(st.integers(1, 3)) for _ in range(3)]
    stride = [data.draw(st.integers(1, 2)) for _ in range(3)]
    padding = [data.draw(st.integers(0, 2)) for _ in range(3)]
    dilation = [data.draw(st.integers(1, 2)) for _ in range(3)]
    w_np, w_right = data.draw(np_arrays(np.int8, (cout, cin // groups, *kernel), "int"))
    ws = (np.random.default_rng(cout).random(cout) * 0.05 + 1e-3).astype(np.float32)
    wz = np.zeros(cout, dtype=np.int32)
    packed, err = core_outcome(lambda: _core.PackedConv(w_np, ws, wz, stride, padding, dilation, groups))
    if not w_right or w_np.ndim != 5:
        assert isinstance(err, (TypeError, ValueError)), err
        return
    assert err is None, err
    spatial = [data.draw(st.integers(1, 5)) for _ in range(3)]
    x, right = data.draw(np_arrays(np.uint8, (data.draw(st.integers(0, 2)), *spatial, cin), "int"))
    xs, xz = data.draw(st.floats(1e-3, 1.0)), data.draw(st.integers(0, 255))
    os_, oz = data.draw(st.floats(1e-2, 10.0)), data.draw(st.integers(0, 255))
    bias = np.linspace(-2, 2, cout, dtype=np.float32) if data.draw(st.booleans()) else None
    res, err = core_outcome(
        lambda: packed.conv_static(x, xs, xz, bias, os_, oz, 0, 255, False, "quint8", data.draw(st.integers(1, 3)))
    )
    fits = all(s + 2 * p >= d * (kk - 1) + 1 for s, p, kk, d in zip(spatial, padding, kernel, dilation))
    if not right or x.ndim != 5:
        assert isinstance(err, (TypeError, ValueError)), err
        return
    if not fits:
        assert isinstance(err, ValueError), err
        return
    assert err is None, err
    xt = (as_torch(x).to(torch.float64) - xz) * f32(xs)
    wt = as_torch(w_np).to(torch.float64) * torch.from_numpy(ws).double()[:, None, None, None, None]
    y = F.conv3d(
        xt.permute(0, 4, 1, 2, 3),
        wt,
        None if bias is None else torch.from_numpy(bias).double(),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    want = (torch.round(y / f32(os_)) + oz).clamp(0, 255).permute(0, 2, 3, 4, 1)
    assert res.shape == tuple(want.shape) and res.dtype == np.uint8
    if want.numel():
        assert float((torch.from_numpy(res).to(torch.float64) - want).abs().max()) <= 1


# -- 9. CUDA tensors (only where there is a GPU) ---------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@fast(20)
@given(data=st.data())
def test_cuda_inputs_are_refused_with_a_clear_error(data):
    x = torch.randn(data.draw(shapes(1, 3)), device="cuda")
    expect_error(lambda: fq.quantize_per_tensor(x, 0.1, 0, fq.quint8), ValueError)
    if x.shape[-1]:
        expect_error(lambda: Q.dynamic.Linear(x.shape[-1], 2)(x), ValueError)
    qt = fq.QTensor(torch.zeros(x.shape, dtype=torch.uint8, device="cuda"), 0.1, 0)
    expect_error(qt.dequantize, ValueError)
    expect_error(lambda: Q.Linear(x.shape[-1] or 1, 2)(qt), (ValueError, TypeError))


# -- 10. the TorchScript ops (torch.ops.ferroquant.*) ----------------------------------------------


@fast(120)
@given(data=st.data())
def test_torchscript_quantize_and_dequantize_ops(data):
    x, kind = data.draw(float_inputs(wrong_ok=True))
    qd = data.draw(st.sampled_from(QDTYPES))
    scale, s, s_ok = data.draw(scale_args())
    zp, z, z_ok = data.draw(zero_point_args(qd))
    s_arg = float(s) if s_ok else (scale if isinstance(scale, float) else 0.0)
    z_arg = int(z) if z_ok else (zp if isinstance(zp, int) and not isinstance(zp, bool) else 2**40)
    res, err = outcome(
        lambda: torch.ops.ferroquant.quantize_per_tensor(x, s_arg, z_arg, qd.qmin, qd.qmax, qd.name),
        (*DOCUMENTED, OverflowError),  # a zero point beyond int64 does not even reach the op
    )
    if kind == "meta" and err is None:
        # torch's dispatcher runs the op's fake (shape-only) kernel on meta tensors: no values, no checks
        assert res.device.type == "meta" and res.shape == x.shape and res.dtype == qd.storage
        return
    if kind != "float" or not s_ok or not z_ok:
        assert err is not None, (kind, s_arg, z_arg)
        return
    assert err is None, err
    want = ref_quantize(x.detach().to(torch.float32), s, z, qd.qmin, qd.qmax)
    assert torch.equal(res.to(torch.int64), want)
    per_channel = x.dim() > 0 and data.draw(st.booleans())
    if per_channel:
        axis = data.draw(st.integers(0, x.dim() - 1))
        c = x.shape[axis]
        args = (res, torch.full((c,), s, dtype=torch.float64), torch.full((c,), z), axis)
        want = ref_dequantize(res, torch.full((c,), s, dtype=torch.float64), torch.full((c,), z), axis)
    else:
        args = (res, torch.tensor([s], dtype=torch.float64), torch.tensor([z]), -1)
        want = ref_dequantize(res, s, z)
    assert_same_floats(expect_ok(lambda: torch.ops.ferroquant.dequantize(*args)), want)
    bad = data.draw(st.sampled_from(["scale", "zero_point", "axis", "dtype"]))
    if bad == "scale":
        args = (args[0], torch.full_like(args[1], data.draw(st.sampled_from(INVALID_SCALES[:-1]))), *args[2:])
    elif bad == "zero_point":
        args = (args[0], args[1], torch.full_like(args[2], qd.qmax + 1), args[3])
    elif bad == "axis":
        args = (*args[:3], res.dim() + data.draw(st.integers(0, 2)))
    else:
        args = (res.to(torch.float32), *args[1:])
    if bad == "scale" and args[1].numel() == 0 or bad == "zero_point" and args[2].numel() == 0:
        return  # no channels: nothing is wrong
    expect_error(lambda: torch.ops.ferroquant.dequantize(*args), (TypeError, ValueError, IndexError))
