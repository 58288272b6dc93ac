"""Weight-only quantized Embedding / EmbeddingBag (8-bit and 4-bit rows with float qparams),
against torch.ao's quantized versions and the dequantized-weight float math."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
from conftest import engines
from torch import nn

nnq = fq.nn.quantized


def _torch(model: nn.Module, types: set, dtype: torch.dtype) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.quantize_dynamic(model, types, dtype=dtype)


def _reference(q: nnq.EmbeddingBag, mode: str, padding_idx=None) -> nn.EmbeddingBag:
    """nn.EmbeddingBag on the dequantized weights: what the quantized bag must compute."""
    ref = nn.EmbeddingBag(q.num_embeddings, q.embedding_dim, mode=mode, padding_idx=padding_idx)
    ref.weight.data = q.weight().clone()
    return ref


def test_8bit_matches_torch_ao_bit_for_bit_in_storage():
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(50, 16, mode="sum"), nn.Embedding(30, 8)).eval()
    ours = fq.quantize_dynamic(model, dtype=torch.quint8)
    theirs = _torch(model, {nn.EmbeddingBag, nn.Embedding}, torch.quint8)
    assert isinstance(ours[0], nnq.EmbeddingBag) and isinstance(ours[1], nnq.Embedding)
    assert torch.equal(ours[0].weight_int_repr(), theirs[0].weight().int_repr())
    assert torch.allclose(ours[0].weight(), theirs[0].weight().dequantize())
    idx, off = torch.randint(0, 50, (20,)), torch.tensor([0, 5, 9, 9, 15])
    psw = torch.rand(20)
    with torch.no_grad():
        for kwargs in ({}, {"per_sample_weights": psw}):
            got, want = ours[0](idx, off, **kwargs), theirs[0](idx, off, **kwargs)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()
        tokens = torch.randint(0, 30, (3, 7))
        assert (ours[1](tokens) - theirs[1](tokens)).abs().max() <= 1e-6
        assert ours[1](tokens).shape == (3, 7, 8)


@pytest.mark.parametrize("dtype", [torch.quint8, torch.quint4x2])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bags_are_the_float_bag_of_the_dequantized_rows(dtype, mode, include_last_offset):
    torch.manual_seed(1)
    emb = nn.EmbeddingBag(40, 13, mode=mode, include_last_offset=include_last_offset, padding_idx=3)
    emb.qconfig = (
        fq.float_qparams_weight_only_qconfig if dtype == torch.quint8 else fq.float_qparams_weight_only_qconfig_4bit
    )
    q = nnq.EmbeddingBag.from_float(emb)
    assert q.dtype.name == ("quint8" if dtype == torch.quint8 else "quint4x2")
    ref = _reference(q, mode, padding_idx=3)
    idx = torch.randint(0, 40, (25,))
    idx[[2, 7]] = 3  # padding entries are left out
    off = torch.tensor([0, 4, 4, 11, 20] + ([25] if include_last_offset else []))
    ref.include_last_offset = include_last_offset
    psw = torch.rand(25) if mode == "sum" else None
    with torch.no_grad():
        got = q(idx, off, per_sample_weights=psw)
        want = ref(idx, off, per_sample_weights=psw)
        assert got.shape == want.shape == (5, 13)
        assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
        # 2-D indices: bags of equal size
        idx2 = torch.randint(0, 40, (4, 6))
        assert torch.allclose(q(idx2), ref(idx2), atol=1e-5)
        # quantization error against the float module, a few steps of each row's grid
        step = float((emb.weight.amax(1) - emb.weight.amin(1)).max()) / (255 if dtype == torch.quint8 else 15)
        full = emb(idx, off, per_sample_weights=psw)
        assert (got - full).abs().max() <= 25 * step


@pytest.mark.parametrize("engine", engines())
def test_every_engine_gives_identical_output(engine):
    torch.manual_seed(2)
    model = nn.Sequential(nn.EmbeddingBag(64, 33, mode="mean")).eval()
    for dtype in (torch.quint8, torch.quint4x2):
        q = fq.quantize_dynamic(model, dtype=dtype)[0]
        idx, off = torch.randint(0, 64, (40,)), torch.tensor([0, 10, 25, 25])
        fq.backends.engine = "scalar"
        base = q(idx, off)
        fq.backends.engine = engine
        assert torch.equal(q(idx, off), base), (engine, dtype)


def test_state_dict_pickle_memory_and_bad_inputs():
    torch.manual_seed(3)
    model = nn.Sequential(nn.EmbeddingBag(100, 12, mode="sum")).eval()
    q = fq.quantize_dynamic(model, dtype=torch.quint4x2)
    idx, off = torch.randint(0, 100, (30,)), torch.tensor([0, 10, 20])
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    fresh = nn.Sequential(nnq.EmbeddingBag(100, 12, mode="sum", dtype=fq.quint4x2))
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    want = q[0](idx, off)
    for other in (fresh, pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert torch.equal(other[0](idx, off), want)
    assert q.state_dict()["0.weight"].shape == (100, 6), "two 4-bit values per byte"
    assert q[0]._table.nbytes == 100 * 6 + 100 * 8, "6 bytes of values and two float32 qparams per row"
    bad = q.state_dict()
    bad["0.weight_scale"] = torch.zeros(100)
    with pytest.raises(RuntimeError, match="scale"):
        fresh.load_state_dict(bad)
    assert torch.equal(fresh[0](idx, off), want), "a failed load changes nothing"
    bag = q[0]
    with pytest.raises(TypeError, match="integer indices"):
        bag(idx.float(), off)
    with pytest.raises(ValueError, match=r"index 3.*\[0, 100\)"):
        bag(torch.tensor([1, 2, 3, 100]), torch.tensor([0]))
    with pytest.raises(ValueError, match="offsets\\[0\\]"):
        bag(idx, torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="non-decreasing"):
        bag(idx, torch.tensor([0, 9, 5]))
    with pytest.raises(ValueError, match="offsets are required"):
        bag(idx)
    mean = nnq.EmbeddingBag(10, 4, mode="mean")
    with pytest.raises(ValueError, match="per_sample_weights"):
        mean(torch.tensor([1, 2]), torch.tensor([0]), per_sample_weights=torch.ones(2))
    assert torch.equal(bag(torch.tensor([], dtype=torch.long), torch.tensor([0, 0])), torch.zeros(2, 12))
    with pytest.raises(NotImplementedError, match="TorchScript"):
        torch.jit.script(q)


def test_static_convert_with_float_qparams_qconfig_and_a_clear_error_without():
    class TextClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(200, 32, mode="mean")
            self.quant = fq.QuantStub()
            self.fc = nn.Linear(32, 4)
            self.dequant = fq.DeQuantStub()

        def forward(self, idx: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
            return self.dequant(self.fc(self.quant(self.emb(idx, off))))

    torch.manual_seed(4)
    model = TextClassifier().eval()
    idx, off = torch.randint(0, 200, (64,)), torch.arange(0, 64, 8)
    model.qconfig = fq.get_default_qconfig("x86")
    model.emb.qconfig = fq.float_qparams_weight_only_qconfig
    prepared = fq.prepare(model)
    with torch.no_grad():
        prepared(idx, off)
        q = fq.convert(prepared)
        assert isinstance(q.emb, nnq.EmbeddingBag) and isinstance(q.fc, nnq.Linear)
        assert (q(idx, off) - model(idx, off)).abs().max() < 0.05
    plain = TextClassifier().eval()
    plain.qconfig = fq.get_default_qconfig("x86")
    prepared = fq.prepare(plain)
    with torch.no_grad():
        prepared(idx, off)
    with pytest.raises(ValueError, match="float_qparams_weight_only_qconfig"):
        fq.convert(prepared)
