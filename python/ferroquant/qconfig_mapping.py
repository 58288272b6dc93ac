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


def _default_mapping(is_qat: bool, backend: str, version: int) -> QConfigMapping:
    """torch.ao's ``_get_default_qconfig_mapping``: the backend's qconfig globally, plus its
    object-type entries — ``reshape`` reuses its input's qparams; transposed convs take per-tensor
    weights on x86 / fbgemm (torch's ConvTranspose has no per-channel form; ferroquant's does, and
    follows the mapping); LayerNorm keeps float weights; PReLU a quint8 weight observer; sigmoid,
    hardsigmoid, tanh and softmax their fixed qparams."""
    import torch
    import torch.nn.functional as F

    from ._dtypes import per_tensor_affine, quint8
    from .fake_quantize import FixedQParamsFakeQuantize, default_weight_fake_quant
    from .observer import (
        HistogramObserver,
        MinMaxObserver,
        default_fixed_qparams_range_0to1_observer,
        default_fixed_qparams_range_neg1to1_observer,
        default_placeholder_observer,
        default_reuse_input_observer,
        default_weight_observer,
    )

    qconfig = get_default_qat_qconfig(backend, version) if is_qat else get_default_qconfig(backend, version)
    default_weight = default_weight_fake_quant if is_qat else default_weight_observer
    transpose = QConfig(qconfig.activation, default_weight) if backend in ("fbgemm", "x86") else qconfig
    layernorm = QConfig(qconfig.activation, default_placeholder_observer)
    reuse = QConfig(default_reuse_input_observer, default_weight_observer)
    # torch's default_quint8_weight_qconfig (the same in its QAT mapping)
    quint8_weight = QConfig(HistogramObserver, MinMaxObserver.with_args(dtype=quint8, qscheme=per_tensor_affine))
    m = QConfigMapping().set_global(qconfig).set_object_type("reshape", reuse)
    for t in (
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
    ):
        m.set_object_type(t, transpose)
    m.set_object_type(F.layer_norm, layernorm).set_object_type(nn.LayerNorm, layernorm)
    m.set_object_type(nn.PReLU, quint8_weight)
    fixed: dict[Any, QConfig] = {}
    for ops, observer in (
        ((nn.Hardsigmoid, F.hardsigmoid, "hardsigmoid", "hardsigmoid_"), default_fixed_qparams_range_0to1_observer),
        ((nn.Sigmoid, torch.sigmoid, "sigmoid", "sigmoid_", nn.Softmax), default_fixed_qparams_range_0to1_observer),
        ((nn.Tanh, torch.tanh, "tanh", "tanh_"), default_fixed_qparams_range_neg1to1_observer),
    ):
        if observer not in fixed:
            activation = FixedQParamsFakeQuantize.with_args(observer=observer) if is_qat else observer
            fixed[observer] = QConfig(activation, default_weight)
        for op in ops:
            m.set_object_type(op, fixed[observer])
    return m


def get_default_qconfig_mapping(backend: str = "x86", version: int = 0) -> QConfigMapping:
    """torch.ao's default post-training mapping for ``backend``: ``get_default_qconfig(backend)``
    globally plus torch's object-type entries (fixed qparams for sigmoid / hardsigmoid / tanh /
    softmax, per-tensor weights for transposed convs, float LayerNorm weights, ...)."""
    return _default_mapping(False, backend, version)


def get_default_qat_qconfig_mapping(backend: str = "x86", version: int = 1) -> QConfigMapping:
    """torch.ao's default quantization-aware-training mapping for ``backend`` (fixed-qparams
    fake-quants for sigmoid / hardsigmoid / tanh / softmax)."""
    return _default_mapping(True, backend, version)
