"""Quantized MultiheadAttention (torch: ``torch.ao.nn.quantized.MultiheadAttention``): the converted
form of :class:`ferroquant.nn.quantizable.MultiheadAttention` — quantized query / key / value in,
quantized output and attention weights out."""

from __future__ import annotations

from typing import Any

from ... import _core
from ..._dtypes import quint8
from ...qtensor import quantize_per_tensor
from ..quantizable import activation as _quantizable

__all__ = ["MultiheadAttention"]


class MultiheadAttention(_quantizable.MultiheadAttention):
    """``ferroquant.nn.quantized.MultiheadAttention``: built by ``convert`` from an observed
    quantizable MultiheadAttention (``observed_to_quantized_custom_module_class``)."""

    _FLOAT_MODULE = _quantizable.MultiheadAttention  # type: ignore[assignment]

    def _get_name(self) -> str:
        return "QuantizedMultiheadAttention"

    @classmethod
    def from_float(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "the quantized MultiheadAttention is made from an observed one: map nn.MultiheadAttention to "
            "ferroquant.nn.quantizable.MultiheadAttention in prepare's float_to_observed_custom_module_class and "
            "that to ferroquant.nn.quantized.MultiheadAttention in convert's observed_to_quantized_custom_module_class"
        )

    @classmethod
    def from_observed(cls, other: Any) -> MultiheadAttention:
        from ...quantize import convert

        if not isinstance(other, _quantizable.MultiheadAttention):
            raise TypeError(
                f"quantized MultiheadAttention.from_observed expects a quantizable one, got {type(other).__name__}"
            )
        converted = convert(other, inplace=False, remove_qconfig=True)
        converted.__class__ = cls
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
        return converted

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}" + (
            ", batch_first=True" if self.batch_first else ""
        )
