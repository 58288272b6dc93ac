"""Whole models: ferroquant vs torch's int8 engine (and fp32), same process, one thread.

    python benches/bench_models.py [--threads 1] [--seq 128] [--engine auto] [--torch-avx2] [--json out.json]

Models from shared/design/ANCHORS.md: the 4-layer BERT-base-size encoder (dynamic
quantization of every nn.Linear, each library's default dynamic qconfig), T=128, batch 1. Reports
median ms, ratios and the largest error vs fp32. The AVX2-only view on any x86 machine:
``--engine avx2 --torch-avx2``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings

import ferroquant as fq
import torch
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
from models import Encoder  # noqa: E402

warnings.filterwarnings("ignore")
import torch.ao.quantization as tq  # noqa: E402  (the reference engine, benchmarks only)


def bench_encoder(seq: int) -> dict:
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(1, seq, 768)
    ours = fq.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=fq.qint8)
    theirs = tq.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ref = model(x)
        err_ours = (ours(x) - ref).abs().max().item()
        err_torch = (theirs(x) - ref).abs().max().item()
        t_fp32 = median_seconds(lambda: model(x), min_time=2.0, repeats=9)
        t_torch = median_seconds(lambda: theirs(x), min_time=2.0, repeats=9)
        t_ours = median_seconds(lambda: ours(x), min_time=2.0, repeats=9)
    return {
        "model": f"4-layer encoder d=768 T={seq} (dynamic)",
        "fp32_ms": t_fp32 * 1e3,
        "torch_int8_ms": t_torch * 1e3,
        "ferroquant_ms": t_ours * 1e3,
        "ratio": t_torch / t_ours,
        "max_abs_err_ferroquant": err_ours,
        "max_abs_err_torch": err_torch,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--engine", default="auto", help="ferroquant engine (auto or a name)")
    ap.add_argument("--json")
    add_torch_avx2_flag(ap)
    args = ap.parse_args()
    apply_torch_avx2_flag(args)
    torch.set_num_threads(args.threads)
    fq.set_num_threads(args.threads)
    fq.backends.engine = args.engine
    info = machine_info()
    rows = [bench_encoder(args.seq)]
    print(f"# models: ferroquant vs torch {info['torch']} int8, {args.threads} thread(s)")
    print(describe(info))
    print()
    print("| model | fp32 ms | torch int8 ms | ferroquant ms | speedup vs torch int8 | max abs err (fq / torch) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['fp32_ms']:.2f} | {r['torch_int8_ms']:.2f} | {r['ferroquant_ms']:.2f} | "
            f"{r['ratio']:.2f}x | {r['max_abs_err_ferroquant']:.3g} / {r['max_abs_err_torch']:.3g} |"
        )
    if args.json:
        write_json(args.json, {"machine": info, "threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
