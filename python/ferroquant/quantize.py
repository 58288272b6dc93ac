"""The eager-mode workflow: ``propagate_qconfig_``, ``prepare``, ``convert``, ``quantize`` and
``quantize_dynamic``, with torch.ao's names and arguments."""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ._dtypes import qint8, to_qdtype
from .mappings import (
    NO_OUTPUT_OBSERVER,
    canonical_type,
    canonical_type_of,
    get_default_dynamic_quant_module_mappings,
    get_default_qat_module_mappings,
    get_default_static_quant_module_mappings,
)
from .qconfig import (
    QConfig,
    default_dynamic_qconfig,
    float16_dynamic_qconfig,
    float_qparams_weight_only_qconfig,
    float_qparams_weight_only_qconfig_4bit,
)

__all__ = ["propagate_qconfig_", "prepare", "prepare_qat", "convert", "quantize", "quantize_qat", "quantize_dynamic"]

QConfigSpec = Union[dict[Any, Optional[QConfig]], set, None]


def _check_qconfig(qconfig: Any, module: nn.Module) -> None:
    if qconfig is not None and not (hasattr(qconfig, "activation") and hasattr(qconfig, "weight")):
        raise TypeError(
            f"qconfig of {type(module).__name__} must be a ferroquant.QConfig (or None), got {type(qconfig).__name__}"
        )


def _from_torch_factory(factory: Any) -> Any:
    """A torch.ao observer / fake-quant factory (``Observer.with_args(...)`` or a class) as
    ferroquant's class of the same name with the same arguments (torch's dtypes and qschemes
    are accepted as they are); anything else unchanged."""
    from . import fake_quantize, observer

    partial = getattr(factory, "p", None)
    func = getattr(partial, "func", factory)
    if not (isinstance(func, type) and func.__module__.startswith("torch.ao.quantization")):
        return factory
    ours = getattr(observer, func.__name__, None) or getattr(fake_quantize, func.__name__, None)
    if ours is None:
        raise TypeError(
            f"the torch.ao qconfig uses {func.__module__}.{func.__name__}, which ferroquant has no counterpart for; "
            "assign a ferroquant qconfig (e.g. ferroquant.get_default_qconfig('x86'))"
        )
    if partial is None:
        return ours
    kwargs = {k: _from_torch_factory(v) for k, v in partial.keywords.items()}
    return ours.with_args(*partial.args, **kwargs) if not partial.args else ours.with_args(**kwargs)


def _from_torch_qconfig(qconfig: Any) -> Any:
    """torch.ao's QConfig objects (assigned to ``.qconfig`` by code written for torch.ao) as the
    ferroquant QConfig with the same observers and arguments; recognised by class, never imported."""
    if qconfig is None or not type(qconfig).__module__.startswith("torch.ao.quantization"):
        return qconfig
    if not (hasattr(qconfig, "activation") and hasattr(qconfig, "weight")):
        return qconfig
    return QConfig(activation=_from_torch_factory(qconfig.activation), weight=_from_torch_factory(qconfig.weight))


def _propagate(module: nn.Module, spec: dict, parent: Optional[QConfig], prefix: str) -> None:
    qconfig = spec.get(type(module), parent)
    qconfig = spec.get(prefix, qconfig)
    qconfig = _from_torch_qconfig(getattr(module, "qconfig", qconfig))
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


def _check_weight_not_empty(child: nn.Module, name: str) -> None:
    """An empty weight (``nn.Linear(0, 4)``) cannot go through the int8 kernels: say which
    module it is and how to keep it in float (torch.ao quantizes it, and its forward then
    returns uninitialized memory)."""
    inner = child[0] if isinstance(child, nn.Sequential) and len(child) > 0 else child
    w = getattr(inner, "weight", None)
    if isinstance(w, torch.Tensor) and w.numel() == 0:
        raise ValueError(
            f"cannot quantize {type(inner).__name__} '{name}': its weight is empty (shape {list(w.shape)}), and "
            "ferroquant's int8 kernels need at least one input and one output feature; keep it in float: map "
            f"its name to None in the qconfig (qconfig_spec={{..., '{name}': None}}) or set its qconfig to None"
        )


def _from_float(target: type, child: nn.Module, name: str) -> nn.Module:
    """``target.from_float(child)``; a ValueError / TypeError (weights the int8 kernels reject,
    a bad bias, ...) says which module it is about."""
    try:
        return target.from_float(child)
    except (ValueError, TypeError) as e:
        if type(e) not in (ValueError, TypeError):
            raise
        raise type(e)(f"cannot quantize {type(child).__name__} '{name}': {e}") from e


def _replace(parent: nn.Module, name: str, old: nn.Module, new: nn.Module, full: str) -> None:
    """The one module swap of prepare (custom modules), prepare_qat, quantize_dynamic and convert,
    as torch.ao's ``swap_module``: the user's forward pre-hooks and hooks move to the new module
    (ferroquant's observer hooks do not), a module that lived on another device (QAT on a GPU)
    stays there, and the new module learns its path in the model (for error messages)."""
    if new is not old:
        # (a pass-through module made from the float one shares its hook dicts: nothing to move)
        if new._forward_pre_hooks is not old._forward_pre_hooks:
            for hid, hook in list(old._forward_pre_hooks.items()):
                new.register_forward_pre_hook(hook, with_kwargs=hid in old._forward_pre_hooks_with_kwargs)
        if new._forward_hooks is not old._forward_hooks:
            for hid, hook in list(old._forward_hooks.items()):
                if hook is not _observer_hook and hook is not _qat_pool_hook:
                    new.register_forward_hook(
                        hook,
                        with_kwargs=hid in old._forward_hooks_with_kwargs,
                        always_call=hid in old._forward_hooks_always_called,
                    )
        devices = {t.device for t in list(old.parameters()) + list(old.buffers())}
        if len(devices) == 1:
            device = devices.pop()
            if device.type != "cpu" and any(True for _ in new.parameters()):
                new.to(device)
    new._fq_name = full
    setattr(parent, name, new)


_DEFAULT_DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def _qdtype_name(dtype: Any) -> Optional[str]:
    """The quantized dtype's name (quint8, quint4x2, ...), None when ``dtype`` is not one."""
    try:
        return to_qdtype(dtype).name
    except (TypeError, ValueError):
        return None


def quantize_dynamic(
    model: nn.Module,
    qconfig_spec: QConfigSpec = None,
    dtype: Any = qint8,
    mapping: Optional[dict[type, type]] = None,
    inplace: bool = False,
) -> nn.Module:
    """Replaces float modules (by default every ``nn.Linear``, ``nn.LSTM``, ``nn.GRU``,
    ``nn.LSTMCell``, ``nn.GRUCell`` and ``nn.RNNCell``, as torch) with dynamic quantized ones:
    int8 weights now, activations quantized on the fly at each call.

    ``qconfig_spec``: a set of module types (``{nn.Linear}``) or a dict from types or fully
    qualified submodule names to qconfigs (``None`` keeps that part in float). ``dtype``:
    ``torch.qint8`` (also ``torch.int8``, ``"qint8"``, ``ferroquant.qint8``), ``torch.float16``
    for fp16 weights (``float16_dynamic_qconfig``), or ``torch.quint8`` / ``torch.quint4x2`` for
    weight-only embeddings (default spec: ``nn.EmbeddingBag`` and ``nn.Embedding`` / ``nn.EmbeddingBag``),
    where a set or the default spec is given.
    """
    default_types: tuple = _DEFAULT_DYNAMIC_TYPES
    if dtype == torch.float16:
        default = float16_dynamic_qconfig
    elif isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        raise NotImplementedError(
            f"quantize_dynamic with dtype={dtype}: ferroquant's float weights are float16 (dtype=torch.float16); "
            "use that or dtype=torch.qint8"
        )
    elif _qdtype_name(dtype) == "quint8":
        # weight-only embeddings, as torch
        default, default_types = float_qparams_weight_only_qconfig, (nn.EmbeddingBag, nn.Embedding)
    elif _qdtype_name(dtype) == "quint4x2":
        default, default_types = float_qparams_weight_only_qconfig_4bit, (nn.EmbeddingBag,)
    elif to_qdtype(dtype) != qint8:
        raise NotImplementedError(
            f"quantize_dynamic supports dtype=torch.qint8, torch.float16, torch.quint8 and torch.quint4x2 "
            f"(embeddings), got {dtype}"
        )
    else:
        default = default_dynamic_qconfig
    if qconfig_spec is None:
        # torch's default set for the dtype (nn.RNN, which torch.ao cannot quantize, is opt-in)
        spec: dict[Any, Optional[QConfig]] = dict.fromkeys(default_types, default)
    elif isinstance(qconfig_spec, (set, frozenset, list, tuple)):
        spec = dict.fromkeys(qconfig_spec, default)
    elif isinstance(qconfig_spec, dict):
        spec = dict(qconfig_spec)
    else:
        raise TypeError(f"qconfig_spec must be a set of module types or a dict, got {type(qconfig_spec).__name__}")
    if mapping is None:
        mapping = get_default_dynamic_quant_module_mappings()
    # module types asked for that have no dynamic quantized form: they stay float — say so, once
    # per call, naming them (the model's modules of those types, not the mere request)
    asked = {k for k, v in spec.items() if isinstance(k, type) and v is not None}
    present = {type(m) for m in model.modules()}
    unsupported = sorted(
        t.__name__ for t in asked & present if t not in mapping and canonical_type_of(t) not in mapping
    )
    if unsupported:
        warnings.warn(
            f"quantize_dynamic: no dynamic quantized form for {', '.join(unsupported)} in ferroquant yet; those "
            "modules stay float (supported: " + ", ".join(sorted(t.__name__ for t in mapping)) + ")",
            UserWarning,
            stacklevel=2,
        )
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    propagate_qconfig_(model, spec)
    _swap(model, mapping)
    _remove_qconfig(model)
    return model


_engine_warned = False


def _warn_torch_engine() -> None:
    """torch.backends.quantized.engine plays no role in ferroquant: say so once if it was set."""
    global _engine_warned
    engine = torch.backends.quantized.engine
    default = "qnnpack" if "arm" in str(torch.backends.cpu.get_cpu_capability()).lower() else "x86"
    if not _engine_warned and engine not in (default, "none"):
        _engine_warned = True
        warnings.warn(
            f"torch.backends.quantized.engine = {engine!r} is ignored by ferroquant: results do not depend "
            "on an engine. To pick an ISA path use ferroquant.backends.engine.",
            UserWarning,
            stacklevel=3,
        )


def _observer_hook(module: nn.Module, inputs: Any, output: Any) -> Any:
    # an observer returns its input; a fake-quant (QAT) returns the output rounded to its grid,
    # which then flows on
    return module.activation_post_process(output)


_AVG_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)


def _qat_pool_hook(module: nn.Module, inputs: Any, output: Any) -> Any:
    """Quantization-aware training: average pooling's output rounded as the int8 model rounds it
    (the mean of the integers, requantized onto the input's grid), with the float pool's gradient.
    Without it the fake-quant model would pass unrounded means on, and convert could not match it."""
    from .fake_quantize import grid_of, remember_grid
    from .qtensor import quantize_per_tensor

    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        # the int8 pooling runs outside torch's ops (a trace would freeze it as a constant):
        # traced / compiled QAT models pool in float, as torch.ao's do
        return output
    x = inputs[0] if inputs else None
    grid = grid_of(x)
    if grid is None or not isinstance(output, torch.Tensor) or x.dim() not in (3, 4, 5):
        return output
    scale, zero_point, dtype = grid
    with torch.no_grad():
        # the module's forward itself (not __call__: the user's hooks on it run once, on floats)
        exact = type(module).forward(module, quantize_per_tensor(x.detach(), scale, zero_point, dtype)).dequantize()
    out = output + (exact - output).detach()
    remember_grid(out, scale, zero_point, dtype)
    return out


def _uses_fake_quant(qconfig: Any) -> bool:
    from .fake_quantize import FakeQuantizeBase

    return qconfig is not None and isinstance(qconfig.activation(), FakeQuantizeBase)


def _add_observers(module: nn.Module, mapping: dict[type, type], prefix: str, custom: dict[type, type]) -> None:
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        kind = canonical_type(child)
        qconfig = getattr(child, "qconfig", None)
        if isinstance(child, _AVG_POOLS) and _uses_fake_quant(qconfig):
            child._fq_observer_hook = child.register_forward_hook(_qat_pool_hook)
            continue
        if kind in custom and qconfig is not None:
            _replace(module, name, child, custom[kind].from_float(child), full)
            continue
        if kind.__name__ == "FloatFunctional" and qconfig is not None:
            obs = qconfig.activation()
            obs._owner_name = full
            child.activation_post_process = obs
            continue
        if kind in mapping and kind not in NO_OUTPUT_OBSERVER and qconfig is not None:
            obs = qconfig.activation()
            obs._owner_name = full
            child.add_module("activation_post_process", obs)
            child._fq_observer_hook = child.register_forward_hook(_observer_hook)
            continue
        _add_observers(child, mapping, full, custom)


def prepare(
    model: nn.Module,
    inplace: bool = False,
    allow_list: Optional[set] = None,
    observer_non_leaf_module_list: Optional[set] = None,
    prepare_custom_config_dict: Optional[dict] = None,
) -> nn.Module:
    """Attaches observers for static quantization: propagates ``model.qconfig`` (and per-module
    qconfigs; ``qconfig = None`` keeps a submodule float), then gives every quantizable module
    (QuantStub, Linear, Conv, fused modules, Hardswish, FloatFunctional, ...) an output observer.
    Run calibration data through the result, then ``convert`` it."""
    _warn_torch_engine()
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model)
    mapping = get_default_static_quant_module_mappings()
    if allow_list is not None:
        mapping = {k: v for k, v in mapping.items() if k in allow_list}
    custom = dict((prepare_custom_config_dict or {}).get("float_to_observed_custom_module_class", {}))
    if not any(getattr(m, "qconfig", None) is not None for m in model.modules()):
        warnings.warn(
            "prepare: no module has a qconfig, so nothing will be observed; set model.qconfig",
            UserWarning,
            stacklevel=2,
        )
    _add_observers(model, mapping, "", custom)
    return model


def _strip_observers(module: nn.Module) -> None:
    for m in module.modules():
        hook = m.__dict__.pop("_fq_observer_hook", None)
        if hook is not None:
            hook.remove()
        if "activation_post_process" in m._modules and not hasattr(type(m), "from_float"):
            del m._modules["activation_post_process"]


def _has_range(observer: Any) -> bool:
    """Observers that record a range (not placeholders / fixed qparams)."""
    inner = getattr(observer, "activation_post_process", None)
    obs = inner if isinstance(inner, nn.Module) and hasattr(inner, "min_val") else observer
    return isinstance(getattr(obs, "min_val", None), torch.Tensor)


def _never_observed(observer: Any) -> bool:
    """Whether an output observer (or fake-quant) never saw a batch: its module never ran."""
    inner = getattr(observer, "activation_post_process", None)
    obs = inner if isinstance(inner, nn.Module) and hasattr(inner, "min_val") else observer
    seen = getattr(obs, "min_val", None)
    return isinstance(seen, torch.Tensor) and (seen.numel() == 0 or not bool(torch.isfinite(seen).all()))


class Unreached(nn.Module):
    """What ``convert`` leaves for a module that calibration never reached (an auxiliary head
    used only in training, an expert no batch was routed to): the float module, kept under
    ``.module``, which raises ``CalibrationError`` when called, naming the module and how to
    calibrate it."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module = module
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from .observer import CalibrationError

        raise CalibrationError(
            f"module '{self.name}' ({type(self.module).__name__}) never ran during calibration, so it has no "
            "qparams and convert left it unquantized; calibrate with data that reaches it (for a head used only "
            "in training, calibrate in train mode) and convert again, or set its qconfig = None before prepare "
            "to keep it float"
        )


def _swap(
    module: nn.Module,
    mapping: dict[type, type],
    prefix: str = "",
    custom: Optional[dict[type, type]] = None,
    unreached: Optional[list[str]] = None,
) -> None:
    """Swaps, depth first, every module with a qconfig whose type ``mapping`` (or ``custom``,
    through ``from_observed``) names: prepare_qat, quantize_dynamic and convert all use it.
    ``unreached`` (convert): collects the modules calibration never reached, kept float."""
    custom = custom or {}
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        kind = type(child) if type(child) in custom or type(child) in mapping else canonical_type(child)
        target = custom.get(kind) or mapping.get(kind)
        observer = getattr(child, "activation_post_process", None)
        if (
            unreached is not None
            and target is not None
            and getattr(child, "qconfig", None) is not None
            and isinstance(observer, nn.Module)
            and _never_observed(observer)
            and kind.__name__ != "FloatFunctional"
        ):
            # calibration never reached this module, though it reached others: keep it (float)
            # behind a guard that says so when called
            unreached.append(full)
            _replace(module, name, child, Unreached(child, full), full)
            continue
        # only parts with a qconfig are quantized (qconfig = None keeps a submodule float)
        if target is not None and getattr(child, "qconfig", None) is not None:
            _check_weight_not_empty(child, full)
            if kind in custom and hasattr(target, "from_observed"):
                # torch's custom-module API: observed → quantized
                new = target.from_observed(child)
            else:
                new = _from_float(target, child, full)
            if getattr(new, "_fq_convert_children", False):
                # a container (Sequential): convert inside too, then it picks its TorchScript signature
                _swap(new, mapping, full, custom, unreached)
                new = new.settle()
            _replace(module, name, child, new, full)
        else:
            _swap(child, mapping, full, custom, unreached)


def convert(
    module: nn.Module,
    mapping: Optional[dict[type, type]] = None,
    inplace: bool = False,
    remove_qconfig: bool = True,
    is_reference: bool = False,
    convert_custom_config_dict: Optional[dict] = None,
    use_precomputed_fake_quant: bool = False,
) -> nn.Module:
    """Swaps observed modules for quantized ones: QuantStub → Quantize, DeQuantStub →
    DeQuantize, Linear / Conv / fused modules → their quantized versions with the observed
    output qparams and int8 weights. An observer that saw no data raises ``CalibrationError`` (torch would silently
    use scale 1.0 and zero point 0; docs/numerics.md D5)."""
    if is_reference:
        raise NotImplementedError("reference quantized modules are not available; use is_reference=False")
    _warn_torch_engine()
    if not inplace:
        module = copy.deepcopy(module)
    custom = dict((convert_custom_config_dict or {}).get("observed_to_quantized_custom_module_class", {}))
    # modules calibration never reached stay float behind a guard, when calibration reached others
    # (with no data at all, the first unobserved module raises CalibrationError, as before)
    observers = [m.activation_post_process for m in module.modules() if hasattr(m, "activation_post_process")]
    observers = [o for o in observers if isinstance(o, nn.Module) and hasattr(o, "forward")]
    any_seen = any(not _never_observed(o) for o in observers if _has_range(o))
    unreached: Optional[list[str]] = [] if any_seen else None
    _swap(module, mapping or get_default_static_quant_module_mappings(), "", custom, unreached)
    if unreached:
        warnings.warn(
            f"convert: {len(unreached)} module(s) never ran during calibration and stay unquantized: "
            f"{', '.join(unreached)}. Calling one raises CalibrationError; calibrate with data that reaches them "
            "(train mode for auxiliary heads) or set their qconfig = None",
            UserWarning,
            stacklevel=2,
        )
    _strip_observers(module)
    if remove_qconfig:
        _remove_qconfig(module)
    return module


def quantize(
    model: nn.Module,
    run_fn: Callable[..., Any],
    run_args: Any,
    mapping: Optional[dict[type, type]] = None,
    inplace: bool = False,
) -> nn.Module:
    """Post-training static quantization in one call: prepare, ``run_fn(model, *run_args)`` to
    calibrate, convert."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    prepare(model, inplace=True)
    run_fn(model, *(run_args if isinstance(run_args, (list, tuple)) else [run_args]))
    convert(model, mapping, inplace=True)
    return model


def prepare_qat(model: nn.Module, mapping: Optional[dict[type, type]] = None, inplace: bool = False) -> nn.Module:
    """Prepares a model for quantization-aware training: propagates ``model.qconfig`` (a QAT
    qconfig, e.g. ``get_default_qat_qconfig("x86")``), swaps Linear / Conv and the fused modules of
    ``fuse_modules_qat`` for their QAT versions (``ferroquant.nn.qat``, ``ferroquant.nn.intrinsic.qat``:
    weights through the weight fake-quant, BatchNorm folded while training), and attaches output
    fake-quants as ``prepare`` attaches observers. Train it, then ``convert(model.eval())``: the
    int8 model uses the fake-quants' frozen qparams and computes what the fake-quant model computes
    (within 1 LSB; docs/numerics.md D6/D7)."""
    _warn_torch_engine()
    if not model.training:
        raise ValueError(
            "prepare_qat needs the model in training mode (BatchNorm and the fake-quants' observers follow it): "
            "call model.train() first, as for training"
        )
    if not inplace:
        model = copy.deepcopy(model)
    propagate_qconfig_(model)
    if not any(getattr(m, "qconfig", None) is not None for m in model.modules()):
        warnings.warn(
            "prepare_qat: no module has a qconfig, so nothing will be fake-quantized; set model.qconfig "
            "(e.g. ferroquant.get_default_qat_qconfig('x86'))",
            UserWarning,
            stacklevel=2,
        )
    _swap(model, mapping if mapping is not None else get_default_qat_module_mappings())
    prepare(model, inplace=True)
    return model


def quantize_qat(model: nn.Module, run_fn: Callable[..., Any], run_args: Any, inplace: bool = False) -> nn.Module:
    """Quantization-aware training in one call: ``prepare_qat``, ``run_fn(model, *run_args)`` (your
    training loop, model in train mode), ``convert`` in eval mode."""
    if not inplace:
        model = copy.deepcopy(model)
    model.train()
    prepare_qat(model, inplace=True)
    run_fn(model, *(run_args if isinstance(run_args, (list, tuple)) else [run_args]))
    model.eval()
    convert(model, inplace=True)
    return model
