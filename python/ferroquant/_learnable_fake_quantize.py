"""``_LearnableFakeQuantize``: fake quantization whose scale and zero point are trained by
backpropagation (LSQ, https://arxiv.org/abs/1902.08153; LSQ+ for the zero point), as torch.ao's
``torch.ao.quantization._learnable_fake_quantize._LearnableFakeQuantize``.

Forward rounds like every ferroquant fake-quant (``q = clamp(rne(x·fl(1/s)) + zp)``, the kernels'
rule, docs/numerics.md D6) with ``zp = clamp(rne(zero_point), quant_min, quant_max)``. Gradients
are torch's: ``x`` gets the straight-through mask; where ``x`` lies inside the range the scale
gets ``((q − zp)·s − x)/s``, outside it ``quant_min − zp`` or ``quant_max − zp``; the zero point
gets ``−s`` outside the range and 0 inside; both are summed (per channel when per-channel) and
multiplied by ``grad_factor`` (``1/√(numel·quant_max)`` with ``use_grad_scaling``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parameter import Parameter

from ._dtypes import per_channel_affine, per_channel_symmetric, per_tensor_symmetric, to_qdtype, to_qscheme
from .fake_quantize import FakeQuantizeBase, remember_grid

__all__ = ["_LearnableFakeQuantize"]


class _LearnableFakeQuantFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qmin: int,
        qmax: int,
        grad_factor: float,
        axis: int,
    ) -> torch.Tensor:
        shape = [1] * x.dim()
        if axis >= 0:
            shape[axis] = -1
        s = scale.detach().to(torch.float32).reshape(shape)
        zp = torch.clamp(torch.round(zero_point.detach()), qmin, qmax).to(torch.float32).reshape(shape)
        inv = 1.0 / s
        q = torch.round(x * inv) + zp
        qc = torch.clamp(q, qmin, qmax)
        out = (qc - zp) * s
        ctx.save_for_backward(x, s, zp, q, out)
        ctx.qmin, ctx.qmax, ctx.grad_factor, ctx.axis = qmin, qmax, grad_factor, axis
        ctx.scale_shape, ctx.zp_shape = scale.shape, zero_point.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        x, s, zp, q, out = ctx.saved_tensors
        below, above = q < ctx.qmin, q > ctx.qmax
        inside = ~(below | above)
        grad_x = grad * inside
        d_scale = torch.where(
            inside, (out - x) * (1.0 / s), torch.where(below, ctx.qmin - zp, ctx.qmax - zp).expand_as(x)
        )
        d_scale = grad * d_scale * ctx.grad_factor
        d_zp = torch.where(inside, torch.zeros_like(x), -s.expand_as(x)) * grad * ctx.grad_factor
        if ctx.axis >= 0:
            dims = [d for d in range(x.dim()) if d != ctx.axis]
            d_scale = d_scale.sum(dims)
            d_zp = d_zp.sum(dims)
        else:
            d_scale = d_scale.sum().reshape(1)
            d_zp = d_zp.sum().reshape(1)
        return grad_x, d_scale.reshape(ctx.scale_shape), d_zp.reshape(ctx.zp_shape), None, None, None, None


class _LearnableFakeQuantize(FakeQuantizeBase):
    """Fake quantization with trainable ``scale`` and ``zero_point`` parameters (LSQ). Starts
    with observer estimates (``static_enabled``); ``enable_param_learning()`` switches to
    learning them by backpropagation. ``convert`` uses the learned values."""

    def __init__(
        self,
        observer: Any,
        quant_min: int = 0,
        quant_max: int = 255,
        scale: float = 1.0,
        zero_point: float = 0.0,
        channel_len: int = -1,
        use_grad_scaling: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        if quant_min >= quant_max:
            raise ValueError(f"quant_min ({quant_min}) must be < quant_max ({quant_max})")
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        observer_kwargs["quant_min"] = quant_min
        observer_kwargs["quant_max"] = quant_max
        self.use_grad_scaling = use_grad_scaling
        if channel_len == -1:
            self.scale = Parameter(torch.tensor([scale]))
            self.zero_point = Parameter(torch.tensor([zero_point]))
        else:
            if not (isinstance(channel_len, int) and channel_len > 0):
                raise ValueError(f"channel_len must be a positive integer (or -1 for per tensor), got {channel_len!r}")
            self.scale = Parameter(torch.tensor([scale] * channel_len))
            self.zero_point = Parameter(torch.tensor([zero_point] * channel_len))
        self.activation_post_process = observer(**observer_kwargs)
        dtype = to_qdtype(self.activation_post_process.dtype)
        if quant_min < dtype.qmin or quant_max > dtype.qmax:
            raise ValueError(f"[{quant_min}, {quant_max}] is outside {dtype}'s range [{dtype.qmin}, {dtype.qmax}]")
        self.dtype = self.activation_post_process.dtype
        self.qscheme = self.activation_post_process.qscheme
        self.ch_axis = getattr(self.activation_post_process, "ch_axis", -1)
        scheme = to_qscheme(self.qscheme)
        self.is_per_channel = scheme.per_channel
        self.register_buffer("static_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("learning_enabled", torch.tensor([0], dtype=torch.uint8))
        self.bitwidth = int(torch.log2(torch.tensor(quant_max - quant_min + 1).double()).item())
        self.register_buffer("eps", torch.tensor([torch.finfo(torch.float32).eps]))

    def enable_param_learning(self) -> _LearnableFakeQuantize:
        """Learn scale and zero point by backpropagation; stop the observer's estimates."""
        return self.toggle_qparam_learning(True).toggle_fake_quant(True).toggle_observer_update(False)

    def enable_static_estimate(self) -> _LearnableFakeQuantize:
        """Scale and zero point from the observer; no learning."""
        return self.toggle_qparam_learning(False).toggle_fake_quant(True).toggle_observer_update(True)

    def enable_static_observation(self) -> _LearnableFakeQuantize:
        """Observe only: outputs pass through unchanged."""
        return self.toggle_qparam_learning(False).toggle_fake_quant(False).toggle_observer_update(True)

    def toggle_observer_update(self, enabled: bool = True) -> _LearnableFakeQuantize:
        self.static_enabled[0] = int(enabled)
        return self

    def enable_observer(self, enabled: bool = True) -> None:
        self.toggle_observer_update(enabled)

    def toggle_qparam_learning(self, enabled: bool = True) -> _LearnableFakeQuantize:
        self.learning_enabled[0] = int(enabled)
        self.scale.requires_grad = enabled
        self.zero_point.requires_grad = enabled
        return self

    def toggle_fake_quant(self, enabled: bool = True) -> _LearnableFakeQuantize:
        self.fake_quant_enabled[0] = int(enabled)
        return self

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned (or estimated) qparams as ``convert`` uses them: scale ≥ eps, zero point
        rounded and clamped to ``[quant_min, quant_max]``."""
        self.scale.data.clamp_(min=float(self.eps))
        zp = self.zero_point.detach().round().clamp(self.quant_min, self.quant_max).long()
        return self.scale.detach(), zp

    def frozen_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.calculate_qparams()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zp = self.activation_post_process.calculate_qparams()
            self.scale.data.copy_(scale.to(self.scale.device))
            self.zero_point.data.copy_(zp.to(self.zero_point.device))
        else:
            self.scale.data.clamp_(min=float(self.eps))
        if self.fake_quant_enabled[0] == 1:
            scheme = to_qscheme(self.qscheme)
            if scheme in (per_channel_symmetric, per_tensor_symmetric):
                self.zero_point.data.zero_()
            grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
            axis = self.ch_axis % x.dim() if scheme in (per_channel_symmetric, per_channel_affine) else -1
            x = _LearnableFakeQuantFunction.apply(
                x, self.scale, self.zero_point, self.quant_min, self.quant_max, grad_factor, axis
            )
            if axis < 0:
                _, zp = self.calculate_qparams()
                remember_grid(x, float(self.scale.detach().reshape(-1)[0]), int(zp.reshape(-1)[0]), self.dtype)
        return x
