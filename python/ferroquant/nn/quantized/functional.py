"""Functional quantized ops (``torch.ao.nn.quantized.functional``): quantized tensors in, quantized
tensors out, with torch's signatures. Weighted ops take an int8 ``QTensor`` weight (per tensor or
per output channel) and output qparams; the others keep their input's qparams, or take fixed
ones (hardsigmoid), or their own (hardswish, elu, celu, leaky_relu with ``scale``). All run on
ferroquant's kernels (GEMM and convolution, lookup tables, exact integer pooling)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..._dtypes import qint8, quint8, to_qdtype
from ...qtensor import QTensor, quantize_per_tensor
from ._lut import apply_table

__all__ = [
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "conv1d",
    "conv2d",
    "conv3d",
    "interpolate",
    "linear",
    "max_pool1d",
    "max_pool2d",
    "celu",
    "leaky_relu",
    "hardtanh",
    "hardswish",
    "threshold",
    "elu",
    "hardsigmoid",
    "clamp",
    "upsample",
    "upsample_bilinear",
    "upsample_nearest",
]

_IntOrTuple = Union[int, Sequence[int]]


def _q(x: Any, fn: str) -> QTensor:
    if not isinstance(x, QTensor):
        raise TypeError(
            f"ferroquant.nn.quantized.functional.{fn} expects a quantized input (a QTensor), got "
            f"{getattr(x, 'dtype', type(x).__name__)}; quantize it first (ferroquant.quantize_per_tensor or a "
            "QuantStub)"
        )
    return x


def _weight(w: Any, fn: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(w, QTensor) or w.dtype != qint8:
        raise TypeError(
            f"ferroquant.nn.quantized.functional.{fn}: weight must be a qint8 QTensor (ferroquant.quantize_per_tensor "
            f"/ quantize_per_channel(..., dtype=ferroquant.qint8)), got {getattr(w, 'dtype', type(w).__name__)}"
        )
    if w.is_per_channel:
        if w.q_per_channel_axis() != 0:
            raise ValueError(f"ferroquant.nn.quantized.functional.{fn}: per-channel weights must use axis 0")
        return w.int_repr(), w.q_per_channel_scales().to(torch.float32), w.q_per_channel_zero_points()
    return w.int_repr(), torch.tensor([w.q_scale()], dtype=torch.float32), torch.tensor([w.q_zero_point()])


def _table(x: QTensor, f: Any, scale: float, zero_point: int, dtype: Any = quint8) -> QTensor:
    """``f`` of the dequantized input, quantized to (scale, zero_point): one table lookup per
    element for quint8 inputs, else the float definition."""
    qd = to_qdtype(dtype)
    out = apply_table(x, f, float(scale), int(zero_point), qd.qmin, qd.qmax, qd)
    return out if out is not None else quantize_per_tensor(f(x.dequantize()), float(scale), int(zero_point), qd)


def linear(
    input: QTensor,
    weight: QTensor,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    zero_point: Optional[int] = None,
) -> QTensor:
    """``y = x·Wᵀ + b`` on quint8 ``input`` and qint8 ``weight``, quantized to (``scale``,
    ``zero_point``) — the input's when not given, as torch."""
    x = _q(input, "linear")
    if x.dtype != quint8 or x.is_per_channel:
        raise TypeError("ferroquant.nn.quantized.functional.linear expects a per-tensor quint8 input")
    w, ws, wz = _weight(weight, "linear")
    scale = x.q_scale() if scale is None else float(scale)
    zero_point = x.q_zero_point() if zero_point is None else int(zero_point)
    data = torch.ops.ferroquant.linear_static(
        x.int_repr(), x.q_scale(), x.q_zero_point(), w, ws, wz, bias, scale, zero_point, 0, 255, False, "quint8"
    )
    return QTensor(data, scale, zero_point, quint8)


def _tuple(v: _IntOrTuple, n: int, name: str) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise ValueError(f"{name} must be an int or {n} ints, got {v}")
    return [int(i) for i in v]


def _conv(
    fn: str,
    nd: int,
    input: QTensor,
    weight: QTensor,
    bias: Optional[torch.Tensor],
    stride: _IntOrTuple,
    padding: _IntOrTuple,
    dilation: _IntOrTuple,
    groups: int,
    padding_mode: str,
    scale: float,
    zero_point: int,
    dtype: Any,
) -> QTensor:
    if padding_mode != "zeros":
        raise NotImplementedError(f"ferroquant.nn.quantized.functional.{fn}: only padding_mode='zeros' is supported")
    x = _q(input, fn)
    if x.dtype != quint8 or x.is_per_channel:
        raise TypeError(f"ferroquant.nn.quantized.functional.{fn} expects a per-tensor quint8 input")
    if x.dim() != nd + 2:
        raise ValueError(f"ferroquant.nn.quantized.functional.{fn} expects a {nd + 2}-D input, got {x.dim()}-D")
    out_dtype = to_qdtype(dtype)
    w, ws, wz = _weight(weight, fn)
    pad = _tuple(padding, nd, "padding")
    data = torch.ops.ferroquant.conv_static(
        x.int_repr(),
        x.q_scale(),
        x.q_zero_point(),
        w,
        ws,
        wz,
        bias,
        _tuple(stride, nd, "stride"),
        [p for p in pad for _ in (0, 1)],
        _tuple(dilation, nd, "dilation"),
        int(groups),
        float(scale),
        int(zero_point),
        out_dtype.qmin,
        out_dtype.qmax,
        False,
        out_dtype.name,
    )
    return QTensor(data, float(scale), int(zero_point), out_dtype)


def conv1d(
    input: QTensor,
    weight: QTensor,
    bias: Optional[torch.Tensor],
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    scale: float = 1.0,
    zero_point: int = 0,
    dtype: Any = quint8,
) -> QTensor:
    """1-D convolution of a quint8 ``[N, C, L]`` input with a qint8 weight, output (scale, zero_point)."""
    return _conv(
        "conv1d", 1, input, weight, bias, stride, padding, dilation, groups, padding_mode, scale, zero_point, dtype
    )


def conv2d(
    input: QTensor,
    weight: QTensor,
    bias: Optional[torch.Tensor],
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    scale: float = 1.0,
    zero_point: int = 0,
    dtype: Any = quint8,
) -> QTensor:
    """2-D convolution of a quint8 ``[N, C, H, W]`` input with a qint8 weight, output (scale, zero_point)."""
    return _conv(
        "conv2d", 2, input, weight, bias, stride, padding, dilation, groups, padding_mode, scale, zero_point, dtype
    )


def conv3d(
    input: QTensor,
    weight: QTensor,
    bias: Optional[torch.Tensor],
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    scale: float = 1.0,
    zero_point: int = 0,
    dtype: Any = quint8,
) -> QTensor:
    """3-D convolution of a quint8 ``[N, C, D, H, W]`` input with a qint8 weight, output (scale, zero_point)."""
    return _conv(
        "conv3d", 3, input, weight, bias, stride, padding, dilation, groups, padding_mode, scale, zero_point, dtype
    )


def max_pool1d(
    input: QTensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> QTensor:
    if return_indices:
        raise NotImplementedError("return_indices=True is not supported on quantized inputs (torch.ao neither)")
    return F.max_pool1d(_q(input, "max_pool1d"), kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d(
    input: QTensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> QTensor:
    if return_indices:
        raise NotImplementedError("return_indices=True is not supported on quantized inputs (torch.ao neither)")
    return F.max_pool2d(_q(input, "max_pool2d"), kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool2d(
    input: QTensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> QTensor:
    return F.avg_pool2d(
        _q(input, "avg_pool2d"), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def avg_pool3d(
    input: QTensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> QTensor:
    return F.avg_pool3d(
        _q(input, "avg_pool3d"), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def adaptive_avg_pool2d(input: QTensor, output_size: Any) -> QTensor:
    return F.adaptive_avg_pool2d(_q(input, "adaptive_avg_pool2d"), output_size)


def adaptive_avg_pool3d(input: QTensor, output_size: Any) -> QTensor:
    return F.adaptive_avg_pool3d(_q(input, "adaptive_avg_pool3d"), output_size)


def interpolate(
    input: QTensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: Optional[bool] = None,
) -> QTensor:
    """``F.interpolate`` on a quantized input (nearest, linear, bilinear, trilinear), keeping its qparams."""
    return F.interpolate(_q(input, "interpolate"), size, scale_factor, mode, align_corners)


def upsample(
    input: QTensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: Optional[bool] = None,
) -> QTensor:
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_bilinear(input: QTensor, size: Any = None, scale_factor: Any = None) -> QTensor:
    return interpolate(input, size, scale_factor, "bilinear", True)


def upsample_nearest(input: QTensor, size: Any = None, scale_factor: Any = None) -> QTensor:
    return interpolate(input, size, scale_factor, "nearest")


def hardtanh(input: QTensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> QTensor:
    return F.hardtanh(_q(input, "hardtanh"), min_val, max_val)


def clamp(input: QTensor, min_: float, max_: float) -> QTensor:
    """Values clamped to ``[min_, max_]``, keeping the input's qparams."""
    return F.hardtanh(_q(input, "clamp"), float(min_), float(max_))


def threshold(input: QTensor, threshold: float, value: float) -> QTensor:
    return F.threshold(_q(input, "threshold"), threshold, value)


def hardsigmoid(input: QTensor, inplace: bool = False) -> QTensor:
    """Onto torch's fixed output qparams (scale 1/256, zero point 0)."""
    return F.hardsigmoid(_q(input, "hardsigmoid"))


def hardswish(input: QTensor, scale: float, zero_point: int) -> QTensor:
    return _table(_q(input, "hardswish"), F.hardswish, scale, zero_point)


def elu(input: QTensor, scale: float, zero_point: int, alpha: float = 1.0) -> QTensor:
    return _table(_q(input, "elu"), lambda d: F.elu(d, alpha), scale, zero_point)


def celu(input: QTensor, scale: float, zero_point: int, alpha: float = 1.0) -> QTensor:
    return _table(_q(input, "celu"), lambda d: F.celu(d, alpha), scale, zero_point)


def leaky_relu(
    input: QTensor,
    negative_slope: float = 0.01,
    inplace: bool = False,
    scale: Optional[float] = None,
    zero_point: Optional[int] = None,
) -> QTensor:
    """With ``scale`` and ``zero_point``: onto those qparams; without: the input's (as torch)."""
    x = _q(input, "leaky_relu")
    if scale is None or zero_point is None:
        return F.leaky_relu(x, negative_slope)
    return _table(x, lambda d: F.leaky_relu(d, negative_slope), scale, zero_point, x.dtype)
