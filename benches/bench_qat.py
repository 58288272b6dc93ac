"""Quantization-aware training cost per step: the digits CNN of tests/test_cnn_digits.py (three
conv-bn-relu, a residual add, pooling, a linear layer; batch 64 of 8x8 images), one training step
(forward, backward, SGD) in fp32, under torch.ao's QAT and under ferroquant's, same process.

    python benches/bench_qat.py [--threads 1] [--batch 64] [--qconfig x86|default]

Prints ms per step (median) and the overhead over fp32. torch's "x86" QAT qconfig uses its fused
C++ fake-quant op; ferroquant's fake-quant is one call of its Rust kernel (two vectorised passes:
values, then the gradient mask; its rounding is the kernels' rule, docs/numerics.md D6), plus the
BatchNorm folding both libraries do.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from _common import describe, machine_info, median_seconds  # noqa: E402

GROUPS = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3", "relu3"]]


def _digits_cnn(ns) -> nn.Module:
    """tests/test_cnn_digits.py's DigitsCNN, with either library's stubs and FloatFunctional."""
    from test_cnn_digits import DigitsCNN

    model = DigitsCNN()
    if ns.__name__.startswith("torch"):
        import torch.ao.nn.quantized as tnnq

        model.quant, model.dequant, model.skip = ns.QuantStub(), ns.DeQuantStub(), tnnq.FloatFunctional()
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--qconfig", choices=["x86", "default"], default="x86")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    import ferroquant as fq
    import torch.ao.quantization as tq

    fq.set_num_threads(args.threads)
    x = torch.randn(args.batch, 1, 8, 8)
    y = torch.randint(0, 10, (args.batch,))

    def stepper(model: nn.Module):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step() -> None:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    torch.manual_seed(0)
    fp32 = _digits_cnn(fq).train()
    rows = {"fp32": median_seconds(stepper(fp32), min_time=1.0)}
    for name, ns in (("torch.ao QAT", tq), ("ferroquant QAT", fq)):
        model = ns.fuse_modules_qat(copy.deepcopy(_digits_cnn(ns)).train(), GROUPS)
        model.qconfig = ns.get_default_qat_qconfig("x86") if args.qconfig == "x86" else ns.default_qat_qconfig
        prepared = ns.prepare_qat(model)
        rows[name] = median_seconds(stepper(prepared), min_time=1.0)

    print(f"# QAT training step, digits CNN, batch {args.batch}, {args.threads} thread(s), qconfig {args.qconfig}")
    print(describe(machine_info()))
    print()
    print("| | ms per step | vs fp32 |")
    print("|---|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t * 1e3:.3f} | {t / rows['fp32']:.2f}x |")
    print()
    print(f"ferroquant QAT / torch.ao QAT: {rows['ferroquant QAT'] / rows['torch.ao QAT']:.2f}x the time per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
