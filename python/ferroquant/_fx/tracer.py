"""Symbolic tracing for quantization: ferroquant's modules (observers, stubs, fused and quantized
modules), torch.ao's fused modules and the parts the user names stay leaves; a submodule whose
``forward`` cannot be traced (data-dependent control flow, as in detection models) becomes a leaf
automatically — it runs as it is, in float, with dequantize / quantize at its edges — and is
reported. Only when the top level itself cannot be traced is it an error, naming the line."""

from __future__ import annotations

import inspect
import traceback
from typing import Any, Callable, Iterable, Optional

from torch import fx, nn

__all__ = ["QuantizationTracer", "trace", "FXTraceError"]


class FXTraceError(RuntimeError):
    """The model's own ``forward`` cannot be traced symbolically."""


class QuantizationTracer(fx.Tracer):
    def __init__(self, leaf_names: Iterable[str] = (), leaf_classes: Iterable[type] = ()) -> None:
        super().__init__()
        self.leaf_names = set(leaf_names)
        self.leaf_classes = tuple(leaf_classes)

    failed_path: Optional[str] = None  # the innermost submodule whose forward raised while tracing

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_path is None:
                try:
                    self.failed_path = self.path_of_module(m)
                except NameError:  # a module created inside forward, not a submodule
                    pass
            raise

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or (self.leaf_classes and isinstance(m, self.leaf_classes)):
            return True
        module = type(m).__module__
        if module.startswith("ferroquant.") or module.startswith("torch.ao.nn.intrinsic"):
            return True  # observers, stubs, fused / QAT / quantized modules
        return super().is_leaf_module(m, module_qualified_name)


def _where(root: nn.Module, error: BaseException) -> str:
    """'file:line' of the innermost frame of the model's own code in the traceback."""
    files = set()
    for m in root.modules():
        try:
            files.add(inspect.getsourcefile(type(m)))
        except TypeError:  # a class defined without a source file
            continue
    where = ""
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename in files:
            where = f"{frame.f_code.co_filename}:{lineno}"
    return where


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
            name = tracer.failed_path or None
            where = _where(model, e)
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
