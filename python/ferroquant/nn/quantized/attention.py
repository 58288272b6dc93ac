"""Quantized MultiheadAttention (torch: ``torch.ao.nn.quantized.MultiheadAttention``): the converted
form of :class:`ferroquant.nn.quantizable.MultiheadAttention` — quantized query / key / value in,
quantized output and attention weights out."""

from __future__ import annotations

from typing import Any

from ... import _core
from ..._dtypes import quint8
from ...qtensor import quantize_per_tensor
from ..quantizable import activation as _quantizable
from ._custom import FromObserved

__all__ = ["MultiheadAttention"]


class MultiheadAttention(FromObserved, _quantizable.MultiheadAttention):
    """``ferroquant.nn.quantized.MultiheadAttention``: built by ``convert`` from an observed
    quantizable MultiheadAttention (``observed_to_quantized_custom_module_class``)."""

    _FLOAT_MODULE = _quantizable.MultiheadAttention  # type: ignore[assignment]
    _OBSERVED_NAME = "MultiheadAttention"

    def _get_name(self) -> str:
        return "QuantizedMultiheadAttention"

    @classmethod
    def _finish(cls, converted: Any) -> None:
        # bias_k / bias_v become quint8 tensors over their own range (torch.ao: the same)
        for name in ("bias_k", "bias_v"):
            p = converted._parameters.pop(name, None)
            if p is not None:
                t = p.detach().float()
                scale, zp = _core.choose_qparams_dynamic(float(t.min()), float(t.max()), 0, 255)
                object.__setattr__(converted, name, quantize_per_tensor(t, scale, zp, quint8))
        for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            converted._parameters.pop(name, None)
            converted.__dict__[name] = None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}" + (
            ", batch_first=True" if self.batch_first else ""
        )
