"""The eager-mode workflow: ``propagate_qconfig_`` and ``quantize_dynamic`` (static
``prepare`` / ``convert`` arrive with the eager static quantization work)."""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch
from torch import nn

from ._dtypes import qint8, to_qdtype
from .mappings import get_default_dynamic_quant_module_mappings
from .qconfig import QConfig, default_dynamic_qconfig

__all__ = ["propagate_qconfig_", "quantize_dynamic"]

QConfigSpec = Union[dict[Any, Optional[QConfig]], set, None]


def _check_qconfig(qconfig: Any, module: nn.Module) -> None:
    if qconfig is not None and not (hasattr(qconfig, "activation") and hasattr(qconfig, "weight")):
        raise TypeError(
            f"qconfig of {type(module).__name__} must be a ferroquant.QConfig (or None), got {type(qconfig).__name__}"
        )


def _propagate(module: nn.Module, spec: dict, parent: Optional[QConfig], prefix: str) -> None:
    qconfig = spec.get(type(module), parent)
    qconfig = spec.get(prefix, qconfig)
    qconfig = getattr(module, "qconfig", qconfig)
    _check_qconfig(qconfig, module)
    module.qconfig = qconfig
    for name, child in module.named_children():
        _propagate(child, spec, qconfig, f"{prefix}.{name}" if prefix else name)


def propagate_qconfig_(
    module: nn.Module,
    qconfig_dict: Optional[dict[Any, Optional[QConfig]]] = None,
    prepare_custom_config_dict: Optional[dict] = None,
) -> None:
    """Sets ``.qconfig`` on every submodule: a submodule's own ``qconfig`` wins, then its
    fully qualified name in ``qconfig_dict``, then its type, then its parent's qconfig."""
    _propagate(module, dict(qconfig_dict or {}), None, "")


def _remove_qconfig(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "qconfig"):
            del m.qconfig


def _swap_modules(module: nn.Module, mapping: dict[type, type]) -> None:
    for name, child in list(module.named_children()):
        target = mapping.get(type(child))
        if target is not None and getattr(child, "qconfig", None) is not None:
            setattr(module, name, target.from_float(child))
        else:
            _swap_modules(child, mapping)


def quantize_dynamic(
    model: nn.Module,
    qconfig_spec: QConfigSpec = None,
    dtype: Any = qint8,
    mapping: Optional[dict[type, type]] = None,
    inplace: bool = False,
) -> nn.Module:
    """Replaces float modules (by default every ``nn.Linear``) with dynamic quantized ones:
    int8 weights now, activations quantized on the fly at each call.

    ``qconfig_spec``: a set of module types (``{nn.Linear}``) or a dict from types or fully
    qualified submodule names to qconfigs (``None`` keeps that part in float). ``dtype``:
    ``torch.qint8`` (also ``torch.int8``, ``"qint8"``, ``ferroquant.qint8``).
    """
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        raise NotImplementedError(
            f"quantize_dynamic with dtype={dtype} (float weights) is not available in ferroquant yet; "
            "use dtype=torch.qint8"
        )
    if to_qdtype(dtype) != qint8:
        raise NotImplementedError(
            f"quantize_dynamic supports dtype=torch.qint8 for now, got {dtype} (quint8 embeddings and "
            "4-bit weights come later)"
        )
    if qconfig_spec is None:
        spec: dict[Any, Optional[QConfig]] = {nn.Linear: default_dynamic_qconfig}
    elif isinstance(qconfig_spec, (set, frozenset, list, tuple)):
        spec = dict.fromkeys(qconfig_spec, default_dynamic_qconfig)
    elif isinstance(qconfig_spec, dict):
        spec = dict(qconfig_spec)
    else:
        raise TypeError(f"qconfig_spec must be a set of module types or a dict, got {type(qconfig_spec).__name__}")
    if mapping is None:
        mapping = get_default_dynamic_quant_module_mappings()
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    propagate_qconfig_(model, spec)
    _swap_modules(model, mapping)
    _remove_qconfig(model)
    return model
