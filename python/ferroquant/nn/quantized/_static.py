"""What every static quantized module shares: input checks, output qparams from the observer
(decision D7: clamp to the observer's [quant_min, quant_max]), and their state_dict keys."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..._dtypes import quint8, to_qdtype
from ...observer import CalibrationError
from ...qtensor import QTensor


def require_qtensor(module: nn.Module, x: Any) -> QTensor:
    """The module's input as a per-tensor QTensor, or a TypeError that says what to do."""
    if isinstance(x, QTensor):
        if x.is_per_channel:
            raise TypeError(f"{_name(module)} expects a per-tensor quantized input, got a per-channel QTensor")
        return x
    if isinstance(x, torch.Tensor):
        raise TypeError(
            f"{_name(module)} is a quantized module but received a float torch.Tensor; insert a QuantStub "
            "before it (or use prepare_fx), so that activations are quantized on the way in"
        )
    raise TypeError(f"{_name(module)} expects a ferroquant QTensor, got {type(x).__name__}")


def _name(module: nn.Module) -> str:
    where = getattr(module, "_fq_name", None)
    return f"{type(module).__name__} '{where}'" if where else type(module).__name__


def output_qparams(observer: Optional[nn.Module], who: str) -> tuple[float, int, int, int, Any]:
    """(scale, zero_point, quant_min, quant_max, dtype) from an output observer."""
    if observer is None:
        raise CalibrationError(
            f"{who} has no output observer: prepare() the model (with a qconfig) and calibrate it before convert()"
        )
    scale, zp = observer.calculate_qparams()
    dtype = to_qdtype(getattr(observer, "dtype", quint8))
    qmin = getattr(observer, "quant_min", None)
    qmax = getattr(observer, "quant_max", None)
    qmin = dtype.qmin if qmin is None else int(qmin)
    qmax = dtype.qmax if qmax is None else int(qmax)
    return float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), qmin, qmax, dtype


class OutputQParams:
    """Mixin: output `scale`, `zero_point`, clamp range and dtype, saved in the state_dict."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int

    def _init_output(
        self, scale: float = 1.0, zero_point: int = 0, quant_min: int = 0, quant_max: int = 255, dtype: Any = quint8
    ) -> None:
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.quant_min = int(quant_min)
        self.quant_max = int(quant_max)
        self._out_dtype = to_qdtype(dtype)

    # state_dict: the output keys, then whatever the module's other bases save (put this mixin
    # first among the bases so these run before nn.Module's)
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        destination[prefix + "scale"] = torch.tensor(self.scale, dtype=torch.float32)
        destination[prefix + "zero_point"] = torch.tensor(self.zero_point, dtype=torch.int64)
        destination[prefix + "quant_min"] = torch.tensor(self.quant_min, dtype=torch.int64)
        destination[prefix + "quant_max"] = torch.tensor(self.quant_max, dtype=torch.int64)

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
        for key in ("scale", "zero_point", "quant_min", "quant_max"):
            v = state_dict.pop(prefix + key, None)
            if v is None:
                missing_keys.append(prefix + key)
                continue
            setattr(self, key, float(v) if key == "scale" else int(v))
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _output_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}"


def observed_float_module(mod: nn.Module, float_type: type, cls_name: str) -> tuple[nn.Module, Any, tuple]:
    """For ``from_float``: the float module inside ``mod`` (itself, or the first module of a
    fused Sequential), its qconfig, and the output qparams of its observer."""
    inner = mod[0] if isinstance(mod, nn.Sequential) else mod
    if not isinstance(inner, float_type):
        raise TypeError(f"{cls_name}.from_float expects an {float_type.__name__}, got {type(inner).__name__}")
    qconfig = getattr(mod, "qconfig", None)
    if qconfig is None:
        raise ValueError(f"{type(mod).__name__} has no qconfig; run prepare() with a qconfig first")
    out = output_qparams(getattr(mod, "activation_post_process", None), type(mod).__name__)
    return inner, qconfig, out
