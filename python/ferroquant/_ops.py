"""ferroquant's ops registered with ``torch.library`` as ``torch.ops.ferroquant.*``.

They take quantized tensors in their TorchScript form ``(int tensor, scale, zero_point)`` and
are what converted modules call under ``torch.jit.script``; the eager path calls the kernels
directly (no dispatcher overhead). Packed weights are rebuilt on demand and cached by the
identity and version of the int8 weight tensor.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from . import _core
from ._threads import get_num_threads

__all__ = ["packed_linear_for"]

_CACHE: OrderedDict[tuple, _core.PackedLinear] = OrderedDict()
_CACHE_SIZE = 64


def packed_linear_for(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> _core.PackedLinear:
    """PackedLinear for an int8 weight tensor and its (1 or per-row) qparams, cached."""
    key = (
        weight.data_ptr(),
        weight._version,
        tuple(weight.shape),
        scale.data_ptr(),
        scale._version,
        zero_point.data_ptr(),
        zero_point._version,
    )
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    packed = _core.PackedLinear(
        weight.detach().contiguous().numpy(),
        scale.detach().to(torch.float32).reshape(-1).contiguous().numpy(),
        zero_point.detach().to(torch.int32).reshape(-1).contiguous().numpy(),
    )
    _CACHE[key] = packed
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return packed


@torch.library.custom_op("ferroquant::quantize_per_tensor", mutates_args=())
def quantize_per_tensor_op(
    x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: str
) -> torch.Tensor:
    data = _core.quantize_per_tensor(
        x.detach().to(torch.float32).contiguous().numpy(), scale, zero_point, quant_min, quant_max, dtype
    )
    return torch.from_numpy(data)


@quantize_per_tensor_op.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: str) -> torch.Tensor:
    storage = {"quint8": torch.uint8, "qint8": torch.int8, "qint32": torch.int32}[dtype]
    return torch.empty_like(x, dtype=storage)


@torch.library.custom_op("ferroquant::dequantize", mutates_args=())
def dequantize_op(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    qn = q.contiguous().numpy()
    if axis < 0:
        out = _core.dequantize_per_tensor(qn, float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]))
    else:
        out = _core.dequantize_per_channel(
            qn,
            scale.to(torch.float32).contiguous().numpy(),
            zero_point.to(torch.int32).contiguous().numpy(),
            axis,
        )
    return torch.from_numpy(out)


@dequantize_op.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty_like(q, dtype=torch.float32)


@torch.library.custom_op("ferroquant::linear_dynamic", mutates_args=())
def linear_dynamic_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    reduce_range: bool,
    per_row: bool = False,
) -> torch.Tensor:
    packed = packed_linear_for(weight, weight_scale, weight_zero_point)
    k = weight.shape[1]
    x2 = x.detach().to(torch.float32).reshape(-1, k).contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous().numpy()
    out, _, _ = packed.linear_dynamic(x2.numpy(), b, reduce_range, False, get_num_threads(), per_row)
    return torch.from_numpy(out).reshape(*x.shape[:-1], weight.shape[0])


@linear_dynamic_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: Optional[torch.Tensor],
    reduce_range: bool,
    per_row: bool = False,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)
