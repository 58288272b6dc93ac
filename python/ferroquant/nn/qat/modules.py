"""Quantization-aware training modules (``torch.ao.nn.qat``): the float layer, with its weight
passed through the qconfig's weight fake-quant on every forward (straight-through gradients), so
training sees the int8 weights ``convert`` will store. Output fake-quants are attached by
``prepare_qat`` (as ``activation_post_process``), not here."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "EmbeddingBag", "float_module_of"]


def _require_qconfig(qconfig: Any, who: str) -> Any:
    if qconfig is None or not (hasattr(qconfig, "activation") and hasattr(qconfig, "weight")):
        raise ValueError(
            f"{who} needs a qconfig (a QAT one, e.g. ferroquant.get_default_qat_qconfig('x86')); "
            "set model.qconfig before prepare_qat"
        )
    return qconfig


def float_module_of(mod: nn.Module, float_type: type, who: str) -> nn.Module:
    """The float layer of ``mod`` (itself, or the first module of a fused Sequential), checked."""
    inner = mod[0] if isinstance(mod, nn.Sequential) else mod
    ok = type(inner) is float_type or type(inner) is nn.modules.linear.NonDynamicallyQuantizableLinear
    if not ok or not isinstance(inner, float_type):
        raise TypeError(f"{who}.from_float expects an nn.{float_type.__name__}, got {type(inner).__name__}")
    return inner


class _WeightFakeQuant:
    """Mixin: ``weight_fake_quant`` from the qconfig; ``to_float`` gives the plain layer back."""

    weight: torch.Tensor
    _FLOAT_MODULE: type

    def _init_qat(self, qconfig: Any) -> None:
        self.qconfig = _require_qconfig(qconfig, type(self).__name__)
        self.weight_fake_quant = self.qconfig.weight()

    def fake_quantized_weight(self) -> torch.Tensor:
        """The weight as the int8 model will hold it (rounded to its grid, in float)."""
        return self.weight_fake_quant(self.weight)


class Linear(_WeightFakeQuant, nn.Linear):
    """``nn.Linear`` with a fake-quantized weight (``torch.ao.nn.qat.Linear``)."""

    _FLOAT_MODULE = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        qconfig: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_qat(qconfig)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.fake_quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Linear:
        """From a float ``nn.Linear`` with a qconfig; shares its parameters."""
        lin = float_module_of(mod, nn.Linear, cls.__name__)
        qat = cls(lin.in_features, lin.out_features, lin.bias is not None, qconfig=getattr(mod, "qconfig", None))
        qat.weight = lin.weight
        qat.bias = lin.bias
        return qat

    def to_float(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        lin.weight = nn.Parameter(self.weight.detach())
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach())
        lin.train(self.training)
        return lin


class _ConvNd(_WeightFakeQuant):
    """Shared by the QAT convs: the float conv's forward on the fake-quantized weight."""

    _FLOAT_MODULE: type

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.fake_quantized_weight(), self.bias)  # type: ignore[attr-defined]

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """From a float conv with a qconfig; shares its parameters."""
        conv = float_module_of(mod, cls._FLOAT_MODULE, cls.__name__)
        qat = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            qconfig=getattr(mod, "qconfig", None),
        )
        qat.weight = conv.weight
        qat.bias = conv.bias
        return qat

    def to_float(self) -> nn.Module:
        conv = self._FLOAT_MODULE(
            self.in_channels,  # type: ignore[attr-defined]
            self.out_channels,  # type: ignore[attr-defined]
            self.kernel_size,  # type: ignore[attr-defined]
            stride=self.stride,  # type: ignore[attr-defined]
            padding=self.padding,  # type: ignore[attr-defined]
            dilation=self.dilation,  # type: ignore[attr-defined]
            groups=self.groups,  # type: ignore[attr-defined]
            bias=self.bias is not None,  # type: ignore[attr-defined]
            padding_mode=self.padding_mode,  # type: ignore[attr-defined]
        )
        conv.weight = nn.Parameter(self.weight.detach())
        if self.bias is not None:  # type: ignore[attr-defined]
            conv.bias = nn.Parameter(self.bias.detach())  # type: ignore[attr-defined]
        conv.train(self.training)  # type: ignore[attr-defined]
        return conv


def _conv_init(self: nn.Module, float_type: type, args: tuple, kwargs: dict, qconfig: Any) -> None:
    float_type.__init__(self, *args, **kwargs)
    self._init_qat(qconfig)  # type: ignore[attr-defined]


class Conv1d(_ConvNd, nn.Conv1d):
    """``nn.Conv1d`` with a fake-quantized weight (``torch.ao.nn.qat.Conv1d``)."""

    _FLOAT_MODULE = nn.Conv1d

    def __init__(self, *args: Any, qconfig: Any = None, **kwargs: Any) -> None:
        _conv_init(self, nn.Conv1d, args, kwargs, qconfig)


class Conv2d(_ConvNd, nn.Conv2d):
    """``nn.Conv2d`` with a fake-quantized weight (``torch.ao.nn.qat.Conv2d``)."""

    _FLOAT_MODULE = nn.Conv2d

    def __init__(self, *args: Any, qconfig: Any = None, **kwargs: Any) -> None:
        _conv_init(self, nn.Conv2d, args, kwargs, qconfig)


class Conv3d(_ConvNd, nn.Conv3d):
    """``nn.Conv3d`` with a fake-quantized weight (``torch.ao.nn.qat.Conv3d``)."""

    _FLOAT_MODULE = nn.Conv3d

    def __init__(self, *args: Any, qconfig: Any = None, **kwargs: Any) -> None:
        _conv_init(self, nn.Conv3d, args, kwargs, qconfig)


def _require_float_qparams(qconfig: Any, who: str) -> None:
    from ..._dtypes import to_qscheme

    probe = qconfig.weight()
    scheme = to_qscheme(getattr(probe, "qscheme", None))
    if scheme.name != "per_channel_affine_float_qparams":
        raise ValueError(
            f"{who} weights need per-row float qparams: give the embedding "
            "qconfig = ferroquant.default_embedding_qat_qconfig (or a weight fake-quant with "
            f"qscheme=per_channel_affine_float_qparams), got a weight fake-quant with qscheme {scheme}"
        )


class Embedding(_WeightFakeQuant, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized weight, one scale and float zero point per row
    (``torch.ao.nn.qat.Embedding``; qconfig ``default_embedding_qat_qconfig``)."""

    _FLOAT_MODULE = nn.Embedding

    def __init__(self, num_embeddings: int, embedding_dim: int, *args: Any, qconfig: Any = None, **kwargs: Any):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, *args, **kwargs)
        self._init_qat(qconfig)
        _require_float_qparams(self.qconfig, type(self).__name__)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            input,
            self.fake_quantized_weight(),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Embedding:
        emb = float_module_of(mod, nn.Embedding, cls.__name__)
        qat = cls(
            emb.num_embeddings,
            emb.embedding_dim,
            emb.padding_idx,
            emb.max_norm,
            emb.norm_type,
            emb.scale_grad_by_freq,
            emb.sparse,
            qconfig=getattr(mod, "qconfig", None),
        )
        qat.weight = emb.weight
        return qat

    def to_float(self) -> nn.Embedding:
        emb = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        emb.weight = nn.Parameter(self.weight.detach())
        emb.train(self.training)
        return emb


class EmbeddingBag(_WeightFakeQuant, nn.EmbeddingBag):
    """``nn.EmbeddingBag`` with a fake-quantized weight, one scale and float zero point per row
    (``torch.ao.nn.qat.EmbeddingBag``; qconfig ``default_embedding_qat_qconfig``)."""

    _FLOAT_MODULE = nn.EmbeddingBag

    def __init__(self, num_embeddings: int, embedding_dim: int, *args: Any, qconfig: Any = None, **kwargs: Any):
        nn.EmbeddingBag.__init__(self, num_embeddings, embedding_dim, *args, **kwargs)
        self._init_qat(qconfig)
        _require_float_qparams(self.qconfig, type(self).__name__)

    def forward(
        self,
        input: torch.Tensor,
        offsets: Optional[torch.Tensor] = None,
        per_sample_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return F.embedding_bag(
            input,
            self.fake_quantized_weight(),
            offsets,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
        )

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> EmbeddingBag:
        emb = float_module_of(mod, nn.EmbeddingBag, cls.__name__)
        qat = cls(
            emb.num_embeddings,
            emb.embedding_dim,
            emb.max_norm,
            emb.norm_type,
            emb.scale_grad_by_freq,
            emb.mode,
            emb.sparse,
            None,
            emb.include_last_offset,
            emb.padding_idx,
            qconfig=getattr(mod, "qconfig", None),
        )
        qat.weight = emb.weight
        return qat

    def to_float(self) -> nn.EmbeddingBag:
        emb = nn.EmbeddingBag(
            self.num_embeddings,
            self.embedding_dim,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            None,
            self.include_last_offset,
            self.padding_idx,
        )
        emb.weight = nn.Parameter(self.weight.detach())
        emb.train(self.training)
        return emb


def _frozen_fake_quantized_weight(mod: nn.Module) -> torch.Tensor:
    """The QAT weight rounded with its fake-quant's frozen qparams (no new observation)."""
    from ...fake_quantize import fake_quantize

    fq_mod = mod.weight_fake_quant
    axis = fq_mod.ch_axis % mod.weight.dim() if fq_mod.is_per_channel else -1
    with torch.no_grad():
        return fake_quantize(
            mod.weight.detach(), fq_mod.scale, fq_mod.zero_point, fq_mod.quant_min, fq_mod.quant_max, axis
        )
