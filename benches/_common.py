"""Shared timing helpers for the benchmarks: medians of repeated calls, machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

# FBGEMM (torch's x86 int8 engine: Linear) reads this when torch loads: "AVX2" makes it run its AVX2
# code, as on a CPU without AVX-512 / VNNI (saturating vpmaddubsw), on any x86 machine.
TORCH_AVX2_ENV = "FBGEMM_ENABLE_INSTRUCTIONS"
# The rest of torch's CPU code as on an AVX2-only CPU: oneDNN (the x86 engine's int8 convs, and
# fp32 convs) and MKL (fp32 Linear) limited to AVX2. Set together with TORCH_AVX2_ENV.
TORCH_AVX2_EXTRA_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def add_torch_avx2_flag(ap: Any) -> None:
    ap.add_argument(
        "--torch-avx2",
        action="store_true",
        help=f"run torch as on an AVX2-only CPU ({TORCH_AVX2_ENV}=AVX2, ONEDNN_MAX_CPU_ISA=AVX2, "
        "MKL_ENABLE_INSTRUCTIONS=AVX2: int8 and fp32 alike; restarts the script with them set)",
    )


def apply_torch_avx2_flag(args: Any) -> None:
    """With ``--torch-avx2``, restart the process with FBGEMM restricted to AVX2 (the variable
    must be set before torch loads, so this process cannot apply it to itself)."""
    if args.torch_avx2 and os.environ.get(TORCH_AVX2_ENV) != "AVX2":
        os.environ[TORCH_AVX2_ENV] = "AVX2"
        os.environ.update(TORCH_AVX2_EXTRA_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def median_seconds(fn: Callable[[], Any], min_time: float = 0.2, repeats: int = 7) -> float:
    """Median over `repeats` rounds of the per-call time, each round at least `min_time` / repeats."""
    fn()
    fn()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.02:
        fn()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    inner = max(1, int(min_time / repeats / max(per_call, 1e-9)))
    rounds = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        rounds.append((time.perf_counter() - t) / inner)
    return statistics.median(rounds)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_class() -> str:
    """The x86 class that decides both libraries' int8 kernels."""
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI (no AVX-512)"
    if "avx2" in flags:
        return "AVX2 + FMA, no VNNI"
    return platform.machine()


def torch_int8_exact() -> bool:
    """Whether torch's int8 Linear is exact for activations in 0..255 here (VNNI path) or
    saturates u8×s8 pair sums in int16 (its AVX2 path): 255·127 pairs probe it."""
    import torch

    w = torch.quantize_per_tensor(torch.full((1, 4), 127.0), 1.0, 0, torch.qint8)
    x = torch.quantize_per_tensor(torch.full((1, 4), 255.0), 1.0, 0, torch.quint8)
    y = torch.ops.quantized.linear(x, torch.ops.quantized.linear_prepack(w, None), 1000.0, 0)
    return int(y.int_repr().reshape(-1)[0]) == 130


def machine_info() -> dict[str, Any]:
    import ferroquant as fq
    import torch

    exact = torch_int8_exact()
    return {
        "cpu": cpu_model(),
        "cpu_class": cpu_class(),
        "torch": torch.__version__,
        "torch_int8_path": ("VNNI, exact" if exact else "AVX2 vpmaddubsw, saturates above 127")
        + "".join(
            f" ({name}=AVX2)"
            for name in (TORCH_AVX2_ENV, *TORCH_AVX2_EXTRA_ENV)
            if os.environ.get(name, "").upper() == "AVX2"
        ),
        "ferroquant": fq.__version__,
        "engine": fq.backends.current_engine(),
        "engines": fq.backends.supported_engines,
    }


def describe(info: dict[str, Any]) -> str:
    """One line for the top of a benchmark table."""
    return (
        f"CPU: {info['cpu']} ({info['cpu_class']}); torch int8 path: {info['torch_int8_path']}; "
        f"ferroquant engine: {info['engine']} (available: {', '.join(info['engines'])})"
    )


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
