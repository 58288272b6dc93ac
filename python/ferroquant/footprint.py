"""``memory_footprint``: the bytes a model's tensors and packed kernel weights hold in memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ._core import PackedConv, PackedLinear
from .qtensor import QTensor

__all__ = ["memory_footprint"]

_PACKED = (PackedLinear, PackedConv)
_CONTAINERS = (dict, list, tuple, set, frozenset)
_MAX_DEPTH = 4  # nesting of containers followed inside a module attribute


class _Tally:
    """Bytes counted so far, each storage (by data pointer) and packed object (by id) once."""

    def __init__(self) -> None:
        self.total = 0
        self._storages: set[int] = set()
        self._objects: set[int] = set()

    def storage(self, ptr: int, nbytes: int) -> None:
        if nbytes and ptr not in self._storages:
            self._storages.add(ptr)
            self.total += nbytes

    def packed(self, obj: Any) -> None:
        if id(obj) not in self._objects:
            self._objects.add(id(obj))
            self.total += int(obj.nbytes)


def _count_tensor(t: torch.Tensor, tally: _Tally) -> None:
    if t.device.type == "meta":  # no memory behind it
        return
    if t.is_sparse:  # COO: its index and value tensors
        _count_tensor(t._indices(), tally)
        _count_tensor(t._values(), tally)
        return
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # other layouts without one storage: as if dense
        tally.storage(id(t), t.numel() * t.element_size())
        return
    tally.storage(storage.data_ptr(), storage.nbytes())


def _count_array(a: np.ndarray, tally: _Tally) -> None:
    """An array's whole buffer: the tensor storage it views (``tensor.numpy()``) or the array
    that owns the memory."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    if isinstance(root.base, torch.Tensor):
        _count_tensor(root.base, tally)
    else:
        tally.storage(root.__array_interface__["data"][0], root.nbytes)


def _count(value: Any, tally: _Tally, depth: int = 0) -> None:
    if isinstance(value, torch.Tensor):
        _count_tensor(value, tally)
    elif isinstance(value, np.ndarray):
        _count_array(value, tally)
    elif isinstance(value, QTensor):
        for name in ("_data", "_scales", "_zero_points"):
            t = getattr(value, name, None)
            if isinstance(t, torch.Tensor):
                _count_tensor(t, tally)
    elif isinstance(value, _PACKED):
        tally.packed(value)
    elif isinstance(value, _CONTAINERS) and depth < _MAX_DEPTH:
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if not isinstance(item, nn.Module):  # submodules are counted as modules
                _count(item, tally, depth + 1)


def memory_footprint(model: nn.Module) -> int:
    """(+) Bytes held by ``model`` and its submodules: parameters, buffers, tensors, QTensors and
    numpy arrays kept as module attributes (also inside lists, tuples and dicts), each storage
    counted once however many tensors view it, plus ferroquant's packed kernel weights
    (``PackedLinear`` / ``PackedConv``). torch.ao's packed weights are opaque and not counted."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"memory_footprint expects an nn.Module, got {type(model).__name__}")
    tally = _Tally()
    for module in model.modules():
        for value in vars(module).values():
            if not isinstance(value, nn.Module):
                _count(value, tally)
    return tally.total
