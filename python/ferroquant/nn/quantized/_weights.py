"""The weight and state_dict scheme shared by every ferroquant module with int8 weights.

state_dict keys (relative to the module's prefix):
``weight`` (int8 tensor, the float module's layout), ``weight_scale`` (float32 ``[1]`` or ``[C]``),
``weight_zero_point`` (int64 ``[1]`` or ``[C]``), ``weight_axis`` (int64 0-dim, −1 for per
tensor), ``bias`` (float32, absent when the module has none), plus the module's own keys (output
``scale`` / ``zero_point`` for static modules). ``_version`` is in the state_dict metadata.
Packed weights are never saved: they are rebuilt for this machine after loading.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..._dtypes import qint8, to_qdtype, to_qscheme
from ...qtensor import QTensor, quantize_per_channel, quantize_per_tensor

_KEYS = ("weight", "weight_scale", "weight_zero_point", "weight_axis")


def quantize_weight(weight: torch.Tensor, observer: nn.Module) -> QTensor:
    """Runs ``observer`` on ``weight`` and quantizes it to int8 with the observer's qparams,
    clamped to the observer's ``[quant_min, quant_max]`` (as torch's ``_quantize_weight``)."""
    w = weight.detach().float()
    observer(w)
    scale, zp = observer.calculate_qparams()
    dtype = to_qdtype(observer.dtype)
    if dtype != qint8:
        raise TypeError(f"weights must be quantized to qint8, the weight observer uses {dtype}")
    qmin, qmax = observer.quant_min, observer.quant_max
    if to_qscheme(observer.qscheme).per_channel:
        axis = observer.ch_axis
        q = quantize_per_channel(w, scale, zp, axis, qint8)
        data = torch.clamp(q.int_repr(), qmin, qmax)
        return QTensor(data, q.q_per_channel_scales(), q.q_per_channel_zero_points(), qint8, axis=axis)
    q = quantize_per_tensor(w, float(scale), int(zp), qint8)
    return QTensor(torch.clamp(q.int_repr(), qmin, qmax), q.q_scale(), q.q_zero_point(), qint8)


class WeightedQuantModule(nn.Module):
    """Holds an int8 weight (as a QTensor's parts) and a float bias, with the shared
    state_dict scheme; subclasses rebuild their packed form in ``_rebuild``."""

    _version = 1
    # Not part of the scripted module: packed weights live outside TorchScript (the scripted
    # forward calls torch.ops.ferroquant.*, which repacks from the int8 tensor on demand).
    __jit_ignored_attributes__ = ["_packed", "_bias_np", "_weight_shape"]

    def _init_weight_storage(self, weight_shape: tuple[int, ...], has_bias: bool) -> None:
        self._weight_shape = tuple(weight_shape)
        self._w = torch.zeros(weight_shape, dtype=torch.int8)
        self._w_scale = torch.ones(1, dtype=torch.float32)
        self._w_zp = torch.zeros(1, dtype=torch.int64)
        self._w_axis = -1
        self._bias: Optional[torch.Tensor] = torch.zeros(weight_shape[0]) if has_bias else None

    # -- the torch.ao accessors -------------------------------------------------------------------
    def weight(self) -> QTensor:
        if self._w_axis < 0:
            return QTensor(self._w, float(self._w_scale[0]), int(self._w_zp[0]), qint8)
        return QTensor(self._w, self._w_scale.double(), self._w_zp, qint8, axis=self._w_axis)

    def bias(self) -> Optional[torch.Tensor]:
        return self._bias

    def set_weight_bias(self, w: QTensor, b: Optional[torch.Tensor]) -> None:
        if not isinstance(w, QTensor) or w.dtype != qint8:
            raise TypeError(f"set_weight_bias expects a qint8 ferroquant QTensor weight, got {type(w).__name__}")
        if tuple(w.shape) != self._weight_shape:
            raise ValueError(f"weight has shape {tuple(w.shape)}, this module needs {self._weight_shape}")
        if b is not None and tuple(b.shape) != (self._weight_shape[0],):
            raise ValueError(f"bias has shape {tuple(b.shape)}, this module needs ({self._weight_shape[0]},)")
        self._w = w.int_repr().contiguous()
        if w.is_per_channel:
            self._w_scale = w.q_per_channel_scales().to(torch.float32)
            self._w_zp = w.q_per_channel_zero_points().to(torch.int64)
            self._w_axis = w.q_per_channel_axis()
        else:
            self._w_scale = torch.tensor([w.q_scale()], dtype=torch.float32)
            self._w_zp = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            self._w_axis = -1
        self._bias = None if b is None else b.detach().to(torch.float32).contiguous().clone()
        self._rebuild()

    def _rebuild(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # Packed weights are machine-specific native objects: pickling (torch.save of a whole model,
    # copy.deepcopy) keeps the canonical int8 data and rebuilds them on the way back.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_packed", None)
        state.pop("_bias_np", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._rebuild()

    # -- state_dict -------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self._w
        destination[prefix + "weight_scale"] = self._w_scale
        destination[prefix + "weight_zero_point"] = self._w_zp
        destination[prefix + "weight_axis"] = torch.tensor(self._w_axis, dtype=torch.int64)
        if self._bias is not None:
            destination[prefix + "bias"] = self._bias

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
        present = {k: state_dict.pop(prefix + k) for k in (*_KEYS, "bias") if prefix + k in state_dict}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        missing = [k for k in _KEYS if k not in present]
        if self._bias is not None and "bias" not in present:
            missing.append("bias")
        if missing:
            missing_keys.extend(prefix + k for k in missing)
            return
        w, scale, zp, axis = (present[k] for k in _KEYS)
        problems = []
        if w.dtype != torch.int8 or tuple(w.shape) != self._weight_shape:
            problems.append(
                f"'{prefix}weight': expected int8 {list(self._weight_shape)}, got {w.dtype} {list(w.shape)}"
            )
        axis_i = int(axis)
        channels = 1 if axis_i < 0 else (self._weight_shape[axis_i] if axis_i < len(self._weight_shape) else -1)
        for key, t in (("weight_scale", scale), ("weight_zero_point", zp)):
            if tuple(t.shape) != (channels,):
                problems.append(f"'{prefix}{key}': expected shape [{channels}], got {list(t.shape)}")
        b = present.get("bias")
        if b is not None and self._bias is None:
            unexpected_keys.append(prefix + "bias")
        if b is not None and tuple(b.shape) != (self._weight_shape[0],):
            problems.append(f"'{prefix}bias': expected shape [{self._weight_shape[0]}], got {list(b.shape)}")
        if problems:
            error_msgs.extend(f"size mismatch for {p}" for p in problems)
            return
        self._w = w.contiguous().clone()
        self._w_scale = scale.to(torch.float32).clone()
        self._w_zp = zp.to(torch.int64).clone()
        self._w_axis = axis_i
        if b is not None and self._bias is not None:
            self._bias = b.to(torch.float32).contiguous().clone()
        self._rebuild()
