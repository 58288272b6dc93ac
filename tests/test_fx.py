"""FX graph mode quantization: the PyTorch docs' FX examples, models written without quantization
in mind (residual ``+``, ``torch.flatten``, functionals) against torch.ao's FX mode, QConfigMapping
forms, dynamic / QAT through FX, untraceable parts, state_dict, TorchScript, bad inputs."""

from __future__ import annotations

import copy
import io
import sys
import warnings
from pathlib import Path

import ferroquant as fq
import pytest
import torch
import torch.nn.functional as F
from _torchvision import REFERENCE_ENGINE, off_quantize_ties, with_trained_batchnorm
from ferroquant.quantize_fx import (
    ConvertCustomConfig,
    FXTraceError,
    PrepareCustomConfig,
    convert_fx,
    convert_to_reference_fx,
    fuse_fx,
    get_native_backend_config,
    prepare_fx,
    prepare_qat_fx,
)
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
from models import Encoder, MobileNetV2, ResNet18, init_weights  # noqa: E402


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten(), b.detach().flatten(), dim=0))


class UserModel(nn.Module):
    """Functionals, ``+`` and ``torch.flatten``: what eager mode cannot quantize without edits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        y = y + self.conv2(y)
        y = F.max_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


def _calibrate(model: nn.Module, shape: tuple, n: int = 3) -> None:
    with torch.no_grad():
        for _ in range(n):
            model(torch.randn(shape))


def test_pytorch_docs_fx_examples_run():
    """The PyTorch docs' FX examples (dynamic / weight-only, static, QAT, fusion), namespace changed."""
    torch.manual_seed(0)
    model_fp = UserModel()
    example_inputs = (torch.randn(2, 3, 8, 8),)
    # post training dynamic / weight-only quantization
    model_to_quantize = copy.deepcopy(model_fp).eval()
    qconfig_mapping = fq.QConfigMapping().set_global(fq.default_dynamic_qconfig)
    model_quantized = convert_fx(prepare_fx(model_to_quantize, qconfig_mapping, example_inputs))
    assert isinstance(model_quantized.fc, fq.nn.quantized.dynamic.Linear)
    assert cos(model_quantized(*example_inputs), model_to_quantize(*example_inputs)) > 0.99
    # post training static quantization
    model_to_quantize = copy.deepcopy(model_fp).eval()
    model_prepared = prepare_fx(model_to_quantize, fq.get_default_qconfig_mapping("qnnpack"), example_inputs)
    _calibrate(model_prepared, (4, 3, 8, 8))
    model_quantized = convert_fx(model_prepared)
    assert cos(model_quantized(*example_inputs), model_to_quantize(*example_inputs)) > 0.99
    # quantization-aware training
    model_to_quantize = copy.deepcopy(model_fp).train()
    model_prepared = prepare_qat_fx(model_to_quantize, fq.get_default_qat_qconfig_mapping("qnnpack"), example_inputs)
    opt = torch.optim.SGD(model_prepared.parameters(), lr=0.01)
    for _ in range(3):
        loss = model_prepared(torch.randn(4, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model_quantized = convert_fx(model_prepared.eval())
    x = torch.randn(2, 3, 8, 8)
    assert (model_quantized(x) - model_prepared(x)).abs().max() < 0.1
    # fusion
    fused = fuse_fx(copy.deepcopy(model_fp).eval())
    assert isinstance(fused.conv, fq.nn.intrinsic.ConvReLU2d) and not hasattr(fused, "bn")
    assert torch.allclose(fused(x), model_fp.eval()(x), atol=1e-5)


def _convert_both(model: nn.Module, calib: list, x: torch.Tensor, mapping=None) -> tuple:
    import torch.ao.quantization as tq
    import torch.ao.quantization.quantize_fx as tqfx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(model, mapping or fq.get_default_qconfig_mapping("x86"), (x,))
        for c in calib:
            p(c)
        ours = convert_fx(p)
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = REFERENCE_ENGINE
        try:
            pt = tqfx.prepare_fx(copy.deepcopy(model), tq.get_default_qconfig_mapping("x86"), (x,))
            for c in calib:
                pt(c)
            theirs = tqfx.convert_fx(pt)
            quant = next(m for n, m in ours.named_modules() if n.startswith("_fq_quantize"))
            x = off_quantize_ties(x, float(quant.scale))
            with torch.no_grad():
                return ours, theirs, x, ours(x), theirs(x)
        finally:
            torch.backends.quantized.engine = previous


@pytest.mark.parametrize("cls", [ResNet18, MobileNetV2])
def test_plain_cnns_quantize_through_fx_as_torch_does(cls):
    """The benches' plain ResNet-18 / MobileNetV2 (residual ``+``, ``torch.flatten``, unedited):
    cosine ≥ 0.99 to fp32 and torch.ao FX's int8 outputs within 1 LSB (here: bit for bit)."""
    from _exactness import torch_engine_full_range_exact

    torch.manual_seed(0)
    model = cls(num_classes=10).eval()
    init_weights(model)
    calib = [torch.randn(2, 3, 64, 64) for _ in range(3)]
    ours, theirs, x, a, b = _convert_both(model, calib, torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        ref = model(x)
    assert cos(a, ref) >= 0.99
    scale = float([m for m in theirs.modules() if type(m).__name__ == "Linear"][-1].scale)
    share = float(((a - b).abs() / scale <= 1.001).float().mean())
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = REFERENCE_ENGINE
    exact = torch_engine_full_range_exact()
    torch.backends.quantized.engine = previous
    assert share >= (0.99 if exact else 0.9), share
    assert cos(a, ref) >= cos(b, ref) - 2e-5
    # the add → relu pairs became one add_relu, no dequantize inside the network
    code = ours.code
    assert code.count("self._fq_quantize") == 1 and code.count("self._fq_dequantize") == 1


TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0", "efficientnet_b0"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_float_models_go_through_fx_unedited(name):
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = with_trained_batchnorm(getattr(tvm, name)(weights=None).eval())
    calib = [torch.randn(2, 3, 64, 64) for _ in range(3)]
    ours, _theirs, x, a, b = _convert_both(model, calib, torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        ref = model(x)
    assert ours.float_parts == []
    assert cos(a, ref) >= cos(b, ref) - 1e-4, (cos(a, ref), cos(b, ref))


def test_vit_and_encoder_dynamic_through_fx():
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    mapping = fq.QConfigMapping().set_object_type(nn.Linear, fq.default_dynamic_qconfig)
    enc = Encoder(4).eval()
    x = torch.randn(2, 16, 768)
    q = convert_fx(prepare_fx(enc, mapping, (x,)))
    import torch.ao.quantization as tq
    import torch.ao.quantization.quantize_fx as tqfx

    with torch.no_grad():
        assert cos(q(x), enc(x)) >= 0.999
        eager = fq.quantize_dynamic(enc, {nn.Linear})
        # D4: the same per-row dynamic Linear as eager mode, so the error is eager's
        assert torch.allclose(q(x), eager(x), atol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch_mapping = tq.QConfigMapping().set_object_type(nn.Linear, tq.default_dynamic_qconfig)
            theirs = tqfx.convert_fx(tqfx.prepare_fx(copy.deepcopy(enc), torch_mapping, (x,)))(x)
        ref = enc(x)
        assert (q(x) - ref).abs().max() <= (theirs - ref).abs().max()
    vit = tvm.vit_b_16(weights=None, image_size=32).eval()
    with torch.no_grad():
        vit.heads.head.weight.normal_(0, 0.02)  # torchvision starts the head at zero
    x = torch.randn(1, 3, 32, 32)
    q = convert_fx(prepare_fx(vit, mapping, (x,)))
    with torch.no_grad():
        assert cos(q(x), vit(x)) >= 0.99
    assert any(isinstance(m, fq.nn.quantized.dynamic.Linear) for m in q.modules())


def test_qconfig_mapping_forms_and_none_keeps_float():
    torch.manual_seed(0)
    model = UserModel().eval()
    x = torch.randn(2, 3, 8, 8)
    qc = fq.get_default_qconfig("x86")
    as_dict = {"": qc, "module_name": [("fc", None)]}
    for mapping in (as_dict, fq.QConfigMapping().set_global(qc).set_module_name("fc", None)):
        p = prepare_fx(model, mapping, (x,))
        _calibrate(p, (4, 3, 8, 8))
        q = convert_fx(p)
        assert type(q.fc) is nn.Linear  # stayed float, a dequantize before it
        assert isinstance(q.conv, fq.nn.intrinsic.quantized.ConvReLU2d)
        assert cos(q(x), model(x)) > 0.99
    # object_type for a function: the + stays float
    mapping = fq.QConfigMapping().set_global(qc).set_object_type(__import__("operator").add, None)
    p = prepare_fx(model, mapping, (x,))
    _calibrate(p, (4, 3, 8, 8))
    q = convert_fx(p)
    assert "qadd" not in q.code and cos(q(x), model(x)) > 0.99
    # module_name_regex and module_name_object_type_order
    mapping = (
        fq.QConfigMapping()
        .set_global(qc)
        .set_module_name_regex("conv2?", None)
        .set_module_name_object_type_order("", F.max_pool2d, 0, None)
    )
    p = prepare_fx(model, mapping, (x,))
    _calibrate(p, (4, 3, 8, 8))
    q = convert_fx(p)
    assert type(q.conv2) is nn.Conv2d and isinstance(q.fc, fq.nn.quantized.Linear)


class Gate(nn.Module):
    """Data-dependent control flow: cannot be traced symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return -x


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.gate = Gate()
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gate(F.relu(self.fc1(x))))


def test_untraceable_submodules_stay_float_and_are_reported():
    torch.manual_seed(0)
    model = Detector().eval()
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="gate"):
        p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (x,))
    _calibrate(p, (16, 8))
    q = convert_fx(p)
    assert q.float_parts == ["gate"] and type(q.gate) is Gate
    assert isinstance(q.fc1, fq.nn.intrinsic.quantized.LinearReLU) and isinstance(q.fc2, fq.nn.quantized.Linear)
    assert cos(q(x), model(x)) > 0.99
    # named as non-traceable: no warning, the same result
    config = PrepareCustomConfig().set_non_traceable_module_names(["gate"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (x,), prepare_custom_config=config)
    assert p.float_parts == ["gate"]

    class Top(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(FXTraceError, match="set_non_traceable_module_names"):
        prepare_fx(Top(), fq.get_default_qconfig_mapping("x86"), (x,))


def test_state_dict_round_trip_and_torchscript():
    """The docs' save / load: a converted GraphModule's state_dict loads into a freshly prepared
    and converted one; torch.jit.script of a converted GraphModule equals eager."""
    torch.manual_seed(0)
    model = ResNet18(num_classes=10).eval()
    init_weights(model)
    x = torch.randn(1, 3, 32, 32)
    p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (x,))
    _calibrate(p, (2, 3, 32, 32))
    q = convert_fx(p)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    fresh_p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (x,))
    _calibrate(fresh_p, (2, 3, 32, 32), n=1)
    fresh = convert_fx(fresh_p)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
        with warnings.catch_warnings():
            # torch's own GraphModule.__init__ annotates an instance attribute (any GraphModule)
            warnings.filterwarnings("ignore", message=".*instance-level annotations")
            scripted = torch.jit.script(q)
        assert torch.equal(scripted(x), q(x))


def test_reference_model_has_explicit_quantize_dequantize():
    torch.manual_seed(0)
    model = UserModel().eval()
    x = torch.randn(2, 3, 8, 8)
    p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (x,))
    _calibrate(p, (4, 3, 8, 8))
    ref = convert_to_reference_fx(p)
    q = convert_fx(p)
    assert "_QuantDequant" in repr(ref) or "QuantDequant" in str([type(m).__name__ for m in ref.modules()])
    with torch.no_grad():
        assert cos(ref(x), q(x)) > 0.999


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class ObservedCustom(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    @classmethod
    def from_float(cls, mod: nn.Module) -> ObservedCustom:
        return cls(mod.lin)


class QuantizedCustom(nn.Module):
    """Dynamic: float in, float out, the Linear dynamically quantized."""

    def __init__(self, lin: nn.Module) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    @classmethod
    def from_observed(cls, mod: nn.Module) -> QuantizedCustom:
        return cls(fq.quantize_dynamic(nn.Sequential(mod.lin), {nn.Linear})[0])


def test_custom_module_api_for_fx():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), Custom(), nn.Linear(8, 4)).eval()
    x = torch.randn(4, 8)
    prepare_config = PrepareCustomConfig().set_float_to_observed_mapping(Custom, ObservedCustom, "dynamic")
    convert_config = ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedCustom, QuantizedCustom, "dynamic")
    mapping = fq.QConfigMapping().set_global(fq.default_dynamic_qconfig)
    p = prepare_fx(model, mapping, (x,), prepare_custom_config=prepare_config)
    assert isinstance(p.get_submodule("1"), ObservedCustom)
    q = convert_fx(p, convert_custom_config=convert_config)
    assert isinstance(q.get_submodule("1"), QuantizedCustom)
    assert cos(q(x), model(x)) > 0.99
    # the dict forms
    p = prepare_fx(
        model,
        mapping,
        (x,),
        prepare_custom_config={"float_to_observed_custom_module_class": {"dynamic": {Custom: ObservedCustom}}},
    )
    q = convert_fx(
        p,
        convert_custom_config={
            "observed_to_quantized_custom_module_class": {"dynamic": {ObservedCustom: QuantizedCustom}}
        },
    )
    assert isinstance(q.get_submodule("1"), QuantizedCustom)


def test_bad_inputs_say_what_to_do():
    model = UserModel().eval()
    x = torch.randn(2, 3, 8, 8)
    qc = fq.get_default_qconfig_mapping("x86")
    with pytest.raises(ValueError, match="backend_config"):
        prepare_fx(model, qc, (x,), backend_config=object())
    prepare_fx(model, qc, (x,), backend_config=get_native_backend_config())
    with pytest.raises(TypeError, match="prepare_fx"):
        convert_fx(torch.fx.symbolic_trace(model))
    with pytest.raises(TypeError, match="QConfigMapping"):
        prepare_fx(model, 3, (x,))
    with pytest.raises(ValueError, match="eval"):
        prepare_fx(UserModel().train(), qc, (x,))
    with pytest.raises(ValueError, match="training mode"):
        prepare_qat_fx(model, fq.get_default_qat_qconfig_mapping("x86"), (x,))
    with pytest.raises(fq.CalibrationError):
        convert_fx(prepare_fx(model, qc, (x,)))  # no calibration: D5
    with pytest.raises(ValueError, match="unknown prepare_custom_config key"):
        prepare_fx(model, qc, (x,), prepare_custom_config={"nonsense": 1})


class _Net(nn.Module):
    """A small model whose forward is given as a function (the cases below)."""

    def __init__(self, body) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.act = nn.LeakyReLU(0.1)
        self.lin = nn.Linear(4, 4)
        self.softmax, self.hardtanh = nn.Softmax(dim=1), nn.Hardtanh()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, x)


def _shape_arith(s, x):
    y = s.c(x)
    b, c, h, w = y.shape
    return y.view(b, c, h * w) * (c**-0.5)


CASES = {
    # a fixed-qparams op reading a float value stays float (its [0, 1) observer must not quantize it)
    "sigmoid of the input": lambda s, x: torch.sigmoid(x * 3) * s.c(x),
    "softmax module on float": lambda s, x: s.softmax(x * 5) + s.c(x),
    # keyword forms run in float
    "add with alpha": lambda s, x: s.c(x).add(s.d(x), alpha=2),
    # a module called twice: each call its own quantized copy with its own qparams
    "module called twice": lambda s, x: s.act(s.d(s.act(s.c(x)))),
    "linear called twice": lambda s, x: s.lin(s.c(x)) + s.lin(s.d(x) * 2),
    # shapes and numbers are not activations
    "shape arithmetic": _shape_arith,
    # method forms on quantized values
    "methods relu sigmoid tanh": lambda s, x: s.c(x).relu() + s.d(x).sigmoid() + s.c(x).tanh(),
    "hardtanh after conv": lambda s, x: s.hardtanh(s.c(x)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_models_written_without_quantization_in_mind(name):
    torch.manual_seed(0)
    model = _Net(CASES[name]).eval()
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (x,))
        _calibrate(p, (4, 3, 4, 4))
        q = convert_fx(p)
    with torch.no_grad():
        assert cos(q(x), model(x)) > 0.98, name


def test_dynamic_linear_relu_is_not_fused_away_and_failures_name_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    q = convert_fx(prepare_fx(model, fq.QConfigMapping().set_global(fq.default_dynamic_qconfig), (torch.randn(2, 8),)))
    assert isinstance(q.get_submodule("0"), fq.nn.quantized.dynamic.Linear)

    class Odd(nn.Module):
        def forward(s, x):  # noqa: N805 - `s`, not `self`: the module must still be found
            return x if x.sum() > 0 else -x

    outer = nn.Sequential(nn.Linear(8, 8), Odd(), nn.Linear(8, 4)).eval()
    with pytest.warns(UserWarning, match="could not be traced"):
        p = prepare_fx(outer, fq.get_default_qconfig_mapping("x86"), (torch.randn(2, 8),))
    assert p.float_parts == ["1"]

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            y.add_(1)
            return y

    with pytest.warns(UserWarning, match="in-place"):
        prepare_fx(InPlace().eval(), fq.get_default_qconfig_mapping("x86"), (torch.randn(2, 8),))


def test_weight_only_embeddings_through_fx():
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.table = nn.Parameter(torch.randn(20, 8))
            self.fc = nn.Linear(8, 4)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(idx) + F.embedding(idx, self.table))

    torch.manual_seed(0)
    model = Bag().eval()
    idx = torch.randint(0, 20, (3, 5))
    mapping = (
        fq.QConfigMapping()
        .set_object_type(nn.Embedding, fq.float_qparams_weight_only_qconfig)
        .set_object_type(F.embedding, fq.float_qparams_weight_only_qconfig)
    )
    q = convert_fx(prepare_fx(model, mapping, (idx,)))
    quantized = [m for m in q.modules() if isinstance(m, fq.nn.quantized.Embedding)]
    assert len(quantized) == 2 and isinstance(q.fc, nn.Linear)
    with torch.no_grad():
        assert cos(q(idx), model(idx)) > 0.999
