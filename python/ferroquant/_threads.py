"""Thread count for ferroquant's kernels.

Until :func:`set_num_threads` is called, ferroquant follows ``torch.get_num_threads()``.
Results are identical for every thread count (work is split over output tiles only).
"""

from __future__ import annotations

import torch

_num_threads: int | None = None


def set_num_threads(n: int) -> None:
    """Sets the number of threads ferroquant's kernels use (``n >= 1``)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads expects an integer >= 1, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    """The number of threads ferroquant's kernels use."""
    return _num_threads if _num_threads is not None else torch.get_num_threads()


def _reset_num_threads() -> None:
    """Back to following torch.get_num_threads() (for tests)."""
    global _num_threads
    _num_threads = None
