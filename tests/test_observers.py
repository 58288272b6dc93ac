"""Observers: calculate_qparams() equals torch.ao's bitwise (scale and zero point)."""

from __future__ import annotations

import warnings

import ferroquant as fq
import pytest
import torch
import torch.ao.quantization.observer as tobs
from hypothesis import given, settings
from hypothesis import strategies as st

# (class name, kwargs as torch objects) — each runs against both implementations.
CONFIGS = [
    ("MinMaxObserver", {}),
    ("MinMaxObserver", {"reduce_range": True}),
    ("MinMaxObserver", {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
    ("MinMaxObserver", {"dtype": torch.quint8, "qscheme": torch.per_tensor_symmetric}),
    ("MinMaxObserver", {"quant_min": 0, "quant_max": 127}),
    ("MinMaxObserver", {"quant_min": 0, "quant_max": 255, "qscheme": torch.per_tensor_symmetric}),
    (
        "MinMaxObserver",
        {
            "dtype": torch.qint8,
            "qscheme": torch.per_tensor_symmetric,
            "quant_min": -127,
            "quant_max": 127,
            "eps": 2**-12,
        },
    ),
    ("MinMaxObserver", {"dtype": torch.qint8, "reduce_range": True}),
    ("MinMaxObserver", {"dtype": torch.qint32}),
    ("MovingAverageMinMaxObserver", {}),
    (
        "MovingAverageMinMaxObserver",
        {"averaging_constant": 0.3, "dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric},
    ),
    ("PerChannelMinMaxObserver", {"dtype": torch.qint8, "qscheme": torch.per_channel_symmetric}),
    ("PerChannelMinMaxObserver", {"ch_axis": 1}),
    (
        "PerChannelMinMaxObserver",
        {"ch_axis": 1, "dtype": torch.quint8, "qscheme": torch.per_channel_affine_float_qparams},
    ),
    ("PerChannelMinMaxObserver", {"dtype": torch.qint8, "quant_min": -64, "quant_max": 63, "ch_axis": 2}),
    ("MovingAveragePerChannelMinMaxObserver", {"dtype": torch.qint8, "qscheme": torch.per_channel_symmetric}),
    ("MovingAveragePerChannelMinMaxObserver", {"averaging_constant": 0.5, "ch_axis": 1}),
    ("HistogramObserver", {}),
    ("HistogramObserver", {"reduce_range": True}),
    ("HistogramObserver", {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}),
    ("HistogramObserver", {"bins": 256, "quant_min": 0, "quant_max": 127}),
]


def _pair(name: str, kwargs: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(fq, name)(**kwargs), getattr(tobs, name)(**kwargs)


def _assert_same_qparams(ours, theirs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s1, z1 = ours.calculate_qparams()
        s2, z2 = theirs.calculate_qparams()
    assert s1.dtype == s2.dtype and z1.dtype == z2.dtype, (s1.dtype, s2.dtype, z1.dtype, z2.dtype)
    assert s1.shape == s2.shape and z1.shape == z2.shape
    assert torch.equal(
        s1.view(torch.int32) if s1.dtype == torch.float32 else s1,
        s2.view(torch.int32) if s2.dtype == torch.float32 else s2,
    ), (s1, s2)
    assert torch.equal(z1, z2), (z1, z2)


def _feed(ours, theirs, batches) -> None:
    for b in batches:
        ours(b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs(b)


def _batches(kind: str, shape=(4, 6, 5), n=3, gen=None):
    g = gen or torch.Generator().manual_seed(1)
    if kind == "normal":
        return [torch.randn(shape, generator=g) * (i + 1) for i in range(n)]
    if kind == "shifted":
        return [torch.rand(shape, generator=g) * 5 + 2 for _ in range(n)]
    if kind == "negative":
        return [-torch.rand(shape, generator=g) * 3 - 1 for _ in range(n)]
    if kind == "constant":
        return [torch.full(shape, 3.25) for _ in range(n)]
    if kind == "zeros":
        return [torch.zeros(shape) for _ in range(n)]
    if kind == "huge":
        return [torch.randn(shape, generator=g) * 1e30 for _ in range(n)]
    if kind == "tiny":
        return [torch.randn(shape, generator=g) * 1e-30 for _ in range(n)]
    if kind == "growing":  # each batch widens the range (exercises histogram upscaling)
        return [torch.randn(shape, generator=g) * (3**i) + i for i in range(n)]
    if kind == "outliers":
        out = []
        for _ in range(n):
            t = torch.randn(shape, generator=g)
            t.view(-1)[0] = 80.0
            out.append(t)
        return out
    raise ValueError(kind)


KINDS = ["normal", "shifted", "negative", "constant", "zeros", "huge", "tiny", "growing", "outliers"]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
@pytest.mark.parametrize("kind", KINDS)
def test_calculate_qparams_bitwise_equal_to_torch(name, kwargs, kind):
    ours, theirs = _pair(name, kwargs)
    _feed(ours, theirs, _batches(kind))
    if name == "HistogramObserver" and kind == "huge":
        # torch's float32 error terms overflow (values ~1e30, cubed) and its search then trims one
        # side of the data; ferroquant redoes the search in float64 (test_reliability_python.py)
        s_ours, _ = ours.calculate_qparams()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s_theirs, _ = theirs.calculate_qparams()
        assert torch.isfinite(s_ours).all() and not torch.equal(s_ours, s_theirs)
    else:
        _assert_same_qparams(ours, theirs)
    # The running statistics match too (same buffers, same values).
    for buf in ("min_val", "max_val"):
        assert torch.equal(getattr(ours, buf), getattr(theirs, buf)), buf
    if name == "HistogramObserver":
        assert torch.equal(ours.histogram, theirs.histogram)


def test_histogram_many_batches_random():
    g = torch.Generator().manual_seed(7)
    for trial in range(6):
        ours, theirs = _pair("HistogramObserver", {"reduce_range": trial % 2 == 0})
        batches = [
            torch.randn(64, generator=g) * float(torch.rand(1, generator=g) * 10) + float(torch.randn(1, generator=g))
            for _ in range(10)
        ]
        _feed(ours, theirs, batches)
        _assert_same_qparams(ours, theirs)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=50),
    st.sampled_from([c for c in CONFIGS if not c[0].startswith(("PerChannel", "MovingAveragePerChannel"))]),
)
def test_per_tensor_observers_property(values, config):
    name, kwargs = config
    ours, theirs = _pair(name, kwargs)
    x = torch.tensor(values, dtype=torch.float32)
    _feed(ours, theirs, [x, x * 0.5 - 1])
    _assert_same_qparams(ours, theirs)


@pytest.mark.parametrize(
    "name", ["MinMaxObserver", "MovingAverageMinMaxObserver", "HistogramObserver", "PerChannelMinMaxObserver"]
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_clear_errors(name, bad):
    obs = getattr(fq, name)()
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN|Inf"):
        obs(x)


def test_error_names_the_owner_module():
    obs = fq.MinMaxObserver()
    obs._owner_name = "encoder.fc1"
    with pytest.raises(ValueError, match="encoder.fc1"):
        obs(torch.tensor([float("nan")]))


@pytest.mark.parametrize(
    "name",
    [
        "MinMaxObserver",
        "MovingAverageMinMaxObserver",
        "HistogramObserver",
        "PerChannelMinMaxObserver",
        "MovingAveragePerChannelMinMaxObserver",
    ],
)
def test_never_observed_raises(name):
    with pytest.raises(fq.CalibrationError, match="not observed"):
        getattr(fq, name)().calculate_qparams()


def test_empty_input_is_ignored():
    obs = fq.MinMaxObserver()
    obs(torch.empty(0))
    with pytest.raises(RuntimeError):
        obs.calculate_qparams()
    obs(torch.tensor([1.0, -1.0]))
    s, z = obs.calculate_qparams()
    assert s.item() > 0


def test_placeholder_noop_fixed():
    with pytest.raises(RuntimeError):
        fq.PlaceholderObserver().calculate_qparams()
    with pytest.raises(RuntimeError):
        fq.NoopObserver().calculate_qparams()
    f = fq.FixedQParamsObserver(scale=1 / 256, zero_point=0)
    x = torch.randn(5)
    assert f(x) is x
    s, z = f.calculate_qparams()
    assert s.item() == 1 / 256 and z.item() == 0


def test_with_args_and_invalid_arguments():
    factory = fq.MinMaxObserver.with_args(dtype=fq.qint8).with_args(qscheme=fq.per_tensor_symmetric)
    obs = factory()
    assert obs.dtype == torch.qint8 and obs.quant_min == -128 and obs.quant_max == 127
    with pytest.raises(NotImplementedError):
        fq.MinMaxObserver(qscheme=torch.per_channel_affine)
    with pytest.raises(NotImplementedError):
        fq.PerChannelMinMaxObserver(qscheme=torch.per_tensor_affine)
    with pytest.raises(NotImplementedError):
        fq.MinMaxObserver(qscheme=torch.per_tensor_symmetric, reduce_range=True)
    with pytest.raises(ValueError):
        fq.MinMaxObserver(quant_min=1, quant_max=200)
    with pytest.raises(ValueError):
        fq.MinMaxObserver(dtype=torch.qint8, quant_min=-200, quant_max=100)


def test_state_dict_keys_match_torch_and_round_trip():
    for name, kwargs in [
        ("MinMaxObserver", {}),
        ("PerChannelMinMaxObserver", {"ch_axis": 0}),
        ("HistogramObserver", {}),
    ]:
        ours, theirs = _pair(name, kwargs)
        _feed(ours, theirs, _batches("normal"))
        assert set(ours.state_dict()) == set(theirs.state_dict())
        fresh = getattr(fq, name)(**kwargs)
        fresh.load_state_dict(theirs.state_dict())
        _assert_same_qparams(fresh, theirs)
