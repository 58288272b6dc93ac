"""Python threads against the kernels: calls release the GIL only around Rust-owned memory, the
thread pool is shared, re-entrant and bounded, and several threads running one model get the
outputs of one thread."""

from __future__ import annotations

import os
import threading

import ferroquant as fq
import numpy as np
import pytest
import torch
from ferroquant import _core
from torch import nn


def _run_threads(n: int, body) -> list:
    results: list = [None] * n
    errors: list = []
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = body(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors, errors
    return results


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 8 * 8, 32)
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.flatten(1)))


def _static_model() -> nn.Module:
    torch.manual_seed(0)
    m = _Net().eval()
    m.qconfig = fq.get_default_qconfig("x86")
    p = fq.prepare(m)
    p(torch.randn(16, 3, 8, 8))
    return fq.convert(p)


@pytest.fixture(params=["openmp", "own"])
def thread_runtime(request):
    """Each test on torch's OpenMP threads (where torch has them) and on ferroquant's own pool."""
    before = _core.thread_runtime()
    if request.param == "openmp" and not _core.set_openmp_enabled(True):
        pytest.skip("torch does not run on an OpenMP runtime here")
    if request.param == "own":
        _core.set_openmp_enabled(False)
    yield request.param
    _core.set_openmp_enabled(before == "openmp")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_eight_threads_running_one_model_match_one_thread(kind, parallel_kernels, thread_runtime):
    torch.manual_seed(1)
    if kind == "static":
        model = _static_model()
        inputs = [torch.randn(4, 3, 8, 8) for _ in range(8)]
    else:
        model = fq.quantize_dynamic(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16)))
        inputs = [torch.randn(32, 64) for _ in range(8)]
    fq.set_num_threads(2)
    expected = [model(x) for x in inputs]
    for _ in range(3):
        got = _run_threads(8, lambda i: [model(inputs[i]) for _ in range(5)])
        for i, outs in enumerate(got):
            for y in outs:
                assert torch.equal(y, expected[i]), f"thread {i} differs"
    assert parallel_kernels() > 0
    assert _core.pool_workers() <= _core.max_threads() - 1


RESIZE_SCRIPT = """
import sys, threading
import numpy as np
from ferroquant import _core

which = sys.argv[1]
rng = np.random.default_rng(0)
n, k = 8192, 256
w = rng.integers(-128, 128, size=(16, k), dtype=np.int8)
packed = _core.PackedLinear(w, np.full(1, 0.01, np.float32), np.zeros(1, np.int32))
conv = _core.PackedConv(
    rng.integers(-128, 128, size=(4, 4, 1, 1, 3), dtype=np.int8), np.full(1, 0.01, np.float32),
    np.zeros(1, np.int32), [1, 1, 1], [0, 0, 1], [1, 1, 1], 1,
)
if which == "float":
    x = rng.standard_normal(n * k).astype(np.float32)
    calls = {
        "quantize": lambda a: _core.quantize_per_tensor(a, 0.05, 3, 0, 255, "quint8"),
        "linear_dynamic": lambda a: packed.linear_dynamic(a.reshape(-1, k))[0],
    }
else:
    x = rng.integers(0, 256, size=n * k, dtype=np.uint8)
    calls = {
        "dequantize": lambda a: _core.dequantize_per_tensor(a, 0.1, 7),
        "linear_static": lambda a: packed.linear_static(a.reshape(-1, k), 0.1, 7, None, 0.5, 100, 0, 255),
        "conv": lambda a: conv.conv_static(a.reshape(1, 1, 1, -1, 4), 0.1, 7, None, 0.5, 100, 0, 255),
    }
# every state the array can be in: as made, shrunk to 64 values, grown back (64 values + zeros)
small = x[:64].copy()
regrown = np.zeros_like(x)
regrown[:64] = small
states = [x.copy(), small, regrown]
def outcome(f, a):
    try:
        return f(a)
    except ValueError:
        return None  # this state is not a valid argument for f


want = {name: [o for o in (outcome(f, st) for st in states) if o is not None] for name, f in calls.items()}
stop = False

def resizer():
    while not stop:
        x.resize((64,), refcheck=False)  # frees the buffer the call may be reading
        x.resize((n * k,), refcheck=False)

t = threading.Thread(target=resizer)
t.start()
try:
    for i in range(100):
        for name, f in calls.items():
            try:
                got = f(x)
            except ValueError:
                continue  # a reshape of the shrunken array: an error, never a crash
            assert any(got.shape == e.shape and np.array_equal(got, e) for e in want[name]), name
finally:
    stop = True
    t.join()
print("ok")
"""


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_resizing_an_argument_from_another_thread_cannot_crash_a_call(kind):
    # numpy's resize(refcheck=False) frees the old buffer. Before the fix, the GIL-free kernel
    # read the freed buffer (a segfault), and then releasing the numpy borrow after the call
    # aborted the interpreter; now the argument is copied while the GIL is held and the borrow
    # ends before the GIL is released. In a subprocess, so a crash fails this test only.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", RESIZE_SCRIPT, kind], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok"), (r.returncode, r.stderr[-3000:])


def test_values_written_by_another_thread_are_seen_whole_or_not_at_all():
    # np.negative on a small array holds the GIL: every call sees all-old or all-new values.
    x = np.full(64, 0.5, np.float32)
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            np.negative(x, out=x)

    t = threading.Thread(target=flipper)
    t.start()
    try:
        for _ in range(2000):
            q = _core.quantize_per_tensor(x, 0.5, 10, 0, 255, "quint8")
            assert (q == 11).all() or (q == 9).all(), np.unique(q)
    finally:
        stop.set()
        t.join()


def test_strided_and_fortran_arrays_are_read_in_logical_order():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for view in (a.T, np.asfortranarray(a), a[:, ::-1], a[::-1, ::2], np.broadcast_to(a[:1], (4, 3))):
        got = _core.dequantize_per_tensor(view, 1.0, 0)
        assert np.array_equal(got, view.astype(np.float32)), view
    x = np.asfortranarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    assert np.array_equal(
        _core.quantize_per_tensor(x, 0.1, 0, -128, 127, "qint8"),
        _core.quantize_per_tensor(np.ascontiguousarray(x), 0.1, 0, -128, 127, "qint8"),
    )
    w = np.arange(-12, 12, dtype=np.int8).reshape(4, 6)
    pf = _core.PackedLinear(np.asfortranarray(w), np.ones(1, np.float32), np.zeros(1, np.int32))
    assert np.array_equal(pf.unpack(), w)


@pytest.mark.parametrize("spin_us", ["0", "10", "100000"])
def test_any_spin_setting_works(spin_us):
    import os
    import subprocess
    import sys

    code = (
        "import torch, ferroquant as fq\n"
        "from ferroquant import _core\n"
        "_core.set_parallel_min_macs(0); fq.set_num_threads(2)\n"
        "q = fq.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 64)))\n"
        "x = torch.randn(64, 64)\n"
        "a = [q(x) for _ in range(20)]\n"
        "assert all(torch.equal(a[0], b) for b in a)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "FERROQUANT_SPIN_US": spin_us}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_a_worker_the_os_refuses_means_fewer_threads_not_an_error():
    # Address space capped just above current use: starting a worker (its stack) fails. Before,
    # the call raised PanicException and every later call panicked again.
    import subprocess
    import sys

    code = (
        "import resource, numpy as np\n"
        "from ferroquant import _core\n"
        "rng = np.random.default_rng(0)\n"
        "w = rng.integers(-128, 128, size=(64, 256), dtype=np.int8)\n"
        "p = _core.PackedLinear(w, np.full(1, 0.01, np.float32), np.zeros(1, np.int32))\n"
        "x = rng.standard_normal((128, 256)).astype(np.float32)\n"
        "_core.set_parallel_min_macs(0)\n"
        "want = p.linear_dynamic(x, threads=1)[0]\n"
        "assert _core.pool_workers() == 0\n"
        "vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 20), resource.RLIM_INFINITY))\n"
        "for _ in range(3):\n"
        "    assert np.array_equal(p.linear_dynamic(x, threads=2)[0], want)\n"
        "assert _core.pool_workers() == 0\n"
        "print('ok')\n"
    )
    # ferroquant's own pool (on torch's OpenMP runtime, thread creation is that runtime's
    # business: libgomp ends the process, for torch's own ops too)
    env = {**os.environ, "FERROQUANT_THREADS": "own"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_both_thread_runtimes_give_the_same_bits(parallel_kernels):
    torch.manual_seed(3)
    model = _static_model()
    dyn = fq.quantize_dynamic(nn.Sequential(nn.Linear(96, 80)))
    x, xd = torch.randn(6, 3, 8, 8), torch.randn(40, 96)
    before = _core.thread_runtime()
    try:
        outs = {}
        for runtime in ("own", "openmp"):
            if not _core.set_openmp_enabled(runtime == "openmp") and runtime == "openmp":
                pytest.skip("torch does not run on an OpenMP runtime here")
            for threads in (1, 2):
                fq.set_num_threads(threads)
                outs[runtime, threads] = (model(x), dyn(xd))
        base = outs["own", 1]
        for key, (a, b) in outs.items():
            assert torch.equal(a, base[0]) and torch.equal(b, base[1]), key
        assert parallel_kernels() > 0
    finally:
        _core.set_openmp_enabled(before == "openmp")


def test_torch_openmp_runtime_is_used_where_torch_has_it():
    import subprocess
    import sys

    code = "import ferroquant, torch; from ferroquant import _core; print(_core.thread_runtime())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    assert r.stdout.strip() == ("openmp" if openmp else "own"), r.stderr
    env = {**os.environ, "FERROQUANT_THREADS": "own"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "own", r.stderr


def test_a_forked_child_runs_parallel_calls_without_hanging():
    # libgomp is not fork-safe: a parallel region in a forked child hangs (torch's own ops too,
    # unless the child sets one thread). A child therefore runs our calls on its own thread.
    import subprocess
    import sys

    code = (
        "import multiprocessing as mp, torch, ferroquant as fq\n"
        "from ferroquant import _core\n"
        "_core.set_parallel_min_macs(0); fq.set_num_threads(2)\n"
        "q = fq.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(256, 256)))\n"
        "x = torch.randn(64, 256)\n"
        "want = q(x)\n"
        "def child(conn):\n"
        "    conn.send((bool(torch.equal(q(x), want)), _core.thread_runtime()))\n"
        "ctx = mp.get_context('fork')\n"
        "a, b = ctx.Pipe()\n"
        "p = ctx.Process(target=child, args=(b,))\n"
        "p.start(); p.join(60)\n"
        "hung = p.is_alive()\n"
        "if hung: p.kill()\n"
        "print('hung' if hung else a.recv())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "(True, 'own')", (r.stdout, r.stderr[-2000:])
