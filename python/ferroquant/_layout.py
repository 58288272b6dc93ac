"""Channels-last views between torch and the kernels: activations are ``[N, C, *spatial]``
tensors with channels-last memory; the kernels take and return ``[N, *spatial, C]`` arrays.
Numpy transposes (no copy) cost half of torch's ``movedim``, which matters on small layers."""

from __future__ import annotations

import numpy as np
import torch


def nhwc_numpy(data: torch.Tensor) -> np.ndarray:
    """``data`` ``[N, C, *spatial]`` as a numpy view ``[N, *spatial, C]`` (no copy; contiguous
    when ``data`` is channels-last)."""
    return nhwc_view(data.numpy())


def nhwc_view(a: np.ndarray) -> np.ndarray:
    """``a`` ``[N, C, *spatial]`` viewed as ``[N, *spatial, C]``."""
    return a.transpose(_TO_NHWC.get(a.ndim) or (0, *range(2, a.ndim), 1))


def from_nhwc(out: np.ndarray) -> torch.Tensor:
    """A kernel's ``[N, *spatial, C]`` array as a tensor ``[N, C, *spatial]`` viewing it
    (channels-last memory, no copy)."""
    nd = out.ndim
    return torch.from_numpy(out.transpose(_FROM_NHWC.get(nd) or (0, nd - 1, *range(1, nd - 1))))


# the permutations of the usual ranks, built once
_TO_NHWC = {n: (0, *range(2, n), 1) for n in (3, 4, 5)}
_FROM_NHWC = {n: (0, n - 1, *range(1, n - 1)) for n in (3, 4, 5)}
