"""Benchmark models from shared/design/ANCHORS.md, built from their layer tables (random weights):
the transformer encoder, and ResNet-18 and MobileNetV2 ready for eager static quantization."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class EncoderLayer(nn.Module):
    """A BERT-base-size transformer encoder layer with every projection an nn.Linear."""

    def __init__(self, d: int = 768, heads: int = 12, ff: int = 3072) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = self.ln1(x + self.o(y))
        return self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))


class Encoder(nn.Module):
    """4 encoder layers, d=768, 12 heads, ff=3072 (ANCHORS.md's encoder)."""

    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# -- CNNs, "eager-ready" for torch.ao-style static quantization ----------------------------------
#
# The quantization pieces are passed in as classes (QuantStub, DeQuantStub, FloatFunctional), so that
# the same model is built with ferroquant's classes or torch.ao's without this file importing either;
# the defaults are plain float stand-ins with no state, so every variant has the same state_dict keys.


class FloatAdd(nn.Module):
    """A float stand-in for FloatFunctional: ``add(a, b)`` is ``a + b``."""

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.add(a, b)


class ConvBNAct(nn.Sequential):
    """conv (no bias), BatchNorm, and a ReLU when ``relu``: children ``0``, ``1`` (, ``2``), the
    groups that ``fuse_groups`` names for fusion."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


def fuse_groups(model: nn.Module) -> list[list[str]]:
    """The qualified names of every conv-bn(-relu) in ``model``, for ``fuse_modules``."""
    return [[f"{name}.{i}" for i in range(len(m))] for name, m in model.named_modules() if isinstance(m, ConvBNAct)]


def init_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights as torchvision initialises these models (Kaiming-normal convs), with
    BatchNorm parameters and running statistics away from identity, as after training (so that
    fusing them matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=g)
                m.bias.zero_()


class _EagerCNN(nn.Module):
    """What both CNNs share: the stubs around ``_body`` and ``fuse_model``."""

    def __init__(self, quant_stub: type, dequant_stub: type) -> None:
        super().__init__()
        self.quant = quant_stub()
        self.dequant = dequant_stub()

    def _body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self._body(self.quant(x)))

    def fuse_model(self, fuse_modules: Callable[..., nn.Module]) -> _EagerCNN:
        """Fuses every conv-bn(-relu) in place with ``fuse_modules`` (``ferroquant.fuse_modules``
        or ``torch.ao.quantization.fuse_modules``); the model must be in eval mode."""
        fuse_modules(self, fuse_groups(self), inplace=True)
        return self


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-bn, a projection shortcut when the shape changes, the
    residual add, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, float_functional: type) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride)
        self.conv2 = ConvBNAct(cout, cout, 3, relu=False)
        self.downsample = ConvBNAct(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None
        self.skip_add = float_functional()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.skip_add.add(self.conv2(self.conv1(x)), identity))


class ResNet18(_EagerCNN):
    """ResNet-18 (He et al. 2015, table 1): 7x7/2 stem, 3x3/2 max pool, basic blocks [2, 2, 2, 2]
    at 64-128-256-512 channels, adaptive average pool, fc 1000."""

    def __init__(
        self,
        quant_stub: type = nn.Identity,
        dequant_stub: type = nn.Identity,
        float_functional: type = FloatAdd,
        num_classes: int = 1000,
    ) -> None:
        super().__init__(quant_stub, dequant_stub)
        self.stem = ConvBNAct(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers: list[nn.Module] = []
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(
                    BasicBlock(cin, cout, stride, float_functional), BasicBlock(cout, cout, 1, float_functional)
                )
            )
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (t > 1), 3x3 depthwise, linear 1x1 projection; the
    residual add when stride is 1 and the channels match."""

    def __init__(self, cin: int, cout: int, stride: int, t: int, float_functional: type) -> None:
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1)] if t != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden), ConvBNAct(hidden, cout, 1, relu=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.skip_add = float_functional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.skip_add.add(x, y) if self.use_res else y


# Sandler et al. 2018, table 2: expansion t, output channels c, repeats n, first stride s
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(_EagerCNN):
    """MobileNetV2 (Sandler et al. 2018, table 2): 32-channel 3x3/2 stem, the inverted residual
    stages, 1x1 conv to 1280, average pool, dropout and a 1000-way classifier.

    ReLU instead of the paper's ReLU6, as torchvision's quantizable MobileNetV2 does: a ReLU fuses
    into the preceding conv, and the observed output range clips the activations anyway."""

    def __init__(
        self,
        quant_stub: type = nn.Identity,
        dequant_stub: type = nn.Identity,
        float_functional: type = FloatAdd,
        num_classes: int = 1000,
    ) -> None:
        super().__init__(quant_stub, dequant_stub)
        blocks: list[nn.Module] = [ConvBNAct(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t, float_functional))
                cin = c
        blocks.append(ConvBNAct(cin, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
