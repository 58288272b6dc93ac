"""What every static quantized module shares: input checks, output qparams from the observer
(clamped to the observer's [quant_min, quant_max], where torch clamps to the dtype's range; docs/numerics.md
D7), and their state_dict keys."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ..._dtypes import QDtype, quint8, to_qdtype
from ..._ops import KERNEL_ERRORS, raise_named
from ...fake_quantize import FakeQuantizeBase
from ...observer import CalibrationError
from ...qtensor import QTensor, check_scale, check_zero_point, quantize_per_tensor
from ._weights import AtomicLoad, state_number


def require_qtensor(module: nn.Module, x: Any) -> QTensor:
    """The module's input as a per-tensor QTensor, or a TypeError that says what to do."""
    if isinstance(x, QTensor):
        if x.is_per_channel:
            raise TypeError(f"{_name(module)} expects a per-tensor quantized input, got a per-channel QTensor")
        if x.device.type != "cpu":
            raise ValueError(
                f"{_name(module)} received a QTensor on {x.device}; ferroquant's quantized modules run on the CPU: "
                "quantize a CPU tensor"
            )
        return x
    if isinstance(x, torch.Tensor):
        raise TypeError(
            f"{_name(module)} is a quantized module but received a float torch.Tensor; insert a QuantStub "
            "before it (or use prepare_fx), so that activations are quantized on the way in"
        )
    raise TypeError(f"{_name(module)} expects a ferroquant QTensor, got {type(x).__name__}")


def module_name(module: nn.Module) -> str:
    """``Linear 'body.fc'`` (its path in the converted model, when known) or ``Linear``, for messages."""
    where = getattr(module, "_fq_name", None)
    return f"{type(module).__name__} '{where}'" if where else type(module).__name__


_name = module_name


def run_static_kernel(module: Any, q: QTensor, run: Callable[..., torch.Tensor], *geometry: Any) -> QTensor:
    """The eager forward of a static Linear / Conv after its input checks: repack if the weights
    changed, check the requantization scales, run ``run(packed, bias, data, *geometry, input
    qparams, output qparams, range, relu, dtype)`` and wrap the result; kernel errors get the
    module's name."""
    packed = module._fresh_packed()
    x_scale, scale, zero_point, out_dtype = q.q_scale(), module.scale, module.zero_point, module._out_dtype
    module._check_requant(x_scale, scale)
    try:
        y = run(
            packed,
            module._bias_np,
            q.int_repr(),
            *geometry,
            x_scale,
            q.q_zero_point(),
            scale,
            zero_point,
            module.quant_min,
            module.quant_max,
            module._FUSED_RELU,
            out_dtype.name,
        )
    except KERNEL_ERRORS as e:
        raise_named(e, module_name(module))
    # the output qparams were checked by _check_requant (cached per value), the data by the kernel
    return QTensor._trusted(y, scale, zero_point, out_dtype)


def output_qparams(observer: Optional[nn.Module], who: str) -> tuple[float, int, int, int, Any]:
    """(scale, zero_point, quant_min, quant_max, dtype) from an output observer. The clamp range
    (docs/numerics.md D7): post-training quantization clamps to the dtype's range, as torch does
    (values beyond the calibrated range keep their quantized value up to 0..255); a QAT model
    clamps to its fake-quant's ``[quant_min, quant_max]``, the range it was trained with."""
    if observer is None:
        raise CalibrationError(
            f"{who} has no output observer: prepare() the model (with a qconfig) and calibrate it before convert()"
        )
    if isinstance(observer, FakeQuantizeBase) and hasattr(observer, "frozen_qparams"):
        # quantization-aware training: the fake-quant's frozen (or learned) qparams, the ones its
        # forward used (no extra observer step; docs/numerics.md D6/D7)
        inner = getattr(observer, "activation_post_process", None)
        seen = getattr(inner, "min_val", None)
        learned = bool(getattr(observer, "learning_enabled", torch.zeros(1))[0])
        if not learned and isinstance(seen, torch.Tensor) and not bool(torch.isfinite(seen).all()):
            raise CalibrationError(
                f"the output fake-quant of {who} never observed data: run training (or calibration) batches "
                "through the QAT model before convert()"
            )
        scale, zp = observer.frozen_qparams()
        trained_range = True
    else:
        scale, zp = observer.calculate_qparams()
        trained_range = False
    dtype = to_qdtype(getattr(observer, "dtype", quint8))
    qmin = getattr(observer, "quant_min", None)
    qmax = getattr(observer, "quant_max", None)
    qmin = dtype.qmin if qmin is None or not trained_range else int(qmin)
    qmax = dtype.qmax if qmax is None or not trained_range else int(qmax)
    return float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), qmin, qmax, dtype


def fused_activation_bound(mod: nn.Module, scale: float, zero_point: int, qmax: int, dtype: Any) -> int:
    """The upper clamp of a fused ReLU-like activation: ``fuse_modules`` keeps a ReLU6 or
    ``Hardtanh(0, max)`` as the ReLU of ``ConvReLU*d`` / ``LinearReLU``; its ``max`` quantized
    (never above ``qmax``) is the clamp, in the output stage."""
    act = mod[1] if isinstance(mod, nn.Sequential) and len(mod) > 1 else getattr(mod, "relu", None)
    if isinstance(act, nn.Hardtanh):
        top = int(quantize_per_tensor(torch.tensor([float(act.max_val)]), scale, zero_point, dtype).int_repr()[0])
        return max(min(qmax, top), zero_point)
    return qmax


class OutputQParams(AtomicLoad):
    """Mixin: output `scale`, `zero_point`, clamp range and dtype, saved in the state_dict."""

    # `scale` (float), `zero_point`, `quant_min`, `quant_max` (int) are set by _init_output. No
    # class-level annotations: TorchScript would read them (as unresolvable strings) for the
    # attribute types.

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this before compiling: the output dtype's name for the scripted
        # forward (TorchScript cannot hold the QDtype)
        self._out_dtype_name = self._out_dtype.name
        nxt = getattr(super(), "__prepare_scriptable__", None)  # the weighted modules' (int8 weight)
        if nxt is not None:
            nxt()
        return self

    def _init_output(
        self, scale: float = 1.0, zero_point: int = 0, quant_min: int = 0, quant_max: int = 255, dtype: Any = quint8
    ) -> None:
        who = type(self).__name__
        dt = to_qdtype(dtype)
        scale = check_scale(scale, f"{who}: output scale")
        zero_point = check_zero_point(zero_point, dt, f"{who}: output zero_point")
        problem = _clamp_range_problem(int(quant_min), int(quant_max), dt)
        if problem:
            raise ValueError(f"{who}: {problem}")
        self.scale = scale
        self.zero_point = zero_point
        self.quant_min = int(quant_min)
        self.quant_max = int(quant_max)
        self._out_dtype = dt

    # state_dict: the output keys, then whatever the module's other bases save (put this mixin
    # first among the bases so these run before nn.Module's)
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        destination[prefix + "scale"] = torch.tensor(self.scale, dtype=torch.float32)
        destination[prefix + "zero_point"] = torch.tensor(self.zero_point, dtype=torch.int64)
        destination[prefix + "quant_min"] = torch.tensor(self.quant_min, dtype=torch.int64)
        destination[prefix + "quant_max"] = torch.tensor(self.quant_max, dtype=torch.int64)

    def _stage_state(
        self, state_dict: dict, prefix: str, strict: bool, missing_keys: list, unexpected_keys: list, errors: list
    ) -> list[Callable[[], None]]:
        """Checks the output keys; they load together with the rest of the module or not at all."""
        changes = super()._stage_state(state_dict, prefix, strict, missing_keys, unexpected_keys, errors)
        n0 = len(errors)
        values: dict[str, Any] = {}
        for key in ("scale", "zero_point", "quant_min", "quant_max"):
            v = state_dict.pop(prefix + key, None)
            if v is None:
                missing_keys.append(prefix + key)
                continue
            try:
                values[key] = state_number(v, prefix + key, "float" if key == "scale" else "integer")
            except ValueError as e:
                errors.append(str(e))
        if len(values) < 4 or len(errors) > n0:
            return changes
        dt = self._out_dtype
        try:
            values["scale"] = check_scale(values["scale"], f"'{prefix}scale' (the output scale)")
        except ValueError as e:
            errors.append(str(e))
        if not dt.qmin <= values["zero_point"] <= dt.qmax:
            errors.append(
                f"'{prefix}zero_point': the output zero point must lie in the {dt.name} range "
                f"[{dt.qmin}, {dt.qmax}], got {values['zero_point']}"
            )
        problem = _clamp_range_problem(values["quant_min"], values["quant_max"], dt)
        if problem:
            errors.append(f"'{prefix}quant_min' / '{prefix}quant_max': {problem}")
        if len(errors) > n0:
            return changes

        def apply() -> None:
            self.scale = values["scale"]
            self.zero_point = values["zero_point"]
            self.quant_min = values["quant_min"]
            self.quant_max = values["quant_max"]

        return [*changes, apply]

    def _output_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}"


def _clamp_range_problem(quant_min: int, quant_max: int, dtype: QDtype) -> str:
    """What is wrong with an output clamp range, or ``""``."""
    if not dtype.qmin <= quant_min < quant_max <= dtype.qmax:
        return (
            f"the output clamp range [quant_min, quant_max] = [{quant_min}, {quant_max}] must have quant_min < "
            f"quant_max and lie in the {dtype.name} range [{dtype.qmin}, {dtype.qmax}]"
        )
    return ""


def observed_float_module(mod: nn.Module, float_type: type, cls_name: str) -> tuple[nn.Module, Any, tuple]:
    """For ``from_float``: the float module inside ``mod`` (itself, or the first module of a
    fused Sequential), its qconfig, and the output qparams of its observer."""
    inner = mod[0] if isinstance(mod, nn.Sequential) else mod
    if not isinstance(inner, float_type):
        raise TypeError(f"{cls_name}.from_float expects an {float_type.__name__}, got {type(inner).__name__}")
    qconfig = getattr(mod, "qconfig", None)
    if qconfig is None:
        raise ValueError(f"{type(mod).__name__} has no qconfig; run prepare() with a qconfig first")
    scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), type(mod).__name__)
    return inner, qconfig, (scale, zp, qmin, fused_activation_bound(mod, scale, zp, qmax, dtype), dtype)
