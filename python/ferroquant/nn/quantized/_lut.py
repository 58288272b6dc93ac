"""One-pass Rust kernels on the 8-bit data of quantized tensors: a dense 1-D view of any memory
layout (the result keeps the layout), and lookup tables for functions of one quint8 input."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ... import _core
from ..._dtypes import QDtype, per_tensor_affine, quint8
from ...qtensor import QTensor, quantize_per_tensor

__all__ = ["dense_flat", "from_flat", "keeps_layout", "apply_table"]


def dense_flat(d: torch.Tensor) -> Optional[tuple[torch.Tensor, list[int]]]:
    """``d``'s elements as a 1-D tensor in memory order (no copy) and the permutation that
    gives ``d``'s logical order back, or None when ``d`` does not cover its memory densely
    (overlapping or gappy strides) or is not on the CPU."""
    if d.device.type != "cpu":
        return None
    perm = sorted(range(d.dim()), key=lambda i: -d.stride(i))
    v = d.permute(perm)
    if not v.is_contiguous():
        return None
    return v.reshape(-1), perm


def from_flat(flat: torch.Tensor, like: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """The inverse of :func:`dense_flat`: ``flat`` (memory order of ``like``) with ``like``'s
    logical shape, in ``like``'s memory layout when that is contiguous or channels-last (the
    layouts torch's ops keep), else contiguous (as torch returns for other permutations)."""
    shape = [like.shape[i] for i in perm]
    out = flat.reshape(shape).permute([perm.index(i) for i in range(like.dim())])
    return out if keeps_layout(like) else out.contiguous()


def keeps_layout(t: torch.Tensor) -> bool:
    """Whether an elementwise result should keep ``t``'s memory layout: contiguous, or channels
    innermost (channels-last 2d / 3d, and a conv1d's [N, C, L] activations stored as [N, L, C])."""
    if t.is_contiguous():
        return True
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return True
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return True
    return t.dim() == 3 and t.movedim(1, -1).is_contiguous()


def apply_table(
    q: QTensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    dtype: QDtype,
) -> Optional[QTensor]:
    """``clamp(quantize(fn(q.dequantize())), quant_min, quant_max)`` for an elementwise ``fn``, as
    one table lookup per element: the 256 possible inputs go through that float definition once
    (the same operations, so the same bits), then ``_core.lut_u8`` maps the data. None where it
    does not apply (not per-tensor quint8, an output other than quint8 / qint8, an undense layout)."""
    if q.qscheme() != per_tensor_affine or q.dtype != quint8 or dtype.name not in ("quint8", "qint8"):
        return None
    d = q.int_repr()
    dense = dense_flat(d)
    if dense is None:
        return None
    levels = QTensor(torch.arange(256, dtype=torch.uint8), q.q_scale(), q.q_zero_point(), quint8).dequantize()
    table = torch.clamp(quantize_per_tensor(fn(levels), scale, zero_point, dtype).int_repr(), quant_min, quant_max)
    flat, perm = dense
    out = torch.from_numpy(_core.lut_u8(flat.numpy(), table.contiguous().numpy()))
    return QTensor._trusted(from_flat(out, d, perm), scale, zero_point, dtype)
