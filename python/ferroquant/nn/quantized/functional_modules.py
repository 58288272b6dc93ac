"""FloatFunctional (float, observed after prepare) and QFunctional (quantized), NUMERICS §3.4.

Use one instance per call site: ``self.skip_add = FloatFunctional()`` then
``self.skip_add.add(a, b)``; ``convert`` turns it into a QFunctional with the observed
output qparams.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...observer import CalibrationError
from ...qtensor import QTensor, quantize_per_tensor
from ._static import OutputQParams, output_qparams, require_qtensor

__all__ = ["FloatFunctional", "QFunctional"]


class FloatFunctional(nn.Module):
    """Float add / mul / cat / add_relu / add_scalar / mul_scalar, observed after ``prepare``."""

    def __init__(self) -> None:
        super().__init__()
        self.activation_post_process = nn.Identity()

    def forward(self, x: Any) -> Any:
        raise RuntimeError("FloatFunctional is not called directly; use .add, .mul, .cat, ... instead of forward")

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.add(x, y))

    def add_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return torch.add(x, y)  # not observed (its qparams follow the input), as in torch

    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.mul(x, y))

    def mul_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return torch.mul(x, y)  # not observed

    def cat(self, x: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self.activation_post_process(torch.cat(list(x), dim=dim))

    def add_relu(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.relu(torch.add(x, y)))

    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.matmul(x, y))


def _requant(values: torch.Tensor, scale: float, zp: int, qmin: int, qmax: int, dtype: Any) -> QTensor:
    out = quantize_per_tensor(values, scale, zp, dtype)
    return QTensor(torch.clamp(out.int_repr(), qmin, qmax), scale, zp, dtype)


class QFunctional(OutputQParams, nn.Module):
    """The quantized counterpart: results quantized to the observed output qparams."""

    def __init__(self) -> None:
        super().__init__()
        self._init_output()
        self.activation_post_process = nn.Identity()

    def forward(self, x: Any) -> Any:
        raise RuntimeError("QFunctional is not called directly; use .add, .mul, .cat, ... instead of forward")

    def _out(self, values: torch.Tensor) -> QTensor:
        if getattr(self, "_unobserved", False):
            where = getattr(self, "_fq_name", "")
            raise CalibrationError(
                f"FloatFunctional '{where}' saw no data during calibration, so its add / mul / cat / add_relu have "
                "no output qparams; run calibration data through those calls before convert (D5)"
            )
        return _requant(values, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype)

    def add(self, x: QTensor, y: QTensor) -> QTensor:
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        return self._out(a.dequantize() + b.dequantize())

    def add_relu(self, x: QTensor, y: QTensor) -> QTensor:
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        return self._out(torch.relu(a.dequantize() + b.dequantize()))

    def mul(self, x: QTensor, y: QTensor) -> QTensor:
        # integer product, one float multiply (NUMERICS §3.4): q = oz + rne(fl(float(pa·pb)·m))
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        pa = a.int_repr().to(torch.int32) - a.q_zero_point()
        pb = b.int_repr().to(torch.int32) - b.q_zero_point()
        sa, sb = torch.tensor(a.q_scale(), dtype=torch.float32), torch.tensor(b.q_scale(), dtype=torch.float32)
        mult = (sa * sb) / torch.tensor(self.scale, dtype=torch.float32)
        q = torch.round((pa * pb).to(torch.float32) * mult) + self.zero_point
        data = torch.clamp(q, self.quant_min, self.quant_max).to(self._out_dtype.storage)
        return QTensor(data, self.scale, self.zero_point, self._out_dtype)

    def cat(self, x: Sequence[QTensor], dim: int = 0) -> QTensor:
        qs = [require_qtensor(self, t) for t in x]
        same = all(
            t.q_scale() == self.scale and t.q_zero_point() == self.zero_point and t.dtype == self._out_dtype for t in qs
        )
        if same:
            return QTensor(torch.cat([t.int_repr() for t in qs], dim=dim), self.scale, self.zero_point, self._out_dtype)
        return self._out(torch.cat([t.dequantize() for t in qs], dim=dim))

    def add_scalar(self, x: QTensor, c: float) -> QTensor:
        # output qparams derived from the input (torch's rule): the scalar is first quantized to
        # c_q = rne(c/s); shift the zero point by c_q when it stays in range, else widen the range
        q = require_qtensor(self, x)
        s, z = q.q_scale(), q.q_zero_point()
        c_q = round(c / s)
        lo, hi = q.dtype.qmin, q.dtype.qmax
        if lo <= z - c_q <= hi:
            return QTensor(q.int_repr(), s, z - c_q, q.dtype)
        d = q.dequantize() + c_q * s
        if c_q > 0:
            new_s, new_z = s * (hi - z + c_q) / (hi - lo), lo
        else:
            new_s, new_z = s * (z - lo - c_q) / (hi - lo), hi
        return _requant(d, new_s, new_z, lo, hi, q.dtype)

    def mul_scalar(self, x: QTensor, c: float) -> QTensor:
        q = require_qtensor(self, x)
        s, z = q.q_scale(), q.q_zero_point()
        lo, hi = q.dtype.qmin, q.dtype.qmax
        if c == 0:
            return QTensor(torch.zeros_like(q.int_repr()), 1.0, 0, q.dtype)
        if c > 0:
            return QTensor(q.int_repr(), s * c, z, q.dtype)
        data = (lo + hi - q.int_repr().to(torch.int32)).to(q.dtype.storage)
        return QTensor(data, s * abs(c), lo + hi - z, q.dtype)

    def _get_name(self) -> str:
        return "QFunctional"

    def extra_repr(self) -> str:
        return self._output_repr()

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> QFunctional:
        observer = getattr(mod, "activation_post_process", None)
        q = cls()
        if observer is not None and not isinstance(observer, nn.Identity):
            try:
                scale, zp, qmin, qmax, dtype = output_qparams(observer, "FloatFunctional")
            except CalibrationError:
                # fine if only add_scalar / mul_scalar are used (their qparams follow the input);
                # the observed ops raise when called (D5)
                q._unobserved = True
                return q
            q._init_output(scale, zp, qmin, qmax, dtype)
        return q
