"""Quantization-aware training: fake-quant and QAT modules against torch.ao's, "what you train is
what you get" (the converted int8 model equals the fake-quant model within 1 LSB on every
element), QAT on the digits CNN, state_dict resume, BN freezing, errors."""

from __future__ import annotations

import copy

import ferroquant as fq
import ferroquant.nn.intrinsic.qat as nniqat
import ferroquant.nn.qat as nnqat
import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

# ---------------------------------------------------------------------------------------------
# fake quantization vs torch.ao's (non-fused) FakeQuantize


@pytest.mark.parametrize(
    "ours, theirs, shape",
    [
        (fq.default_fake_quant, tq.default_fake_quant, (8, 16, 5, 5)),
        (fq.default_weight_fake_quant, tq.default_weight_fake_quant, (16, 8, 3, 3)),
        (fq.default_per_channel_weight_fake_quant, tq.default_per_channel_weight_fake_quant, (16, 8, 3, 3)),
    ],
    ids=["activation", "weight_per_tensor", "weight_per_channel"],
)
def test_fake_quantize_forward_and_gradient_match_torch(ours, theirs, shape):
    torch.manual_seed(0)
    a, b = ours(), theirs()
    for step in range(4):
        x = (torch.randn(shape) * (1 + step)).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        ya, yb = a(x), b(x2)
        assert torch.equal(ya, yb), f"step {step}: {(ya - yb).abs().max()}"
        g = torch.randn(shape)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(x.grad, x2.grad)  # the same straight-through mask
        assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point.to(torch.int64), b.zero_point.to(torch.int64))
    # the range trails the growing data, so the last step has values beyond it: no gradient there
    assert (x.grad == 0).any() and (x.grad != 0).any()


def test_fake_quantize_gradient_is_zero_outside_the_range():
    f = fq.default_fake_quant()
    f(torch.linspace(-1, 1, 100))  # observe [-1, 1]
    f.disable_observer()
    x = torch.tensor([-5.0, 0.0, 0.5, 5.0], requires_grad=True)
    f(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# QAT modules vs torch.ao's, and converted == fake-quant


def _layers(kind: str) -> tuple[list[nn.Module], list[list[str]], tuple[int, ...]]:
    """The float layers of a case, the groups to fuse, and the input shape."""
    cases = {
        "linear": ([nn.Linear(16, 12)], [], (6, 16)),
        "linear_relu": ([nn.Linear(16, 12), nn.ReLU()], [["body.0", "body.1"]], (6, 16)),
        "linear_bn": ([nn.Linear(16, 12), nn.BatchNorm1d(12)], [["body.0", "body.1"]], (6, 16)),
        "conv1d": ([nn.Conv1d(4, 6, 3, padding=1)], [], (3, 4, 11)),
        "conv2d": ([nn.Conv2d(3, 6, 3, padding=1)], [], (3, 3, 9, 9)),
        "conv3d": ([nn.Conv3d(2, 4, 3, padding=1)], [], (2, 2, 5, 5, 5)),
        "conv_relu": ([nn.Conv2d(3, 6, 3), nn.ReLU()], [["body.0", "body.1"]], (3, 3, 9, 9)),
        "conv_bn": ([nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)], [["body.0", "body.1"]], (3, 3, 9, 9)),
        "conv_bn_relu": (
            [nn.Conv2d(3, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU()],
            [["body.0", "body.1", "body.2"]],
            (3, 3, 9, 9),
        ),
        "conv_bn_relu1d": (
            [nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6), nn.ReLU()],
            [["body.0", "body.1", "body.2"]],
            (3, 4, 11),
        ),
        "conv_bn3d": ([nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)], [["body.0", "body.1"]], (2, 2, 5, 5, 5)),
        "conv_bn_relu_depthwise": (
            [nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6), nn.ReLU()],
            [["body.0", "body.1", "body.2"]],
            (3, 6, 9, 9),
        ),
        "conv_grouped_bias_bn": (
            [nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8)],
            [["body.0", "body.1"]],
            (3, 4, 9, 9),
        ),
    }
    return cases[kind]


CASES = [
    "linear",
    "linear_relu",
    "linear_bn",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_relu",
    "conv_bn",
    "conv_bn_relu",
    "conv_bn_relu1d",
    "conv_bn3d",
    "conv_bn_relu_depthwise",
    "conv_grouped_bias_bn",
]


class Wrapped(nn.Module):
    def __init__(self, ns, layers: list[nn.Module]) -> None:
        super().__init__()
        self.quant = ns.QuantStub()
        self.body = nn.Sequential(*layers)
        self.dequant = ns.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.body(self.quant(x)))


def _torch_qat_mapping() -> dict:
    """torch.ao's default QAT mapping plus its Conv1d / ConvReLU1d QAT modules, which it has but
    does not map by default (ferroquant does)."""
    import torch.ao.nn.intrinsic as tnni
    import torch.ao.nn.intrinsic.qat as tnniqat
    import torch.ao.nn.qat as tnnqat

    return {**tq.get_default_qat_module_mappings(), nn.Conv1d: tnnqat.Conv1d, tnni.ConvReLU1d: tnniqat.ConvReLU1d}


def _prepared(kind: str, ns, qconfig, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    layers, groups, shape = _layers(kind)
    model = Wrapped(ns, layers).train()
    if groups:
        model = ns.fuse_modules_qat(model, groups)
    model.qconfig = qconfig
    if ns is tq:
        return tq.prepare_qat(model, mapping=_torch_qat_mapping()), shape
    return ns.prepare_qat(model), shape


def _train(model: nn.Module, shape: tuple[int, ...], steps: int = 5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.randn(shape, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("weights", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("kind", CASES)
def test_qat_modules_forward_matches_torch(kind, weights):
    if weights == "per_tensor":
        qc_ours, qc_theirs = fq.default_qat_qconfig, tq.default_qat_qconfig
    else:  # torch.ao's non-fused FakeQuantize with per-channel weights (its "x86" qconfig is fused)
        qc_ours = fq.QConfig(activation=fq.default_fake_quant, weight=fq.default_per_channel_weight_fake_quant)
        qc_theirs = tq.QConfig(activation=tq.default_fake_quant, weight=tq.default_per_channel_weight_fake_quant)
    ours, shape = _prepared(kind, fq, qc_ours)
    theirs, _ = _prepared(kind, tq, qc_theirs)
    # the same swap: our QAT class has torch's class name
    assert type(ours.body[0]).__name__ == type(theirs.body[0]).__name__
    assert type(ours.body[0]).__module__.startswith("ferroquant.nn.")
    assert type(theirs.body[0]).__module__.startswith("torch.ao.nn.")
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(shape, generator=g)
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
        # and the same gradients for the weights
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(ours.body[0].weight.grad, theirs.body[0].weight.grad, rtol=1e-5, atol=1e-6)
        if ours.body[0].bias is not None:
            torch.testing.assert_close(ours.body[0].bias.grad, theirs.body[0].bias.grad, rtol=1e-5, atol=1e-6)
        ours.zero_grad()
        theirs.zero_grad()


def _output_scale(qmodel: nn.Module) -> float:
    mods = [m for m in qmodel.modules() if hasattr(m, "scale") and isinstance(m.scale, float)]
    return float(mods[-1].scale)


def _assert_train_equals_get(prepared: nn.Module, x: torch.Tensor) -> nn.Module:
    """Freezes the QAT model (observers off, BN on running stats), converts it, and checks every
    output element of the int8 model against the fake-quant model: within 1 LSB of the output scale."""
    prepared.apply(fq.disable_observer)
    prepared.apply(nniqat.freeze_bn_stats)
    prepared.eval()
    with torch.no_grad():
        want = prepared(x)
        qmodel = fq.convert(copy.deepcopy(prepared))
        got = qmodel(x)
    lsb = (got - want).abs() / _output_scale(qmodel)
    assert float(lsb.max()) <= 1.0 + 1e-3, f"converted vs fake-quant: {float(lsb.max())} LSB"
    return qmodel


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("qconfig", ["x86", "default"])
def test_converted_equals_fake_quant_model(kind, qconfig):
    qc = fq.get_default_qat_qconfig("x86") if qconfig == "x86" else fq.default_qat_qconfig
    prepared, shape = _prepared(kind, fq, qc)
    _train(prepared, shape)
    qmodel = _assert_train_equals_get(prepared, torch.randn(shape) * 1.5)
    assert type(qmodel.body[0]).__module__.startswith("ferroquant.nn.quantized")


def test_convert_uses_frozen_qparams_not_a_new_observation():
    prepared, shape = _prepared("conv_bn_relu", fq, fq.get_default_qat_qconfig("x86"))
    _train(prepared, shape)
    prepared.apply(fq.disable_observer)
    prepared.eval()
    fake = prepared.body[0]
    qmodel = fq.convert(copy.deepcopy(prepared))
    conv = qmodel.body[0]
    assert conv.scale == float(fake.activation_post_process.scale)
    assert conv.zero_point == int(fake.activation_post_process.zero_point)
    assert torch.equal(conv.weight().q_per_channel_scales(), fake.weight_fake_quant.scale.to(torch.float64).float())


def test_freeze_and_update_bn_stats():
    prepared, shape = _prepared("conv_bn_relu", fq, fq.default_qat_qconfig)
    m = prepared.body[0]
    before = m.bn.running_mean.clone()
    prepared(torch.randn(shape))
    assert not torch.equal(before, m.bn.running_mean)  # training updates the running stats
    prepared.apply(nniqat.freeze_bn_stats)
    frozen = m.bn.running_mean.clone()
    prepared.train()  # a frozen BN stays frozen when the model goes back to training
    prepared(torch.randn(shape))
    assert torch.equal(frozen, m.bn.running_mean) and m.freeze_bn and not m.bn.training
    prepared.apply(nniqat.update_bn_stats)
    prepared(torch.randn(shape))
    assert not torch.equal(frozen, m.bn.running_mean)


def test_to_float_folds_bn():
    prepared, shape = _prepared("conv_bn", fq, fq.default_qat_qconfig)
    m = prepared.body[0]
    _train(prepared, shape)
    m.freeze_bn_stats()
    m.eval()
    prepared.apply(fq.disable_fake_quant)  # the weight's and the output's
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(m.to_float()(x), m(x), rtol=1e-5, atol=1e-5)


def test_convert_before_any_training_step_raises():
    prepared, _ = _prepared("conv_bn", fq, fq.default_qat_qconfig)
    with pytest.raises(fq.CalibrationError, match="never observed"):
        fq.convert(prepared.eval())


def test_qat_module_without_qconfig_says_how():
    with pytest.raises(ValueError, match="qconfig"):
        nnqat.Linear(4, 4)


def test_fuse_modules_qat_keeps_bn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    fused = fq.fuse_modules_qat(model, [["0", "1", "2"], ["3", "4"]])
    assert isinstance(fused[0], fq.nn.intrinsic.ConvBnReLU2d) and isinstance(fused[3], fq.nn.intrinsic.LinearBn1d)
    assert isinstance(fused[1], nn.Identity)
    with pytest.raises(ValueError, match="must match"):
        fq.fuse_modules_qat(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5)), [["0", "1"]])


# ---------------------------------------------------------------------------------------------
# the PyTorch docs' QAT example, namespace changed


def test_pytorch_docs_qat_example():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = fq.QuantStub()
            self.conv = torch.nn.Conv2d(1, 1, 1)
            self.bn = torch.nn.BatchNorm2d(1)
            self.relu = torch.nn.ReLU()
            self.dequant = fq.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            x = self.conv(x)
            x = self.bn(x)
            x = self.relu(x)
            x = self.dequant(x)
            return x

    model_fp32 = M()
    model_fp32.eval()
    model_fp32.qconfig = fq.get_default_qat_qconfig("x86")
    model_fp32_fused = fq.fuse_modules(model_fp32, [["conv", "bn", "relu"]])
    model_fp32_prepared = fq.prepare_qat(model_fp32_fused.train())

    def training_loop(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        for _ in range(3):
            loss = m(torch.randn(4, 1, 4, 4)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    training_loop(model_fp32_prepared)
    model_fp32_prepared.eval()
    model_int8 = fq.convert(model_fp32_prepared)
    input_fp32 = torch.randn(4, 1, 4, 4)
    res = model_int8(input_fp32)
    assert res.shape == (4, 1, 4, 4)
    assert isinstance(model_int8.conv, fq.nn.intrinsic.quantized.ConvReLU2d)


def test_quantize_qat_one_call():
    def train_fn(model, steps):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(steps):
            loss = model(torch.randn(4, 16)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    model = Wrapped(fq, [nn.Linear(16, 8), nn.ReLU()])
    model.qconfig = fq.get_default_qat_qconfig("x86")
    q = fq.quantize_qat(model, train_fn, [3])
    assert isinstance(q.body[0], fq.nn.quantized.Linear)
    assert q(torch.randn(2, 16)).shape == (2, 8)


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_qat_state_dict_round_trip_resumes_training():
    prepared, shape = _prepared("conv_bn_relu", fq, fq.get_default_qat_qconfig("x86"))
    _train(prepared, shape, steps=3)
    sd = copy.deepcopy(prepared.state_dict())
    fresh, _ = _prepared("conv_bn_relu", fq, fq.get_default_qat_qconfig("x86"), seed=7)
    fresh.load_state_dict(sd)
    x = torch.randn(shape)
    prepared.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(prepared(x), fresh(x))
    prepared.train()
    fresh.train()
    _train(prepared, shape, steps=2, seed=5)
    _train(fresh, shape, steps=2, seed=5)
    for (name, a), (_, b) in zip(prepared.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------
# the digits CNN: QAT after float training


def test_qat_digits_cnn_int8_equals_fake_quant_and_beats_ptq():
    from test_cnn_digits import _accuracy, trained_fp32

    model, (xtr, ytr), (xte, yte) = trained_fp32()
    fp32 = _accuracy(model, xte, yte)
    groups = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3", "relu3"]]

    ptq = fq.fuse_modules(copy.deepcopy(model), groups)
    ptq.qconfig = fq.get_default_qconfig("x86")
    ptq = fq.prepare(ptq)
    with torch.no_grad():
        for i in range(0, 512, 128):
            ptq(xtr[i : i + 128])
    ptq_acc = _accuracy(fq.convert(ptq), xte, yte)

    qat = fq.fuse_modules_qat(copy.deepcopy(model).train(), groups)
    qat.qconfig = fq.get_default_qat_qconfig("x86")
    qat = fq.prepare_qat(qat)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3, momentum=0.9)
    for epoch in range(3):
        if epoch == 2:
            qat.apply(nniqat.freeze_bn_stats)
        for i in range(0, len(ytr), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(qat(xtr[i : i + 64]), ytr[i : i + 64]).backward()
            opt.step()
    qmodel = _assert_train_equals_get(qat, xte)
    fake_acc = _accuracy(qat, xte, yte)
    int8 = _accuracy(qmodel, xte, yte)
    print(f"digits: fp32 {fp32:.2f}  PTQ int8 {ptq_acc:.2f}  QAT fake-quant {fake_acc:.2f}  QAT int8 {int8:.2f}")
    assert int8 == fake_acc, (int8, fake_acc)
    assert int8 >= ptq_acc, (int8, ptq_acc)
    assert int8 >= fp32 - 0.5, (int8, fp32)


# ---------------------------------------------------------------------------------------------
# learnable scale and zero point (LSQ)


@pytest.mark.parametrize("per_channel", [False, True])
def test_learnable_fake_quantize_matches_torch(per_channel):
    from ferroquant._learnable_fake_quantize import _LearnableFakeQuantize as Ours
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize as Theirs

    torch.manual_seed(0)
    if per_channel:
        a = Ours(fq.MovingAveragePerChannelMinMaxObserver, -128, 127, channel_len=6, dtype=fq.qint8,
                 qscheme=fq.per_channel_affine, ch_axis=0, use_grad_scaling=True)  # fmt: skip
        b = Theirs(tq.MovingAveragePerChannelMinMaxObserver, -128, 127, channel_len=6, dtype=torch.qint8,
                   qscheme=torch.per_channel_affine, ch_axis=0, use_grad_scaling=True)  # fmt: skip
        shape = (6, 5, 3)
    else:
        a = Ours(fq.MovingAverageMinMaxObserver, 0, 255, dtype=fq.quint8, use_grad_scaling=True)
        b = Theirs(tq.MovingAverageMinMaxObserver, 0, 255, dtype=torch.quint8, use_grad_scaling=True)
        shape = (4, 7, 5)
    x = torch.randn(shape)
    a(x)
    b(x)  # the observer's estimate first
    a.enable_param_learning()
    b.enable_param_learning()
    for _ in range(3):
        xa = (torch.randn(shape) * 2).requires_grad_()
        xb = xa.detach().clone().requires_grad_()
        ya, yb = a(xa), b(xb)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
        g = torch.randn(shape)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(xa.grad, xb.grad)
        torch.testing.assert_close(a.scale.grad, b.scale.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.zero_point.grad, b.zero_point.grad, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            for p in (a.scale, b.scale):
                p -= 0.01 * p.grad
            for p in (a.zero_point, b.zero_point):
                p -= 0.5 * p.grad
        a.zero_grad()
        b.zero_grad()


def test_learned_qparams_convert_and_train_equals_get():
    from ferroquant._learnable_fake_quantize import _LearnableFakeQuantize

    act = _LearnableFakeQuantize.with_args(
        observer=fq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=fq.quint8, use_grad_scaling=True
    )
    wt = _LearnableFakeQuantize.with_args(
        observer=fq.MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=fq.qint8,
        qscheme=fq.per_tensor_symmetric,
        use_grad_scaling=True,
    )
    prepared, shape = _prepared("conv_bn_relu", fq, fq.QConfig(activation=act, weight=wt))
    _train(prepared, shape, steps=2)
    for m in prepared.modules():
        if isinstance(m, _LearnableFakeQuantize):
            m.enable_param_learning()
    g = torch.Generator().manual_seed(9)
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for _ in range(4):
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            target = prepared(x).abs() + 0.1
        loss = (prepared(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    scale_before = float(prepared.body[0].activation_post_process.scale.detach())
    assert scale_before > 1e-4
    qmodel = _assert_train_equals_get(prepared, torch.randn(shape))
    assert qmodel.body[0].scale == pytest.approx(scale_before)


# ---------------------------------------------------------------------------------------------
# embeddings


def test_embedding_fake_quant_matches_torch():
    torch.manual_seed(0)
    a, b = fq.default_embedding_fake_quant(), tq.default_embedding_fake_quant()
    for _ in range(3):
        w = torch.randn(10, 8)
        torch.testing.assert_close(a(w), b(w), rtol=0, atol=1e-6)
    assert a.zero_point.dtype == torch.float32


def nnqat_frozen_weight(mod: nn.Module) -> torch.Tensor:
    from ferroquant.nn.qat.modules import _frozen_fake_quantized_weight

    return _frozen_fake_quantized_weight(mod)


def test_embedding_bag_qat_converts_to_the_trained_values():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.EmbeddingBag(20, 8, mode="sum")
            self.quant = fq.QuantStub()
            self.fc = nn.Linear(8, 4)
            self.dequant = fq.DeQuantStub()

        def forward(self, idx, offsets):
            return self.dequant(self.fc(self.quant(self.emb(idx, offsets))))

    torch.manual_seed(0)
    m = M().train()
    m.qconfig = fq.get_default_qat_qconfig("x86")
    m.emb.qconfig = fq.default_embedding_qat_qconfig
    p = fq.prepare_qat(m)
    assert isinstance(p.emb, nnqat.EmbeddingBag)
    idx, off = torch.randint(0, 20, (12,)), torch.tensor([0, 4, 8])
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    for _ in range(3):
        loss = p(idx, off).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.apply(fq.disable_observer)
    p.eval()
    with torch.no_grad():
        want = p(idx, off)
    q = fq.convert(copy.deepcopy(p))
    # 8-bit rows on the fake-quant's frozen grid: the values training saw
    assert isinstance(q.emb, fq.nn.quantized.EmbeddingBag) and q.emb.dtype == fq.quint8
    assert torch.allclose(q.emb.weight(), nnqat_frozen_weight(p.emb), atol=1e-6)
    assert float(((q(idx, off) - want).abs() / q.fc.scale).max()) <= 1.0 + 1e-3


def test_embedding_needs_float_qparams_qconfig():
    m = nn.Sequential(nn.Embedding(10, 4)).train()
    m.qconfig = fq.get_default_qat_qconfig("x86")
    with pytest.raises(ValueError, match="default_embedding_qat_qconfig"):
        fq.prepare_qat(m)


def test_fake_quant_kernel_equals_the_torch_ops_definition():
    from ferroquant.fake_quantize import _FakeQuantFunction, _kernel_fake_quant

    torch.manual_seed(0)
    x = torch.randn(6, 5, 7) * 4
    x[0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])
    x[1, 1, :4] = torch.tensor([0.5, 1.5, -2.5, 3.5]) * 0.1  # exact ties at scale 0.1... nearly
    cases = [
        (torch.tensor([0.05]), torch.tensor([128], dtype=torch.int32), 0, 255, -1, x),
        (torch.tensor([0.031]), torch.tensor([0], dtype=torch.int32), -128, 127, -1, x.transpose(0, 2)),
        (torch.rand(5) * 0.1 + 0.01, torch.randint(-3, 4, (5,), dtype=torch.int32), -128, 127, 1, x),
        (torch.rand(7) * 0.1 + 0.01, torch.zeros(7, dtype=torch.int32), 0, 15, 2, x),
    ]
    for scale, zp, qmin, qmax, axis, inp in cases:
        fast = _kernel_fake_quant(inp, scale, zp, qmin, qmax, axis)
        assert fast is not None
        want = _FakeQuantFunction.torch_ops(None, inp, scale, zp, qmin, qmax, axis)
        assert torch.equal(torch.isnan(fast[0]), torch.isnan(want))
        ok = ~torch.isnan(want)
        assert torch.equal(fast[0][ok], want[ok])
        shape = [1] * inp.dim()
        if axis >= 0:
            shape[axis] = -1
        q = torch.round(inp * (1.0 / scale.reshape(shape))) + zp.reshape(shape)
        assert torch.equal(fast[1].bool(), (q >= qmin) & (q <= qmax))


def test_to_float_of_relu_variants_keeps_the_relu():
    for kind, fused in (("conv_relu", fq.nn.intrinsic.ConvReLU2d), ("linear_relu", fq.nn.intrinsic.LinearReLU)):
        prepared, _ = _prepared(kind, fq, fq.default_qat_qconfig)
        out = prepared.body[0].to_float()
        assert type(out) is fused and isinstance(out[1], nn.ReLU) and out.training
    prepared, _ = _prepared("conv_bn_relu", fq, fq.default_qat_qconfig)
    out = prepared.body[0].to_float()
    assert type(out) is fq.nn.intrinsic.ConvReLU2d


def test_prepare_qat_needs_training_mode():
    model = Wrapped(fq, [nn.Linear(4, 4)]).eval()
    model.qconfig = fq.default_qat_qconfig
    with pytest.raises(ValueError, match="training mode"):
        fq.prepare_qat(model)


def test_prepare_qat_keeps_user_hooks():
    model = Wrapped(fq, [nn.Linear(4, 4)]).train()
    seen = []
    model.body[0].register_forward_pre_hook(lambda mod, args: seen.append(type(mod).__name__))
    model.qconfig = fq.default_qat_qconfig
    prepared = fq.prepare_qat(model)
    prepared(torch.randn(2, 4))
    assert seen == ["Linear"] and isinstance(prepared.body[0], nnqat.Linear)


def test_frozen_bn_survives_a_checkpoint():
    prepared, shape = _prepared("conv_bn_relu", fq, fq.default_qat_qconfig)
    _train(prepared, shape, steps=2)
    prepared.apply(nniqat.freeze_bn_stats)
    fresh, _ = _prepared("conv_bn_relu", fq, fq.default_qat_qconfig, seed=3)
    assert not fresh.body[0].freeze_bn
    fresh.load_state_dict(prepared.state_dict())
    assert fresh.body[0].freeze_bn and not fresh.body[0].bn.training


def test_fake_quantize_keeps_half_precision():
    f = fq.default_fake_quant()
    x = torch.randn(4, 8).half()
    assert f(x).dtype == torch.float16


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the fake-quants' enabled flags, as torch.ao's
def test_tracing_a_qat_model_with_average_pooling_does_not_freeze_values():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = fq.QuantStub(), fq.DeQuantStub()
            self.conv, self.pool = nn.Conv2d(2, 4, 3), nn.AvgPool2d(2)

        def forward(self, x):
            return self.dequant(self.pool(self.conv(self.quant(x))))

    torch.manual_seed(0)
    model = Pooled().train()
    model.qconfig = fq.default_qat_qconfig
    prepared = fq.prepare_qat(model)
    prepared(torch.randn(4, 2, 9, 9))
    prepared.apply(fq.disable_observer)
    prepared.eval()
    traced = torch.jit.trace(prepared, torch.randn(4, 2, 9, 9))
    x2 = torch.randn(4, 2, 9, 9) * 2
    with torch.no_grad():
        step = float(prepared.conv.activation_post_process.scale)
        assert float((traced(x2) - prepared(x2)).abs().max()) <= step  # the pooled rounding at most


def test_fake_quantized_outputs_carry_nothing_into_torch_save(tmp_path):
    f = fq.default_fake_quant()
    with torch.no_grad():
        y = f(torch.randn(4, 8))
    torch.save({"y": y}, tmp_path / "y.pt")
    assert torch.equal(torch.load(tmp_path / "y.pt")["y"], y)  # weights_only loading works
