"""``prepare_fx`` / ``prepare_qat_fx``: trace, fuse, give every node its qconfig and insert observers
(fake-quants for QAT) where convert will need qparams:

- after each op that computes new quantized values (``OWN``: Linear, Conv, add, cat, ...), and
  after a QuantStub left in the model;
- on each float value (a graph input, a float op's result) that a quantized op reads;
- nowhere else: ops that keep their input's qparams (ReLU, pooling, flatten, view, ...) reuse the
  input's observer, as torch's FX mode does, and sigmoid / tanh / softmax have fixed qparams.

The returned GraphModule runs in float (calibrate or train it) and carries what convert needs in
``meta['_fq_fx']`` (per node: its kind and qconfig; per observer: the value it observes).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

from torch import fx, nn

from ..mappings import get_default_qat_module_mappings
from ..quantize import _warn_torch_engine
from . import ops
from .custom_config import PrepareCustomConfig, as_config
from .fuse import _set_module, fuse_graph
from .graph_module import ObservedGraphModule
from .qconfig_resolver import QConfigResolver, as_qconfig_mapping
from .tracer import trace

__all__ = ["prepare", "qconfig_mode", "check_backend_config", "NativeBackendConfig", "CUSTOM"]

CUSTOM = "custom"


class NativeBackendConfig:
    """ferroquant's one backend: its kernels, the patterns of ``ferroquant._fx.ops``
    (``get_native_backend_config()``)."""

    name = "ferroquant"

    def __repr__(self) -> str:
        return "BackendConfig(ferroquant native)"


def check_backend_config(backend_config: Any) -> None:
    if backend_config is None or isinstance(backend_config, NativeBackendConfig):
        return
    raise ValueError(
        f"backend_config={backend_config!r} is not supported: ferroquant runs its own kernels for every op it "
        "quantizes; pass None or ferroquant.get_native_backend_config()"
    )


def qconfig_mode(qconfig: Any) -> Optional[str]:
    """'static', 'dynamic', 'weight_only' (float activations, quantized weights) or None."""
    if qconfig is None:
        return None
    act = qconfig.activation()
    if getattr(act, "is_dynamic", False):
        return "dynamic"
    dtype = getattr(act, "dtype", None)
    name = getattr(dtype, "name", None) or str(dtype)
    if "quint8" in name or "qint8" in name:
        return "static"
    return "weight_only"


def _custom_classes(config: PrepareCustomConfig) -> dict[type, tuple[str, type]]:
    out: dict[type, tuple[str, type]] = {}
    for quant_type, mapping in config.float_to_observed_mapping.items():
        for f, o in mapping.items():
            out[f] = (quant_type, o)
    return out


def prepare(
    model: nn.Module,
    qconfig_mapping: Any,
    example_inputs: Any,
    prepare_custom_config: Any = None,
    backend_config: Any = None,
    is_qat: bool = False,
) -> fx.GraphModule:
    _warn_torch_engine()
    check_backend_config(backend_config)
    mapping = as_qconfig_mapping(qconfig_mapping)
    config = as_config(prepare_custom_config, PrepareCustomConfig)
    if not is_qat and model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(
            "prepare_fx folds BatchNorm into the layer before it with its running statistics and needs the model "
            "in eval mode: call model.eval() first (for quantization-aware training use prepare_qat_fx)"
        )
    if is_qat and not model.training:
        raise ValueError("prepare_qat_fx needs the model in training mode: call model.train() first")
    custom = _custom_classes(config)
    gm, auto = trace(
        copy.deepcopy(model),
        config.non_traceable_module_names,
        (*config.non_traceable_module_classes, *custom),
    )
    for attr in config.preserved_attributes:
        if hasattr(model, attr):
            setattr(gm, attr, getattr(model, attr))
    if auto:
        warnings.warn(
            f"prepare_fx: {len(auto)} submodule(s) could not be traced and stay float, with dequantize / quantize "
            f"at their edges: {', '.join(auto)} (listed in the converted model's float_parts)",
            UserWarning,
            stacklevel=3,
        )
    static = "static"

    def fusable(path: str, module: nn.Module) -> bool:
        return qconfig_mode(QConfigResolver(mapping).for_module(path, module)) == static

    gm = fuse_graph(gm, is_qat=is_qat, allow=fusable)
    ops.mark_values(gm, example_inputs)
    _warn_in_place(gm)
    modules = dict(gm.named_modules(remove_duplicate=False))
    resolver = QConfigResolver(mapping)
    float_names = set(auto) | set(config.non_traceable_module_names)
    # untraceable parts stay float, but dynamic / weight-only qconfigs inside them still apply:
    # convert quantizes them in eager mode (quantize_dynamic with the mapping's qconfig per submodule)
    eager_dynamic: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        mod = modules[target]
        if target in float_names or isinstance(mod, tuple(config.non_traceable_module_classes)):
            spec = {}
            for sub_name, sub in mod.named_modules():
                full = f"{target}.{sub_name}" if sub_name else target
                qc = resolver.for_module(full, sub)
                spec[sub_name] = qc if qconfig_mode(qc) in ("dynamic", "weight_only") else None
            if any(qc is not None for qc in spec.values()):
                eager_dynamic[target] = spec
    qconfigs: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    custom_types: dict[str, str] = {}  # custom module path → its quant type
    for node in gm.graph.nodes:
        qc = resolver.for_node(node, modules)
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if str(node.target) in float_names or isinstance(mod, tuple(config.non_traceable_module_classes)):
                qc = None
            if type(mod) in custom:
                kinds[node.name] = CUSTOM
                custom_types[str(node.target)] = custom[type(mod)][0]
            else:
                kinds[node.name] = ops.op_kind(node, modules)
        else:
            kinds[node.name] = ops.op_kind(node, modules)
        qconfigs[node.name] = qc
    # add → relu, the add's only user: one add_relu, observed after the relu (as torch's FX fusion)
    for node in gm.graph.nodes:
        users = list(node.users)
        if (
            kinds[node.name] == ops.OWN
            and ops.is_tensor_add(node)
            and len(users) == 1
            and ops.is_relu(users[0], modules)
            and qconfig_mode(qconfigs[node.name]) == "static"
            and qconfig_mode(qconfigs[users[0].name]) == "static"
        ):
            kinds[node.name], kinds[users[0].name] = ops.ADD_HEAD, ops.ADD_RELU
    if is_qat:
        qat_mapping = get_default_qat_module_mappings()
        for node in gm.graph.nodes:
            qc = qconfigs[node.name]
            if node.op != "call_module" or qconfig_mode(qc) != "static":
                continue
            mod = modules[str(node.target)]
            target = qat_mapping.get(type(mod))
            if target is not None:
                mod.qconfig = qc
                qat = target.from_float(mod)
                _set_module(gm, str(node.target), qat)
                modules[str(node.target)] = qat
    # custom modules: float → observed
    for node in gm.graph.nodes:
        if kinds[node.name] == CUSTOM and qconfigs[node.name] is not None:
            mod = modules[str(node.target)]
            mod.qconfig = qconfigs[node.name]
            observed = custom[type(mod)][1].from_float(mod)
            _set_module(gm, str(node.target), observed)
            modules[str(node.target)] = observed
    info = _insert_observers(gm, qconfigs, kinds, config, custom_types)
    info.update(
        qconfigs=qconfigs,
        kinds=kinds,
        float_parts=[*auto, *config.non_traceable_module_names],
        is_qat=is_qat,
        output_quantized_indexes=list(config.output_quantized_indexes),
        custom=custom_types,
        eager_dynamic=eager_dynamic,
    )
    observed = ObservedGraphModule(gm, gm.graph, "GraphModule")
    observed.meta["_fq_fx"] = info
    for attr in config.preserved_attributes:
        if hasattr(model, attr):
            setattr(observed, attr, getattr(model, attr))
    return observed


def _insert_observers(
    gm: fx.GraphModule,
    qconfigs: dict[str, Any],
    kinds: dict[str, str],
    config: PrepareCustomConfig,
    custom_types: dict[str, str],
) -> dict[str, Any]:
    graph = gm.graph
    quantized: dict[str, bool] = {}
    observer_of: dict[str, str] = {}  # observer node name → observed node name
    observed: dict[str, fx.Node] = {}  # observed node name → its observer node
    counter = [0]
    sources: dict[str, fx.Node] = {}  # observer node name → the node it observes
    targets: dict[str, str] = {}  # value name → the observer module that observes it
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    input_quantized = {placeholders[i].name for i in config.input_quantized_indexes if i < len(placeholders)}

    def attach(value: fx.Node, target: str) -> None:
        """Calls the observer module ``target`` on ``value``'s output; its users read it there."""
        with graph.inserting_after(value):
            obs = graph.create_node("call_module", target, (value,))
        value.replace_all_uses_with(obs, delete_user_cb=lambda user: user is not obs)
        observed[value.name] = obs
        observer_of[obs.name] = value.name
        sources[obs.name] = value
        targets[value.name] = target

    def observe(value: fx.Node, qconfig: Any) -> None:
        if value.name in observed:
            return
        name = f"activation_post_process_{counter[0]}"
        counter[0] += 1
        setattr(gm, name, qconfig.activation())
        attach(value, name)

    def share(value: fx.Node, target: str) -> None:
        """torch's OUTPUT_SHARE_OBSERVER_WITH_INPUT: the input's observer instance is called on
        this op's output too (a histogram observer then sees both)."""
        attach(value, target)

    for node in list(graph.nodes):
        kind, qc = kinds.get(node.name, ops.FLOAT), qconfigs.get(node.name)
        static = qconfig_mode(qc) == "static"
        if node.op == "placeholder":
            quantized[node.name] = node.name in input_quantized
            continue
        if node.op in ("output", "get_attr") or not static:
            quantized[node.name] = False
            continue
        # (an input may already be read through the observer inserted after it)
        inputs = [sources.get(a.name, a) for a in ops.activation_inputs(node, kind)]
        if kind == CUSTOM and custom_types.get(str(node.target)) != "static":
            quantized[node.name] = False
        elif kind == ops.ADD_HEAD:
            for a in inputs:
                if not quantized.get(a.name, False):
                    observe(a, qc)
            quantized[node.name] = True  # computed by the add_relu after it
        elif kind in (ops.OWN, CUSTOM, ops.ADD_RELU):
            for a in inputs:
                if not quantized.get(a.name, False):
                    observe(a, qc)
            observe(node, qc)
            quantized[node.name] = True
        elif kind == ops.FIXED:
            # fixed output qparams; a float input stays float (its qconfig's fixed-range observer
            # must not quantize it), as torch's FX mode does
            quantized[node.name] = bool(inputs) and quantized.get(inputs[0].name, False)
        elif kind == ops.QUANT:
            observe(node, qc)
            quantized[node.name] = True
        elif kind in (ops.SHARES, ops.SCALAR):
            quantized[node.name] = bool(inputs) and quantized.get(inputs[0].name, False)
            target = targets.get(inputs[0].name) if inputs else None
            if quantized[node.name] and kind == ops.SHARES and target is not None:
                if ops.returns_tuple(node):
                    targets[node.name] = target  # chunk / split: their items share it
                else:
                    share(node, target)
        else:
            quantized[node.name] = False
    graph.lint()
    return {"observer_of": observer_of, "quantized": quantized}


def _warn_in_place(gm: fx.GraphModule) -> None:
    """In-place ops whose result the graph does not use were traced as statements; on a quantized
    value they would change a copy (quantized tensors are separate objects): say so."""
    found = [
        n.name
        for n in gm.graph.nodes
        if not n.users
        and (
            (n.op == "call_method" and str(n.target).endswith("_") and not str(n.target).startswith("__"))
            or (n.op in ("call_function", "call_module") and n.kwargs.get("inplace", False))
        )
    ]
    if found:
        warnings.warn(
            f"prepare_fx: in-place op(s) whose result is not used: {', '.join(found)}. If they act on values the "
            "quantized model computes in int8 their effect is lost; write them out of place (y = y.add(1))",
            UserWarning,
            stacklevel=4,
        )
