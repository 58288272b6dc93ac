"""Observers: modules that watch tensors and compute quantization parameters.

Same names, arguments, buffers and state_dict keys as ``torch.ao.quantization.observer``;
``calculate_qparams()`` returns bitwise the same scale and zero point as torch 2.13 for the same
inputs (the formulas run as float32 torch tensor ops in torch's order; docs/numerics.md, "Observers and qparams").

Where ferroquant differs on purpose (decision D5 in docs/numerics.md): NaN or Inf reaching an observer raises a
``ValueError`` naming the observer (and its module once ``prepare`` has attached it), and
``calculate_qparams()`` on an observer that never saw data raises a ``RuntimeError`` instead of
returning the silent default ``(1.0, 0)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ._dtypes import (
    QDtype,
    QScheme,
    is_float_dtype,
    per_channel_affine,
    per_channel_affine_float_qparams,
    per_channel_symmetric,
    per_tensor_affine,
    per_tensor_symmetric,
    qint8,
    quint8,
    to_qdtype,
    to_qscheme,
)

__all__ = [
    "ReuseInputObserver",
    "default_reuse_input_observer",
    "ObserverBase",
    "UniformQuantizationObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "FixedQParamsObserver",
    "CalibrationError",
    "calculate_qmin_qmax",
    "default_observer",
    "default_weight_observer",
    "default_per_channel_weight_observer",
    "default_histogram_observer",
    "default_dynamic_quant_observer",
    "default_float_qparams_observer",
    "default_placeholder_observer",
    "default_debug_observer",
    "default_fixed_qparams_range_0to1_observer",
    "default_fixed_qparams_range_neg1to1_observer",
]

_EPS = torch.finfo(torch.float32).eps


class CalibrationError(RuntimeError):
    """An observer is asked for qparams it cannot give (never ran, or saw bad data)."""


class _PartialWrapper:
    """A factory made by ``Observer.with_args(...)``: calling it builds the observer."""

    def __init__(self, p: functools.partial) -> None:
        self.p = p

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.p(*args, **kwargs)

    def __repr__(self) -> str:
        return self.p.__repr__()

    def with_args(self, **kwargs: Any) -> _PartialWrapper:
        return _PartialWrapper(functools.partial(self.p, **kwargs))

    @property
    def func(self) -> Callable[..., Any]:
        return self.p.func

    @property
    def keywords(self) -> dict[str, Any]:
        return dict(self.p.keywords)


def _with_args(cls_or_self: Any, **kwargs: Any) -> _PartialWrapper:
    return _PartialWrapper(functools.partial(cls_or_self, **kwargs))


def calculate_qmin_qmax(
    quant_min: Optional[int],
    quant_max: Optional[int],
    has_customized_qrange: bool,
    dtype: Any,
    reduce_range: bool,
) -> tuple[int, int]:
    """The observer's integer range, as torch computes it (docs/numerics.md, "Observers and qparams")."""
    qd = to_qdtype(dtype)
    if has_customized_qrange:
        assert quant_min is not None and quant_max is not None
        span = quant_max - quant_min + 1
        limit = 2**32 if qd.bits == 32 else 256
        if not 0 < span <= limit:
            raise ValueError(f"quantization range [{quant_min}, {quant_max}] must be positive and span at most {limit}")
        if reduce_range:
            return quant_min // 2, quant_max // 2
        return quant_min, quant_max
    if qd.bits == 8:
        if reduce_range:
            return (qd.qmin // 2, qd.qmax // 2)
        return qd.qmin, qd.qmax
    if qd.bits == 32:
        return qd.qmin, qd.qmax
    return 0, 15


def _check_averaging_constant(who: str, c: Any) -> None:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < float(c) <= 1:
        raise ValueError(f"{who}: averaging_constant must be a number in (0, 1] (default 0.01), got {c!r}")


class ObserverBase(nn.Module):
    """Base of all observers: holds the target ``dtype`` and ``is_dynamic``."""

    with_args = classmethod(_with_args)

    def __init__(self, dtype: Any, is_dynamic: bool = False) -> None:
        super().__init__()
        self.dtype = dtype
        self.is_dynamic = is_dynamic
        #: Filled in by ``prepare`` so errors can say which module needs attention.
        self._owner_name: Optional[str] = None

    def _who(self) -> str:
        owner = f" of module '{self._owner_name}'" if self._owner_name else ""
        return f"{type(self).__name__}{owner}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def calculate_qparams(self, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _finite(*ts: torch.Tensor) -> bool:
    """Whether every value of the tensors is finite (one-element tensors through .item(): the
    observers run this on every QAT step, so it is kept cheap)."""
    for t in ts:
        if t.numel() == 1:
            if not math.isfinite(t.item()):
                return False
        elif not bool(torch.isfinite(t).all()):
            return False
    return True


def _check_finite(obs: ObserverBase, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """NaN / Inf are an error, not silent poison (torch would make the scale NaN; docs/numerics.md D5)."""
    if not _finite(lo, hi):
        kind = "NaN" if bool(torch.isnan(lo).any() or torch.isnan(hi).any()) else "Inf"
        raise ValueError(
            f"{obs._who()} saw {kind} in its input; calibration data must be finite "
            "(check the model's float outputs or the calibration batch)"
        )


_F32_MAX = float(torch.finfo(torch.float32).max)


def _check_input(obs: ObserverBase, x: Any) -> None:
    """What an observer can watch: a real-valued tensor with values (not on the meta device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{obs._who()} expects a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{obs._who()} expects a real-valued tensor, got {x.dtype}")
    if x.device.type == "meta":
        raise ValueError(
            f"{obs._who()} got a tensor on the meta device, which holds no values to calibrate with; run "
            "calibration data on a real device"
        )


def _as_float32(obs: ObserverBase, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (finite) batch min and max as float32, the observers' buffer dtype; finite data
    beyond float32's range (float64 input) is an error, not a silent Inf."""
    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    if not _finite(lo32, hi32):
        big = max(float(lo.abs().max()), float(hi.abs().max()))
        raise ValueError(
            f"{obs._who()} saw values as large as {big:.6g} ({lo.dtype}), beyond float32's range "
            f"(±{_F32_MAX:.8g}); observers keep min, max and scale in float32, so such data cannot be quantized: "
            "rescale it, or keep this part of the model in float (qconfig = None)"
        )
    return lo32, hi32


def _moving_average(old: torch.Tensor, new: torch.Tensor, c: float) -> torch.Tensor:
    """``old + c·(new − old)`` in float32 as torch computes it, in float64 where the float32
    difference overflows (finite values at opposite ends of float32's range)."""
    out = old + c * (new - old)
    if not _finite(out):
        out = (old.double() + c * (new.double() - old.double())).to(old.dtype)
    return out


class UniformQuantizationObserverBase(ObserverBase):
    """Common code of the min/max and histogram observers: qscheme, ranges, the qparams formula."""

    _version = 3
    eps: torch.Tensor

    def __init__(
        self,
        dtype: Any = quint8,
        qscheme: Any = per_tensor_affine,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        factory_kwargs: Optional[dict] = None,
        eps: float = _EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < float(eps) < float("inf")):
            raise ValueError(
                f"{type(self).__name__}: eps (the smallest scale it returns) must be a finite number > 0, "
                f"got {eps!r}; the default is torch.finfo(torch.float32).eps"
            )
        factory_kwargs = dict(factory_kwargs or {})
        self._qdtype: QDtype = to_qdtype(dtype)
        self.qscheme = qscheme
        self._qscheme: QScheme = to_qscheme(qscheme)
        self.reduce_range = reduce_range
        self.register_buffer("eps", torch.tensor([eps], **factory_kwargs))
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        if self.has_customized_qrange:
            assert quant_min is not None and quant_max is not None
            if not quant_min <= 0 <= quant_max:
                raise ValueError(f"quant range [{quant_min}, {quant_max}] must include 0")
            if quant_min >= quant_max:
                raise ValueError(f"quant_min ({quant_min}) must be < quant_max ({quant_max})")
        self.quant_min, self.quant_max = calculate_qmin_qmax(
            quant_min, quant_max, self.has_customized_qrange, self._qdtype, reduce_range
        )
        if self._qscheme.symmetric and reduce_range and self._qdtype == quint8:
            raise NotImplementedError("cannot reduce range for symmetric quantization with quint8")

    def _calculate_qparams(self, min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point from min/max, as torch 2.13 computes them (docs/numerics.md, "Observers and
        qparams")."""
        if (
            min_val.numel() == 0
            or max_val.numel() == 0
            or (min_val.dim() == 0 and bool(min_val == float("inf")) and bool(max_val == float("-inf")))
        ):
            raise CalibrationError(
                f"{self._who()} has not observed any data, so it has no qparams; run calibration "
                "data through the prepared model before convert (torch would silently use scale 1.0 and zero point 0; "
                "see docs/numerics.md, D5)"
            )
        if bool(torch.any(min_val > max_val)):
            raise CalibrationError(f"{self._who()}: min {min_val} is greater than max {max_val}")
        _check_finite(self, min_val, max_val)
        scale, zero_point = self._qparams_formula(min_val, max_val, self.eps)
        if not _finite(scale):
            # float32 overflowed in max − min (finite data at opposite ends of float32's range):
            # the same formula in float64, scale rounded to float32 and the zero point taken from it
            scale64, _ = self._qparams_formula(min_val.double(), max_val.double(), self.eps.double())
            scale = scale64.to(min_val.dtype)
            if not bool(torch.isfinite(scale).all()):
                raise CalibrationError(
                    f"{self._who()}: the observed range [{float(min_val.min()):.6g}, {float(max_val.max()):.6g}] "
                    f"over {self.quant_max - self.quant_min + 1} quantization levels needs a scale beyond float32's "
                    "range; rescale the data or use a wider quant_min / quant_max"
                )
            _, zero_point = self._qparams_formula(min_val.double(), max_val.double(), self.eps.double(), scale.double())
        return scale, zero_point

    def _qparams_formula(
        self, min_val: torch.Tensor, max_val: torch.Tensor, eps: torch.Tensor, scale: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's qparams formula in the dtype of ``min_val``; with ``scale`` given, only the zero
        point is computed (from that scale)."""
        qmin, qmax = self.quant_min, self.quant_max
        given_scale = scale
        min_neg = torch.min(min_val, torch.zeros_like(min_val))
        max_pos = torch.max(max_val, torch.zeros_like(max_val))
        zero_point = torch.zeros(min_neg.size(), dtype=torch.int64)
        if self._qscheme.symmetric:
            max_pos = torch.max(-min_neg, max_pos)
            scale = torch.max(max_pos / (float(qmax - qmin) / 2), eps)
            if self._qdtype == quint8:
                mid = (qmin + qmax) // 2 if self.has_customized_qrange else 128
                zero_point = zero_point.new_full(zero_point.size(), mid)
        elif self._qscheme == per_channel_affine_float_qparams:
            scale = (max_val - min_val) / float(qmax - qmin)
            scale = torch.where(scale > eps, scale, torch.ones_like(scale))
            if given_scale is not None:
                scale = given_scale
            zero_point = (-1 * min_val / scale).to(torch.float32)
        else:
            scale = torch.max((max_pos - min_neg) / float(qmax - qmin), eps)
            if given_scale is not None:
                scale = given_scale
            zero_point = qmin - torch.round(min_neg / scale).to(torch.int)
            zero_point = torch.clamp(zero_point, qmin, qmax)
        if scale.dim() == 0:
            scale = scale.reshape(1)
        if zero_point.dim() == 0:
            zero_point = zero_point.reshape(1)
        return scale, zero_point

    def reset_min_max_vals(self) -> None:
        raise NotImplementedError


class MinMaxObserver(UniformQuantizationObserverBase):
    """Running min and max of every tensor seen; per-tensor qparams."""

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(
        self,
        dtype: Any = quint8,
        qscheme: Any = per_tensor_affine,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        factory_kwargs: Optional[dict] = None,
        eps: float = _EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if to_qscheme(qscheme).per_channel:
            raise NotImplementedError(
                f"{type(self).__name__} supports per_tensor_affine and per_tensor_symmetric, got {qscheme}"
            )
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        fk = dict(factory_kwargs or {})
        self.register_buffer("min_val", torch.tensor(float("inf"), **fk))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **fk))

    def _batch_min_max(self, x_orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # min / max in the input's dtype, then to float32 (rounding is monotonic: the same values
        # as converting first, as torch does, but float64 data beyond float32 is told apart from Inf)
        lo, hi = torch.aminmax(x_orig.detach())
        _check_finite(self, lo, hi)
        return _as_float32(self, lo, hi)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        _check_input(self, x_orig)
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self._batch_min_max(x_orig)
        self.min_val.copy_(torch.min(lo, self.min_val))
        self.max_val.copy_(torch.max(hi, self.max_val))
        return x_orig

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self._calculate_qparams(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self) -> None:
        self.min_val.copy_(torch.tensor(float("inf")))
        self.max_val.copy_(torch.tensor(float("-inf")))


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Moving averages of the batch min and max (``averaging_constant`` c):
    ``min = min + c·(batch_min − min)``, the first batch copied as is."""

    def __init__(
        self,
        averaging_constant: float = 0.01,
        dtype: Any = quint8,
        qscheme: Any = per_tensor_affine,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: float = _EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_averaging_constant(type(self).__name__, averaging_constant)
        if is_dynamic and averaging_constant != 1:
            raise NotImplementedError(
                f"MovingAverageMinMaxObserver supports is_dynamic only with averaging_constant=1, "
                f"got {averaging_constant}"
            )
        self.averaging_constant = averaging_constant
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        _check_input(self, x_orig)
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self._batch_min_max(x_orig)
        if bool(self.min_val == float("inf")) and bool(self.max_val == float("-inf")):
            new_lo, new_hi = lo, hi
        else:
            c = self.averaging_constant
            new_lo = _moving_average(self.min_val, lo, c)
            new_hi = _moving_average(self.max_val, hi, c)
        self.min_val.copy_(new_lo)
        self.max_val.copy_(new_hi)
        return x_orig


def _channels_first_2d(x: torch.Tensor, ch_axis: int, dtype: torch.dtype) -> torch.Tensor:
    """View ``x`` as ``[channels, everything else]`` (torch's permute + flatten)."""
    if x.dim() == 1:  # every element its own channel (torch's flatten(start_dim=1) fails here)
        return x.to(dtype).reshape(-1, 1)
    axes = list(range(x.dim()))
    axes[ch_axis] = 0
    axes[0] = ch_axis
    return torch.flatten(x.permute(axes).to(dtype), start_dim=1)


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """Running min and max per slice along ``ch_axis``; per-channel qparams."""

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(
        self,
        ch_axis: int = 0,
        dtype: Any = quint8,
        qscheme: Any = per_channel_affine,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        factory_kwargs: Optional[dict] = None,
        eps: float = _EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if not to_qscheme(qscheme).per_channel:
            raise NotImplementedError(
                f"{type(self).__name__} supports per_channel_symmetric, per_channel_affine and "
                f"per_channel_affine_float_qparams, got {qscheme}"
            )
        if is_dynamic:
            raise NotImplementedError(f"{type(self).__name__} does not support dynamic quantization")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        fk = dict(factory_kwargs or {})
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.tensor([], **fk))
        self.register_buffer("max_val", torch.tensor([], **fk))

    def _batch_min_max(self, x_orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nd, ch = x_orig.dim(), self.ch_axis
        if nd == 0:
            raise ValueError(
                f"{self._who()} observes per channel along ch_axis {ch}, so it needs inputs with at least one "
                "dimension, got a 0-d tensor"
            )
        if not -nd <= ch < nd:
            raise IndexError(
                f"{self._who()}: ch_axis {ch} is out of range for a {nd}-d input: expected an axis in [{-nd}, {nd - 1}]"
            )
        y = _channels_first_2d(x_orig.detach(), ch % nd, x_orig.dtype)
        lo, hi = torch.aminmax(y, dim=1)
        _check_finite(self, lo, hi)
        return _as_float32(self, lo, hi)

    def _store(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.min_val.resize_(lo.shape)
        self.max_val.resize_(hi.shape)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        _check_input(self, x_orig)
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self._batch_min_max(x_orig)
        if self.min_val.numel() != 0 and self.max_val.numel() != 0:
            if self.min_val.shape != lo.shape:
                raise ValueError(
                    f"{self._who()} saw {lo.numel()} channels along axis {self.ch_axis} after "
                    f"{self.min_val.numel()} before; per-channel inputs must keep their channel count"
                )
            lo, hi = torch.min(lo, self.min_val), torch.max(hi, self.max_val)
        self._store(lo, hi)
        return x_orig

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self._calculate_qparams(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self) -> None:
        self.min_val = torch.tensor([])
        self.max_val = torch.tensor([])

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
        # Buffers start empty: take the saved shapes before the default copy.
        version = local_metadata.get("version", None)
        names = ("min_vals", "max_vals") if version is not None and version < 3 else ("min_val", "max_val")
        for saved, attr in zip(names, ("min_val", "max_val")):
            key = prefix + saved
            if key in state_dict:
                getattr(self, attr).resize_(state_dict[key].shape)
                if saved != attr:
                    state_dict[prefix + attr] = state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel moving averages of the batch min and max."""

    def __init__(
        self,
        averaging_constant: float = 0.01,
        ch_axis: int = 0,
        dtype: Any = quint8,
        qscheme: Any = per_channel_affine,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: float = _EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_averaging_constant(type(self).__name__, averaging_constant)
        super().__init__(
            ch_axis=ch_axis,
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.averaging_constant = averaging_constant

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        _check_input(self, x_orig)
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self._batch_min_max(x_orig)
        if self.min_val.numel() != 0 and self.max_val.numel() != 0:
            c = self.averaging_constant
            lo = _moving_average(self.min_val, lo, c)
            hi = _moving_average(self.max_val, hi, c)
        self._store(lo, hi)
        return x_orig


class HistogramObserver(UniformQuantizationObserverBase):
    """A running histogram (``bins`` bins) of the values seen; ``calculate_qparams`` picks the
    range that minimises the L2 quantization error (torch's algorithm; docs/numerics.md, "Observers and qparams")."""

    min_val: torch.Tensor
    max_val: torch.Tensor
    histogram: torch.Tensor

    def __init__(
        self,
        bins: int = 2048,
        dtype: Any = quint8,
        qscheme: Any = per_tensor_affine,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        factory_kwargs: Optional[dict] = None,
        eps: float = _EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"HistogramObserver: bins must be an int >= 1 (default 2048), got {bins!r}")
        if to_qscheme(qscheme).per_channel:
            raise NotImplementedError(f"HistogramObserver supports per-tensor qschemes only, got {qscheme}")
        if is_dynamic:
            raise NotImplementedError("HistogramObserver does not support dynamic quantization")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        fk = dict(factory_kwargs or {})
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins, **fk))
        self.register_buffer("min_val", torch.tensor(float("inf"), **fk))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **fk))
        self.dst_nbins = 2**self._qdtype.bits
        self.upsample_rate = 16

    # -- the L2 error of a candidate range -------------------------------------------------
    @staticmethod
    def _get_norm(begin: torch.Tensor, end: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        return density * ((end * end * end - begin * begin * begin) / 3)

    def _compute_quantization_error(self, start: int, end: int, dtype: torch.dtype = torch.float32) -> float:
        """torch's L2 error estimate (in float32 as torch; ``dtype=float64`` for wide ranges,
        whose cubed offsets overflow float32)."""
        bin_width = (self.max_val.item() - self.min_val.item()) / self.bins
        dst_w = bin_width * (end - start + 1) / self.dst_nbins
        if dst_w == 0.0:
            return 0.0
        src = torch.arange(self.bins, dtype=dtype)
        b = (src - start) * bin_width
        e = b + bin_width
        db = torch.clamp(torch.div(b, dst_w, rounding_mode="floor"), 0, self.dst_nbins - 1)
        de = torch.clamp(torch.div(e, dst_w, rounding_mode="floor"), 0, self.dst_nbins - 1)
        density = self.histogram.to(dtype) / bin_width
        norm = torch.zeros(self.bins, dtype=dtype)
        half = torch.tensor(dst_w / 2, dtype=dtype)
        norm += self._get_norm(b - (db + 0.5) * dst_w, torch.ones(self.bins, dtype=dtype) * (dst_w / 2), density)
        norm += (de - db - 1) * self._get_norm(-half, half, density)
        de_center = de * dst_w + dst_w / 2
        norm += self._get_norm(-half, e - de_center, density)
        return norm.sum().item()

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Trims the histogram from whichever side holds less mass while the error drops."""
        if self.histogram.numel() != self.bins:
            raise ValueError(f"histogram has {self.histogram.numel()} bins, expected {self.bins}")
        # float32 error terms, as torch; again in float64 if they overflow (wide ranges, where
        # torch's search compares Inf / NaN errors and trims arbitrarily)
        found = self._search_bins(torch.float32)
        if found is None:
            found = self._search_bins(torch.float64)
            assert found is not None
        start, end = found
        if not _span_overflows(self.min_val, self.max_val):
            bin_width = (self.max_val - self.min_val) / self.bins
            return self.min_val + bin_width * start, self.min_val + bin_width * (end + 1)
        lo, hi = self.min_val.double(), self.max_val.double()
        width = (hi - lo) / self.bins
        new_min = torch.clamp(lo + width * start, lo, hi).to(self.min_val.dtype)
        new_max = torch.clamp(lo + width * (end + 1), lo, hi).to(self.max_val.dtype)
        return new_min, new_max

    def _search_bins(self, err_dtype: torch.dtype) -> Optional[tuple[int, int]]:
        """The first and last histogram bin kept, or ``None`` when a float32 error overflowed."""
        total = torch.sum(self.histogram).item()
        # float32 cumulative sums; compared against float32-rounded thresholds, as torch does
        csum = torch.cumsum(self.histogram, dim=0).tolist()
        f32 = _to_f32
        step = 1e-5
        alpha, beta = 0.0, 1.0
        start, end = 0, self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            if start == end:
                break  # one bin left: no later step can move either end (torch spins here to the end)
            next_alpha, next_beta = alpha + step, beta - step
            lo_thr, hi_thr = f32(next_alpha * total), f32(next_beta * total)
            left, right = start, end
            while left < end and csum[left] < lo_thr:
                left += 1
            while right > start and csum[right] > hi_thr:
                right -= 1
            next_start, next_end = start, end
            if (left - start) > (end - right):
                next_start = left
                alpha = next_alpha
            else:
                next_end = right
                beta = next_beta
            if next_start == start and next_end == end:
                continue
            norm = self._compute_quantization_error(next_start, next_end, err_dtype)
            if not math.isfinite(norm) and err_dtype == torch.float32:
                return None
            if norm > norm_min:
                break
            norm_min = norm
            start, end = next_start, next_end
        return start, end

    # -- merging histograms across batches ---------------------------------------------------
    def _upscale_histogram(
        self,
        hist: torch.Tensor,
        orig_min: torch.Tensor,
        orig_max: torch.Tensor,
        new_min: torch.Tensor,
        new_max: torch.Tensor,
    ) -> torch.Tensor:
        rate = self.upsample_rate
        if _span_overflows(new_min, new_max):
            hist, orig_min, orig_max, new_min, new_max = (
                t.double() for t in (hist, orig_min, orig_max, new_min, new_max)
            )
        hist = hist.repeat_interleave(rate) / rate
        sub_bin = (orig_max - orig_min) / (self.bins * rate)
        mids = torch.linspace(orig_min, orig_max, self.bins * rate + 1)[:-1] + 0.5 * sub_bin
        edges = torch.linspace(new_min, new_max, self.bins + 1)
        idx = torch.bucketize(mids, edges, right=True) - 1
        idx[idx >= self.bins] = self.bins - 1
        idx[idx < 0] = 0
        return torch.bincount(idx, weights=hist, minlength=self.bins)

    def _combine_histograms(
        self,
        orig_hist: torch.Tensor,
        orig_min: torch.Tensor,
        orig_max: torch.Tensor,
        upd_hist: torch.Tensor,
        new_min: torch.Tensor,
        new_max: torch.Tensor,
    ) -> torch.Tensor:
        if bool(new_min == orig_min) and bool(new_max == orig_max):
            return orig_hist + upd_hist
        if bool(orig_min == orig_max):
            mass = torch.sum(orig_hist)
            moved = _histc(orig_min, self.bins, new_min, new_max) * mass
            return moved + upd_hist
        return upd_hist + self._upscale_histogram(orig_hist, orig_min, orig_max, new_min, new_max)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        _check_input(self, x_orig)
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        if not x.is_floating_point():  # integer or bool data: as float32 (torch.histc needs floats)
            x = x.to(torch.float32)
        x_min, x_max = torch.aminmax(x)
        _check_finite(self, x_min, x_max)
        _as_float32(self, x_min, x_max)
        if bool(self.min_val == float("inf")) or bool(self.max_val == float("-inf")):
            self.min_val.resize_(x_min.shape).copy_(x_min)
            self.max_val.resize_(x_max.shape).copy_(x_max)
            hist = _histc(x, self.bins, x_min, x_max)
            self.histogram.detach_().resize_(hist.shape).copy_(hist)
            return x_orig
        cur_min, cur_max = self.min_val, self.max_val
        new_min = torch.min(cur_min, x_min).detach()
        new_max = torch.max(cur_max, x_max).detach()
        upd = _histc(x, self.bins, new_min, new_max)
        if bool(new_min == cur_min) and bool(new_max == cur_max):
            combined = self.histogram + upd
            self.histogram.detach_().resize_(combined.shape).copy_(combined)
        else:
            combined = self._combine_histograms(self.histogram, cur_min, cur_max, upd, new_min, new_max)
            self.histogram.detach_().resize_(combined.shape).copy_(combined)
            self.min_val.detach_().resize_(new_min.shape).copy_(new_min)
            self.max_val.detach_().resize_(new_max.shape).copy_(new_max)
        return x_orig

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if bool(self.min_val == float("inf")) and bool(self.max_val == float("-inf")):
            raise CalibrationError(
                f"{self._who()} has not observed any data, so it has no qparams; run calibration "
                "data through the prepared model before convert (torch would silently use scale 1.0 and zero point 0; "
                "see docs/numerics.md, D5)"
            )
        new_min, new_max = self._non_linear_param_search()
        return self._calculate_qparams(new_min, new_max)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self) -> None:
        self.min_val.copy_(torch.tensor(float("inf")))
        self.max_val.copy_(torch.tensor(float("-inf")))
        self.histogram.zero_()


def _to_f32(v: float) -> float:
    """Rounds a double to the nearest float32 (ties to even), as torch does for a scalar
    compared against a float32 tensor."""
    return float(np.float32(v))


def _span_overflows(lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """Whether ``hi − lo`` overflows float32 (finite ends at opposite sides of its range)."""
    return not bool(torch.isfinite(hi.to(torch.float32) - lo.to(torch.float32)))


def _histc(x: torch.Tensor, bins: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``torch.histc`` over ``[lo, hi]``, in float64 when the span overflows float32 (where
    float32's histc would drop every value)."""
    if bool(lo == hi):
        # constant data (every value equals lo): torch.histc widens the range to [lo - 1, hi + 1],
        # which puts it all in the middle bin, but raises where ±1 vanishes (|lo| beyond 2^53)
        counts = torch.zeros(bins, dtype=torch.float32)
        counts[bins // 2] = float(x.numel())
        return counts
    if _span_overflows(lo, hi):
        return torch.histc(x.double(), bins, min=float(lo), max=float(hi))
    if x.dtype in (torch.float16, torch.bfloat16):
        limit = float(torch.finfo(x.dtype).max)
        if max(abs(float(lo)), abs(float(hi))) > limit:
            # an earlier batch widened the range beyond this batch's dtype: torch.histc would fail
            # to convert the bounds (float16 ends at 65504)
            x = x.to(torch.float32)
    return torch.histc(x, bins, min=lo, max=hi)  # type: ignore[arg-type]


class FixedQParamsObserver(ObserverBase):
    """Returns fixed ``(scale, zero_point)`` whatever it sees (sigmoid, tanh, ...)."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        scale: float,
        zero_point: int,
        dtype: Any = quint8,
        qscheme: Any = per_tensor_affine,
        quant_min: int = 0,
        quant_max: int = 255,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if is_dynamic:
            raise NotImplementedError("FixedQParamsObserver does not support dynamic quantization")
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int))
        self.qscheme = qscheme

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point


class PlaceholderObserver(ObserverBase):
    """Records nothing; carries dtype, range and ``is_dynamic`` to convert (dynamic
    activations, float16, weight-only)."""

    def __init__(
        self,
        dtype: Any = torch.float32,
        custom_op_name: str = "",
        compute_dtype: Any = None,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        qscheme: Any = None,
        eps: Optional[float] = None,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        if qscheme is None:
            qscheme = per_tensor_affine
        if eps is None:
            eps = _EPS
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qscheme = qscheme
        self.eps = eps
        self.custom_op = custom_op_name
        if compute_dtype is not None:
            is_dynamic = True
            self.is_dynamic = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise CalibrationError(
            "PlaceholderObserver records nothing and has no qparams; it only carries dtype and range "
            "(dynamic quantization chooses activation qparams at run time)"
        )


class NoopObserver(ObserverBase):
    """Records nothing (float16 and similar)."""

    def __init__(self, dtype: Any = torch.float16, custom_op_name: str = "") -> None:
        super().__init__(dtype=dtype)
        self.dtype = dtype
        self.custom_op = custom_op_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise CalibrationError("NoopObserver records nothing and has no qparams")


class ReuseInputObserver(ObserverBase):
    """Marks an op whose output reuses its input's qparams (torch's ``ReuseInputObserver``, used by
    the default FX qconfig mapping for ``reshape``): it records nothing and has no qparams of its
    own — FX mode shares the input's observer."""

    def __init__(self) -> None:
        super().__init__(dtype=quint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise CalibrationError("ReuseInputObserver has no qparams of its own: the op reuses its input's")


def _is_float_observer(obs: Any) -> bool:
    return is_float_dtype(getattr(obs, "dtype", None))


# Named defaults, as torch.ao.quantization.observer defines them.
default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_reuse_input_observer = ReuseInputObserver
default_debug_observer = MinMaxObserver  # torch's RecordingObserver records tensors; min/max suffices here
default_weight_observer = MinMaxObserver.with_args(dtype=qint8, qscheme=per_tensor_symmetric)
weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=qint8, qscheme=per_tensor_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(dtype=qint8, qscheme=per_channel_symmetric)
per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=qint8, qscheme=per_channel_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
#: Dynamic activations: one scale and zero point per row (per token) over 0..127. Every row's
#: step is at most torch's per-tensor 0..127 step, so the error stays at or below torch's, and
#: 0..127 keeps AVX2's fast ``vpmaddubsw`` exact (torch: per tensor, 0..255 → 0..127 at run time).
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=quint8, quant_min=0, quant_max=127, is_dynamic=True, qscheme=per_channel_affine
)
default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=quint8, qscheme=per_channel_affine_float_qparams, ch_axis=0
)
default_float_qparams_observer_4bit = PerChannelMinMaxObserver.with_args(
    dtype=to_qdtype("quint4x2"), qscheme=per_channel_affine_float_qparams, ch_axis=0
)
default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=quint8, quant_min=0, quant_max=255
)
default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=quint8, quant_min=0, quant_max=255
)
default_symmetric_fixed_qparams_observer = default_fixed_qparams_range_neg1to1_observer
default_affine_fixed_qparams_observer = default_fixed_qparams_range_0to1_observer
