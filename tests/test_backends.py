"""Engine selection and thread settings."""

from __future__ import annotations

import os
import subprocess
import sys

import ferroquant as fq
import pytest
import torch
from ferroquant import _core

NAMES = ["avx512vnni", "avxvnni", "avx2", "neon_dotprod", "neon", "scalar"]


def test_supported_engines_are_api_names_and_end_with_scalar():
    assert fq.backends.supported_engines[-1] == "scalar"
    assert set(fq.backends.supported_engines) <= set(NAMES)
    # the setting is "auto" unless FERROQUANT_ENGINE forces one (CI's AVX2-only view does)
    forced = os.environ.get("FERROQUANT_ENGINE", "auto")
    assert fq.backends.engine == forced
    assert fq.backends.current_engine() == (fq.backends.supported_engines[0] if forced == "auto" else forced)


def test_set_engine_by_name_and_errors():
    fq.backends.engine = "scalar"
    assert fq.backends.engine == "scalar" and fq.backends.current_engine() == "scalar"
    fq.backends.engine = "auto"
    with pytest.raises(ValueError, match="unknown engine"):
        fq.backends.engine = "sse9"
    missing = [n for n in NAMES if n not in fq.backends.supported_engines]
    for name in missing:
        with pytest.raises(RuntimeError, match="not available on this CPU"):
            fq.backends.engine = name


def _run(env_engine: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FERROQUANT_ENGINE=env_engine)
    code = "import ferroquant as fq; print(fq.backends.engine, fq.backends.current_engine())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_selects_engine():
    r = _run("scalar")
    assert r.returncode == 0 and r.stdout.split() == ["scalar", "scalar"], r.stderr
    r = _run("no_such_engine")
    assert r.returncode != 0 and "FERROQUANT_ENGINE" in r.stderr


def test_threads_follow_torch_until_set():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert fq.get_num_threads() == 1
        fq.set_num_threads(2)
        torch.set_num_threads(1)
        assert fq.get_num_threads() == min(2, _core.max_threads())
    finally:
        torch.set_num_threads(old)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="int >= 1"):
            fq.set_num_threads(bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="int >= 1"):
            fq.set_num_threads(bad)


def test_thread_setting_is_bounded_by_the_machine():
    fq.set_num_threads(100000)
    assert fq.get_num_threads() == _core.max_threads()
    q = fq.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(512, 512)))
    x = torch.randn(256, 512)
    fq.set_num_threads(1)
    base = q(x)
    fq.set_num_threads(10**30)
    assert torch.equal(q(x), base)
    # one pool, never more workers than CPUs - 1, whatever was asked
    assert _core.pool_workers() <= _core.max_threads() - 1


def test_thread_settings_do_not_pile_up_os_threads(parallel_kernels):
    q = fq.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(256, 256)))
    x = torch.randn(64, 256)
    fq.set_num_threads(2)
    q(x)
    tasks = len(os.listdir("/proc/self/task"))
    for n in (2, 3, 4, 64, 2, 100000):
        fq.set_num_threads(n)
        q(x)
    # before: a new pool per distinct count (2, 3, 4, 64 left 71 threads on a 2-core machine)
    assert len(os.listdir("/proc/self/task")) <= tasks + max(0, _core.max_threads() - 2)
    assert parallel_kernels() > 0


def test_torch_quantized_engine_plays_no_role():
    q = fq.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 8)))
    x = torch.randn(2, 8)
    a = q(x)
    old = torch.backends.quantized.engine
    try:
        for e in torch.backends.quantized.supported_engines:
            if e != "none":
                torch.backends.quantized.engine = e
                assert torch.equal(q(x), a)
    finally:
        torch.backends.quantized.engine = old
