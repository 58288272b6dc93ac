"""Package hygiene: no torch.ao / torch.quantization / torch.nn.quantized in the source, no
torch quantized dtypes used, import paths mirror torch.ao, stubs match the native module."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import ferroquant as fq
import pytest

PKG = pathlib.Path(fq.__file__).parent
FORBIDDEN_MODULES = ("torch.ao", "torch.quantization", "torch.nn.quantized")
# torch's quantized dtypes / qschemes and quantized-tensor factories: never used in our code
FORBIDDEN_ATTRS = {
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
    "quantize_per_tensor",
    "quantize_per_channel",
    "fake_quantize_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "int_repr",
    "_make_per_tensor_quantized_tensor",
    "quantized_max_pool2d",
}
INTEROP = {"interop.py"}  # the one module allowed to talk to torch.ao (future)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            names = [dotted]
            head, _, attr = dotted.rpartition(".")
            if head == "torch" and attr in FORBIDDEN_ATTRS:
                bad.append(f"{path.name}:{node.lineno} uses {dotted}")
        else:
            continue
        for n in names:
            if any(n == m or n.startswith(m + ".") for m in FORBIDDEN_MODULES):
                bad.append(f"{path.name}:{node.lineno} refers to {n}")
    return bad


def test_source_never_refers_to_torch_ao_or_quantized_dtypes():
    files = [p for p in PKG.rglob("*.py") if p.name not in INTEROP]
    assert len(files) > 10
    bad = [v for p in files for v in _violations(p)]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_violations(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import torch.ao.quantization as q\nfrom torch.nn.quantized import Linear\nx = torch.qint8\n")
    assert len(_violations(f)) == 3


# Modules that exist today, each with names it must export (and torch.ao's counterpart has).
IMPLEMENTED = {
    "observer": ["MinMaxObserver", "MovingAverageMinMaxObserver", "PerChannelMinMaxObserver", "HistogramObserver"],
    "fake_quantize": ["FakeQuantize"],
    "qconfig": ["QConfig", "get_default_qconfig", "default_dynamic_qconfig"],
    "qconfig_mapping": ["QConfigMapping"],
    "stubs": ["QuantStub", "DeQuantStub", "QuantWrapper"],
    "quantize": ["quantize_dynamic", "prepare", "convert", "propagate_qconfig_", "prepare_qat", "quantize_qat"],
    "nn.quantized": ["Linear", "Conv1d", "Conv2d", "Conv3d", "Quantize", "DeQuantize"]
    + ["FloatFunctional", "QFunctional", "Embedding", "EmbeddingBag", "LSTM", "MultiheadAttention"],
    "nn.quantized.dynamic": ["Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell"],
    "nn.quantized.functional": ["linear", "conv1d", "conv2d", "conv3d", "max_pool2d", "avg_pool2d"]
    + ["adaptive_avg_pool2d", "interpolate", "hardtanh", "hardswish", "elu", "leaky_relu", "hardsigmoid", "clamp"],
    "nn.quantizable": ["LSTM", "LSTMCell", "MultiheadAttention"],
    "nn.intrinsic": ["LinearReLU", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "ConvBn2d", "ConvBnReLU2d", "LinearBn1d"],
    "nn.intrinsic.quantized": ["LinearReLU", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d"],
    "nn.qat": ["Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "EmbeddingBag"],
    "nn.intrinsic.qat": ["ConvBn1d", "ConvBn2d", "ConvBn3d", "ConvBnReLU1d", "ConvBnReLU2d", "ConvBnReLU3d"]
    + ["ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "LinearReLU", "LinearBn1d", "freeze_bn_stats", "update_bn_stats"],
    "quantize_fx": ["prepare_fx", "prepare_qat_fx", "convert_fx", "fuse_fx", "convert_to_reference_fx"]
    + ["PrepareCustomConfig", "ConvertCustomConfig", "FuseCustomConfig"],
}
TORCH_AO = {
    "nn.quantized": "torch.ao.nn.quantized",
    "nn.quantized.dynamic": "torch.ao.nn.quantized.dynamic",
    "nn.quantized.functional": "torch.ao.nn.quantized.functional",
    "nn.quantizable": "torch.ao.nn.quantizable",
    "nn.intrinsic": "torch.ao.nn.intrinsic",
    "nn.intrinsic.quantized": "torch.ao.nn.intrinsic.quantized",
    "nn.qat": "torch.ao.nn.qat",
    "nn.intrinsic.qat": "torch.ao.nn.intrinsic.qat",
}


@pytest.mark.parametrize("mod", sorted(IMPLEMENTED))
def test_import_paths_mirror_torch_ao(mod):
    m = importlib.import_module(f"ferroquant.{mod}")
    missing = [n for n in IMPLEMENTED[mod] if not hasattr(m, n)]
    assert not missing, f"ferroquant.{mod} lacks {missing}"
    ref = importlib.import_module(TORCH_AO.get(mod, f"torch.ao.quantization.{mod}"))
    assert not [n for n in IMPLEMENTED[mod] if not hasattr(ref, n)], "names must be torch.ao's"
    for name in getattr(m, "__all__", []):
        assert hasattr(m, name), f"ferroquant.{mod}.__all__ names {name!r}, which does not exist"


def test_no_quantization_subpackage():
    with pytest.raises(ImportError):
        importlib.import_module("ferroquant.quantization")


def test_top_level_reexports():
    for name in [
        "quantize_dynamic",
        "MinMaxObserver",
        "HistogramObserver",
        "QConfig",
        "QConfigMapping",
        "get_default_qconfig",
        "default_dynamic_qconfig",
        "QTensor",
        "quantize_per_tensor",
        "quantize_per_channel",
        "dequantize",
        "QuantStub",
        "DeQuantStub",
        "QuantWrapper",
        "set_num_threads",
        "get_num_threads",
        "quint8",
        "qint8",
        "qint32",
        "quint4x2",
        "per_tensor_affine",
        "per_channel_symmetric",
        "FakeQuantize",
        "propagate_qconfig_",
        "memory_footprint",
    ]:
        assert hasattr(fq, name), name


def test_signatures_match_torch():
    import torch.ao.quantization as tq

    for name in [
        "quantize_dynamic",
        "propagate_qconfig_",
        "get_default_qconfig",
        "get_default_qat_qconfig",
        "prepare",
        "convert",
        "quantize",
        "fuse_modules",
    ]:
        ours = list(inspect.signature(getattr(fq, name)).parameters)
        theirs = list(inspect.signature(getattr(tq, name)).parameters)
        assert ours == theirs, (name, ours, theirs)
    for name in [
        "MinMaxObserver",
        "MovingAverageMinMaxObserver",
        "PerChannelMinMaxObserver",
        "MovingAveragePerChannelMinMaxObserver",
        "HistogramObserver",
        "FixedQParamsObserver",
    ]:
        ours = list(inspect.signature(getattr(fq, name)).parameters)
        theirs = list(inspect.signature(getattr(tq, name)).parameters)
        assert ours == theirs, (name, ours, theirs)


def test_dtype_constants_accept_torch_objects():
    import torch

    assert fq.qint8 == torch.qint8 and torch.qint8 == fq.qint8 and fq.qint8 == "qint8"
    assert fq.per_channel_symmetric == torch.per_channel_symmetric
    assert fq.quint8 != fq.qint8


def test_stub_file_matches_native_module():
    from ferroquant import _core

    stub = (PKG / "_core.pyi").read_text()
    tree = ast.parse(stub)
    declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    actual = {n for n in dir(_core) if not n.startswith("_")}
    assert declared == actual, declared ^ actual
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PackedLinear")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")}
    assert methods == {n for n in dir(_core.PackedLinear) if not n.startswith("_")}
