"""Average pooling of quint8 data in one Rust pass over the channels-last bytes.

torch's window rules (output sizes with ``ceil_mode``, ``count_include_pad``, ``divisor_override``,
adaptive windows) are computed here per axis; the kernel sums each window exactly and applies
``rne(Σ(q − zp) / divisor + zp)`` (docs/numerics.md). Anything torch would reject, or that this path
does not cover, returns None and the float path decides (raising torch's own errors)."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import torch

from . import _core
from ._layout import from_nhwc, nhwc_numpy

Window = tuple[list[int], list[int], list[int]]

AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _ints(v: Any, n: int, lo: int) -> Optional[list[int]]:
    """``v`` (an int or ``n`` ints) as ``n`` ints ≥ ``lo``, or None."""
    items = list(v) if isinstance(v, (tuple, list)) else [v] * n
    if len(items) != n or not all(isinstance(i, int) and not isinstance(i, bool) and i >= lo for i in items):
        return None
    return items


@functools.lru_cache(maxsize=256)
def _axis(n: int, k: int, s: int, p: int, ceil_mode: bool, include_pad: bool) -> Optional[Window]:
    """torch's windows of an average pool along an axis of ``n`` (``pooling_output_shape``, then
    ``avg_pool``'s clipping), or None where torch raises or a window would be empty."""
    if p > k // 2:
        return None
    out = (n + 2 * p - k + ((s - 1) if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    if out < 1:
        return None
    starts, ends, counts = [], [], []
    for o in range(out):
        a = o * s - p
        b = min(a + k, n + p)
        size = b - a
        a, b = max(a, 0), min(b, n)
        if b <= a:
            return None
        starts.append(a)
        ends.append(b)
        counts.append(size if include_pad else b - a)
    return starts, ends, counts


@functools.lru_cache(maxsize=256)
def _adaptive_axis(n: int, o: int) -> Optional[Window]:
    """torch's adaptive windows: ``floor(i·n/o) .. ceil((i+1)·n/o)``."""
    if o < 1 or n < 1:
        return None
    starts = [(i * n) // o for i in range(o)]
    ends = [((i + 1) * n + o - 1) // o for i in range(o)]
    return starts, ends, [e - s for s, e in zip(starts, ends)]


Windows = tuple[list[Window], Optional[int]]


def avg_windows(nd: int, shape: Sequence[int], args: tuple, kwargs: dict) -> Optional[Windows]:
    """Per spatial axis windows and the divisor override of ``avg_pool{nd}d(x, *args, **kwargs)``
    on an input of ``shape`` (``[N, C, *spatial]``), or None."""
    params = dict(zip(AVG_POOL_ARGS, args))
    params.update(kwargs)
    if set(params) - set(AVG_POOL_ARGS):
        return None
    k = _ints(params.get("kernel_size"), nd, 1)
    stride = params.get("stride")
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else _ints(stride, nd, 1)
    p = _ints(params.get("padding", 0), nd, 0)
    divisor = params.get("divisor_override")
    ceil_mode, include_pad = params.get("ceil_mode", False), params.get("count_include_pad", True)
    if k is None or s is None or p is None or not isinstance(ceil_mode, bool) or not isinstance(include_pad, bool):
        return None
    if divisor is not None and (not isinstance(divisor, int) or isinstance(divisor, bool) or divisor <= 0):
        return None
    windows = []
    for i in range(nd):
        w = _axis(shape[2 + i], k[i], s[i], p[i], ceil_mode, include_pad)
        if w is None:
            return None
        windows.append(w)
    return windows, divisor


def adaptive_windows(nd: int, shape: Sequence[int], args: tuple, kwargs: dict) -> Optional[list[Window]]:
    """Per spatial axis windows of ``adaptive_avg_pool{nd}d(x, output_size)``, or None."""
    params = dict(zip(("output_size",), args))
    params.update(kwargs)
    if set(params) != {"output_size"}:
        return None
    sizes = params["output_size"]
    sizes = list(sizes) if isinstance(sizes, (tuple, list, torch.Size)) else [sizes] * nd
    if len(sizes) != nd:
        return None
    windows = []
    for i in range(nd):
        n = shape[2 + i]
        o = n if sizes[i] is None else sizes[i]
        if not isinstance(o, int) or isinstance(o, bool):
            return None
        w = _adaptive_axis(n, o)
        if w is None:
            return None
        windows.append(w)
    return windows


def avg_pool_u8(
    d: torch.Tensor, nd: int, windows: list[Window], divisor: Optional[int], zp: int, qmin: int, qmax: int
) -> torch.Tensor:
    """The pooled quint8 data of ``d`` (``[N, C, *spatial]`` uint8) over ``windows``: channels-last
    when the input is, else contiguous."""
    lift = 3 - nd
    cl = nhwc_numpy(d)
    x5 = cl.reshape(cl.shape[0], *([1] * lift), *cl.shape[1:])
    whole: Window = ([0], [1], [1])
    out = _core.avg_pool_nhwc(x5, [whole] * lift + windows, divisor, zp, qmin, qmax)
    y = from_nhwc(out.reshape(out.shape[0], *out.shape[4 - nd : 4], out.shape[4]))
    return y if cl.flags.c_contiguous else y.contiguous()
