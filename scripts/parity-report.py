"""Parity of ferroquant's eager static modules with torch.ao (run by hand; needs torch.ao).

    python scripts/parity-report.py

For each case of tests/test_static.py: the fraction of output elements equal to torch's, within
1 LSB, and the largest difference in LSB (per-channel weights, full-range MinMax activations).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import test_static as T  # noqa: E402


def main() -> int:
    print("| case | elements | equal to torch | within 1 LSB | max LSB |")
    print("|---|---|---|---|---|")
    for name, (make, shape, fuse) in T.CASES.items():
        g = torch.Generator().manual_seed(1)
        calib = torch.randn(shape, generator=g)
        test = torch.randn(shape, generator=g) * 0.9
        _, ct, a, b = T._both(make, calib, test, fuse=fuse)
        lsb = (a - b).abs() / T._out_scale(ct)
        print(f"| {name} | {lsb.numel()} | {(lsb < 0.5).float().mean().item() * 100:.2f} % | "
              f"{(lsb <= 1.001).float().mean().item() * 100:.2f} % | {lsb.max().item():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
