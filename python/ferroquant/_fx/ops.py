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
    torch.clamp,
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
    "relu_",
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
    "clamp",
    "hardtanh",
    "detach",
}
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


def is_scalar(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
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
            tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if len(tensors) == 1 and any(is_scalar(a) for a in node.args[:2]):
                return SCALAR
            return OWN if len(tensors) == 2 else FLOAT
        if node.target in OWN_FUNCTIONS:
            return OWN
        if node.target in SHARES_FUNCTIONS:
            return SHARES
        if node.target in FIXED_FUNCTIONS:
            return FIXED
        return FLOAT
    if node.op == "call_method":
        if node.target in OWN_METHODS:
            other = node.args[1] if len(node.args) > 1 else None
            if isinstance(other, fx.Node):
                return OWN
            return SCALAR if is_scalar(other) else FLOAT
        if node.target in SHARES_METHODS:
            return SHARES
        if node.target in FIXED_METHODS:
            return FIXED
        return FLOAT
    return FLOAT


def activation_inputs(node: fx.Node, kind: str) -> list[fx.Node]:
    """The graph values a quantized op reads as activations (weights of F.linear / F.conv are not
    activations; ``cat`` reads its list)."""
    if node.op == "call_function" and node.target is torch.cat:
        first = node.args[0] if node.args else node.kwargs.get("tensors")
        return [a for a in first if isinstance(a, fx.Node)]  # type: ignore[union-attr]
    if node.op == "call_function" and node.target in (operator.add, torch.add, operator.mul, torch.mul):
        return [a for a in node.args[:2] if isinstance(a, fx.Node)]
    if node.op == "call_method" and node.target in OWN_METHODS:
        return [a for a in node.args[:2] if isinstance(a, fx.Node)]
    first = node.args[0] if node.args else None
    return [first] if isinstance(first, fx.Node) else []
