"""Symbolic tracing for quantization: ferroquant's modules (observers, stubs, fused and quantized
modules), torch.ao's fused modules and the parts the user names stay leaves; a submodule whose
``forward`` cannot be traced (data-dependent control flow, as in detection models) becomes a leaf
automatically — it runs as it is, in float, with dequantize / quantize at its edges — and is
reported. Only when the top level itself cannot be traced is it an error, naming the line."""

from __future__ import annotations

import traceback
from typing import Iterable, Optional

from torch import fx, nn

__all__ = ["QuantizationTracer", "trace", "FXTraceError"]


class FXTraceError(RuntimeError):
    """The model's own ``forward`` cannot be traced symbolically."""


class QuantizationTracer(fx.Tracer):
    def __init__(self, leaf_names: Iterable[str] = (), leaf_classes: Iterable[type] = ()) -> None:
        super().__init__()
        self.leaf_names = set(leaf_names)
        self.leaf_classes = tuple(leaf_classes)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or (self.leaf_classes and isinstance(m, self.leaf_classes)):
            return True
        module = type(m).__module__
        if module.startswith("ferroquant.") or module.startswith("torch.ao.nn.intrinsic"):
            return True  # observers, stubs, fused / QAT / quantized modules
        return super().is_leaf_module(m, module_qualified_name)


def _failing_module(root: nn.Module, error: BaseException) -> tuple[Optional[str], str]:
    """(qualified name of the innermost submodule of ``root`` whose ``forward`` was running when
    tracing failed, or None when only the root's own code was; 'file:line' of the innermost
    frame of the model's code)."""
    names = {id(m): n for n, m in root.named_modules()}
    found: Optional[str] = None
    where = ""
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names and frame.f_code.co_name == "forward":
            found = names[id(owner)]
            where = f"{frame.f_code.co_filename}:{lineno}"
    return (found or None), where


def trace(
    model: nn.Module, leaf_names: Iterable[str] = (), leaf_classes: Iterable[type] = ()
) -> tuple[fx.GraphModule, list[str]]:
    """The model as a GraphModule, and the submodules that became leaves because tracing them
    failed (in the order found)."""
    auto: list[str] = []
    leaf_names = list(leaf_names)
    while True:
        tracer = QuantizationTracer([*leaf_names, *auto], leaf_classes)
        try:
            graph = tracer.trace(model)
        except Exception as e:  # noqa: BLE001 - any failure inside a submodule's forward
            name, where = _failing_module(model, e)
            if name is None or name in auto:
                raise FXTraceError(
                    f"cannot trace {type(model).__name__}.forward symbolically ({where or 'its own code'}): "
                    f"{type(e).__name__}: {e}. Data-dependent control flow inside a submodule is handled (the "
                    "submodule stays float); at the top level it is not: move that code into a submodule, list it "
                    "with PrepareCustomConfig().set_non_traceable_module_names([...]) / "
                    "set_non_traceable_module_classes([...]), or use eager mode (ferroquant.prepare / convert)"
                ) from e
            auto.append(name)
            continue
        name = type(model).__name__
        gm = fx.GraphModule(tracer.root, graph, name)
        return gm, auto
