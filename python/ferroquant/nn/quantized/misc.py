"""Quantize / DeQuantize (what QuantStub / DeQuantStub become) and Dropout (identity)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._dtypes import quint8, to_qdtype
from ..._ops import raise_named
from ...qtensor import QTensor, _quantize_per_tensor, quantize_per_tensor
from ._script import QArg, QTuple, script_dequantize, script_dtype_range, script_qtuple, script_unpack
from ._static import OutputQParams, module_name, output_qparams
from .passthrough import Dropout

__all__ = ["Quantize", "DeQuantize", "Dropout"]


class Quantize(OutputQParams, nn.Module):
    """float → QTensor with fixed qparams, clamped to the observer's range; rounds half to even, then adds the
    zero point (docs/numerics.md, D3).
    4-D / 5-D activations are stored channels-last."""

    _fq_io = "TQ"  # TorchScript: float in, quantized out

    def __init__(
        self, scale: float = 1.0, zero_point: int = 0, dtype: Any = quint8, factory_kwargs: Any = None
    ) -> None:
        super().__init__()
        self._init_output(scale, zero_point, to_qdtype(dtype).qmin, to_qdtype(dtype).qmax, dtype)
        self.dtype = to_qdtype(dtype)

    def forward(self, x: torch.Tensor) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    def _forward_script(self, x: torch.Tensor) -> QTuple:
        # TorchScript: the eager steps through torch.ops.ferroquant.quantize_per_tensor (bit-identical)
        if not x.is_floating_point():
            raise TypeError("Quantize expects a float tensor; pass x.float()")
        nd = x.dim()
        lo, hi = script_dtype_range(self._out_dtype_name)
        src = x.movedim(1, -1) if nd == 4 or nd == 5 else x
        data = torch.ops.ferroquant.quantize_per_tensor(src, self.scale, self.zero_point, lo, hi, self._out_dtype_name)
        if self.quant_min > lo or self.quant_max < hi:
            data = torch.clamp(data, self.quant_min, self.quant_max)
        if nd == 4 or nd == 5:
            data = data.movedim(-1, 1)  # logical NC..., memory channels-last
        return script_qtuple(data, self.scale, self.zero_point)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> QArg:
        if isinstance(x, QTensor):
            raise TypeError("Quantize received a QTensor that is already quantized; remove the extra QuantStub")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"Quantize expects a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        # activations are stored channels-last: quantize a channels-last input in place, any other
        # straight into channels-last order (one pass: quantize and transpose)
        cl_input = fmt is not None and x.is_contiguous(memory_format=fmt)
        try:
            if cl_input:
                q = quantize_per_tensor(x.movedim(1, -1), self.scale, self.zero_point, self.dtype)
            else:
                q = _quantize_per_tensor(x, self.scale, self.zero_point, self.dtype, channels_last=fmt is not None)
        except (ValueError, TypeError, MemoryError) as e:  # a meta / CUDA input, an output too large
            raise_named(e, module_name(self))
        data = q.int_repr()
        if self.quant_min > self.dtype.qmin or self.quant_max < self.dtype.qmax:
            data = torch.clamp(data, self.quant_min, self.quant_max)
        if cl_input:
            data = data.movedim(-1, 1)  # logical NC..., memory channels-last
        return QTensor(data, self.scale, self.zero_point, self.dtype)

    def _get_name(self) -> str:
        return "Quantize"

    def extra_repr(self) -> str:
        return f"{self._output_repr()}, dtype={self.dtype}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Quantize:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "QuantStub")
        q = cls(scale, zp, dtype)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class DeQuantize(nn.Module):
    """QTensor → float32."""

    _fq_io = "QT"  # TorchScript: quantized in, float out

    def forward(self, x: QArg) -> torch.Tensor:
        if torch.jit.is_scripting():
            script_unpack(x, "DeQuantize")  # per-tensor check
            return script_dequantize(x)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Any) -> torch.Tensor:
        if isinstance(x, QTensor):
            return x.dequantize()
        if isinstance(x, torch.Tensor):
            raise TypeError(
                "DeQuantize received a float tensor; remove the extra DeQuantStub or add a QuantStub "
                "before the quantized part"
            )
        raise TypeError(f"DeQuantize expects a QTensor, got {type(x).__name__}")

    def _get_name(self) -> str:
        return "DeQuantize"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> DeQuantize:
        return cls()
