"""The weight and state_dict scheme shared by every ferroquant module with int8 weights.

state_dict keys (relative to the module's prefix):
``weight`` (int8 tensor, the float module's layout), ``weight_scale`` (float32 ``[1]`` or ``[C]``),
``weight_zero_point`` (int64 ``[1]`` or ``[C]``), ``weight_axis`` (int64 0-dim, −1 for per
tensor), ``bias`` (float32, absent when the module has none), plus the module's own keys (output
``scale`` / ``zero_point`` for static modules). ``_version`` is in the state_dict metadata.
Packed weights are never saved: they are rebuilt for this machine after loading.

Loading is all or nothing per module (:class:`AtomicLoad`): every key is checked, and the packed
weights are built, before anything in the module changes. Forward repacks when the int8 weight
or its qparams were changed in place since packing (``_fresh_packed``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..._dtypes import qint8, to_qdtype, to_qscheme
from ..._ops import check_requant_scales, raise_named
from ...qtensor import (
    QTensor,
    check_per_channel_qparams,
    check_scale,
    check_zero_point,
    quantize_per_channel,
    quantize_per_tensor,
)

__all__ = [
    "AtomicLoad",
    "AtomicGroupLoad",
    "WeightedQuantModule",
    "quantize_weight",
    "quantize_weight_frozen",
    "convert_weight_bias",
    "module_label",
    "state_number",
    "declines_torch_fast_paths",
]

_KEYS = ("weight", "weight_scale", "weight_zero_point", "weight_axis")
_F32_MAX = float(torch.finfo(torch.float32).max)
_RESAVE = "save the state_dict again from a converted ferroquant model of the same architecture"


def _no_torch_function(*args: Any, **kwargs: Any) -> Any:
    return NotImplemented


def declines_torch_fast_paths(accessor: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a weight accessor method so that torch's fused fast paths step aside.

    ``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder`` and ``nn.MultiheadAttention`` check
    their submodules' ``.weight`` (and ``in_proj_weight``) before taking a fused C++ path that
    needs float parameters; on a quantized module those are methods (torch.ao's API), and torch
    raised ``'function' object has no attribute 'device'``. An object that has
    ``__torch_function__`` makes those checks answer "some Tensor argument has_torch_function"
    (a bound method forwards attribute lookups to its function), so the layer runs its ordinary
    path, which calls the quantized modules. The marker is never called.
    """
    accessor.__torch_function__ = _no_torch_function  # type: ignore[attr-defined]
    return accessor


def quantize_weight(weight: torch.Tensor, observer: nn.Module) -> QTensor:
    """Runs ``observer`` on ``weight`` and quantizes it to int8 with the observer's qparams,
    clamped to the observer's ``[quant_min, quant_max]`` (as torch's ``_quantize_weight``)."""
    if weight.numel() == 0:
        raise ValueError(
            f"cannot quantize an empty weight of shape {list(weight.shape)}: ferroquant's int8 kernels need at "
            "least one input and one output feature (torch.ao's layer would return uninitialized memory); keep "
            "this layer in float by leaving it out of the qconfig (qconfig_spec, or qconfig = None)"
        )
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


def quantize_weight_frozen(weight: torch.Tensor, fake_quant: nn.Module, who: str) -> QTensor:
    """The int8 weight of a QAT layer: ``weight`` quantized with its weight fake-quant's frozen
    ``scale`` / ``zero_point`` (no new observation; docs/numerics.md D6/D7), the rounding of the
    fake-quant's forward, so ``convert`` stores exactly the grid values training saw."""
    observer = getattr(fake_quant, "activation_post_process", None)
    learned = bool(getattr(fake_quant, "learning_enabled", torch.zeros(1))[0])
    seen = getattr(observer, "min_val", None)
    if not learned and isinstance(seen, torch.Tensor) and not bool(torch.isfinite(seen).all()):
        from ...observer import CalibrationError

        raise CalibrationError(
            f"the weight fake-quant of {who} never observed its weight: run at least one training (or calibration) "
            "forward pass through the QAT model before convert"
        )
    w = weight.detach().float()
    dtype = to_qdtype(fake_quant.dtype)
    if dtype != qint8:
        raise TypeError(f"weights must be quantized to qint8, the weight fake-quant of {who} uses {dtype}")
    qmin, qmax = int(fake_quant.quant_min), int(fake_quant.quant_max)
    scale, zp = (t.detach() for t in fake_quant.frozen_qparams())
    if fake_quant.is_per_channel:
        axis = int(fake_quant.ch_axis) % w.dim()
        q = quantize_per_channel(w, scale.float(), zp.to(torch.int64), axis, qint8)
        data = torch.clamp(q.int_repr(), qmin, qmax)
        return QTensor(data, q.q_per_channel_scales(), q.q_per_channel_zero_points(), qint8, axis=axis)
    q = quantize_per_tensor(w, float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), qint8)
    return QTensor(torch.clamp(q.int_repr(), qmin, qmax), q.q_scale(), q.q_zero_point(), qint8)


def convert_weight_bias(mod: nn.Module, inner: nn.Module, qconfig: Any, who: str) -> tuple[QTensor, Any]:
    """``from_float``'s int8 weight and float bias: for a QAT module (it has a
    ``weight_fake_quant``) the BatchNorm-folded weight and bias of its training formula, quantized
    with the frozen fake-quant qparams; for a calibrated float module, its weight through a fresh
    weight observer of the qconfig."""
    fake_quant = getattr(mod, "weight_fake_quant", None)
    if fake_quant is not None:
        folded = getattr(mod, "folded_weight", None)
        weight = folded() if folded is not None else mod.weight
        bias = mod.folded_bias() if folded is not None else mod.bias
        qweight = quantize_weight_frozen(weight, fake_quant, who)
        return qweight, None if bias is None else bias.detach()
    qweight = quantize_weight(inner.weight, qconfig.weight())
    return qweight, None if inner.bias is None else inner.bias.detach()


def _bias_problem(b: torch.Tensor) -> str:
    """What is wrong with a float bias's values (``""`` when they are fine): NaN or Inf, or
    finite values beyond float32 (the bias is kept in float32)."""
    b64 = b.detach().to(torch.float64)
    bad = ~torch.isfinite(b64) | (b64.abs() > _F32_MAX)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        return (
            f"must hold finite float32 values (|b| <= {_F32_MAX:.8g}), got {b64[i].item()!r} for output channel {i}; "
            "a NaN or Inf bias would make the quantized outputs meaningless"
        )
    return ""


def module_label(module: nn.Module, prefix: str) -> str:
    """``Linear '0.fc'``: the module's class and its path in the model (from the state_dict prefix)."""
    name = prefix[:-1] if prefix.endswith(".") else prefix
    return f"{type(module).__name__} '{name}'" if name else f"{type(module).__name__} (the root module)"


def state_number(value: Any, key: str, kind: str) -> Any:
    """A saved scalar (a one-element tensor or a number) as a Python ``float``, ``int`` or
    ``bool`` (``kind``); a ``ValueError`` that names the key otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"'{key}': expected a single {kind} (a 0-dim tensor), got shape {list(value.shape)}")
        if value.is_complex():
            raise ValueError(f"'{key}': expected a {kind}, got a {value.dtype} tensor")
        if kind != "float" and value.is_floating_point():
            v = value.item()
            if not float(v).is_integer():
                raise ValueError(f"'{key}': expected an integer, got {v!r}")
        value = value.item()
    if not isinstance(value, (bool, int, float)):
        raise ValueError(f"'{key}': expected a {kind}, got {type(value).__name__}")
    if kind == "float":
        return float(value)
    if kind == "bool":
        if value not in (0, 1):
            raise ValueError(f"'{key}': expected a bool (0 or 1), got {value!r}")
        return bool(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"'{key}': expected an integer, got {value!r}")
    return int(value)


class AtomicLoad:
    """``load_state_dict`` for ferroquant modules, all or nothing per module: each class in the
    MRO reads and checks its own keys in ``_stage_state`` and returns the changes to make; the
    changes are made only when every key of the module is present and valid and none is
    unexpected, so a load that fails (or, with ``strict=False``, reports missing / unexpected keys
    of this module) leaves the module exactly as it was. torch passes ``strict=True`` to every
    ``_load_from_state_dict`` whatever the caller asked, so the rule cannot depend on it."""

    def _stage_state(
        self, state_dict: dict, prefix: str, strict: bool, missing_keys: list, unexpected_keys: list, errors: list
    ) -> list[Callable[[], None]]:
        return []

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
        counts = len(missing_keys), len(unexpected_keys), len(error_msgs)
        errors: list[str] = []
        changes = self._stage_state(state_dict, prefix, strict, missing_keys, unexpected_keys, errors)
        # the default load (pre-hooks, any registered buffers, unexpected keys under this prefix)
        nn.Module._load_from_state_dict(
            self,  # type: ignore[arg-type]
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        if errors:
            label = module_label(self, prefix)  # type: ignore[arg-type]
            error_msgs.extend(
                f"{e} [{label}; nothing in this module was loaded: {_RESAVE}, or fix the value]" for e in errors
            )
        failed = len(error_msgs) > counts[2] or len(missing_keys) > counts[0] or len(unexpected_keys) > counts[1]
        # a part of a module that loads all or nothing (AtomicGroupLoad) whose other parts failed
        vetoed = self.__dict__.pop("_fq_load_veto", False)
        if not failed and not vetoed:
            for change in changes:
                change()


class AtomicGroupLoad:
    """``load_state_dict`` all or nothing for a module made of several :class:`AtomicLoad`
    parts (an LSTM's projections, an attention's in- and out-projections): before any part
    loads, every part checks its keys on a copy of the state_dict; if one would fail, none loads
    (the failing part reports why, this module says the others were left unchanged), and this
    module's own parameters and buffers stay as they were too."""

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
        parts = [
            (prefix + name + ".", m)
            for name, m in self.named_modules()  # type: ignore[attr-defined]
            if name and isinstance(m, AtomicLoad)
        ]
        missing: list[str] = []
        errors: list[str] = []
        for part_prefix, part in parts:
            part._stage_state(dict(state_dict), part_prefix, strict, missing, [], errors)
        # this module's own parameters and buffers (an attention's bias_k / bias_v): present, same shape
        own: list[str] = []
        for name, t in [*self._parameters.items(), *self._buffers.items()]:  # type: ignore[attr-defined]
            if t is None:
                continue
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                missing.append(key)
            elif not isinstance(state_dict[key], torch.Tensor) or state_dict[key].shape != t.shape:
                got = getattr(state_dict[key], "shape", type(state_dict[key]).__name__)
                own.append(f"size mismatch for '{key}': expected {list(t.shape)}, got {got}")
        if errors or missing or own:
            for _, part in parts:
                part._fq_load_veto = True  # type: ignore[attr-defined]
            error_msgs.extend(own)
            if errors or own:
                label = module_label(self, prefix)  # type: ignore[arg-type]
                error_msgs.append(
                    f"{label}: none of its parts was loaded (they load all or nothing), because of the error "
                    "reported with it"
                )
            return
        nn.Module._load_from_state_dict(
            self,  # type: ignore[arg-type]
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )


def _normal(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` as a normal tensor: a copy when it was made under ``torch.inference_mode()``, whose
    tensors have no version counter (modules compare versions to repack after in-place edits)."""
    if t is None or not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


# serialises rebuilding released int8 weights (rare, and quick)
_REBUILD_LOCK = threading.Lock()


class WeightedQuantModule(AtomicLoad, nn.Module):
    """Holds an int8 weight (as a QTensor's parts) and a float bias, with the shared
    state_dict scheme; subclasses build their packed form in ``_pack``.

    The packed form is what forward reads, and it holds the int8 values exactly; the plain int8
    tensor ``_w`` is released after packing (``_w is None``: no second copy of the weights in
    memory) and rebuilt from the packed form on first use — ``weight()``, ``state_dict()``,
    pickling, ``torch.jit.script`` — after which it is the module's own tensor again: edits to it
    in place are picked up by the next forward, as before."""

    _version = 1
    # the weight's output-channel axis (per-channel qparams run along it): 0, or 1 for transposed
    # convolutions ([in, out / groups, *kernel])
    _W_AXIS = 0
    # Not part of the scripted module: packed weights live outside TorchScript (the scripted
    # forward calls torch.ops.ferroquant.*, which repacks from the int8 tensor on demand).
    __jit_ignored_attributes__ = ["_packed", "_bias_np", "_weight_shape", "_packed_src", "_requant_ok"]

    def _init_weight_storage(self, weight_shape: tuple[int, ...], has_bias: bool) -> None:
        self._weight_shape = tuple(weight_shape)
        # normal tensors even under torch.inference_mode(): they need version counters
        with torch.inference_mode(False):
            try:
                self._w = torch.zeros(weight_shape, dtype=torch.int8)
            except RuntimeError as e:  # torch's allocator: "can't allocate memory", size overflow
                raise MemoryError(
                    f"{type(self).__name__}: cannot allocate an int8 weight of shape {list(weight_shape)} ({e})"
                ) from e
            self._w_scale = torch.ones(1, dtype=torch.float32)
            self._w_zp = torch.zeros(1, dtype=torch.int64)
            self._w_axis = -1
            self._bias: Optional[torch.Tensor] = torch.zeros(self._bias_size()) if has_bias else None

    def _bias_size(self) -> int:
        """The number of output channels (the bias's length)."""
        return self._weight_shape[self._W_AXIS]

    # -- the int8 weight tensor, released after packing ------------------------------------------
    def _int8_weight(self) -> torch.Tensor:
        """The module's int8 weight tensor, rebuilt from the packed form if it was released
        (under a lock: two threads asking at once must get the same tensor)."""
        w = self._w
        if w is None:
            with _REBUILD_LOCK:
                w = self._w
                if w is None:
                    with torch.inference_mode(False):  # a normal tensor: it needs a version counter
                        w = self._weight_from_packed(torch.from_numpy(self._packed.unpack()))
                    # the packed form holds exactly these values: track this tensor's edits from now on
                    self._packed_src = (w, w._version, *self._packed_src[2:])
                    self._w = w
        return w

    def _output_weight_scales(self) -> torch.Tensor:
        """The weight scale of each output channel (one for per-tensor weights)."""
        return self._w_scale

    def _weight_from_packed(self, unpacked: torch.Tensor) -> torch.Tensor:
        """The module's int8 weight from its packed form's values (the same layout by default)."""
        return unpacked.reshape(self._weight_shape)

    def _release_int8_weight(self) -> None:
        """Drops the int8 tensor once packed (nobody else holds it yet: it came from a copy)."""
        self._w = None
        self._packed_src = (None, 0, *self._packed_src[2:])

    def __prepare_scriptable__(self) -> Any:
        # the scripted forward passes the int8 tensor to torch.ops.ferroquant.*
        self._int8_weight()
        return self

    # -- the torch.ao accessors -------------------------------------------------------------------
    @declines_torch_fast_paths
    def weight(self) -> QTensor:
        """The int8 weight; its ``int_repr()`` is the module's own tensor (edits in place are
        picked up by the next forward)."""
        w = self._int8_weight()
        if self._w_axis < 0:
            return QTensor(w, float(self._w_scale[0]), int(self._w_zp[0]), qint8)
        return QTensor(w, self._w_scale.double(), self._w_zp, qint8, axis=self._w_axis)

    def bias(self) -> Optional[torch.Tensor]:
        return self._bias

    def set_weight_bias(self, w: QTensor, b: Optional[torch.Tensor]) -> None:
        """Replaces weight and bias; on any error the module is left unchanged."""
        who = type(self).__name__
        if not isinstance(w, QTensor) or w.dtype != qint8:
            raise TypeError(
                f"{who}.set_weight_bias: w must be a qint8 ferroquant QTensor, got "
                f"{getattr(w, 'dtype', type(w).__name__)}; quantize it with ferroquant.quantize_per_tensor / "
                "quantize_per_channel(..., dtype=ferroquant.qint8)"
            )
        if tuple(w.shape) != self._weight_shape:
            raise ValueError(
                f"{who}.set_weight_bias: w has shape {list(w.shape)}, this module needs {list(self._weight_shape)}"
            )
        if w.is_per_channel and w.q_per_channel_axis() != self._W_AXIS:
            raise ValueError(
                f"{who}.set_weight_bias: per-channel weights must be quantized along axis {self._W_AXIS} (one scale "
                f"per output channel), got axis {w.q_per_channel_axis()}"
            )
        if b is not None:
            if not isinstance(b, torch.Tensor) or not b.is_floating_point():
                raise TypeError(
                    f"{who}.set_weight_bias: b must be a float tensor or None, got {getattr(b, 'dtype', type(b))}"
                )
            if tuple(b.shape) != (self._bias_size(),):
                raise ValueError(
                    f"{who}.set_weight_bias: b has shape {list(b.shape)}, this module needs [{self._bias_size()}]"
                )
            problem = _bias_problem(b)
            if problem:
                raise ValueError(f"{who}.set_weight_bias: b {problem}")
        data = w.int_repr().contiguous().clone()
        if w.is_per_channel:
            scale = w.q_per_channel_scales().to(torch.float32)
            zp = w.q_per_channel_zero_points().to(torch.int64)
            axis = self._W_AXIS
        else:
            scale = torch.tensor([w.q_scale()], dtype=torch.float32)
            zp = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            axis = -1
        bias = None if b is None else b.detach().to(torch.float32).contiguous().clone()
        try:
            packed = self._pack(data, scale, zp)  # raises before anything changes
        except (ValueError, TypeError, MemoryError, RuntimeError) as e:
            raise_named(e, f"{who}.set_weight_bias")
        data, scale, zp, bias = _normal(data), _normal(scale), _normal(zp), _normal(bias)
        self._w, self._w_scale, self._w_zp, self._w_axis, self._bias = data, scale, zp, axis, bias
        self._set_packed(packed)
        self._release_int8_weight()

    # -- packed weights ---------------------------------------------------------------------------
    def _pack(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> Any:  # pragma: no cover - abstract
        """The native packed form of int8 weights ``w`` with float32 ``scale`` and int64 ``zp``."""
        raise NotImplementedError

    def _set_packed(self, packed: Any) -> None:
        self._packed = packed
        self._requant_ok: Optional[tuple] = None  # (input scale, output scale, bias version) checked
        self._bias_np = None if self._bias is None else self._bias.numpy()
        # what was packed, to notice in-place edits (tensor._version) or replaced tensors
        self._packed_src = (
            self._w,
            0 if self._w is None else self._w._version,
            self._w_scale,
            self._w_scale._version,
            self._w_zp,
            self._w_zp._version,
            self._bias,
        )

    def _rebuild(self, release: bool = False) -> None:
        """Repacks from the canonical int8 weight and qparams, after checking them; with
        ``release``, drops the int8 tensor afterwards (only where no caller can hold it)."""
        channels = 1 if self._w_axis < 0 else self._weight_shape[self._W_AXIS]
        name = getattr(self, "_fq_name", None)
        where = f"{type(self).__name__} '{name}'" if name else type(self).__name__
        try:
            scale, zp = check_per_channel_qparams(
                self._w_scale, self._w_zp, channels, qint8, f"{where} weight scale", f"{where} weight zero point"
            )
        except (TypeError, ValueError) as e:
            raise type(e)(
                f"{e}; the module's weight qparams were changed in place since they were packed: restore valid "
                "values (or load_state_dict / set_weight_bias valid ones)"
            ) from None
        try:
            packed = self._pack(self._int8_weight().contiguous(), scale.to(torch.float32), zp)
        except (ValueError, TypeError, MemoryError, RuntimeError) as e:
            raise_named(e, where)
        self._set_packed(packed)
        if release:
            self._release_int8_weight()

    def _fresh_packed(self) -> Any:
        """The packed weights, repacked first when the int8 weight, its qparams or the bias were
        changed in place (``weight().int_repr()``, ``state_dict()`` tensors) or replaced."""
        w, wv, s, sv, z, zv, b = self._packed_src
        if (
            w is not self._w
            or s is not self._w_scale
            or z is not self._w_zp
            or b is not self._bias
            or (w is not None and w._version != wv)
            or s._version != sv
            or z._version != zv
        ):
            self._rebuild()
        return self._packed

    def _check_requant(self, x_scale: float, out_scale: float) -> None:
        """``check_requant_scales`` for this module's packed weights, once per input scale,
        output scale and bias version (a repack checks again)."""
        zp = getattr(self, "zero_point", 0)
        key = (x_scale, out_scale, zp, -1 if self._bias is None else self._bias._version)
        if self._requant_ok == key:
            return
        name = getattr(self, "_fq_name", None)
        where = f"{type(self).__name__} '{name}'" if name else type(self).__name__
        # the output qparams are plain attributes a user may have set: checked here by name
        check_scale(out_scale, f"{where} output scale (.scale)")
        out_dtype = getattr(self, "_out_dtype", None)
        if out_dtype is not None:
            check_zero_point(zp, out_dtype, f"{where} output zero point (.zero_point)")
        check_requant_scales(where, x_scale, self._output_weight_scales(), self._bias_np, out_scale)
        self._requant_ok = key

    # Packed weights are machine-specific native objects: pickling (torch.save of a whole model,
    # copy.deepcopy) keeps the canonical int8 data and rebuilds them on the way back.
    def __getstate__(self) -> dict:
        released = self._w is None
        self._int8_weight()
        state = self.__dict__.copy()
        if released:
            self._release_int8_weight()
        state.pop("_packed", None)
        state.pop("_bias_np", None)
        state.pop("_packed_src", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._rebuild(release=True)

    # -- state_dict -------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self._int8_weight()
        destination[prefix + "weight_scale"] = self._w_scale
        destination[prefix + "weight_zero_point"] = self._w_zp
        destination[prefix + "weight_axis"] = torch.tensor(self._w_axis, dtype=torch.int64)
        if self._bias is not None:
            destination[prefix + "bias"] = self._bias

    def _stage_state(
        self, state_dict: dict, prefix: str, strict: bool, missing_keys: list, unexpected_keys: list, errors: list
    ) -> list[Callable[[], None]]:
        changes = super()._stage_state(state_dict, prefix, strict, missing_keys, unexpected_keys, errors)
        present = {k: state_dict.pop(prefix + k) for k in (*_KEYS, "bias") if prefix + k in state_dict}
        if self._bias is None and "bias" in present:
            unexpected_keys.append(prefix + "bias")
            del present["bias"]
        needed = [*_KEYS, "bias"] if self._bias is not None else list(_KEYS)
        missing = [k for k in needed if k not in present]
        if missing:
            missing_keys.extend(prefix + k for k in missing)
            return changes
        staged = self._check_weight_state(present, prefix, errors)
        if staged is None:
            return changes
        w, scale, zp, axis, bias, packed = staged

        def apply() -> None:
            self._w, self._w_scale, self._w_zp, self._w_axis = _normal(w), _normal(scale), _normal(zp), axis
            if self._bias is not None:
                self._bias = _normal(bias)
            self._set_packed(packed)
            self._release_int8_weight()

        return [*changes, apply]

    def _check_weight_state(self, present: dict, prefix: str, errors: list) -> Optional[tuple]:
        """The checked, converted weight keys and the packed weights built from them, or
        ``None`` after adding what is wrong to ``errors``."""
        n0 = len(errors)
        shape = list(self._weight_shape)
        out = self._bias_size()
        per_channel = self._weight_shape[self._W_AXIS]
        w = present["weight"]
        if not isinstance(w, torch.Tensor) or w.dtype != torch.int8 or list(w.shape) != shape:
            got = f"{w.dtype} {list(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
            errors.append(f"size mismatch for '{prefix}weight': expected int8 {shape}, got {got}")
        axis: Optional[int] = None
        try:
            axis = state_number(present["weight_axis"], prefix + "weight_axis", "int")
        except ValueError as e:
            errors.append(str(e))
        if axis is not None and axis not in (-1, self._W_AXIS):
            errors.append(
                f"'{prefix}weight_axis': expected -1 (per-tensor weights) or {self._W_AXIS} (one scale per output "
                f"channel), got {axis}"
            )
            axis = None
        scale_t, zp_t = present["weight_scale"], present["weight_zero_point"]
        for key, t, floating, kind in (
            ("weight_scale", scale_t, True, "a floating point tensor (float32)"),
            ("weight_zero_point", zp_t, False, "an integer tensor (int64)"),
        ):
            if not isinstance(t, torch.Tensor):
                errors.append(f"'{prefix}{key}': expected {kind}, got {type(t).__name__}")
            elif t.dtype == torch.bool or t.is_complex() or floating != t.is_floating_point():
                errors.append(f"'{prefix}{key}': expected {kind}, got {t.dtype}")
        scale: Optional[torch.Tensor] = None
        zp: Optional[torch.Tensor] = None
        if axis is not None and len(errors) == n0:
            channels = 1 if axis < 0 else per_channel
            for key, t in (("weight_scale", scale_t), ("weight_zero_point", zp_t)):
                if list(t.shape) != [channels]:
                    errors.append(
                        f"size mismatch for '{prefix}{key}': expected shape [{channels}] (weight_axis {axis}), "
                        f"got {list(t.shape)}"
                    )
            if len(errors) == n0:
                try:
                    s64, zp = check_per_channel_qparams(
                        scale_t, zp_t, channels, qint8, f"'{prefix}weight_scale'", f"'{prefix}weight_zero_point'"
                    )
                    scale = s64.to(torch.float32)
                except (TypeError, ValueError) as e:
                    errors.append(str(e))
        bias: Optional[torch.Tensor] = None
        if self._bias is not None:
            b = present["bias"]
            if not isinstance(b, torch.Tensor) or not b.is_floating_point() or list(b.shape) != [out]:
                got = f"{b.dtype} {list(b.shape)}" if isinstance(b, torch.Tensor) else type(b).__name__
                errors.append(f"size mismatch for '{prefix}bias': expected a float tensor of shape [{out}], got {got}")
            elif _bias_problem(b):
                errors.append(f"'{prefix}bias': {_bias_problem(b)}")
            else:
                bias = b.detach().to(torch.float32).contiguous().clone()
        if len(errors) > n0 or scale is None or zp is None or axis is None:
            return None
        data = w.detach().contiguous().clone()
        try:
            packed = self._pack(data, scale, zp)
        except (ValueError, RuntimeError, TypeError) as e:
            errors.append(f"'{prefix}weight': the int8 kernels rejected these weights: {e}")
            return None
        return data, scale, zp, axis, bias, packed
