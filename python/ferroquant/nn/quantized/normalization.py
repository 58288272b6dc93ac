"""Quantized ``Softmax`` and ``LayerNorm`` (torch: ``nn.quantized.Softmax``, ``LayerNorm``):
quint8 in, quint8 out with the module's own output qparams (observed during calibration). Each
row of the reduced dimension(s) is dequantized, computed in float32 in one fixed order and
quantized again, in Rust (``ferroquant._core.softmax_u8`` / ``layer_norm_u8``): the same bits on
every engine, within 1 LSB of torch's."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ... import _core
from ..._dtypes import quint8
from ..._ops import KERNEL_ERRORS, raise_named
from ...qtensor import QTensor, softmax_onto
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["Softmax", "LayerNorm"]


def _require_quint8(module: nn.Module, x: Any) -> QTensor:
    q = require_qtensor(module, x)
    if q.dtype != quint8:
        raise TypeError(f"{module._get_name()} expects quint8 activations, got {q.dtype}")
    return q


class _RowOp(OutputQParams, nn.Module):
    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for this quantized module yet; run the model in "
            "eager mode"
        )

    def _label(self) -> str:
        name = getattr(self, "_fq_name", None)
        return f"{self._get_name()} '{name}'" if name else self._get_name()

    def _run(self, q: QTensor, length: int, call: Callable[..., Any]) -> QTensor:
        data = q.int_repr().contiguous()
        try:
            out = call(data.numpy(), length, q.q_scale(), q.q_zero_point(), self.scale, self.zero_point)
        except KERNEL_ERRORS as e:
            raise_named(e, self._label())
        out_t = torch.from_numpy(out).clamp_(self.quant_min, self.quant_max)
        return QTensor(out_t, self.scale, self.zero_point, quint8)


class Softmax(_RowOp):
    """``ferroquant.nn.quantized.Softmax(dim=None, scale=1.0, zero_point=0)``."""

    def __init__(self, dim: Optional[int] = None, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self._init_output(scale, zero_point)

    def _get_name(self) -> str:
        return "QuantizedSoftmax"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, {self._output_repr()}"

    def forward(self, x: QTensor) -> QTensor:
        q = _require_quint8(self, x)
        try:
            out = softmax_onto(q, self.dim, self.scale, self.zero_point)
        except KERNEL_ERRORS as e:
            raise_named(e, self._label())
        data = out.int_repr().clamp_(self.quant_min, self.quant_max)
        return QTensor(data, self.scale, self.zero_point, quint8)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Softmax:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "Softmax")
        q = cls(mod.dim)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class LayerNorm(_RowOp):
    """``ferroquant.nn.quantized.LayerNorm(normalized_shape, weight, bias, scale, zero_point, eps=1e-5,
    elementwise_affine=True)``: normalises the trailing ``normalized_shape`` dimensions; ``weight`` /
    ``bias`` stay float."""

    def __init__(
        self,
        normalized_shape: Any,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        scale: float,
        zero_point: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        n = 1
        for s in self.normalized_shape:
            n *= s
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.numel() != n:
                raise ValueError(
                    f"LayerNorm {name} must have {n} elements ({list(self.normalized_shape)}), got {t.numel()}"
                )
        self.register_buffer("weight", None if weight is None else weight.detach().float().reshape(-1).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().reshape(-1).clone())
        self._init_output(scale, zero_point)

    def _get_name(self) -> str:
        return "QuantizedLayerNorm"

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"{self._output_repr()}"
        )

    def forward(self, x: QTensor) -> QTensor:
        q = _require_quint8(self, x)
        k = len(self.normalized_shape)
        if tuple(q.shape[q.dim() - k :]) != self.normalized_shape:
            raise ValueError(
                f"{self._label()}: the input's trailing dims {list(q.shape[q.dim() - k :])} must equal "
                f"normalized_shape {list(self.normalized_shape)}"
            )
        n = 1
        for s in self.normalized_shape:
            n *= s
        w = None if self.weight is None else self.weight.numpy()
        b = None if self.bias is None else self.bias.numpy()
        return self._run(q, n, lambda d, n_, s, z, os, oz: _core.layer_norm_u8(d, n_, w, b, self.eps, s, z, os, oz))

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> LayerNorm:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "LayerNorm")
        q = cls(
            mod.normalized_shape,
            None if mod.weight is None else mod.weight,
            None if mod.bias is None else mod.bias,
            scale,
            zp,
            mod.eps,
            mod.elementwise_affine,
        )
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q
