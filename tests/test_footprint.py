"""memory_footprint: what a converted model holds in memory, each storage once, packed weights included."""

from __future__ import annotations

import copy
import io
import pathlib
import sys

import ferroquant as fq
import numpy as np
import pytest
import torch
from ferroquant.nn.quantized._weights import WeightedQuantModule
from torch import nn

BENCHES = pathlib.Path(__file__).resolve().parents[1] / "benches"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def _static(model: nn.Module, groups: list[list[str]], batches: list[torch.Tensor]) -> nn.Module:
    model = fq.fuse_modules(model.eval(), groups) if groups else model.eval()
    model.qconfig = fq.get_default_qconfig("x86")
    prepared = fq.prepare(model)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    return fq.convert(prepared)


def _weighted(model: nn.Module) -> list[WeightedQuantModule]:
    return [m for m in model.modules() if isinstance(m, WeightedQuantModule)]


def _int8_weight_bytes(model: nn.Module) -> int:
    return sum(m.weight().int_repr().numel() for m in _weighted(model))


def _essential_bytes(model: nn.Module) -> int:
    """int8 weights, float32 biases, and per-channel (or per-tensor) weight qparams as stored
    (float32 scale, int64 zero point)."""
    total = 0
    for m in _weighted(model):
        w = m.weight()
        channels = w.q_per_channel_scales().numel() if w.is_per_channel else 1
        bias = m.bias()
        total += w.int_repr().numel() + channels * (4 + 8) + (0 if bias is None else bias.numel() * 4)
    return total


def _state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def test_float_model_counts_parameters_and_buffers():
    model = SmallCNN()
    expected = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert fq.memory_footprint(model) == expected


def test_each_storage_counted_once():
    m = nn.Module()
    m.register_buffer("a", torch.zeros(100))
    m.view = m.a[10:]  # a view of the buffer
    m.arr = m.a.numpy()  # numpy view of the same storage
    m.pair = (m.a, [m.a[:5]])
    m.own = np.zeros(25, dtype=np.float32)  # its own memory
    m.own_view = m.own[5:]
    assert fq.memory_footprint(m) == 400 + 100


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        fq.memory_footprint(torch.zeros(3))  # type: ignore[arg-type]


def test_static_cnn_footprint_covers_int8_weights():
    torch.manual_seed(0)
    q = _static(SmallCNN(), [["conv", "bn", "relu"]], [torch.rand(4, 3, 8, 8) for _ in range(2)])
    assert {type(m).__name__ for m in _weighted(q)} == {"ConvReLU2d", "Linear"}
    footprint = fq.memory_footprint(q)
    assert footprint > 0
    assert footprint >= _int8_weight_bytes(q) > 0
    packed = sum(m._packed.nbytes for m in _weighted(q))
    assert footprint >= packed > 0  # the packed kernel weights are counted


def test_dynamic_mlp_footprint_covers_int8_weights():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    q = fq.quantize_dynamic(mlp, {nn.Linear}, dtype=fq.qint8)
    assert len(_weighted(q)) == 2
    footprint = fq.memory_footprint(q)
    assert footprint > 0
    assert footprint >= _int8_weight_bytes(q) == 64 * 256 * 2


@pytest.fixture(scope="module")
def resnet18() -> tuple[nn.Module, nn.Module]:
    """benches/models.py's ResNet-18 (random weights) and its converted int8 form, calibrated at 32x32."""
    if not (BENCHES / "models.py").exists():
        pytest.skip("needs the repository's benches/models.py")
    sys.path.insert(0, str(BENCHES))
    try:
        from models import ResNet18, init_weights
    finally:
        sys.path.remove(str(BENCHES))
    torch.manual_seed(0)
    ref = ResNet18().eval()
    init_weights(ref)
    model = ResNet18(fq.QuantStub, fq.DeQuantStub, fq.nn.quantized.FloatFunctional).eval()
    model.load_state_dict(ref.state_dict())
    model.fuse_model(fq.fuse_modules)
    return ref, _static(model, [], [torch.randn(2, 3, 32, 32)])


def test_resnet18_state_dict_is_under_a_3_9th_of_fp32(resnet18):
    ref, q = resnet18
    fp32, int8 = _state_dict_bytes(ref), _state_dict_bytes(q)
    print(f"ResNet-18 state_dict: fp32 {fp32} B, int8 {int8} B, {fp32 / int8:.3f}x smaller")
    assert fp32 / int8 >= 3.9


def test_resnet18_footprint_has_no_hidden_copies(resnet18):
    # a deep copy: the state_dict test may have asked the shared fixture for its int8 weight
    # tensors, which modules then keep (see docs/api.md, memory_footprint)
    q = copy.deepcopy(resnet18[1])
    footprint, essential = fq.memory_footprint(q), _essential_bytes(q)
    ratio = footprint / essential
    print(f"ResNet-18 footprint {footprint} B, int8 weights + bias + qparams {essential} B: {ratio:.3f}x")
    assert footprint >= essential
    assert ratio <= 1.1, f"footprint is {ratio:.3f}x the int8 weights + fp32 bias + qparams"
    # asking for the weights rebuilds the int8 tensors from the packed form; the values are the same
    w0 = [m.weight().int_repr().clone() for m in _weighted(q)]
    assert fq.memory_footprint(q) > footprint
    fresh = copy.deepcopy(q)
    assert fq.memory_footprint(fresh) == footprint
    for m, w in zip(_weighted(fresh), w0):
        assert torch.equal(m.weight().int_repr(), w)
