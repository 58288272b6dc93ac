"""Quantized ``BatchNorm2d`` / ``BatchNorm3d`` and the fused ``BNReLU2d`` / ``BNReLU3d`` (torch:
``nn.quantized.BatchNorm2d``, ``nn.intrinsic.quantized.BNReLU2d``): the running statistics'
per-channel affine map on quint8 activations, quantized to the module's own output qparams.
Each channel's map of the 256 possible input values is computed once (torch's ``F.batch_norm``
in eval mode on the dequantized levels, then quantized: the float definition's bits) and applied
as a per-channel lookup table in Rust (``_core.lut_u8_per_channel``)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ... import _core
from ..._dtypes import quint8
from ...qtensor import QTensor, quantize_per_tensor
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["BatchNorm2d", "BatchNorm3d", "BNReLU2d", "BNReLU3d"]


class _BatchNorm(OutputQParams, nn.Module):
    _DIMS = 4
    _RELU = False
    _NAME = "QuantizedBatchNorm"

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.register_buffer("weight", torch.ones(self.num_features))
        self.register_buffer("bias", torch.zeros(self.num_features))
        self.register_buffer("running_mean", torch.zeros(self.num_features))
        self.register_buffer("running_var", torch.ones(self.num_features))
        self._init_output(1.0, 0)
        self._tables: Optional[tuple] = None

    def _get_name(self) -> str:
        return self._NAME

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, {self._output_repr()}"

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for quantized BatchNorm yet; run the model in eager mode"
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tables"] = None
        return state

    def _table(self, x_scale: float, x_zp: int) -> torch.Tensor:
        """``[C, 256]`` quint8 tables for this input's qparams (rebuilt when they, the statistics or
        the output qparams change)."""
        bufs = (self.weight, self.bias, self.running_mean, self.running_var)
        key = (
            x_scale,
            x_zp,
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self.eps,
            *(id(b) for b in bufs),
            *(b._version for b in bufs),
        )
        if self._tables is not None and self._tables[0] == key:
            return self._tables[1]
        levels = QTensor(torch.arange(256, dtype=torch.uint8), x_scale, x_zp, quint8).dequantize()
        grid = levels.reshape(1, 1, 256).expand(1, self.num_features, 256).contiguous()
        y = F.batch_norm(grid, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        q = quantize_per_tensor(y, self.scale, self.zero_point, quint8).int_repr()
        lo = max(self.quant_min, self.zero_point) if self._RELU else self.quant_min
        table = torch.clamp(q, lo, self.quant_max).reshape(self.num_features, 256).contiguous()
        self._tables = (key, table)
        return table

    def forward(self, x: QTensor) -> QTensor:
        q = require_qtensor(self, x)
        if q.dtype != quint8:
            raise TypeError(f"{self._get_name()} expects quint8 activations, got {q.dtype}")
        if q.dim() != self._DIMS or q.shape[1] != self.num_features:
            raise ValueError(
                f"{self._get_name()} expects input of shape [N, {self.num_features}, ...] with {self._DIMS} dims, "
                f"got {list(q.shape)}"
            )
        data = q.int_repr().contiguous()
        inner = 1
        for s in data.shape[2:]:
            inner *= s
        out = (
            _core.lut_u8_per_channel(
                data.numpy(), self._table(q.q_scale(), q.q_zero_point()).numpy(), self.num_features, max(inner, 1)
            )
            if data.numel()
            else data.numpy().copy()
        )
        return QTensor(torch.from_numpy(out), self.scale, self.zero_point, quint8)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """From a float ``nn.BatchNorm2d`` / ``3d`` (or the fused BN + ReLU) with an output observer."""
        bn = mod[0] if isinstance(mod, nn.Sequential) else mod
        observer = getattr(mod, "activation_post_process", None)
        scale, zp, qmin, qmax, dtype = output_qparams(observer, cls.__name__)
        q = cls(bn.num_features, bn.eps, bn.momentum)
        with torch.no_grad():
            if bn.weight is not None:
                q.weight.copy_(bn.weight.detach())
                q.bias.copy_(bn.bias.detach())
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(
                    f"{cls.__name__}: the float BatchNorm has no running statistics (track_running_stats=False)"
                )
            q.running_mean.copy_(bn.running_mean)
            q.running_var.copy_(bn.running_var)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class BatchNorm2d(_BatchNorm):
    """``ferroquant.nn.quantized.BatchNorm2d(num_features, eps=1e-5, momentum=0.1)``."""

    _NAME = "QuantizedBatchNorm2d"


class BatchNorm3d(_BatchNorm):
    """``ferroquant.nn.quantized.BatchNorm3d(num_features, eps=1e-5, momentum=0.1)``."""

    _DIMS = 5
    _NAME = "QuantizedBatchNorm3d"


class BNReLU2d(BatchNorm2d):
    """``ferroquant.nn.intrinsic.quantized.BNReLU2d``: BatchNorm2d with the ReLU fused (outputs
    clamped at the output zero point)."""

    _RELU = True
    _NAME = "QuantizedBNReLU2d"


class BNReLU3d(BatchNorm3d):
    """``ferroquant.nn.intrinsic.quantized.BNReLU3d``: BatchNorm3d with the ReLU fused."""

    _RELU = True
    _NAME = "QuantizedBNReLU3d"
