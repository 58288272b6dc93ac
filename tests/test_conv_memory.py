"""Peak extra memory of a quantized conv call (the bug report's case: Conv2d(64, 64, 3, padding=1)
on 1x64x512x512): at most 2x its im2col matrix on every engine, and within 2x torch's own
quantized conv. Measured in a fresh process with Linux's peak-RSS counter (reset through
/proc/self/clear_refs), so allocations in Rust count too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ferroquant as fq
import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, warnings
    import torch
    from torch import nn

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024

    which = sys.argv[1]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    conv = nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.rand(1, 64, 512, 512)
    if which == "torch":
        warnings.simplefilter("ignore")
        import torch.ao.nn.quantized as tnnq

        qc = tnnq.Conv2d(64, 64, 3, padding=1)
        qw = torch.quantize_per_channel(
            conv.weight.detach(), torch.full((64,), 0.01, dtype=torch.double), torch.zeros(64, dtype=torch.long), 0,
            torch.qint8,
        )
        qx = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)
    else:
        import ferroquant as fq
        from ferroquant.nn.quantized import Conv2d

        fq.backends.engine = which
        qc = Conv2d(64, 64, 3, padding=1)
        qw = fq.quantize_per_channel(
            conv.weight.detach(), torch.full((64,), 0.01), torch.zeros(64, dtype=torch.long), 0, fq.qint8
        )
        qx = fq.quantize_per_tensor(x, 1 / 255, 0, fq.quint8)
    qc.set_weight_bias(qw, conv.bias.detach())
    qc.scale, qc.zero_point = 0.05, 64
    y = qc(qx)
    del x, y
    peaks = []
    for _ in range(2):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        y = qc(qx)
        peaks.append(status("VmHWM") - before)
        del y
    print(json.dumps(min(peaks)))
    """
)

IM2COL_MIB = 512 * 512 * 64 * 9 / 2**20  # one byte per tap: 144 MiB


def _peak(which: str) -> float:
    # glibc serves large blocks from mmap and returns them on free only below its dynamic
    # threshold; a fixed threshold makes every large buffer show up in RSS while it lives, so the
    # peak counts live memory, not what the allocator happened to keep from earlier calls
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, which], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def torch_peak() -> float:
    return _peak("torch")


ENGINES = sorted({fq.backends.supported_engines[0], "avx2", "scalar"} & set(fq.backends.supported_engines))


@pytest.mark.parametrize("engine", ENGINES)
def test_conv_peak_memory_is_bounded(engine, torch_peak):
    peak = _peak(engine)
    assert peak <= 2 * IM2COL_MIB, f"{engine}: conv call peaked at +{peak:.0f} MiB, im2col is {IM2COL_MIB:.0f} MiB"
    # the output alone is 16 MiB: torch's peak is at least that
    assert peak <= 2 * max(torch_peak, 16), f"{engine}: +{peak:.0f} MiB vs torch's +{torch_peak:.0f} MiB"
