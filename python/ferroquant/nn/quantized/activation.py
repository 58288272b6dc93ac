"""Quantized activations (``torch.ao.nn.quantized.ReLU6``, ``Hardswish``, ``ELU``, ``LeakyReLU``,
``PReLU``);
docs/numerics.md, "Other quantized ops"."""

from __future__ import annotations

import torch
from torch import nn

from ... import _core
from ..._dtypes import per_tensor_affine, quint8
from ...qtensor import QTensor, quantize_per_tensor
from ._lut import apply_table
from ._script import (
    QArg,
    QTuple,
    script_dequantize,
    script_dtype_info,
    script_qtuple,
    script_requantize,
    script_unpack,
)
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["ReLU6", "Hardswish", "ELU", "LeakyReLU", "PReLU"]


def _hardswish(d: torch.Tensor) -> torch.Tensor:
    return d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0


class ReLU6(nn.Module):
    """``clamp(q, zp, q6)`` with ``q6 = quantize(6.0)``; output qparams = input qparams."""

    _fq_io = "QQ"  # TorchScript: quantized in, quantized out

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    def _forward_script(self, x: QTuple) -> QTuple:
        d, s, z = script_unpack(x, "QuantizedReLU6")
        name, lo, hi = script_dtype_info(d.dtype, "QuantizedReLU6")
        six = torch.ops.ferroquant.quantize_per_tensor(torch.tensor([6.0]), s, z, lo, hi, name)
        q6 = int(six[0].item())
        return torch.clamp(d, min=z, max=q6), x[1], x[2]

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        s, z = q.q_scale(), q.q_zero_point()
        q6 = quantize_per_tensor(torch.tensor([6.0]), s, z, q.dtype).int_repr()[0].item()
        return QTensor(torch.clamp(q.int_repr(), min=z, max=q6), s, z, q.dtype)

    def _get_name(self) -> str:
        return "QuantizedReLU6"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> ReLU6:
        return cls(getattr(mod, "inplace", False))


class _TableActivation(OutputQParams, nn.Module):
    """An elementwise function ``f`` of the dequantized input, quantized to the module's own output
    qparams (it has an observer): on quint8 inputs one lookup per element in a 256-entry table of
    this very definition (Rust), else the float definition."""

    _fq_io = "QQ"  # TorchScript: quantized in, quantized out
    _NAME = "QuantizedActivation"
    __constants__ = ["_NAME"]  # read by the scripted forward

    def _f(self, d: torch.Tensor) -> torch.Tensor:  # the float definition (eager and TorchScript)
        raise NotImplementedError

    def forward(self, x: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._forward_script(x)
        return self._forward_eager(x)

    def _forward_script(self, x: QTuple) -> QTuple:
        script_unpack(x, self._NAME)  # per-tensor check
        h = self._f(script_dequantize(x))
        data = script_requantize(h, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype_name)
        return script_qtuple(data, self.scale, self.zero_point)

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        fused = apply_table(q, self._f, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype)
        if fused is not None:
            return fused
        out = quantize_per_tensor(self._f(q.dequantize()), self.scale, self.zero_point, self._out_dtype)
        data = torch.clamp(out.int_repr(), self.quant_min, self.quant_max)
        return QTensor(data, self.scale, self.zero_point, self._out_dtype)

    def _get_name(self) -> str:
        return self._NAME

    def extra_repr(self) -> str:
        return self._output_repr()

    @classmethod
    def _output_from(cls, mod: nn.Module, q: _TableActivation) -> _TableActivation:
        scale, zp, qmin, qmax, dtype = output_qparams(getattr(mod, "activation_post_process", None), cls.__name__)
        q._init_output(scale, zp, qmin, qmax, dtype)
        return q


class ELU(_TableActivation):
    """Quantized ELU (``torch.ao.nn.quantized.ELU``): ``x`` for ``x > 0``, ``alpha·(eˣ − 1)``
    below, on the dequantized input, requantized to the module's output qparams."""

    _NAME = "QuantizedELU"

    def __init__(self, scale: float = 1.0, zero_point: int = 0, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self._init_output(scale, zero_point)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.elu(d, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, {self._output_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> ELU:
        return cls._output_from(mod, cls(alpha=mod.alpha))  # type: ignore[return-value]


class LeakyReLU(_TableActivation):
    """Quantized LeakyReLU (``torch.ao.nn.quantized.LeakyReLU``): ``x`` for ``x ≥ 0``,
    ``negative_slope·x`` below, requantized to the module's output qparams."""

    _NAME = "QuantizedLeakyReLU"

    def __init__(
        self, scale: float = 1.0, zero_point: int = 0, negative_slope: float = 1e-2, inplace: bool = False
    ) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = inplace
        self._init_output(scale, zero_point)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(d, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, {self._output_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> LeakyReLU:
        return cls._output_from(mod, cls(negative_slope=mod.negative_slope))  # type: ignore[return-value]


class Hardswish(_TableActivation):
    """``h = d·clamp(d+3, 0, 6)/6`` on the dequantized input, quantized to the module's own
    output qparams (it has an observer; not fixed-qparams)."""

    _NAME = "QuantizedHardswish"

    def __init__(self, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self._init_output(scale, zero_point)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        return d * torch.clamp(d + 3.0, 0.0, 6.0) / 6.0

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Hardswish:
        return cls._output_from(mod, cls())  # type: ignore[return-value]


class PReLU(_TableActivation):
    """Quantized PReLU (``torch.ao.nn.quantized.PReLU(output_scale, output_zero_point,
    num_parameters=1)``): ``x`` for ``x > 0``, ``w·x`` below (``w`` one slope, or one per channel
    of dim 1), requantized to the module's output qparams. One slope: a 256-entry table; one per
    channel: a table per channel (Rust ``lut_u8_per_channel``).

    The slopes are quantized on the qconfig's weight observer grid, as torch's ``from_float``
    does; torch stores them as quint8, so a negative slope under a symmetric (zero point 0)
    observer becomes 0 there — ferroquant keeps the integers in [-128, 255] and the slope's sign.
    ``weight`` (a buffer) holds the dequantized slopes."""

    _NAME = "QuantizedPReLU"

    def __init__(self, output_scale: float = 1.0, output_zero_point: int = 0, num_parameters: int = 1) -> None:
        super().__init__()
        if int(num_parameters) < 1:
            raise ValueError(f"PReLU: num_parameters must be >= 1, got {num_parameters}")
        self.num_parameters = int(num_parameters)
        self.register_buffer("weight", torch.full((self.num_parameters,), 0.25))
        self._init_output(output_scale, output_zero_point)
        self._tables: tuple = ()

    def set_weight(self, w: torch.Tensor) -> None:
        """The slopes: a quantized tensor (its dequantized values are used) or float values."""
        values = w.dequantize() if isinstance(w, QTensor) or getattr(w, "is_quantized", False) else w
        values = values.detach().float().reshape(-1)
        if values.numel() != self.num_parameters:
            raise ValueError(f"PReLU: expected {self.num_parameters} slopes, got {values.numel()}")
        if not bool(torch.isfinite(values).all()):
            raise ValueError("PReLU: the slopes contain NaN or Inf")
        with torch.no_grad():
            self.weight.copy_(values)

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.num_parameters > 1 and d.dim() < 2:
            raise ValueError("QuantizedPReLU: one slope per channel needs an input with a channel dim (dim 1)")
        if d.dim() >= 2:
            w = w.reshape([-1] + [1] * (d.dim() - 2))  # along dim 1 (one slope broadcasts too)
        return torch.where(d > 0, d, d * w)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, {self._output_repr()}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tables"] = ()
        return state

    @torch.jit.unused
    def _forward_eager(self, x: QArg) -> QArg:
        q = require_qtensor(self, x)
        if self.num_parameters > 1 and (q.dim() < 2 or q.shape[1] != self.num_parameters):
            raise ValueError(
                f"{self._NAME}: {self.num_parameters} slopes need an input with {self.num_parameters} channels in "
                f"dim 1, got {list(q.shape)}"
            )
        if (
            self.num_parameters == 1
            or q.dtype != quint8
            or q.qscheme() != per_tensor_affine
            or self._out_dtype != quint8
        ):
            return super()._forward_eager(q)
        data = q.int_repr().contiguous()
        inner = data[0, 0].numel() if data.numel() else 1
        table = self._channel_tables(q.q_scale(), q.q_zero_point())
        out = (
            _core.lut_u8_per_channel(data.numpy(), table.numpy(), self.num_parameters, max(inner, 1))
            if data.numel()
            else data.numpy().copy()
        )
        return QTensor(torch.from_numpy(out), self.scale, self.zero_point, quint8)

    def _channel_tables(self, x_scale: float, x_zp: int) -> torch.Tensor:
        w = self.weight
        key = (x_scale, x_zp, self.scale, self.zero_point, self.quant_min, self.quant_max, id(w), w._version)
        cached = self._tables  # read once: another thread may replace it
        if cached and cached[0] == key:
            return cached[1]
        levels = QTensor(torch.arange(256, dtype=torch.uint8), x_scale, x_zp, quint8).dequantize()
        y = self._f(levels.reshape(1, 1, 256).expand(1, self.num_parameters, 256))
        qy = quantize_per_tensor(y.contiguous(), self.scale, self.zero_point, quint8).int_repr()
        table = torch.clamp(qy, self.quant_min, self.quant_max).reshape(self.num_parameters, 256).contiguous()
        self._tables = (key, table)
        return table

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> PReLU:
        q = cls._output_from(mod, cls(num_parameters=mod.num_parameters))
        weight = mod.weight.detach().float()
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError(
                "PReLU.from_float: the float module has no qconfig (its weight observer quantizes the slopes)"
            )
        observer = qconfig.weight()
        observer(weight)
        scale, zp = observer.calculate_qparams()
        scale, zp = scale.float().reshape(-1), zp.reshape(-1).to(torch.int64)
        if scale.numel() not in (1, weight.numel()):
            raise ValueError(f"PReLU.from_float: {scale.numel()} weight scales for {weight.numel()} slopes")
        ints = torch.clamp(torch.round(weight * (1.0 / scale)) + zp, -128, 255)
        q.set_weight((ints - zp).float() * scale)
        return q  # type: ignore[return-value]
