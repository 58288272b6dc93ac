"""The demo behind ``python -m ferroquant demo``."""

from __future__ import annotations

import copy
import io
import statistics
import time
from typing import Callable

import torch
from torch import nn

from . import backends
from ._dtypes import qint8
from ._threads import get_num_threads, set_num_threads
from .fuse_modules import fuse_modules
from .qconfig import get_default_qconfig
from .quantize import convert, prepare, quantize_dynamic


class DemoMLP(nn.Module):
    """A small transformer-style MLP block stack (the demo's built-in model)."""

    def __init__(self, d: int = 512, hidden: int = 2048, layers: int = 3, classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DemoCNN(nn.Module):
    """conv-bn-relu ×3 with a residual add, pooling and a classifier (the static demo model)."""

    def __init__(self) -> None:
        super().__init__()
        from .nn.quantized import FloatFunctional
        from .stubs import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.skip = FloatFunctional()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        a = self.relu1(self.bn1(self.conv1(x)))
        x = self.skip.add(a, self.relu2(self.bn2(self.conv2(a))))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


FUSE = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3", "relu3"]]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _compare(title: str, model: nn.Module, qmodel: nn.Module, x: torch.Tensor, repeats: int) -> None:
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
        t_fp32 = _median_ms(lambda: model(x), repeats)
        t_int8 = _median_ms(lambda: qmodel(x), repeats)
    err = (out - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    top1 = (out.argmax(1) == ref.argmax(1)).float().mean().item() * 100
    size_fp32, size_int8 = _state_dict_bytes(model), _state_dict_bytes(qmodel)
    print(title)
    print()
    print("| metric | fp32 | int8 (ferroquant) |")
    print("|---|---|---|")
    print(f"| latency, median of {repeats} (ms) | {t_fp32:.3f} | {t_int8:.3f} ({t_fp32 / t_int8:.2f}x) |")
    ratio = size_fp32 / size_int8
    print(f"| state_dict size (MB) | {size_fp32 / 1e6:.2f} | {size_int8 / 1e6:.2f} ({ratio:.2f}x smaller) |")
    print(f"| max abs error vs fp32 | - | {err:.4g} |")
    print(f"| cosine similarity vs fp32 | - | {cos:.6f} |")
    print(f"| top-1 agreement (%) | - | {top1:.1f} |")
    print()


def run_demo(threads: int = 1, repeats: int = 50) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    set_num_threads(threads)
    print(f"ferroquant demo — engine: {backends.current_engine()}, threads: {get_num_threads()}")
    print()
    model = DemoMLP().eval()
    x = torch.randn(32, 512)
    qmodel = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=qint8)
    _compare("## dynamic int8: a 3-block MLP (512 -> 2048 -> 512), batch 32", model, qmodel, x, repeats)

    cnn = DemoCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for bn in (cnn.bn1, cnn.bn2, cnn.bn3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    images = torch.rand(8, 3, 32, 32)
    qcnn = fuse_modules(copy.deepcopy(cnn), FUSE)
    # torch's x86 qconfig, as the PyTorch docs use: activations in 0..127, which every x86 engine
    # runs on its fastest exact kernel (AVX2 included)
    qcnn.qconfig = get_default_qconfig("x86")
    qcnn = prepare(qcnn)
    with torch.no_grad():
        for _ in range(4):
            qcnn(torch.rand(8, 3, 32, 32))
    qcnn = convert(qcnn)
    _compare(
        "## static int8: a CNN (conv-bn-relu x3, residual add, pooling, linear), 8 images 32x32",
        cnn,
        qcnn,
        images,
        repeats,
    )
