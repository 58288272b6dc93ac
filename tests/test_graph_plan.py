"""Whole-graph plans of converted FX models (``ferroquant/_fx/plan.py``): the plan runs exactly
when it can, gives the module-by-module forward's bits, and steps aside (or rebuilds) whenever
the model changes under it: weights or qparams edited in place, submodules replaced, hooks,
state_dict loads, recompiled graphs; copies, pickles and TorchScript keep working."""

from __future__ import annotations

import copy
import gc
import io
import sys
import warnings
import weakref
from pathlib import Path

import ferroquant as fq
import pytest
import torch
import torch.nn.functional as F
from ferroquant.quantize_fx import convert_fx, prepare_fx
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
from models import MobileNetV2, ResNet18, init_weights  # noqa: E402


def _convert(model: nn.Module, shape: tuple, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(model, fq.get_default_qconfig_mapping("x86"), (torch.randn(shape),))
    with torch.no_grad():
        for _ in range(3):
            p(torch.randn(shape) * 2)
    return convert_fx(p)


def _slow(m: nn.Module, x: torch.Tensor):
    m.use_graph_plan = False
    try:
        return m(x)
    finally:
        m.use_graph_plan = True


def _same(a, b) -> bool:
    if isinstance(a, fq.QTensor):
        return (
            isinstance(b, fq.QTensor)
            and (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point())
            and a.int_repr().stride() == b.int_repr().stride()
            and torch.equal(a.int_repr(), b.int_repr())
        )
    return type(a) is type(b) is torch.Tensor and a.stride() == b.stride() and torch.equal(a, b)


def _plan_runs(m: nn.Module, x: torch.Tensor) -> bool:
    for shape, runs, _ in m.graph_plan_status():
        if shape == tuple(x.shape):
            return runs
    return False


def _check(m: nn.Module, x: torch.Tensor, expect_plan: bool = True) -> None:
    """The first call records and builds, the next ones run the plan: all equal the slow path."""
    first = m(x)
    assert _plan_runs(m, x) == expect_plan, m.graph_plan_status()
    for _ in range(2):
        assert _same(m(x), first)
    assert _same(_slow(m, x), first)


class _Small(nn.Module):
    """Every node kind a plan runs: conv (+ReLU, stride, dilation, groups, depthwise), add,
    add + relu, max / average / adaptive pooling as modules and functions, ReLU, dropout,
    flatten of a map wider than 1x1, linear (+ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
        self.g = nn.Conv2d(16, 16, 1, groups=4)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=False)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        y = y + self.dw(y)
        y = F.relu(y + self.g(y))
        y = self.pool(y)
        y = self.avg(y)
        y = F.max_pool2d(y, 2)
        y = F.adaptive_avg_pool2d(y, (2, 2))
        y = self.drop(torch.relu(y))
        return self.fc2(F.relu(self.fc(torch.flatten(y, 1))))


@pytest.mark.parametrize("batch", [1, 3])
def test_plan_runs_every_supported_node_kind_bit_identically(batch):
    m = _convert(_Small(), (2, 3, 16, 16))
    for seed in range(3):
        torch.manual_seed(seed)
        _check(m, torch.randn(batch, 3, 16, 16) * 3)
    # another input size: its own plan
    _check(m, torch.randn(batch, 3, 20, 20))
    assert len(m.graph_plan_status()) == 2


@pytest.mark.parametrize("cls", [ResNet18, MobileNetV2])
def test_plan_runs_resnet_and_mobilenet(cls):
    torch.manual_seed(0)
    model = cls().eval()
    init_weights(model)
    m = _convert(model, (1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    _check(m, x)
    # a channels-last input: a plan of its own (quantized in place, no transpose)
    _check(m, x.contiguous(memory_format=torch.channels_last))
    assert [runs for _, runs, _ in m.graph_plan_status()] == [True, True]
    # a model that ran plans scripts as before (the plans are not part of it)
    with warnings.catch_warnings():
        # torch's own GraphModule.__init__ annotates an instance attribute (any GraphModule)
        warnings.filterwarnings("ignore", message=".*instance-level annotations")
        scripted = torch.jit.script(m)
    assert torch.equal(scripted(x), m(x))


def test_plan_results_do_not_depend_on_threads():
    m = _convert(_Small(), (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for n in (1, 2, 3):
        fq.set_num_threads(n)
        try:
            outs.append(m(x))
            outs.append(m(x))
        finally:
            fq._threads._reset_num_threads()
    assert all(_same(o, outs[0]) for o in outs)


class _Conv3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(2, 4, 3, padding=1)
        self.p = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.p(F.relu(self.c(x)))


def test_plan_runs_conv3d():
    m = _convert(_Conv3d(), (1, 2, 6, 6, 6))
    _check(m, torch.randn(2, 2, 6, 6, 6))


class _WithCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


def test_graphs_a_plan_does_not_cover_run_module_by_module_and_say_why():
    m = _convert(_WithCat(), (1, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    _check(m, x, expect_plan=False)
    ((shape, runs, why),) = m.graph_plan_status()
    assert shape == (1, 3, 8, 8) and not runs and "runs in Python" in why
    # inputs a plan does not take: other dtypes, strided views, several arguments
    s = _convert(_Small(), (1, 3, 16, 16))
    y = torch.randn(1, 3, 32, 32)[:, :, ::2, ::2]
    assert _same(s(y), _slow(s, y)) and s.graph_plan_status() == []
    assert _same(s(y.double()), _slow(s, y.double()))


def test_guards_follow_in_place_edits_of_weights_bias_and_qparams():
    m = _convert(_Small(), (2, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    before = m(x)
    m(x)
    conv = m.c1
    with torch.no_grad():
        conv.bias().mul_(-1.0)  # the bias tensor, edited in place
    after = m(x)
    assert not _same(after, before) and _same(after, _slow(m, x))
    w = conv.weight()
    conv.set_weight_bias(
        fq.quantize_per_channel(
            w.dequantize() * 0.5, w.q_per_channel_scales(), w.q_per_channel_zero_points(), 0, fq.qint8
        ),
        conv.bias(),
    )
    assert _same(m(x), _slow(m, x))
    m.fc.scale = m.fc.scale * 2  # an output qparam
    assert _same(m(x), _slow(m, x))
    m._fq_qaddrelu_2.zero_point = 3
    assert _same(m(x), _slow(m, x))
    m.pool.padding = 0  # pooling geometry
    assert _same(m(x), _slow(m, x))
    assert _plan_runs(m, x)


def test_replaced_submodules_hooks_and_forward_overrides_are_honoured():
    m = _convert(_Small(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    m(x)
    m(x)
    # a replaced submodule: the plan is rebuilt from it
    m.fc2 = copy.deepcopy(m.fc2)
    m.fc2.zero_point = 7
    assert _same(m(x), _slow(m, x)) and _plan_runs(m, x)
    # a hook on a leaf: the forward goes module by module, so the hook sees its call
    seen = []
    h = m.dw.register_forward_hook(lambda mod, i, o: seen.append(o))
    out = m(x)
    assert len(seen) == 1 and _same(out, _slow(m, x))
    h.remove()
    seen.clear()
    m(x)
    assert not seen and _plan_runs(m, x)
    # hooks on the model, global hooks, a forward of the instance's own
    h = m.register_forward_pre_hook(lambda mod, i: seen.append(1))
    m(x)
    h.remove()
    g = nn.modules.module.register_module_forward_hook(lambda mod, i, o: seen.append(2))
    try:
        m(x)
    finally:
        g.remove()
    assert 1 in seen and 2 in seen
    m.g.forward = lambda y: m.g.__class__.forward(m.g, y)
    assert _same(m(x), _slow(m, x))


def test_load_state_dict_recompile_copies_and_pickles():
    a = _convert(_Small(), (2, 3, 16, 16), seed=0)
    b = _convert(_Small(), (2, 3, 16, 16), seed=1)
    x = torch.randn(2, 3, 16, 16)
    a(x)
    a(x)
    a.load_state_dict(b.state_dict())
    assert _same(a(x), b(x)) and _same(a(x), _slow(b, x))
    assert "_fq_plans" not in "".join(a.state_dict())
    c = copy.deepcopy(a)
    assert c.graph_plan_status() == []
    assert _same(c(x), a(x)) and _plan_runs(c, x)
    buf = io.BytesIO()
    torch.save(a, buf)
    buf.seek(0)
    d = torch.load(buf, weights_only=False)
    assert _same(d(x), a(x)) and _plan_runs(d, x)
    # an edited graph: recompile drops the plans, the next call builds from the new graph
    for node in a.graph.nodes:
        if node.op == "call_module" and node.target == "drop":
            node.replace_all_uses_with(node.args[0])
            a.graph.erase_node(node)
            break
    a.recompile()
    assert a.graph_plan_status() == []
    _check(a, x)


def test_bad_inputs_raise_what_the_modules_raise():
    m = _convert(_Small(), (1, 3, 16, 16))
    m(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expects input"):
        m(torch.randn(1, 4, 16, 16))
    with pytest.raises(TypeError):
        m(torch.zeros(1, 3, 16, 16, dtype=torch.int64))
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    assert _same(m(x), _slow(m, x.detach()))


def test_a_deleted_model_frees_its_plans():
    m = _convert(_Small(), (1, 3, 16, 16))
    m(torch.randn(1, 3, 16, 16))
    m(torch.randn(1, 3, 16, 16))
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_plans_can_be_turned_off_for_a_process(tmp_path):
    import subprocess

    code = "import torch, ferroquant as fq\nfrom ferroquant._fx import graph_module as g\nprint(g._PLANS_ON)\n"
    env = {**__import__("os").environ, "FERROQUANT_GRAPH_PLAN": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bias_writes_that_bypass_the_version_counter_are_seen():
    # the module reads its bias array at every call: so does the plan
    m = _convert(_Small(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    m(x)
    before = m(x)
    m.fc.bias().data.mul_(-2.0)  # .data: no version bump
    after = m(x)
    assert not _same(after, before) and _same(after, _slow(m, x)) and _plan_runs(m, x)


def test_training_mode_and_in_place_edits_of_list_attributes():
    class Drop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.d = nn.Dropout()
            self.p = nn.MaxPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.p(self.d(self.c(x)))

    m = _convert(Drop(), (1, 3, 12, 12))
    x = torch.randn(1, 3, 12, 12)
    m(x)
    m(x)
    m.p.kernel_size = [2, 2]
    assert _same(m(x), _slow(m, x))
    m.p.kernel_size[0] = 3  # the same list, edited in place
    assert _same(m(x), _slow(m, x)) and _plan_runs(m, x)
    m.p.padding = 0.0  # equal to 0, not the same: rebuilt from what the modules do with it
    with pytest.raises(TypeError):
        _slow(m, x)
    with pytest.raises(TypeError):
        m(x)
    m.p.padding = 0
    m.train()  # whatever the modules do in training mode, the plan does
    assert _same(m(x), _slow(m, x))
    m.eval()
    assert _same(m(x), _slow(m, x)) and _plan_runs(m, x)


def test_a_graph_edited_without_recompile_runs_its_compiled_forward():
    m = _convert(_Small(), (1, 3, 16, 16))
    x, y = torch.randn(1, 3, 16, 16), torch.randn(2, 3, 16, 16)
    m(x)
    for node in m.graph.nodes:  # drop the max pool, without recompile()
        if node.op == "call_module" and node.target == "pool":
            node.replace_all_uses_with(node.args[0])
            m.graph.erase_node(node)
            break
    else:
        raise AssertionError("no pool node")
    assert _same(m(y), _slow(m, y)) and not _plan_runs(m, y)
    assert "recompile" in m.graph_plan_status()[-1][2]
    assert _same(m(x), _slow(m, x))


def test_concurrent_calls_while_the_model_changes():
    import threading

    m = _convert(_Small(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    want = _slow(m, x)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            for _ in range(40):
                assert _same(m(x), want)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(20):  # guards fail under the callers' feet: the same values, new objects
        m.fc.scale = float(m.fc.scale)
        m.fc2 = copy.deepcopy(m.fc2)
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_quantized_outputs_shapes_beyond_the_cache_and_relu6():
    from ferroquant.quantize_fx import PrepareCustomConfig

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.r = nn.ReLU6()
            self.c2 = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(self.r(self.c(x)))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(
            Net().eval(),
            fq.get_default_qconfig_mapping("x86"),
            (torch.randn(1, 3, 8, 8),),
            prepare_custom_config=PrepareCustomConfig().set_output_quantized_indexes([0]),
        )
    p(torch.randn(2, 3, 8, 8))
    m = convert_fx(p)
    for size in range(4, 14):  # ten shapes: the oldest two leave the cache
        x = torch.randn(1, 3, size, size) * 4
        out = m(x)
        assert isinstance(out, fq.QTensor)
        assert _same(m(x), out) and _same(out, _slow(m, x))
    status = m.graph_plan_status()
    assert len(status) == 8 and status[-1][0] == (1, 3, 13, 13)


def test_the_profile_names_each_step_and_its_time():
    m = _convert(_Small(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    prof = m.graph_plan_profile(x, runs=3)
    names = [n for n, _, _ in prof]
    kinds = [k for _, k, _ in prof]
    assert kinds[0] == "quantize" and kinds[-1] == "dequantize" and "c1" in names and "fc2" in names
    assert kinds[names.index("pool")] == "max_pool" and all(t > 0 for _, _, t in prof)
    assert _convert(_WithCat(), (1, 3, 8, 8)).graph_plan_profile(torch.randn(1, 3, 8, 8)) == []


def test_a_forward_set_on_an_instance_runs_at_every_call_until_removed():
    m = _convert(_Small(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    m(x)
    calls = []
    orig = m.fc.forward
    m.fc.forward = lambda inp: (calls.append(1), orig(inp))[1]
    outs = [m(x) for _ in range(5)]
    assert len(calls) == 5 and all(_same(o, outs[0]) for o in outs)
    assert "forward of its own" in m.graph_plan_status()[0][2]
    del m.fc.forward
    m(x)
    m(x)
    assert len(calls) == 5 and _plan_runs(m, x)


def test_failed_builds_are_retried_with_backoff(monkeypatch):
    from ferroquant._fx import plan as plan_mod

    m = _convert(_Small(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    real = plan_mod._make_entry

    def fails(*a, **k):
        raise plan_mod.Unsupported("a failure no guard sees")

    monkeypatch.setattr(plan_mod, "_make_entry", fails)
    m(x)
    assert not _plan_runs(m, x)
    monkeypatch.setattr(plan_mod, "_make_entry", real)
    for _ in range(plan_mod._FIRST_RETRY - 1):
        m(x)
    assert not _plan_runs(m, x)  # not yet: retried after _FIRST_RETRY calls
    m(x)
    assert _plan_runs(m, x) and _same(m(x), _slow(m, x))


def test_mlps_on_2d_inputs_and_the_layout_in_the_status():
    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(20, 32), nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x)))

    m = _convert(MLP(), (3, 20))
    _check(m, torch.randn(5, 20))
    s = _convert(_Small(), (1, 3, 16, 16))
    s(torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    assert s.graph_plan_status()[0][2].endswith("(channels-last input)")
    c = _convert(_Conv3d(), (1, 2, 6, 6, 6))
    with pytest.raises(ValueError, match="expects input"):  # the module's own error
        c(torch.randn(1, 2, 6, 6))
