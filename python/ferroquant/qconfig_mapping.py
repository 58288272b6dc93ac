"""QConfigMapping: which qconfig applies to which part of a model (global, by type, by name,
by name regex, by name + type + call order), as in ``torch.ao.quantization.qconfig_mapping``."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Callable, Optional, Union

from torch import nn

from .qconfig import QConfig, get_default_qat_qconfig, get_default_qconfig

__all__ = ["QConfigMapping", "get_default_qconfig_mapping", "get_default_qat_qconfig_mapping"]

_GLOBAL = ""
_OBJECT_TYPE = "object_type"
_NAME_REGEX = "module_name_regex"
_NAME = "module_name"
_NAME_TYPE_ORDER = "module_name_object_type_order"


class QConfigMapping:
    """Priority (highest first): module_name_object_type_order, module_name,
    module_name_regex, object_type, global."""

    def __init__(self) -> None:
        self.global_qconfig: Optional[QConfig] = None
        self.object_type_qconfigs: OrderedDict[Union[Callable, str], Optional[QConfig]] = OrderedDict()
        self.module_name_regex_qconfigs: OrderedDict[str, Optional[QConfig]] = OrderedDict()
        self.module_name_qconfigs: OrderedDict[str, Optional[QConfig]] = OrderedDict()
        self.module_name_object_type_order_qconfigs: OrderedDict[tuple[str, Callable, int], Optional[QConfig]] = (
            OrderedDict()
        )

    def set_global(self, global_qconfig: Optional[QConfig]) -> QConfigMapping:
        self.global_qconfig = global_qconfig
        return self

    def set_object_type(self, object_type: Union[Callable, str], qconfig: Optional[QConfig]) -> QConfigMapping:
        self.object_type_qconfigs[object_type] = qconfig
        return self

    def set_module_name_regex(self, module_name_regex: str, qconfig: Optional[QConfig]) -> QConfigMapping:
        self.module_name_regex_qconfigs[module_name_regex] = qconfig
        return self

    def set_module_name(self, module_name: str, qconfig: Optional[QConfig]) -> QConfigMapping:
        self.module_name_qconfigs[module_name] = qconfig
        return self

    def set_module_name_object_type_order(
        self, module_name: str, object_type: Callable, index: int, qconfig: Optional[QConfig]
    ) -> QConfigMapping:
        self.module_name_object_type_order_qconfigs[(module_name, object_type, index)] = qconfig
        return self

    def qconfig_for(self, name: str, module: nn.Module) -> Optional[QConfig]:
        """The qconfig that applies to the submodule ``name`` (eager mode: by name, regex, type)."""
        if name in self.module_name_qconfigs:
            return self.module_name_qconfigs[name]
        for pattern, qc in self.module_name_regex_qconfigs.items():
            if re.match(pattern, name):
                return qc
        if type(module) in self.object_type_qconfigs:
            return self.object_type_qconfigs[type(module)]
        return self.global_qconfig

    def __repr__(self) -> str:
        parts = [f"{k}: {v}" for k, v in self.to_dict().items() if v]
        return f"QConfigMapping({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            _GLOBAL: self.global_qconfig,
            _OBJECT_TYPE: list(self.object_type_qconfigs.items()),
            _NAME_REGEX: list(self.module_name_regex_qconfigs.items()),
            _NAME: list(self.module_name_qconfigs.items()),
            _NAME_TYPE_ORDER: [(*k, v) for k, v in self.module_name_object_type_order_qconfigs.items()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QConfigMapping:
        m = cls()
        if _GLOBAL in d:
            m.set_global(d[_GLOBAL])
        for t, q in d.get(_OBJECT_TYPE, []):
            m.set_object_type(t, q)
        for r, q in d.get(_NAME_REGEX, []):
            m.set_module_name_regex(r, q)
        for n, q in d.get(_NAME, []):
            m.set_module_name(n, q)
        for n, t, i, q in d.get(_NAME_TYPE_ORDER, []):
            m.set_module_name_object_type_order(n, t, i, q)
        return m


def _mapping_for(qconfig: QConfig) -> QConfigMapping:
    return QConfigMapping().set_global(qconfig)


def get_default_qconfig_mapping(backend: str = "x86", version: int = 0) -> QConfigMapping:
    """A mapping with ``get_default_qconfig(backend)`` as the global qconfig."""
    return _mapping_for(get_default_qconfig(backend, version))


def get_default_qat_qconfig_mapping(backend: str = "x86", version: int = 1) -> QConfigMapping:
    """A mapping with ``get_default_qat_qconfig(backend)`` as the global qconfig."""
    return _mapping_for(get_default_qat_qconfig(backend, version))
