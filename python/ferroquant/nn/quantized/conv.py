"""Static quantized convolutions (``torch.ao.nn.quantized.Conv1d/2d/3d``) and fused ReLU variants.

Activations stay channels-last inside QTensor (a 4-D QTensor's data is ``channels_last``, a
5-D one ``channels_last_3d``), so consecutive convs never transpose. Padding uses the input zero
point. ``padding`` may be an int, a tuple, ``"valid"`` or ``"same"``; ``padding_mode="zeros"``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from ..._core import PackedConv
from ..._ops import run_conv_static
from ._script import QArg, QTuple, script_qtuple, script_unpack
from ._static import OutputQParams, observed_float_module, require_qtensor, run_static_kernel
from ._weights import WeightedQuantModule, convert_weight_bias

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d"]


_USIZE_MAX = 2**64 - 1  # the kernels take geometry as 64-bit unsigned ints


def _geometry(who: str, name: str, v: Any, n: int, minimum: int) -> tuple[int, ...]:
    """``v`` (an int or ``n`` ints) as ``n`` Python ints in ``[minimum, 2**64 - 1]``, or a
    TypeError / ValueError naming the argument."""
    items = list(v) if isinstance(v, (tuple, list)) else [v] * n
    if len(items) != n:
        raise ValueError(f"{who}: {name} must be an int or a tuple of {n} ints, got {v!r}")
    out = []
    for e in items:
        try:
            i = operator.index(e)
        except TypeError:
            raise TypeError(f"{who}: {name} must hold ints, got {type(e).__name__} ({e!r})") from None
        if not minimum <= i <= _USIZE_MAX:
            raise ValueError(f"{who}: {name} must hold ints in [{minimum}, 2**64 - 1], got {v!r}")
        out.append(i)
    return tuple(out)


class _ConvNd(OutputQParams, WeightedQuantModule):
    _NDIM = 2
    _FUSED_RELU = False
    _FLOAT = nn.Conv2d
    _version = 1
    __constants__ = ["_NDIM", "_FUSED_RELU"]  # read by the scripted forward
    _fq_io = "QQ"  # TorchScript: quantized in, quantized out

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        n = self._NDIM
        who = type(self).__name__
        if padding_mode != "zeros":
            raise NotImplementedError(f"quantized conv supports padding_mode='zeros', got {padding_mode!r}")
        (in_channels,) = _geometry(who, "in_channels", in_channels, 1, 1)
        (out_channels,) = _geometry(who, "out_channels", out_channels, 1, 1)
        (groups,) = _geometry(who, "groups", groups, 1, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _geometry(who, "kernel_size", kernel_size, n, 1)
        self.stride = _geometry(who, "stride", stride, n, 1)
        self.dilation = _geometry(who, "dilation", dilation, n, 1)
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        self.padding: Any = padding if isinstance(padding, str) else _geometry(who, "padding", padding, n, 0)
        if padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError("padding='same' needs stride 1 (as in torch)")
        self.padding_mode = padding_mode
        self._init_output()
        self._init_weight_storage((out_channels, in_channels // groups, *self.kernel_size), bias)
        self._rebuild(release=True)

    def _pads(self) -> list[tuple[int, int]]:
        """(before, after) padding per spatial dim."""
        if self.padding == "valid":
            return [(0, 0)] * self._NDIM
        if self.padding == "same":
            out = []
            for k, d in zip(self.kernel_size, self.dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return out
        return [(p, p) for p in self.padding]

    def _pack(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> PackedConv:
        w5 = w.reshape(self.out_channels, self.in_channels // self.groups, *([1] * (3 - self._NDIM)), *self.kernel_size)
        pads = [p for p, _ in self._pads()]
        lift = lambda t: [1] * (3 - self._NDIM) + list(t)  # noqa: E731
        try:
            return PackedConv(
                w5.contiguous().numpy(),
                scale.numpy(),
                zp.to(torch.int32).numpy(),
                lift(self.stride),
                [0] * (3 - self._NDIM) + pads,
                lift(self.dilation),
                self.groups,
            )
        except OverflowError:  # padding='same' with a huge dilation: beyond the kernels' 64-bit sizes
            raise ValueError(
                f"{type(self).__name__}: convolution geometry overflows: padding {pads} (from padding="
                f"{self.padding!r}), kernel_size {self.kernel_size}, dilation {self.dilation}; use padding and "
                "dilation that keep the padded input and the kernel span below 2^62"
            ) from None

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        nd = self._NDIM
        if q.dim() != nd + 2 or q.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [N, {self.in_channels}, {'x'.join('*' * nd)}], "
                f"got {list(q.shape)}"
            )
        d = q.int_repr()
        if d.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects quint8 activations, got {q.dtype}")
        return run_static_kernel(self, q, run_conv_static, self._pads())

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this before compiling: the geometry as int lists for the
        # scripted forward (padding as (before, after) pairs, whatever form it was given in)
        super().__prepare_scriptable__()
        self._script_stride = [int(v) for v in self.stride]
        self._script_dilation = [int(v) for v in self.dilation]
        self._script_padding = [int(v) for pair in self._pads() for v in pair]
        self._script_name = type(self).__name__  # for error messages
        return self

    def _forward_script(self, x: QTuple) -> QTuple:
        # TorchScript: the same kernel through torch.ops.ferroquant.conv_static (bit-identical)
        name = "Quantized" + self._script_name
        d, s, z = script_unpack(x, name)
        if d.dim() != self._NDIM + 2 or d.size(1) != self.in_channels:
            raise ValueError(
                f"{name} expects input [N, {self.in_channels}, <{self._NDIM} spatial dims>], got {d.shape}"
            )
        if d.dtype != torch.uint8:
            raise TypeError(name + " expects quint8 activations (torch.uint8 data)")
        y = torch.ops.ferroquant.conv_static(
            d,
            s,
            z,
            self._w,
            self._w_scale,
            self._w_zp,
            self._bias,
            self._script_stride,
            self._script_padding,
            self._script_dilation,
            self.groups,
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self._FUSED_RELU,
            self._out_dtype_name,
        )
        return script_qtuple(y, self.scale, self.zero_point)

    def _get_name(self) -> str:
        return f"Quantized{type(self).__name__}"

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"{self._output_repr()}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
        )

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> _ConvNd:
        """From an observed float conv (or fused ConvReLU) after calibration."""
        conv, qconfig, (scale, zp, qmin, qmax, dtype) = observed_float_module(mod, cls._FLOAT, cls.__name__)
        qweight, bias = convert_weight_bias(mod, conv, cls._weight_qconfig(qconfig), type(mod).__name__)
        q = cls(**cls._geometry_of(conv), bias=bias is not None)
        q._init_output(scale, zp, qmin, qmax, dtype)
        q.set_weight_bias(qweight, bias)
        return q

    @classmethod
    def _weight_qconfig(cls, qconfig: Any) -> Any:
        """The qconfig whose weight observer quantizes the weights (transposed convs: along axis 1)."""
        return qconfig

    @classmethod
    def _geometry_of(cls, conv: nn.Module) -> dict:
        """The float module's constructor arguments this class takes (bias aside)."""
        names = (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "padding_mode",
        )
        return {n: getattr(conv, n) for n in names}


class Conv1d(_ConvNd):
    """Static quantized Conv1d (``torch.ao.nn.quantized.Conv1d``): a quint8 QTensor
    [N, C, L] (stored channels-last) × int8 weights (per tensor or per output channel) →
    quint8 QTensor with the calibrated output scale and zero point; bias kept in float. Stride,
    padding (numbers or ``"same"``), dilation and groups (depthwise included) as ``nn.Conv1d``;
    ``padding_mode="zeros"`` pads with the input's zero point. Built by ``convert`` (or
    ``Conv1d.from_float``) from a calibrated float module.
    """

    _NDIM = 1
    _FLOAT = nn.Conv1d


class Conv2d(_ConvNd):
    """Static quantized Conv2d (``torch.ao.nn.quantized.Conv2d``): a quint8 QTensor
    [N, C, H, W] (stored channels-last) × int8 weights (per tensor or per output channel) →
    quint8 QTensor with the calibrated output scale and zero point; bias kept in float. Stride,
    padding (numbers or ``"same"``), dilation and groups (depthwise included) as ``nn.Conv2d``;
    ``padding_mode="zeros"`` pads with the input's zero point. Built by ``convert`` (or
    ``Conv2d.from_float``) from a calibrated float module.
    """

    _NDIM = 2
    _FLOAT = nn.Conv2d


class Conv3d(_ConvNd):
    """Static quantized Conv3d (``torch.ao.nn.quantized.Conv3d``): a quint8 QTensor
    [N, C, D, H, W] (stored channels-last) × int8 weights (per tensor or per output channel) →
    quint8 QTensor with the calibrated output scale and zero point; bias kept in float. Stride,
    padding (numbers or ``"same"``), dilation and groups (depthwise included) as ``nn.Conv3d``;
    ``padding_mode="zeros"`` pads with the input's zero point. Built by ``convert`` (or
    ``Conv3d.from_float``) from a calibrated float module.
    """

    _NDIM = 3
    _FLOAT = nn.Conv3d


class ConvReLU1d(Conv1d):
    """Conv1d with a fused ReLU (outputs clamp at the output zero point)."""

    _FUSED_RELU = True


class ConvReLU2d(Conv2d):
    """Conv2d with a fused ReLU (outputs clamp at the output zero point)."""

    _FUSED_RELU = True


class ConvReLU3d(Conv3d):
    """Conv3d with a fused ReLU (outputs clamp at the output zero point)."""

    _FUSED_RELU = True
