"""Quantized ``Softmax``, ``LayerNorm``, ``GroupNorm`` and ``InstanceNorm1d/2d/3d`` (torch:
``nn.quantized.*`` of the same names): quint8 in, quint8 out with the module's own output qparams
(observed during calibration). Each normalised block (a row of the reduced dimension(s); a group
of channels × the spatial positions of one sample) is dequantized, computed in float32 in one fixed
order and quantized again, in Rust (``ferroquant._core.softmax_u8`` / ``layer_norm_u8`` /
``group_norm_u8``): the same bits on every engine, within 1 LSB of torch's."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn

from ... import _core
from ..._dtypes import quint8
from ..._ops import KERNEL_ERRORS, raise_named
from ...qtensor import QTensor, softmax_onto
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["Softmax", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


def _require_quint8(module: nn.Module, x: Any) -> QTensor:
    q = require_qtensor(module, x)
    if q.dtype != quint8:
        raise TypeError(f"{module._get_name()} expects quint8 activations, got {q.dtype}")
    return q


class _RowOp(OutputQParams, nn.Module):
    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for this quantized module yet; run the model in "
            "eager mode"
        )

    def _label(self) -> str:
        name = getattr(self, "_fq_name", None)
        return f"{self._get_name()} '{name}'" if name else self._get_name()

    def _run(self, q: QTensor, length: int, call: Callable[..., Any]) -> QTensor:
        data = q.int_repr().contiguous()
        try:
            out = call(data.numpy(), length, q.q_scale(), q.q_zero_point(), self.scale, self.zero_point)
        except KERNEL_ERRORS as e:
            raise_named(e, self._label())
        out_t = torch.from_numpy(out).clamp_(self.quant_min, self.quant_max)
        return QTensor(out_t, self.scale, self.zero_point, quint8)


class Softmax(_RowOp):
    """``ferroquant.nn.quantized.Softmax(dim=None, scale=1.0, zero_point=0)``."""

    def __init__(self, dim: Optional[int] = None, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self._init_output(scale, zero_point)

    def _get_name(self) -> str:
        return "QuantizedSoftmax"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, {self._output_repr()}"

    def forward(self, x: QTensor) -> QTensor:
        q = _require_quint8(self, x)
        try:
            out = softmax_onto(q, self.dim, self.scale, self.zero_point)
        except KERNEL_ERRORS as e:
            raise_named(e, self._label())
        data = out.int_repr().clamp_(self.quant_min, self.quant_max)
        return QTensor(data, self.scale, self.zero_point, quint8)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Softmax:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "Softmax")
        q = cls(mod.dim)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class LayerNorm(_RowOp):
    """``ferroquant.nn.quantized.LayerNorm(normalized_shape, weight, bias, scale, zero_point, eps=1e-5,
    elementwise_affine=True)``: normalises the trailing ``normalized_shape`` dimensions; ``weight`` /
    ``bias`` stay float."""

    def __init__(
        self,
        normalized_shape: Any,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        scale: float,
        zero_point: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        n = 1
        for s in self.normalized_shape:
            n *= s
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.numel() != n:
                raise ValueError(
                    f"LayerNorm {name} must have {n} elements ({list(self.normalized_shape)}), got {t.numel()}"
                )
        self.register_buffer("weight", None if weight is None else weight.detach().float().reshape(-1).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().reshape(-1).clone())
        self._init_output(scale, zero_point)

    def _get_name(self) -> str:
        return "QuantizedLayerNorm"

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"{self._output_repr()}"
        )

    def forward(self, x: QTensor) -> QTensor:
        q = _require_quint8(self, x)
        k = len(self.normalized_shape)
        if tuple(q.shape[q.dim() - k :]) != self.normalized_shape:
            raise ValueError(
                f"{self._label()}: the input's trailing dims {list(q.shape[q.dim() - k :])} must equal "
                f"normalized_shape {list(self.normalized_shape)}"
            )
        n = 1
        for s in self.normalized_shape:
            n *= s
        w = None if self.weight is None else self.weight.numpy()
        b = None if self.bias is None else self.bias.numpy()
        return self._run(q, n, lambda d, n_, s, z, os, oz: _core.layer_norm_u8(d, n_, w, b, self.eps, s, z, os, oz))

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> LayerNorm:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "LayerNorm")
        q = cls(
            mod.normalized_shape,
            None if mod.weight is None else mod.weight,
            None if mod.bias is None else mod.bias,
            scale,
            zp,
            mod.eps,
            mod.elementwise_affine,
        )
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


def _affine_buffer(module: nn.Module, name: str, t: Optional[torch.Tensor], n: int) -> None:
    if t is not None and t.numel() != n:
        raise ValueError(f"{type(module).__name__} {name} must have {n} elements (one per channel), got {t.numel()}")
    module.register_buffer(name, None if t is None else t.detach().float().reshape(-1).clone())


class _ChannelGroupNorm(_RowOp):
    """Normalisation over groups of channels and all spatial positions of one sample, then a
    per-channel affine map (``GroupNorm``; ``InstanceNorm`` is one channel per group), in Rust
    (``_core.group_norm_u8``) on NC* data."""

    _NAME = ""
    _DIMS: tuple = ()  # InstanceNorm: the accepted input ranks, unbatched then batched

    def _groups(self) -> int:
        raise NotImplementedError

    def _is_batched(self, q: QTensor) -> bool:
        """Whether ``q`` has a batch dim; raises for a rank the module does not take."""
        if q.dim() not in self._DIMS:
            raise ValueError(
                f"{self._label()} expects an input with {' or '.join(map(str, self._DIMS))} dims, got {list(q.shape)}"
            )
        return q.dim() == max(self._DIMS)

    def _get_name(self) -> str:
        return self._NAME

    def forward(self, x: QTensor) -> QTensor:
        q = _require_quint8(self, x)
        first = 1 if self._is_batched(q) else 0  # the channel dim
        channels = q.shape[first]
        if channels != self._num_channels:
            raise ValueError(
                f"{self._label()} expects {self._num_channels} channels (dim {first}), got {list(q.shape)}"
            )
        inner = 1
        for s in q.shape[first + 1 :]:
            inner *= s
        if inner == 0:
            return QTensor(q.int_repr().contiguous().clone(), self.scale, self.zero_point, quint8)
        w = None if self.weight is None else self.weight.numpy()
        b = None if self.bias is None else self.bias.numpy()
        groups = self._groups()
        # an unbatched input is one sample: the kernel only needs whole [channels, inner] blocks
        return self._run(
            q,
            inner,
            lambda d, _n, s, z, os, oz: _core.group_norm_u8(d, groups, channels, inner, w, b, self.eps, s, z, os, oz),
        )


class GroupNorm(_ChannelGroupNorm):
    """``ferroquant.nn.quantized.GroupNorm(num_groups, num_channels, weight, bias, scale, zero_point,
    eps=1e-5, affine=True)``: ``weight`` / ``bias`` (one per channel) stay float."""

    _NAME = "QuantizedGroupNorm"

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        scale: float,
        zero_point: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if num_groups <= 0 or num_channels % num_groups != 0:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels = int(num_groups), int(num_channels)
        self._num_channels = self.num_channels
        self.eps = float(eps)
        self.affine = bool(affine)
        _affine_buffer(self, "weight", weight, self.num_channels)
        _affine_buffer(self, "bias", bias, self.num_channels)
        self._init_output(scale, zero_point)

    def _groups(self) -> int:
        return self.num_groups

    def _is_batched(self, q: QTensor) -> bool:
        if q.dim() < 2:
            raise ValueError(f"{self._label()} expects an input of shape [N, C, *], got {list(q.shape)}")
        return True

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, {self._output_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> GroupNorm:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), "GroupNorm")
        q = cls(mod.num_groups, mod.num_channels, mod.weight, mod.bias, scale, zp, mod.eps, mod.affine)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class _InstanceNorm(_ChannelGroupNorm):
    def __init__(
        self,
        num_features: int,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        scale: float,
        zero_point: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.num_features = self._num_channels = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        _affine_buffer(self, "weight", weight, self.num_features)
        _affine_buffer(self, "bias", bias, self.num_features)
        self._init_output(scale, zero_point)

    def _groups(self) -> int:
        return self.num_features

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, {self._output_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """From a float ``nn.InstanceNorm*d`` with an output observer. As torch's quantized
        InstanceNorm, the statistics are always the instance's own (running statistics, if the
        float module tracked them, are not used)."""
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), cls.__name__)
        if mod.track_running_stats:
            warnings.warn(
                f"{cls.__name__}: the float module tracks running statistics (used in eval mode), but the quantized "
                "InstanceNorm normalises with each instance's own statistics, as torch.ao's: its outputs differ from "
                "the float model's and from what the output observer saw",
                UserWarning,
                stacklevel=3,
            )
        q = cls(mod.num_features, mod.weight, mod.bias, scale, zp, mod.eps, mod.momentum, mod.affine)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class InstanceNorm1d(_InstanceNorm):
    """``ferroquant.nn.quantized.InstanceNorm1d(num_features, weight, bias, scale, zero_point, eps=1e-5,
    momentum=0.1, affine=False, track_running_stats=False)``: input ``[N, C, L]`` or ``[C, L]``."""

    _NAME = "QuantizedInstanceNorm1d"
    _DIMS = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    """``ferroquant.nn.quantized.InstanceNorm2d``: input ``[N, C, H, W]`` or ``[C, H, W]``."""

    _NAME = "QuantizedInstanceNorm2d"
    _DIMS = (3, 4)


class InstanceNorm3d(_InstanceNorm):
    """``ferroquant.nn.quantized.InstanceNorm3d``: input ``[N, C, D, H, W]`` or ``[C, D, H, W]``."""

    _NAME = "QuantizedInstanceNorm3d"
    _DIMS = (4, 5)
