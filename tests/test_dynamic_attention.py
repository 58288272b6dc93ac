"""Dynamic quantized MultiheadAttention (beyond torch.ao) and torch's Transformer modules after
quantize_dynamic, fast path and all."""

from __future__ import annotations

import copy
import io
import pickle

import ferroquant as fq
import pytest
import torch
from conftest import engines
from torch import nn

nnqd = fq.nn.quantized.dynamic


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.detach().reshape(-1), b.detach().reshape(-1), dim=0))


def _quantized_mha(mha: nn.MultiheadAttention, qconfig=fq.default_dynamic_qconfig) -> nn.Module:
    return fq.quantize_dynamic(nn.Sequential(mha), {nn.MultiheadAttention: qconfig})[0]


OPTIONS = [
    {},
    {"batch_first": True},
    {"kdim": 12, "vdim": 20},
    {"add_bias_kv": True, "add_zero_attn": True},
    {"bias": False, "batch_first": True},
]


@pytest.mark.parametrize("qconfig", [fq.default_dynamic_qconfig, fq.per_channel_dynamic_qconfig], ids=["pt", "pc"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_attention_matches_float_with_masks_and_weights(options, qconfig):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, **options).eval()
    q = _quantized_mha(mha, qconfig)
    assert isinstance(q, nnqd.MultiheadAttention) and repr(q).startswith("DynamicQuantizedMultiheadAttention(")
    L, S, N = 7, 9, 3
    bf = options.get("batch_first", False)

    def seq(t: int, d: int) -> torch.Tensor:
        return torch.randn((N, t, d) if bf else (t, N, d))

    x, k, v = seq(L, 32), seq(S, options.get("kdim", 32)), seq(S, options.get("vdim", 32))
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[1, 5:] = True
    calls = [
        ((x, k, v), {}),
        ((x, k, v), {"key_padding_mask": kpm, "attn_mask": torch.triu(torch.ones(L, S, dtype=torch.bool), 1)}),
        ((x, k, v), {"key_padding_mask": kpm.float() * -1e4, "need_weights": False}),
        ((x, k, v), {"average_attn_weights": False}),
        ((x[0] if bf else x[:, 0], k[0] if bf else k[:, 0], v[0] if bf else v[:, 0]), {}),  # unbatched
    ]
    if "kdim" not in options:
        causal = nn.Transformer.generate_square_subsequent_mask(L)
        calls += [((x, x, x), {}), ((x, x, x), {"need_weights": False, "attn_mask": causal, "is_causal": True})]
        calls += [((x, k, k), {"attn_mask": torch.zeros(N * 4, L, S)})]  # key is value: the k/v slice path
    with torch.no_grad():
        for args, kwargs in calls:
            want, want_w = mha(*args, **kwargs)
            got, got_w = q(*args, **kwargs)
            assert got.shape == want.shape and _cos(got, want) > 0.999, kwargs
            if want_w is None:
                assert got_w is None
            else:
                assert got_w.shape == want_w.shape and (got_w - want_w).abs().max() < 0.02


def test_self_attention_is_one_projection_and_slices_agree():
    """q, k, v from one GEMM (self-attention) equal the row-slice GEMMs (cross-attention path)."""
    torch.manual_seed(1)
    q = _quantized_mha(nn.MultiheadAttention(16, 2).eval())
    x = torch.randn(5, 2, 16)
    y = x.clone()  # equal values, not the same object: projected by slices
    with torch.no_grad():
        a, wa = q(x, x, x)
        b, wb = q(x, y, y)
        c, wc = q(x, y, y.clone())
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(wa, wb) and torch.equal(wa, wc)
    assert isinstance(q.in_proj_weight(), fq.QTensor) and q.in_proj_weight().shape == (48, 16)
    assert q.in_proj_bias.shape == (48,)


@pytest.mark.parametrize("engine", engines())
def test_every_engine_and_thread_count_gives_identical_output(engine):
    torch.manual_seed(2)
    q = _quantized_mha(nn.MultiheadAttention(64, 4, batch_first=True).eval())
    x = torch.randn(2, 9, 64)
    fq.backends.engine = "scalar"
    fq.set_num_threads(1)
    with torch.no_grad():
        base = q(x, x, x)
        fq.backends.engine = engine
        for threads in (1, 2):
            fq.set_num_threads(threads)
            got = q(x, x, x)
            assert torch.equal(got[0], base[0]) and torch.equal(got[1], base[1]), (engine, threads)


def _encoder(d: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, 2 * d, batch_first=True)
    return nn.TransformerEncoder(layer, layers).eval()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # torch's float model, padding mask
@pytest.mark.parametrize(
    "spec,dtype",
    [
        ({nn.Linear}, torch.qint8),
        ({nn.Linear, nn.MultiheadAttention}, torch.qint8),
        ({nn.Linear}, torch.float16),
        ({nn.Linear: fq.int8_weight_only_qconfig}, torch.qint8),
    ],
    ids=["linear", "linear+mha", "fp16", "weight-only"],
)
def test_transformer_encoder_runs_with_torchs_defaults(spec, dtype):
    """torch's fused fast path (on by default) steps aside for quantized submodules: no user setting."""
    torch.manual_seed(3)
    model = _encoder(64, 4, 2)
    q = fq.quantize_dynamic(model, spec, dtype=dtype)
    assert type(q.layers[0].linear1) is not nn.Linear
    assert isinstance(q.layers[0].self_attn, nnqd.MultiheadAttention) == (nn.MultiheadAttention in spec)
    assert torch.backends.mha.get_fastpath_enabled()
    x = torch.randn(2, 10, 64)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert _cos(q(x), model(x)) > 0.999
            # with a padding mask (torch's float fast path zeroes padded rows: compare the others)
            got, want = q(x, src_key_padding_mask=pad), model(x, src_key_padding_mask=pad)
            assert _cos(got[~pad], want[~pad]) > 0.999


def test_transformer_encoder_d512_6_layers_cosine():
    torch.manual_seed(4)
    model = _encoder(512, 8, 6)
    q = fq.quantize_dynamic(model, {nn.Linear, nn.MultiheadAttention})
    x = torch.randn(1, 32, 512)
    with torch.no_grad():
        assert _cos(q(x), model(x)) >= 0.999


def test_decoder_and_full_transformer_quantize():
    torch.manual_seed(5)
    model = nn.Transformer(32, 4, 2, 2, dim_feedforward=64, batch_first=True).eval()
    q = fq.quantize_dynamic(model, {nn.Linear, nn.MultiheadAttention})
    dec = q.decoder.layers[0]
    assert isinstance(dec.self_attn, nnqd.MultiheadAttention) and isinstance(
        dec.multihead_attn, nnqd.MultiheadAttention
    )
    src, tgt = torch.randn(2, 10, 32), torch.randn(2, 6, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        assert _cos(q(src, tgt, tgt_mask=mask, tgt_is_causal=True), model(src, tgt, tgt_mask=mask)) > 0.999


def test_default_spec_keeps_attention_float():
    model = _encoder(32, 4, 1)
    q = fq.quantize_dynamic(model)
    assert type(q.layers[0].self_attn) is nn.MultiheadAttention
    assert isinstance(q.layers[0].linear2, nnqd.Linear)


def test_state_dict_round_trip_pickle_and_errors():
    torch.manual_seed(6)
    mha = nn.MultiheadAttention(24, 3, add_bias_kv=True, kdim=10, vdim=10).eval()
    q = _quantized_mha(mha, fq.per_channel_dynamic_qconfig)
    x, kv = torch.randn(4, 2, 24), torch.randn(6, 2, 10)
    with torch.no_grad():
        want = q(x, kv, kv)
        buf = io.BytesIO()
        torch.save(q.state_dict(), buf)
        fresh = nnqd.MultiheadAttention(24, 3, add_bias_kv=True, kdim=10, vdim=10)
        fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        for other in (fresh, pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
            got = other(x, kv, kv)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        # all or nothing: a bad out_proj leaves the projections and bias_k / bias_v as they were
        bad = _quantized_mha(nn.MultiheadAttention(24, 3, add_bias_kv=True, kdim=10, vdim=10)).state_dict()
        bad["out_proj.weight_scale"] = torch.tensor([-1.0])
        with pytest.raises(RuntimeError, match="none of its parts was loaded(.|\n)*out_proj"):
            fresh.load_state_dict(bad)
        got = fresh(x, kv, kv)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        with pytest.raises(TypeError, match="QTensor"):
            q(fq.quantize_per_tensor(x, 0.1, 128, fq.quint8), kv, kv)
        with pytest.raises(ValueError, match="embedding dimension of 24"):
            q(torch.randn(4, 2, 25), kv, kv)
        with pytest.raises(RuntimeError, match="2D attn_mask"):
            q(x, kv, kv, attn_mask=torch.zeros(3, 3))
        with pytest.raises(RuntimeError, match="is_causal"):
            q(x, kv, kv, is_causal=True)
        with pytest.raises(TypeError, match="bool and floating"):
            q(x, kv, kv, key_padding_mask=torch.zeros(2, 6, dtype=torch.int64))
        assert torch.equal(q(x, kv, kv)[0], want[0]), "errors leave the module usable"
        # the module's own buffers belong to the all-or-nothing load too
        bad = q.state_dict()
        bad["bias_k"] = torch.zeros(1, 1, 25)
        with pytest.raises(RuntimeError, match="bias_k"):
            fresh.load_state_dict(bad)
        assert torch.equal(fresh(x, kv, kv)[0], want[0])
    with pytest.raises(TypeError, match="int8 dynamic qconfigs only"):
        fq.quantize_dynamic(nn.Sequential(nn.MultiheadAttention(8, 2)), {nn.MultiheadAttention}, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="TorchScript"):
        torch.jit.script(nn.Sequential(q))
