"""(+) Dynamic quantized ``MultiheadAttention``: torch.ao has none (its docs list
``nn.MultiheadAttention`` as not supported for dynamic quantization).

The in- and out-projections are dynamic quantized ``Linear`` modules (int8 weights packed once,
activations quantized per call as the qconfig says); the attention itself — scores, masks,
softmax, the weighted sum — runs in float32 with torch's operations, in the order of torch's
``F.multi_head_attention_forward``. Self-attention (``query is key is value``) projects q, k and
v in one GEMM; cross-attention uses row slices of the same packed weights. Opt in with
``quantize_dynamic(model, {nn.Linear, nn.MultiheadAttention})``: then ``nn.TransformerEncoderLayer``,
``nn.TransformerDecoderLayer`` and ``nn.Transformer`` run with every projection in int8.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ...._core import PackedLinear
from ...._dtypes import qint8, to_qdtype
from ...._ops import KERNEL_ERRORS, raise_named
from ...._threads import get_num_threads
from ....qtensor import QTensor
from .._weights import AtomicGroupLoad, declines_torch_fast_paths, quantize_weight
from .linear import Linear, _activation_options

__all__ = ["MultiheadAttention"]


def _canonical_mask(mask: Optional[torch.Tensor], name: str, who: str) -> Optional[torch.Tensor]:
    """A boolean mask (True: not allowed to attend) as an additive float mask; a float mask as is
    (torch's ``F._canonical_mask``)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{who}: only bool and floating types of {name} are supported, got {mask.dtype}")
    return mask.to(torch.float32)


class MultiheadAttention(AtomicGroupLoad, nn.Module):
    """(+) ``ferroquant.nn.quantized.dynamic.MultiheadAttention``: ``nn.MultiheadAttention`` with int8
    in- and out-projections (same constructor, ``forward`` and outputs)."""

    _FLOAT_MODULE = nn.MultiheadAttention

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        # nn.MultiheadAttention's factory keywords: CPU and float32 (the default) or qint8 weights
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"ferroquant runs on the CPU; got device={device}")
        if dtype not in (None, torch.float32) and to_qdtype(dtype) != qint8:
            raise NotImplementedError(f"dynamic MultiheadAttention supports qint8 weights, got dtype={dtype}")
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} and num_heads={num_heads}"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = int(embed_dim)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.head_dim = self.embed_dim // self.num_heads
        self.add_zero_attn = bool(add_zero_attn)
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj = Linear(e, 3 * e, bias_=bias)
        else:
            self.q_proj = Linear(e, e, bias_=bias)
            self.k_proj = Linear(self.kdim, e, bias_=bias)
            self.v_proj = Linear(self.vdim, e, bias_=bias)
        self.out_proj = Linear(e, e, bias_=bias)
        self.register_buffer("bias_k", torch.zeros(1, 1, e) if add_bias_kv else None)
        self.register_buffer("bias_v", torch.zeros(1, 1, e) if add_bias_kv else None)
        self._slices: dict[tuple[int, int], tuple[Any, PackedLinear, Any]] = {}

    def _get_name(self) -> str:
        return "DynamicQuantizedMultiheadAttention"

    def __getstate__(self) -> dict:
        # the cross-attention weight slices are native objects: rebuilt on first use
        state = self.__dict__.copy()
        state["_slices"] = {}
        return state

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for ferroquant's dynamic MultiheadAttention yet; run "
            "the quantized model in eager mode"
        )

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bias_k is not None:
            s += ", add_bias_kv=True"
        if self.add_zero_attn:
            s += ", add_zero_attn=True"
        if self.batch_first:
            s += ", batch_first=True"
        return s

    # -- torch's attribute names (nn.TransformerEncoderLayer reads some of them) --------------------
    @declines_torch_fast_paths
    def in_proj_weight(self) -> Optional[QTensor]:
        """The int8 ``[3·E, E]`` in-projection weight (None when kdim / vdim differ from embed_dim)."""
        return self.in_proj.weight() if self._qkv_same_embed_dim else None

    @property
    def in_proj_bias(self) -> Optional[torch.Tensor]:
        """The float in-projection bias ``[3·E]`` (q, k, v), or None."""
        if self._qkv_same_embed_dim:
            return self.in_proj.bias()
        parts = [lin.bias() for lin in (self.q_proj, self.k_proj, self.v_proj)]
        return None if parts[0] is None else torch.cat(parts)  # type: ignore[arg-type]

    def _projections(self) -> list[Linear]:
        if self._qkv_same_embed_dim:
            return [self.in_proj, self.out_proj]
        return [self.q_proj, self.k_proj, self.v_proj, self.out_proj]

    def _label(self) -> str:
        name = getattr(self, "_fq_name", None)
        return f"{self._get_name()} '{name}'" if name else self._get_name()

    # -- the projections ------------------------------------------------------------------------------
    def _rows(self, lo: int, hi: int) -> tuple[PackedLinear, Any]:
        """Packed weights and bias of in_proj's output rows ``lo:hi`` (cross-attention), built once
        per packing of in_proj."""
        lin = self.in_proj
        packed = lin._fresh_packed()
        hit = self._slices.get((lo, hi))
        if hit is not None and hit[0] is packed:
            return hit[1], hit[2]
        w = lin.weight()
        data = w.int_repr()[lo:hi].contiguous().numpy()
        if w.is_per_channel:
            scales = w.q_per_channel_scales()[lo:hi].to(torch.float32).numpy()
            zps = w.q_per_channel_zero_points()[lo:hi].to(torch.int32).numpy()
        else:
            scales = torch.tensor([w.q_scale()], dtype=torch.float32).numpy()
            zps = torch.tensor([w.q_zero_point()], dtype=torch.int32).numpy()
        part = PackedLinear(data, scales, zps)
        bias = None if lin._bias_np is None else lin._bias_np[lo:hi]
        self._slices[(lo, hi)] = (packed, part, bias)
        return part, bias

    def _project(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """``x`` (``[L, N, in]``) through a projection: ``"qkv"``, ``"q"``, ``"kv"``, ``"k"``, ``"v"``."""
        e = self.embed_dim
        if not self._qkv_same_embed_dim:
            return {"q": self.q_proj, "k": self.k_proj, "v": self.v_proj}[which](x)
        if which == "qkv":
            return self.in_proj(x)
        lo, hi = {"q": (0, e), "kv": (e, 3 * e), "k": (e, 2 * e), "v": (2 * e, 3 * e)}[which]
        packed, bias = self._rows(lo, hi)
        lin = self.in_proj
        try:
            out, _, _ = packed.linear_dynamic(
                x.reshape(-1, x.shape[-1]).numpy(),
                bias,
                lin.reduce_range,
                False,
                get_num_threads(),
                lin.per_row_activations,
            )
        except KERNEL_ERRORS as err:
            raise_named(err, self._label())
        return torch.from_numpy(out).reshape(*x.shape[:-1], hi - lo)

    # -- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        who = self._label()
        for name, t in (("query", query), ("key", key), ("value", value)):
            if isinstance(t, QTensor):
                raise TypeError(
                    f"{who} takes float {name} (it quantizes activations itself) but got a QTensor; call "
                    ".dequantize() on it or remove the QuantStub before it"
                )
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{who} expects a floating point torch.Tensor as {name}, got {getattr(t, 'dtype', t)}")
            if t.device.type != "cpu":
                raise ValueError(f"{who}: {name} is on {t.device}; ferroquant runs on the CPU, call .cpu() first")
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"{who}: query, key and value must all be 3-D (batched) or 2-D (unbatched), got "
                f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
            )
        # keep torch's identity tests (self-attention, key is value) through the transposes
        same_qk, same_kv = query is key, key is value
        detach = [t.detach().to(torch.float32) for t in (query, key, value)]
        query, key, value = detach
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not is_batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        query, key, value = (t.contiguous() for t in (query, key, value))
        tgt_len, bsz, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise ValueError(f"{who}: was expecting embedding dimension of {self.embed_dim}, but got {embed_dim}")
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError(
                f"{who}: key and value must have {self.kdim} and {self.vdim} features, got "
                f"{key.shape[-1]} and {value.shape[-1]}"
            )
        if key.shape[:2] != value.shape[:2] or key.shape[1] != bsz:
            raise ValueError(
                f"{who}: key {list(key.shape)} and value {list(value.shape)} must share sequence length and batch "
                f"with each other, and the batch {bsz} with query"
            )
        key_padding_mask = _canonical_mask(key_padding_mask, "key_padding_mask", who)
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask."
            )
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        else:
            attn_mask = _canonical_mask(attn_mask, "attn_mask", who)
            if key_padding_mask is not None:
                is_causal = False

        # projections (int8 GEMMs)
        e, h, hd = self.embed_dim, self.num_heads, self.head_dim
        if self._qkv_same_embed_dim and same_qk and same_kv:
            q, k, v = self._project(query, "qkv").chunk(3, dim=-1)
        elif self._qkv_same_embed_dim and same_kv:
            q = self._project(query, "q")
            k, v = self._project(key, "kv").chunk(2, dim=-1)
        else:
            q, k, v = self._project(query, "q"), self._project(key, "k"), self._project(value, "v")
        src_len = k.shape[0]

        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (tgt_len, src_len):
                    raise RuntimeError(
                        f"{who}: the shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                        f"{(tgt_len, src_len)}."
                    )
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (bsz * h, tgt_len, src_len):
                    raise RuntimeError(
                        f"{who}: the shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                        f"{(bsz * h, tgt_len, src_len)}."
                    )
            else:
                raise RuntimeError(f"{who}: attn_mask's dimension {attn_mask.dim()} is not supported")
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        q = q.reshape(tgt_len, bsz * h, hd).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * h, hd).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * h, hd).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros(bsz * h, 1, hd)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise RuntimeError(
                    f"{who}: expected key_padding_mask of shape {(bsz, src_len)}, got {tuple(key_padding_mask.shape)}"
                )
            kpm = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, h, -1, -1).reshape(bsz * h, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(hd))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, e)
            out = self.out_proj(out).view(tgt_len, bsz, e)
            weights = weights.view(bsz, h, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                out, weights = out.squeeze(1), weights.squeeze(0)
        else:
            if attn_mask is not None:
                if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, h, -1, src_len)
            q4, k4, v4 = (t.reshape(bsz, h, -1, hd) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask, dropout_p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, e)
            out = self.out_proj(out).view(tgt_len, bsz, e)
            if not is_batched:
                out = out.squeeze(1)
            weights = None
        if self.batch_first and is_batched:
            out = out.transpose(0, 1)
        return out, weights

    # -- conversion -------------------------------------------------------------------------------------
    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> MultiheadAttention:
        """Builds the dynamic module from a float ``nn.MultiheadAttention`` (with a ``qconfig``): q, k
        and v projections each quantized with their own weight observer, as torch.ao's quantizable
        MultiheadAttention does."""
        if not isinstance(mod, nn.MultiheadAttention):
            raise TypeError(
                f"dynamic MultiheadAttention.from_float expects an nn.MultiheadAttention, got {type(mod).__name__}"
            )
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            from ....qconfig import default_dynamic_qconfig

            qconfig = default_dynamic_qconfig
        from ..weight_only import low_precision_kind

        kind = low_precision_kind(qconfig)
        if kind is not None:
            raise TypeError(
                f"dynamic MultiheadAttention supports int8 dynamic qconfigs only; the qconfig asks for {kind} weights "
                "(keep the attention in float, or use default_dynamic_qconfig / per_channel_dynamic_qconfig for it)"
            )
        reduce_range, per_row = _activation_options(qconfig)
        q = cls(
            mod.embed_dim,
            mod.num_heads,
            dropout=float(mod.dropout),
            bias=mod.in_proj_bias is not None,
            add_bias_kv=mod.bias_k is not None,
            add_zero_attn=mod.add_zero_attn,
            kdim=mod.kdim,
            vdim=mod.vdim,
            batch_first=mod.batch_first,
        )
        e = mod.embed_dim
        b = None if mod.in_proj_bias is None else mod.in_proj_bias.detach()
        if mod._qkv_same_embed_dim:
            parts = [quantize_weight(w, qconfig.weight()) for w in mod.in_proj_weight.detach().split(e)]
            q.in_proj.set_weight_bias(_stack_rows(parts), b)
        else:
            weights = (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)
            for i, (lin, w) in enumerate(zip((q.q_proj, q.k_proj, q.v_proj), weights)):
                lin.set_weight_bias(quantize_weight(w, qconfig.weight()), None if b is None else b[i * e : (i + 1) * e])
        out_b = mod.out_proj.bias
        q.out_proj.set_weight_bias(
            quantize_weight(mod.out_proj.weight, qconfig.weight()), None if out_b is None else out_b.detach()
        )
        if mod.bias_k is not None:
            q.bias_k = mod.bias_k.detach().clone().float()
            q.bias_v = mod.bias_v.detach().clone().float()
        for lin in q._projections():
            lin.reduce_range = reduce_range
            lin.per_row_activations = per_row
        q.train(mod.training)
        return q


def _stack_rows(parts: list[QTensor]) -> QTensor:
    """q, k and v int8 weights, each with its own qparams, as one ``[3·E, E]`` weight with one
    scale per row (exactly the same values)."""
    data = torch.cat([p.int_repr() for p in parts])
    scales, zps = [], []
    for p in parts:
        rows = p.shape[0]
        if p.is_per_channel:
            scales.append(p.q_per_channel_scales().double())
            zps.append(p.q_per_channel_zero_points().long())
        else:
            scales.append(torch.full((rows,), p.q_scale(), dtype=torch.float64))
            zps.append(torch.full((rows,), p.q_zero_point(), dtype=torch.int64))
    if all(not p.is_per_channel for p in parts) and len({(p.q_scale(), p.q_zero_point()) for p in parts}) == 1:
        return QTensor(data, parts[0].q_scale(), parts[0].q_zero_point(), qint8)
    return QTensor(data, torch.cat(scales), torch.cat(zps), qint8, axis=0)
