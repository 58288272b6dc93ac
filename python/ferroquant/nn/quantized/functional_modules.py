"""FloatFunctional (float, observed after prepare) and QFunctional (quantized); their rounding rules are in
docs/numerics.md, "Other quantized ops".

Use one instance per call site: ``self.skip_add = FloatFunctional()`` then
``self.skip_add.add(a, b)``; ``convert`` turns it into a QFunctional with the observed
output qparams.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from ... import _core
from ..._dtypes import per_tensor_affine, quint8
from ..._layout import from_nhwc, nhwc_view
from ..._ops import raise_named
from ..._threads import get_num_threads
from ...observer import CalibrationError
from ...qtensor import QTensor, quantize_per_tensor
from ._lut import apply_table, dense_flat, from_flat
from ._script import (
    QArg,
    QArgList,
    QTuple,
    script_dequantize,
    script_dtype_info,
    script_qtuple,
    script_requantize,
    script_unpack,
)
from ._static import OutputQParams, module_name, output_qparams, require_qtensor

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

    def cat(self, x: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self.activation_post_process(torch.cat(list(x), dim=dim))

    def add_relu(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.relu(torch.add(x, y)))

    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.activation_post_process(torch.matmul(x, y))


def _check_scalar(module: nn.Module, op: str, c: Any) -> None:
    """``add_scalar`` / ``mul_scalar`` take a finite real number."""
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"{module_name(module)}: {op}: the scalar c must be a real number, got {type(c).__name__}")
    if not math.isfinite(c):
        raise ValueError(f"{module_name(module)}: {op}: the scalar c must be finite, got {c!r}")


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


def addend(data: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """A quantized ``add`` operand's float32 values as torch's vectorised add dequantizes them:
    ``fma(q, s, fl(s·−zp))`` with one rounding (NUMERICS §3.4). In float64 the product and the sum
    are exact (q has 8 bits, s 24), so rounding once to float32 is the FMA's result — the same
    bits as the Rust kernel on every engine. TorchScript-compatible."""
    s32 = torch.tensor(scale, dtype=torch.float32)
    shift = (s32 * float(-zero_point)).to(torch.float64)
    return (data.to(torch.float64) * s32.to(torch.float64) + shift).to(torch.float32)


def _addend_of(q: QTensor) -> torch.Tensor:
    if q.qscheme() != per_tensor_affine:
        return q.dequantize()
    return addend(q.int_repr(), q.q_scale(), q.q_zero_point())


def _requant(values: torch.Tensor, scale: float, zp: int, qmin: int, qmax: int, dtype: Any) -> QTensor:
    out = quantize_per_tensor(values, scale, zp, dtype)
    return QTensor(torch.clamp(out.int_repr(), qmin, qmax), scale, zp, dtype)


def _storage(dtype: str) -> torch.dtype:
    if dtype == "quint8":
        return torch.uint8
    if dtype == "qint8":
        return torch.int8
    return torch.int32


def _mul_int(
    da: torch.Tensor,
    sa: float,
    za: int,
    db: torch.Tensor,
    sb: float,
    zb: int,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    dtype: str,
) -> torch.Tensor:
    """Quantized ``a * b`` (eager and TorchScript): the integer product and one float multiply
    (torch's rule, docs/numerics.md): ``q = oz + rne(fl(float(pa·pb)·m))``, ``m = fl(fl(sa·sb)/so)``
    in float32."""
    if da.dtype == torch.int32 or db.dtype == torch.int32:
        # qint32 inputs: q − zp needs 33 bits and the product 65, which int32 (and int64) arithmetic
        # would wrap; float64 holds each factor exactly and the product to 2^-53
        prod = ((da.to(torch.float64) - za) * (db.to(torch.float64) - zb)).to(torch.float32)
    else:
        pa = da.to(torch.int32) - za
        pb = db.to(torch.int32) - zb
        prod = (pa * pb).to(torch.float32)  # exact: |pa·pb| <= 255·255
    fa, fb = torch.tensor(sa, dtype=torch.float32), torch.tensor(sb, dtype=torch.float32)
    mult = (fa * fb) / torch.tensor(scale, dtype=torch.float32)
    # the zero point is added in float64: a qint32 one does not fit float32's 24 bits
    q = torch.round(prod * mult).to(torch.float64) + zero_point
    return torch.clamp(q, quant_min, quant_max).to(_storage(dtype))


def _matmul_int(
    da: torch.Tensor,
    sa: float,
    za: int,
    db: torch.Tensor,
    sb: float,
    zb: int,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    dtype: str,
) -> torch.Tensor:
    """Quantized ``a @ b`` (eager and TorchScript), with ``torch.matmul``'s shape rules: the exact
    integer product ``Σ (qa − za)(qb − zb)`` (float64 holds every such sum exactly: each term is
    below 2^17 and the sums stay far below 2^53), then one requantization in float64,
    ``q = oz + rne(acc · (sa·sb/so))``, clamped to [quant_min, quant_max]."""
    if da.dim() == 0 or db.dim() == 0:
        raise ValueError("QFunctional.matmul needs inputs with at least 1 dimension each (as torch.matmul)")
    kb = db.size(0) if db.dim() == 1 else db.size(-2)
    if da.size(-1) != kb:
        raise ValueError(
            "QFunctional.matmul: x has shape "
            + str(list(da.shape))
            + " and y "
            + str(list(db.shape))
            + "; x's last dimension must equal y's "
            + ("only" if db.dim() == 1 else "second-to-last")
            + " dimension (as in torch.matmul)"
        )
    acc = torch.matmul(da.to(torch.float64) - za, db.to(torch.float64) - zb)
    q = torch.round(acc * ((sa * sb) / scale)) + zero_point
    return torch.clamp(q, quant_min, quant_max).to(_storage(dtype))


class QFunctional(OutputQParams, nn.Module):
    """The quantized counterpart: results quantized to the observed output qparams.

    Under ``torch.jit.script`` its methods take and return quantized tensors in their
    TorchScript form ``(int_repr, scale, zero_point)``, with bit-identical results."""

    def __init__(self) -> None:
        super().__init__()
        self._init_output()
        self.activation_post_process = nn.Identity()

    def forward(self, x: Any) -> Any:
        raise RuntimeError("QFunctional is not called directly; use .add, .mul, .cat, ... instead of forward")

    def __prepare_scriptable__(self) -> Any:
        super().__prepare_scriptable__()
        self._unobserved = bool(getattr(self, "_unobserved", False))
        return self

    @torch.jit.unused
    def _check_observed(self) -> None:
        if getattr(self, "_unobserved", False):
            where = getattr(self, "_fq_name", "")
            raise CalibrationError(
                f"FloatFunctional '{where}' saw no data during calibration, so its add / mul / cat / add_relu have "
                "no output qparams; run calibration data through those calls before convert (torch would silently use "
                "scale 1.0 and zero point 0; see docs/numerics.md, D5)"
            )

    @torch.jit.unused
    def _out(self, values: torch.Tensor) -> QTensor:
        self._check_observed()
        return _requant(values, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype)

    # -- TorchScript forms (the same arithmetic on (int_repr, scale, zero_point)) -----------------
    def _script_check_observed(self) -> None:
        if self._unobserved:
            raise RuntimeError(
                "QFunctional: its FloatFunctional saw no data during calibration, so add / mul / cat / add_relu / "
                "matmul have no output qparams; run calibration data through those calls before convert"
            )

    def _script_out(self, values: torch.Tensor) -> QTuple:
        self._script_check_observed()
        data = script_requantize(
            values, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype_name
        )
        return script_qtuple(data, self.scale, self.zero_point)

    def _script_float(self, x: QTuple) -> torch.Tensor:
        script_unpack(x, "QFunctional")  # per-tensor check
        return script_dequantize(x)

    def _script_addend(self, x: QTuple) -> torch.Tensor:
        data, s, z = script_unpack(x, "QFunctional.add")
        return addend(data, s, z)

    # -- the ops ----------------------------------------------------------------------------------
    def add(self, x: QArg, y: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._script_out(self._script_addend(x) + self._script_addend(y))
        return self._add_eager(x, y)

    @torch.jit.unused
    def _add_eager(self, x: QArg, y: QArg) -> QArg:
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        fused = self._add_fused(a, b, relu=False)
        return fused if fused is not None else self._out(_addend_of(a) + _addend_of(b))

    @torch.jit.unused
    def _add_fused(self, a: QTensor, b: QTensor, relu: bool) -> Optional[QTensor]:
        """``add`` / ``add_relu`` in one Rust pass over the u8 data (the same bits as the float
        path: each operand dequantized as torch's vector loops do, ``fma(q, s, fl(s·−zp))``, a
        float32 add, quantize), when both operands are per-tensor quint8 of one shape and one dense
        memory layout (e.g. both channels-last, as a residual block's are); the result keeps that
        layout. None otherwise (the float path handles broadcasting and the rest)."""
        if a.qscheme() != per_tensor_affine or b.qscheme() != per_tensor_affine:
            return None
        if a.dtype != quint8 or b.dtype != quint8 or self._out_dtype.name not in ("quint8", "qint8"):
            return None
        da, db = a.int_repr(), b.int_repr()
        if da.device.type != "cpu" or db.device.type != "cpu":
            return None
        # numpy views: their shape / strides / flags cost a fraction of torch's accessors
        na, nb = da.numpy(), db.numpy()
        if na.shape != nb.shape or na.strides != nb.strides:
            return None
        if na.ndim in (4, 5) and nhwc_view(na).flags.c_contiguous:
            # the usual case (conv outputs, channels-last): flat views in memory order
            na, nb = nhwc_view(na), nhwc_view(nb)
            fa, fb, perm = na.reshape(-1), nb.reshape(-1), None
        else:
            dense_a, dense_b = dense_flat(da), dense_flat(db)
            if dense_a is None or dense_b is None:  # overlapping or gappy strides, not on the CPU
                return None
            (ta, perm), (tb, _) = dense_a, dense_b
            fa, fb = ta.numpy(), tb.numpy()
        self._check_observed()
        out = _core.add_requant(
            fa,
            a.q_scale(),
            a.q_zero_point(),
            fb,
            b.q_scale(),
            b.q_zero_point(),
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            relu,
            self._out_dtype.name,
            get_num_threads(),
        )
        if perm is None:
            data = from_nhwc(out.reshape(na.shape))
        else:
            data = from_flat(torch.from_numpy(out), da, perm)
        return QTensor._trusted(data, self.scale, self.zero_point, self._out_dtype)

    def add_relu(self, x: QArg, y: QArg) -> QArg:
        if torch.jit.is_scripting():
            return self._script_out(torch.relu(self._script_addend(x) + self._script_addend(y)))
        return self._add_relu_eager(x, y)

    @torch.jit.unused
    def _add_relu_eager(self, x: QArg, y: QArg) -> QArg:
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        fused = self._add_fused(a, b, relu=True)
        return fused if fused is not None else self._out(torch.relu(_addend_of(a) + _addend_of(b)))

    def mul(self, x: QArg, y: QArg) -> QArg:
        if torch.jit.is_scripting():
            self._script_check_observed()
            da, sa, za = script_unpack(x, "QFunctional.mul")
            db, sb, zb = script_unpack(y, "QFunctional.mul")
            data = _mul_int(
                da,
                sa,
                za,
                db,
                sb,
                zb,
                self.scale,
                self.zero_point,
                self.quant_min,
                self.quant_max,
                self._out_dtype_name,
            )
            return script_qtuple(data, self.scale, self.zero_point)
        return self._mul_eager(x, y)

    @torch.jit.unused
    def _mul_eager(self, x: QArg, y: QArg) -> QArg:
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        self._check_observed()
        data = _mul_int(
            a.int_repr(),
            a.q_scale(),
            a.q_zero_point(),
            b.int_repr(),
            b.q_scale(),
            b.q_zero_point(),
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self._out_dtype.name,
        )
        return QTensor(data, self.scale, self.zero_point, self._out_dtype)

    def matmul(self, x: QArg, y: QArg) -> QArg:
        """Quantized ``torch.matmul(x, y)`` (torch.ao's ``QFunctional.matmul``): the exact integer
        product, requantized once to the observed output qparams."""
        if torch.jit.is_scripting():
            self._script_check_observed()
            da, sa, za = script_unpack(x, "QFunctional.matmul")
            db, sb, zb = script_unpack(y, "QFunctional.matmul")
            data = _matmul_int(
                da,
                sa,
                za,
                db,
                sb,
                zb,
                self.scale,
                self.zero_point,
                self.quant_min,
                self.quant_max,
                self._out_dtype_name,
            )
            return script_qtuple(data, self.scale, self.zero_point)
        return self._matmul_eager(x, y)

    @torch.jit.unused
    def _matmul_eager(self, x: QArg, y: QArg) -> QArg:
        a, b = require_qtensor(self, x), require_qtensor(self, y)
        self._check_observed()
        data = _matmul_int(
            a.int_repr(),
            a.q_scale(),
            a.q_zero_point(),
            b.int_repr(),
            b.q_scale(),
            b.q_zero_point(),
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self._out_dtype.name,
        )
        return QTensor(data, self.scale, self.zero_point, self._out_dtype)

    def cat(self, x: QArgList, dim: int = 0) -> QArg:
        if torch.jit.is_scripting():
            self._script_check_observed()
            same = True
            datas: List[torch.Tensor] = []
            for t in x:
                d, s, z = script_unpack(t, "QFunctional.cat")
                name, lo, hi = script_dtype_info(d.dtype, "QFunctional.cat")
                if s != self.scale or z != self.zero_point or name != self._out_dtype_name:
                    same = False
                datas.append(d)
            if same:
                return script_qtuple(torch.cat(datas, dim=dim), self.scale, self.zero_point)
            values: List[torch.Tensor] = []
            for t in x:
                values.append(script_dequantize(t))
            return self._script_out(torch.cat(values, dim=dim))
        return self._cat_eager(x, dim)

    @torch.jit.unused
    def _cat_eager(self, x: Sequence[QArg], dim: int = 0) -> QArg:
        qs = [require_qtensor(self, t) for t in x]
        self._check_observed()
        same = all(
            t.q_scale() == self.scale and t.q_zero_point() == self.zero_point and t.dtype == self._out_dtype for t in qs
        )
        if same:
            return QTensor(torch.cat([t.int_repr() for t in qs], dim=dim), self.scale, self.zero_point, self._out_dtype)
        # quint8 inputs: each requantized to the output qparams through a 256-entry table (the
        # same bits as dequantize → quantize), then one integer concatenation
        parts = [
            apply_table(t, _identity, self.scale, self.zero_point, self.quant_min, self.quant_max, self._out_dtype)
            for t in qs
        ]
        if all(p is not None for p in parts):
            return QTensor._trusted(
                torch.cat([p.int_repr() for p in parts if p is not None], dim=dim),
                self.scale,
                self.zero_point,
                self._out_dtype,
            )
        return self._out(torch.cat([t.dequantize() for t in qs], dim=dim))

    def add_scalar(self, x: QArg, c: float) -> QArg:
        # output qparams derived from the input (torch's rule): the scalar is first quantized to
        # c_q = rne(c/s); shift the zero point by c_q when it stays in range, else widen the range
        if torch.jit.is_scripting():
            d, s, z = script_unpack(x, "QFunctional.add_scalar")
            name, lo, hi = script_dtype_info(d.dtype, "QFunctional.add_scalar")
            c_q = int(round(c / s))
            if lo <= z - c_q and z - c_q <= hi:
                return script_qtuple(d, s, z - c_q)
            values = script_dequantize(x) + float(c_q) * s
            if c_q > 0:
                new_s, new_z = s * float(hi - z + c_q) / float(hi - lo), lo
            else:
                new_s, new_z = s * float(z - lo - c_q) / float(hi - lo), hi
            return script_qtuple(script_requantize(values, new_s, new_z, lo, hi, name), new_s, new_z)
        return self._add_scalar_eager(x, c)

    @torch.jit.unused
    def _add_scalar_eager(self, x: QArg, c: float) -> QArg:
        q = require_qtensor(self, x)
        _check_scalar(self, "add_scalar", c)
        s, z = q.q_scale(), q.q_zero_point()
        if not math.isfinite(c / s):
            raise ValueError(f"{module_name(self)}: add_scalar: c = {c!r} is too large for the input scale {s!r}")
        c_q = round(c / s)
        lo, hi = q.dtype.qmin, q.dtype.qmax
        if lo <= z - c_q <= hi:
            return QTensor(q.int_repr(), s, z - c_q, q.dtype)
        d = q.dequantize() + c_q * s
        if c_q > 0:
            new_s, new_z = s * (hi - z + c_q) / (hi - lo), lo
        else:
            new_s, new_z = s * (z - lo - c_q) / (hi - lo), hi
        try:
            return _requant(d, new_s, new_z, lo, hi, q.dtype)
        except ValueError as e:  # the widened scale left float32's range
            raise_named(e, f"{module_name(self)}: add_scalar")

    def mul_scalar(self, x: QArg, c: float) -> QArg:
        if torch.jit.is_scripting():
            d, s, z = script_unpack(x, "QFunctional.mul_scalar")
            name, lo, hi = script_dtype_info(d.dtype, "QFunctional.mul_scalar")
            if c == 0:
                return script_qtuple(torch.zeros_like(d), 1.0, 0)
            if c > 0:
                return script_qtuple(d, s * c, z)
            data = (lo + hi - d.to(torch.int32)).to(d.dtype)
            return script_qtuple(data, s * abs(c), lo + hi - z)
        return self._mul_scalar_eager(x, c)

    @torch.jit.unused
    def _mul_scalar_eager(self, x: QArg, c: float) -> QArg:
        q = require_qtensor(self, x)
        _check_scalar(self, "mul_scalar", c)
        s, z = q.q_scale(), q.q_zero_point()
        lo, hi = q.dtype.qmin, q.dtype.qmax
        if c == 0:
            return QTensor(torch.zeros_like(q.int_repr()), 1.0, 0, q.dtype)
        try:
            if c > 0:
                return QTensor(q.int_repr(), s * c, z, q.dtype)
            data = (lo + hi - q.int_repr().to(torch.int32)).to(q.dtype.storage)
            return QTensor(data, s * abs(c), lo + hi - z, q.dtype)
        except ValueError as e:  # scale · |c| left float32's range
            raise_named(e, f"{module_name(self)}: mul_scalar")

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
                # the observed ops raise when called (docs/numerics.md D5)
                q._unobserved = True
                return q
            q._init_output(scale, zp, qmin, qmax, dtype)
        return q
