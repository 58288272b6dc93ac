"""How quantized modules run under TorchScript.

TorchScript cannot hold a ``QTensor``, so there a quantized tensor travels as the triple
``(int_repr, scale, zero_point)`` (``QTensor.to_tuple()``'s per-tensor form: a one-element
float64 scale and int64 zero point), and scripted forwards call ``torch.ops.ferroquant.*``.
Every quantized module's forward is annotated with ``QArg``: TorchScript reads the annotation
when it compiles, and sees the tuple; static type checkers see ``QTensor`` as well. The helpers
below are compiled into the scripted modules; each mirrors an eager code path exactly, so
scripted outputs are bit-identical to eager ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple, Union

import torch

from ... import _ops  # noqa: F401  (registers torch.ops.ferroquant.*)

if TYPE_CHECKING:
    from ...qtensor import QTensor

__all__ = ["QTuple", "QArg", "QArgList"]

#: A per-tensor quantized tensor under TorchScript: ``(int_repr, scale, zero_point)``.
QTuple = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]

if TYPE_CHECKING:
    QArg = Union["QTensor", QTuple]
else:
    QArg = QTuple  # what TorchScript sees
QArgList = List[QArg]


def script_qtuple(data: torch.Tensor, scale: float, zero_point: int) -> QTuple:
    """The TorchScript form of a per-tensor quantized tensor."""
    # torch.full, not torch.tensor([scale]): under TorchScript the latter rounds through float32
    return data, torch.full([1], scale, dtype=torch.float64), torch.full([1], zero_point, dtype=torch.int64)


def script_unpack(x: QTuple, who: str) -> Tuple[torch.Tensor, float, int]:
    """(data, scale, zero_point) of a per-tensor quantized tensor in TorchScript form."""
    data, s, z = x
    if s.numel() != 1 or z.numel() != 1:
        raise TypeError(
            who + " expects a per-tensor quantized input (one scale and one zero point), got per-channel qparams"
        )
    return data, float(s.item()), int(z.item())


def script_dtype_info(storage: torch.dtype, who: str) -> Tuple[str, int, int]:
    """(dtype name, qmin, qmax) of the quantized dtype stored as ``storage``."""
    if storage == torch.uint8:
        return "quint8", 0, 255
    if storage == torch.int8:
        return "qint8", -128, 127
    if storage == torch.int32:
        return "qint32", -2147483648, 2147483647
    raise TypeError(who + " expects quantized data stored as torch.uint8, torch.int8 or torch.int32")


def script_dtype_range(name: str) -> Tuple[int, int]:
    """(qmin, qmax) of a quantized dtype name."""
    if name == "quint8":
        return 0, 255
    if name == "qint8":
        return -128, 127
    if name == "qint32":
        return -2147483648, 2147483647
    raise ValueError("unknown quantized dtype '" + name + "'; expected quint8, qint8 or qint32")


def script_dequantize(x: QTuple) -> torch.Tensor:
    """Float32 values of a quantized tensor in TorchScript form (as ``QTensor.dequantize``)."""
    data, s, z = x
    return torch.ops.ferroquant.dequantize(data, s, z, -1)


def script_requantize(
    values: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: str
) -> torch.Tensor:
    """The int data of ``values`` quantized to (scale, zero_point) over ``dtype``'s range, then
    clamped to [quant_min, quant_max] (eager: ``quantize_per_tensor`` and a clamp)."""
    lo, hi = script_dtype_range(dtype)
    q = torch.ops.ferroquant.quantize_per_tensor(values, scale, zero_point, lo, hi, dtype)
    return torch.clamp(q, quant_min, quant_max)
