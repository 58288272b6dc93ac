"""Which qconfig applies to a graph node, as torch.ao's FX mode decides it. Priority, lowest first:
the global qconfig, ``object_type`` (a module class, or a function / method name for functional
ops), ``module_name_regex``, ``module_name`` (the module itself or its closest named parent; a
functional op belongs to the module whose ``forward`` called it), and
``module_name_object_type_order`` (the n-th call of a function inside a module). A qconfig of
None keeps the op in float."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Optional

from torch import fx, nn

from ..mappings import canonical_type
from ..qconfig_mapping import QConfigMapping
from ..quantize import _from_torch_qconfig

__all__ = ["QConfigResolver", "as_qconfig_mapping"]

_UNSET = object()


def as_qconfig_mapping(value: Any) -> QConfigMapping:
    """A QConfigMapping from a QConfigMapping (ferroquant's or torch.ao's) or the dict form."""
    if isinstance(value, QConfigMapping):
        return value
    if isinstance(value, dict):
        return QConfigMapping.from_dict(value)
    if type(value).__name__ == "QConfigMapping" and hasattr(value, "to_dict"):
        return QConfigMapping.from_dict(value.to_dict())  # torch.ao's
    raise TypeError(
        "qconfig_mapping must be a ferroquant.QConfigMapping (e.g. get_default_qconfig_mapping('x86')) or its dict "
        f"form {{'': qconfig, 'object_type': [...], ...}}, got {type(value).__name__}"
    )


def _enclosing_module(node: fx.Node) -> str:
    """The qualified name of the module whose forward created ``node`` ('' for the root)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else last
    return str(path).replace("L['self'].", "").replace("L__self___", "")


class QConfigResolver:
    def __init__(self, mapping: QConfigMapping) -> None:
        self.mapping = mapping
        self._calls: dict[tuple[str, Any], int] = defaultdict(int)

    @staticmethod
    def _translate(qconfig: Any) -> Any:
        return None if qconfig is None else _from_torch_qconfig(qconfig)

    def _by_name(self, name: str) -> Any:
        names = self.mapping.module_name_qconfigs
        while True:
            if name in names:
                return names[name]
            if not name:
                return _UNSET
            name = name.rsplit(".", 1)[0] if "." in name else ""

    def for_module(self, name: str, mod: nn.Module) -> Optional[Any]:
        """The qconfig of the submodule ``name`` (as for a call of it in the graph)."""
        return self._resolve(name, (type(mod), canonical_type(mod)), None)

    def for_node(self, node: fx.Node, modules: dict[str, nn.Module]) -> Optional[Any]:
        if node.op == "call_module":
            mod = modules[str(node.target)]
            return self._resolve(str(node.target), (type(mod), canonical_type(mod)), None)
        if node.op in ("call_function", "call_method"):
            return self._resolve(_enclosing_module(node), (node.target,), node.target)
        return None

    def _resolve(self, name: str, keys: tuple[Any, ...], function: Any) -> Optional[Any]:
        m = self.mapping
        qconfig = m.global_qconfig
        for key in keys:
            if key in m.object_type_qconfigs:
                qconfig = m.object_type_qconfigs[key]
                break
        for pattern, qc in m.module_name_regex_qconfigs.items():
            if re.match(pattern, name):
                qconfig = qc
                break
        by_name = self._by_name(name)
        if by_name is not _UNSET:
            qconfig = by_name
        if function is not None:
            index = self._calls[(name, function)]
            self._calls[(name, function)] += 1
            key3 = (name, function, index)
            if key3 in m.module_name_object_type_order_qconfigs:
                qconfig = m.module_name_object_type_order_qconfigs[key3]
        return self._translate(qconfig)
