"""Fake quantization for quantization-aware training.

``FakeQuantize`` observes (while its observer is enabled), takes the observer's qparams and
rounds values to the quantized grid in float: ``q = clamp(rne(x·inv) + zp, quant_min, quant_max)``,
``out = (q − zp)·scale`` with a straight-through gradient (docs/numerics.md, "Fake quantization"). Decision D6
(docs/numerics.md): the
scale comes from the observer's formula — the same one ``convert`` uses — so what you train is
what the int8 model computes. ``FusedMovingAvgObsFakeQuantize`` is the same module with moving
average observers (torch fuses it into one op with a different scale rule; we do not).
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import torch
from torch import nn

from . import _core
from ._dtypes import (
    per_channel_affine_float_qparams,
    per_channel_symmetric,
    per_tensor_affine,
    per_tensor_symmetric,
    qint8,
    quint8,
    to_qdtype,
    to_qscheme,
)
from .observer import (
    FixedQParamsObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    _with_args,
    default_fixed_qparams_range_0to1_observer,
    default_fixed_qparams_range_neg1to1_observer,
)

__all__ = [
    "fake_quantize",
    "FakeQuantizeBase",
    "FakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "FixedQParamsFakeQuantize",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_fused_act_fake_quant",
    "default_fused_wt_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "default_embedding_fake_quant",
    "default_embedding_fake_quant_4bit",
    "enable_fake_quant",
    "disable_fake_quant",
    "enable_observer",
    "disable_observer",
]


# The grid a fake-quantized tensor lies on, for ops the int8 model requantizes onto their input's
# grid (average pooling; prepare_qat rounds their outputs the same way). Kept beside the tensors,
# not on them (an attribute would travel into torch.save / outputs): id -> (weak ref, grid).
_GRIDS: dict[int, tuple[weakref.ReferenceType, tuple[float, int, str]]] = {}


def remember_grid(t: torch.Tensor, scale: float, zero_point: int, dtype: Any) -> None:
    """Records that ``t`` holds values of the per-tensor grid ``(scale, zero_point, dtype)``."""
    key = id(t)

    def _drop(ref: weakref.ReferenceType, key: int = key) -> None:
        entry = _GRIDS.get(key)
        if entry is not None and entry[0] is ref:
            del _GRIDS[key]

    _GRIDS[key] = (weakref.ref(t, _drop), (float(scale), int(zero_point), to_qdtype(dtype).name))


def grid_of(t: Any) -> tuple[float, int, str] | None:
    """The grid recorded for ``t`` by :func:`remember_grid`, or None."""
    entry = _GRIDS.get(id(t))
    return entry[1] if entry is not None and entry[0]() is t else None


def _kernel_fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, axis: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The Rust kernel's one pass (values and mask), where it applies: a CPU float32 input and
    integer zero points; ``None`` sends the caller to the torch-ops definition (same bits)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or zp.is_floating_point() or x.numel() == 0:
        return None
    if not (-(1 << 20) <= qmin <= qmax <= (1 << 20)):
        return None
    s = scale.detach().to(torch.float32).reshape(-1).contiguous().numpy()
    z = zp.detach().to(torch.int32).reshape(-1).contiguous().numpy()
    if axis < 0 and (s.size != 1 or z.size != 1):
        return None
    out, mask = _core.fake_quantize(x.detach().contiguous().numpy(), s, z, axis, qmin, qmax)
    return torch.from_numpy(out), torch.from_numpy(mask)


class _FakeQuantFunction(torch.autograd.Function):
    """``q = clamp(rne(x·fl(1/scale)) + zp)``, ``out = fl(fl(q − zp)·scale)``; the gradient
    passes where the rounded, unclamped ``q`` lies inside ``[quant_min, quant_max]``. One pass of
    the Rust kernel on CPU float32 tensors; the same definition in torch ops otherwise."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, axis: int
    ) -> torch.Tensor:
        fast = _kernel_fake_quant(x, scale, zp, qmin, qmax, axis)
        if fast is not None:
            out, mask = fast
            ctx.save_for_backward(mask)
            return out
        return _FakeQuantFunction.torch_ops(ctx, x, scale, zp, qmin, qmax, axis)

    @staticmethod
    def torch_ops(
        ctx: Any, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, axis: int
    ) -> torch.Tensor:
        """The definition in torch ops (any device and float dtype; float zero points). Computed
        in float32 (float16 / bfloat16 inputs come back in their dtype)."""
        if axis < 0 and scale.numel() != 1:
            raise ValueError(
                f"fake_quantize: {scale.numel()} scales need the channel axis (axis >= 0); axis={axis} means per tensor"
            )
        shape = [1] * x.dim()
        if axis >= 0:
            shape[axis] = -1
        s = scale.to(torch.float32).reshape(shape)
        z = zp.to(torch.float32).reshape(shape)
        if zp.is_floating_point():
            # float zero points (per_channel_affine_float_qparams, embeddings): torch's rule
            q = torch.round(x * (1.0 / s) + z)
        else:
            q = torch.round(x * (1.0 / s)) + z
        mask = (q >= qmin) & (q <= qmax)
        if ctx is not None:
            ctx.save_for_backward(mask)
        return ((torch.clamp(q, qmin, qmax) - z) * s).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: int = -1,
) -> torch.Tensor:
    """Rounds ``x`` to the quantized grid in float (per tensor with ``axis=-1``, or per channel
    along ``axis`` >= 0), with the kernels' rounding (so training sees what the int8 model
    computes; docs/numerics.md D6) and a straight-through gradient."""
    return _FakeQuantFunction.apply(x, scale, zero_point, quant_min, quant_max, axis)


class FakeQuantizeBase(nn.Module):
    """Switches shared by every fake-quant module."""

    fake_quant_enabled: torch.Tensor
    observer_enabled: torch.Tensor
    with_args = classmethod(_with_args)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))

    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0

    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled[0] = 1 if enabled else 0

    def disable_observer(self) -> None:
        self.enable_observer(False)


class FakeQuantize(FakeQuantizeBase):
    """Observer + fake quantization (per tensor or per channel)."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int | None = None,
        quant_max: int | None = None,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        if quant_min is not None and quant_max is not None:
            if quant_min >= quant_max:
                raise ValueError(f"quant_min ({quant_min}) must be < quant_max ({quant_max})")
            observer_kwargs["quant_min"] = quant_min
            observer_kwargs["quant_max"] = quant_max
        observer_kwargs["is_dynamic"] = is_dynamic
        self.activation_post_process = observer(**observer_kwargs)
        self.quant_min = self.activation_post_process.quant_min
        self.quant_max = self.activation_post_process.quant_max
        self.is_dynamic = self.activation_post_process.is_dynamic
        self.dtype = self.activation_post_process.dtype
        self.qscheme = self.activation_post_process.qscheme
        float_zp = to_qscheme(self.qscheme) == per_channel_affine_float_qparams
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.float if float_zp else torch.int))
        self.ch_axis = getattr(self.activation_post_process, "ch_axis", -1)
        scheme = to_qscheme(self.qscheme)
        self.is_per_channel = scheme.per_channel
        self.is_symmetric_quant = scheme.symmetric

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.activation_post_process.calculate_qparams()

    def frozen_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The qparams the last forward used (what ``convert`` takes: no new observation)."""
        return self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled.item() == 1:
            self.activation_post_process(x.detach())
            scale, zp = self.calculate_qparams()
            scale, zp = scale.to(self.scale.device), zp.to(self.zero_point.device)
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(zp.shape)
            self.scale.copy_(scale)
            self.zero_point.copy_(zp)
        if self.fake_quant_enabled.item() == 1:
            axis = self.ch_axis % x.dim() if self.is_per_channel else -1
            x = fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis)
            if not self.is_per_channel:
                remember_grid(x, float(self.scale.reshape(-1)[0]), int(self.zero_point.reshape(-1)[0]), self.dtype)
        return x

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
            f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, scale={self.scale}, zero_point={self.zero_point}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """torch's fused QAT fake-quant, here as FakeQuantize with moving-average observers and the
    observer's qparams formula, the one ``convert`` uses (torch's fused op uses a different scale rule;
    docs/numerics.md D6)."""

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int = 0,
        quant_max: int = 255,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake quantization with fixed qparams (sigmoid 1/256, tanh 2/256, ...)."""

    def __init__(self, observer: Any) -> None:
        super().__init__(observer=observer)
        if not isinstance(self.activation_post_process, FixedQParamsObserver):
            raise TypeError("FixedQParamsFakeQuantize needs a FixedQParamsObserver")
        self.scale = self.activation_post_process.scale
        self.zero_point = self.activation_post_process.zero_point

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point


default_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    dtype=quint8,
    qscheme=per_tensor_affine,
    reduce_range=True,
)
default_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=qint8,
    qscheme=per_tensor_symmetric,
    reduce_range=False,
)
default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=qint8,
    qscheme=per_channel_symmetric,
    reduce_range=False,
    ch_axis=0,
)
default_fused_act_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    dtype=quint8,
)
default_fused_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=qint8,
    qscheme=per_tensor_symmetric,
)
default_fused_per_channel_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=qint8,
    qscheme=per_channel_symmetric,
)
#: Embedding weights for QAT: one scale and float zero point per row (torch.ao's
#: ``default_embedding_fake_quant``).
default_embedding_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=per_channel_affine_float_qparams,
    dtype=quint8,
    quant_min=0,
    quant_max=255,
    ch_axis=0,
    averaging_constant=1,
)
#: The same with 4-bit rows (``quint4x2``).
default_embedding_fake_quant_4bit = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=per_channel_affine_float_qparams,
    ch_axis=0,
    dtype=to_qdtype("quint4x2"),
    averaging_constant=1,
)
default_fixed_qparams_range_neg1to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_neg1to1_observer
)
default_fixed_qparams_range_0to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_0to1_observer
)

_FQ_NAME = re.compile(r"FakeQuantize")


def _is_fake_quant(mod: nn.Module) -> bool:
    return isinstance(mod, FakeQuantizeBase) or bool(_FQ_NAME.search(type(mod).__name__))


def enable_fake_quant(mod: nn.Module) -> None:
    """``model.apply(enable_fake_quant)``"""
    if _is_fake_quant(mod):
        mod.enable_fake_quant()


def disable_fake_quant(mod: nn.Module) -> None:
    """``model.apply(disable_fake_quant)``"""
    if _is_fake_quant(mod):
        mod.disable_fake_quant()


def enable_observer(mod: nn.Module) -> None:
    """``model.apply(enable_observer)``"""
    if _is_fake_quant(mod):
        mod.enable_observer()


def disable_observer(mod: nn.Module) -> None:
    """``model.apply(disable_observer)``"""
    if _is_fake_quant(mod):
        mod.disable_observer()
