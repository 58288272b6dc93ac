"""Whole models: ferroquant vs torch's int8 engine (and fp32), same process, one thread.

    python benches/bench_models.py [--threads 1] [--seq 128] [--models encoder,resnet18,mobilenet_v2]
                                   [--engine auto] [--torch-avx2] [--cnn-mode fx|eager] [--peers]
                                   [--parallel-min-macs N] [--json out.json]

Models from shared/design/ANCHORS.md: the 4-layer BERT-base-size encoder (dynamic
quantization of every nn.Linear, each library's default dynamic qconfig), T=128, batch 1. Reports
median ms, ratios and the largest error vs fp32. The AVX2-only view on any x86 machine:
``--engine avx2 --torch-avx2``.

ResNet-18 and MobileNetV2 (benches/models.py, random weights): by default FX graph mode on the
plain float definitions (residual ``+``, ``torch.flatten``; ``prepare_fx`` / ``convert_fx`` with
``get_default_qconfig_mapping("x86")`` in both libraries — the API users would use); with
``--cnn-mode eager`` the eager-ready form instead (QuantStub, FloatFunctional, ``fuse_modules``,
``get_default_qconfig("x86")``). The same float weights, calibrated on the same random batches,
batch 1, 224x224. Reports median ms, the cosine similarity
of each int8 output with the fp32 one, and state_dict sizes (bytes of ``torch.save``).

``--peers`` adds other engines' int8 flows on the same float CNNs, calibration batches and input
(benches/peers.py): onnxruntime (torch.onnx.export, ``quantize_static`` QDQ, per-channel) and
OpenVINO (``convert_model``, ``nncf.quantize``), each with ``--threads`` threads; reported as
median ms, cosine vs fp32 and ms / ferroquant ms. ``pip install '.[bench]'`` installs them; a
missing one is skipped with a note.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import warnings
from typing import Any

import ferroquant as fq
import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import peers  # noqa: E402
from _common import (  # noqa: E402
    add_torch_avx2_flag,
    apply_torch_avx2_flag,
    describe,
    machine_info,
    median_seconds,
    write_json,
)
from models import Encoder, MobileNetV2, ResNet18, init_weights  # noqa: E402

warnings.filterwarnings("ignore")
import torch.ao.nn.quantized as tnnq  # noqa: E402  (the reference engine, benchmarks only)
import torch.ao.quantization as tq  # noqa: E402

CNNS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}
RNNS = ("lstm", "gru")
MODELS = ("encoder", "transformer", *RNNS, *CNNS)
CNN_TITLES = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2"}


def _compare_dynamic(title: str, fp32: Any, torch_int8: Any, ours: Any) -> dict:
    """fp32, torch.ao's and ferroquant's model (each a zero-argument call) timed in one run, with
    the outputs' largest error against fp32 and ferroquant's cosine to it."""
    with torch.no_grad():
        ref, out = fp32(), ours()
        err_ours = (out - ref).abs().max().item()
        err_torch = (torch_int8() - ref).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(out.reshape(-1), ref.reshape(-1), dim=0).item()
        t_fp32 = median_seconds(fp32, min_time=2.0, repeats=9)
        t_torch = median_seconds(torch_int8, min_time=2.0, repeats=9)
        t_ours = median_seconds(ours, min_time=2.0, repeats=9)
    return {
        "model": title,
        "fp32_ms": t_fp32 * 1e3,
        "torch_int8_ms": t_torch * 1e3,
        "ferroquant_ms": t_ours * 1e3,
        "ratio": t_torch / t_ours,
        "ratio_fp32": t_fp32 / t_ours,
        "cosine_ferroquant": cos,
        "max_abs_err_ferroquant": err_ours,
        "max_abs_err_torch": err_torch,
    }


def bench_encoder(seq: int) -> dict:
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(1, seq, 768)
    ours = fq.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=fq.qint8)
    theirs = tq.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    return _compare_dynamic(
        f"4-layer encoder d=768 T={seq} (dynamic)", lambda: model(x), lambda: theirs(x), lambda: ours(x)
    )


def bench_transformer(seq: int) -> dict:
    """torch's own nn.TransformerEncoder (d=768, 12 heads, ff=3072, 4 layers, batch_first, defaults:
    fast path on), batch 1: ferroquant with {nn.Linear, nn.MultiheadAttention}, torch.ao with the
    Linear layers it can reach ({nn.Linear}: linear1 / linear2; attention stays float)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True)
    model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
    x = torch.randn(1, seq, 768)
    ours = fq.quantize_dynamic(copy.deepcopy(model), {nn.Linear, nn.MultiheadAttention}, dtype=fq.qint8)
    theirs = tq.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)

    def torch_int8() -> torch.Tensor:
        # torch.ao's dynamic model fails in the fused fast path ('function' object has no attribute
        # 'device'): it only runs with the fast path switched off
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return theirs(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    row = _compare_dynamic("", lambda: model(x), torch_int8, lambda: ours(x))
    row["model"] = (
        f"nn.TransformerEncoder 4x(d=768, 12 heads) T={seq}, MHA quantized (cos {row['cosine_ferroquant']:.5f})"
    )
    return row


class Tagger(nn.Module):
    """The issue's sequence model: a 2-layer LSTM (or GRU) 512→1024, then Linear 1024→64."""

    def __init__(self, cell: type) -> None:
        super().__init__()
        self.rnn = cell(512, 1024, num_layers=2)
        self.head = nn.Linear(1024, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def bench_rnn(kind: str, seq: int = 64) -> dict:
    """2-layer LSTM / GRU tagger, T=64, batch 1: each library's quantize_dynamic with its default spec."""
    torch.manual_seed(0)
    model = Tagger(nn.LSTM if kind == "lstm" else nn.GRU).eval()
    x = torch.randn(seq, 1, 512)
    ours = fq.quantize_dynamic(copy.deepcopy(model), dtype=fq.qint8)
    theirs = tq.quantize_dynamic(copy.deepcopy(model), dtype=torch.qint8)
    title = f"2-layer {kind.upper()} 512→1024 T={seq} + Linear 1024→64 (dynamic)"
    return _compare_dynamic(title, lambda: model(x), lambda: theirs(x), lambda: ours(x))


def _state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _quantize_cnn(name: str, lib: Any, float_functional: type, ref: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """The model ``name`` built with ``lib``'s stubs and ``float_functional`` (``lib`` is
    ``ferroquant`` or ``torch.ao.quantization``), loaded with ``ref``'s float weights, fused,
    calibrated on ``calib`` and converted with the x86 qconfig."""
    model = CNNS[name](lib.QuantStub, lib.DeQuantStub, float_functional).eval()
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        if not torch.equal(model(calib[0]), ref(calib[0])):
            raise RuntimeError(f"{name}: the float model built with {lib.__name__}'s stubs differs from the reference")
    model.fuse_model(lib.fuse_modules)
    model.qconfig = lib.get_default_qconfig("x86")
    prepared = lib.prepare(model)
    with torch.no_grad():
        for batch in calib:
            prepared(batch)
    return lib.convert(prepared)


def _quantize_cnn_fx(fx_module: Any, mapping: Any, ref: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """The plain float model through ``fx_module``'s prepare_fx / convert_fx (ferroquant's or
    torch.ao's quantize_fx), calibrated on ``calib``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = fx_module.prepare_fx(copy.deepcopy(ref), mapping, (calib[0],))
        with torch.no_grad():
            for batch in calib:
                prepared(batch)
        return fx_module.convert_fx(prepared)


def bench_cnn(
    name: str, size: int = 224, calib_batches: int = 3, with_peers: bool = False, threads: int = 1, mode: str = "fx"
) -> dict:
    torch.manual_seed(0)
    ref = CNNS[name]().eval()
    init_weights(ref)
    calib = [torch.randn(2, 3, size, size) for _ in range(calib_batches)]
    x = torch.randn(1, 3, size, size)
    if mode == "fx":
        import torch.ao.quantization.quantize_fx as tqfx

        ours = _quantize_cnn_fx(fq.quantize_fx, fq.get_default_qconfig_mapping("x86"), ref, calib)
        theirs = _quantize_cnn_fx(tqfx, tq.get_default_qconfig_mapping("x86"), ref, calib)
    else:
        ours = _quantize_cnn(name, fq, fq.nn.quantized.FloatFunctional, ref, calib)
        theirs = _quantize_cnn(name, tq, tnnq.FloatFunctional, ref, calib)
    with torch.no_grad():
        y_ref, y_ours, y_torch = ref(x), ours(x), theirs(x)
        t_fp32 = median_seconds(lambda: ref(x), min_time=1.0, repeats=7)
        t_torch = median_seconds(lambda: theirs(x), min_time=1.0, repeats=7)
        t_ours = median_seconds(lambda: ours(x), min_time=1.0, repeats=7)
    row = {
        "model": f"{CNN_TITLES[name]} 1x3x{size}x{size} (static, x86 qconfig, {mode})",
        "fp32_ms": t_fp32 * 1e3,
        "torch_int8_ms": t_torch * 1e3,
        "ferroquant_ms": t_ours * 1e3,
        "ratio": t_torch / t_ours,
        "cosine_ferroquant": _cosine(y_ours, y_ref),
        "cosine_torch": _cosine(y_torch, y_ref),
        "state_dict_bytes_fp32": _state_dict_bytes(ref),
        "state_dict_bytes_torch_int8": _state_dict_bytes(theirs),
        "state_dict_bytes_ferroquant": _state_dict_bytes(ours),
    }
    if with_peers:
        row["peers"] = peers.bench_peers(CNN_TITLES[name], ref, calib, x, y_ref, threads, t_ours * 1e3, median_seconds)
    return row


def _model_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return names


def _print_encoder_table(rows: list[dict]) -> None:
    print(
        "| model | fp32 ms | torch int8 ms | ferroquant ms | speedup vs torch int8 | speedup vs fp32 "
        "| max abs err (fq / torch) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['fp32_ms']:.2f} | {r['torch_int8_ms']:.2f} | {r['ferroquant_ms']:.2f} | "
            f"{r['ratio']:.2f}x | {r['fp32_ms'] / r['ferroquant_ms']:.2f}x | "
            f"{r['max_abs_err_ferroquant']:.3g} / {r['max_abs_err_torch']:.3g} |"
        )


def _print_cnn_table(rows: list[dict]) -> None:
    print(
        "| model | fp32 ms | torch int8 ms | ferroquant ms | speedup vs torch int8 | cosine vs fp32 (fq / torch) "
        "| state_dict MB (fp32 / torch int8 / fq) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sizes = [r[f"state_dict_bytes_{k}"] / 1e6 for k in ("fp32", "torch_int8", "ferroquant")]
        print(
            f"| {r['model']} | {r['fp32_ms']:.2f} | {r['torch_int8_ms']:.2f} | {r['ferroquant_ms']:.2f} | "
            f"{r['ratio']:.2f}x | {r['cosine_ferroquant']:.5f} / {r['cosine_torch']:.5f} | "
            f"{sizes[0]:.2f} / {sizes[1]:.2f} / {sizes[2]:.2f} |"
        )


def _print_peer_table(rows: list[dict]) -> None:
    """The CNN rows again, each followed by the other engines' int8 rows (--peers); the ratio is
    this row's ms / ferroquant's ms (above 1: ferroquant is faster)."""
    print("| model, int8 engine | int8 ms | ms / ferroquant ms | cosine vs fp32 |")
    print("|---|---|---|---|")
    for r in rows:
        title = r["model"].split(" 1x", 1)[0]
        fq_ms = r["ferroquant_ms"]
        print(f"| {title} ferroquant | {fq_ms:.2f} | 1.00 | {r['cosine_ferroquant']:.5f} |")
        print(
            f"| {title} torch.ao int8 | {r['torch_int8_ms']:.2f} | {r['torch_int8_ms'] / fq_ms:.2f} | "
            f"{r['cosine_torch']:.5f} |"
        )
        for p in r.get("peers", []):
            if "error" in p:
                print(f"| {p['model']} | not available: {p['error']} | | |")
            else:
                print(f"| {p['model']} | {p['int8_ms']:.2f} | {p['ratio_vs_ferroquant']:.2f} | {p['cosine']:.5f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument(
        "--models",
        type=_model_list,
        default=list(MODELS),
        help=f"comma-separated, from {', '.join(MODELS)} (default: all)",
    )
    ap.add_argument("--engine", default="auto", help="ferroquant engine (auto or a name)")
    ap.add_argument(
        "--cnn-mode",
        choices=("fx", "eager"),
        default="fx",
        help="CNNs through FX graph mode on the plain definitions (default) or eager mode",
    )
    ap.add_argument(
        "--peers",
        action="store_true",
        help="also onnxruntime and OpenVINO+NNCF int8 on the CNNs (benches/peers.py; pip install '.[bench]')",
    )
    ap.add_argument(
        "--parallel-min-macs",
        type=int,
        default=None,
        help="ferroquant's parallel threshold in multiply-adds (_core.set_parallel_min_macs; default: the kernels')",
    )
    ap.add_argument("--json")
    add_torch_avx2_flag(ap)
    args = ap.parse_args()
    apply_torch_avx2_flag(args)
    if args.parallel_min_macs is not None:
        fq._core.set_parallel_min_macs(args.parallel_min_macs)
    torch.set_num_threads(args.threads)
    fq.set_num_threads(args.threads)
    fq.backends.engine = args.engine
    torch.backends.quantized.engine = "x86"
    info = machine_info()
    rows = [bench_encoder(args.seq)] if "encoder" in args.models else []
    rows += [bench_transformer(args.seq)] if "transformer" in args.models else []
    rows += [bench_rnn(kind) for kind in RNNS if kind in args.models]
    if args.peers:
        for engine, pip in peers.missing().items():
            print(f"note: --peers skips {engine}: not installed ({pip})")
    cnn_rows = [
        bench_cnn(name, with_peers=args.peers, threads=args.threads, mode=args.cnn_mode)
        for name in CNNS
        if name in args.models
    ]
    print(f"# models: ferroquant vs torch {info['torch']} int8, {args.threads} thread(s)")
    print(describe(info))
    if rows:
        print()
        _print_encoder_table(rows)
    if cnn_rows:
        print()
        _print_cnn_table(cnn_rows)
        if args.peers:
            print()
            print(f"other engines (--peers): {', '.join(f'{k} {v}' for k, v in peers.versions().items()) or 'none'}")
            print()
            _print_peer_table(cnn_rows)
    if args.json:
        payload = {"machine": info, "threads": args.threads, "rows": rows, "cnn_rows": cnn_rows}
        if args.peers:
            payload["peer_versions"] = peers.versions()
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
