"""QConfigs: torch's named defaults and backends reproduced exactly; ferroquant's additions."""

from __future__ import annotations

import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

_ATTRS = (
    "dtype",
    "qscheme",
    "quant_min",
    "quant_max",
    "reduce_range",
    "ch_axis",
    "averaging_constant",
    "bins",
    "is_dynamic",
    "has_customized_qrange",
)


def _describe(factory) -> dict:
    """What an observer / fake-quant factory builds: class name and the arguments that matter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = factory()
    d = {"class": type(obj).__name__}
    inner = getattr(obj, "activation_post_process", None)
    for src, prefix in ((obj, ""), (inner, "observer.")):
        if src is None:
            continue
        if prefix:
            d["observer.class"] = type(src).__name__
        for a in _ATTRS:
            if hasattr(src, a):
                v = getattr(src, a)
                d[prefix + a] = str(v).rsplit(".", 1)[-1] if not isinstance(v, (int, float, bool)) else v
        if hasattr(src, "eps") and isinstance(src.eps, torch.Tensor):
            d[prefix + "eps"] = src.eps.item()
    return d


def _same(ours, theirs) -> None:
    assert _describe(ours.activation) == _describe(theirs.activation)
    assert _describe(ours.weight) == _describe(theirs.weight)


NAMED = [
    "default_qconfig",
    "default_per_channel_qconfig",
    "float16_dynamic_qconfig",
    "float_qparams_weight_only_qconfig",
    "default_qat_qconfig",
    "default_weight_only_qconfig",
    "default_activation_only_qconfig",
    "default_qat_qconfig_v2",
    "float16_static_qconfig",
]


@pytest.mark.parametrize("name", NAMED)
def test_named_qconfigs_equal_torch(name):
    _same(getattr(fq, name), getattr(tq, name))


@pytest.mark.parametrize("backend", ["x86", "fbgemm", "qnnpack", "onednn"])
def test_default_qconfig_per_backend_equals_torch(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tq.get_default_qconfig(backend)
    _same(fq.get_default_qconfig(backend), theirs)


@pytest.mark.parametrize("backend", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("version", [0, 1])
def test_default_qat_qconfig_per_backend_equals_torch(backend, version):
    ours = fq.get_default_qat_qconfig(backend, version)
    theirs = tq.get_default_qat_qconfig(backend, version)
    a, b = _describe(ours.activation), _describe(theirs.activation)
    # Same observer and range; the fused class name is ours (decision D6 in docs/numerics.md: the observer formula).
    assert a == b
    assert _describe(ours.weight) == _describe(theirs.weight)


def test_native_qconfig_is_full_range_histogram_and_per_channel_symmetric():
    q = fq.get_default_qconfig("native")
    act, w = q.activation(), q.weight()
    assert isinstance(act, fq.HistogramObserver) and (act.quant_min, act.quant_max) == (0, 255)
    assert not act.reduce_range
    assert isinstance(w, fq.PerChannelMinMaxObserver) and w.qscheme == torch.per_channel_symmetric
    assert w.dtype == fq.qint8


@pytest.mark.parametrize("name", ["default_dynamic_qconfig", "per_channel_dynamic_qconfig"])
def test_default_dynamic_qconfigs_use_per_row_0_to_127_activations(name):
    # torch's weights; activations per row over 0..127, ferroquant's documented default
    # (docs/migration.md): torch's own objects say 0..255 per tensor and run 0..127 per tensor
    ours, theirs = getattr(fq, name), getattr(tq, name)
    assert _describe(ours.weight) == _describe(theirs.weight)
    act = ours.activation()
    assert act.is_dynamic and (act.quant_min, act.quant_max) == (0, 127)
    assert act.qscheme == fq.per_channel_affine
    full = fq.full_range_dynamic_qconfig.activation()
    assert (full.quant_min, full.quant_max, full.qscheme) == (0, 255, fq.per_tensor_affine)


def test_dynamic_qconfig_torch_reproduces_torch_activation_range():
    act = fq.default_dynamic_qconfig_torch.activation()
    assert act.is_dynamic and (act.quant_min, act.quant_max) == (0, 127)


def test_unknown_backend_and_instances_are_errors():
    with pytest.raises(ValueError, match="backend"):
        fq.get_default_qconfig("tpu")
    with pytest.raises(ValueError, match="instance"):
        fq.QConfig(activation=fq.MinMaxObserver(), weight=fq.default_weight_observer)


def test_qconfig_mapping_and_defaults():
    m = (
        fq.QConfigMapping()
        .set_global(fq.default_qconfig)
        .set_object_type(nn.Linear, None)
        .set_module_name("fc", fq.default_per_channel_qconfig)
        .set_module_name_regex("enc.*", fq.default_qconfig)
    )
    assert m.qconfig_for("fc", nn.Linear(1, 1)) is fq.default_per_channel_qconfig
    assert m.qconfig_for("other", nn.Linear(1, 1)) is None
    assert m.qconfig_for("encoder.x", nn.ReLU()) is fq.default_qconfig
    assert m.qconfig_for("x", nn.ReLU()) is fq.default_qconfig
    round_trip = fq.QConfigMapping.from_dict(m.to_dict())
    assert round_trip.to_dict() == m.to_dict()
    assert fq.qconfig.qconfig_equals(
        fq.get_default_qconfig_mapping("x86").global_qconfig, fq.get_default_qconfig("x86")
    )
    assert fq.get_default_qat_qconfig_mapping("qnnpack").global_qconfig is not None


def test_fake_quantize_matches_torch_fake_quant_formula():
    torch.manual_seed(3)
    x = torch.randn(64, 8) * 3
    ours = fq.default_fake_quant()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tq.default_fake_quant()
        y1, y2 = ours(x), theirs(x)
    assert torch.equal(ours.scale, theirs.scale) and torch.equal(ours.zero_point.int(), theirs.zero_point.int())
    assert torch.equal(y1, y2)
    xg = x.clone().requires_grad_()
    ours(xg).sum().backward()
    assert set(xg.grad.unique().tolist()) <= {0.0, 1.0}


def test_fake_quant_switches():
    m = nn.Sequential(fq.default_per_channel_weight_fake_quant())
    m.apply(fq.disable_fake_quant)
    x = torch.randn(4, 3)
    assert torch.equal(m(x), x)
    m.apply(fq.enable_fake_quant)
    m.apply(fq.disable_observer)
    assert m[0].observer_enabled.item() == 0
