"""End to end: a small CNN trained here on scikit-learn's bundled digits, quantized statically
(fuse → prepare → calibrate → convert): int8 top-1 within 1 point of fp32."""

from __future__ import annotations

import copy

import ferroquant as fq
import pytest
import torch
from torch import nn

sklearn_datasets = pytest.importorskip("sklearn.datasets")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.skip = fq.nn.quantized.FloatFunctional()
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        a = self.relu1(self.bn1(self.conv1(x)))
        b = self.relu2(self.bn2(self.conv2(a)))
        x = self.skip.add(a, b)  # residual add
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.fc(self.flatten(self.pool(x)))
        return self.dequant(x)


def _data():
    d = sklearn_datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def trained_fp32() -> tuple[nn.Module, tuple, tuple]:
    """The CNN trained in float (6 epochs, seed 0), in eval mode, with the train / test split."""
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = _data()
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for i in range(0, len(ytr), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64]).backward()
            opt.step()
    return model.eval(), (xtr, ytr), (xte, yte)


@pytest.mark.parametrize("backend", ["native", "x86"])
def test_trained_cnn_int8_within_one_point_of_fp32(backend):
    model, (xtr, ytr), (xte, yte) = trained_fp32()
    fp32 = _accuracy(model, xte, yte)
    assert fp32 > 90, fp32

    q = copy.deepcopy(model)
    q = fq.fuse_modules(q, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3", "relu3"]])
    q.qconfig = fq.get_default_qconfig(backend)
    q = fq.prepare(q)
    with torch.no_grad():
        for i in range(0, 512, 128):
            q(xtr[i : i + 128])
    q = fq.convert(q)
    assert isinstance(q.conv1, fq.nn.intrinsic.quantized.ConvReLU2d)
    assert isinstance(q.skip, fq.nn.quantized.QFunctional)
    int8 = _accuracy(q, xte, yte)
    assert abs(int8 - fp32) <= 1.0, (fp32, int8)
