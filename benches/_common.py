"""Shared timing helpers for the benchmarks: medians of repeated calls, machine description."""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any, Callable


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


def machine_info() -> dict[str, Any]:
    import ferroquant as fq
    import torch

    return {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "ferroquant": fq.__version__,
        "engine": fq.backends.current_engine(),
        "engines": fq.backends.supported_engines,
    }


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
