"""Quantizable LSTM (torch: ``torch.ao.nn.quantizable.LSTM`` / ``LSTMCell``): an LSTM decomposed
into observable parts — ``nn.Linear`` gate projections, ``FloatFunctional`` adds and multiplies,
``nn.Sigmoid`` / ``nn.Tanh`` gates — so that eager static quantization observes and converts
each of them. Used through the custom-module configs, as in torch::

    config = {
        "float_to_observed_custom_module_class": {nn.LSTM: fq.nn.quantizable.LSTM},
        "observed_to_quantized_custom_module_class": {fq.nn.quantizable.LSTM: fq.nn.quantized.LSTM},
    }
    prepared = fq.prepare(model, prepare_custom_config_dict=config)
    ...calibrate...
    quantized = fq.convert(prepared, convert_custom_config_dict=config)

The quantized LSTM (``fq.nn.quantized.LSTM``) takes and returns quantized tensors; its gates run
on ferroquant's quantized Linear, add / mul and the fixed-qparams sigmoid / tanh tables, in
torch's order, so it matches torch.ao's quantized LSTM.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from ..._dtypes import quint8
from ...qtensor import QTensor, quantize_per_tensor
from ..quantized.dynamic.rnn import check_dropout
from ..quantized.functional_modules import FloatFunctional

__all__ = ["LSTMCell", "LSTM"]

Hidden = tuple[Any, Any]


def _aligned(ts: list[Any]) -> list[Any]:
    """QTensors requantized to the first one's qparams where they differ (what torch's quantized
    ``cat`` / ``stack`` do); float tensors as they are."""
    first = ts[0]
    if not isinstance(first, QTensor):
        return ts
    out = [first]
    for t in ts[1:]:
        if not first.same_qparams(t):
            t = quantize_per_tensor(t.dequantize(), first.q_scale(), first.q_zero_point(), first.dtype)
        out.append(t)
    return out


def _cat(ts: list[Any], dim: int) -> Any:
    return torch.cat(_aligned(ts), dim)


def _stack(ts: list[Any], dim: int = 0) -> Any:
    return torch.stack(_aligned(ts), dim)


class LSTMCell(nn.Module):
    """A quantizable LSTM cell (``torch.ao.nn.quantizable.LSTMCell``)."""

    _FLOAT_MODULE = nn.LSTMCell
    __constants__ = ["split_gates"]

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        split_gates: bool = False,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.input_size = input_dim
        self.hidden_size = hidden_dim
        self.bias = bias
        self.split_gates = split_gates
        self.igates: nn.Module
        self.hgates: nn.Module
        self.gates: nn.Module
        if not split_gates:
            self.igates = nn.Linear(input_dim, 4 * hidden_dim, bias=bias, **factory)
            self.hgates = nn.Linear(hidden_dim, 4 * hidden_dim, bias=bias, **factory)
            self.gates = FloatFunctional()
        else:
            self.igates = nn.ModuleDict()
            self.hgates = nn.ModuleDict()
            self.gates = nn.ModuleDict()
            for g in ("input", "forget", "cell", "output"):
                self.igates[g] = nn.Linear(input_dim, hidden_dim, bias=bias, **factory)
                self.hgates[g] = nn.Linear(hidden_dim, hidden_dim, bias=bias, **factory)
                self.gates[g] = FloatFunctional()
        self.input_gate = nn.Sigmoid()
        self.forget_gate = nn.Sigmoid()
        self.cell_gate = nn.Tanh()
        self.output_gate = nn.Sigmoid()
        self.fgate_cx = FloatFunctional()
        self.igate_cgate = FloatFunctional()
        self.fgate_cx_igate_cgate = FloatFunctional()
        self.ogate_cy = FloatFunctional()
        self.initial_hidden_state_qparams: tuple[float, int] = (1.0, 0)
        self.initial_cell_state_qparams: tuple[float, int] = (1.0, 0)
        self.hidden_state_dtype: Any = quint8
        self.cell_state_dtype: Any = quint8

    def forward(self, x: Any, hidden: Optional[Hidden] = None) -> Hidden:
        if hidden is None or hidden[0] is None or hidden[1] is None:
            hidden = self.initialize_hidden(x.shape[0], isinstance(x, QTensor))
        hx, cx = hidden
        if not self.split_gates:
            gates = self.gates.add(self.igates(x), self.hgates(hx))
            input_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
            input_gate = self.input_gate(input_gate)
            forget_gate = self.forget_gate(forget_gate)
            cell_gate = self.cell_gate(cell_gate)
            out_gate = self.output_gate(out_gate)
        else:
            gate = {
                key: add.add(ig(x), hg(hx))
                for (key, add), ig, hg in zip(self.gates.items(), self.igates.values(), self.hgates.values())
            }
            input_gate = self.input_gate(gate["input"])
            forget_gate = self.forget_gate(gate["forget"])
            cell_gate = self.cell_gate(gate["cell"])
            out_gate = self.output_gate(gate["output"])
        fgate_cx = self.fgate_cx.mul(forget_gate, cx)
        igate_cgate = self.igate_cgate.mul(input_gate, cell_gate)
        cy = self.fgate_cx_igate_cgate.add(fgate_cx, igate_cgate)
        hy = self.ogate_cy.mul(out_gate, torch.tanh(cy))
        return hy, cy

    def initialize_hidden(self, batch_size: int, is_quantized: bool = False) -> Hidden:
        h, c = torch.zeros(batch_size, self.hidden_size), torch.zeros(batch_size, self.hidden_size)
        if is_quantized:
            (h_scale, h_zp), (c_scale, c_zp) = self.initial_hidden_state_qparams, self.initial_cell_state_qparams
            h = quantize_per_tensor(h, h_scale, h_zp, self.hidden_state_dtype)
            c = quantize_per_tensor(c, c_scale, c_zp, self.cell_state_dtype)
        return h, c

    def _get_name(self) -> str:
        return "QuantizableLSTMCell"

    @classmethod
    def from_params(
        cls,
        wi: torch.Tensor,
        wh: torch.Tensor,
        bi: Optional[torch.Tensor] = None,
        bh: Optional[torch.Tensor] = None,
        split_gates: bool = False,
    ) -> LSTMCell:
        """A cell with these weights (``[4·H, I]``, ``[4·H, H]``) and biases."""
        if (bi is None) != (bh is None):
            raise ValueError("bi and bh must both be None or both be tensors")
        cell = cls(wi.shape[1], wh.shape[1], bias=bi is not None, split_gates=split_gates)
        with torch.no_grad():
            if not split_gates:
                cell.igates.weight = nn.Parameter(wi.detach().clone())
                cell.hgates.weight = nn.Parameter(wh.detach().clone())
                if bi is not None:
                    cell.igates.bias = nn.Parameter(bi.detach().clone())
                    cell.hgates.bias = nn.Parameter(bh.detach().clone())  # type: ignore[union-attr]
            else:
                for w, b, gates in ((wi, bi, cell.igates), (wh, bh, cell.hgates)):
                    for i, gate in enumerate(gates.values()):
                        gate.weight = nn.Parameter(w.detach().chunk(4, 0)[i].clone())
                        if b is not None:
                            gate.bias = nn.Parameter(b.detach().chunk(4, 0)[i].clone())
        return cell

    @classmethod
    def from_float(
        cls, other: nn.Module, use_precomputed_fake_quant: bool = False, split_gates: bool = False
    ) -> LSTMCell:
        if type(other) is not cls._FLOAT_MODULE:
            raise TypeError(f"quantizable LSTMCell.from_float expects an nn.LSTMCell, got {type(other).__name__}")
        if getattr(other, "qconfig", None) is None:
            raise ValueError("the float LSTMCell must have a qconfig")
        observed = cls.from_params(other.weight_ih, other.weight_hh, other.bias_ih, other.bias_hh, split_gates)
        observed.qconfig = other.qconfig
        for part in (observed.igates, observed.hgates):
            part.qconfig = other.qconfig
            if split_gates:
                for g in part.values():
                    g.qconfig = other.qconfig
        return observed


class _LSTMSingleLayer(nn.Module):
    """One direction of one layer: the cell over the sequence."""

    def __init__(self, input_dim: int, hidden_dim: int, bias: bool = True, *, split_gates: bool = False) -> None:
        super().__init__()
        self.cell = LSTMCell(input_dim, hidden_dim, bias=bias, split_gates=split_gates)

    def forward(self, x: Any, hidden: Optional[Hidden] = None) -> tuple[Any, Hidden]:
        result = []
        for i in range(x.shape[0]):
            hidden = self.cell(x[i], hidden)
            result.append(hidden[0])
        return _stack(result, 0), hidden  # type: ignore[return-value]

    @classmethod
    def from_params(cls, *args: Any, **kwargs: Any) -> _LSTMSingleLayer:
        cell = LSTMCell.from_params(*args, **kwargs)
        layer = cls(cell.input_size, cell.hidden_size, cell.bias, split_gates=cell.split_gates)
        layer.cell = cell
        return layer


class _LSTMLayer(nn.Module):
    """One layer, one or two directions."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        *,
        split_gates: bool = False,
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.bidirectional = bidirectional
        self.layer_fw = _LSTMSingleLayer(input_dim, hidden_dim, bias=bias, split_gates=split_gates)
        if bidirectional:
            self.layer_bw = _LSTMSingleLayer(input_dim, hidden_dim, bias=bias, split_gates=split_gates)

    def forward(self, x: Any, hidden: Optional[Hidden] = None) -> tuple[Any, Hidden]:
        if self.batch_first:
            x = x.transpose(0, 1)
        hx_fw, cx_fw = (None, None) if hidden is None else hidden
        hidden_bw: Optional[Hidden] = None
        if self.bidirectional:
            hx_bw = None if hx_fw is None else hx_fw[1]
            hx_fw = None if hx_fw is None else hx_fw[0]
            cx_bw = None if cx_fw is None else cx_fw[1]
            cx_fw = None if cx_fw is None else cx_fw[0]
            if hx_bw is not None and cx_bw is not None:
                hidden_bw = (hx_bw, cx_bw)
        hidden_fw = None if hx_fw is None and cx_fw is None else (hx_fw, cx_fw)
        result_fw, hidden_fw = self.layer_fw(x, hidden_fw)
        if self.bidirectional:
            result_bw, hidden_bw = self.layer_bw(x.flip(0), hidden_bw)
            result = _cat([result_fw, result_bw.flip(0)], result_fw.dim() - 1)
            h = _stack([hidden_fw[0], hidden_bw[0]], 0)
            c = _stack([hidden_fw[1], hidden_bw[1]], 0)
        else:
            result = result_fw
            h, c = hidden_fw
        if self.batch_first:
            result = result.transpose(0, 1)
        return result, (h, c)

    @classmethod
    def from_float(cls, other: nn.Module, layer_idx: int = 0, qconfig: Any = None, **kwargs: Any) -> _LSTMLayer:
        """Layer ``layer_idx`` of a float ``nn.LSTM`` (mirrors torch.ao's ``prepare`` step)."""
        split_gates = kwargs.get("split_gates", False)
        layer = cls(
            kwargs.get("input_size", other.input_size),
            kwargs.get("hidden_size", other.hidden_size),
            kwargs.get("bias", other.bias),
            kwargs.get("batch_first", other.batch_first),
            kwargs.get("bidirectional", other.bidirectional),
            split_gates=split_gates,
        )
        layer.qconfig = getattr(other, "qconfig", qconfig)
        for suffix, name in (("", "layer_fw"), ("_reverse", "layer_bw")):
            if suffix and not other.bidirectional:
                continue
            params = [
                getattr(other, f"{p}_l{layer_idx}{suffix}", None)
                for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            setattr(layer, name, _LSTMSingleLayer.from_params(*params, split_gates=split_gates))
        return layer


class LSTM(nn.Module):
    """A quantizable LSTM (``torch.ao.nn.quantizable.LSTM``): ``nn.LSTM``'s constructor and forward,
    built from :class:`LSTMCell` layers (``self.layers``)."""

    _FLOAT_MODULE = nn.LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        split_gates: bool = False,
    ) -> None:
        super().__init__()
        check_dropout(dropout)
        if dropout > 0:
            warnings.warn(
                "dropout option for quantizable LSTM is ignored; to train with dropout use nn.LSTM followed by the "
                "prepare step",
                UserWarning,
                stacklevel=2,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.training = False
        sizes = [input_size] + [hidden_size * (2 if bidirectional else 1)] * (num_layers - 1)
        self.layers = nn.ModuleList(
            _LSTMLayer(i, hidden_size, bias, batch_first=False, bidirectional=bidirectional, split_gates=split_gates)
            for i in sizes
        )

    def forward(self, x: Any, hidden: Optional[Hidden] = None) -> tuple[Any, Hidden]:
        if self.batch_first:
            x = x.transpose(0, 1)
        batch = x.size(1)
        dirs = 2 if self.bidirectional else 1
        if hidden is None:
            zeros: Any = torch.zeros(dirs, batch, self.hidden_size)
            if dirs == 1:
                zeros = zeros.squeeze(0)
            if isinstance(x, QTensor):
                zeros = quantize_per_tensor(zeros, 1.0, 0, x.dtype)
            hxcx: list[Any] = [(zeros, zeros) for _ in range(self.num_layers)]
        else:
            hx = hidden[0].reshape(self.num_layers, dirs, batch, self.hidden_size)
            cx = hidden[1].reshape(self.num_layers, dirs, batch, self.hidden_size)
            hxcx = [(hx[i].squeeze(0), cx[i].squeeze(0)) for i in range(self.num_layers)]
        hs, cs = [], []
        for idx, layer in enumerate(self.layers):
            x, (h, c) = layer(x, hxcx[idx])
            hs.append(h)
            cs.append(c)
        h_n, c_n = _stack(hs), _stack(cs)
        h_n = h_n.reshape(-1, h_n.shape[-2], h_n.shape[-1])
        c_n = c_n.reshape(-1, c_n.shape[-2], c_n.shape[-1])
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (h_n, c_n)

    def _get_name(self) -> str:
        return "QuantizableLSTM"

    @classmethod
    def from_float(cls, other: nn.Module, qconfig: Any = None, split_gates: bool = False) -> LSTM:
        """The observed LSTM: ``other``'s weights in quantizable layers, observers attached
        (``prepare``, or ``prepare_qat`` when ``other`` is training)."""
        from ...quantize import prepare, prepare_qat

        if not isinstance(other, cls._FLOAT_MODULE):
            raise TypeError(f"quantizable LSTM.from_float expects an nn.LSTM, got {type(other).__name__}")
        qconfig = getattr(other, "qconfig", None) or qconfig
        if qconfig is None:
            raise ValueError("the float LSTM must have a qconfig (or pass qconfig=)")
        if getattr(other, "proj_size", 0):
            raise NotImplementedError("a quantizable LSTM with proj_size is not available (torch.ao's neither)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the dropout note was given by nn.LSTM already
            observed = cls(
                other.input_size,
                other.hidden_size,
                other.num_layers,
                other.bias,
                other.batch_first,
                other.dropout,
                other.bidirectional,
                split_gates=split_gates,
            )
        observed.qconfig = qconfig
        for idx in range(other.num_layers):
            observed.layers[idx] = _LSTMLayer.from_float(
                other, idx, qconfig, batch_first=False, split_gates=split_gates
            )
        if other.training:
            observed.train()
            return prepare_qat(observed, inplace=True)
        observed.eval()
        return prepare(observed, inplace=True)

    @classmethod
    def from_observed(cls, other: nn.Module) -> Any:
        raise NotImplementedError(
            "a quantizable LSTM is the observed form; convert it with ferroquant.nn.quantized.LSTM as the "
            "observed_to_quantized_custom_module_class"
        )
