"""Quantizable MultiheadAttention (torch: ``torch.ao.nn.quantizable.MultiheadAttention``):
``nn.MultiheadAttention`` with its projections as separate ``nn.Linear`` layers, the query scaling
as a ``FloatFunctional`` and stubs around the float attention core, so that eager static
quantization observes and converts each part. Used through the custom-module configs::

    config = {
        "float_to_observed_custom_module_class": {nn.MultiheadAttention: fq.nn.quantizable.MultiheadAttention},
        "observed_to_quantized_custom_module_class": {
            fq.nn.quantizable.MultiheadAttention: fq.nn.quantized.MultiheadAttention
        },
    }

The quantized module takes quantized query / key / value and returns the quantized output and
(quantized) attention weights; scores, masks and softmax run in float between a DeQuantize and a
Quantize, as in torch.ao. One deliberate difference: with ``batch_first=True`` torch.ao's
quantizable module reinterprets the per-head output as ``[N, L, E]`` without moving the heads
(its result differs from ``nn.MultiheadAttention``); ferroquant's puts the heads back in order.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...qtensor import QTensor, quantize_per_tensor
from ...stubs import DeQuantStub, QuantStub
from ..quantized.functional_modules import FloatFunctional
from .rnn import _aligned

__all__ = ["MultiheadAttention"]


def _cat(ts: list[Any], dim: int = 0) -> Any:
    return torch.cat(_aligned(ts), dim)


class MultiheadAttention(nn.MultiheadAttention):
    """A quantizable ``nn.MultiheadAttention`` (same constructor and forward)."""

    _FLOAT_MODULE = nn.MultiheadAttention
    __constants__ = ["batch_first"]

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
        factory = {"device": device, "dtype": dtype}
        super().__init__(
            embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first, **factory
        )
        self.linear_Q = nn.Linear(self.embed_dim, self.embed_dim, bias=bias, **factory)
        self.linear_K = nn.Linear(self.kdim, self.embed_dim, bias=bias, **factory)
        self.linear_V = nn.Linear(self.vdim, self.embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias, **factory)  # type: ignore[assignment]
        self.q_scaling_product = FloatFunctional()
        self.quant_attn_output = QuantStub()
        self.quant_attn_output_weights = QuantStub()
        self.dequant_q = DeQuantStub()
        self.dequant_k = DeQuantStub()
        self.dequant_v = DeQuantStub()

    def _get_name(self) -> str:
        return "QuantizableMultiheadAttention"

    @classmethod
    def from_float(cls, other: nn.Module, use_precomputed_fake_quant: bool = False) -> MultiheadAttention:
        """The observed module: ``other``'s weights split into q / k / v Linear layers, observers
        attached (``prepare``)."""
        from ...quantize import prepare

        if type(other) is not cls._FLOAT_MODULE:
            raise TypeError(
                "quantizable MultiheadAttention.from_float expects an nn.MultiheadAttention, got "
                f"{type(other).__name__}"
            )
        if getattr(other, "qconfig", None) is None:
            raise ValueError("the float MultiheadAttention must have a qconfig")
        observed = cls(
            other.embed_dim,
            other.num_heads,
            other.dropout,
            other.in_proj_bias is not None,
            other.bias_k is not None,
            other.add_zero_attn,
            other.kdim,
            other.vdim,
            other.batch_first,
        )
        e = other.embed_dim
        with torch.no_grad():
            observed.bias_k = None if other.bias_k is None else nn.Parameter(other.bias_k.detach().clone())
            observed.bias_v = None if other.bias_v is None else nn.Parameter(other.bias_v.detach().clone())
            observed.out_proj.weight = nn.Parameter(other.out_proj.weight.detach().clone())
            observed.out_proj.bias = (
                None if other.out_proj.bias is None else nn.Parameter(other.out_proj.bias.detach().clone())
            )
            if other._qkv_same_embed_dim:
                weights = other.in_proj_weight.detach().split(e)
            else:
                weights = (other.q_proj_weight.detach(), other.k_proj_weight.detach(), other.v_proj_weight.detach())
            biases = (None,) * 3 if other.in_proj_bias is None else other.in_proj_bias.detach().split(e)
            for lin, w, b in zip((observed.linear_Q, observed.linear_K, observed.linear_V), weights, biases):
                lin.weight = nn.Parameter(w.clone())
                lin.bias = None if b is None else nn.Parameter(b.clone())
        observed.qconfig = other.qconfig
        observed.eval()
        return prepare(observed, inplace=True)

    @classmethod
    def from_observed(cls, other: nn.Module) -> Any:
        raise NotImplementedError(
            "a quantizable MultiheadAttention is the observed form; convert it with "
            "ferroquant.nn.quantized.MultiheadAttention as the observed_to_quantized_custom_module_class"
        )

    def forward(  # type: ignore[override]
        self,
        query: Any,
        key: Any,
        value: Any,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Any, Optional[Any]]:
        if is_causal:
            raise ValueError(
                "the quantizable MultiheadAttention takes its causal mask as attn_mask (is_causal=True is not "
                "supported, as in torch.ao); pass nn.Transformer.generate_square_subsequent_mask(L)"
            )
        if self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        tgt_len, bsz, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise ValueError(f"was expecting embedding dimension of {self.embed_dim}, but got {embed_dim}")
        if key.shape[0] != value.shape[0] or key.shape[1] != value.shape[1]:
            raise ValueError(f"key {list(key.shape)} and value {list(value.shape)} must share length and batch")
        h = self.num_heads
        head_dim = self.embed_dim // h
        q = self.linear_Q(query)
        k = self.linear_K(key)
        v = self.linear_V(value)
        q = self.q_scaling_product.mul_scalar(q, float(head_dim) ** -0.5)
        src_len = key.shape[0]
        if attn_mask is not None:
            if attn_mask.dtype == torch.uint8:
                attn_mask = attn_mask.to(torch.bool)
            if not attn_mask.is_floating_point() and attn_mask.dtype != torch.bool:
                raise TypeError(f"only float and bool attn_mask are supported, got {attn_mask.dtype}")
            if attn_mask.dim() == 2:
                attn_mask = attn_mask.unsqueeze(0)
                if list(attn_mask.shape) != [1, tgt_len, src_len]:
                    raise RuntimeError(f"The shape of the 2D attn_mask is not correct: expected {(tgt_len, src_len)}")
            elif attn_mask.dim() == 3:
                if list(attn_mask.shape) != [bsz * h, tgt_len, src_len]:
                    raise RuntimeError(
                        f"The shape of the 3D attn_mask is not correct: expected {(bsz * h, tgt_len, src_len)}"
                    )
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if key_padding_mask is not None and key_padding_mask.dtype == torch.uint8:
            key_padding_mask = key_padding_mask.to(torch.bool)
        if self.bias_k is not None and self.bias_v is not None:
            k = _cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = _cat([v, self.bias_v.repeat(1, bsz, 1)])
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        q = q.contiguous().view(tgt_len, bsz * h, head_dim).transpose(0, 1)
        k = k.contiguous().view(-1, bsz * h, head_dim).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * h, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros: Any = torch.zeros(k.shape[0], 1, head_dim)
            kz, vz = zeros, zeros
            if isinstance(k, QTensor):
                kz = quantize_per_tensor(zeros, k.q_scale(), k.q_zero_point(), k.dtype)
                vz = quantize_per_tensor(zeros, v.q_scale(), v.q_zero_point(), v.dtype)
            k, v = torch.cat([k, kz], dim=1), torch.cat([v, vz], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (bsz, src_len):
            raise RuntimeError(
                f"expected key_padding_mask of shape {(bsz, src_len)}, got {tuple(key_padding_mask.shape)}"
            )
        q, k, v = self.dequant_q(q), self.dequant_k(k), self.dequant_v(v)
        weights = torch.bmm(q, k.transpose(1, 2))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                weights = weights.masked_fill(attn_mask, float("-inf"))
            else:
                weights = weights + attn_mask
        if key_padding_mask is not None:
            weights = weights.view(bsz, h, tgt_len, src_len)
            kpm = key_padding_mask.unsqueeze(1).unsqueeze(2)
            if kpm.dtype == torch.bool:
                weights = weights.masked_fill(kpm, float("-inf"))
            else:
                weights = weights + kpm
            weights = weights.view(bsz * h, tgt_len, src_len)
        weights = F.softmax(weights, dim=-1)
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        out = torch.bmm(weights, v)  # [N·H, L, head_dim]
        if self.batch_first:
            out = out.view(bsz, h, tgt_len, head_dim).permute(0, 2, 1, 3).reshape(bsz, tgt_len, self.embed_dim)
        else:
            out = out.transpose(0, 1).contiguous().view(tgt_len, bsz, self.embed_dim)
        out = self.quant_attn_output(out)
        out = self.out_proj(out)
        weights = self.quant_attn_output_weights(weights)
        if not need_weights:
            return out, None
        weights = weights.view(bsz, h, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights
