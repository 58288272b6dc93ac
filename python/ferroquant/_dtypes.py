"""ferroquant's own quantized dtype and qscheme constants.

They keep user code working after torch drops its quantized dtypes. Every API that takes a
dtype or qscheme also accepts torch's objects (``torch.qint8``, ``torch.per_channel_symmetric``)
and plain strings (``"qint8"``), normalised here.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "QDtype",
    "QScheme",
    "quint8",
    "qint8",
    "qint32",
    "quint4x2",
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
    "to_qdtype",
    "to_qscheme",
]


class QDtype:
    """A quantized dtype name with its integer storage and range."""

    __slots__ = ("name", "storage", "qmin", "qmax", "bits")

    def __init__(self, name: str, storage: torch.dtype, qmin: int, qmax: int, bits: int) -> None:
        self.name = name
        self.storage = storage
        self.qmin = qmin
        self.qmax = qmax
        self.bits = bits

    def __repr__(self) -> str:
        return f"ferroquant.{self.name}"

    def __reduce__(self) -> Any:
        return (to_qdtype, (self.name,))

    def __eq__(self, other: object) -> bool:
        # Equal to torch's dtype of the same name (torch.qint8) and to the name itself.
        if isinstance(other, QDtype):
            return other.name == self.name
        name = other if isinstance(other, str) else _torch_name(other)
        return name == self.name

    def __hash__(self) -> int:
        return hash(("ferroquant.QDtype", self.name))

    @property
    def is_signed(self) -> bool:
        return self.qmin < 0


class QScheme:
    """A quantization scheme name (per-tensor / per-channel, affine / symmetric)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ferroquant.{self.name}"

    def __reduce__(self) -> Any:
        return (to_qscheme, (self.name,))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, QScheme):
            return other.name == self.name
        name = other if isinstance(other, str) else _torch_name(other)
        return name == self.name

    def __hash__(self) -> int:
        return hash(("ferroquant.QScheme", self.name))

    @property
    def per_channel(self) -> bool:
        return self.name.startswith("per_channel")

    @property
    def symmetric(self) -> bool:
        return self.name.endswith("symmetric")


quint8 = QDtype("quint8", torch.uint8, 0, 255, 8)
qint8 = QDtype("qint8", torch.int8, -128, 127, 8)
qint32 = QDtype("qint32", torch.int32, -(2**31), 2**31 - 1, 32)
quint4x2 = QDtype("quint4x2", torch.uint8, 0, 15, 4)

per_tensor_affine = QScheme("per_tensor_affine")
per_tensor_symmetric = QScheme("per_tensor_symmetric")
per_channel_affine = QScheme("per_channel_affine")
per_channel_symmetric = QScheme("per_channel_symmetric")
per_channel_affine_float_qparams = QScheme("per_channel_affine_float_qparams")

_DTYPES = {d.name: d for d in (quint8, qint8, qint32, quint4x2)}
# Plain integer dtypes are accepted as aliases, as torch.ao's observers do.
_ALIASES = {"uint8": quint8, "int8": qint8, "int32": qint32}
_SCHEMES = {
    s.name: s
    for s in (
        per_tensor_affine,
        per_tensor_symmetric,
        per_channel_affine,
        per_channel_symmetric,
        per_channel_affine_float_qparams,
    )
}


def _torch_name(obj: Any) -> str | None:
    """'qint8' for torch.qint8, 'per_tensor_affine' for torch.per_tensor_affine, else None."""
    if isinstance(obj, (torch.dtype, getattr(torch, "qscheme", type(None)))):
        return str(obj).rsplit(".", 1)[-1]
    return None


def is_qdtype_like(obj: Any) -> bool:
    try:
        to_qdtype(obj)
    except TypeError:
        return False
    return True


def to_qdtype(obj: Any) -> QDtype:
    """Normalises a dtype given as ferroquant constant, torch dtype or string."""
    if isinstance(obj, QDtype):
        return obj
    name = obj if isinstance(obj, str) else _torch_name(obj)
    if name is not None:
        if name in _DTYPES:
            return _DTYPES[name]
        if name in _ALIASES:
            return _ALIASES[name]
    raise TypeError(
        f"unsupported quantized dtype {obj!r}; use ferroquant.quint8, ferroquant.qint8, ferroquant.qint32 "
        "(torch.quint8 / torch.qint8 / torch.qint32 and their names are accepted too)"
    )


def to_qscheme(obj: Any) -> QScheme:
    """Normalises a qscheme given as ferroquant constant, torch qscheme or string."""
    if isinstance(obj, QScheme):
        return obj
    name = obj if isinstance(obj, str) else _torch_name(obj)
    if name is not None and name in _SCHEMES:
        return _SCHEMES[name]
    raise TypeError(f"unsupported qscheme {obj!r}; use one of ferroquant.{', ferroquant.'.join(_SCHEMES)}")


def is_float_dtype(obj: Any) -> bool:
    return isinstance(obj, torch.dtype) and obj.is_floating_point
