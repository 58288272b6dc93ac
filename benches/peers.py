"""Other int8 engines for ``bench_models.py --peers``: onnxruntime (static QDQ) and OpenVINO + NNCF.

Each takes the float model (``benches/models.py``'s, no stubs), the bench's calibration batches and
its input, quantizes with its own post-training flow, and is timed the same way as the other rows
(``median_seconds``). The packages are imported inside the functions, so the bench runs without
them: ``missing()`` names what to ``pip install`` (``pip install '.[bench]'`` installs them all).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from typing import Any, Callable

import torch
from torch import nn

# engine -> (row label, the modules it imports, pip install line)
ENGINES = {
    "onnxruntime": ("onnxruntime QDQ int8", ("onnx", "onnxruntime"), "pip install onnx onnxruntime"),
    "openvino": ("OpenVINO + NNCF int8", ("openvino", "nncf"), "pip install openvino nncf"),
}
OPSET = 17


def missing() -> dict[str, str]:
    """engine -> the pip install line, for each engine whose packages are not importable."""
    return {
        engine: pip
        for engine, (_, modules, pip) in ENGINES.items()
        if any(importlib.util.find_spec(m) is None for m in modules)
    }


def versions() -> dict[str, str]:
    """Versions of the peer packages that are installed (read without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _samples(calib: list[torch.Tensor]) -> list[torch.Tensor]:
    """The calibration batches split into batch-1 samples (the same data; every peer model then has
    the bench's static input shape 1x3xHxW)."""
    return [s.unsqueeze(0).contiguous() for batch in calib for s in batch]


def _export_onnx(model: nn.Module, x: torch.Tensor, path: str) -> None:
    """The fp32 model as ONNX (the TorchScript exporter: it needs no extra packages; BN is folded)."""
    torch.onnx.export(
        model, (x,), path, opset_version=OPSET, dynamo=False, input_names=["input"], output_names=["output"]
    )


@contextlib.contextmanager
def _quiet():
    """Silences the peers' advice and progress bars (logging warnings, stdout) while quantizing."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _cosine(a: Any, b: torch.Tensor) -> float:
    a = torch.as_tensor(a, dtype=torch.float32)
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def onnxruntime_int8(
    model: nn.Module, calib: list[torch.Tensor], x: torch.Tensor, threads: int, tmp: str
) -> tuple[Callable[[], Any], dict]:
    """onnxruntime: torch.onnx.export, ``quantize_static`` (QDQ, per-channel QInt8 weights, QUInt8
    activations, MinMax over the calibration samples), an InferenceSession with ``threads`` intra-op
    threads. Returns the timed call and the settings worth recording."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_path, int8_path = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": s.numpy()} for s in _samples(calib)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    with _quiet():
        _export_onnx(model, x, fp32_path)
        # the default extra_options: pre-processing (quant_pre_process), DedicatedQDQPair or
        # asymmetric/symmetric switches changed nothing measurable here (within 3 %)
        quantize_static(
            fp32_path,
            int8_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(int8_path, opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return (lambda: sess.run(None, feed)[0]), {"opset": OPSET, "quant_format": "QDQ", "per_channel": True}


def openvino_int8(
    model: nn.Module, calib: list[torch.Tensor], x: torch.Tensor, threads: int, tmp: str
) -> tuple[Callable[[], Any], dict]:
    """OpenVINO: ``openvino.convert_model`` of the torch model (static input 1x3xHxW), ``nncf.quantize``
    over the calibration samples (default preset: symmetric weights and activations, per-channel
    weights), compiled for CPU with ``threads`` inference threads and the LATENCY hint. Returns the
    timed call (one infer request) and the settings worth recording (the precision OpenVINO runs
    the layers left in float in: bf16 by default on CPUs with AVX-512 BF16)."""
    import nncf
    import openvino as ov

    samples = _samples(calib)
    with _quiet():
        ov_model = ov.convert_model(model, example_input=x, input=[tuple(x.shape)])
        qmodel = nncf.quantize(ov_model, nncf.Dataset([s.numpy() for s in samples]), subset_size=len(samples))
    compiled = ov.Core().compile_model(qmodel, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    inp = x.numpy()
    out = compiled.output(0)
    info = {
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "inference_num_threads": compiled.get_property("INFERENCE_NUM_THREADS"),
    }
    return (lambda: request.infer({0: inp})[out]), info


FLOWS = {"onnxruntime": onnxruntime_int8, "openvino": openvino_int8}


def bench_peers(
    title: str,
    model: nn.Module,
    calib: list[torch.Tensor],
    x: torch.Tensor,
    y_ref: torch.Tensor,
    threads: int,
    ferroquant_ms: float,
    median_seconds: Callable[..., float],
) -> list[dict]:
    """One row per peer engine whose packages are installed: median ms of one call, the cosine of
    its output with the fp32 torch output ``y_ref``, and peer ms / ferroquant ms. An engine whose
    flow fails gives a row with ``error`` instead of timings."""
    rows = []
    skip = missing()
    vers = versions()
    for engine, flow in FLOWS.items():
        if engine in skip:
            continue
        label, modules, _ = ENGINES[engine]
        row: dict[str, Any] = {
            "model": f"{title} {label}",
            "engine": engine,
            "versions": {m: vers.get(m, "?") for m in modules},
        }
        try:
            with tempfile.TemporaryDirectory() as tmp:
                call, info = flow(model, calib, x, threads, tmp)
                row.update(info)
                y = call()
                seconds = median_seconds(call, min_time=1.0, repeats=7)
        except Exception as exc:  # a peer's failure is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        else:
            row["int8_ms"] = seconds * 1e3
            row["ratio_vs_ferroquant"] = seconds * 1e3 / ferroquant_ms
            row["cosine"] = _cosine(y, y_ref)
        rows.append(row)
    return rows
