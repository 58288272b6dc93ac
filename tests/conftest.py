"""Shared fixtures: torch.ao as the numerics reference, deterministic seeds, engine restore."""

from __future__ import annotations

import warnings

import ferroquant as fq
import pytest
import torch
from ferroquant._threads import _reset_num_threads

# torch.ao is our reference in tests only (the package never imports it).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.quantized.dynamic as tnnqd  # noqa: F401
    import torch.ao.quantization as tq  # noqa: F401


@pytest.fixture(autouse=True)
def _restore_global_state():
    torch.manual_seed(0)
    engine = fq.backends.engine
    yield
    fq.backends.engine = engine
    _reset_num_threads()


@pytest.fixture
def parallel_kernels():
    """Runs even small kernel calls on several threads (results never depend on it); yields a
    function returning how many multi-threaded calls ran since the fixture started."""
    from ferroquant import _core

    if _core.max_threads() < 2:
        pytest.skip("needs a machine with 2+ CPUs")
    old = _core.set_parallel_min_macs(0)
    start = _core.parallel_jobs()
    try:
        yield lambda: _core.parallel_jobs() - start
    finally:
        _core.set_parallel_min_macs(old)


def engines() -> list[str]:
    return list(fq.backends.supported_engines)
