"""Quantized activations (``torch.ao.nn.quantized.ReLU6``, ``Hardswish``); docs/numerics.md, "Other quantized ops"."""

from __future__ import annotations

import torch
from torch import nn

from ...qtensor import QTensor, quantize_per_tensor
from ._lut import apply_table
from ._script import (
    QArg,
    QTuple,
    script_dequantize,
    script_dtype_info,
    script_qtuple,
    script_requantize,
    script_unpack,
)
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["ReLU6", "Hardswish"]


def _hardswish(d: torch.Tensor) -> torch.Tensor:
    return d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0


class ReLU6(nn.Module):
    """``clamp(q, zp, q6)`` with ``q6 = quantize(6.0)``; output qparams = input qparams."""

    _fq_io = "QQ"  # TorchScript: quantized in, quantized out

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    def _forward_script(self, x: QTuple) -> QTuple:
        d, s, z = script_unpack(x, "QuantizedReLU6")
        name, lo, hi = script_dtype_info(d.dtype, "QuantizedReLU6")
        six = torch.ops.ferroquant.quantize_per_tensor(torch.tensor([6.0]), s, z, lo, hi, name)
        q6 = int(six[0].item())
        return torch.clamp(d, min=z, max=q6), x[1], x[2]

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
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

    _fq_io = "QQ"  # TorchScript: quantized in, quantized out

    def __init__(self, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self._init_output(scale, zero_point)

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    def _forward_script(self, x: QTuple) -> QTuple:
        script_unpack(x, "QuantizedHardswish")  # per-tensor check
        d = script_dequantize(x)
        h = d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0
        data = script_requantize(h, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype_name)
        return script_qtuple(data, self.scale, self.zero_point)

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        # quint8 in: a 256-entry table of this very definition, one lookup per element
        fused = apply_table(q, _hardswish, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype)
        if fused is not None:
            return fused
        out = quantize_per_tensor(_hardswish(q.dequantize()), self.scale, self.zero_point, self._out_dtype)
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
