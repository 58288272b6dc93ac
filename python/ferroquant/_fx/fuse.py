"""Fusion on the traced graph: [conv, bn, relu], [conv, bn], [conv, relu], [linear, relu],
[linear, bn], [bn, relu], [conv-transpose, bn] — the eager ``fuse_modules`` patterns, found in the
graph (a functional ``F.relu`` / ``torch.relu`` / ``.relu()`` counts as a ReLU), each earlier op's
output used only by the next. The fused module replaces the first op's module; the others leave
the graph. Eval mode folds BatchNorm (post-training); ``is_qat`` builds the QAT fused modules."""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..fuse_modules import get_fuser_method

__all__ = ["fuse_graph"]

_RELU_FUNCTIONS = (F.relu, torch.relu)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACT = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
# (first, second[, third]) as predicates over a node's module (None for functional relu)
_PATTERNS: list[tuple[tuple[type, ...], ...]] = [
    (_CONV, _BN, _ACT),
    (_CONV, _BN),
    (_CONV, _ACT),
    ((nn.Linear,), _ACT),
    ((nn.Linear,), (nn.BatchNorm1d,)),
    ((nn.BatchNorm2d, nn.BatchNorm3d), (nn.ReLU,)),
    (_CONV_T, _BN),
]


def _module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    if node.op == "call_module":
        return modules.get(str(node.target))
    if (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
        node.op == "call_method" and node.target == "relu"
    ):
        if len(node.args) == 1 and not node.kwargs.get("inplace", False):
            return nn.ReLU()
    return None


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, module)


def fuse_graph(
    gm: fx.GraphModule, is_qat: bool = False, allow: Optional[Callable[[str, nn.Module], bool]] = None
) -> fx.GraphModule:
    """Fuses in place. ``allow(path, module)``: whether the op at ``path`` may be fused (prepare
    fuses only what is quantized statically). A module called more than once is not fused (the
    fused module would change its other calls too)."""
    modules = dict(gm.named_modules(remove_duplicate=False))
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    changed = True
    while changed:
        changed = False
        for node in list(gm.graph.nodes):
            first = _module(node, modules)
            if node.op != "call_module" or first is None or calls.get(str(node.target), 0) > 1:
                continue
            if allow is not None and not allow(str(node.target), first):
                continue
            for pattern in _PATTERNS:
                if not isinstance(first, pattern[0]):
                    continue
                chain, mods = [node], [first]
                for types in pattern[1:]:
                    prev = chain[-1]
                    users = list(prev.users)
                    if len(users) != 1:
                        break
                    nxt = users[0]
                    m = _module(nxt, modules)
                    if m is None or not isinstance(m, types) or nxt.args[0] is not prev:
                        break
                    if nxt.op == "call_module" and calls.get(str(nxt.target), 0) > 1 and not isinstance(m, _ACT):
                        break  # a BatchNorm used twice
                    if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6) and m.min_val != 0:
                        break  # only Hardtanh(0, max) is a ReLU with a bound
                    chain.append(nxt)
                    mods.append(m)
                if len(chain) != len(pattern):
                    continue
                fuser = get_fuser_method(tuple(type(m) for m in mods), is_qat=is_qat)
                # an activation module may be called elsewhere too (torchvision's self.relu): the
                # fused module gets its own copy
                fused = fuser(*[copy.deepcopy(m) if isinstance(m, _ACT) else m for m in mods])
                _set_module(gm, str(node.target), fused)
                modules[str(node.target)] = fused
                for later in reversed(chain[1:]):
                    later.replace_all_uses_with(chain[0])
                    gm.graph.erase_node(later)
                changed = True
                break
            if changed:
                break
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
