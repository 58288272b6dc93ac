"""The GraphModules FX mode returns. What convert needs from prepare travels in ``meta["_fq_fx"]``
(GraphModule's deepcopy keeps ``meta``, not other attributes)."""

from __future__ import annotations

from typing import Any

from torch import fx

__all__ = ["ObservedGraphModule", "QuantizedGraphModule", "fx_info"]


class _WithFloatParts(fx.GraphModule):
    # ferroquant's bookkeeping is not part of a scripted model
    __jit_ignored_attributes__ = [*getattr(fx.GraphModule, "__jit_ignored_attributes__", []), "meta"]
    __jit_unused_properties__ = [*getattr(fx.GraphModule, "__jit_unused_properties__", []), "float_parts"]

    @property
    def float_parts(self) -> list[str]:
        """Submodules that stayed float because they could not be traced (or were listed as
        non-traceable): they run as they are, with dequantize / quantize at their edges."""
        return list(self.meta.get("_fq_fx", {}).get("float_parts", []))


class ObservedGraphModule(_WithFloatParts):
    """What ``prepare_fx`` / ``prepare_qat_fx`` return: the model with observers, running in float."""


class QuantizedGraphModule(_WithFloatParts):
    """What ``convert_fx`` returns: the model calling ferroquant's quantized modules."""


def fx_info(gm: Any, who: str) -> dict:
    info = getattr(gm, "meta", {}).get("_fq_fx") if isinstance(gm, fx.GraphModule) else None
    if info is None:
        raise TypeError(
            f"{who} expects the GraphModule returned by ferroquant.quantize_fx.prepare_fx / prepare_qat_fx (after "
            f"calibration or training), got {type(gm).__name__} without ferroquant's record of the prepared graph "
            "(pickling or torch.save of a prepared model drops it: convert in the same process, or save the "
            "converted model's state_dict)"
        )
    return info
