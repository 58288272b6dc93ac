"""Linear layers with low-precision weights and float activations.

- :class:`WeightOnlyLinear` (+): int8 weights (per channel or per tensor) in memory, float32
  activations, the dequantization fused into the GEMM (``fq.int8_weight_only_qconfig``). A
  quarter of the fp32 weight memory; nothing about the activations is quantized, so accuracy
  depends on the weights only.
- :class:`Float16Linear`: fp16 weights, fp32 activations and compute (torch's fp16 dynamic
  Linear, ``float16_dynamic_qconfig`` / ``quantize_dynamic(..., dtype=torch.float16)``).

Both run ``ferroquant._core.PackedLowLinear``: the weights are widened to f32 in registers and
each output element is one FMA chain over k in order, the same bits on every engine and thread
count (docs/numerics.md D8).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..._core import PackedLowLinear
from ..._ops import KERNEL_ERRORS, raise_named
from ..._threads import get_num_threads
from ...qtensor import QTensor
from ._weights import (
    AtomicLoad,
    WeightedQuantModule,
    _bias_problem,
    _normal,
    declines_torch_fast_paths,
    quantize_weight,
)

__all__ = ["WeightOnlyLinear", "Float16Linear", "low_precision_kind"]

_FP16_MAX = 65504.0


def low_precision_kind(qconfig: Any) -> Optional[str]:
    """``"float16"`` for an fp16-weight qconfig, ``"int8_weight_only"`` for int8 weights with
    float activations, None otherwise (int8 dynamic or static)."""
    weight_dtype = getattr(qconfig.weight(), "dtype", None)
    if weight_dtype == torch.float16:
        return "float16"
    act_dtype = getattr(qconfig.activation(), "dtype", None)
    if act_dtype == torch.float32:
        return "int8_weight_only"
    return None


def _float_forward(module: Any, x: Any, packed: PackedLowLinear, bias: Optional[np.ndarray]) -> torch.Tensor:
    """``x`` (float, ``[..., in]``) through the packed low-precision weights."""
    who = module._label()
    if not isinstance(x, torch.Tensor):
        if isinstance(x, QTensor):
            raise TypeError(
                f"{who} takes float input (its activations stay float) but got a QTensor; call .dequantize() on it "
                "or remove the QuantStub before it"
            )
        raise TypeError(f"{who} expects a float torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating point input, got {x.dtype}; pass a float tensor (e.g. x.float())")
    if x.device.type != "cpu":
        raise ValueError(f"{who}: input is on {x.device}; ferroquant runs on the CPU, call .cpu() first")
    k = module.in_features
    shape = x.shape
    if not shape or shape[-1] != k:
        raise ValueError(f"{who} expects input of shape [..., {k}] (in_features = {k}), got {list(shape)}")
    x2 = x.detach().to(torch.float32).reshape(-1, k).contiguous()
    try:
        out = packed.linear(x2.numpy(), bias, get_num_threads())
    except KERNEL_ERRORS as e:
        raise_named(e, who)
    y = torch.from_numpy(out)
    return y if len(shape) == 2 else y.reshape(*shape[:-1], module.out_features)


def _label_of(module: nn.Module) -> str:
    name = getattr(module, "_fq_name", None)
    return f"{module._get_name()} '{name}'" if name else module._get_name()


class WeightOnlyLinear(WeightedQuantModule):
    """(+) ``ferroquant.nn.quantized.WeightOnlyLinear``: int8 weights, float32 activations and
    output. Same state_dict keys as the int8 modules (``weight``, ``weight_scale``,
    ``weight_zero_point``, ``weight_axis``, ``bias``)."""

    _version = 1
    _FLOAT_MODULE = nn.Linear
    #: the activations are never quantized (attributes kept for code that reads them)
    reduce_range = False
    per_row_activations = False

    def __init__(self, in_features: int, out_features: int, bias_: bool = True) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._init_weight_storage((self.out_features, self.in_features), bias_)
        self._rebuild(release=True)

    def _pack(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> PackedLowLinear:
        return PackedLowLinear.from_i8(w.numpy(), scale.numpy(), zp.to(torch.int32).numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _float_forward(self, x, self._fresh_packed(), self._bias_np)

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for weight-only Linear yet; run the model in eager mode"
        )

    def _label(self) -> str:
        return _label_of(self)

    def extra_repr(self) -> str:
        scheme = "per_tensor" if self._w_axis < 0 else "per_channel"
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=qint8, qscheme={scheme}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> WeightOnlyLinear:
        """From a float ``nn.Linear`` with a ``qconfig`` (``int8_weight_only_qconfig``): its weight
        through the qconfig's weight observer."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"WeightOnlyLinear.from_float expects an nn.Linear, got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            from ...qconfig import int8_weight_only_qconfig

            qconfig = int8_weight_only_qconfig
        q = cls(mod.in_features, mod.out_features, bias_=mod.bias is not None)
        bias = None if mod.bias is None else mod.bias.detach()
        q.set_weight_bias(quantize_weight(mod.weight, qconfig.weight()), bias)
        return q


class Float16Linear(AtomicLoad, nn.Module):
    """``ferroquant.nn.quantized.dynamic.Float16Linear``: what ``quantize_dynamic(...,
    dtype=torch.float16)`` makes of an ``nn.Linear`` (torch: ``nn.quantized.dynamic.Linear`` with
    ``dtype=torch.float16``; printed as ``DynamicQuantizedLinear``). Weights rounded to fp16 once
    (values beyond ±65504 saturate, with a warning, as torch); float32 activations, compute and
    output. state_dict: ``weight`` (float16 ``[out, in]``) and ``bias`` (float32)."""

    _version = 1
    _FLOAT_MODULE = nn.Linear
    reduce_range = False
    per_row_activations = False
    __jit_ignored_attributes__ = ["_packed", "_bias_np", "_packed_src"]

    def __init__(self, in_features: int, out_features: int, bias_: bool = True) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        with torch.inference_mode(False):
            self._w16 = torch.zeros(self.out_features, self.in_features, dtype=torch.float16)
            self._bias: Optional[torch.Tensor] = torch.zeros(self.out_features) if bias_ else None
        self._repack()

    # -- packing ----------------------------------------------------------------------------------------
    def _repack(self) -> None:
        try:
            packed = PackedLowLinear.from_f16_bits(self._w16.contiguous().numpy().view(np.uint16))
        except KERNEL_ERRORS as e:
            raise_named(e, self._label())
        self._packed = packed
        self._bias_np = None if self._bias is None else self._bias.numpy()
        self._packed_src = (self._w16, self._w16._version, self._bias)

    def _fresh_packed(self) -> PackedLowLinear:
        w, v, b = self._packed_src
        if w is not self._w16 or v != self._w16._version or b is not self._bias:
            self._repack()
        return self._packed

    # -- torch.ao's accessors -----------------------------------------------------------------------------
    @declines_torch_fast_paths
    def weight(self) -> torch.Tensor:
        """The fp16 weights as float32 (as torch's fp16 dynamic Linear returns them)."""
        return self._w16.float()

    def bias(self) -> Optional[torch.Tensor]:
        return self._bias

    def set_weight_bias(self, w: torch.Tensor, b: Optional[torch.Tensor]) -> None:
        """Rounds ``w`` (float ``[out, in]``) to fp16 and replaces weight and bias; on an error the
        module is left unchanged."""
        who = self._label()
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or isinstance(w, QTensor):
            raise TypeError(f"{who}.set_weight_bias: w must be a float tensor, got {getattr(w, 'dtype', type(w))}")
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"{who}.set_weight_bias: w has shape {list(w.shape)}, this module needs "
                f"{[self.out_features, self.in_features]}"
            )
        if b is not None:
            if not isinstance(b, torch.Tensor) or not b.is_floating_point() or tuple(b.shape) != (self.out_features,):
                raise ValueError(f"{who}.set_weight_bias: b must be a float tensor of shape [{self.out_features}]")
            problem = _bias_problem(b)
            if problem:
                raise ValueError(f"{who}.set_weight_bias: b {problem}")
        wf = w.detach().to(torch.float32)
        if not bool(torch.isfinite(wf).all()):
            raise ValueError(f"{who}.set_weight_bias: w contains NaN or Inf")
        if bool((wf.abs() > _FP16_MAX).any()):
            warnings.warn(
                f"{who}: weights beyond the float16 range (|w| > 65504) saturate to ±65504, as torch's fp16 "
                "dynamic Linear does",
                UserWarning,
                stacklevel=3,
            )
        w16 = _normal(wf.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).contiguous().clone())
        bias = None if b is None else _normal(b.detach().to(torch.float32).contiguous().clone())
        old = (self._w16, self._bias)
        self._w16, self._bias = w16, bias
        try:
            self._repack()
        except Exception:
            self._w16, self._bias = old
            raise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _float_forward(self, x, self._fresh_packed(), self._bias_np)

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(
            "DynamicQuantizedLinear (float16): TorchScript is not available for ferroquant's fp16 Linear yet; run "
            "the model in eager mode"
        )

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear"

    def _label(self) -> str:
        return _label_of(self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=torch.float16"

    # pickling: the packed weights are rebuilt
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_packed", "_bias_np", "_packed_src"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._repack()

    # -- state_dict -----------------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self._w16
        if self._bias is not None:
            destination[prefix + "bias"] = self._bias

    def _stage_state(
        self, state_dict: dict, prefix: str, strict: bool, missing_keys: list, unexpected_keys: list, errors: list
    ) -> list[Callable[[], None]]:
        changes = super()._stage_state(state_dict, prefix, strict, missing_keys, unexpected_keys, errors)
        w = state_dict.pop(prefix + "weight", None)
        b = state_dict.pop(prefix + "bias", None)
        shape = [self.out_features, self.in_features]
        if w is None:
            missing_keys.append(prefix + "weight")
            return changes
        if self._bias is not None and b is None:
            missing_keys.append(prefix + "bias")
            return changes
        if self._bias is None and b is not None:
            unexpected_keys.append(prefix + "bias")
            return changes
        if not isinstance(w, torch.Tensor) or w.dtype != torch.float16 or list(w.shape) != shape:
            errors.append(
                f"'{prefix}weight': expected float16 {shape}, got {getattr(w, 'dtype', type(w))} "
                f"{list(getattr(w, 'shape', []))}"
            )
            return changes
        if not bool(torch.isfinite(w).all()):
            errors.append(f"'{prefix}weight' contains NaN or Inf")
            return changes
        if b is not None:
            if not isinstance(b, torch.Tensor) or not b.is_floating_point() or list(b.shape) != shape[:1]:
                errors.append(f"'{prefix}bias': expected a float tensor of shape {shape[:1]}")
                return changes
            problem = _bias_problem(b)
            if problem:
                errors.append(f"'{prefix}bias' {problem}")
                return changes
        w16 = _normal(w.detach().contiguous().clone())
        bias = None if b is None else _normal(b.detach().to(torch.float32).contiguous().clone())
        try:
            packed = PackedLowLinear.from_f16_bits(w16.numpy().view(np.uint16))
        except KERNEL_ERRORS as e:
            errors.append(f"'{prefix}weight': {e}")
            return changes

        def apply() -> None:
            self._w16, self._bias = w16, bias
            self._packed = packed
            self._bias_np = None if bias is None else bias.numpy()
            self._packed_src = (w16, w16._version, bias)

        return [*changes, apply]

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Float16Linear:
        """From a float ``nn.Linear`` (any qconfig whose weight dtype is float16)."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"fp16 dynamic Linear.from_float expects an nn.Linear, got {type(mod).__name__}")
        q = cls(mod.in_features, mod.out_features, bias_=mod.bias is not None)
        q.set_weight_bias(mod.weight, None if mod.bias is None else mod.bias.detach())
        return q
