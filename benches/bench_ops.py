"""ferroquant vs torch's int8 engine (and fp32) on the same Linear shapes, one process.

    python benches/bench_ops.py [--threads 1] [--engine auto] [--torch-avx2] [--quick] [--json out.json]

Prints a Markdown table of GMAC/s per op and the ratio ferroquant / torch int8, measured in the
same run (shapes from shared/design/ANCHORS.md). Speed goals live here, never in timed tests.
The AVX2-only view on any x86 machine: ``--engine avx2 --torch-avx2``.

Static Linear runs twice per shape: activations in 0..127 (torch's x86 qconfigs, reduce_range)
and in 0..255. Dynamic Linear: each library's per-channel dynamic qconfig (torch: per tensor
0..127; ferroquant: per row 0..127).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import ferroquant as fq
import torch
from ferroquant import _core
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    add_torch_avx2_flag,
    apply_torch_avx2_flag,
    describe,
    machine_info,
    median_seconds,
    write_json,
)

warnings.filterwarnings("ignore")
import torch.ao.nn.quantized as tnnq  # noqa: E402  (the reference engine, benchmarks only)
import torch.ao.quantization as tq  # noqa: E402

SHAPES_STATIC = [(16, 768, 3072), (128, 768, 3072), (512, 1024, 1024), (128, 3072, 768), (512, 768, 768)]
SHAPES_DYNAMIC = [
    (1, 768, 3072),
    (1, 1024, 1024),
    (1, 3072, 768),
    (4, 768, 3072),
    (16, 768, 3072),
    (128, 768, 3072),
    (512, 1024, 1024),
]
QUICK_STATIC = [(128, 768, 3072)]
QUICK_DYNAMIC = [(1, 768, 3072), (16, 768, 3072)]


def _gmacs(m: int, k: int, n: int, seconds: float) -> float:
    return m * k * n / seconds / 1e9


def bench_dynamic(m: int, k: int, n: int) -> dict[str, Any]:
    torch.manual_seed(0)
    lin = nn.Linear(k, n).eval()
    x = torch.randn(m, k)
    ours = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: fq.per_channel_dynamic_qconfig})[0]
    theirs = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: tq.per_channel_dynamic_qconfig})[0]
    with torch.no_grad():
        t_fp32 = median_seconds(lambda: lin(x))
        t_torch = median_seconds(lambda: theirs(x))
        t_ours = median_seconds(lambda: ours(x))
    return {
        "op": "dynamic linear (per-channel qconfigs)",
        "shape": (m, k, n),
        "fp32": _gmacs(m, k, n, t_fp32),
        "torch_int8": _gmacs(m, k, n, t_torch),
        "ferroquant": _gmacs(m, k, n, t_ours),
    }


def bench_static(m: int, k: int, n: int, threads: int, qmax: int = 255) -> dict[str, Any]:
    torch.manual_seed(0)
    w = torch.randn(n, k) * 0.05
    b = torch.randn(n)
    x = torch.rand(m, k) * 4
    xs, xz, os_, oz = 4 / qmax, 0, 0.5, 64
    ws = (w.abs().amax(1) / 127.5).float()
    qw_t = torch.quantize_per_channel(w, ws.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
    ref = tnnq.Linear(k, n)
    ref.set_weight_bias(qw_t, b)
    ref.scale, ref.zero_point = os_, oz
    qx_t = torch.quantize_per_tensor(x, xs, xz, torch.quint8)
    packed = _core.PackedLinear(qw_t.int_repr().numpy(), ws.numpy(), torch.zeros(n, dtype=torch.int32).numpy())
    a = qx_t.int_repr().numpy()
    bn = b.numpy()
    lin = nn.Linear(k, n)
    with torch.no_grad():
        t_fp32 = median_seconds(lambda: lin(x))
    t_torch = median_seconds(lambda: ref(qx_t))
    t_ours = median_seconds(lambda: packed.linear_static(a, xs, xz, bn, os_, oz, 0, 255, False, "quint8", threads))
    return {
        "op": f"static linear, activations 0..{qmax}",
        "shape": (m, k, n),
        "fp32": _gmacs(m, k, n, t_fp32),
        "torch_int8": _gmacs(m, k, n, t_torch),
        "ferroquant": _gmacs(m, k, n, t_ours),
    }


def bench_tiny() -> dict[str, Any]:
    """The PyTorch docs' 4x4 dynamic Linear example: one forward call, in microseconds."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).eval()
    x = torch.randn(4, 4)
    ours = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear})
    theirs = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear})
    with torch.no_grad():
        t_fp32 = median_seconds(lambda: lin(x), repeats=15)
        t_torch = median_seconds(lambda: theirs(x), repeats=15)
        t_ours = median_seconds(lambda: ours(x), repeats=15)
    return {
        "op": "docs 4x4 dynamic Linear (us/call)",
        "shape": (4, 4, 4),
        "fp32_us": t_fp32 * 1e6,
        "torch_int8_us": t_torch * 1e6,
        "ferroquant_us": t_ours * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="auto", help="ferroquant engine (auto or a name)")
    ap.add_argument("--quick", action="store_true", help="a few shapes only (CI smoke run)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    add_torch_avx2_flag(ap)
    args = ap.parse_args()
    apply_torch_avx2_flag(args)
    torch.set_num_threads(args.threads)
    fq.set_num_threads(args.threads)
    fq.backends.engine = args.engine
    torch.backends.quantized.engine = "x86"
    info = machine_info()
    rows = []
    for qmax in (127, 255):
        for s in QUICK_STATIC if args.quick else SHAPES_STATIC:
            rows.append(bench_static(*s, threads=args.threads, qmax=qmax))
    for s in QUICK_DYNAMIC if args.quick else SHAPES_DYNAMIC:
        rows.append(bench_dynamic(*s))
    tiny = bench_tiny()
    print(f"# ferroquant ops vs torch {info['torch']} int8 (x86 engine), {args.threads} thread(s)")
    print(describe(info))
    print()
    print("| op | M x K x N | fp32 GMAC/s | torch int8 GMAC/s | ferroquant GMAC/s | ratio vs torch int8 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["ferroquant"] / r["torch_int8"]
        m, k, n = r["shape"]
        print(
            f"| {r['op']} | {m}x{k}x{n} | {r['fp32']:.1f} | {r['torch_int8']:.1f} | {r['ferroquant']:.1f} "
            f"| {r['ratio']:.2f}x |"
        )
    tiny["speedup"] = tiny["torch_int8_us"] / tiny["ferroquant_us"]
    print()
    print(
        f"docs 4x4 dynamic Linear, one call: fp32 {tiny['fp32_us']:.2f} us, torch int8 {tiny['torch_int8_us']:.2f} us, "
        f"ferroquant {tiny['ferroquant_us']:.2f} us ({tiny['speedup']:.2f}x faster than torch int8)"
    )
    if args.json:
        write_json(args.json, {"machine": info, "threads": args.threads, "rows": rows, "tiny": tiny})
    return 0


if __name__ == "__main__":
    sys.exit(main())
