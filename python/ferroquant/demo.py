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
from .quantize import quantize_dynamic


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


def run_demo(threads: int = 1, repeats: int = 50) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    set_num_threads(threads)
    model = DemoMLP().eval()
    x = torch.randn(32, 512)
    qmodel = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=qint8)
    with torch.no_grad():
        ref = model(x)
        out = qmodel(x)
        t_fp32 = _median_ms(lambda: model(x), repeats)
        t_int8 = _median_ms(lambda: qmodel(x), repeats)
    err = (out - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    top1 = (out.argmax(1) == ref.argmax(1)).float().mean().item() * 100
    size_fp32, size_int8 = _state_dict_bytes(model), _state_dict_bytes(qmodel)
    print("ferroquant demo: dynamic int8 quantization of a 3-block MLP (512 -> 2048 -> 512, batch 32)")
    print(f"engine: {backends.current_engine()}, threads: {get_num_threads()}")
    print()
    print("| metric | fp32 | int8 (ferroquant) |")
    print("|---|---|---|")
    print(f"| latency, median of {repeats} (ms) | {t_fp32:.3f} | {t_int8:.3f} ({t_fp32 / t_int8:.2f}x) |")
    ratio = size_fp32 / size_int8
    print(f"| state_dict size (MB) | {size_fp32 / 1e6:.2f} | {size_int8 / 1e6:.2f} ({ratio:.2f}x smaller) |")
    print(f"| max abs error vs fp32 | - | {err:.4g} |")
    print(f"| cosine similarity vs fp32 | - | {cos:.6f} |")
    print(f"| top-1 agreement (%) | - | {top1:.1f} |")
