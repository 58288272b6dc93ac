"""Thread count for ferroquant's kernels.

Until :func:`set_num_threads` is called, ferroquant follows ``torch.get_num_threads()``.
Results are identical for every thread count (work is split over output tiles only). The
kernels use at most the CPUs this process may run on (``_core.max_threads()``): asking for more
threads than that uses that many.

Where torch runs its CPU ops on OpenMP (the PyPI builds), ferroquant's parallel calls run on
torch's own OpenMP threads (the same team, warm right after torch's ops) instead of a second pool
competing for the same cores; elsewhere, or with ``FERROQUANT_THREADS=own``, on ferroquant's own
bounded pool. Results are the same either way.
"""

from __future__ import annotations

import os
import re

import torch

from . import _core

_num_threads: int | None = None
# the CPUs this process may use, fixed for its lifetime (read once: get_num_threads runs per call)
_MAX_THREADS = _core.max_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of threads ferroquant's kernels use (``n >= 1``; values above the number
    of CPUs this process may use are capped to it)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int >= 1, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads expects an int >= 1, got {n}")
    _num_threads = min(n, _MAX_THREADS)


def get_num_threads() -> int:
    """The number of threads ferroquant's kernels use (at most the CPUs this process may use)."""
    n = _num_threads if _num_threads is not None else torch.get_num_threads()
    return max(1, min(n, _MAX_THREADS))


def _reset_num_threads() -> None:
    """Back to following torch.get_num_threads() (for tests)."""
    global _num_threads
    _num_threads = None


def _attach_torch_openmp() -> bool:
    """Points the kernels at the OpenMP runtime torch loaded (see the module docstring).
    Returns whether parallel calls now run on it."""
    if os.environ.get("FERROQUANT_THREADS", "").strip().lower() == "own":
        return False
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:  # not Linux
        return False
    libs = re.findall(r"(/\S*/lib(?:gomp|iomp5|omp)\b[^/\s]*\.so[^/\s]*)", maps)
    return any(_core.use_openmp_runtime(path) for path in dict.fromkeys(libs))
