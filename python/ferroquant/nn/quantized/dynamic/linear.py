"""Dynamic quantized Linear: int8 weights, activations quantized on the fly per call.

Forward: choose the activation's qparams from its min and max (FBGEMM's rule), quantize, exact
int8 GEMM, and ``y = fma(acc, xs·ws[j], b[j])`` in float32 — all in one kernel call. By default
each row (token) gets its own qparams over 0..127: never less accurate than torch's per-tensor
0..127, and fast on every x86 CPU (docs/migration.md, "dynamic activations"). The qconfig's
activation observer selects the scheme: ``default_dynamic_qconfig_torch`` (per tensor, 0..127)
reproduces torch's results, ``full_range_dynamic_qconfig`` is per tensor over 0..255 and
``per_row_dynamic_qconfig`` per row over 0..255.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ...._core import PackedLinear
from ...._dtypes import per_tensor_affine, qint8, quint8, to_qdtype, to_qscheme
from ...._ops import KERNEL_ERRORS, raise_named
from ...._threads import get_num_threads
from ....qtensor import QTensor
from .._weights import WeightedQuantModule, quantize_weight, state_number

__all__ = ["Linear"]


def _activation_options(qconfig: Any) -> tuple[bool, bool]:
    """(reduce_range, per_row) from the qconfig's dynamic activation observer: a range of
    0..127 is torch's reduced range; a per-channel qscheme means one scale per row."""
    act = qconfig.activation()
    dtype = getattr(act, "dtype", quint8)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        raise TypeError(
            "a float16 activation observer with int8 weights is not a dynamic qconfig; use float16_dynamic_qconfig "
            "(fp16 weights) or an int8 dynamic qconfig"
        )
    if to_qdtype(dtype) != quint8:
        raise TypeError(f"dynamic Linear quantizes activations to quint8, the qconfig asks for {dtype}")
    qmax = getattr(act, "quant_max", None)
    reduce_range = qmax is not None and qmax <= 127 or bool(getattr(act, "reduce_range", False))
    per_row = to_qscheme(getattr(act, "qscheme", per_tensor_affine)).per_channel
    return reduce_range, per_row


class Linear(WeightedQuantModule):
    """``ferroquant.nn.quantized.dynamic.Linear`` (torch: ``nn.quantized.dynamic.Linear``)."""

    _version = 1
    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias_: bool = True, dtype: Any = qint8) -> None:
        super().__init__()
        if dtype == torch.float16:
            raise TypeError(
                "fp16 weights live in ferroquant.nn.quantized.dynamic.Float16Linear(in_features, out_features); "
                "quantize_dynamic(..., dtype=torch.float16) builds it"
            )
        if to_qdtype(dtype).name != "qint8":
            raise NotImplementedError(f"dynamic Linear supports qint8 weights, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        #: activations over 0..127 (True, the default) or 0..255
        self.reduce_range = True
        #: (+) quantize activations with one scale / zero point per row (per token; the default)
        self.per_row_activations = True
        self._init_weight_storage((out_features, in_features), bias_)
        self._rebuild(release=True)

    def _pack(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> PackedLinear:
        return PackedLinear(w.numpy(), scale.numpy(), zp.to(torch.int32).numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            # the eager checks, in the same order (TorchScript raises them as torch.jit.Error)
            if not x.is_floating_point():
                raise TypeError(
                    "DynamicQuantizedLinear (ferroquant.nn.quantized.dynamic.Linear) expects a floating point "
                    "input, got a non-floating-point tensor; pass a float tensor (e.g. x.float())"
                )
            k = self.in_features
            if x.dim() == 0 or x.size(-1) != k:
                raise ValueError(
                    f"DynamicQuantizedLinear expects input of shape [..., {k}] (in_features = {k}), got {x.shape}"
                )
            return torch.ops.ferroquant.linear_dynamic(
                x, self._w, self._w_scale, self._w_zp, self._bias, self.reduce_range, self.per_row_activations
            )
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            if isinstance(x, QTensor):
                raise TypeError(
                    "ferroquant.nn.quantized.dynamic.Linear takes float input (it quantizes activations "
                    "itself) but got a QTensor; call .dequantize() on it or remove the QuantStub before it"
                )
            raise TypeError(f"dynamic Linear expects a float torch.Tensor, got {type(x).__name__}")
        k = self.in_features
        shape = x.shape
        if x.dtype != torch.float32 or x.requires_grad or x.device.type != "cpu" or not x.is_contiguous():
            x = self._prepare_input(x)
        if not shape or shape[-1] != k:
            raise ValueError(
                f"DynamicQuantizedLinear expects input of shape [..., {k}] (in_features = {k}), got {list(shape)}"
            )
        packed = self._fresh_packed()
        try:
            out, _, _ = packed.linear_dynamic(
                x.reshape(-1, k).numpy(),
                self._bias_np,
                self.reduce_range,
                False,
                get_num_threads(),
                self.per_row_activations,
            )
        except KERNEL_ERRORS as e:  # NaN / Inf in the input, an output too large to allocate
            raise_named(e, self._label())
        y = torch.from_numpy(out)
        return y if len(shape) == 2 else y.reshape(*shape[:-1], self.out_features)

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(
                "DynamicQuantizedLinear (ferroquant.nn.quantized.dynamic.Linear) expects a floating point input, "
                f"got {x.dtype}; pass a float tensor (e.g. x.float())"
            )
        if x.device.type != "cpu":
            raise ValueError(f"{self._label()}: input is on {x.device}; ferroquant runs on the CPU, call .cpu() first")
        return x.detach().to(torch.float32).contiguous()

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear"

    def _label(self) -> str:
        """``DynamicQuantizedLinear 'encoder.fc'`` (its path in the quantized model, when known)."""
        name = getattr(self, "_fq_name", None)
        return f"DynamicQuantizedLinear '{name}'" if name else "DynamicQuantizedLinear"

    def extra_repr(self) -> str:
        scheme = "per_tensor" if self._w_axis < 0 else "per_channel"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, dtype=qint8, "
            f"qscheme={scheme}, reduce_range={self.reduce_range}"
            + (", per_row_activations=True" if self.per_row_activations else "")
        )

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "reduce_range"] = torch.tensor(self.reduce_range)
        destination[prefix + "per_row_activations"] = torch.tensor(self.per_row_activations)

    def _stage_state(
        self, state_dict: dict, prefix: str, strict: bool, missing_keys: list, unexpected_keys: list, errors: list
    ) -> list[Callable[[], None]]:
        changes = super()._stage_state(state_dict, prefix, strict, missing_keys, unexpected_keys, errors)
        pr = state_dict.pop(prefix + "per_row_activations", None)
        rr = state_dict.pop(prefix + "reduce_range", None)
        try:
            # saved before per-row activations existed: per tensor
            per_row = False if pr is None else state_number(pr, prefix + "per_row_activations", "bool")
            reduce_range = False if rr is None else state_number(rr, prefix + "reduce_range", "bool")
        except ValueError as e:
            errors.append(str(e))
            return changes
        if rr is None:
            missing_keys.append(prefix + "reduce_range")

        def apply() -> None:
            self.per_row_activations = per_row
            self.reduce_range = reduce_range

        return [*changes, apply]

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """Builds the dynamic Linear from a float ``nn.Linear`` that carries a ``qconfig``. An fp16
        qconfig (``float16_dynamic_qconfig``) gives a :class:`~ferroquant.nn.quantized.dynamic.Float16Linear`
        and ``int8_weight_only_qconfig`` a :class:`~ferroquant.nn.quantized.WeightOnlyLinear`."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"dynamic Linear.from_float expects an nn.Linear, got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            from ....qconfig import default_dynamic_qconfig

            qconfig = default_dynamic_qconfig
        from ..weight_only import Float16Linear, WeightOnlyLinear, low_precision_kind

        kind = low_precision_kind(qconfig)
        if kind == "float16":
            return Float16Linear.from_float(mod)
        if kind == "int8_weight_only":
            return WeightOnlyLinear.from_float(mod)
        reduce_range, per_row = _activation_options(qconfig)
        if use_precomputed_fake_quant and hasattr(mod, "weight_fake_quant"):
            observer = mod.weight_fake_quant
        else:
            observer = qconfig.weight()
        qweight = quantize_weight(mod.weight, observer)
        q = cls(mod.in_features, mod.out_features, bias_=mod.bias is not None)
        q.reduce_range = reduce_range
        q.per_row_activations = per_row
        q.set_weight_bias(qweight, None if mod.bias is None else mod.bias.detach())
        return q
