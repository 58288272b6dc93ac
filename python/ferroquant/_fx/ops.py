"""What each graph op is for quantization.

- ``OWN``: computes new values with its own output qparams (an observer after it): the modules of
  the static mapping (Linear, Conv, fused, norms, ...), ``add`` / ``mul`` of two tensors, ``cat``,
  ``F.linear`` / ``F.conv*d`` / ``F.layer_norm`` / ``F.hardswish`` / ``F.elu``.
- ``SHARES``: keeps its input's qparams (ReLU, max / average pooling, flatten, view, reshape,
  permute, dropout, mean, interpolate, ...): quantized exactly when its input is, no observer.
- ``FIXED``: fixed output qparams, as torch (sigmoid, hardsigmoid, tanh, softmax).
- ``SCALAR``: ``add`` / ``mul`` with a Python number: the output qparams follow from the input's.
- ``QUANT`` / ``DEQUANT``: an eager-mode QuantStub / DeQuantStub left in the model.
- ``WEIGHTS``: embeddings: weight-only (float-qparams rows), float output.
- ``ADD_HEAD`` / ``ADD_RELU``: an ``add`` of two tensors whose only user is a ReLU, quantized as
  one ``add_relu`` with the observer after the ReLU (as torch's FX mode fuses them).
- ``FLOAT``: anything else runs in float; quantized inputs are dequantized for it.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..mappings import DEFAULT_STATIC_QUANT_MODULE_MAPPINGS, NO_OUTPUT_OBSERVER, canonical_type
from ..nn.quantized.passthrough import PASSTHROUGH_MODULES
from ..stubs import DeQuantStub, QuantStub

OWN, SHARES, FIXED, SCALAR, QUANT, DEQUANT, WEIGHTS, FLOAT = (
    "own",
    "shares",
    "fixed",
    "scalar",
    "quant",
    "dequant",
    "weights",
    "float",
)

OWN_FUNCTIONS: set[Callable] = {
    operator.add,
    torch.add,
    operator.mul,
    torch.mul,
    torch.cat,
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.layer_norm,
    F.hardswish,
    F.elu,
}
OWN_METHODS = {"add", "mul"}
SHARES_FUNCTIONS: set[Callable] = {
    F.relu,
    torch.relu,
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.flatten,
    torch.mean,
    F.dropout,
    F.interpolate,
    torch.transpose,
    torch.permute,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    operator.getitem,
}
SHARES_METHODS = {
    "relu",
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "mean",
    "chunk",
    "split",
    "detach",
}
# method forms QTensor has no method for: convert calls these functions instead
METHOD_AS_FUNCTION: dict[str, Callable] = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
# methods that return shapes or other plain values: they run on whichever form exists
META_METHODS = {"size", "dim", "numel", "shape"}
FIXED_FUNCTIONS: set[Callable] = {torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardsigmoid, F.softmax, torch.softmax}
FIXED_METHODS = {"sigmoid", "tanh", "softmax"}
FIXED_MODULES: tuple[type, ...] = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softmax)
SHARES_MODULES: tuple[type, ...] = (
    *PASSTHROUGH_MODULES,
    *PASSTHROUGH_MODULES.values(),
    nn.Dropout,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)


ADD_HEAD, ADD_RELU = "add_head", "add_relu"


def is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(str(node.target))) in (nn.ReLU, PASSTHROUGH_MODULES[nn.ReLU])
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu) and not node.kwargs.get("inplace", False)
    return node.op == "call_method" and node.target == "relu"


def is_tensor_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in (operator.add, torch.add):
        return all(isinstance(a, fx.Node) for a in node.args[:2]) and len(node.args) == 2 and not node.kwargs
    return (
        node.op == "call_method" and node.target == "add" and len(node.args) == 2 and isinstance(node.args[1], fx.Node)
    )


def returns_tuple(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (torch.chunk, torch.split)) or (
        node.op == "call_method" and node.target in ("chunk", "split")
    )


def mark_values(gm: fx.GraphModule, example_inputs: Any) -> None:
    """Records which values are tensors (and their dtypes): shape propagation on a copy of the
    model with ``example_inputs`` (a copy: a training-mode model's BatchNorm statistics must not
    move); without it (or where it fails), values computed from ``.shape`` / ``size()`` / ``dim()``
    / ``numel()`` and arithmetic on them are marked as plain numbers."""
    import copy

    from torch.fx.passes.shape_prop import ShapeProp

    if example_inputs is not None:
        inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        shadow = copy.deepcopy(gm)
        try:
            with torch.no_grad():
                ShapeProp(shadow).propagate(*inputs)
        except Exception:  # noqa: BLE001 - the heuristic below takes over
            shadow = None
        if shadow is not None:
            metas = {n.name: n.meta for n in shadow.graph.nodes}
            for n in gm.graph.nodes:
                for key in ("tensor_meta", "type"):
                    if key in metas.get(n.name, {}):
                        n.meta[key] = metas[n.name][key]
            return
    for n in gm.graph.nodes:
        shape_like = (n.op == "call_function" and n.target is getattr and n.args[1:2] == ("shape",)) or (
            n.op == "call_method" and n.target in META_METHODS
        )
        derived = (
            n.op == "call_function"
            and n.target in _ARITHMETIC
            and all(not isinstance(a, fx.Node) or a.meta.get("fq_not_tensor") for a in n.args)
            and any(isinstance(a, fx.Node) for a in n.args)
        )
        if shape_like or derived:
            n.meta["fq_not_tensor"] = True


_ARITHMETIC = {
    operator.getitem,
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.pow,
}


def is_scalar(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def is_float_tensor(value: Any) -> bool:
    """Whether a graph value is a floating-point tensor: from shape propagation when it ran
    (``tensor_meta``), else assumed for every node except shape / size arithmetic."""
    if not isinstance(value, fx.Node):
        return False
    meta = value.meta.get("tensor_meta")
    if meta is not None:
        return bool(getattr(meta, "dtype", torch.float32).is_floating_point)
    # shape propagation ran and found no tensor, or the value comes from shapes / sizes
    return "type" not in value.meta and not value.meta.get("fq_not_tensor", False)


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    kind = _op_kind(node, modules)
    if kind in (OWN, FIXED, SHARES):
        inputs = activation_inputs(node, kind)
        if not inputs or not all(is_float_tensor(a) for a in inputs):
            return FLOAT  # keyword-only inputs, int tensors, shapes: not activations to quantize
    if kind == OWN and node.op != "call_module" and node.kwargs and set(node.kwargs) - {"dim"}:
        return FLOAT  # add(..., alpha=2) and other keyword forms run in float
    return kind


def _op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        mod = modules[node.target]  # type: ignore[index]
        kind = canonical_type(mod)
        if kind is QuantStub:
            return QUANT
        if kind is DeQuantStub:
            return DEQUANT
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
            return WEIGHTS
        if isinstance(mod, FIXED_MODULES):
            return FIXED
        if type(mod) in SHARES_MODULES:
            return SHARES
        if kind in DEFAULT_STATIC_QUANT_MODULE_MAPPINGS and kind not in NO_OUTPUT_OBSERVER:
            return OWN if kind.__name__ != "FloatFunctional" else FLOAT
        return FLOAT
    if node.op == "call_function":
        if node.target in (operator.add, torch.add, operator.mul, torch.mul):
            if node.kwargs:
                return FLOAT  # alpha=...: not a plain add
            return _binary_kind(node.args[:2])
        if node.target in OWN_FUNCTIONS:
            return OWN
        if node.target in SHARES_FUNCTIONS:
            return SHARES
        if node.target in FIXED_FUNCTIONS:
            return FIXED
        return FLOAT
    if node.op == "call_method":
        if node.target in OWN_METHODS:
            if node.kwargs or len(node.args) != 2:
                return FLOAT
            return _binary_kind(node.args[:2])
        if node.target in SHARES_METHODS:
            return SHARES
        if node.target in FIXED_METHODS:
            return FIXED
        return FLOAT
    return FLOAT


def _binary_kind(args: tuple) -> str:
    """add / mul: two float tensors → OWN; one float tensor and a number (a constant, or a value
    computed from shapes) → SCALAR; anything else → FLOAT."""
    tensors = [a for a in args if is_float_tensor(a)]
    if len(tensors) == 2:
        return OWN
    others = [a for a in args if a is not (tensors[0] if tensors else None)]
    if len(tensors) == 1 and len(others) == 1:
        other = others[0]
        if is_scalar(other) or (isinstance(other, fx.Node) and _is_number(other)):
            return SCALAR
    return FLOAT


def _is_number(node: fx.Node) -> bool:
    """A graph value known (from shape propagation) to be a Python number."""
    return node.meta.get("type") in (int, float) or bool(node.meta.get("fq_not_tensor", False))


def activation_inputs(node: fx.Node, kind: str) -> list[fx.Node]:
    """The graph values a quantized op reads as activations (weights of F.linear / F.conv are not
    activations; ``cat`` reads its list)."""
    if node.op == "call_function" and node.target is torch.cat:
        first = node.args[0] if node.args else node.kwargs.get("tensors")
        if not isinstance(first, (list, tuple)):
            return []  # cat of a split's result (a single tuple value): runs in float
        return [a for a in first if isinstance(a, fx.Node)]
    if node.op == "call_function" and node.target in (operator.add, torch.add, operator.mul, torch.mul):
        return [a for a in node.args[:2] if isinstance(a, fx.Node)]
    if node.op == "call_method" and node.target in OWN_METHODS:
        return [a for a in node.args[:2] if isinstance(a, fx.Node)]
    first = node.args[0] if node.args else None
    return [first] if isinstance(first, fx.Node) else []
