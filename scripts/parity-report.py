"""Parity of ferroquant's eager static modules with torch.ao and with a float64 reference (run by
hand; needs torch.ao).

    python scripts/parity-report.py
    FBGEMM_ENABLE_INSTRUCTIONS=AVX2 FERROQUANT_ENGINE=avx2 python scripts/parity-report.py  # AVX2-only view

For each case of tests/test_static.py (per-channel weights, MinMax activations):
- every weighted layer against the float64 reference of its own integer problem (dequantize input
  and weights, float64 op, quantize with the layer's output qparams): the largest difference in LSB;
- the model's output against torch's: with full-range activations where torch's int8 engine is exact
  (VNNI), otherwise with activations in 0..127 (where torch is exact on every x86 CPU).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import _exactness as X  # noqa: E402
import test_static as T  # noqa: E402


def main() -> int:
    import ferroquant as fq

    exact = X.torch_full_range_exact()
    print(
        f"ferroquant engine: {fq.backends.engine} ({fq.backends.supported_engines[0]} best here); "
        f"torch int8 exact for 0..255 activations: {exact}"
        + (" (torch forced to AVX2)" if X.torch_forced_to_avx2() else "")
    )
    rng = "0..255" if exact else "0..127"
    print()
    print(
        "| case | layers vs float64: max LSB | torch compared at | elements | equal to torch | within 1 LSB | max LSB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (make, shape, fuse) in T.CASES.items():
        g = torch.Generator().manual_seed(1)
        calib = torch.randn(shape, generator=g)
        test = torch.randn(shape, generator=g) * 0.9
        co, ct, a, b = T._both(make, calib, test, fuse=fuse)
        errors = X.layer_lsb_errors(co, test)
        layers, worst = len(errors), max(d for _, d in errors)
        if not exact:
            _, ct, a, b = T._both(make, calib, calib, fuse=fuse, reduce_range=True)
        lsb = (a - b).abs() / T._out_scale(ct)
        print(
            f"| {name} | {worst} ({layers} layers) | {rng} | {lsb.numel()} | "
            f"{(lsb < 0.5).float().mean().item() * 100:.2f} % | "
            f"{(lsb <= 1.001).float().mean().item() * 100:.2f} % | {lsb.max().item():.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
