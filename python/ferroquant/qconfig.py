"""QConfig: which observer (or fake-quant) watches activations and which watches weights.

The named defaults and ``get_default_qconfig`` / ``get_default_qat_qconfig`` for "x86",
"fbgemm", "onednn" and "qnnpack" are torch 2.13's exactly (same observers, same arguments,
docs/numerics.md, "Default qconfigs"). ``"native"`` is ours: HistogramObserver activations over the full 0..255
range and per-channel symmetric int8 weights — the most accurate choice on ferroquant's exact
kernels (every engine accumulates exactly in int32, so ``reduce_range`` is unnecessary: docs/numerics.md D1).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch
from torch import nn

from ._dtypes import per_channel_affine, quint8
from .fake_quantize import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    default_embedding_fake_quant,
    default_embedding_fake_quant_4bit,
    default_fake_quant,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant,
    default_weight_fake_quant,
)
from .observer import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    NoopObserver,
    PlaceholderObserver,
    _PartialWrapper,
    default_debug_observer,
    default_dynamic_quant_observer,
    default_float_qparams_observer,
    default_float_qparams_observer_4bit,
    default_observer,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_weight_observer,
)

__all__ = [
    "QConfig",
    "QConfigDynamic",
    "QConfigAny",
    "get_default_qconfig",
    "get_default_qat_qconfig",
    "default_qconfig",
    "default_debug_qconfig",
    "default_per_channel_qconfig",
    "default_dynamic_qconfig",
    "default_dynamic_qconfig_torch",
    "per_channel_dynamic_qconfig",
    "per_row_dynamic_qconfig",
    "full_range_dynamic_qconfig",
    "float16_dynamic_qconfig",
    "float16_static_qconfig",
    "float_qparams_weight_only_qconfig",
    "float_qparams_weight_only_qconfig_4bit",
    "default_qat_qconfig",
    "default_qat_qconfig_v2",
    "default_embedding_qat_qconfig",
    "default_embedding_qat_qconfig_4bit",
    "default_weight_only_qconfig",
    "int8_weight_only_qconfig",
    "default_activation_only_qconfig",
    "qconfig_equals",
]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn", "native")


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """A pair of factories (classes or ``with_args`` partials): ``activation`` and ``weight``.
    Pass factories, not instances: each module gets its own observer."""

    __slots__ = ()

    def __new__(cls, activation: Any, weight: Any) -> QConfig:  # type: ignore[misc]
        if isinstance(activation, nn.Module) or isinstance(weight, nn.Module):
            raise ValueError(
                "QConfig received an observer instance; pass the class or Observer.with_args(...) "
                "so that each module gets its own observer"
            )
        return super().__new__(cls, activation, weight)


#: Old name kept by torch for dynamic qconfigs.
QConfigDynamic = QConfig
QConfigAny = "QConfig | None"

default_qconfig = QConfig(activation=default_observer, weight=default_weight_observer)
default_debug_qconfig = QConfig(activation=default_debug_observer, weight=default_weight_observer)
default_per_channel_qconfig = QConfig(activation=default_observer, weight=default_per_channel_weight_observer)
#: Dynamic quantization: activations per row over 0..127 (``default_dynamic_quant_observer``),
#: more accurate than torch's per-tensor 0..127 and as fast on every x86 CPU (docs/migration.md).
default_dynamic_qconfig = QConfig(activation=default_dynamic_quant_observer, weight=default_weight_observer)
#: (+) Dynamic activations per tensor over the full 0..255 range (ferroquant's default before 0.2):
#: more accurate than 0..127 when rows have similar ranges, but AVX2-only CPUs (no VNNI) must run
#: it on their slower exact kernel.
full_range_dynamic_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=quint8, quant_min=0, quant_max=255, is_dynamic=True),
    weight=default_weight_observer,
)
#: (+) Reproduces torch's dynamic activations (0..127, reduce_range) bit for bit.
default_dynamic_qconfig_torch = QConfig(
    activation=PlaceholderObserver.with_args(dtype=quint8, quant_min=0, quant_max=127, is_dynamic=True),
    weight=default_weight_observer,
)
per_channel_dynamic_qconfig = QConfig(
    activation=default_dynamic_quant_observer, weight=default_per_channel_weight_observer
)
#: (+) Dynamic quantization with one activation scale per row (per token) and per-channel
#: weights: the most accurate dynamic Linear when rows differ in magnitude.
per_row_dynamic_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(
        dtype=quint8, quant_min=0, quant_max=255, is_dynamic=True, qscheme=per_channel_affine
    ),
    weight=default_per_channel_weight_observer,
)
float16_dynamic_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float16, is_dynamic=True),
    weight=PlaceholderObserver.with_args(dtype=torch.float16),
)
float16_static_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float16),
    weight=PlaceholderObserver.with_args(dtype=torch.float16),
)
float_qparams_weight_only_qconfig = QConfig(
    activation=default_placeholder_observer, weight=default_float_qparams_observer
)
float_qparams_weight_only_qconfig_4bit = QConfig(
    activation=default_placeholder_observer, weight=default_float_qparams_observer_4bit
)
default_qat_qconfig = QConfig(activation=default_fake_quant, weight=default_weight_fake_quant)
default_qat_qconfig_v2 = QConfig(activation=default_fused_act_fake_quant, weight=default_fused_wt_fake_quant)
#: Quantization-aware training of nn.Embedding / nn.EmbeddingBag: weights fake-quantized per row
#: with float zero points, outputs float (torch.ao's ``default_embedding_qat_qconfig``).
default_embedding_qat_qconfig = QConfig(
    activation=NoopObserver.with_args(dtype=torch.float32), weight=default_embedding_fake_quant
)
default_embedding_qat_qconfig_4bit = QConfig(
    activation=NoopObserver.with_args(dtype=torch.float32), weight=default_embedding_fake_quant_4bit
)
default_weight_only_qconfig = QConfig(activation=nn.Identity, weight=default_weight_fake_quant)
#: (+) int8 weight-only Linear: weights int8 per output channel, activations stay float32
#: (``quantize_dynamic(m, {nn.Linear: int8_weight_only_qconfig})`` → ``nn.quantized.WeightOnlyLinear``).
int8_weight_only_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float32), weight=default_per_channel_weight_observer
)
default_activation_only_qconfig = QConfig(activation=default_fake_quant, weight=nn.Identity)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; choose one of {list(BACKENDS)}")


def get_default_qconfig(backend: str = "x86", version: int = 0) -> QConfig:
    """The default post-training qconfig of ``backend`` (torch 2.13's, or ferroquant's "native")."""
    _check_backend(backend)
    if version != 0:
        raise ValueError(f"get_default_qconfig supports version 0 only, got {version}")
    if backend in ("x86", "fbgemm"):
        return QConfig(
            activation=HistogramObserver.with_args(reduce_range=True),
            weight=default_per_channel_weight_observer,
        )
    if backend == "qnnpack":
        return QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=default_weight_observer)
    # onednn and native: full-range histogram activations, per-channel symmetric weights
    return QConfig(
        activation=HistogramObserver.with_args(reduce_range=False), weight=default_per_channel_weight_observer
    )


def get_default_qat_qconfig(backend: str = "x86", version: int = 1) -> QConfig:
    """The default QAT qconfig of ``backend`` (torch 2.13's arguments; "native" is full range)."""
    _check_backend(backend)
    if version not in (0, 1):
        raise ValueError(f"get_default_qat_qconfig supports versions 0 and 1, got {version}")
    fq_cls = FakeQuantize if version == 0 else FusedMovingAvgObsFakeQuantize
    per_channel_w = default_per_channel_weight_fake_quant if version == 0 else default_fused_per_channel_wt_fake_quant
    per_tensor_w = default_weight_fake_quant if version == 0 else default_fused_wt_fake_quant
    if backend in ("x86", "fbgemm"):
        act = fq_cls.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, reduce_range=True)
        return QConfig(activation=act, weight=per_channel_w)
    if backend == "qnnpack":
        act = fq_cls.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, reduce_range=False)
        return QConfig(activation=act, weight=per_tensor_w)
    act = fq_cls.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    return QConfig(activation=act, weight=per_channel_w)


def _partial_equals(a: Any, b: Any) -> bool:
    if isinstance(a, _PartialWrapper) and isinstance(b, _PartialWrapper):
        return a.func == b.func and a.keywords == b.keywords and a.p.args == b.p.args
    return a == b


def qconfig_equals(q1: Any, q2: Any) -> bool:
    """Whether two qconfigs build the same observers with the same arguments."""
    if q1 is None or q2 is None:
        return q1 is q2
    return _partial_equals(q1.activation, q2.activation) and _partial_equals(q1.weight, q2.weight)


def _activation_is_dynamic(qconfig: QConfig) -> bool:
    """Whether the activation factory builds a dynamic (run-time qparams) observer."""
    return bool(getattr(qconfig.activation(), "is_dynamic", False))
