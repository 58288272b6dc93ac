"""Weight-only quantized embeddings (torch: ``nn.quantized.Embedding`` / ``EmbeddingBag``): 8-bit
(``quint8``) or 4-bit (``quint4x2``) rows, each with its own float scale and float zero point
(``float_qparams_weight_only_qconfig`` / ``_4bit``); lookups and bags return float32.

A stored value ``q`` of row ``r`` means ``(q − zero_point[r]) · scale[r]`` (torch's dequantize);
bags add their rows in index order (times ``per_sample_weights``), ``mean`` divides by the bag's
size, ``max`` takes the maximum — in Rust (``ferroquant._core.EmbeddingTable``), the same bits on
every engine. Beyond torch.ao: ``mean`` and ``max`` bags and 4-bit ``Embedding`` work (torch.ao's
quantized EmbeddingBag reduces every mode as a sum).

state_dict keys: ``weight`` (uint8 ``[rows, row_bytes]``: one byte per value, or two 4-bit values
per byte with the even one in the low nibble), ``weight_scale`` and ``weight_zero_point``
(float32 ``[rows]``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..._core import EmbeddingTable
from ..._dtypes import quint4x2, quint8, to_qdtype, to_qscheme
from ..._ops import KERNEL_ERRORS, raise_named
from ._weights import AtomicLoad

__all__ = ["Embedding", "EmbeddingBag", "quantize_rows"]


def _bits(dtype: Any) -> int:
    qd = to_qdtype(dtype)
    if qd == quint8:
        return 8
    if qd == quint4x2:
        return 4
    raise NotImplementedError(f"quantized embeddings hold quint8 or quint4x2 rows, got {dtype}")


def _row_bytes(dim: int, bits: int) -> int:
    return dim if bits == 8 else (dim + 1) // 2


def quantize_rows(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """The stored bytes of ``weight`` (``[rows, dim]``) with per-row float qparams, torch's rule
    ``clamp(rne(w · (1/scale) + zero_point), 0, 2^bits − 1)``, packed (4 bits: two per byte)."""
    w = weight.detach().to(torch.float32)
    s = scale.detach().to(torch.float32).reshape(-1, 1)
    z = zero_point.detach().to(torch.float32).reshape(-1, 1)
    q = torch.clamp(torch.round(w * (1.0 / s) + z), 0, (1 << bits) - 1).to(torch.uint8)
    if bits == 8:
        return q.contiguous()
    if q.shape[1] % 2:
        q = torch.cat([q, torch.zeros(q.shape[0], 1, dtype=torch.uint8)], 1)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def _unpack(data: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    if bits == 8:
        return data
    lo, hi = data & 0x0F, data >> 4
    return torch.stack([lo, hi], 2).reshape(data.shape[0], -1)[:, :dim]


class _QuantizedEmbeddingBase(AtomicLoad, nn.Module):
    """The table, its state_dict and conversion, shared by Embedding and EmbeddingBag."""

    _version = 1
    num_embeddings: int
    embedding_dim: int

    def _init_table(self, num_embeddings: int, embedding_dim: int, dtype: Any) -> None:
        if int(num_embeddings) < 0 or int(embedding_dim) < 1:
            raise ValueError(
                f"num_embeddings must be >= 0 and embedding_dim >= 1, got {num_embeddings} and {embedding_dim}"
            )
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.dtype = quint8 if _bits(dtype) == 8 else quint4x2
        self._nbits = _bits(dtype)
        data = torch.zeros(self.num_embeddings, _row_bytes(self.embedding_dim, self._nbits), dtype=torch.uint8)
        self._set_table(data, torch.ones(self.num_embeddings), torch.zeros(self.num_embeddings))

    def _set_table(self, data: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor) -> None:
        table = EmbeddingTable(
            data.contiguous().numpy(),
            self.embedding_dim,
            self._nbits,
            scales.to(torch.float32).contiguous().numpy(),
            zps.to(torch.float32).contiguous().numpy(),
        )
        self._data, self._scales, self._zps, self._table = data, scales.to(torch.float32), zps.to(torch.float32), table

    # -- torch.ao's accessors ---------------------------------------------------------------------
    def weight(self) -> torch.Tensor:
        """The dequantized weights, float32 ``[num_embeddings, embedding_dim]`` (torch returns a
        quantized tensor with float zero points, which ferroquant's QTensor does not model; the
        stored bytes are :meth:`weight_int_repr`)."""
        q = _unpack(self._data, self.embedding_dim, self._nbits).to(torch.float32)
        return (q - self._zps.reshape(-1, 1)) * self._scales.reshape(-1, 1)

    def weight_int_repr(self) -> torch.Tensor:
        """The stored values, uint8 ``[num_embeddings, embedding_dim]`` (4-bit values unpacked)."""
        return _unpack(self._data, self.embedding_dim, self._nbits).clone()

    def set_weight(self, weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor) -> None:
        """Quantizes float ``weight`` with the given per-row float qparams (torch's rule)."""
        if tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"{self._get_name()}.set_weight: weight has shape {list(weight.shape)}, this module needs "
                f"{[self.num_embeddings, self.embedding_dim]}"
            )
        data = quantize_rows(weight, scales, zero_points, self._nbits)
        try:
            self._set_table(data, scales.detach().clone(), zero_points.detach().clone())
        except KERNEL_ERRORS as e:
            raise_named(e, f"{self._get_name()}.set_weight")

    def _label(self) -> str:
        name = getattr(self, "_fq_name", None)
        return f"{self._get_name()} '{name}'" if name else self._get_name()

    def _indices(self, x: Any, what: str = "indices") -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(
                f"{self._label()} expects integer {what} (torch.long or torch.int), got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        if x.device.type != "cpu":
            raise ValueError(f"{self._label()}: {what} are on {x.device}; ferroquant runs on the CPU")
        return x.detach().to(torch.int64).contiguous()

    # pickling: the native table is rebuilt
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_table", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._set_table(self._data, self._scales, self._zps)

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for ferroquant's quantized embeddings yet; run the "
            "model in eager mode"
        )

    # -- state_dict --------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self._data
        destination[prefix + "weight_scale"] = self._scales
        destination[prefix + "weight_zero_point"] = self._zps

    def _stage_state(
        self, state_dict: dict, prefix: str, strict: bool, missing_keys: list, unexpected_keys: list, errors: list
    ) -> list[Callable[[], None]]:
        changes = super()._stage_state(state_dict, prefix, strict, missing_keys, unexpected_keys, errors)
        keys = ("weight", "weight_scale", "weight_zero_point")
        vals = [state_dict.pop(prefix + k, None) for k in keys]
        missing = [prefix + k for k, v in zip(keys, vals) if v is None]
        if missing:
            missing_keys.extend(missing)
            return changes
        data, scales, zps = vals
        shape = [self.num_embeddings, _row_bytes(self.embedding_dim, self._nbits)]
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or list(data.shape) != shape:
            errors.append(
                f"'{prefix}weight': expected uint8 {shape} ({self.dtype.name} rows of {self.embedding_dim}), got "
                f"{getattr(data, 'dtype', type(data).__name__)} {list(getattr(data, 'shape', []))}"
            )
            return changes
        for k, v in (("weight_scale", scales), ("weight_zero_point", zps)):
            if not isinstance(v, torch.Tensor) or not v.is_floating_point() or list(v.shape) != [self.num_embeddings]:
                errors.append(f"'{prefix}{k}': expected float32 [{self.num_embeddings}]")
                return changes
        data = data.detach().contiguous().clone()
        scales, zps = scales.detach().to(torch.float32).clone(), zps.detach().to(torch.float32).clone()
        try:
            table = EmbeddingTable(data.numpy(), self.embedding_dim, self._nbits, scales.numpy(), zps.numpy())
        except KERNEL_ERRORS as e:
            errors.append(f"'{prefix}weight': {e}")
            return changes

        def apply() -> None:
            self._data, self._scales, self._zps, self._table = data, scales, zps, table

        return [*changes, apply]

    # -- conversion ----------------------------------------------------------------------------------
    @classmethod
    def _quantized_from(cls, mod: nn.Module, make: Callable[[Any], Any]) -> Any:
        """The quantized module for float ``mod`` (with a float-qparams weight qconfig) or a QAT
        embedding (its fake-quant's frozen qparams: the grid training saw)."""
        fake_quant = getattr(mod, "weight_fake_quant", None)
        if fake_quant is not None:
            scale, zp = (t.detach() for t in fake_quant.frozen_qparams())
            dtype = fake_quant.dtype
        else:
            qconfig = getattr(mod, "qconfig", None)
            observer = None if qconfig is None else qconfig.weight()
            scheme = getattr(observer, "qscheme", None)
            if observer is None or scheme is None or to_qscheme(scheme).name != "per_channel_affine_float_qparams":
                raise ValueError(
                    f"{cls.__name__} quantization needs per-row float qparams: set the embedding's qconfig to "
                    "ferroquant.float_qparams_weight_only_qconfig (8-bit) or float_qparams_weight_only_qconfig_4bit, "
                    "or its qconfig to None to keep it float"
                )
            observer(mod.weight.detach().float())
            scale, zp = observer.calculate_qparams()
            dtype = observer.dtype
        q = make(dtype)
        q.set_weight(mod.weight.detach(), scale, zp)
        return q


class Embedding(_QuantizedEmbeddingBase):
    """``ferroquant.nn.quantized.Embedding``: rows of 8 or 4 bits, float32 output."""

    _FLOAT_MODULE = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[torch.Tensor] = None,
        dtype: Any = quint8,
    ) -> None:
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, dtype)
        self.padding_idx = padding_idx
        if _weight is not None:
            raise NotImplementedError("pass the float weights through from_float (or set_weight with qparams)")

    def _get_name(self) -> str:
        return "QuantizedEmbedding"

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, dtype={self.dtype.name}, "
            "qscheme=per_channel_affine_float_qparams"
        )

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        idx = self._indices(indices)
        try:
            out = self._table.lookup(idx.reshape(-1).numpy())
        except KERNEL_ERRORS as e:
            raise_named(e, self._label())
        return torch.from_numpy(out).reshape(*idx.shape, self.embedding_dim)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Embedding:
        """From a float ``nn.Embedding`` (or QAT Embedding) with a float-qparams weight qconfig."""
        if not isinstance(mod, nn.Embedding):
            raise TypeError(f"quantized Embedding.from_float expects an nn.Embedding, got {type(mod).__name__}")
        return cls._quantized_from(
            mod, lambda dtype: cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, dtype=dtype)
        )


class EmbeddingBag(_QuantizedEmbeddingBase):
    """``ferroquant.nn.quantized.EmbeddingBag``: bags of 8-bit or 4-bit rows reduced by ``sum``,
    ``mean`` or ``max`` (``offsets``, ``per_sample_weights`` with ``sum``, ``include_last_offset``,
    ``padding_idx`` entries left out), float32 output."""

    _FLOAT_MODULE = nn.EmbeddingBag

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "sum",
        sparse: bool = False,
        _weight: Optional[torch.Tensor] = None,
        include_last_offset: bool = False,
        dtype: Any = quint8,
        padding_idx: Optional[int] = None,
    ) -> None:
        super().__init__()
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        self._init_table(num_embeddings, embedding_dim, dtype)
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self.padding_idx = padding_idx
        if _weight is not None:
            raise NotImplementedError("pass the float weights through from_float (or set_weight with qparams)")

    def _get_name(self) -> str:
        return "QuantizedEmbeddingBag"

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, mode={self.mode!r}, "
            f"dtype={self.dtype.name}, qscheme=per_channel_affine_float_qparams"
        )

    def forward(
        self,
        indices: torch.Tensor,
        offsets: Optional[torch.Tensor] = None,
        per_sample_weights: Optional[torch.Tensor] = None,
        compressed_indices_mapping: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        who = self._label()
        if compressed_indices_mapping is not None:
            raise NotImplementedError(f"{who}: pruned tables (compressed_indices_mapping) are not supported")
        idx = self._indices(indices)
        psw = None
        if per_sample_weights is not None:
            if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
                raise TypeError(f"{who}: per_sample_weights must be a float tensor")
            if tuple(per_sample_weights.shape) != tuple(idx.shape):
                raise ValueError(
                    f"{who}: per_sample_weights must have the shape of indices {list(idx.shape)}, got "
                    f"{list(per_sample_weights.shape)}"
                )
            psw = per_sample_weights.detach().to(torch.float32).reshape(-1).contiguous().numpy()
        if idx.dim() == 2:
            if offsets is not None:
                raise ValueError(f"{who}: offsets must be None when indices are 2-D (one bag per row)")
            bags, length = idx.shape
            off = np.arange(0, bags * length, length, dtype=np.int64) if length else np.zeros(bags, np.int64)
            include_last = False
            flat = idx.reshape(-1)
        elif idx.dim() == 1:
            if offsets is None:
                raise ValueError(f"{who}: offsets are required when indices are 1-D")
            off = self._indices(offsets, "offsets").reshape(-1).numpy()
            include_last = self.include_last_offset
            flat = idx
        else:
            raise ValueError(
                f"{who}: indices must be 1-D (with offsets) or 2-D (bags of equal size), got {idx.dim()}-D"
            )
        try:
            out = self._table.bag(flat.numpy(), off, self.mode, psw, include_last, self.padding_idx)
        except KERNEL_ERRORS as e:
            raise_named(e, who)
        return torch.from_numpy(out)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> EmbeddingBag:
        """From a float ``nn.EmbeddingBag`` (or QAT EmbeddingBag) with a float-qparams weight qconfig."""
        if not isinstance(mod, nn.EmbeddingBag):
            raise TypeError(f"quantized EmbeddingBag.from_float expects an nn.EmbeddingBag, got {type(mod).__name__}")
        return cls._quantized_from(
            mod,
            lambda dtype: cls(
                mod.num_embeddings,
                mod.embedding_dim,
                mode=mod.mode,
                include_last_offset=mod.include_last_offset,
                dtype=dtype,
                padding_idx=mod.padding_idx,
            ),
        )
