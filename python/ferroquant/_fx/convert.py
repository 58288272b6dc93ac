"""``convert_fx``: from a prepared (calibrated or trained) GraphModule to one that calls ferroquant's
quantized modules and ops, with a quantize where a float value enters the quantized part and a
dequantize where a quantized value leaves it, and nothing in between where consecutive ops are
quantized. ``convert_to_reference_fx``: the same graph in float with explicit quantize /
dequantize around each quantized op (weights quantized and dequantized), for debugging."""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..mappings import (
    get_default_dynamic_quant_module_mappings,
    get_default_static_quant_module_mappings,
)
from ..nn.quantized import DeQuantize, Quantize
from ..nn.quantized._script import QArg, QArgList
from ..nn.quantized._static import output_qparams
from ..nn.quantized.functional_modules import FloatFunctional, QFunctional
from ..nn.quantized.passthrough import PASSTHROUGH_MODULES
from ..qtensor import quantize_per_tensor
from . import ops
from .custom_config import ConvertCustomConfig, as_config
from .fuse import _set_module
from .graph_module import QuantizedGraphModule, fx_info
from .prepare import CUSTOM, check_backend_config, qconfig_mode

__all__ = ["convert", "convert_reference"]


class QAdd(QFunctional):
    """``a + b`` of two quantized tensors onto observed output qparams (a graph's ``+``)."""

    def forward(self, x: QArg, y: QArg) -> QArg:
        return self.add(x, y)


class QMul(QFunctional):
    """``a * b`` of two quantized tensors onto observed output qparams."""

    def forward(self, x: QArg, y: QArg) -> QArg:
        return self.mul(x, y)


class QAddReLU(QFunctional):
    """``relu(a + b)`` of two quantized tensors onto the observed output qparams of the relu."""

    def forward(self, x: QArg, y: QArg) -> QArg:
        return self.add_relu(x, y)


class QCat(QFunctional):
    """``torch.cat`` of quantized tensors onto observed output qparams."""

    def forward(self, x: QArgList, dim: int = 0) -> QArg:
        return self.cat(x, dim)


class QAddScalar(QFunctional):
    """``x + c`` for a Python number: qparams derived from the input's (torch's rule)."""

    def forward(self, x: QArg, c: float) -> QArg:
        return self.add_scalar(x, c)


class QMulScalar(QFunctional):
    """``x * c`` for a Python number: qparams derived from the input's (torch's rule)."""

    def forward(self, x: QArg, c: float) -> QArg:
        return self.mul_scalar(x, c)


def _functional(cls: type, observer: nn.Module | None) -> QFunctional:
    ff = FloatFunctional()
    if observer is not None:
        ff.activation_post_process = observer
    return cls.from_float(ff)


def _attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor a get_attr node reads (None for anything else)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _float_module_for(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The float module equivalent to a functional op with constant weights (F.linear, F.conv*d,
    F.layer_norm, F.hardswish, F.elu), or None."""
    t = node.target
    if t is F.linear:
        w, b = _attr(gm, _arg(node, 1, "weight", None)), _attr(gm, _arg(node, 2, "bias", None))
        if w is None or (_arg(node, 2, "bias", None) is not None and b is None):
            return None
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        return m
    convs = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
    if t in convs:
        w, b = _attr(gm, _arg(node, 1, "weight", None)), _attr(gm, _arg(node, 2, "bias", None))
        if w is None or (_arg(node, 2, "bias", None) is not None and b is None):
            return None
        groups = _arg(node, 6, "groups", 1)
        padding = _arg(node, 4, "padding", 0)
        m = convs[t](
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride=_arg(node, 3, "stride", 1),
            padding=padding,
            dilation=_arg(node, 5, "dilation", 1),
            groups=groups,
            bias=b is not None,
        )
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        return m
    if t is F.layer_norm:
        shape = _arg(node, 1, "normalized_shape", None)
        w, b = _attr(gm, _arg(node, 2, "weight", None)), _attr(gm, _arg(node, 3, "bias", None))
        if not isinstance(shape, (list, tuple, int)):
            return None
        m = nn.LayerNorm(shape, eps=_arg(node, 4, "eps", 1e-5), elementwise_affine=w is not None)
        if w is not None:
            with torch.no_grad():
                m.weight.copy_(w)
                if b is not None:
                    m.bias.copy_(b)
        return m
    if t is F.hardswish:
        return nn.Hardswish()
    if t is F.elu:
        return nn.ELU(_arg(node, 1, "alpha", 1.0))
    return None


class _Converter:
    def __init__(self, gm: fx.GraphModule, config: ConvertCustomConfig) -> None:
        self.gm = gm
        self.info = gm.meta["_fq_fx"]
        self.config = config
        self.modules = dict(gm.named_modules(remove_duplicate=False))
        self.float_modules = dict(self.modules)  # before any swap: a module may be called twice
        self.swapped: set[str] = set()
        self.graph = fx.Graph()
        self.fenv: dict[str, fx.Node] = {}
        self.qenv: dict[str, fx.Node] = {}
        self.sources: dict[str, fx.Node] = {}
        self.observers: dict[str, nn.Module] = {}
        self.static = get_default_static_quant_module_mappings()
        self.dynamic = get_default_dynamic_quant_module_mappings()
        self.count = 0
        nodes = {n.name: n for n in gm.graph.nodes}
        for obs_name, src_name in self.info["observer_of"].items():
            self.sources[obs_name] = nodes[src_name]
            self.observers[src_name] = self.modules[str(nodes[obs_name].target)]

    # -- values in float and quantized form ---------------------------------------------------
    def _src(self, n: fx.Node) -> fx.Node:
        return self.sources.get(n.name, n)

    def _add_module(self, prefix: str, module: nn.Module) -> str:
        name = f"_fq_{prefix}_{self.count}"
        self.count += 1
        module._fq_name = name
        setattr(self.gm, name, module)
        return name

    def q(self, n: Any) -> Any:
        if not isinstance(n, fx.Node):
            return n
        n = self._src(n)
        if n.name in self.qenv:
            return self.qenv[n.name]
        observer = self.observers.get(n.name)
        if observer is None:
            raise RuntimeError(f"convert_fx: no observer recorded for the float value {n.name!r} a quantized op reads")
        scale, zp, qmin, qmax, dtype = output_qparams(observer, f"the quantize of {n.name!r}")
        quant = Quantize(scale, zp, dtype)
        quant._init_output(scale, zp, qmin, qmax, dtype)
        node = self.graph.call_module(self._add_module("quantize", quant), (self.f(n),))
        self.qenv[n.name] = node
        return node

    def f(self, n: Any) -> Any:
        if not isinstance(n, fx.Node):
            return n
        n = self._src(n)
        if n.name in self.fenv:
            return self.fenv[n.name]
        if n.name not in self.qenv:
            raise RuntimeError(f"convert_fx: value {n.name!r} used before it was computed")
        if not hasattr(self.gm, "_fq_dequantize"):
            self.gm._fq_dequantize = DeQuantize()
        node = self.graph.call_module("_fq_dequantize", (self.qenv[n.name],))
        self.fenv[n.name] = node
        return node

    def map_f(self, a: Any) -> Any:
        return fx.node.map_arg(a, self.f)

    # -- nodes ---------------------------------------------------------------------------------
    def _copy(self, node: fx.Node, transform: Callable[[fx.Node], Any]) -> fx.Node:
        return self.graph.node_copy(node, transform)

    def _swap(self, node: fx.Node, new: nn.Module) -> str:
        """Puts ``new`` where the node's module was, or — when an earlier call of the same module
        already replaced it (each call has its own observed qparams) — beside it; returns the
        path to call."""
        path = str(node.target)
        if path in self.swapped:
            return self._add_module(path.replace(".", "_"), new)
        _set_module(self.gm, path, new)
        new._fq_name = path
        self.modules[path] = new
        self.swapped.add(path)
        return path

    def run(self) -> fx.Graph:
        info = self.info
        for node in self.gm.graph.nodes:
            if node.name in self.sources:
                continue  # an observer: its value is the observed node's
            kind = info["kinds"].get(node.name, ops.FLOAT)
            qc = info["qconfigs"].get(node.name)
            mode = qconfig_mode(qc)
            if node.op == "placeholder":
                new = self._copy(node, lambda a: a)
                new.type = None  # (a string annotation from the model's source would not script)
                if info["quantized"].get(node.name):
                    self.qenv[node.name] = new
                else:
                    self.fenv[node.name] = new
            elif node.op == "output":
                self._output(node)
            elif node.op == "get_attr":
                self.fenv[node.name] = self._copy(node, lambda a: a)
            elif mode == "static" and info["quantized"].get(node.name):
                self._quantized(node, kind, qc)
            elif mode in ("dynamic", "weight_only") and self._weights_only(node, kind, qc):
                pass
            elif kind == CUSTOM and qc is not None:
                self._custom(node, quantized=False)
            elif kind == ops.DEQUANT:
                self.fenv[node.name] = self.f(node.args[0])
            elif node.op == "call_module" and str(node.target) in info.get("eager_dynamic", {}):
                self._eager_dynamic(node, info["eager_dynamic"][str(node.target)])
            else:
                self.fenv[node.name] = self._copy(node, self.f)
        return self.graph

    def _output(self, node: fx.Node) -> None:
        keep = set(self.info.get("output_quantized_indexes", []))
        out = node.args[0]
        if keep and isinstance(out, (tuple, list)):
            mapped = type(out)((self.q(v) if i in keep and self._is_q(v) else self.map_f(v)) for i, v in enumerate(out))
        elif keep and 0 in keep and isinstance(out, fx.Node) and self._is_q(out):
            mapped = self.q(out)
        else:
            mapped = self.map_f(out)
        self.graph.output(mapped)

    def _is_q(self, v: Any) -> bool:
        return isinstance(v, fx.Node) and self._src(v).name in self.qenv

    def _module_input_args(self, node: fx.Node) -> tuple:
        first, *rest = node.args
        return (self.q(first), *[self.map_f(a) for a in rest])

    def _quantized(self, node: fx.Node, kind: str, qc: Any) -> None:
        observer = self.observers.get(node.name)
        if kind == CUSTOM:
            self._custom(node, quantized=True)
            return
        if kind == ops.ADD_HEAD:
            return  # computed by the add_relu that follows
        if kind == ops.ADD_RELU:
            head = self._src(node.args[0])
            name = self._add_module("qaddrelu", _functional(QAddReLU, observer))
            self.qenv[node.name] = self.graph.call_module(name, (self.q(head.args[0]), self.q(head.args[1])))
            return
        if node.op == "call_module":
            mod = self.float_modules[str(node.target)]
            if kind in (ops.OWN, ops.QUANT):
                mod.qconfig = qc
                mod.activation_post_process = observer
                target = self.static.get(type(mod)) or self.static.get(_canonical(mod))
                path = self._swap(node, target.from_float(mod))
                args = (self.f(node.args[0]),) if kind == ops.QUANT else self._module_input_args(node)
                self.qenv[node.name] = self.graph.call_module(path, args, self.map_f(node.kwargs))
                return
            if kind == ops.SHARES:
                target = self.static.get(type(mod))
                path = str(node.target)
                if target is not None and path not in self.swapped:
                    mod.qconfig = qc
                    path = self._swap(node, target.from_float(mod))
                self.qenv[node.name] = self.graph.call_module(
                    path, self._module_input_args(node), self.map_f(node.kwargs)
                )
                return
            # FIXED modules (Sigmoid, Tanh, ...) run on the quantized tensor
            self.qenv[node.name] = self.graph.call_module(
                str(node.target), self._module_input_args(node), self.map_f(node.kwargs)
            )
            return
        t = node.target
        if kind == ops.OWN and (t in (operator.add, torch.add, operator.mul, torch.mul) or t in ops.OWN_METHODS):
            cls = QAdd if t in (operator.add, torch.add, "add") else QMul
            name = self._add_module(cls.__name__.lower(), _functional(cls, observer))
            self.qenv[node.name] = self.graph.call_module(name, (self.q(node.args[0]), self.q(node.args[1])))
            return
        if kind == ops.OWN and t is torch.cat:
            tensors = node.args[0] if node.args else node.kwargs["tensors"]
            dim = _arg(node, 1, "dim", 0)
            name = self._add_module("cat", _functional(QCat, observer))
            self.qenv[node.name] = self.graph.call_module(name, ([self.q(a) for a in tensors], dim))
            return
        if kind == ops.OWN:
            float_mod = _float_module_for(self.gm, node)
            if float_mod is None:
                self.fenv[node.name] = self._copy(node, self.f)
                return
            float_mod.qconfig = qc
            float_mod.activation_post_process = observer
            qmod = self.static[type(float_mod)].from_float(float_mod)
            name = self._add_module(type(float_mod).__name__.lower(), qmod)
            self.qenv[node.name] = self.graph.call_module(name, (self.q(node.args[0]),))
            return
        if kind == ops.SCALAR:
            tensor = node.args[0] if isinstance(node.args[0], fx.Node) else node.args[1]
            scalar = node.args[1] if tensor is node.args[0] else node.args[0]
            cls = QAddScalar if t in (operator.add, torch.add, "add") else QMulScalar
            name = self._add_module(cls.__name__.lower(), _functional(cls, None))
            value = self.map_f(scalar) if isinstance(scalar, fx.Node) else float(scalar)
            self.qenv[node.name] = self.graph.call_module(name, (self.q(tensor), value))
            return
        if t is torch.flatten and kind == ops.SHARES:
            start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            name = self._add_module("flatten", PASSTHROUGH_MODULES[nn.Flatten].from_float(nn.Flatten(start, end)))
            self.qenv[node.name] = self.graph.call_module(name, (self.q(node.args[0]),))
            return
        if t in (F.relu, torch.relu) and kind == ops.SHARES and len(node.args) == 1:
            name = self._add_module("relu", PASSTHROUGH_MODULES[nn.ReLU].from_float(nn.ReLU()))
            self.qenv[node.name] = self.graph.call_module(name, (self.q(node.args[0]),))
            return
        # SHARES / FIXED functions and methods: the same op on the quantized tensor
        first = node.args[0] if node.args else None
        first_src = self._src(first) if isinstance(first, fx.Node) else None

        def transform(a: fx.Node) -> Any:
            return self.q(a) if first_src is not None and self._src(a) is first_src else self.f(a)

        if node.op == "call_method" and t in ops.METHOD_AS_FUNCTION:
            # QTensor has no .relu() / .sigmoid() / .tanh(): the function forms
            self.qenv[node.name] = self.graph.call_function(
                ops.METHOD_AS_FUNCTION[t], (self.q(node.args[0]), *self.map_f(node.args[1:])), self.map_f(node.kwargs)
            )
            return
        if t is operator.getitem:
            self.qenv[node.name] = self._copy(node, lambda a: self.q(a) if self._is_q(a) else self.f(a))
            return
        self.qenv[node.name] = self._copy(node, transform)

    def _weights_only(self, node: fx.Node, kind: str, qc: Any) -> bool:
        """Dynamic / weight-only quantization of a module or F.linear: float in, float out."""
        if node.op == "call_module":
            path = str(node.target)
            mod = self.float_modules[path]
            target = self.dynamic.get(type(mod)) or self.dynamic.get(_canonical(mod))
            if target is None:
                return False
            if path not in self.swapped:  # dynamic modules have no per-call qparams: calls share one
                mod.qconfig = qc
                self._swap(node, target.from_float(mod))
            self.fenv[node.name] = self.graph.call_module(path, self.map_f(node.args), self.map_f(node.kwargs))
            return True
        if node.target is F.linear:
            float_mod = _float_module_for(self.gm, node)
            if float_mod is None:
                return False
            float_mod.qconfig = qc
            name = self._add_module("linear", self.dynamic[nn.Linear].from_float(float_mod))
            self.fenv[node.name] = self.graph.call_module(name, (self.f(node.args[0]),))
            return True
        if node.target is F.embedding:
            weight = _attr(self.gm, _arg(node, 1, "weight", None))
            defaults = {"max_norm": None, "norm_type": 2.0, "scale_grad_by_freq": False, "sparse": False}
            names = ["input", "weight", "padding_idx", *defaults]
            given = {**dict(zip(names, node.args)), **node.kwargs}
            if weight is None or any(given.get(k, v) != v for k, v in defaults.items()):
                return False  # max_norm (renormalises rows) and the training options: keep it float
            float_mod = nn.Embedding.from_pretrained(weight.detach(), padding_idx=_arg(node, 2, "padding_idx", None))
            float_mod.qconfig = qc
            name = self._add_module("embedding", self.dynamic[nn.Embedding].from_float(float_mod))
            self.fenv[node.name] = self.graph.call_module(name, (self.f(_arg(node, 0, "input", None)),))
            return True
        return False

    def _eager_dynamic(self, node: fx.Node, spec: dict[str, Any]) -> None:
        """An untraceable part: its dynamic / weight-only submodules quantized in eager mode."""
        from ..quantize import quantize_dynamic

        path = str(node.target)
        if path not in self.swapped:
            self._swap(node, quantize_dynamic(self.float_modules[path], spec, mapping=self.dynamic))
        self.fenv[node.name] = self.graph.call_module(path, self.map_f(node.args), self.map_f(node.kwargs))

    def _custom(self, node: fx.Node, quantized: bool) -> None:
        observed = self.float_modules[str(node.target)]
        quant_type = self.info["custom"].get(str(node.target), "static")
        mapping = self.config.observed_to_quantized_mapping.get(quant_type, {})
        target = mapping.get(type(observed))
        if target is None:
            raise ValueError(
                f"convert_fx: no quantized class for the observed custom module {type(observed).__name__} "
                f"('{node.target}', {quant_type}); give it with ConvertCustomConfig().set_observed_to_quantized_mapping"
            )
        if quantized:
            observed.activation_post_process = self.observers.get(node.name)
        path = self._swap(node, target.from_observed(observed))
        args = self._module_input_args(node) if quantized else self.map_f(node.args)
        new = self.graph.call_module(path, args, self.map_f(node.kwargs))
        (self.qenv if quantized else self.fenv)[node.name] = new


def _canonical(mod: nn.Module) -> type:
    from ..mappings import canonical_type

    return canonical_type(mod)


def _finish(gm: fx.GraphModule, graph: fx.Graph, info: dict) -> fx.GraphModule:
    out = QuantizedGraphModule(gm, graph, "GraphModule")
    out.meta["_fq_fx"] = {"float_parts": list(info.get("float_parts", []))}
    out.graph.eliminate_dead_code()
    out.graph.lint()
    out.delete_all_unused_submodules()
    out.recompile()
    return out


def convert(gm: fx.GraphModule, convert_custom_config: Any = None, backend_config: Any = None) -> fx.GraphModule:
    check_backend_config(backend_config)
    fx_info(gm, "convert_fx")
    gm = copy.deepcopy(gm)
    gm.eval()
    converter = _Converter(gm, as_config(convert_custom_config, ConvertCustomConfig))
    return _finish(gm, converter.run(), gm.meta["_fq_fx"])


class _QuantDequant(nn.Module):
    """Reference form of a quantize → dequantize pair (float in, float out)."""

    def __init__(self, scale: float, zero_point: int, dtype: Any) -> None:
        super().__init__()
        self.scale, self.zero_point, self.dtype = scale, zero_point, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_per_tensor(x, self.scale, self.zero_point, self.dtype).dequantize()

    def extra_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}, dtype={self.dtype}"


def convert_reference(gm: fx.GraphModule, convert_custom_config: Any = None) -> fx.GraphModule:
    """The reference model: each observer becomes an explicit quantize → dequantize, and each
    weighted op's weight its quantize → dequantize values; every op runs in float."""
    fx_info(gm, "convert_to_reference_fx")
    gm = copy.deepcopy(gm)
    gm.eval()
    info = gm.meta["_fq_fx"]
    nodes = {n.name: n for n in gm.graph.nodes}
    for obs_name in info["observer_of"]:
        node = nodes[obs_name]
        observer = gm.get_submodule(str(node.target))
        if isinstance(observer, _QuantDequant):
            continue  # an observer shared by several ops (torch's OUTPUT_SHARE_OBSERVER_WITH_INPUT)
        scale, zp, _qmin, _qmax, dtype = output_qparams(observer, f"observer {node.target}")
        _set_module(gm, str(node.target), _QuantDequant(scale, zp, dtype))
    for node in gm.graph.nodes:
        if node.op != "call_module" or qconfig_mode(info["qconfigs"].get(node.name)) != "static":
            continue
        mod = gm.get_submodule(str(node.target))
        inner = mod[0] if isinstance(mod, nn.Sequential) and len(mod) else mod
        weight = getattr(inner, "weight", None)
        weighted = hasattr(inner, "out_features") or hasattr(inner, "out_channels")
        if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weighted:
            from ..nn.quantized._weights import quantize_weight

            qw = quantize_weight(weight, info["qconfigs"][node.name].weight())
            with torch.no_grad():
                weight.copy_(qw.dequantize())
    gm.recompile()
    out = QuantizedGraphModule(gm, gm.graph, "GraphModule")
    out.meta["_fq_fx"] = {"float_parts": list(info.get("float_parts", []))}
    return out
