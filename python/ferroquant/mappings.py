"""Tables from float modules to their quantized counterparts (data, not if-chains)."""

from __future__ import annotations

from torch import nn

from .nn.quantized import dynamic as nnqd

#: Float module type → dynamic quantized module type (quantize_dynamic's default mapping).
DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS: dict[type, type] = {
    nn.Linear: nnqd.Linear,
}


def get_default_dynamic_quant_module_mappings() -> dict[type, type]:
    return dict(DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS)
