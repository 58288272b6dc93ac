"""The coverage matrix of docs/coverage.md as this suite's parametrisation: every cell — float
module × mode (static per-tensor / per-channel weights, dynamic per-tensor / per-channel, QAT) —
is a test case that converts the module for real now and checks the page says what happened.
``python scripts/gen-coverage.py`` writes the page from these same cases, so the two cannot drift.

A cell says which module the float one becomes, or why not. "static": eager PTQ (QuantStub →
module → DeQuantStub, calibrate, convert) with per-tensor weights (``default_qconfig``) and
per-channel weights (``get_default_qconfig("x86")``); "dynamic": ``quantize_dynamic`` with
``default_dynamic_qconfig`` (per tensor) and ``per_channel_dynamic_qconfig``; "QAT":
``prepare_qat``. A conversion counts when the module was swapped for a ferroquant quantized one (or,
for modules that work on quantized tensors as they are, when the quantized model runs) and its
output is within a few quantization steps of float.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Callable

import ferroquant as fq
import pytest
import torch
from ferroquant.nn.quantized.passthrough import PASSTHROUGH_MODULES
from torch import nn

TOP = Path(__file__).resolve().parent.parent
PAGE = TOP / "docs" / "coverage.md"

# (name shown, factory, input shape): torch.nn modules that torch.ao's eager mode quantizes in some
# mode, plus the functional-style modules torchvision's quantizable models use
ROWS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("Linear", lambda: nn.Linear(16, 8), (4, 16)),
    ("Conv1d", lambda: nn.Conv1d(4, 8, 3), (2, 4, 12)),
    ("Conv2d", lambda: nn.Conv2d(4, 8, 3), (2, 4, 10, 10)),
    ("Conv3d", lambda: nn.Conv3d(4, 8, 3), (2, 4, 6, 6, 6)),
    ("Conv2d depthwise", lambda: nn.Conv2d(8, 8, 3, groups=8), (2, 8, 10, 10)),
    ("ConvTranspose1d", lambda: nn.ConvTranspose1d(4, 8, 3), (2, 4, 12)),
    ("ConvTranspose2d", lambda: nn.ConvTranspose2d(4, 8, 3), (2, 4, 10, 10)),
    ("ConvTranspose3d", lambda: nn.ConvTranspose3d(4, 8, 3), (2, 4, 6, 6, 6)),
    ("ReLU", nn.ReLU, (2, 4, 6, 6)),
    ("ReLU6", nn.ReLU6, (2, 4, 6, 6)),
    ("Hardswish", nn.Hardswish, (2, 4, 6, 6)),
    ("ELU", nn.ELU, (2, 4, 6, 6)),
    ("LeakyReLU", nn.LeakyReLU, (2, 4, 6, 6)),
    ("PReLU", nn.PReLU, (2, 4, 6, 6)),
    ("Sigmoid", nn.Sigmoid, (2, 4, 6, 6)),
    ("Hardsigmoid", nn.Hardsigmoid, (2, 4, 6, 6)),
    ("Tanh", nn.Tanh, (2, 4, 6, 6)),
    ("Softmax", lambda: nn.Softmax(dim=1), (2, 4, 6, 6)),
    ("Hardtanh", nn.Hardtanh, (2, 4, 6, 6)),
    ("MaxPool2d", lambda: nn.MaxPool2d(2), (2, 4, 6, 6)),
    ("AvgPool2d", lambda: nn.AvgPool2d(2), (2, 4, 6, 6)),
    ("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d(1), (2, 4, 6, 6)),
    ("Flatten", nn.Flatten, (2, 4, 6, 6)),
    ("Dropout", nn.Dropout, (2, 4, 6, 6)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(4), (2, 4, 6, 6)),
    ("BatchNorm3d", lambda: nn.BatchNorm3d(4), (2, 4, 3, 6, 6)),
    ("LayerNorm", lambda: nn.LayerNorm(6), (2, 4, 6, 6)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4), (2, 4, 6, 6)),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(4), (2, 4, 6, 6)),
    ("Upsample", lambda: nn.Upsample(scale_factor=2), (2, 4, 6, 6)),
    ("Embedding", lambda: nn.Embedding(10, 8), None),
    ("EmbeddingBag", lambda: nn.EmbeddingBag(10, 8), None),
    ("LSTM", lambda: nn.LSTM(8, 8), (5, 2, 8)),
    ("GRU", lambda: nn.GRU(8, 8), (5, 2, 8)),
    ("RNN", lambda: nn.RNN(8, 8), (5, 2, 8)),
    ("RNNCell", lambda: nn.RNNCell(8, 8), (2, 8)),
    ("LSTMCell", lambda: nn.LSTMCell(8, 8), (2, 8)),
    ("GRUCell", lambda: nn.GRUCell(8, 8), (2, 8)),
    ("MultiheadAttention", lambda: SelfAttention(nn.MultiheadAttention(8, 2)), (5, 2, 8)),
]

NOT_QUANTIZED = "—"


class SelfAttention(nn.Module):
    """Calls an attention module with query = key = value (its forward takes three tensors)."""

    def __init__(self, mha: nn.Module) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x)[0]


def target(mod: nn.Module) -> nn.Module:
    """The module a row is about (inside its call wrapper, if it has one)."""
    return mod.mha if isinstance(mod, SelfAttention) else mod


def float_types(mod: nn.Module) -> set[type]:
    """The torch.nn types in a row's module: what quantize_dynamic is asked to swap."""
    return {type(m) for m in mod.modules() if type(m).__module__.startswith("torch.nn.modules")}


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.inner = inner
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.inner(self.quant(x)))


def make_input(shape: tuple[int, ...] | None) -> torch.Tensor:
    if shape is None:
        return torch.randint(0, 10, (4, 3))
    return torch.randn(*shape)


def first_tensor(y: object) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y  # type: ignore[index,return-value]


def close(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor) -> bool:
    """Within a few 8-bit quantization steps (1/255 of the range) of the input's or output's range."""
    span = max(float(want.max() - want.min()), float(x.max() - x.min()) if x.is_floating_point() else 0.0)
    return got.shape == want.shape and float((got - want).abs().max()) <= 8 * (span or 1.0) / 255 + 1e-3


def quantized_name(mod: nn.Module) -> str:
    if type(mod) in PASSTHROUGH_MODULES.values():
        return "runs on quantized tensors"
    return f"`{type(mod).__module__.replace('ferroquant.nn.', 'nn.').rsplit('.', 1)[0]}.{type(mod).__name__}`"


def try_static(factory: Callable[[], nn.Module], shape: tuple[int, ...] | None, qconfig: object) -> str:
    if shape is None:
        return NOT_QUANTIZED
    torch.manual_seed(0)
    model = Wrapped(factory()).eval()
    x = make_input(shape)
    with torch.no_grad():
        want = model(x)
        model.qconfig = qconfig
        try:
            prepared = fq.prepare(copy.deepcopy(model))
            prepared(x)
            qmodel = fq.convert(prepared)
            got = qmodel(x)
        except Exception:
            return NOT_QUANTIZED
    inner = target(qmodel.inner)
    if not close(got, want, x):
        return NOT_QUANTIZED
    if type(inner).__module__.startswith("ferroquant."):
        return quantized_name(inner)
    return "runs on quantized tensors"


def try_dynamic(factory: Callable[[], nn.Module], shape: tuple[int, ...] | None, qconfig: object) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(factory()).eval()
    x = make_input(shape)
    with torch.no_grad():
        want = first_tensor(model(x))
        try:
            spec = dict.fromkeys(float_types(model[0]), qconfig)
            qmodel = fq.quantize_dynamic(copy.deepcopy(model), spec)
            got = first_tensor(qmodel(x))
        except Exception:
            return NOT_QUANTIZED
    inner = target(qmodel[0])
    if not type(inner).__module__.startswith("ferroquant.") or not close(got, want, x):
        return NOT_QUANTIZED
    return quantized_name(inner)


def try_qat(factory: Callable[[], nn.Module], shape: tuple[int, ...] | None) -> str:
    prepare_qat = getattr(fq, "prepare_qat", None)
    if prepare_qat is None or shape is None:
        return NOT_QUANTIZED
    torch.manual_seed(0)
    model = Wrapped(factory()).train()
    model.qconfig = fq.get_default_qat_qconfig("x86")
    x = make_input(shape)
    try:
        prepared = prepare_qat(model)
        prepared(x)
        qmodel = fq.convert(prepared.eval())
        qmodel(x)
    except Exception:
        return NOT_QUANTIZED
    inner = target(qmodel.inner)
    return quantized_name(inner) if type(inner).__module__.startswith("ferroquant.") else "runs on quantized tensors"


def try_embedding(factory: Callable[[], nn.Module], how: str) -> str:
    """Embeddings quantize their weights only, per row with float qparams
    (``float_qparams_weight_only_qconfig``): "static" is prepare / convert with that qconfig,
    "dynamic" is ``quantize_dynamic(..., dtype=torch.quint8)``; both give the same module."""
    torch.manual_seed(0)
    model = nn.Sequential(factory()).eval()
    x = make_input(None)
    with torch.no_grad():
        want = model(x)
        try:
            if how == "static":
                model.qconfig = fq.float_qparams_weight_only_qconfig
                prepared = fq.prepare(copy.deepcopy(model))
                prepared(x)
                qmodel = fq.convert(prepared)
            else:
                qmodel = fq.quantize_dynamic(copy.deepcopy(model), {type(model[0])}, dtype=torch.quint8)
            got = qmodel(x)
        except Exception:
            return NOT_QUANTIZED
    if not type(qmodel[0]).__module__.startswith("ferroquant.") or not close(got, want, want):
        return NOT_QUANTIZED
    return quantized_name(qmodel[0]) + " (8/4-bit rows)"


MODES = [
    "static, per-tensor weights",
    "static, per-channel weights",
    "dynamic, per-tensor",
    "dynamic, per-channel",
    "QAT",
]
STALE = "docs/coverage.md is out of date: run python scripts/gen-coverage.py"


def cell(name: str, mode: str) -> str:
    """What converting row ``name`` in ``mode`` gives now."""
    factory, shape = {r[0]: (r[1], r[2]) for r in ROWS}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "QAT":
            return try_qat(factory, shape)
        if name.startswith("Embedding"):
            return try_embedding(factory, mode.split(",")[0])
        if mode.startswith("static"):
            qconfig = fq.default_qconfig if "per-tensor" in mode else fq.get_default_qconfig("x86")
            return try_static(factory, shape, qconfig)
        qconfig = fq.default_dynamic_qconfig if "per-tensor" in mode else fq.per_channel_dynamic_qconfig
        return try_dynamic(factory, shape, qconfig)


def page_cells() -> dict[str, dict[str, str]]:
    """docs/coverage.md's table: row name → mode → cell."""
    cells: dict[str, dict[str, str]] = {}
    for line in PAGE.read_text().splitlines():
        if line.startswith("| `nn."):
            parts = [p.strip() for p in line.strip("|").split("|")]
            cells[parts[0][len("`nn.") : -1]] = dict(zip(MODES, parts[1:]))
    return cells


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [r[0] for r in ROWS])
def test_coverage_cell(name: str, mode: str) -> None:
    recorded = page_cells().get(name, {}).get(mode)
    assert recorded == cell(name, mode), STALE


def test_coverage_page_has_exactly_these_rows() -> None:
    assert list(page_cells()) == [r[0] for r in ROWS], (
        "docs/coverage.md is out of date: run python scripts/gen-coverage.py"
    )
