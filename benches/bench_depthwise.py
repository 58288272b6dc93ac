"""MobileNetV2's depthwise 3x3 convs one by one: ferroquant vs torch's int8 engine, module calls.

    python benches/bench_depthwise.py [--threads 1] [--engine auto] [--torch-avx2] [--shapes 32,112,1 144,56,2 ...]

Each shape is (channels, input size, stride); both libraries run ``nn.quantized.Conv2d`` with
groups = channels on the same float conv quantized with their x86 qconfig, quint8 channels-last
input, batch 1. Prints median µs per call and the ratio torch / ferroquant (same process). The
AVX2-only view on any x86 machine: ``--engine avx2 --torch-avx2`` (torch's own depthwise and
oneDNN paths differ by ISA: on this repo's VNNI VM torch runs the 112² shapes 2–3x faster than
with AVX2 only).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any, Callable

import ferroquant as fq
import torch
from _common import add_torch_avx2_flag, apply_torch_avx2_flag

warnings.filterwarnings("ignore")
import torch.ao.quantization as tq  # noqa: E402  (the reference engine, benchmarks only)

SHAPES = [
    (32, 112, 1),
    (96, 112, 2),
    (144, 56, 1),
    (144, 56, 2),
    (192, 28, 1),
    (192, 28, 2),
    (384, 14, 1),
    (576, 14, 1),
    (576, 14, 2),
    (960, 7, 1),
]


def _build(lib: Any, c: int, hw: int, stride: int) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(c * 1000 + hw + stride)
    conv = torch.nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c)
    model = torch.nn.Sequential(lib.QuantStub(), conv, lib.DeQuantStub()).eval()
    model.qconfig = lib.get_default_qconfig("x86")
    prepared = lib.prepare(model)
    x = torch.rand(1, c, hw, hw)
    prepared(x)
    q = lib.convert(prepared)
    xq = q[0](x)
    if lib is tq:
        xq = xq.contiguous(memory_format=torch.channels_last)
    return q[1], xq


def _median_us(f: Callable[..., Any], n: int = 200) -> float:
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", nargs="*", help="channels,size,stride triples (default: MobileNetV2's)")
    ap.add_argument("--engine", default="auto", help="ferroquant engine (auto or a name)")
    add_torch_avx2_flag(ap)
    args = ap.parse_args()
    apply_torch_avx2_flag(args)
    fq.backends.engine = args.engine
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    engine = fq.backends.current_engine()
    print(f"# depthwise 3x3 convs, {args.threads} thread(s), torch {torch.__version__}, engine {engine}")
    print("| channels | input / stride | torch int8 µs | ferroquant µs | ratio |")
    print("|---|---|---|---|---|")
    total_fq = total_torch = 0.0
    for c, hw, stride in shapes:
        mf, xf = _build(fq, c, hw, stride)
        mt, xt = _build(tq, c, hw, stride)
        a, b = _median_us(lambda m=mf, x=xf: m(x)), _median_us(lambda m=mt, x=xt: m(x))
        total_fq += a
        total_torch += b
        print(f"| {c} | {hw}² / {stride} | {b:.1f} | {a:.1f} | {b / a:.2f}x |")
    print(f"| all | | {total_torch:.0f} | {total_fq:.0f} | {total_torch / total_fq:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
