"""Static (activations quantized) LSTM through the custom-module API: ferroquant's quantizable /
quantized LSTM against torch.ao's, same weights, qconfig and calibration."""

from __future__ import annotations

import copy
import io
import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.quantizable as tnnqa
    import torch.ao.nn.quantized as tnnq

FQ_CONFIG = {
    "float_to_observed_custom_module_class": {nn.LSTM: fq.nn.quantizable.LSTM},
    "observed_to_quantized_custom_module_class": {fq.nn.quantizable.LSTM: fq.nn.quantized.LSTM},
}
TORCH_CONFIG = {
    "float_to_observed_custom_module_class": {nn.LSTM: tnnqa.LSTM},
    "observed_to_quantized_custom_module_class": {tnnqa.LSTM: tnnq.LSTM},
}


class Tagger(nn.Module):
    def __init__(self, stubs: tuple[type, type], layers: int, bidirectional: bool, batch_first: bool) -> None:
        super().__init__()
        self.quant = stubs[0]()
        self.lstm = nn.LSTM(8, 12, layers, bidirectional=bidirectional, batch_first=batch_first)
        self.dequant = stubs[1]()

    def forward(self, x: torch.Tensor, hidden=None):
        if hidden is not None:
            hidden = tuple(self.quant(h) for h in hidden)
        y, (h, c) = self.lstm(self.quant(x), hidden)
        return self.dequant(y), self.dequant(h), self.dequant(c)


def _both(layers: int, bidirectional: bool, batch_first: bool, calib: list[torch.Tensor], hidden=None):
    torch.manual_seed(0)
    ours = Tagger((fq.QuantStub, fq.DeQuantStub), layers, bidirectional, batch_first).eval()
    theirs = Tagger((tq.QuantStub, tq.DeQuantStub), layers, bidirectional, batch_first).eval()
    theirs.load_state_dict(ours.state_dict())
    ours.qconfig = fq.get_default_qconfig("x86")
    theirs.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_ours = fq.prepare(ours, prepare_custom_config_dict=FQ_CONFIG)
        p_theirs = tq.prepare(theirs, prepare_custom_config_dict=TORCH_CONFIG)
        with torch.no_grad():
            for x in calib:
                p_ours(x, hidden)
                p_theirs(x, hidden)
        q_ours = fq.convert(p_ours, convert_custom_config_dict=FQ_CONFIG)
        q_theirs = tq.convert(p_theirs, convert_custom_config_dict=TORCH_CONFIG)
    return ours, q_ours, q_theirs


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_quantized_lstm_matches_torch_ao(layers, bidirectional, batch_first):
    shape = (3, 5, 8) if batch_first else (5, 3, 8)
    calib = [torch.randn(shape) for _ in range(3)]
    fp32, ours, theirs = _both(layers, bidirectional, batch_first, calib)
    assert isinstance(ours.lstm, fq.nn.quantized.LSTM) and ours.lstm._get_name() == "QuantizedLSTM"
    assert isinstance(ours.lstm.layers[0].layer_fw.cell.igates, fq.nn.quantized.Linear)
    x = torch.randn(shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want, ref = ours(x), theirs(x), fp32(x)
    step = max(float(m.scale) for m in ours.modules() if isinstance(m, fq.nn.quantized.QFunctional))
    for g, w, r in zip(got, want, ref):
        assert g.shape == w.shape
        diff = (g - w).abs()
        # the same integer ops in the same order: equal, up to a rare 1-LSB rounding step
        assert float((diff > 1e-6).float().mean()) <= 0.01 and float(diff.max()) <= step + 1e-6
        assert (g - r).abs().mean() <= (w - r).abs().mean() * 1.05 + 1e-6


def test_initial_state_split_gates_state_dict_and_errors():
    calib = [torch.randn(4, 2, 8) for _ in range(2)]
    h0, c0 = torch.randn(1, 2, 12) * 0.5, torch.randn(1, 2, 12) * 0.5
    fp32, ours, theirs = _both(1, False, False, calib, hidden=(h0, c0))
    x = torch.randn(4, 2, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want = ours(x, (h0, c0)), theirs(x, (h0, c0))
        for g, w in zip(got, want):
            assert (g - w).abs().max() <= 0.05
        # state_dict round trip into a model converted the same way
        buf = io.BytesIO()
        torch.save(ours.state_dict(), buf)
        _, again, _ = _both(1, False, False, [torch.randn(4, 2, 8)], hidden=(h0, c0))
        again.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        assert all(torch.equal(a, b) for a, b in zip(again(x, (h0, c0)), got))
        assert all(torch.equal(a, b) for a, b in zip(copy.deepcopy(ours)(x, (h0, c0)), got))
    # split gates: four Linear layers per projection, same float function
    torch.manual_seed(3)
    lstm = nn.LSTM(8, 12).eval()
    lstm.qconfig = fq.get_default_qconfig("x86")
    split = fq.nn.quantizable.LSTM.from_float(lstm, split_gates=True)
    assert isinstance(split.layers[0].layer_fw.cell.igates, nn.ModuleDict)
    with torch.no_grad():
        assert torch.allclose(split(x)[0], lstm(x)[0], atol=1e-5)
    with pytest.raises(NotImplementedError, match="observed"):
        fq.nn.quantized.LSTM.from_float(lstm)
    with pytest.raises(TypeError, match="quantizable LSTM"):
        fq.nn.quantized.LSTM.from_observed(lstm)
    with pytest.raises(ValueError, match="qconfig"):
        fq.nn.quantizable.LSTM.from_float(nn.LSTM(8, 12))
