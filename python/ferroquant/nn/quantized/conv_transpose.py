"""Static quantized transposed convolutions (``torch.ao.nn.quantized.ConvTranspose1d/2d/3d``).

A transposed convolution is the convolution of the input spread out by the stride — zeros
between neighbours — with the kernel flipped and its in / out channels swapped, padded by
``dilation·(kernel − 1) − padding`` on each side (plus ``output_padding`` at the far end). That is
how it runs here: the input is spread into a channels-last buffer filled with its zero point (so
the inserted taps contribute exactly ``(zp − zp)·w = 0``) and the equivalent convolution runs on
the int8 conv kernels of every engine (stride 1, the same dilation and groups). The results are
the exact integer sums of the transposed convolution, requantized as every static conv (D2).

Weights keep torch's layout ``[in_channels, out_channels / groups, *kernel]``: per tensor as in
torch, or (beyond torch, whose ``ConvTranspose`` refuses per-channel observers) per output
channel along axis 1 — with ``groups > 1`` one scale per output channel position, shared by the
groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._core import PackedConv
from ..._ops import run_conv_static
from ...qtensor import QTensor
from ._static import require_qtensor, run_static_kernel
from .conv import _ConvNd, _geometry

__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


class _ConvTransposeNd(_ConvNd):
    _FLOAT = nn.ConvTranspose2d
    _W_AXIS = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        n, who = self._NDIM, type(self).__name__
        if isinstance(padding, str):
            raise ValueError(f"{who}: padding must be an int or a tuple of {n} ints, got {padding!r}")
        self.output_padding = _geometry(who, "output_padding", output_padding, n, 0)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(
                    f"{who}: output_padding {self.output_padding} must be smaller than either stride {self.stride} "
                    f"or dilation {self.dilation} (as in torch)"
                )

    def _init_weight_storage(self, weight_shape: tuple[int, ...], has_bias: bool) -> None:
        # torch's transposed layout: [in, out / groups, *kernel]
        conv_shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        super()._init_weight_storage(conv_shape, has_bias)

    def _bias_size(self) -> int:
        return self.out_channels

    def _pack(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> PackedConv:
        """The equivalent convolution's weights: per group, in / out swapped and the kernel
        flipped; per-channel qparams (one per position along axis 1) repeated for each group."""
        g, n = self.groups, self._NDIM
        cin_g, cout_g = self.in_channels // g, self.out_channels // g
        conv_w = (
            w.reshape(g, cin_g, cout_g, *self.kernel_size)
            .transpose(1, 2)
            .reshape(self.out_channels, cin_g, *self.kernel_size)
            .flip(list(range(2, 2 + n)))
        )
        if scale.numel() > 1:
            scale, zp = scale.repeat(g), zp.repeat(g)
        w5 = conv_w.reshape(self.out_channels, cin_g, *([1] * (3 - n)), *self.kernel_size)
        lift = [1] * (3 - n)
        try:
            return PackedConv(
                w5.contiguous().numpy(),
                scale.numpy(),
                zp.to(torch.int32).numpy(),
                lift + [1] * n,
                [0] * 3,
                lift + list(self.dilation),
                g,
            )
        except OverflowError:
            raise ValueError(
                f"{type(self).__name__}: convolution geometry overflows (kernel_size {self.kernel_size}, dilation "
                f"{self.dilation}); use a dilation that keeps the kernel span below 2^62"
            ) from None

    def _output_weight_scales(self) -> torch.Tensor:
        s = self._w_scale
        return s.repeat(self.groups) if s.numel() > 1 else s

    def _weight_from_packed(self, unpacked: torch.Tensor) -> torch.Tensor:
        """Back from the equivalent convolution's layout to ``[in, out / groups, *kernel]``."""
        g, n = self.groups, self._NDIM
        cin_g, cout_g = self.in_channels // g, self.out_channels // g
        return (
            unpacked.reshape(g, cout_g, cin_g, *self.kernel_size)
            .flip(list(range(3, 3 + n)))
            .transpose(1, 2)
            .reshape(self._weight_shape)
            .contiguous()
        )

    def _spread(self, q: Any) -> torch.Tensor:
        """The input spread by the stride into a zero-point-filled channels-last buffer, padded
        (or cropped, where ``padding`` exceeds the kernel's span) for the equivalent convolution:
        ``[N, C, *spatial]`` viewed over ``[N, *spatial, C]`` memory."""
        data = q.int_repr().movedim(1, -1)  # [N, *spatial, C]
        zp = q.q_zero_point()
        sizes, places, crops = [], [], []
        for length, k, s, d, p, op in zip(
            data.shape[1:-1], self.kernel_size, self.stride, self.dilation, self.padding, self.output_padding
        ):
            before, after = d * (k - 1) - p, d * (k - 1) - p + op
            spread = (length - 1) * s + 1 if length else 0
            size = spread + max(before, 0) + max(after, 0)
            sizes.append(size)
            places.append(slice(max(before, 0), max(before, 0) + spread, s))
            crops.append(slice(max(-before, 0), size - max(-after, 0)))
        buf = torch.full((data.shape[0], *sizes, data.shape[-1]), zp, dtype=torch.uint8)
        buf[(slice(None), *places, slice(None))] = data
        return buf[(slice(None), *crops, slice(None))].movedim(-1, 1)

    @torch.jit.unused
    def _forward_eager(self, x: Any) -> Any:
        q = require_qtensor(self, x)
        nd = self._NDIM
        if q.dim() != nd + 2 or q.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [N, {self.in_channels}, {'x'.join('*' * nd)}], "
                f"got {list(q.shape)}"
            )
        if q.int_repr().dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects quint8 activations, got {q.dtype}")
        spread = self._spread(q)
        if any(s < k_span for s, k_span in zip(spread.shape[2:], self._spans())):
            raise ValueError(f"{type(self).__name__}: input {list(q.shape)} gives an empty output")
        spread_q = QTensor._trusted(spread, q.q_scale(), q.q_zero_point(), q.dtype)
        return run_static_kernel(self, spread_q, run_conv_static, [(0, 0)] * nd)

    def _spans(self) -> list[int]:
        return [d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation)]

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}: TorchScript is not available for quantized transposed convolutions yet; run "
            "the model in eager mode"
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"{self._output_repr()}, padding={self.padding}, output_padding={self.output_padding}, "
            f"dilation={self.dilation}, groups={self.groups}"
        )

    @classmethod
    def _weight_qconfig(cls, qconfig: Any) -> Any:
        # a per-channel weight observer runs along axis 1 (the output channels of torch's layout)
        return _AlongAxis1(qconfig)

    @classmethod
    def _geometry_of(cls, conv: nn.Module) -> dict:
        return {**super()._geometry_of(conv), "output_padding": conv.output_padding}


class _AlongAxis1:
    """A qconfig whose weight observers, when per channel, observe axis 1 (the output channels of
    a transposed conv's weight)."""

    def __init__(self, qconfig: Any) -> None:
        self._qconfig = qconfig

    def weight(self) -> nn.Module:
        observer = self._qconfig.weight()
        # a fake-quant (QAT qconfig) and the observer inside it both carry the axis
        for part in (observer, getattr(observer, "activation_post_process", None)):
            if part is not None and hasattr(part, "ch_axis"):
                part.ch_axis = 1
        return observer


class ConvTranspose1d(_ConvTransposeNd):
    """Static quantized ConvTranspose1d (``torch.ao.nn.quantized.ConvTranspose1d``): quint8
    ``[N, C, L]`` × int8 weights ``[C, out / groups, k]`` (per tensor, or per output channel) →
    quint8 with the calibrated output qparams; stride, padding, output_padding, dilation, groups
    as ``nn.ConvTranspose1d``."""

    _NDIM = 1
    _FLOAT = nn.ConvTranspose1d


class ConvTranspose2d(_ConvTransposeNd):
    """Static quantized ConvTranspose2d (``torch.ao.nn.quantized.ConvTranspose2d``)."""

    _NDIM = 2
    _FLOAT = nn.ConvTranspose2d


class ConvTranspose3d(_ConvTransposeNd):
    """Static quantized ConvTranspose3d (``torch.ao.nn.quantized.ConvTranspose3d``)."""

    _NDIM = 3
    _FLOAT = nn.ConvTranspose3d
