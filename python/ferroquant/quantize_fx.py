"""FX graph mode quantization (torch.ao's ``quantize_fx``): ``fuse_fx``, ``prepare_fx``,
``prepare_qat_fx``, ``convert_fx``, ``convert_to_reference_fx`` — whole models, functionals and
``+`` included, without editing ``forward``.

The model is traced with ``torch.fx``; fusion and the placement of quantize / dequantize are
automatic. A submodule that cannot be traced (data-dependent control flow) stays float, with
dequantize / quantize at its edges, and is listed in the converted model's ``float_parts``.
See docs/fx.md.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

from ._fx.convert import convert as _convert
from ._fx.convert import convert_reference as _convert_reference
from ._fx.custom_config import ConvertCustomConfig, FuseCustomConfig, PrepareCustomConfig, as_config
from ._fx.fuse import fuse_graph
from ._fx.graph_module import QuantizedGraphModule
from ._fx.prepare import NativeBackendConfig, check_backend_config
from ._fx.prepare import prepare as _prepare
from ._fx.tracer import FXTraceError, trace

__all__ = [
    "fuse_fx",
    "prepare_fx",
    "prepare_qat_fx",
    "convert_fx",
    "convert_to_reference_fx",
    "PrepareCustomConfig",
    "ConvertCustomConfig",
    "FuseCustomConfig",
    "get_native_backend_config",
    "FXTraceError",
    "QuantizedGraphModule",
]


def get_native_backend_config() -> NativeBackendConfig:
    """ferroquant's one backend configuration (the ``backend_config`` argument accepts it or None)."""
    return NativeBackendConfig()


def fuse_fx(model: nn.Module, fuse_custom_config: Any = None, backend_config: Any = None) -> fx.GraphModule:
    """Traces ``model`` and fuses conv / linear + bn + relu patterns (functional relu too), as
    ``fuse_modules`` would with the names found for you (folding BatchNorm needs eval mode)."""
    check_backend_config(backend_config)
    config = as_config(fuse_custom_config, FuseCustomConfig)
    gm, _auto = trace(copy.deepcopy(model))
    for attr in config.preserved_attributes:
        if hasattr(model, attr):
            setattr(gm, attr, getattr(model, attr))
    return fuse_graph(gm)


def prepare_fx(
    model: nn.Module,
    qconfig_mapping: Any,
    example_inputs: Any,
    prepare_custom_config: Any = None,
    _equalization_config: Any = None,
    backend_config: Any = None,
) -> fx.GraphModule:
    """Post-training quantization, step 1: trace the model (eval mode), fuse, and insert observers
    where ``qconfig_mapping`` (a ``QConfigMapping`` or its dict form) asks. Run calibration data
    through the result, then ``convert_fx`` it. ``example_inputs``: a tuple of example inputs (as
    torch requires; ferroquant's tracing does not need it)."""
    if _equalization_config is not None:
        raise NotImplementedError("_equalization_config is not supported")
    return _prepare(model, qconfig_mapping, example_inputs, prepare_custom_config, backend_config, is_qat=False)


def prepare_qat_fx(
    model: nn.Module,
    qconfig_mapping: Any,
    example_inputs: Any,
    prepare_custom_config: Any = None,
    backend_config: Any = None,
) -> fx.GraphModule:
    """Quantization-aware training, step 1: trace (training mode), fuse into the QAT modules
    (BatchNorm folded while training), swap to ``ferroquant.nn.qat`` modules and insert
    fake-quants. Train it, then ``convert_fx(model.eval())``."""
    return _prepare(model, qconfig_mapping, example_inputs, prepare_custom_config, backend_config, is_qat=True)


def convert_fx(
    graph_module: fx.GraphModule,
    convert_custom_config: Any = None,
    _remove_qconfig: bool = True,
    qconfig_mapping: Any = None,
    backend_config: Any = None,
) -> fx.GraphModule:
    """Step 2: a GraphModule that calls ferroquant's quantized modules and ops (quantize where
    float values enter the quantized part, dequantize where they leave it)."""
    if qconfig_mapping is not None:
        raise NotImplementedError("convert_fx(qconfig_mapping=...) is not supported: give it to prepare_fx")
    return _convert(graph_module, convert_custom_config, backend_config)


def convert_to_reference_fx(
    graph_module: fx.GraphModule,
    convert_custom_config: Any = None,
    _remove_qconfig: bool = True,
    qconfig_mapping: Any = None,
    backend_config: Any = None,
) -> fx.GraphModule:
    """A reference model: float ops with explicit quantize → dequantize of activations and weights
    where the quantized model quantizes (for debugging and export)."""
    check_backend_config(backend_config)
    return _convert_reference(graph_module, convert_custom_config)
