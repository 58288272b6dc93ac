"""Static (activations quantized) LSTM and MultiheadAttention through the custom-module API:
ferroquant's quantizable / quantized modules against torch.ao's, same weights, qconfig and
calibration."""

from __future__ import annotations

import copy
import io
import warnings

import ferroquant as fq
import pytest
import torch
from _parity import convert_both
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
    def make(stubs):
        return Tagger(stubs, layers, bidirectional, batch_first)

    return convert_both(make, calib, hidden, fq_config=FQ_CONFIG, torch_config=TORCH_CONFIG)


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


MHA_FQ = {
    "float_to_observed_custom_module_class": {nn.MultiheadAttention: fq.nn.quantizable.MultiheadAttention},
    "observed_to_quantized_custom_module_class": {
        fq.nn.quantizable.MultiheadAttention: fq.nn.quantized.MultiheadAttention
    },
}
MHA_TORCH = {
    "float_to_observed_custom_module_class": {nn.MultiheadAttention: tnnqa.MultiheadAttention},
    "observed_to_quantized_custom_module_class": {tnnqa.MultiheadAttention: tnnq.MultiheadAttention},
}


class SelfAttention(nn.Module):
    def __init__(self, stubs: tuple[type, type], **options) -> None:
        super().__init__()
        self.quant = stubs[0]()
        self.mha = nn.MultiheadAttention(16, 4, **options)
        self.dequant = stubs[1]()
        self.dequant_w = stubs[1]()

    def forward(self, x: torch.Tensor, **kwargs):
        xq = self.quant(x)
        y, w = self.mha(xq, xq, xq, **kwargs)
        return self.dequant(y), (None if w is None else self.dequant_w(w))


def _both_mha(options: dict, calib: list[torch.Tensor]):
    return convert_both(lambda stubs: SelfAttention(stubs, **options), calib, fq_config=MHA_FQ, torch_config=MHA_TORCH)


@pytest.mark.parametrize(
    "options", [{}, {"add_zero_attn": True}, {"bias": False}], ids=["defaults", "zero_attn", "nobias"]
)
def test_quantized_attention_matches_torch_ao(options):
    calib = [torch.randn(6, 2, 16) for _ in range(3)]
    fp32, ours, theirs = _both_mha(options, calib)
    assert ours.mha._get_name() == "QuantizedMultiheadAttention"
    assert isinstance(ours.mha.linear_Q, fq.nn.quantized.Linear)
    x = torch.randn(6, 2, 16)
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kwargs in ({}, {"attn_mask": causal}, {"key_padding_mask": pad}, {"average_attn_weights": False}):
            (y, w), (yt, wt), (yr, _) = ours(x, **kwargs), theirs(x, **kwargs), fp32(x, **kwargs)
            step = float(ours.mha.out_proj.scale)
            assert (y - yt).abs().max() <= step + 1e-6 and float(((y - yt).abs() > 1e-6).float().mean()) <= 0.01
            assert (w - wt).abs().max() <= float(ours.mha.quant_attn_output_weights.scale) + 1e-6
            assert (y - yr).abs().mean() <= (yt - yr).abs().mean() * 1.05 + 1e-6


def test_quantized_attention_batch_first_and_bias_kv_follow_float():
    """batch_first: torch.ao's quantizable module mixes the heads; ferroquant's follows nn.MultiheadAttention."""
    for options in ({"batch_first": True}, {"add_bias_kv": True}):
        shape = (2, 6, 16) if options.get("batch_first") else (6, 2, 16)
        fp32, ours, _ = _both_mha(options, [torch.randn(shape) for _ in range(3)])
        x = torch.randn(shape)
        with torch.no_grad():
            (y, w), (yr, wr) = ours(x), fp32(x)
            cos = torch.nn.functional.cosine_similarity(y.reshape(-1), yr.reshape(-1), dim=0)
            assert y.shape == yr.shape and w.shape == wr.shape and cos > 0.99, (options, float(cos))
            assert ours(x, need_weights=False)[1] is None
    with pytest.raises(NotImplementedError, match="observed"):
        fq.nn.quantized.MultiheadAttention.from_float(nn.MultiheadAttention(16, 4))
    q = fq.quantize_per_tensor(torch.arange(6.0).reshape(2, 3), 0.5, 3, fq.quint8)
    assert torch.equal(torch.flip(q, dims=[1]).int_repr(), q.int_repr().flip(1))
    assert torch.equal(q.flip(0).int_repr(), q.int_repr().flip(0))
    with pytest.raises(ValueError, match="causal mask as attn_mask"):
        ours.mha(x, x, x, is_causal=True)
