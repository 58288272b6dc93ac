"""ferroquant vs torch's int8 engine (and fp32) on the same Linear and Conv2d shapes, one process.

    python benches/bench_ops.py [--threads 1] [--engine auto] [--torch-avx2] [--quick] [--json out.json]

Prints a Markdown table of GMAC/s per op and the ratio ferroquant / torch int8, measured in the
same run (shapes from shared/design/ANCHORS.md). Speed goals live here, never in timed tests.
The AVX2-only view on any x86 machine: ``--engine avx2 --torch-avx2``.

Static Linear runs twice per shape: activations in 0..127 (torch's x86 qconfigs, reduce_range)
and in 0..255. Dynamic Linear: each library's per-channel dynamic qconfig (torch: per tensor
0..127; ferroquant: per row 0..127).

fp16 / int8 weight-only Linear (float activations): ferroquant's ``Float16Linear`` vs torch's fp16
dynamic Linear, and ferroquant's ``WeightOnlyLinear`` vs torch's int8 dynamic Linear (the
"torch int8" column holds torch's module of that row).

Conv2d (module level, batch 1): ``ferroquant.nn.quantized.Conv2d`` vs ``torch.ao.nn.quantized.Conv2d``
on the same per-channel int8 weights, quint8 activations in 0..127, channels-last input for both
libraries (fp32: ``nn.Conv2d`` on the usual NCHW input). Also the fixed cost of one module call:
a 1x1 Conv2d(8, 8) on a 1x8x7x7 input, in microseconds.
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
# (name, in channels, out channels, kernel, stride, padding, groups, input height = width)
SHAPES_CONV = [
    ("3x3", 64, 64, 3, 1, 1, 1, 56),
    ("3x3", 256, 256, 3, 1, 1, 1, 14),
    ("1x1", 128, 512, 1, 1, 0, 1, 28),
    ("3x3 depthwise", 144, 144, 3, 1, 1, 144, 56),
    ("7x7/2 stem", 3, 64, 7, 2, 3, 1, 224),
]
QUICK_STATIC = [(128, 768, 3072)]
QUICK_DYNAMIC = [(1, 768, 3072), (16, 768, 3072)]
SHAPES_LOWBIT = [(1, 1024, 4096), (1, 4096, 1024), (16, 1024, 1024), (128, 768, 3072)]
QUICK_LOWBIT = [(1, 1024, 4096)]


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


def bench_lowbit(m: int, k: int, n: int, kind: str) -> dict[str, Any]:
    """fp16 weights (both libraries' fp16 dynamic Linear), or ferroquant's int8 weight-only Linear
    against torch's int8 dynamic Linear (torch has no weight-only module)."""
    torch.manual_seed(0)
    lin = nn.Linear(k, n).eval()
    x = torch.randn(m, k)
    if kind == "fp16":
        ours = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.float16)[0]
        theirs = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.float16)[0]
        op = "fp16 dynamic linear (vs torch fp16)"
    else:
        ours = fq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: fq.int8_weight_only_qconfig})[0]
        theirs = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear: tq.per_channel_dynamic_qconfig})[0]
        op = "int8 weight-only linear (vs torch int8 dynamic)"
    with torch.no_grad():
        t_fp32 = median_seconds(lambda: lin(x))
        t_torch = median_seconds(lambda: theirs(x))
        t_ours = median_seconds(lambda: ours(x))
    return {
        "op": op,
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


def _conv_macs(cin: int, cout: int, k: int, stride: int, padding: int, groups: int, hw: int) -> int:
    out = (hw + 2 * padding - k) // stride + 1
    return cout * out * out * (cin // groups) * k * k


def _conv_label(cin: int, cout: int, stride: int, groups: int, hw: int) -> str:
    """``64->64 56x56``, with `` /2`` for a stride and `` g=144`` for groups."""
    extra = (f" /{stride}" if stride > 1 else "") + (f" g={groups}" if groups > 1 else "")
    return f"{cin}->{cout} {hw}x{hw}{extra}"


def _conv_modules(
    cin: int, cout: int, k: int, stride: int, padding: int, groups: int, x: torch.Tensor
) -> tuple[nn.Conv2d, Any, Any]:
    """An fp32 conv with random weights, and torch's and ferroquant's int8 convs with the same
    per-channel int8 weights, bias and output qparams (covering the fp32 output's range)."""
    conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups).eval()
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.05)
        y = conv(x)
    w = conv.weight.detach()
    ws = (w.abs().amax((1, 2, 3)) / 127.5).double()
    zps = torch.zeros(cout, dtype=torch.long)
    qw_t = torch.quantize_per_channel(w, ws, zps, 0, torch.qint8)
    qw_fq = fq.QTensor(qw_t.int_repr(), ws, zps, fq.qint8, axis=0)
    lo, hi = min(y.min().item(), 0.0), max(y.max().item(), 0.0)
    os_ = max(hi - lo, 1e-3) / 255
    oz = min(255, max(0, round(-lo / os_)))
    theirs = tnnq.Conv2d(cin, cout, k, stride, padding, groups=groups)
    ours = fq.nn.quantized.Conv2d(cin, cout, k, stride, padding, groups=groups)
    theirs.set_weight_bias(qw_t, conv.bias.detach())
    ours.set_weight_bias(qw_fq, conv.bias.detach())
    for m in (theirs, ours):
        m.scale, m.zero_point = os_, oz
    return conv, theirs, ours


def _conv_inputs(x: torch.Tensor, s: float) -> tuple[torch.Tensor, fq.QTensor]:
    """``x`` as a channels-last quint8 tensor for torch and a channels-last QTensor for ferroquant."""
    qx_t = torch.quantize_per_tensor(x, s, 0, torch.quint8).contiguous(memory_format=torch.channels_last)
    q = fq.quantize_per_tensor(x.movedim(1, -1).contiguous(), s, 0, fq.quint8)
    return qx_t, fq.QTensor(q.int_repr().movedim(-1, 1), s, 0, fq.quint8)


def bench_conv(
    name: str, cin: int, cout: int, k: int, stride: int, padding: int, groups: int, hw: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.rand(1, cin, hw, hw) * 4
    s = 4 / 127  # activations in 0..127
    conv, theirs, ours = _conv_modules(cin, cout, k, stride, padding, groups, x)
    qx_t, qx_fq = _conv_inputs(x, s)
    with torch.no_grad():
        diff = (theirs(qx_t).int_repr().int() - ours(qx_fq).int_repr().int()).abs().max().item()
        t_fp32 = median_seconds(lambda: conv(x))
    t_torch = median_seconds(lambda: theirs(qx_t))
    t_ours = median_seconds(lambda: ours(qx_fq))
    macs = _conv_macs(cin, cout, k, stride, padding, groups, hw)
    return {
        "op": f"conv2d {name}, activations 0..127",
        "shape": _conv_label(cin, cout, stride, groups, hw),
        "macs": macs,
        "fp32": macs / t_fp32 / 1e9,
        "torch_int8": macs / t_torch / 1e9,
        "ferroquant": macs / t_ours / 1e9,
        "max_abs_diff_vs_torch": diff,
    }


def bench_conv_call() -> dict[str, Any]:
    """The fixed cost of one conv module call: a 1x1 Conv2d(8, 8) on a 1x8x7x7 input, in microseconds."""
    torch.manual_seed(0)
    x = torch.rand(1, 8, 7, 7) * 4
    conv, theirs, ours = _conv_modules(8, 8, 1, 1, 0, 1, x)
    qx_t, qx_fq = _conv_inputs(x, 4 / 127)
    with torch.no_grad():
        t_fp32 = median_seconds(lambda: conv(x), repeats=15)
    t_torch = median_seconds(lambda: theirs(qx_t), repeats=15)
    t_ours = median_seconds(lambda: ours(qx_fq), repeats=15)
    return {
        "op": "Conv2d(8, 8, 1) on 1x8x7x7 (us/call)",
        "fp32_us": t_fp32 * 1e6,
        "torch_int8_us": t_torch * 1e6,
        "ferroquant_us": t_ours * 1e6,
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


def _print_conv_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| op | channels, input | fp32 GMAC/s | torch int8 GMAC/s | ferroquant GMAC/s | ratio vs torch int8 "
        "| max output diff vs torch (LSB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["ferroquant"] / r["torch_int8"]
        print(
            f"| {r['op']} | {r['shape']} | {r['fp32']:.1f} | {r['torch_int8']:.1f} | {r['ferroquant']:.1f} "
            f"| {r['ratio']:.2f}x | {r['max_abs_diff_vs_torch']} |"
        )


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
    for kind in ("fp16", "int8_weight_only"):
        for s in QUICK_LOWBIT if args.quick else SHAPES_LOWBIT:
            rows.append(bench_lowbit(*s, kind=kind))
    tiny = bench_tiny()
    conv_rows = [bench_conv(*c) for c in SHAPES_CONV]
    conv_call = bench_conv_call()
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
    print()
    _print_conv_table(conv_rows)
    tiny["speedup"] = tiny["torch_int8_us"] / tiny["ferroquant_us"]
    print()
    print(
        f"docs 4x4 dynamic Linear, one call: fp32 {tiny['fp32_us']:.2f} us, torch int8 {tiny['torch_int8_us']:.2f} us, "
        f"ferroquant {tiny['ferroquant_us']:.2f} us ({tiny['speedup']:.2f}x faster than torch int8)"
    )
    conv_call["speedup"] = conv_call["torch_int8_us"] / conv_call["ferroquant_us"]
    print(
        f"Conv2d(8, 8, 1) on 1x8x7x7, one call: fp32 {conv_call['fp32_us']:.2f} us, torch int8 "
        f"{conv_call['torch_int8_us']:.2f} us, ferroquant {conv_call['ferroquant_us']:.2f} us "
        f"({conv_call['speedup']:.2f}x faster than torch int8)"
    )
    if args.json:
        payload = {"machine": info, "threads": args.threads, "rows": rows, "tiny": tiny}
        write_json(args.json, {**payload, "conv_rows": conv_rows, "conv_call": conv_call})
    return 0


if __name__ == "__main__":
    sys.exit(main())
