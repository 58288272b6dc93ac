"""Runs a fixed set of ferroquant kernels from a wheel's extension on every engine the CPU offers and
prints one SHA-256 digest of all outputs per engine, as JSON. Needs only numpy (no torch), so it
runs under QEMU with an aarch64 Python as well as on x86-64; scripts/test-wheel-aarch64.sh compares
the digests across engines and across the two architectures (results are bit-identical on every
ISA path by design).

    python wheel-kernels.py PACKAGE_DIR     (the folder holding _core.abi3.so)
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import platform
import sys
import types

import numpy as np


def load_core(pkg_dir: str) -> types.ModuleType:
    pkg = types.ModuleType("ferroquant")
    pkg.__path__ = [pkg_dir]
    sys.modules["ferroquant"] = pkg
    loader = importlib.machinery.ExtensionFileLoader("ferroquant._core", pkg_dir + "/_core.abi3.so")
    spec = importlib.util.spec_from_loader("ferroquant._core", loader)
    assert spec is not None
    core = importlib.util.module_from_spec(spec)
    loader.exec_module(core)
    return core


def run_all(core: types.ModuleType) -> list[np.ndarray]:
    """Every output of the fixed cases, in order (inputs from a seeded MT19937: same on any machine)."""
    rng = np.random.RandomState(1234)
    outs: list[np.ndarray] = []
    x = (rng.standard_normal((7, 33)) * 3).astype(np.float32)
    outs.append(core.quantize_per_tensor(x, 0.05, 128, 0, 255, "quint8"))
    outs.append(core.quantize_per_tensor(x, 0.03, 0, -128, 127, "qint8"))

    # Linear: dynamic and static, per-tensor and per-channel, GEMV and GEMM shapes, 1 and 2 threads
    for m, k, n in ((1, 65, 17), (7, 64, 64), (33, 200, 48), (64, 17, 65)):
        w = rng.randint(-127, 128, size=(n, k)).astype(np.int8)
        bias = rng.standard_normal(n).astype(np.float32)
        for scales, zps in (
            (np.array([0.01], np.float32), np.array([0], np.int32)),
            ((rng.rand(n) * 0.02 + 0.001).astype(np.float32), np.zeros(n, np.int32)),
        ):
            packed = core.PackedLinear(w, scales, zps)
            xf = (rng.standard_normal((m, k)) * 2).astype(np.float32)
            xq = rng.randint(0, 256, size=(m, k)).astype(np.uint8)
            for threads in (1, 2):
                y, _, _ = packed.linear_dynamic(xf, bias, threads=threads)
                outs.append(y)
                outs.append(packed.linear_static(xq, 0.02, 120, bias, 0.5, 100, 0, 255, threads=threads))
                outs.append(packed.linear_static(xq, 0.02, 120, None, 0.3, 3, -128, 127, relu=True, out_dtype="qint8"))

    # Conv: 3x3, 1x1, strided/dilated 5x5, depthwise, grouped, 1-D and 3-D; input [N, *spatial, C]
    convs = (  # (cin, cout, groups, kernel dhw, stride, padding, dilation, spatial)
        (16, 32, 1, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), (13, 11)),
        (64, 24, 1, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), (9, 7)),
        (8, 16, 1, (1, 5, 5), (1, 2, 2), (0, 2, 2), (1, 2, 2), (17, 15)),
        (24, 24, 24, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), (15, 9)),
        (32, 32, 32, (1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1), (16, 16)),
        (32, 64, 8, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), (10, 10)),
        (12, 20, 1, (1, 1, 3), (1, 1, 1), (0, 0, 1), (1, 1, 1), (31,)),
        (4, 8, 1, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (5, 6, 7)),
    )
    for cin, cout, groups, kernel, stride, padding, dilation, spatial in convs:
        w = rng.randint(-127, 128, size=(cout, cin // groups, *kernel)).astype(np.int8)
        scales = (rng.rand(cout) * 0.02 + 0.001).astype(np.float32)
        packed = core.PackedConv(
            w, scales, np.zeros(cout, np.int32), list(stride), list(padding), list(dilation), groups
        )
        xq = rng.randint(0, 256, size=(2, *spatial, cin)).astype(np.uint8)
        bias = rng.standard_normal(cout).astype(np.float32)
        for threads in (1, 2):
            outs.append(packed.conv_static(xq, 0.02, 117, bias, 0.4, 90, 0, 255, threads=threads))
        outs.append(packed.conv_static(xq, 0.02, 117, None, 0.25, 0, 0, 255, relu=True))

    # elementwise: fused add, a lookup table, max and average pooling, dequantize
    a = rng.randint(0, 256, size=(3, 5, 7, 19)).astype(np.uint8)
    b = rng.randint(0, 256, size=(3, 5, 7, 19)).astype(np.uint8)
    outs.append(core.add_requant(a, 0.05, 120, b, 0.03, 130, 0.06, 125, 0, 255))
    outs.append(core.add_requant(a, 0.05, 120, b, 0.03, 130, 0.04, 0, 0, 255, relu=True))
    outs.append(core.lut_u8(a, rng.randint(0, 256, size=256).astype(np.uint8)))
    x5 = a.reshape(3, 1, 5, 7, 19)
    outs.append(core.max_pool_nhwc(x5, [1, 3, 3], [1, 2, 2], [0, 1, 1], [1, 1, 1]))
    windows = [([0], [1], [1]), ([0, 2], [3, 5], [3, 3]), ([0, 3], [4, 7], [4, 4])]
    outs.append(core.avg_pool_nhwc(x5, windows, None, 120, 0, 255))
    outs.append(core.dequantize_per_tensor(a, 0.05, 120))

    # fake quantization (QAT): per tensor and per channel, values and gradient mask
    xf = (rng.standard_normal((6, 9, 11)) * 3).astype(np.float32)
    outs.extend(core.fake_quantize(xf, np.array([0.03], np.float32), np.array([7], np.int32), -1, 0, 255))
    scales = (rng.rand(9) * 0.05 + 0.005).astype(np.float32)
    outs.extend(core.fake_quantize(xf, scales, np.zeros(9, np.int32), 1, -128, 127))
    return outs


def main() -> None:
    core = load_core(sys.argv[1])
    digests = {}
    for engine in core.available_engines():
        core.set_engine(engine)
        h = hashlib.sha256()
        for out in run_all(core):
            arr = np.ascontiguousarray(out)
            h.update(str((arr.dtype.str, arr.shape)).encode())
            h.update(arr.tobytes())
        digests[engine] = h.hexdigest()
    core.set_engine("auto")
    print(json.dumps({"machine": platform.machine(), "version": core.__version__, "digests": digests}))


if __name__ == "__main__":
    main()
