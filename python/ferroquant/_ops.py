"""ferroquant's ops registered with ``torch.library`` as ``torch.ops.ferroquant.*``.

They take quantized tensors in their TorchScript form ``(int tensor, scale, zero_point)`` and
are what converted modules call under ``torch.jit.script``; the eager path calls the kernels
directly (no dispatcher overhead) through the same helpers (``run_linear_static``,
``run_conv_static``), so eager and scripted outputs are bit-identical.

Packed weights are built on demand from the int8 weight tensor and cached per weight tensor:
an entry is reused only for the very same live tensor object (checked through a weak
reference) with the same ``_version``, storage address and shape, and the same qparam values
(and conv geometry). When the weight tensor is freed its entry goes with it, so a new tensor
that happens to reuse the freed memory is always repacked. An in-place edit through torch
(``w.copy_(...)``, ``w.fill_(...)``) bumps ``_version`` and repacks too; writes that bypass
torch's version counter (through ``w.numpy()`` or ``w.data``) are not seen. Inference tensors
(a model loaded under ``torch.inference_mode()``) have no version counter: their entry keeps a
copy of the int8 values and is reused only while the tensor still equals it.
"""

from __future__ import annotations

import weakref
from typing import Callable, List, NoReturn, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import _core
from ._dtypes import qint8, qint32, quint8, to_qdtype
from ._layout import from_nhwc, nhwc_numpy
from ._threads import get_num_threads
from .qtensor import check_axis, check_per_channel_qparams, check_scale, check_zero_point

__all__ = [
    "packed_linear_for",
    "packed_conv_for",
    "build_packed_conv",
    "run_linear_static",
    "run_conv_static",
    "storage_dtype",
    "raise_named",
    "check_requant_scales",
]

_P = TypeVar("_P")

_STORAGE = {"quint8": torch.uint8, "qint8": torch.int8, "qint32": torch.int32}
_STORAGE_TO_QDTYPE = {torch.uint8: quint8, torch.int8: qint8, torch.int32: qint32}


def storage_dtype(dtype: str) -> torch.dtype:
    """The integer storage of a quantized dtype name ("quint8" → torch.uint8)."""
    try:
        return _STORAGE[dtype]
    except KeyError:
        raise ValueError(f"unknown quantized dtype {dtype!r}; use 'quint8', 'qint8' or 'qint32'") from None


#: The exceptions the kernels raise for bad arguments (never anything else: no panics).
KERNEL_ERRORS = (ValueError, TypeError, MemoryError, RuntimeError)


def raise_named(e: BaseException, where: str) -> NoReturn:
    """Raises ``e`` again, same type, its message prefixed with ``where`` (the module or
    function that was called), chained to the original. Used where a kernel's message would
    otherwise not say which module or argument it is about."""
    msg = str(e)
    if msg.startswith(where):
        raise e
    try:
        new = type(e)(f"{where}: {msg}")
    except Exception:  # an exception type that cannot be rebuilt from a message
        raise e from None
    raise new from e


_F32_TINY = float(np.finfo(np.float32).tiny)


def check_requant_scales(
    where: str,
    x_scale: float,
    w_scale: Union[torch.Tensor, np.ndarray],
    bias: Union[torch.Tensor, np.ndarray, None],
    out_scale: float,
) -> None:
    """The static output stage's float32 intermediates (docs/numerics.md, "Requantization"):
    ``atws[j] = fl(xs·ws[j])`` must be a normal float32, ``mult[j] = fl(atws[j]/os)`` finite and
    normal, ``bq[j] = fl(b[j]/atws[j])`` finite. Otherwise the kernels would turn 0·Inf or Inf·0
    into NaN and clamp it to quant_min (a silent wrong answer), so it is a ValueError naming
    ``where`` and the scales."""
    ws = w_scale.detach().numpy() if isinstance(w_scale, torch.Tensor) else np.asarray(w_scale)
    with np.errstate(all="ignore"):
        xs, os_ = np.float32(x_scale), np.float32(out_scale)
        atws = xs * ws.astype(np.float32, copy=False)
        mult = atws / os_
        ok = bool(np.all((atws >= _F32_TINY) & np.isfinite(atws) & (mult >= _F32_TINY) & np.isfinite(mult)))
        if ok and bias is not None:
            b = bias.detach().numpy() if isinstance(bias, torch.Tensor) else np.asarray(bias)
            ok = bool(np.all(np.isfinite(b.astype(np.float32, copy=False) / atws)))
    if not ok:
        raise ValueError(
            f"{where}: input scale {x_scale!r} x weight scales [{float(ws.min()):.8g}, {float(ws.max()):.8g}] / "
            f"output scale {out_scale!r} (and bias / (input scale x weight scale)) leave float32's normal range "
            f"[{_F32_TINY:.8g}, {float(np.finfo(np.float32).max):.8g}] in the requantization, so the output cannot be "
            "computed exactly; use scales from calibrated observers (closer in magnitude)"
        )


class _Entry:
    """One cached packed weight and what it was built from."""

    __slots__ = ("ref", "version", "data_ptr", "shape", "scale", "zero_point", "packed", "snapshot")

    def __init__(
        self,
        ref: weakref.ref,
        weight: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        packed: object,
    ) -> None:
        self.ref = ref
        # inference tensors have no version counter: keep a copy of the values to compare instead
        self.snapshot = weight.detach().clone() if weight.is_inference() else None
        self.version = None if weight.is_inference() else weight._version
        self.data_ptr = weight.data_ptr()
        self.shape = tuple(weight.shape)
        self.scale = scale.detach().clone()
        self.zero_point = zero_point.detach().clone()
        self.packed = packed


# (id(weight), kind and geometry) -> entry; an entry leaves when its weight tensor is freed
_CACHE: dict[tuple, _Entry] = {}


def _same_values(saved: torch.Tensor, t: torch.Tensor) -> bool:
    return saved.dtype == t.dtype and saved.shape == t.shape and bool(torch.equal(saved, t.detach()))


def _cached(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    config: tuple,
    build: Callable[[], _P],
) -> _P:
    """The packed form of ``weight`` from the cache, or ``build()`` (and cache it)."""
    key = (id(weight), config)
    entry = _CACHE.get(key)
    if (
        entry is not None
        and entry.ref() is weight
        and (
            entry.version == weight._version
            if entry.snapshot is None
            else weight.is_inference() and _same_values(entry.snapshot, weight)
        )
        and entry.data_ptr == weight.data_ptr()
        and entry.shape == tuple(weight.shape)
        and _same_values(entry.scale, scale)
        and _same_values(entry.zero_point, zero_point)
    ):
        return entry.packed  # type: ignore[return-value]
    packed = build()

    def evict(ref: weakref.ref, key: tuple = key) -> None:
        current = _CACHE.get(key)
        if current is not None and current.ref is ref:
            del _CACHE[key]

    _CACHE[key] = _Entry(weakref.ref(weight, evict), weight, scale, zero_point, packed)
    return packed


def _check_weight(weight: torch.Tensor, ndim: int, op: str) -> None:
    if weight.dtype != torch.int8 or weight.dim() != ndim:
        raise TypeError(
            f"{op}: weight must be a {ndim}-D torch.int8 tensor (a quantized weight's int_repr()), "
            f"got {weight.dtype} with shape {list(weight.shape)}"
        )
    if weight.device.type != "cpu":
        raise ValueError(f"{op}: weight is on {weight.device}; ferroquant runs on the CPU, call .cpu() first")


def _qparam_arrays(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return (
        scale.detach().to(torch.float32).reshape(-1).contiguous().numpy(),
        zero_point.detach().to(torch.int32).reshape(-1).contiguous().numpy(),
    )


def _check_weight_qparams(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, op: str) -> None:
    """Weight scales / zero points: one each, or one per output channel, valid for qint8 (done
    once per packing: cached packed weights were built from checked values)."""
    if not isinstance(scale, torch.Tensor) or not isinstance(zero_point, torch.Tensor):
        raise TypeError(f"{op}: weight_scale and weight_zero_point must be tensors")
    channels = 1 if scale.numel() == 1 and zero_point.numel() == 1 else weight.shape[0]
    check_per_channel_qparams(scale, zero_point, channels, qint8, f"{op}: weight_scale", f"{op}: weight_zero_point")


def packed_linear_for(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, op: str = "packed_linear_for"
) -> _core.PackedLinear:
    """PackedLinear for an int8 weight tensor [out, in] and its (1 or per-row) qparams, cached."""

    def build() -> _core.PackedLinear:
        _check_weight_qparams(weight, scale, zero_point, op)
        s, z = _qparam_arrays(scale, zero_point)
        return _core.PackedLinear(weight.detach().contiguous().numpy(), s, z)

    return _cached(weight, scale, zero_point, ("linear",), build)


def build_packed_conv(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> _core.PackedConv:
    """PackedConv for an int8 conv weight ``[out, in/groups, *kernel]`` (1, 2 or 3 spatial dims);
    ``padding`` is the (leading-side) padding per spatial dim."""
    nd = weight.dim() - 2
    lift = [1] * (3 - nd)
    _check_weight_qparams(weight, scale, zero_point, "torch.ops.ferroquant.conv_static")
    w5 = weight.detach().reshape(*weight.shape[:2], *lift, *weight.shape[2:])
    s, z = _qparam_arrays(scale, zero_point)
    return _core.PackedConv(
        w5.contiguous().numpy(),
        s,
        z,
        lift + [int(v) for v in stride],
        [0] * (3 - nd) + [int(v) for v in padding],
        lift + [int(v) for v in dilation],
        int(groups),
    )


def packed_conv_for(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> _core.PackedConv:
    """``build_packed_conv``, cached like ``packed_linear_for`` (keyed on the geometry too)."""
    config = ("conv", tuple(int(v) for v in stride), tuple(int(v) for v in padding), tuple(int(v) for v in dilation))
    config += (int(groups),)
    return _cached(
        weight,
        scale,
        zero_point,
        config,
        lambda: build_packed_conv(weight, scale, zero_point, stride, padding, dilation, groups),
    )


def run_linear_static(
    packed: _core.PackedLinear,
    bias: Optional[np.ndarray],
    data: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    relu: bool,
    dtype: str,
) -> torch.Tensor:
    """Static quantized linear on quint8 ``data [..., in]`` → ``[..., out]`` (storage of ``dtype``)."""
    k, n = packed.in_features, packed.out_features
    out = packed.linear_static(
        data.reshape(-1, k).contiguous().numpy(),
        x_scale,
        x_zero_point,
        bias,
        scale,
        zero_point,
        quant_min,
        quant_max,
        relu,
        dtype,
        get_num_threads(),
    )
    return torch.from_numpy(out).reshape(*data.shape[:-1], n)


def run_conv_static(
    packed: _core.PackedConv,
    bias: Optional[np.ndarray],
    data: torch.Tensor,
    pads: Sequence[tuple[int, int]],
    x_scale: float,
    x_zero_point: int,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    relu: bool,
    dtype: str,
) -> torch.Tensor:
    """Static quantized conv on quint8 ``data [N, C, *spatial]`` (any memory format) with
    ``pads`` (before, after) per spatial dim, the packed weights holding the ``before`` part →
    ``[N, Cout, *out_spatial]``, stored channels-last."""
    if any(before != after for before, after in pads):
        # asymmetric 'same' padding: pad the far side with the zero point
        pad_arg: list[int] = []
        for before, after in reversed(pads):
            pad_arg += [0, after - before]
        data = F.pad(data.float(), pad_arg, value=float(x_zero_point)).to(torch.uint8)
    # channels-last view [N, *spatial, C], no copy here: the kernel binding copies the (possibly
    # strided) array into its own channels-last buffer in one pass
    out = packed.conv_static(
        nhwc_numpy(data),
        x_scale,
        x_zero_point,
        bias,
        scale,
        zero_point,
        quant_min,
        quant_max,
        relu,
        dtype,
        get_num_threads(),
    )
    return from_nhwc(out)  # [N, *out_spatial, Cout] viewed as [N, Cout, ...]


def _bias_array(bias: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if bias is None else bias.detach().to(torch.float32).reshape(-1).contiguous().numpy()


def _check_static_qparams(
    op: str, x_scale: float, x_zero_point: int, scale: float, zero_point: int, dtype: str
) -> None:
    """The scalar qparams of the static ops: quint8 input, output in ``dtype``."""
    check_scale(x_scale, f"{op}: x_scale")
    check_zero_point(x_zero_point, quint8, f"{op}: x_zero_point")
    check_scale(scale, f"{op}: scale")
    check_zero_point(zero_point, to_qdtype(dtype), f"{op}: zero_point")


def _check_activation(x: torch.Tensor, op: str) -> None:
    if x.dtype != torch.uint8:
        raise TypeError(f"{op}: x must be quint8 activations (a torch.uint8 tensor), got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{op}: x is on {x.device}; ferroquant runs on the CPU, call .cpu() first")


@torch.library.custom_op("ferroquant::quantize_per_tensor", mutates_args=())
def quantize_per_tensor_op(
    x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: str
) -> torch.Tensor:
    op = "torch.ops.ferroquant.quantize_per_tensor"
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating point tensor, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{op}: x is on {x.device}; ferroquant runs on the CPU, call .cpu() first")
    qd = to_qdtype(dtype)
    scale = check_scale(scale, f"{op}: scale")
    zero_point = check_zero_point(zero_point, qd, f"{op}: zero_point")
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if not qd.qmin <= v <= qd.qmax:
            raise ValueError(f"{op}: {name} {v} is outside the {qd.name} range [{qd.qmin}, {qd.qmax}]")
    data = _core.quantize_per_tensor(
        x.detach().to(torch.float32).contiguous().numpy(), scale, zero_point, quant_min, quant_max, dtype
    )
    return torch.from_numpy(data)


@quantize_per_tensor_op.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: str) -> torch.Tensor:
    return torch.empty_like(x, dtype=storage_dtype(dtype))


@torch.library.custom_op("ferroquant::dequantize", mutates_args=())
def dequantize_op(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    op = "torch.ops.ferroquant.dequantize"
    qd = _STORAGE_TO_QDTYPE.get(q.dtype)
    if qd is None:
        raise TypeError(f"{op}: q must be a torch.uint8, torch.int8 or torch.int32 tensor, got {q.dtype}")
    if q.device.type != "cpu":
        raise ValueError(f"{op}: q is on {q.device}; ferroquant runs on the CPU, call .cpu() first")
    if axis < 0:
        s = check_scale(scale, f"{op}: scale")
        z = check_zero_point(zero_point, qd, f"{op}: zero_point")
        out = _core.dequantize_per_tensor(q.contiguous().numpy(), s, z)
    else:
        axis = check_axis(axis, q.dim(), f"{op}: axis")
        s64, z64 = check_per_channel_qparams(scale, zero_point, q.shape[axis], qd, f"{op}: scale", f"{op}: zero_point")
        out = _core.dequantize_per_channel(
            q.contiguous().numpy(), s64.to(torch.float32).numpy(), z64.to(torch.int32).numpy(), axis
        )
    return torch.from_numpy(out)


@dequantize_op.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty_like(q, dtype=torch.float32)


@torch.library.custom_op("ferroquant::linear_dynamic", mutates_args=())
def linear_dynamic_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    reduce_range: bool,
    per_row: bool = False,
) -> torch.Tensor:
    op = "torch.ops.ferroquant.linear_dynamic"
    _check_weight(weight, 2, op)
    k = weight.shape[1]
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating point tensor, got {x.dtype}; pass a float tensor (x.float())")
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{op}: x must have shape [..., {k}] (in_features = {k}), got {list(x.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"{op}: x is on {x.device}; ferroquant runs on the CPU, call .cpu() first")
    packed = packed_linear_for(weight, weight_scale, weight_zero_point, op)
    x2 = x.detach().to(torch.float32).reshape(-1, k).contiguous()
    try:
        out, _, _ = packed.linear_dynamic(
            x2.numpy(), _bias_array(bias), reduce_range, False, get_num_threads(), per_row
        )
    except KERNEL_ERRORS as e:
        raise_named(e, op)
    return torch.from_numpy(out).reshape(*x.shape[:-1], weight.shape[0])


@linear_dynamic_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    reduce_range: bool,
    per_row: bool = False,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("ferroquant::linear_static", mutates_args=())
def linear_static_op(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    relu: bool,
    dtype: str,
) -> torch.Tensor:
    """quint8 ``x [..., in]`` (x_scale, x_zero_point) × int8 ``weight [out, in]`` → ``[..., out]``
    quantized to (scale, zero_point), clamped to [quant_min, quant_max], storage of ``dtype``."""
    op = "torch.ops.ferroquant.linear_static"
    _check_weight(weight, 2, op)
    _check_activation(x, op)
    k = weight.shape[1]
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{op}: x must have shape [..., {k}] (in_features = {k}), got {list(x.shape)}")
    _check_static_qparams(op, x_scale, x_zero_point, scale, zero_point, dtype)
    packed = packed_linear_for(weight, weight_scale, weight_zero_point, op)
    check_requant_scales(op, x_scale, weight_scale, bias, scale)
    try:
        return run_linear_static(
            packed, _bias_array(bias), x, x_scale, x_zero_point, scale, zero_point, quant_min, quant_max, relu, dtype
        )
    except KERNEL_ERRORS as e:
        raise_named(e, op)


@linear_static_op.register_fake
def _(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    relu: bool,
    dtype: str,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=storage_dtype(dtype))


def _conv_pads(padding: Sequence[int], nd: int, op: str) -> list[tuple[int, int]]:
    if len(padding) != 2 * nd or any(p < 0 for p in padding):
        raise ValueError(
            f"{op}: padding must hold (before, after) for each of the {nd} spatial dims ({2 * nd} non-negative "
            f"ints), got {list(padding)}"
        )
    return [(int(padding[2 * i]), int(padding[2 * i + 1])) for i in range(nd)]


@torch.library.custom_op("ferroquant::conv_static", mutates_args=())
def conv_static_op(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    relu: bool,
    dtype: str,
) -> torch.Tensor:
    """quint8 ``x [N, C, *spatial]`` (1 to 3 spatial dims) convolved with int8 ``weight
    [out, C/groups, *kernel]``; ``padding`` holds (before, after) per spatial dim (padded with
    x's zero point) → ``[N, out, *out_spatial]`` quantized to (scale, zero_point)."""
    op = "torch.ops.ferroquant.conv_static"
    nd = weight.dim() - 2
    if not 1 <= nd <= 3:
        raise TypeError(f"{op}: weight must be 3-D to 5-D [out, in/groups, *kernel], got shape {list(weight.shape)}")
    _check_weight(weight, nd + 2, op)
    _check_activation(x, op)
    if x.dim() != nd + 2 or x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"{op}: x must have shape [N, {weight.shape[1] * groups}, <{nd} spatial dims>] for this weight "
            f"(groups = {groups}), got {list(x.shape)}"
        )
    for name, v in (("stride", stride), ("dilation", dilation)):
        if len(v) != nd or any(e < 1 for e in v):
            raise ValueError(f"{op}: {name} must hold {nd} positive ints, got {list(v)}")
    pads = _conv_pads(padding, nd, op)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    _check_static_qparams(op, x_scale, x_zero_point, scale, zero_point, dtype)
    packed = packed_conv_for(weight, weight_scale, weight_zero_point, stride, [b for b, _ in pads], dilation, groups)
    check_requant_scales(op, x_scale, weight_scale, bias, scale)
    try:
        b = _bias_array(bias)
        return run_conv_static(
            packed, b, x, pads, x_scale, x_zero_point, scale, zero_point, quant_min, quant_max, relu, dtype
        )
    except KERNEL_ERRORS as e:
        raise_named(e, op)


@conv_static_op.register_fake
def _(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    relu: bool,
    dtype: str,
) -> torch.Tensor:
    nd = weight.dim() - 2
    out = []
    for i in range(nd):
        size = x.shape[2 + i] + padding[2 * i] + padding[2 * i + 1] - dilation[i] * (weight.shape[2 + i] - 1) - 1
        out.append(size // stride[i] + 1)
    return x.new_empty((x.shape[0], weight.shape[0], *out), dtype=storage_dtype(dtype))
