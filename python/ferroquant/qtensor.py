"""QTensor: a quantized tensor made of a plain torch integer tensor plus its qparams.

No torch quantized dtype is involved: ``int_repr()`` is a ``torch.uint8`` / ``torch.int8`` /
``torch.int32`` tensor and the qparams live beside it. Shape operations (view, reshape, flatten,
permute, transpose, squeeze, unsqueeze, narrow, flip, slicing, ``torch.cat`` / ``torch.stack`` with
equal qparams) and a
few value ops that are exact on the integers (``relu``, ``max_pool*``) work through
``__torch_function__``; any other torch op raises a ``TypeError`` that names it and says how to
get a float tensor back.

For TorchScript, a quantized tensor travels as the triple ``(int_repr, scale, zero_point)``
(see :meth:`QTensor.to_tuple`) and the ops registered as ``torch.ops.ferroquant.*`` take that.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import _avg_pool as _avg_pool_rs
from . import _core
from ._dtypes import (
    QDtype,
    QScheme,
    per_channel_affine,
    per_tensor_affine,
    qint8,
    qint32,
    quint8,
    to_qdtype,
    to_qscheme,
)
from ._layout import from_nhwc, nhwc_numpy
from ._threads import get_num_threads

__all__ = ["QTensor", "quantize_per_tensor", "quantize_per_channel", "dequantize"]

_STORAGE_TO_QDTYPE = {torch.uint8: quint8, torch.int8: qint8, torch.int32: qint32}


def _cpu_numpy(t: torch.Tensor, what: str) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor (contiguous copy only when needed)."""
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; ferroquant runs on the CPU, call .cpu() first")
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


#: A scale must be a positive, normal, finite float32: the kernels quantize with ``fl(1/scale)``,
#: which overflows for smaller (subnormal) scales and then maps 0 to NaN and the top of the range.
SCALE_MIN = float(torch.finfo(torch.float32).tiny)
SCALE_MAX = float(torch.finfo(torch.float32).max)
_SCALE_RULE = f"a finite number in [{SCALE_MIN:.8g}, {SCALE_MAX:.8g}] (a positive, normal float32)"


def _scalar(value: Any, arg: str, what: str) -> Any:
    """A Python number from a number or a one-element tensor / array."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        n = value.size if isinstance(value, np.ndarray) else value.numel()
        if n != 1:
            raise ValueError(
                f"{arg} must be a single {what}, got a tensor of shape {list(value.shape)}; for one "
                "value per channel use quantize_per_channel (or QTensor(..., axis=...))"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        article = "an" if what[0] in "aeiou" else "a"
        raise TypeError(f"{arg} must be {article} {what}, got {type(value).__name__} ({value!r})")
    return value


def check_scale(value: Any, arg: str = "scale") -> float:
    """``value`` as a float after checking it is a valid quantization scale (see ``SCALE_MIN``)."""
    s = float(_scalar(value, arg, "real number"))
    if not SCALE_MIN <= s <= SCALE_MAX:
        raise ValueError(f"{arg} must be {_SCALE_RULE}, got {s!r}; use the observer's calculate_qparams() values")
    return s


def check_zero_point(value: Any, dtype: QDtype, arg: str = "zero_point") -> int:
    """``value`` as an int after checking it is an integer inside ``dtype``'s range."""
    v = _scalar(value, arg, "integer")
    if not isinstance(v, numbers.Integral):
        f = float(v)
        if not f.is_integer():
            raise ValueError(f"{arg} must be an integer, got {v!r}; round it first (e.g. int(round(zp)))")
        v = int(f)
    z = int(v)
    if not dtype.qmin <= z <= dtype.qmax:
        raise ValueError(
            f"{arg} {z} is outside the {dtype.name} range [{dtype.qmin}, {dtype.qmax}]; use a zero point inside it"
        )
    return z


def check_axis(axis: Any, ndim: int, arg: str = "axis") -> int:
    """``axis`` normalised to ``0 <= axis < ndim`` (negative axes count from the end, as in torch)."""
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{arg} must be an int, got {type(axis).__name__} ({axis!r})") from None
    if ndim == 0:
        raise ValueError(f"per-channel quantization needs a tensor with at least 1 dimension, got a 0-d one ({arg})")
    if not -ndim <= a < ndim:
        raise IndexError(f"{arg} {a} is out of range for a {ndim}-d tensor: expected an axis in [{-ndim}, {ndim - 1}]")
    return a + ndim if a < 0 else a


def check_per_channel_qparams(
    scales: Any, zero_points: Any, channels: int, dtype: QDtype, scale_arg: str = "scales", zp_arg: str = "zero_points"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated private copies of per-channel qparams: float64 scales and int64 zero points,
    ``channels`` of each."""
    for arg, t in ((scale_arg, scales), (zp_arg, zero_points)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg} must be a 1-d torch.Tensor with one value per channel, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{arg} is on {t.device}; ferroquant runs on the CPU, call .cpu() first")
        if t.dim() > 1 or t.numel() != channels:
            raise ValueError(
                f"{arg} must be a 1-d tensor with one value per channel ({channels} along the axis), "
                f"got shape {list(t.shape)}"
            )
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{arg} must be a real-valued tensor, got {t.dtype}")
    s = scales.detach().reshape(-1).to(torch.float64, copy=True)
    bad = ~((s >= SCALE_MIN) & (s <= SCALE_MAX))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{scale_arg}: each scale must be {_SCALE_RULE}, got {s[i].item()!r} for channel {i}")
    z = zero_points.detach().reshape(-1)
    if z.is_floating_point():
        z64 = z.to(torch.float64)
        frac = ~torch.isfinite(z64) | (z64 != torch.round(z64))
        if bool(frac.any()):
            i = int(frac.nonzero()[0, 0])
            raise ValueError(
                f"{zp_arg} must be integers, got {z64[i].item()!r} for channel {i}; round them first "
                "(e.g. zero_points.round().long())"
            )
        out_of_range = (z64 < dtype.qmin) | (z64 > dtype.qmax)
    else:
        out_of_range = (z < dtype.qmin) | (z > dtype.qmax)
    if bool(out_of_range.any()):
        i = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"{zp_arg}: each zero point must lie in the {dtype.name} range [{dtype.qmin}, {dtype.qmax}], got "
            f"{z[i].item()!r} for channel {i}"
        )
    return s, z.to(torch.int64, copy=True)


def _float32_numpy(x: torch.Tensor, what: str) -> np.ndarray:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating point tensor, got {x.dtype}")
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return _cpu_numpy(x, what)


class QTensorAttributeError(AttributeError, TypeError):
    """An attribute or method QTensor does not support (a TypeError, as for unsupported torch ops;
    an AttributeError too, so ``hasattr`` and ``getattr(x, name, default)`` keep working)."""


class QTensor:
    """A quantized tensor: integer data (``int_repr()``) + scale / zero point (per tensor or
    per channel along ``q_per_channel_axis()``)."""

    __slots__ = ("_data", "_dtype", "_qscheme", "_scale", "_zero_point", "_scales", "_zero_points", "_axis")

    def __init__(
        self,
        data: torch.Tensor,
        scale: Union[float, torch.Tensor, None] = None,
        zero_point: Union[int, torch.Tensor, None] = None,
        dtype: Any = None,
        *,
        axis: Optional[int] = None,
        qscheme: Any = None,
    ) -> None:
        if not isinstance(data, torch.Tensor) or data.dtype not in _STORAGE_TO_QDTYPE:
            raise TypeError(
                "QTensor data must be a torch.uint8, torch.int8 or torch.int32 tensor, "
                f"got {getattr(data, 'dtype', type(data).__name__)}"
            )
        qd = to_qdtype(dtype) if dtype is not None else _STORAGE_TO_QDTYPE[data.dtype]
        if qd.storage != data.dtype:
            raise TypeError(f"{qd.name} data must be stored as {qd.storage}, got {data.dtype}")
        self._data = data
        self._dtype: QDtype = qd
        if axis is None:
            if scale is None or zero_point is None:
                raise ValueError("a per-tensor QTensor needs scale and zero_point (or axis=... for per channel)")
            self._scale: Optional[float] = check_scale(scale, "QTensor: scale")
            self._zero_point: Optional[int] = check_zero_point(zero_point, qd, "QTensor: zero_point")
            self._scales: Optional[torch.Tensor] = None
            self._zero_points: Optional[torch.Tensor] = None
            self._axis: Optional[int] = None
            self._qscheme: QScheme = to_qscheme(qscheme) if qscheme is not None else per_tensor_affine
        else:
            ax = check_axis(axis, data.dim(), "QTensor: axis")
            # private copies: later in-place changes to the caller's tensors must not change this one
            self._scales, self._zero_points = check_per_channel_qparams(
                scale, zero_point, data.shape[ax], qd, "QTensor: scale", "QTensor: zero_point"
            )
            self._scale = None
            self._zero_point = None
            self._axis = ax
            self._qscheme = to_qscheme(qscheme) if qscheme is not None else per_channel_affine

    @classmethod
    def _trusted(cls, data: torch.Tensor, scale: float, zero_point: int, dtype: QDtype) -> QTensor:
        """A per-tensor QTensor from values the caller has already validated (a kernel's output
        with a module's checked output qparams): skips the checks of ``__init__``, which are a
        large part of a small module call."""
        q = cls.__new__(cls)
        q._data = data
        q._dtype = dtype
        q._scale = float(scale)
        q._zero_point = int(zero_point)
        q._scales = None
        q._zero_points = None
        q._axis = None
        q._qscheme = per_tensor_affine
        return q

    # -- torch-like accessors ------------------------------------------------------------------
    def int_repr(self) -> torch.Tensor:
        return self._data

    def q_scale(self) -> float:
        self._need_per_tensor("q_scale")
        assert self._scale is not None
        return self._scale

    def q_zero_point(self) -> int:
        self._need_per_tensor("q_zero_point")
        assert self._zero_point is not None
        return self._zero_point

    def q_per_channel_scales(self) -> torch.Tensor:
        """A copy of the per-channel scales (float64)."""
        self._need_per_channel("q_per_channel_scales")
        assert self._scales is not None
        return self._scales.clone()

    def q_per_channel_zero_points(self) -> torch.Tensor:
        """A copy of the per-channel zero points (int64)."""
        self._need_per_channel("q_per_channel_zero_points")
        assert self._zero_points is not None
        return self._zero_points.clone()

    def q_per_channel_axis(self) -> int:
        self._need_per_channel("q_per_channel_axis")
        assert self._axis is not None
        return self._axis

    def qscheme(self) -> QScheme:
        return self._qscheme

    @property
    def is_per_channel(self) -> bool:
        return self._axis is not None

    @property
    def dtype(self) -> QDtype:
        """The ferroquant dtype (``ferroquant.quint8`` ...); compares equal to its name."""
        return self._dtype

    @property
    def shape(self) -> torch.Size:
        return self._data.shape

    @property
    def device(self) -> torch.device:
        return self._data.device

    @property
    def is_quantized(self) -> bool:
        return True

    @property
    def requires_grad(self) -> bool:
        return False

    def size(self, dim: Optional[int] = None) -> Any:
        return self._data.size() if dim is None else self._data.size(dim)

    def dim(self) -> int:
        return self._data.dim()

    @property
    def ndim(self) -> int:
        return self._data.dim()

    def numel(self) -> int:
        return self._data.numel()

    def __len__(self) -> int:
        return len(self._data)

    def element_size(self) -> int:
        return self._data.element_size()

    def _need_per_tensor(self, what: str) -> None:
        if self._axis is not None:
            raise RuntimeError(f"{what}() is for per-tensor quantized tensors; this one is per-channel")

    def _need_per_channel(self, what: str) -> None:
        if self._axis is None:
            raise RuntimeError(f"{what}() is for per-channel quantized tensors; this one is per-tensor")

    # -- conversions ---------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        """Float32 values: ``fl(scale · fl(q − zp))``."""
        q = _cpu_numpy(self._data, "QTensor.dequantize: the quantized data")
        if self._axis is None:
            out = _core.dequantize_per_tensor(q, self._scale, self._zero_point)
        else:
            assert self._scales is not None and self._zero_points is not None
            out = _core.dequantize_per_channel(
                q,
                self._scales.to(torch.float32).numpy(),
                self._zero_points.to(torch.int32).numpy(),
                self._axis,
            )
        return torch.from_numpy(out)

    def to_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The TorchScript-friendly form ``(int_repr, scale, zero_point)`` (1-element or
        per-channel tensors)."""
        if self._axis is None:
            return (
                self._data,
                torch.tensor([self._scale], dtype=torch.float64),
                torch.tensor([self._zero_point], dtype=torch.int64),
            )
        assert self._scales is not None and self._zero_points is not None
        return self._data, self._scales.clone(), self._zero_points.clone()

    def _with_data(self, data: torch.Tensor, axis: Optional[int] = None) -> QTensor:
        if self._axis is None:
            return QTensor(data, self._scale, self._zero_point, self._dtype, qscheme=self._qscheme)
        return QTensor(data, self._scales, self._zero_points, self._dtype, axis=axis, qscheme=self._qscheme)

    def same_qparams(self, other: QTensor) -> bool:
        if self._dtype != other._dtype or self._axis != other._axis:
            return False
        if self._axis is None:
            return self._scale == other._scale and self._zero_point == other._zero_point
        assert self._scales is not None and other._scales is not None
        assert self._zero_points is not None and other._zero_points is not None
        return bool(torch.equal(self._scales, other._scales) and torch.equal(self._zero_points, other._zero_points))

    # -- shape methods ------------------------------------------------------------------------
    def _shape_op(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> QTensor:
        if self._axis is not None:
            raise TypeError(
                f"{name} on a per-channel QTensor is not supported (it could move the channel axis); "
                "call .dequantize() first"
            )
        return self._with_data(fn(self._data))

    def view(self, *shape: Any) -> QTensor:
        return self._shape_op("view", lambda d: d.view(*shape))

    def reshape(self, *shape: Any) -> QTensor:
        return self._shape_op("reshape", lambda d: d.reshape(*shape))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> QTensor:
        return self._shape_op("flatten", lambda d: d.flatten(start_dim, end_dim))

    def permute(self, *dims: Any) -> QTensor:
        return self._shape_op("permute", lambda d: d.permute(*dims))

    def transpose(self, dim0: int, dim1: int) -> QTensor:
        return self._shape_op("transpose", lambda d: d.transpose(dim0, dim1))

    def squeeze(self, *dim: Any) -> QTensor:
        return self._shape_op("squeeze", lambda d: d.squeeze(*dim))

    def unsqueeze(self, dim: int) -> QTensor:
        return self._shape_op("unsqueeze", lambda d: d.unsqueeze(dim))

    def narrow(self, dim: int, start: int, length: int) -> QTensor:
        return self._shape_op("narrow", lambda d: d.narrow(dim, start, length))

    def chunk(self, chunks: int, dim: int = 0) -> tuple[QTensor, ...]:
        """``torch.chunk`` on the integers: views sharing the qparams (ShuffleNet's channel split)."""
        self._need_per_tensor("chunk")
        return tuple(self._with_data(d) for d in self._data.chunk(chunks, dim))

    def split(self, split_size_or_sections: Any, dim: int = 0) -> tuple[QTensor, ...]:
        """``torch.split`` on the integers: views sharing the qparams."""
        self._need_per_tensor("split")
        return tuple(self._with_data(d) for d in self._data.split(split_size_or_sections, dim))

    def mean(self, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> QTensor:
        """The mean over ``dim`` (the spatial dims, as a global average pool), requantized onto the
        input's grid as quantized average pooling rounds: ``rne(Σ(q − zp)/n + zp)``."""
        return _mean(self, dim, keepdim, dtype=dtype)

    def __getattr__(self, name: str) -> Any:
        # only for names QTensor does not have: say what is supported instead of a bare AttributeError
        if name.startswith("__") or name.startswith("_"):
            raise AttributeError(name)
        raise QTensorAttributeError(
            f"QTensor has no method or attribute '{name}' (quantized activations support shape ops, relu, pooling, "
            "cat, chunk, split, mean, sigmoid / hardsigmoid / tanh / softmax and the quantized modules). Insert a "
            "DeQuantStub before the float part of the model, or call .dequantize() to get a float tensor."
        )

    def contiguous(self, memory_format: torch.memory_format = torch.contiguous_format) -> QTensor:
        return self._with_data(self._data.contiguous(memory_format=memory_format), self._axis)

    def clone(self) -> QTensor:
        return self._with_data(self._data.clone(), self._axis)

    def detach(self) -> QTensor:
        return self

    def cpu(self) -> QTensor:
        return self

    def is_contiguous(self, memory_format: torch.memory_format = torch.contiguous_format) -> bool:
        return self._data.is_contiguous(memory_format=memory_format)

    def __getitem__(self, idx: Any) -> QTensor:
        return self._shape_op("indexing", lambda d: d[idx])

    def flip(self, *dims: Any) -> QTensor:
        return self._shape_op("flip", lambda d: d.flip(*dims))

    def softmax(self, dim: Optional[int] = None, dtype: Any = None) -> QTensor:
        """Softmax onto the fixed qparams (1/256, 0); see :func:`torch.softmax` on QTensors."""
        return _softmax(self, dim, dtype=dtype)

    def repeat(self, *sizes: Any) -> QTensor:
        return self._shape_op("repeat", lambda d: d.repeat(*sizes))

    def __repr__(self) -> str:
        if self._axis is None:
            q = f"scale={self._scale}, zero_point={self._zero_point}"
        else:
            q = f"axis={self._axis}, scales={self._scales}, zero_points={self._zero_points}"
        return f"QTensor({self.dequantize()}, dtype={self._dtype}, qscheme={self._qscheme}, {q})"

    # -- torch functions ------------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func: Callable, types: Sequence[type], args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        handler = _HANDLED.get(func)
        if handler is None:
            name = getattr(func, "__name__", str(func))
            raise TypeError(
                f"torch op '{name}' is not supported on a ferroquant QTensor (quantized activations). "
                "Insert a DeQuantStub before the float part of the model, or call .dequantize() to get a "
                "float tensor."
            )
        return handler(*args, **kwargs)


def _handles(*funcs: Callable) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        for f in funcs:
            _HANDLED[f] = fn
        return fn

    return deco


_HANDLED: dict[Callable, Callable] = {}


@_handles(torch.flatten)
def _flatten(x: QTensor, start_dim: int = 0, end_dim: int = -1) -> QTensor:
    return x.flatten(start_dim, end_dim)


@_handles(torch.reshape)
def _reshape(x: QTensor, shape: Sequence[int]) -> QTensor:
    return x.reshape(shape)


@_handles(torch.permute)
def _permute(x: QTensor, dims: Sequence[int]) -> QTensor:
    return x.permute(tuple(dims))  # as one tuple: torch.permute(t, []) of a 0-d tensor is valid


@_handles(torch.transpose)
def _transpose(x: QTensor, dim0: int, dim1: int) -> QTensor:
    return x.transpose(dim0, dim1)


@_handles(torch.squeeze)
def _squeeze(x: QTensor, *dim: Any) -> QTensor:
    return x.squeeze(*dim)


@_handles(torch.unsqueeze)
def _unsqueeze(x: QTensor, dim: int) -> QTensor:
    return x.unsqueeze(dim)


@_handles(torch.narrow)
def _narrow(x: QTensor, dim: int, start: int, length: int) -> QTensor:
    return x.narrow(dim, start, length)


@_handles(torch.cat, torch.concat)
def _cat(tensors: Sequence[Any], dim: int = 0) -> QTensor:
    ts = list(tensors)
    if not all(isinstance(t, QTensor) for t in ts):
        raise TypeError("torch.cat cannot mix QTensors and float tensors; dequantize or quantize them first")
    first = ts[0]
    if not all(first.same_qparams(t) for t in ts[1:]):
        raise TypeError(
            "torch.cat on QTensors needs equal qparams (scale, zero point, dtype); use "
            "ferroquant.nn.quantized.FloatFunctional().cat(...) to requantize to common qparams"
        )
    if first.is_per_channel:
        raise TypeError("torch.cat of per-channel QTensors is not supported; call .dequantize() first")
    return first._with_data(torch.cat([t.int_repr() for t in ts], dim=dim))


@_handles(torch.stack)
def _stack(tensors: Sequence[Any], dim: int = 0) -> QTensor:
    ts = list(tensors)
    if not ts or not all(isinstance(t, QTensor) for t in ts):
        raise TypeError("torch.stack cannot mix QTensors and float tensors; dequantize or quantize them first")
    first = ts[0]
    if first.is_per_channel or not all(first.same_qparams(t) for t in ts[1:]):
        raise TypeError(
            "torch.stack on QTensors needs equal per-tensor qparams (scale, zero point, dtype); requantize them "
            "first (ferroquant.quantize_per_tensor(t.dequantize(), scale, zero_point, dtype))"
        )
    return first._with_data(torch.stack([t.int_repr() for t in ts], dim=dim))


@_handles(torch.flip, torch.Tensor.flip)
def _flip(x: QTensor, *dims: Any, **kwargs: Any) -> QTensor:
    if "dims" in kwargs:
        dims = (kwargs.pop("dims"),)
    if kwargs:
        raise TypeError(f"flip() got unexpected keyword arguments {sorted(kwargs)}")
    return x.flip(*dims)


@_handles(torch.chunk, torch.Tensor.chunk)
def _chunk(x: QTensor, chunks: int, dim: int = 0) -> tuple[QTensor, ...]:
    return x.chunk(chunks, dim)


@_handles(torch.split, torch.Tensor.split)
def _split(x: QTensor, split_size_or_sections: Any, dim: int = 0) -> tuple[QTensor, ...]:
    return x.split(split_size_or_sections, dim)


@_handles(torch.mean, torch.Tensor.mean)
def _mean(x: QTensor, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> QTensor:
    """Mean over spatial dims of a 3-D to 5-D quantized activation ([N, C, *spatial]): the global
    average pooling of those dims (exact integer sum, one rounding), keeping the input's qparams."""
    x._need_per_tensor("mean")
    if dtype is not None:
        raise TypeError("mean(dtype=...) is not supported on a QTensor; call .dequantize() first")
    nd = x.dim()
    dims = sorted({d % nd for d in ((dim,) if isinstance(dim, int) else tuple(dim or range(nd)))})
    if nd not in (3, 4, 5) or not dims or dims != list(range(dims[0], nd)) or dims[0] < 2:
        # other dims (attention weights averaged over heads): torch's rule — the float mean of the
        # dequantized values, quantized back onto the input's qparams
        mean = torch.mean(x.dequantize(), dim=dims, keepdim=keepdim)
        return quantize_per_tensor(mean, x.q_scale(), x.q_zero_point(), x.dtype)
    spatial = nd - 2
    keep = dims[0] - 2  # leading spatial dims not averaged
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[spatial]
    out_size = [x.shape[2 + i] for i in range(keep)] + [1] * (spatial - keep)
    y = _HANDLED[pool](x, out_size if spatial > 1 else out_size[0])
    return y if keepdim else y.reshape(*y.shape[: nd - len(dims)])


def _fixed_qparams_table(
    x: QTensor, what: str, fn: Callable[[torch.Tensor], torch.Tensor], scale: float, zp: int
) -> QTensor:
    """``fn`` (sigmoid, hardsigmoid, tanh) on a quint8 QTensor through a 256-entry lookup table,
    onto torch's fixed output qparams (``scale``, ``zp``, quint8), computed in float64 so the table
    is the same on every CPU."""
    x._need_per_tensor(what)
    if x.dtype != quint8:
        raise TypeError(f"{what} on a QTensor needs quint8 activations, got {x.dtype}; call .dequantize() first")
    from .nn.quantized._lut import apply_table

    out = apply_table(x, lambda t: fn(t.double()), scale, zp, 0, 255, quint8)
    if out is None:
        out = quantize_per_tensor(fn(x.dequantize().double()), scale, zp, quint8)
    return out


@_handles(torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid)
def _sigmoid(x: QTensor) -> QTensor:
    return _fixed_qparams_table(x, "sigmoid", torch.sigmoid, 1.0 / 256.0, 0)


@_handles(torch.softmax, torch.Tensor.softmax, F.softmax)
def _softmax(x: QTensor, dim: Optional[int] = None, _stacklevel: int = 3, dtype: Any = None) -> QTensor:
    """Softmax of a quint8 QTensor onto torch's fixed output qparams for [0, 1] (scale 1/256, zero
    point 0; what torch.ao's QAT / FX quantize softmax with), in Rust: dequantize a row, exp in one
    fixed order, quantize (torch.ao's eager mode has no quantized softmax module by default)."""
    x._need_per_tensor("softmax")
    if x.dtype != quint8:
        raise TypeError(f"softmax on a QTensor needs quint8 activations, got {x.dtype}; call .dequantize() first")
    if dtype is not None:
        raise TypeError("softmax(dtype=...) is not supported on a QTensor; call .dequantize() first")
    return softmax_onto(x, dim, 1.0 / 256.0, 0)


def softmax_onto(x: QTensor, dim: Optional[int], scale: float, zero_point: int) -> QTensor:
    """Softmax of a per-tensor quint8 QTensor along ``dim`` (torch's legacy default when None),
    quantized to (``scale``, ``zero_point``) — ``_core.softmax_u8`` on the dimension moved last."""
    if dim is None:
        dim = 0 if x.dim() in (0, 1, 3) else 1
    dim = dim % max(x.dim(), 1)
    moved = x.int_repr().movedim(dim, -1).contiguous()
    length = max(moved.shape[-1] if moved.dim() else 1, 1)
    out = _core.softmax_u8(moved.numpy(), length, x.q_scale(), x.q_zero_point(), float(scale), int(zero_point))
    return QTensor(torch.from_numpy(out).movedim(-1, dim), float(scale), int(zero_point), quint8)


@_handles(F.hardsigmoid)
def _hardsigmoid(x: QTensor, inplace: bool = False) -> QTensor:
    return _fixed_qparams_table(x, "hardsigmoid", F.hardsigmoid, 1.0 / 256.0, 0)


@_handles(torch.tanh, torch.Tensor.tanh, F.tanh)
def _tanh(x: QTensor) -> QTensor:
    return _fixed_qparams_table(x, "tanh", torch.tanh, 2.0 / 256.0, 128)


def _same_grid_table(x: QTensor, what: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> QTensor:
    """An elementwise ``fn`` onto the input's own grid (torch's rule for ``F.leaky_relu`` and
    ``F.threshold`` on quantized tensors): a lookup table in Rust for quint8, else the definition."""
    x._need_per_tensor(what)
    from .nn.quantized._lut import apply_table

    s, z, dt = x.q_scale(), x.q_zero_point(), x.dtype
    out = apply_table(x, fn, s, z, dt.qmin, dt.qmax, dt) if dt == quint8 else None
    return out if out is not None else quantize_per_tensor(fn(x.dequantize()), s, z, dt)


@_handles(F.leaky_relu)
def _leaky_relu(x: QTensor, negative_slope: float = 0.01, inplace: bool = False) -> QTensor:
    return _same_grid_table(x, "leaky_relu", lambda d: F.leaky_relu(d, negative_slope))


@_handles(F.threshold)
def _threshold(x: QTensor, threshold: float, value: float, inplace: bool = False) -> QTensor:
    """torch's rule: keep ``q`` where its dequantized value is above ``threshold``, else
    ``quantize(value)``; the input's qparams. The value is dequantized as torch's vectorised
    kernel does, ``fl(fma(q, s, fl(−zp·s)))`` (the product is exact in float64, so one rounding),
    which decides the elements lying exactly on the threshold the way torch does."""
    x._need_per_tensor("threshold")
    q_val = int(quantize_per_tensor(torch.tensor([value]), x.q_scale(), x.q_zero_point(), x.dtype).int_repr()[0])
    d = x.int_repr()
    s32 = torch.tensor(x.q_scale(), dtype=torch.float32)
    premul = float(-torch.tensor(float(x.q_zero_point()), dtype=torch.float32) * s32)
    dq = (d.to(torch.float64) * float(s32) + premul).to(torch.float32)
    keep = dq > torch.tensor(threshold, dtype=torch.float32)
    return x._with_data(torch.where(keep, d, torch.full_like(d, q_val)))


@_handles(F.interpolate)
def _interpolate(
    input: QTensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: Optional[bool] = None,
    recompute_scale_factor: Optional[bool] = None,
    antialias: bool = False,
) -> QTensor:
    """Resizing keeps the input's qparams (as torch's quantized upsampling): nearest modes pick
    integers; linear / bilinear / trilinear blend the integers in float and round to nearest
    even (the zero point cancels: the weights sum to 1)."""
    input._need_per_tensor("interpolate")
    kw = dict(size=size, scale_factor=scale_factor, recompute_scale_factor=recompute_scale_factor)
    d = input.int_repr()
    if mode in ("nearest", "nearest-exact"):
        return input._with_data(F.interpolate(d, mode=mode, **kw))
    if mode in ("linear", "bilinear", "trilinear") and not antialias:
        y = F.interpolate(d.to(torch.float32), mode=mode, align_corners=align_corners, **kw)
        dt = input.dtype
        out = torch.clamp(torch.round(y), dt.qmin, dt.qmax).to(d.dtype)
        return input._with_data(out)
    raise TypeError(
        f"interpolate(mode={mode!r}{', antialias=True' if antialias else ''}) is not supported on a QTensor; "
        "nearest, nearest-exact, linear, bilinear and trilinear are. Call .dequantize() first"
    )


@_handles(F.relu, torch.relu)
def _relu(x: QTensor, inplace: bool = False) -> QTensor:
    # max(q, zp): exact on the integers, qparams unchanged (docs/numerics.md, "Other quantized ops")
    x._need_per_tensor("relu")
    return x._with_data(torch.clamp(x.int_repr(), min=x.q_zero_point()))


_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _ints(v: Any, n: int) -> Optional[list[int]]:
    """``v`` (an int or n ints) as n non-negative ints, or None."""
    items = list(v) if isinstance(v, (tuple, list)) else [v] * n
    if len(items) != n or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        return None
    return items


def max_pool_geometry(
    nd: int, d: torch.Tensor, args: tuple, kwargs: dict
) -> Optional[tuple[list[int], list[int], list[int], list[int]]]:
    """(kernel, stride, padding, dilation) of ``max_pool{nd}d(d, *args, **kwargs)`` when the Rust
    kernel runs it (quint8 CPU data, no ceil_mode, padding ≤ kernel / 2), else None."""
    params = dict(zip(_MAX_POOL_ARGS, args))
    params.update(kwargs)
    if d.dtype != torch.uint8 or d.dim() != nd + 2 or params.get("ceil_mode") or d.device.type != "cpu":
        return None
    if d.numel() == 0 or params.get("return_indices"):  # torch decides (it rejects some empty inputs)
        return None
    k = _ints(params.get("kernel_size"), nd)
    stride = params.get("stride")
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else _ints(stride, nd)
    p, dil = _ints(params.get("padding", 0), nd), _ints(params.get("dilation", 1), nd)
    if k is None or s is None or p is None or dil is None:
        return None
    if 0 in k or 0 in s or 0 in dil or any(pp > kk // 2 for pp, kk in zip(p, k)):
        return None
    return k, s, p, dil


def _max_pool_u8(nd: int, d: torch.Tensor, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """Max pooling of quint8 data in one Rust pass over the channels-last bytes (the result stays
    channels-last); None where the float path decides (other dtypes, ceil_mode, arguments torch
    rejects — it raises its own errors)."""
    geom = max_pool_geometry(nd, d, args, kwargs)
    if geom is None:
        return None
    k, s, p, dil = geom
    lift = [1] * (3 - nd)
    cl = nhwc_numpy(d)
    x5 = cl.reshape(cl.shape[0], *lift, *cl.shape[1:])
    try:
        out = _core.max_pool_nhwc(x5, lift + k, lift + s, [0] * (3 - nd) + p, lift + dil, get_num_threads())
    except ValueError:  # an input smaller than the window: torch's own error from the float path
        return None
    y = from_nhwc(out.reshape(out.shape[0], *out.shape[4 - nd : 4], out.shape[4]))
    # the input's layout: channels innermost stays so (conv outputs), anything else is contiguous
    return y if cl.flags.c_contiguous else y.contiguous()


def _float_pool(fn: Callable, nd: int) -> Callable:
    def pooled(x: QTensor, *args: Any, **kwargs: Any) -> QTensor:
        if kwargs.get("return_indices") or (len(args) > 5 and args[5]):
            raise TypeError("max pooling with return_indices=True is not supported on QTensors")
        x._need_per_tensor(fn.__name__)
        d = x.int_repr()
        fast = _max_pool_u8(nd, d, args, kwargs)
        if fast is not None:
            return x._with_data(fast)
        # 8-bit integers are exact in float32 and int32 ones in float64, so the max is exact
        wide = torch.float64 if d.dtype == torch.int32 else torch.float32
        return x._with_data(fn(d.to(wide), *args, **kwargs).to(d.dtype))

    return pooled


_HANDLED[F.max_pool1d] = _float_pool(F.max_pool1d, 1)
_HANDLED[F.max_pool2d] = _float_pool(F.max_pool2d, 2)
_HANDLED[torch.max_pool1d] = _float_pool(torch.max_pool1d, 1)
_HANDLED[torch.max_pool2d] = _float_pool(torch.max_pool2d, 2)


@_handles(torch.Tensor.dequantize, torch.dequantize)
def _dequantize_fn(x: QTensor) -> torch.Tensor:
    return x.dequantize()


@_handles(torch.Tensor.size)
def _size(x: QTensor, dim: Optional[int] = None) -> Any:
    return x.size(dim)


@_handles(torch.numel)
def _numel(x: QTensor) -> int:
    return x.numel()


def _qrange(dtype: QDtype) -> tuple[int, int]:
    return dtype.qmin, dtype.qmax


def quantize_per_tensor(
    input: torch.Tensor, scale: Union[float, torch.Tensor], zero_point: Union[int, torch.Tensor], dtype: Any
) -> QTensor:
    """Quantizes a float tensor with one scale and zero point:
    ``clamp(rne(x · fl(1/fl(scale))) + zero_point)`` over the dtype's range; NaN → max. The zero point is
    added after rounding (torch 2.13 adds it before: 1 LSB apart at exact ties only; docs/numerics.md D3)."""
    return _quantize_per_tensor(input, scale, zero_point, dtype, channels_last=False)


def _quantize_per_tensor(
    input: torch.Tensor,
    scale: Union[float, torch.Tensor],
    zero_point: Union[int, torch.Tensor],
    dtype: Any,
    channels_last: bool,
) -> QTensor:
    """``quantize_per_tensor``; with ``channels_last`` a 4-D / 5-D input's result is stored
    channels-last (quantized and transposed in one pass)."""
    qd = to_qdtype(dtype)
    if qd.bits == 4:
        raise TypeError("quint4x2 is for embedding weights only; quantize_per_tensor supports quint8, qint8, qint32")
    s = check_scale(scale, "quantize_per_tensor: scale")
    z = check_zero_point(zero_point, qd, "quantize_per_tensor: zero_point")
    x = _float32_numpy(input, "quantize_per_tensor: input")
    lo, hi = _qrange(qd)
    if channels_last and x.ndim in (4, 5):
        data = _core.quantize_per_tensor(x, s, z, lo, hi, qd.name, True)
        return QTensor(from_nhwc(data), s, z, qd)
    data = _core.quantize_per_tensor(x, s, z, lo, hi, qd.name)
    return QTensor(torch.from_numpy(data), s, z, qd)


def quantize_per_channel(
    input: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int, dtype: Any
) -> QTensor:
    """Quantizes with one scale and zero point per slice along ``axis``."""
    qd = to_qdtype(dtype)
    if qd.bits == 4:
        raise TypeError("quint4x2 is for embedding weights only; quantize_per_channel supports quint8, qint8, qint32")
    x = _float32_numpy(input, "quantize_per_channel: input")
    axis = check_axis(axis, x.ndim, "quantize_per_channel: axis")
    s64, z64 = check_per_channel_qparams(
        scales, zero_points, x.shape[axis], qd, "quantize_per_channel: scales", "quantize_per_channel: zero_points"
    )
    lo, hi = _qrange(qd)
    data = _core.quantize_per_channel(
        x, s64.to(torch.float32).numpy(), z64.to(torch.int32).numpy(), axis, lo, hi, qd.name
    )
    return QTensor(torch.from_numpy(data), s64, z64, qd, axis=axis)


def dequantize(input: Union[QTensor, torch.Tensor]) -> torch.Tensor:
    """Float32 values of a QTensor (a float tensor is returned unchanged)."""
    if isinstance(input, QTensor):
        return input.dequantize()
    if isinstance(input, torch.Tensor) and input.is_floating_point():
        return input
    raise TypeError(f"dequantize expects a ferroquant QTensor, got {type(input).__name__}")


def _avg_pool(fn: Callable) -> Callable:
    """Average pooling on the integers: ``rne(mean(q − zp) + zp)`` — torch's rule for its
    (usual) NCHW tensors, zero point added before rounding (docs/numerics.md, "Other quantized ops"); padded taps count
    as the zero point. qparams unchanged. Sums of 8-bit values are exact in float32."""

    def pooled(x: QTensor, *args: Any, **kwargs: Any) -> QTensor:
        x._need_per_tensor(fn.__name__)
        d, z = x.int_repr(), x.q_zero_point()
        fast = _avg_pool_fast(fn, d, z, x.dtype, args, kwargs)
        if fast is not None:
            return x._with_data(fast)
        if d.dtype == torch.int32:
            # float32 is not exact for int32 values: sum and divide on int64 instead
            q = torch.clamp(_exact_avg_pool(fn, d.to(torch.int64) - z, z, args, kwargs), x.dtype.qmin, x.dtype.qmax)
            return x._with_data(q.to(d.dtype))
        mean = fn((d.to(torch.float32) - z), *args, **kwargs)
        q = torch.clamp(torch.round(mean + z), x.dtype.qmin, x.dtype.qmax)
        return x._with_data(q.to(d.dtype))

    return pooled


def _avg_pool_fast(
    fn: Callable, d: torch.Tensor, z: int, dtype: QDtype, args: tuple, kwargs: dict
) -> Optional[torch.Tensor]:
    """quint8 average pooling in Rust (batched CPU input, windows torch accepts), else None."""
    nd = _ADAPTIVE_POOL_DIMS.get(fn) or _AVG_POOL_DIMS.get(fn)
    if d.dtype != torch.uint8 or d.device.type != "cpu" or nd is None or d.dim() != nd + 2 or d.numel() == 0:
        return None
    if fn in _ADAPTIVE_POOL_DIMS:
        windows, divisor = _avg_pool_rs.adaptive_windows(nd, d.shape, args, kwargs), None
    else:
        found = _avg_pool_rs.avg_windows(nd, d.shape, args, kwargs)
        windows, divisor = (None, None) if found is None else found
    if windows is None:
        return None
    return _avg_pool_rs.avg_pool_u8(d, nd, windows, divisor, z, dtype.qmin, dtype.qmax)


_AVG_POOL_DIMS = {
    F.avg_pool1d: 1,
    torch.avg_pool1d: 1,
    F.avg_pool2d: 2,
    F.avg_pool3d: 3,
}
_ADAPTIVE_POOL_DIMS = {
    F.adaptive_avg_pool1d: 1,
    torch.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3,
}
_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _rne_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` rounded half to even, exactly, on int64 tensors (``den > 0``)."""
    q = torch.div(num, den, rounding_mode="floor")
    r2 = 2 * (num - q * den)
    return q + ((r2 > den) | ((r2 == den) & (q % 2 == 1))).to(q.dtype)


def _exact_avg_pool(fn: Callable, v: torch.Tensor, z: int, args: tuple, kwargs: dict) -> torch.Tensor:
    """``rne(mean(v) + z)`` over each pooling window of the int64 tensor ``v`` (the 8-bit rule,
    zero point added before rounding), exactly: window sums on int64 (torch's integer avg_pool
    with ``divisor_override=1``, or cumulative sums for the adaptive pools), then
    ``(sum + z·count) / count`` rounded half to even."""
    if fn in _ADAPTIVE_POOL_DIMS:
        nd = _ADAPTIVE_POOL_DIMS[fn]
        params = dict(zip(("output_size",), args))
        params.update(kwargs)
        sizes = params["output_size"]
        sizes = list(sizes) if isinstance(sizes, (tuple, list, torch.Size)) else [sizes] * nd
        counts = torch.ones((), dtype=torch.int64)
        for i in range(nd):
            dim = v.dim() - nd + i
            n = v.shape[dim]
            o = n if sizes[i] is None else int(sizes[i])
            idx = torch.arange(o)
            start, end = (idx * n) // o, ((idx + 1) * n + o - 1) // o  # torch's adaptive windows
            zero_shape = list(v.shape)
            zero_shape[dim] = 1
            cs = torch.cat([torch.zeros(zero_shape, dtype=torch.int64), v.cumsum(dim)], dim)
            v = cs.index_select(dim, end) - cs.index_select(dim, start)
            shape = [1] * nd
            shape[i] = o
            counts = counts * (end - start).reshape(shape)
        return _rne_div(v + z * counts, counts)
    nd = _AVG_POOL_DIMS[fn]
    params = dict(zip(_AVG_POOL_ARGS, args))
    params.update(kwargs)
    divisor = params.pop("divisor_override", None)
    if nd == 1:  # through the 2-d pool (integer avg_pool1d has no divisor_override)

        def lift(a: Any) -> Any:
            return None if a is None else (1, a[0] if isinstance(a, (tuple, list)) else a)

        for key in ("kernel_size", "stride", "padding"):
            if key in params:
                params[key] = lift(params[key]) if key != "padding" else (0, lift(params[key])[1])
        pool, v, squeeze = F.avg_pool2d, v.unsqueeze(-2), True
    else:
        pool, squeeze = (F.avg_pool2d if nd == 2 else F.avg_pool3d), False
    sums = pool(v, **params, divisor_override=1)
    if divisor is not None:
        den = torch.tensor(int(divisor), dtype=torch.int64)
        if int(divisor) < 0:
            sums, den = -sums, -den
    else:
        # torch's divisor per window (padding counted or not, windows clipped by ceil_mode):
        # real taps (integer sum of ones) over the float mean of ones is the divisor, exactly
        ones = torch.ones((1, 1, *v.shape[v.dim() - (3 if nd == 3 else 2) :]))
        taps = pool(ones.to(torch.int64), **params, divisor_override=1)
        den = torch.round(taps / pool(ones.to(torch.float64), **params)).to(torch.int64)
        den = den.reshape(den.shape[2:])
    out = _rne_div(sums + z * den, den)
    return out.squeeze(-2) if squeeze else out


for _f in (
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.avg_pool1d,
    torch.adaptive_avg_pool1d,
):
    _HANDLED[_f] = _avg_pool(_f)
_HANDLED[F.max_pool3d] = _float_pool(F.max_pool3d, 3)


@_handles(F.dropout, torch.dropout)
def _dropout(x: QTensor, p: float = 0.5, training: bool = False, inplace: bool = False) -> QTensor:
    if training:
        raise TypeError("dropout in training mode is not supported on QTensors; call model.eval() first")
    return x


@_handles(F.relu6)
def _relu6(x: QTensor, inplace: bool = False) -> QTensor:
    x._need_per_tensor("relu6")
    q6 = quantize_per_tensor(torch.tensor([6.0]), x.q_scale(), x.q_zero_point(), x.dtype).int_repr()[0].item()
    return x._with_data(torch.clamp(x.int_repr(), min=x.q_zero_point(), max=q6))


@_handles(F.hardtanh)
def _hardtanh(x: QTensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> QTensor:
    x._need_per_tensor("hardtanh")
    bounds = quantize_per_tensor(torch.tensor([min_val, max_val]), x.q_scale(), x.q_zero_point(), x.dtype)
    lo, hi = bounds.int_repr().tolist()
    return x._with_data(torch.clamp(x.int_repr(), min=lo, max=hi))
