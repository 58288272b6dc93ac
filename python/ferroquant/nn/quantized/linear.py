"""Static quantized Linear (``torch.ao.nn.quantized.Linear``) and its fused ReLU variant."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._core import PackedLinear
from ..._dtypes import qint8
from ..._ops import run_linear_static
from ._script import QArg, QTuple, script_qtuple, script_unpack
from ._static import OutputQParams, observed_float_module, require_qtensor, run_static_kernel
from ._weights import WeightedQuantModule, convert_weight_bias

__all__ = ["Linear", "LinearReLU"]


class Linear(OutputQParams, WeightedQuantModule):
    """quint8 activations × int8 weights → quint8 (or qint8) outputs, bias kept in float (FBGEMM's float
    requantization, as torch on x86; docs/numerics.md D2)."""

    _version = 1
    _FUSED_RELU = False
    __constants__ = ["_FUSED_RELU"]  # read by the scripted forward
    _fq_io = "QQ"  # TorchScript: quantized in, quantized out

    def __init__(self, in_features: int, out_features: int, bias_: bool = True, dtype: Any = qint8) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_output()
        self._init_weight_storage((out_features, in_features), bias_)
        self._rebuild(release=True)

    def _pack(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> PackedLinear:
        return PackedLinear(w.numpy(), scale.numpy(), zp.to(torch.int32).numpy())

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        k = self.in_features
        shape = q.shape
        if not shape or shape[-1] != k:
            raise ValueError(f"{type(self).__name__} expects input [..., {k}] (in_features = {k}), got {list(shape)}")
        data = q.int_repr()
        if data.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects quint8 activations, got {q.dtype}")
        return run_static_kernel(self, q, run_linear_static)

    def _forward_script(self, x: QTuple) -> QTuple:
        # TorchScript: the same kernel through torch.ops.ferroquant.linear_static (bit-identical)
        data, s, z = script_unpack(x, "QuantizedLinear")
        k = self.in_features
        if data.dim() == 0 or data.size(-1) != k:
            raise ValueError(f"QuantizedLinear expects input [..., {k}] (in_features = {k}), got {data.shape}")
        if data.dtype != torch.uint8:
            raise TypeError("QuantizedLinear expects quint8 activations (torch.uint8 data)")
        y = torch.ops.ferroquant.linear_static(
            data,
            s,
            z,
            self._w,
            self._w_scale,
            self._w_zp,
            self._bias,
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self._FUSED_RELU,
            self._out_dtype_name,
        )
        return script_qtuple(y, self.scale, self.zero_point)

    def _get_name(self) -> str:
        return "QuantizedLinearReLU" if self._FUSED_RELU else "QuantizedLinear"

    def extra_repr(self) -> str:
        scheme = "per_tensor_affine" if self._w_axis < 0 else "per_channel_affine"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, {self._output_repr()}, qscheme={scheme}"
        )

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Linear:
        """From an observed float ``nn.Linear`` (or a fused ``LinearReLU``) after calibration."""
        lin, qconfig, (scale, zp, qmin, qmax, dtype) = observed_float_module(mod, nn.Linear, cls.__name__)
        qweight, bias = convert_weight_bias(mod, lin, qconfig, type(mod).__name__)
        q = cls(lin.in_features, lin.out_features, bias_=bias is not None)
        q._init_output(scale, zp, qmin, qmax, dtype)
        q.set_weight_bias(qweight, bias)
        return q


class LinearReLU(Linear):
    """Static quantized Linear with a fused ReLU (``torch.ao.nn.intrinsic.quantized.LinearReLU``):
    outputs clamp at the output zero point."""

    _FUSED_RELU = True
