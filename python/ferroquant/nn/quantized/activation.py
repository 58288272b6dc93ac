"""Quantized activations (``torch.ao.nn.quantized.ReLU6``, ``Hardswish``), NUMERICS §3.5–3.6."""

from __future__ import annotations

import torch
from torch import nn

from ...qtensor import QTensor, quantize_per_tensor
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["ReLU6", "Hardswish"]


class ReLU6(nn.Module):
    """``clamp(q, zp, q6)`` with ``q6 = quantize(6.0)``; output qparams = input qparams."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: QTensor) -> QTensor:
        q = require_qtensor(self, x)
        s, z = q.q_scale(), q.q_zero_point()
        q6 = quantize_per_tensor(torch.tensor([6.0]), s, z, q.dtype).int_repr()[0].item()
        return QTensor(torch.clamp(q.int_repr(), min=z, max=q6), s, z, q.dtype)

    def _get_name(self) -> str:
        return "QuantizedReLU6"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> ReLU6:
        return cls(getattr(mod, "inplace", False))


class Hardswish(OutputQParams, nn.Module):
    """``h = d·clamp(d+3, 0, 6)/6`` on the dequantized input, quantized to the module's own
    output qparams (it has an observer; not fixed-qparams)."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self._init_output(scale, zero_point)

    def forward(self, x: QTensor) -> QTensor:
        q = require_qtensor(self, x)
        d = q.dequantize()
        h = d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0
        out = quantize_per_tensor(h, self.scale, self.zero_point, self._out_dtype)
        data = torch.clamp(out.int_repr(), self.quant_min, self.quant_max)
        return QTensor(data, self.scale, self.zero_point, self._out_dtype)

    def _get_name(self) -> str:
        return "QuantizedHardswish"

    def extra_repr(self) -> str:
        return self._output_repr()

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Hardswish:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "Hardswish")
        q = cls(scale, zp)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q
