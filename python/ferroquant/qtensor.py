"""QTensor: a quantized tensor made of a plain torch integer tensor plus its qparams.

No torch quantized dtype is involved: ``int_repr()`` is a ``torch.uint8`` / ``torch.int8`` /
``torch.int32`` tensor and the qparams live beside it. Shape operations (view, reshape, flatten,
permute, transpose, squeeze, unsqueeze, narrow, slicing, ``torch.cat`` with equal qparams) and a
few value ops that are exact on the integers (``relu``, ``max_pool*``) work through
``__torch_function__``; any other torch op raises a ``TypeError`` that names it and says how to
get a float tensor back.

For TorchScript, a quantized tensor travels as the triple ``(int_repr, scale, zero_point)``
(see :meth:`QTensor.to_tuple`) and the ops registered as ``torch.ops.ferroquant.*`` take that.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

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


def _float32_numpy(x: torch.Tensor, what: str) -> np.ndarray:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating point tensor, got {x.dtype}")
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return _cpu_numpy(x, what)


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
                raise ValueError("a per-tensor QTensor needs scale and zero_point")
            self._scale = float(scale)
            self._zero_point = int(zero_point)
            self._scales = None
            self._zero_points = None
            self._axis = None
            self._qscheme: QScheme = to_qscheme(qscheme) if qscheme is not None else per_tensor_affine
        else:
            if not isinstance(scale, torch.Tensor) or not isinstance(zero_point, torch.Tensor):
                raise TypeError("a per-channel QTensor needs scale and zero_point tensors")
            if not 0 <= axis < data.dim() or scale.numel() != data.shape[axis] or zero_point.numel() != scale.numel():
                raise ValueError(
                    f"per-channel qparams: axis {axis} of shape {tuple(data.shape)} needs "
                    f"{data.shape[axis] if 0 <= axis < data.dim() else '?'} scales and zero points, "
                    f"got {scale.numel()} and {zero_point.numel()}"
                )
            self._scale = None
            self._zero_point = None
            self._scales = scale.detach().to(torch.float64).reshape(-1)
            self._zero_points = zero_point.detach().to(torch.int64).reshape(-1)
            self._axis = int(axis)
            self._qscheme = to_qscheme(qscheme) if qscheme is not None else per_channel_affine

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
        self._need_per_channel("q_per_channel_scales")
        assert self._scales is not None
        return self._scales

    def q_per_channel_zero_points(self) -> torch.Tensor:
        self._need_per_channel("q_per_channel_zero_points")
        assert self._zero_points is not None
        return self._zero_points

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
        q = _cpu_numpy(self._data, "quantized data")
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
        return self._data, self._scales, self._zero_points

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
    return x.permute(*dims)


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


@_handles(F.relu, torch.relu)
def _relu(x: QTensor, inplace: bool = False) -> QTensor:
    # max(q, zp): exact on the integers, qparams unchanged (NUMERICS §3.5)
    x._need_per_tensor("relu")
    return x._with_data(torch.clamp(x.int_repr(), min=x.q_zero_point()))


def _float_pool(fn: Callable) -> Callable:
    def pooled(x: QTensor, *args: Any, **kwargs: Any) -> QTensor:
        if kwargs.get("return_indices"):
            raise TypeError("max pooling with return_indices=True is not supported on QTensors")
        x._need_per_tensor(fn.__name__)
        d = x.int_repr()
        # integers up to 2^24 are exact in float32, so the max is exact
        return x._with_data(fn(d.to(torch.float32), *args, **kwargs).to(d.dtype))

    return pooled


_HANDLED[F.max_pool1d] = _float_pool(F.max_pool1d)
_HANDLED[F.max_pool2d] = _float_pool(F.max_pool2d)
_HANDLED[torch.max_pool1d] = _float_pool(torch.max_pool1d)
_HANDLED[torch.max_pool2d] = _float_pool(torch.max_pool2d)


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
    """Quantizes a float tensor with one scale and zero point (decision D3):
    ``clamp(rne(x · fl(1/fl(scale))) + zero_point)`` over the dtype's range; NaN → max."""
    qd = to_qdtype(dtype)
    if qd.bits == 4:
        raise TypeError("quint4x2 is for embedding weights only; quantize_per_tensor supports quint8, qint8, qint32")
    x = _float32_numpy(input, "input")
    s, z = float(scale), int(zero_point)
    lo, hi = _qrange(qd)
    data = _core.quantize_per_tensor(x, s, z, lo, hi, qd.name)
    return QTensor(torch.from_numpy(data), s, z, qd)


def quantize_per_channel(
    input: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int, dtype: Any
) -> QTensor:
    """Quantizes with one scale and zero point per slice along ``axis``."""
    qd = to_qdtype(dtype)
    x = _float32_numpy(input, "input")
    if not isinstance(scales, torch.Tensor) or not isinstance(zero_points, torch.Tensor):
        raise TypeError("scales and zero_points must be tensors")
    if axis < 0:
        axis += input.dim()
    lo, hi = _qrange(qd)
    s32 = scales.detach().to(torch.float32).reshape(-1).contiguous().numpy()
    z32 = zero_points.detach().to(torch.int32).reshape(-1).contiguous().numpy()
    data = _core.quantize_per_channel(x, s32, z32, axis, lo, hi, qd.name)
    return QTensor(torch.from_numpy(data), scales, zero_points, qd, axis=axis)


def dequantize(input: Union[QTensor, torch.Tensor]) -> torch.Tensor:
    """Float32 values of a QTensor (a float tensor is returned unchanged)."""
    if isinstance(input, QTensor):
        return input.dequantize()
    if isinstance(input, torch.Tensor) and input.is_floating_point():
        return input
    raise TypeError(f"dequantize expects a ferroquant QTensor, got {type(input).__name__}")


def _avg_pool(fn: Callable) -> Callable:
    """Average pooling on the integers: ``rne(mean(q − zp) + zp)`` — torch's rule for its
    (usual) NCHW tensors, zero point added before rounding (NUMERICS §3.5); padded taps count
    as the zero point. qparams unchanged. Sums of 8-bit values are exact in float32."""

    def pooled(x: QTensor, *args: Any, **kwargs: Any) -> QTensor:
        x._need_per_tensor(fn.__name__)
        d, z = x.int_repr(), x.q_zero_point()
        mean = fn((d.to(torch.float32) - z), *args, **kwargs)
        q = torch.clamp(torch.round(mean + z), x.dtype.qmin, x.dtype.qmax)
        return x._with_data(q.to(d.dtype))

    return pooled


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
_HANDLED[F.max_pool3d] = _float_pool(F.max_pool3d)


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
