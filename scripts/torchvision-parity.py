"""torchvision's quantization-ready models at full size: ferroquant vs torch.ao's own conversion.

    python scripts/torchvision-parity.py [--models resnet18,...] [--size 224] [--batches 4] [--json]

Each model as torchvision builds it (`quantize=False`, random weights with non-trivial BatchNorm
statistics, its own `fuse_model()`, the x86 qconfig), calibrated on the same random batches by
ferroquant and by torch.ao, then run on one more batch. Reports, per model: the share of int8
outputs within 1 LSB of torch.ao's conversion on its "fbgemm" engine (FBGEMM's requantization,
ferroquant's rule, NUMERICS D2) and on its "x86" engine (oneDNN convs on VNNI CPUs: zero point
added before rounding), how much torch's two engines agree with each other, and each library's
cosine similarity to fp32. The test suite runs the same at 64x64 (tests/test_torchao_models.py).
Inputs are kept off QuantStub rounding ties (D3), where the two libraries differ by decision.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.ao.quantization as tq
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import ferroquant as fq  # noqa: E402
from _torchvision import (  # noqa: E402
    QUANTIZABLE_MODELS,
    convert_torchvision,
    off_quantize_ties,
    torchvision_model,
)

MODELS = QUANTIZABLE_MODELS


def _within_one_lsb(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return float(((a - b).abs() / scale <= 1.0 + 1e-3).float().mean())


def _cos(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), ref.flatten(), dim=0))


def measure(name: str, size: int, batches: int, batch: int) -> dict:
    size = max(size, 299) if name == "inception_v3" else size
    base = torchvision_model(name)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(batch, 3, size, size, generator=g) for _ in range(batches)]
    x = torch.randn(batch, 3, size, size, generator=g)
    t0 = time.perf_counter()
    ours_q = convert_torchvision(fq, base, calib)
    x = off_quantize_ties(x, float(ours_q.quant.scale))
    with torch.no_grad():
        ref = base(x)
        ours = ours_q(x)
    theirs = {}
    previous = torch.backends.quantized.engine
    try:
        for engine in ("fbgemm", "x86"):
            torch.backends.quantized.engine = engine
            q = convert_torchvision(tq, base, calib)
            with torch.no_grad():
                theirs[engine] = (q(x), float((q.fc if hasattr(q, "fc") else q.classifier[-1]).scale))
    finally:
        torch.backends.quantized.engine = previous
    (tf, sf), (tx, sx) = theirs["fbgemm"], theirs["x86"]
    return {
        "model": name,
        "input": f"{batch}x3x{size}x{size}",
        "within_1lsb_vs_torch_fbgemm": _within_one_lsb(ours, tf, sf),
        "within_1lsb_vs_torch_x86": _within_one_lsb(ours, tx, sx),
        "torch_x86_vs_torch_fbgemm": _within_one_lsb(tx, tf, sf),
        "cosine_ferroquant": _cos(ours, ref),
        "cosine_torch_fbgemm": _cos(tf, ref),
        "cosine_torch_x86": _cos(tx, ref),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=4, help="calibration batches")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(n, args.size, args.batches, args.batch) for n in args.models.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| model | input | ≤ 1 LSB vs torch fbgemm | vs torch x86 | torch x86 vs fbgemm "
        "| cosine fq | cosine torch fbgemm | cosine torch x86 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['input']} | {r['within_1lsb_vs_torch_fbgemm']:.2%} "
            f"| {r['within_1lsb_vs_torch_x86']:.2%} | {r['torch_x86_vs_torch_fbgemm']:.2%} "
            f"| {r['cosine_ferroquant']:.5f} | {r['cosine_torch_fbgemm']:.5f} | {r['cosine_torch_x86']:.5f} |"
        )


if __name__ == "__main__":
    main()
