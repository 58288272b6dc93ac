"""Quantized activations (``torch.ao.nn.quantized.ReLU6``, ``Hardswish``, ``ELU``, ``LeakyReLU``);
docs/numerics.md, "Other quantized ops"."""

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

__all__ = ["ReLU6", "Hardswish", "ELU", "LeakyReLU"]


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


class _TableActivation(OutputQParams, nn.Module):
    """An elementwise function ``f`` of the dequantized input, quantized to the module's own output
    qparams (it has an observer): on quint8 inputs one lookup per element in a 256-entry table of
    this very definition (Rust), else the float definition."""

    _fq_io = "QQ"  # TorchScript: quantized in, quantized out
    _NAME = "QuantizedActivation"
    __constants__ = ["_NAME"]  # read by the scripted forward

    def _f(self, d: torch.Tensor) -> torch.Tensor:  # the float definition (eager and TorchScript)
        raise NotImplementedError

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    def _forward_script(self, x: QTuple) -> QTuple:
        script_unpack(x, self._NAME)  # per-tensor check
        h = self._f(script_dequantize(x))
        data = script_requantize(h, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype_name)
        return script_qtuple(data, self.scale, self.zero_point)

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        fused = apply_table(q, self._f, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype)
        if fused is not None:
            return fused
        out = quantize_per_tensor(self._f(q.dequantize()), self.scale, self.zero_point, self._out_dtype)
        data = torch.clamp(out.int_repr(), self.quant_min, self.quant_max)
        return QTensor(data, self.scale, self.zero_point, self._out_dtype)

    def _get_name(self) -> str:
        return self._NAME

    def extra_repr(self) -> str:
        return self._output_repr()

    @classmethod
    def _output_from(cls, mod: nn.Module, q: _TableActivation) -> _TableActivation:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), cls.__name__)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class ELU(_TableActivation):
    """Quantized ELU (``torch.ao.nn.quantized.ELU``): ``x`` for ``x > 0``, ``alpha·(eˣ − 1)``
    below, on the dequantized input, requantized to the module's output qparams."""

    _NAME = "QuantizedELU"

    def __init__(self, scale: float = 1.0, zero_point: int = 0, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self._init_output(scale, zero_point)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.elu(d, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, {self._output_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> ELU:
        return cls._output_from(mod, cls(alpha=mod.alpha))  # type: ignore[return-value]


class LeakyReLU(_TableActivation):
    """Quantized LeakyReLU (``torch.ao.nn.quantized.LeakyReLU``): ``x`` for ``x ≥ 0``,
    ``negative_slope·x`` below, requantized to the module's output qparams."""

    _NAME = "QuantizedLeakyReLU"

    def __init__(
        self, scale: float = 1.0, zero_point: int = 0, negative_slope: float = 1e-2, inplace: bool = False
    ) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = inplace
        self._init_output(scale, zero_point)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(d, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, {self._output_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> LeakyReLU:
        return cls._output_from(mod, cls(negative_slope=mod.negative_slope))  # type: ignore[return-value]


class Hardswish(_TableActivation):
    """``h = d·clamp(d+3, 0, 6)/6`` on the dequantized input, quantized to the module's own
    output qparams (it has an observer; not fixed-qparams)."""

    _NAME = "QuantizedHardswish"

    def __init__(self, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self._init_output(scale, zero_point)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        return d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Hardswish:
        return cls._output_from(mod, cls())  # type: ignore[return-value]
