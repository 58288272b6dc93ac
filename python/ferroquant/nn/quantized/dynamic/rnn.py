"""Dynamic quantized recurrent modules: ``LSTM``, ``GRU``, ``RNN`` and ``LSTMCell``, ``GRUCell``,
``RNNCell`` (torch: ``nn.quantized.dynamic``; ``RNN`` is ferroquant's addition).

int8 weights (per tensor or per channel), packed once; float activations quantized on the fly.
Each layer and direction is **one** kernel call per sequence (``ferroquant._core.rnn_layer``):
the input projection of every time step as one GEMM, then the recurrence — hidden state
quantized per step, its GEMM, the gates and the state update — in Rust, in torch's order of
operations (``aten/src/ATen/native/RNN.cpp``). Activation qparams follow the qconfig as for the
dynamic ``Linear``: per row over 0..127 by default, per tensor over 0..127
(``default_dynamic_qconfig_torch``) to reproduce torch's results.

The weights live in one dynamic :class:`~ferroquant.nn.quantized.dynamic.Linear` per gate
projection (``_cells.<k>.ih`` and ``.hh``; ``k`` runs over layers, and within a layer over
directions): the state_dict is theirs (int8 weight, qparams, float bias), loaded all or nothing
per projection.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ...._core import rnn_layer
from ...._dtypes import qint8, to_qdtype
from ...._ops import KERNEL_ERRORS, raise_named
from ...._threads import get_num_threads
from ....qtensor import QTensor
from .._weights import AtomicGroupLoad, quantize_weight
from ..weight_only import Float16Linear, low_precision_kind
from .linear import Linear, _activation_options

__all__ = ["RNNBase", "LSTM", "GRU", "RNN", "RNNCellBase", "LSTMCell", "GRUCell", "RNNCell"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_NAMES = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


class _Projections(nn.Module):
    """The input (``ih``) and hidden (``hh``) projections of one layer and direction: dynamic int8
    ``Linear`` modules, or ``Float16Linear`` for fp16 weights."""

    def __init__(self, input_size: int, hidden_size: int, gates: int, bias: bool, fp16: bool = False) -> None:
        super().__init__()
        make = Float16Linear if fp16 else Linear
        self.ih = make(input_size, gates * hidden_size, bias_=bias)
        self.hh = make(hidden_size, gates * hidden_size, bias_=bias)


def check_dropout(dropout: Any) -> None:
    """nn.LSTM's rule: a number in [0, 1] (not a bool)."""
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= float(dropout) <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed, "
            f"got {dropout!r}"
        )


def _float_input(x: Any, who: str, what: str) -> torch.Tensor:
    """``x`` as a contiguous float32 CPU tensor without autograd history, or a clear error."""
    if isinstance(x, QTensor):
        raise TypeError(
            f"{who} takes float {what} (it quantizes activations itself) but got a QTensor; call .dequantize() "
            "on it or remove the QuantStub before it"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a float torch.Tensor as {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating point {what}, got {x.dtype}; pass a float tensor (e.g. x.float())")
    if x.device.type != "cpu":
        raise ValueError(f"{who}: {what} is on {x.device}; ferroquant runs on the CPU, call .cpu() first")
    return x.detach().to(torch.float32).contiguous()


class _Recurrent(AtomicGroupLoad, nn.Module):
    """What the layers and the cells share: the projections, the activation options, the
    kernel call and the torch.ao accessors."""

    mode: str
    hidden_size: int

    def _init_projections(self, sizes: list[tuple[int, int]], bias: bool) -> None:
        gates = _GATES[self.mode]
        fp16 = self.dtype == torch.float16
        self._cells = nn.ModuleList(_Projections(i, self.hidden_size, gates, bias, fp16) for i, _ in sizes)

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this first: say so plainly instead of a compiler error
        raise NotImplementedError(
            f"{self._get_name()}: TorchScript is not available for ferroquant's dynamic recurrent modules yet; "
            "run the quantized model in eager mode (the dynamic Linear scripts)"
        )

    def _dtype_repr(self) -> str:
        if self.dtype == torch.float16:
            return ", dtype=torch.float16"
        return f", dtype=qint8, reduce_range={self.reduce_range}" + (
            ", per_row_activations=True" if self.per_row_activations else ""
        )

    def _projections(self) -> list[Any]:
        return [lin for cell in self._cells for lin in (cell.ih, cell.hh)]

    # the activation scheme is kept (and saved) by every projection; set on all of them
    @property
    def reduce_range(self) -> bool:
        """Activations over 0..127 (True, the default) or 0..255."""
        return bool(self._cells[0].ih.reduce_range)

    @reduce_range.setter
    def reduce_range(self, value: bool) -> None:
        for lin in self._projections():
            lin.reduce_range = bool(value)

    @property
    def per_row_activations(self) -> bool:
        """(+) one activation scale / zero point per row (the default): per time step of each sequence
        for the input projection, per sequence for the hidden state."""
        return bool(self._cells[0].ih.per_row_activations)

    @per_row_activations.setter
    def per_row_activations(self, value: bool) -> None:
        for lin in self._projections():
            lin.per_row_activations = bool(value)

    def _run(
        self, k: int, x: np.ndarray, batch_sizes: list[int], h0: torch.Tensor, c0: Optional[torch.Tensor], reverse: bool
    ) -> tuple[np.ndarray, torch.Tensor, Optional[torch.Tensor]]:
        cell = self._cells[k]
        ih, hh = cell.ih, cell.hh
        try:
            out, h, c = rnn_layer(
                self.mode,
                x,
                batch_sizes,
                ih._fresh_packed(),
                ih._bias_np,
                hh._fresh_packed(),
                hh._bias_np,
                h0.numpy(),
                None if c0 is None else c0.numpy(),
                reverse,
                self.reduce_range,
                self.per_row_activations,
                get_num_threads(),
            )
        except KERNEL_ERRORS as e:  # NaN / Inf in the input or the state
            raise_named(e, self._label())
        return out, torch.from_numpy(h), None if c is None else torch.from_numpy(c)

    def _label(self) -> str:
        name = getattr(self, "_fq_name", None)
        return f"{self._get_name()} '{name}'" if name else self._get_name()

    def _param_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_weight(self) -> dict[str, QTensor]:
        """The int8 weights by the float module's parameter names (``weight_ih_l0``, …)."""
        names = self._param_names()
        out: dict[str, QTensor] = {}
        for cell, suffix in zip(self._cells, names):
            out["weight_ih" + suffix] = cell.ih.weight()
            out["weight_hh" + suffix] = cell.hh.weight()
        return out

    def get_bias(self) -> dict[str, Optional[torch.Tensor]]:
        """The float biases by the float module's parameter names (``bias_ih_l0``, …)."""
        out: dict[str, Optional[torch.Tensor]] = {}
        for cell, suffix in zip(self._cells, self._param_names()):
            out["bias_ih" + suffix] = cell.ih.bias()
            out["bias_hh" + suffix] = cell.hh.bias()
        return out

    @classmethod
    def _qconfig_of(cls, mod: nn.Module) -> tuple[Any, Any]:
        """(qconfig, weight dtype: qint8 or torch.float16) for converting ``mod``."""
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            from ....qconfig import default_dynamic_qconfig

            qconfig = default_dynamic_qconfig
        kind = low_precision_kind(qconfig)
        if kind == "float16":
            return qconfig, torch.float16
        if kind is not None:
            raise TypeError(
                f"dynamic {cls.__name__} takes int8 dynamic or float16 qconfigs; this qconfig keeps activations float "
                "with int8 weights (weight-only), which only Linear supports"
            )
        weight_dtype = getattr(qconfig.weight(), "dtype", qint8)
        if to_qdtype(weight_dtype) != qint8:
            raise TypeError(
                f"dynamic {cls.__name__} needs qint8 or float16 weights, the qconfig asks for {weight_dtype}"
            )
        return qconfig, qint8

    def _load_weights(self, mod: nn.Module, qconfig: Any) -> None:
        """Quantizes the float module's weights (a fresh weight observer per matrix, as torch), or
        rounds them to fp16."""
        fp16 = self.dtype == torch.float16
        for cell, suffix in zip(self._cells, self._param_names()):
            for lin, kind in ((cell.ih, "ih"), (cell.hh, "hh")):
                w = getattr(mod, f"weight_{kind}{suffix}")
                b = getattr(mod, f"bias_{kind}{suffix}", None) if getattr(mod, "bias", True) else None
                b = None if b is None else b.detach()
                lin.set_weight_bias(w.detach() if fp16 else quantize_weight(w, qconfig.weight()), b)
        if not fp16:
            self.reduce_range, self.per_row_activations = _activation_options(qconfig)


class RNNBase(_Recurrent):
    """Multi-layer recurrent network over a sequence: ``LSTM``, ``GRU`` or ``RNN`` (tanh / relu)."""

    _FLOAT_MODULE: Any = nn.RNNBase

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = qint8,
    ) -> None:
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {sorted(_GATES)}")
        if dtype != torch.float16 and to_qdtype(dtype) != qint8:
            raise NotImplementedError(f"dynamic {_NAMES[mode]} supports qint8 and torch.float16 weights, got {dtype}")
        if int(num_layers) < 1 or int(hidden_size) < 1 or int(input_size) < 1:
            raise ValueError(
                "input_size, hidden_size and num_layers must be positive, got "
                f"{input_size}, {hidden_size}, {num_layers}"
            )
        check_dropout(dropout)
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.dtype = torch.float16 if dtype == torch.float16 else qint8
        dirs = 2 if bidirectional else 1
        sizes = [
            (self.input_size if layer == 0 else self.hidden_size * dirs, d)
            for layer in range(self.num_layers)
            for d in range(dirs)
        ]
        self._init_projections(sizes, self.bias)

    def _get_name(self) -> str:
        return "DynamicQuantized" + _NAMES[self.mode]

    def _param_names(self) -> list[str]:
        dirs = 2 if self.bidirectional else 1
        return [f"_l{layer}" + ("_reverse" if d else "") for layer in range(self.num_layers) for d in range(dirs)]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + self._dtype_repr()

    def forward(self, input: Any, hx: Any = None) -> tuple[Any, Any]:
        who = self._label()
        is_lstm = self.mode == "LSTM"
        dirs = 2 if self.bidirectional else 1
        sorted_idx: Optional[torch.Tensor] = None
        unsorted_idx: Optional[torch.Tensor] = None
        unbatched = False
        if isinstance(input, PackedSequence):
            data = _float_input(input.data, who, "input")
            batch_sizes = [int(b) for b in input.batch_sizes]
            sorted_idx, unsorted_idx = input.sorted_indices, input.unsorted_indices
            x = data
        else:
            x3 = _float_input(input, who, "input")
            if x3.dim() not in (2, 3):
                raise ValueError(
                    f"{who} expects input of shape (L, N, {self.input_size})"
                    + (" (batch_first: (N, L, ...))" if self.batch_first else "")
                    + f" or unbatched (L, {self.input_size}), got {list(x3.shape)}"
                )
            unbatched = x3.dim() == 2
            if unbatched:
                x3 = x3.unsqueeze(1)
            elif self.batch_first:
                x3 = x3.transpose(0, 1).contiguous()
            steps, batch = x3.shape[0], x3.shape[1]
            if steps == 0:
                raise ValueError(f"{who}: expected a sequence length larger than 0, got input {list(input.shape)}")
            x = x3.reshape(steps * batch, x3.shape[2])
            batch_sizes = [batch] * steps
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{who}: input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        batch = batch_sizes[0]
        expected = (self.num_layers * dirs, batch, self.hidden_size)
        h0, c0 = self._initial_state(hx, expected, unbatched, is_lstm, who)
        if batch == 0:  # an empty batch: empty outputs, as the float module
            empty = torch.zeros(len(batch_sizes), 0, dirs * self.hidden_size)
            out0 = empty.transpose(0, 1) if self.batch_first else empty
            return out0, ((h0.clone(), c0.clone()) if c0 is not None else h0.clone())
        if sorted_idx is not None:
            h0 = h0.index_select(1, sorted_idx)
            c0 = None if c0 is None else c0.index_select(1, sorted_idx)
        layer_in = x.numpy()
        h_n: list[torch.Tensor] = []
        c_n: list[torch.Tensor] = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                out, h, c = self._run(
                    k, layer_in, batch_sizes, h0[k].contiguous(), None if c0 is None else c0[k].contiguous(), d == 1
                )
                outs.append(out)
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            layer_in = outs[0] if dirs == 1 else np.concatenate(outs, axis=1)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_in = nn.functional.dropout(torch.from_numpy(layer_in), self.dropout, True).numpy()
        output = torch.from_numpy(np.ascontiguousarray(layer_in))
        hn = torch.stack(h_n)
        cn = torch.stack(c_n) if is_lstm else None
        if unsorted_idx is not None:
            hn = hn.index_select(1, unsorted_idx)
            cn = None if cn is None else cn.index_select(1, unsorted_idx)
        if isinstance(input, PackedSequence):
            result: Any = PackedSequence(output, input.batch_sizes, sorted_idx, unsorted_idx)
        else:
            result = output.reshape(len(batch_sizes), batch, -1)
            if unbatched:
                result = result.squeeze(1)
                hn = hn.squeeze(1)
                cn = None if cn is None else cn.squeeze(1)
            elif self.batch_first:
                result = result.transpose(0, 1)
        return result, ((hn, cn) if is_lstm else hn)

    def _initial_state(
        self, hx: Any, expected: tuple[int, int, int], unbatched: bool, is_lstm: bool, who: str
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if hx is None:
            zeros = torch.zeros(expected, dtype=torch.float32)
            return zeros, (zeros.clone() if is_lstm else None)
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{who} expects hx as a tuple (h_0, c_0), got {type(hx).__name__}")
            parts = [_float_input(t, who, name) for t, name in zip(hx, ("h_0", "c_0"))]
        else:
            parts = [_float_input(hx, who, "hx")]
        shaped = []
        for t, name in zip(parts, ("h_0", "c_0")):
            if unbatched:
                if t.dim() != 2:
                    raise ValueError(
                        f"{who}: for unbatched input {name} must be 2-D {list(expected[::2])}, got {list(t.shape)}"
                    )
                t = t.unsqueeze(1)
            if tuple(t.shape) != expected:
                raise ValueError(f"{who}: expected {name} of shape {list(expected)}, got {list(t.shape)}")
            shaped.append(t)
        return shaped[0], (shaped[1] if is_lstm else None)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> RNNBase:
        """Builds the dynamic module from the float ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (with a ``qconfig``)."""
        float_type = cls._FLOAT_MODULE
        if not isinstance(mod, float_type):
            raise TypeError(
                f"dynamic {cls.__name__}.from_float expects an {float_type.__name__}, got {type(mod).__name__}"
            )
        if getattr(mod, "proj_size", 0):
            raise NotImplementedError(
                f"dynamic {cls.__name__} with proj_size={mod.proj_size} is not available (torch.ao's is neither); "
                "keep this module in float"
            )
        qconfig, dtype = cls._qconfig_of(mod)
        q = cls._new_like(mod, dtype)
        q._load_weights(mod, qconfig)
        q.train(mod.training)  # quantize_dynamic's eval(): no dropout between layers
        return q

    @classmethod
    def _new_like(cls, mod: nn.Module, dtype: Any) -> RNNBase:  # pragma: no cover - abstract
        raise NotImplementedError


def _rnn_kwargs(mod: nn.Module, dtype: Any) -> dict[str, Any]:
    return dict(
        dtype=dtype,
        input_size=mod.input_size,
        hidden_size=mod.hidden_size,
        num_layers=mod.num_layers,
        bias=mod.bias,
        batch_first=mod.batch_first,
        dropout=float(mod.dropout),
        bidirectional=mod.bidirectional,
    )


class LSTM(RNNBase):
    """``ferroquant.nn.quantized.dynamic.LSTM`` (torch: ``nn.quantized.dynamic.LSTM``)."""

    _FLOAT_MODULE = nn.LSTM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("LSTM", *args, **kwargs)

    @classmethod
    def _new_like(cls, mod: nn.Module, dtype: Any) -> LSTM:
        return cls(**_rnn_kwargs(mod, dtype))

    def forward(  # type: ignore[override]
        self, input: Any, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
        return super().forward(input, hx)


class GRU(RNNBase):
    """``ferroquant.nn.quantized.dynamic.GRU`` (torch: ``nn.quantized.dynamic.GRU``)."""

    _FLOAT_MODULE = nn.GRU

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("GRU", *args, **kwargs)

    @classmethod
    def _new_like(cls, mod: nn.Module, dtype: Any) -> GRU:
        return cls(**_rnn_kwargs(mod, dtype))


class RNN(RNNBase):
    """(+) ``ferroquant.nn.quantized.dynamic.RNN``: the Elman network (``nonlinearity`` ``'tanh'`` or
    ``'relu'``); torch.ao has no dynamic ``nn.RNN``."""

    _FLOAT_MODULE = nn.RNN

    def __init__(self, *args: Any, nonlinearity: str = "tanh", **kwargs: Any) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)
        self.nonlinearity = nonlinearity

    @classmethod
    def _new_like(cls, mod: nn.Module, dtype: Any) -> RNN:
        return cls(**_rnn_kwargs(mod, dtype), nonlinearity=mod.nonlinearity)


class RNNCellBase(_Recurrent):
    """One step of a recurrent cell: ``LSTMCell``, ``GRUCell`` or ``RNNCell``."""

    _FLOAT_MODULE: Any = nn.RNNCellBase

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = qint8) -> None:
        super().__init__()
        if dtype != torch.float16 and to_qdtype(dtype) != qint8:
            raise NotImplementedError(
                f"dynamic {_NAMES[mode]}Cell supports qint8 and torch.float16 weights, got {dtype}"
            )
        if int(hidden_size) < 1 or int(input_size) < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        self.dtype = torch.float16 if dtype == torch.float16 else qint8
        self._init_projections([(self.input_size, 0)], self.bias)

    def _get_name(self) -> str:
        return "DynamicQuantized" + _NAMES[self.mode] + "Cell"

    def _param_names(self) -> list[str]:
        return [""]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s + self._dtype_repr()

    def _step(self, input: Any, hx: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        who = self._label()
        x = _float_input(input, who, "input")
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{who} expects input of shape (N, {self.input_size}) or ({self.input_size},), got {list(x.shape)}"
            )
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
        batch = x.shape[0]
        is_lstm = self.mode == "LSTM"
        states: list[torch.Tensor] = []
        if hx is None:
            states = [torch.zeros(batch, self.hidden_size, dtype=torch.float32)] * (2 if is_lstm else 1)
        else:
            given = list(hx) if is_lstm else [hx]
            if is_lstm and len(given) != 2:
                raise TypeError(f"{who} expects hx as a tuple (h_0, c_0)")
            for t, name in zip(given, ("h_0", "c_0")):
                t = _float_input(t, who, name)
                if unbatched and t.dim() == 1:
                    t = t.unsqueeze(0)
                if tuple(t.shape) != (batch, self.hidden_size):
                    want = [self.hidden_size] if unbatched else [batch, self.hidden_size]
                    raise ValueError(f"{who}: expected {name} of shape {want}, got {list(t.shape)}")
                states.append(t)
        if batch == 0:  # an empty batch: empty state, as the float cell
            return torch.zeros(0, self.hidden_size), (torch.zeros(0, self.hidden_size) if is_lstm else None)
        _, h, c = self._run(0, x.numpy(), [batch], states[0], states[1] if is_lstm else None, False)
        if unbatched:
            h = h.squeeze(0)
            c = None if c is None else c.squeeze(0)
        return h, c

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> RNNCellBase:
        """Builds the dynamic cell from the float cell (with a ``qconfig``)."""
        float_type = cls._FLOAT_MODULE
        if not isinstance(mod, float_type):
            raise TypeError(
                f"dynamic {cls.__name__}.from_float expects an {float_type.__name__}, got {type(mod).__name__}"
            )
        qconfig, dtype = cls._qconfig_of(mod)
        kwargs: dict[str, Any] = dict(
            input_size=mod.input_size, hidden_size=mod.hidden_size, bias=mod.bias, dtype=dtype
        )
        if isinstance(mod, nn.RNNCell):
            kwargs["nonlinearity"] = mod.nonlinearity
        q = cls(**kwargs)
        q._load_weights(mod, qconfig)
        q.train(mod.training)
        return q


class LSTMCell(RNNCellBase):
    """``ferroquant.nn.quantized.dynamic.LSTMCell`` (torch: ``nn.quantized.dynamic.LSTMCell``)."""

    _FLOAT_MODULE = nn.LSTMCell

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("LSTM", *args, **kwargs)

    def forward(
        self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self._step(input, hx)
        assert c is not None
        return h, c


class GRUCell(RNNCellBase):
    """``ferroquant.nn.quantized.dynamic.GRUCell`` (torch: ``nn.quantized.dynamic.GRUCell``)."""

    _FLOAT_MODULE = nn.GRUCell

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._step(input, hx)[0]


class RNNCell(RNNCellBase):
    """``ferroquant.nn.quantized.dynamic.RNNCell`` (torch: ``nn.quantized.dynamic.RNNCell``)."""

    _FLOAT_MODULE = nn.RNNCell

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", dtype: Any = qint8
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, bias, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._step(input, hx)[0]
