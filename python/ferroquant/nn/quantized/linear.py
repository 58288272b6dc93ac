"""Static quantized Linear (``torch.ao.nn.quantized.Linear``) and its fused ReLU variant."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._core import PackedLinear
from ..._dtypes import qint8
from ..._threads import get_num_threads
from ...qtensor import QTensor
from ._static import OutputQParams, observed_float_module, require_qtensor
from ._weights import WeightedQuantModule, quantize_weight

__all__ = ["Linear", "LinearReLU"]


class Linear(OutputQParams, WeightedQuantModule):
    """quint8 activations × int8 weights → quint8 (or qint8) outputs, bias in float (D2)."""

    _version = 1
    _FUSED_RELU = False

    def __init__(self, in_features: int, out_features: int, bias_: bool = True, dtype: Any = qint8) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_output()
        self._init_weight_storage((out_features, in_features), bias_)
        self._rebuild()

    def _rebuild(self) -> None:
        self._packed = PackedLinear(self._w.numpy(), self._w_scale.numpy(), self._w_zp.to(torch.int32).numpy())
        self._bias_np = None if self._bias is None else self._bias.numpy()

    def forward(self, x: QTensor) -> QTensor:
        q = require_qtensor(self, x)
        k = self.in_features
        shape = q.shape
        if not shape or shape[-1] != k:
            raise ValueError(f"{type(self).__name__} expects input [..., {k}] (in_features = {k}), got {list(shape)}")
        data = q.int_repr()
        if data.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects quint8 activations, got {q.dtype}")
        out = self._packed.linear_static(
            data.reshape(-1, k).contiguous().numpy(),
            q.q_scale(),
            q.q_zero_point(),
            self._bias_np,
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self._FUSED_RELU,
            self._out_dtype.name,
            get_num_threads(),
        )
        y = torch.from_numpy(out).reshape(*shape[:-1], self.out_features)
        return QTensor(y, self.scale, self.zero_point, self._out_dtype)

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
        qweight = quantize_weight(lin.weight, qconfig.weight())
        q = cls(lin.in_features, lin.out_features, bias_=lin.bias is not None)
        q._init_output(scale, zp, qmin, qmax, dtype)
        q.set_weight_bias(qweight, None if lin.bias is None else lin.bias.detach())
        return q


class LinearReLU(Linear):
    """Static quantized Linear with a fused ReLU (``torch.ao.nn.intrinsic.quantized.LinearReLU``):
    outputs clamp at the output zero point."""

    _FUSED_RELU = True
