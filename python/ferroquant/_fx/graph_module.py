"""The GraphModules FX mode returns. What convert needs from prepare travels in ``meta["_fq_fx"]``
(GraphModule's deepcopy keeps ``meta``, not other attributes)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import fx
from torch.nn.modules import module as _module

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
    """What ``convert_fx`` returns: the model calling ferroquant's quantized modules.

    Calling it with one float32 CPU tensor runs the whole graph as one kernel plan when every
    node is one the kernels run directly (``ferroquant/_fx/plan.py``, docs/performance.md): the
    same results, bit for bit, without a Python call per node. ``use_graph_plan = False`` (or
    ``FERROQUANT_GRAPH_PLAN=0``) runs module by module; :meth:`graph_plan_status` says, per input
    shape seen, whether a plan runs and why not."""

    __jit_ignored_attributes__ = [*_WithFloatParts.__jit_ignored_attributes__, "_fq_plans"]

    use_graph_plan = True  # no annotation: TorchScript would read it (as a string) for the attribute type

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and self.use_graph_plan and _plans_allowed(self):
            plans = self.__dict__.get("_fq_plans")
            if plans is None:
                from .plan import PlanCache

                plans = self.__dict__["_fq_plans"] = PlanCache()
            out = plans.run(self, args[0])
            if out is not NotImplemented:
                return out
        return super().__call__(*args, **kwargs)

    def recompile(self) -> Any:
        plans = self.__dict__.get("_fq_plans")
        if plans is not None:
            plans.clear()  # the graph changed: plans are rebuilt from it
        return super().recompile()

    def __reduce__(self) -> tuple:
        # torch pickles a GraphModule as its code and rebuilds a plain GraphModule: rebuild this
        # class around it (graph plans, float_parts) after torch.save / torch.load
        rebuild, args = super().__reduce__()
        return (_as_quantized, (rebuild, args))

    def graph_plan_profile(self, x: Any, runs: int = 10) -> list[tuple[str, str, float]]:
        """Where a plan's time goes: ``(graph node, step kind, median µs)`` for each step of
        the plan that runs ``x`` (calling the model once with ``x`` first, which builds it), the
        first step being the guards and the input's quantization. Empty when ``x`` runs module
        by module (see :meth:`graph_plan_status`)."""
        self(x)
        plans = self.__dict__.get("_fq_plans")
        if plans is None or not isinstance(x, torch.Tensor) or type(x) is not torch.Tensor:
            return []
        return plans.profile(x, runs) or []

    def graph_plan_status(self) -> list[tuple[tuple[int, ...], bool, str]]:
        """``(input shape, runs as a plan, detail)`` for each input shape this model was called
        with (the most recent few): the detail is the step count, or why the graph runs module by
        module."""
        plans = self.__dict__.get("_fq_plans")
        return [] if plans is None else plans.status()


def _as_quantized(rebuild: Any, args: tuple) -> Any:
    gm = rebuild(*args)
    if not isinstance(gm, fx.GraphModule) or isinstance(gm, QuantizedGraphModule):
        return gm
    new = QuantizedGraphModule.__new__(QuantizedGraphModule)
    new.__dict__.update(gm.__dict__)
    new.graph = gm.graph  # owns the graph, generates its forward
    return new


def _plans_allowed(gm: QuantizedGraphModule) -> bool:
    """No hooks (on the model or global), ``forward`` not replaced, not being compiled."""
    if gm._forward_hooks or gm._forward_pre_hooks or "forward" in gm.__dict__:
        return False
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return _PLANS_ON and not torch.compiler.is_compiling() and not torch.jit.is_tracing()


# FERROQUANT_GRAPH_PLAN=0 (read at import) runs every converted model module by module
_PLANS_ON = os.environ.get("FERROQUANT_GRAPH_PLAN", "1").strip().lower() not in ("0", "off", "false", "no")


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
