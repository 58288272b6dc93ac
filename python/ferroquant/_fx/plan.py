"""The whole-graph fast path of a converted FX model.

A ``convert_fx`` model calls one quantized module per graph node; each call costs a few
microseconds of Python, and on a small CNN those calls (and the caches they evict) are a third of
the forward. When every node of the graph is one the kernels run directly — ``Quantize``, static
``Conv*d`` / ``ConvReLU*d`` / ``Linear`` / ``LinearReLU``, the ``add`` / ``add_relu`` of two
quantized tensors, max / average / adaptive average pooling, ReLU, flatten, identity, dropout,
``DeQuantize`` — the forward runs as one ``_core.Plan``: the same kernel calls, back to back in
Rust, on buffers that never become tensors (docs/performance.md, "Whole-graph plans").

A plan is built per input shape and layout from one recorded module-by-module forward (whose
result that call returns), checked bit for bit against it, and reused while its guards hold: the
same submodule objects at the same paths, none with hooks, the same packed weights (in-place
weight, qparams or bias changes repack and rebuild), the same output qparams and geometry. Anything
else — other inputs, other nodes, hooks, ``forward`` replaced — runs the graph's own forward, so
results never depend on which path ran.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import _core
from .._avg_pool import adaptive_windows, avg_windows
from .._dtypes import quint8
from .._layout import from_nhwc, nhwc_numpy, nhwc_view
from .._threads import get_num_threads
from ..nn.quantized import passthrough as pt
from ..nn.quantized.conv import Conv1d, Conv2d, Conv3d, ConvReLU1d, ConvReLU2d, ConvReLU3d
from ..nn.quantized.linear import Linear, LinearReLU
from ..nn.quantized.misc import DeQuantize, Quantize
from ..nn.quantized.misc import Dropout as QDropout
from ..qtensor import QTensor, max_pool_geometry
from .convert import QAdd, QAddReLU

__all__ = ["PlanCache"]

_CONVS = (Conv1d, Conv2d, Conv3d, ConvReLU1d, ConvReLU2d, ConvReLU3d)
_LINEARS = (Linear, LinearReLU)
_MAX_POOLS = {pt.MaxPool1d: 1, pt.MaxPool2d: 2, pt.MaxPool3d: 3}
_AVG_POOLS = {pt.AvgPool1d: 1, pt.AvgPool2d: 2, pt.AvgPool3d: 3}
_ADAPTIVE_POOLS = {pt.AdaptiveAvgPool1d: 1, pt.AdaptiveAvgPool2d: 2, pt.AdaptiveAvgPool3d: 3}
_IDENTITIES = (nn.Identity, pt.Identity, QDropout, nn.Dropout)
_FN_RELU = {F.relu, torch.relu}
_FN_MAX_POOLS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, torch.max_pool1d: 1, torch.max_pool2d: 2}
_FN_AVG_POOLS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, torch.avg_pool1d: 1}
_FN_ADAPTIVE_POOLS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_MAX_PLANS = 8  # input shapes kept per model
_FIRST_RETRY, _LAST_RETRY = 16, 4096  # calls before a failed build is retried, doubling


class Unsupported(Exception):
    """Why a graph (for one input) runs module by module. ``wait``: hook tables that, once all
    empty again, let the plan be tried again; ``structural``: the graph itself (its node kinds)."""

    def __init__(
        self, why: str, wait: Optional[list] = None, structural: bool = False, permanent: bool = False
    ) -> None:
        super().__init__(why)
        self.wait = wait or []
        # a reason in the graph's node kinds (not in a module or the input): no input will do
        self.structural = structural
        # a reason in the input's shape: this shape never will (other failures are retried
        # now and then: the model may have changed in a way no guard sees)
        self.permanent = permanent


class _Overridden:
    """True while a module has a ``forward`` of its own (set on the instance): the plan waits."""

    __slots__ = ("d",)

    def __init__(self, d: dict) -> None:
        self.d = d

    def __bool__(self) -> bool:
        return "forward" in self.d


def _hooks(mod: nn.Module) -> int:
    return len(mod._forward_hooks) + len(mod._forward_pre_hooks)


def _home(mod: nn.Module, name: str) -> dict:
    """The dict an attribute of ``mod`` lives in."""
    for table in (mod._parameters, mod._buffers, mod._modules):
        if name in table:
            return table
    return mod.__dict__


# what each kind of module's step depends on: attributes that must stay the same objects, ones
# that must keep their values, tensors that must not change in place
_WEIGHTED_SAME = ("_packed", "_packed_src", "_w", "_w_scale", "_w_zp", "_bias", "_bias_np")
_OUT_ATTRS = ("scale", "zero_point", "quant_min", "quant_max", "_out_dtype")
_POOL_ATTRS = (
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "return_indices",
    "count_include_pad",
    "divisor_override",
    "output_size",
)


class _Slot:
    """A value of the plan: its buffer number, logical shape and (for quantized values) qparams."""

    __slots__ = ("index", "shape", "scale", "zero_point")

    def __init__(self, index: int, shape: tuple[int, ...], scale: float = 0.0, zero_point: int = 0) -> None:
        self.index, self.shape, self.scale, self.zero_point = index, shape, scale, zero_point


class _QMeta:
    """What the builder needs of a recorded QTensor value (values are not kept: the recording
    frees each one after its last use, as a forward does)."""

    __slots__ = ("shape", "scale", "zp", "dtype", "problem")

    def __init__(self, q: QTensor) -> None:
        self.shape = tuple(q.shape)
        self.problem: Optional[str] = None
        self.dtype = q.dtype
        self.scale, self.zp = (0.0, 0) if q.is_per_channel else (q.q_scale(), q.q_zero_point())
        d = q.int_repr()
        if q.is_per_channel or q.dtype != quint8:
            self.problem = "is not a per-tensor quint8 QTensor"
        elif d.device.type != "cpu":
            self.problem = "is not on the CPU"
        elif not (nhwc_view(d.numpy()).flags.c_contiguous if d.dim() >= 3 else d.is_contiguous()):
            self.problem = "is stored in a layout the plan does not keep"

    def dim(self) -> int:
        return len(self.shape)

    def q_scale(self) -> float:
        return self.scale

    def q_zero_point(self) -> int:
        return self.zp

    def int_repr(self) -> torch.Tensor:
        """A stand-in with the data's shape, dtype and device (no storage behind it)."""
        return torch.empty_strided(self.shape, (0,) * len(self.shape), dtype=torch.uint8)


class _Meta:
    """A recorded node: its value's summary and whether the value is one of its inputs."""

    __slots__ = ("q", "tensor", "shape", "alias")

    def __init__(self, value: Any, alias: bool) -> None:
        self.q = _QMeta(value) if isinstance(value, QTensor) else None
        self.tensor = type(value) is torch.Tensor and value.is_contiguous()
        self.shape = tuple(value.shape) if isinstance(value, (QTensor, torch.Tensor)) else ()
        self.alias = alias


def _canonical(m: Optional[_Meta], who: str) -> _QMeta:
    """The recorded value as a per-tensor quint8 QTensor stored as the plan stores values (rank
    ≥ 3: channels-last; otherwise contiguous), or Unsupported."""
    if m is None or m.q is None:
        raise Unsupported(f"{who} is not a QTensor")
    if m.q.problem:
        raise Unsupported(f"{who} {m.q.problem}")
    return m.q


class _Recorder(fx.Interpreter):
    """Runs the graph module by module (its own forward's semantics), noting each node's value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # the modules' own errors, unchanged
        self.meta: dict[fx.Node, Optional[_Meta]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        alias = any(out is self.env.get(a) for a in n.all_input_nodes)
        try:
            self.meta[n] = _Meta(out, alias)
        except Exception:  # noqa: BLE001 - a value the plan cannot describe (sparse, ...)
            self.meta[n] = None
        return out


class _Builder:
    """Steps for ``_core.Plan`` from a graph and the values of one recorded forward."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, _Meta], x: torch.Tensor) -> None:
        self.gm, self.values, self.x = gm, values, x
        self.steps: list[tuple] = []
        self.names: list[str] = []  # the graph node each step computes
        self.slots: dict[fx.Node, _Slot] = {}
        self.float_in: Optional[fx.Node] = None
        self.count = 0
        self.owners: dict[tuple[int, str], tuple[dict, str, nn.Module]] = {}
        self.same: list[tuple[dict, str, Any]] = []
        self.equal: list[tuple[dict, str, Any]] = []
        self.versions: list[tuple[torch.Tensor, int]] = []
        self.empty: list[Any] = []
        self.lengths: list[tuple[dict, int]] = []
        self.types: list[tuple[Any, type]] = []

    def new_slot(self, node: fx.Node, shape: tuple[int, ...], scale: float = 0.0, zp: int = 0) -> _Slot:
        s = _Slot(self.count, shape, scale, zp)
        self.count += 1
        self.slots[node] = s
        return s

    def module(self, node: fx.Node) -> nn.Module:
        """The submodule at ``node.target``, with guards on every container on its path."""
        owner: nn.Module = self.gm
        for atom in str(node.target).split("."):
            child = owner._modules.get(atom)
            if child is None:
                raise Unsupported(f"{node.target} is not a submodule")
            self.owners[(id(owner._modules), atom)] = (owner._modules, atom, child)
            owner = child
        return owner

    def guard(self, mod: nn.Module, same: tuple = (), equal: tuple = (), tensors: tuple = ()) -> None:
        """The plan holds while ``mod`` has no hooks, no ``forward`` of its own, the same objects
        under ``same``, the same values under ``equal`` and ``tensors`` at their versions."""
        if _hooks(mod):
            tables = [t for m in self.gm.modules() for t in (m._forward_hooks, m._forward_pre_hooks)]
            raise Unsupported(f"{type(mod).__name__} has forward hooks", wait=tables)
        if "forward" in mod.__dict__:  # a forward set on the instance runs module by module
            raise Unsupported(
                f"{type(mod).__name__} has a forward of its own (set on the instance)",
                wait=[_Overridden(mod.__dict__)],
            )
        self.empty += [mod._forward_hooks, mod._forward_pre_hooks]
        self.same.append((mod.__dict__, "forward", mod.__dict__.get("forward")))
        for name in same:
            home = _home(mod, name)
            self.same.append((home, name, home.get(name)))
        for name in equal:
            home = _home(mod, name)
            value = home.get(name)
            # a copy of a mutable value: an edit in place is then a change
            self.equal.append((home, name, copy.deepcopy(value) if isinstance(value, (list, dict, set)) else value))
        self.versions += [(t, t._version) for t in tensors if t is not None]
        # an attribute added to the instance (a method replaced on it) or its class swapped
        self.lengths.append((mod.__dict__, len(mod.__dict__)))
        self.types.append((mod, type(mod)))

    def q_in(self, node: fx.Node, i: int = 0) -> tuple[_Slot, _QMeta]:
        arg = node.args[i] if i < len(node.args) else None
        if not isinstance(arg, fx.Node) or arg not in self.slots or arg is self.float_in:
            raise Unsupported(f"{node.name}: input {i} is not a quantized value of the plan")
        return self.slots[arg], _canonical(self.values.get(arg), arg.name)

    def out(self, node: fx.Node) -> _QMeta:
        return _canonical(self.values.get(node), node.name)

    def add(self, kind: str, src: _Slot, node: fx.Node, in_shape: tuple, *args: Any) -> _Slot:
        q = self.out(node)
        dst = self.new_slot(node, tuple(q.shape), q.q_scale(), q.q_zero_point())
        self.steps.append((kind, src.index, dst.index, list(in_shape), list(q.shape), *args))
        self.names.append(node.name)
        return dst

    def build(self) -> tuple[list[tuple], fx.Node]:
        out_node: Optional[fx.Node] = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.float_in is not None:
                    raise Unsupported("the graph takes more than one input", structural=True)
                self.float_in = node
                self.slots[node] = _Slot(-1, tuple(self.x.shape))
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function":
                self.call_function(node)
            elif node.op == "output":
                (res,) = node.args
                if not isinstance(res, fx.Node) or res not in self.slots:
                    raise Unsupported("the graph's output is not one value of the plan")
                out_node = res
            else:
                raise Unsupported(f"{node.op} {node.target} runs in Python", structural=True)
        if out_node is None or not self.steps:
            raise Unsupported("nothing to run")
        if self.slots[out_node].index != self.steps[-1][2]:
            raise Unsupported("the graph's output is not its last value")
        return self.steps, out_node

    def call_module(self, node: fx.Node) -> None:
        mod = self.module(node)
        t = type(mod)
        if node.kwargs:
            raise Unsupported(f"{node.name} is called with keyword arguments")
        if t in _IDENTITIES:
            (arg,) = node.args
            meta = self.values.get(node)
            if not isinstance(arg, fx.Node) or arg not in self.slots or meta is None or not meta.alias:
                raise Unsupported(f"{node.name}: an identity that is not one")
            self.slots[node] = self.slots[arg]
            self.guard(mod, equal=("training",))  # torch's Dropout raises on a QTensor in training
            return
        if t is Quantize:
            (arg,) = node.args
            if arg is not self.float_in and not (
                isinstance(arg, fx.Node) and self.slots.get(arg) is self.slots.get(self.float_in)
            ):
                raise Unsupported("Quantize of anything but the input")
            x = self.x
            if x.dim() not in (2, 4, 5):
                raise Unsupported("inputs of 2, 4 or 5 dims only ([N, features], images, volumes)", permanent=True)
            cl = not x.is_contiguous()
            self.guard(mod, equal=(*_OUT_ATTRS, "dtype"))
            self.add(
                "quantize",
                _Slot(0, ()),
                node,
                tuple(x.shape),
                cl,
                mod.scale,
                mod.zero_point,
                mod.quant_min,
                mod.quant_max,
            )
            return
        if t in _CONVS or t in _LINEARS:
            src, q = self.q_in(node)
            if mod._out_dtype != quint8:
                raise Unsupported(f"{node.name} outputs {mod._out_dtype}")
            if t in _CONVS:
                if any(a != b for a, b in mod._pads()):
                    raise Unsupported(f"{node.name}: asymmetric padding")
                kind = "conv"
            else:
                if q.dim() != 2:
                    raise Unsupported(f"{node.name}: a linear on a {q.dim()}-D input")
                kind = "linear"
            packed = mod._fresh_packed()
            tensors = (mod._w, mod._w_scale, mod._w_zp, mod._bias)
            self.guard(mod, same=_WEIGHTED_SAME, equal=(*_OUT_ATTRS, "padding"), tensors=tensors)
            self.add(
                kind,
                src,
                node,
                src.shape,
                packed,
                mod._bias_np,
                q.q_scale(),
                q.q_zero_point(),
                mod.scale,
                mod.zero_point,
                mod.quant_min,
                mod.quant_max,
                bool(mod._FUSED_RELU),
            )
            return
        if t in (QAdd, QAddReLU):
            (a, qa), (b, qb) = self.q_in(node, 0), self.q_in(node, 1)
            if a.shape != b.shape or mod._out_dtype != quint8 or getattr(mod, "_unobserved", False):
                raise Unsupported(f"{node.name}: an add the fused kernel does not run")
            self.guard(mod, equal=(*_OUT_ATTRS, "_unobserved"))
            self.add(
                "add",
                a,
                node,
                a.shape,
                b.index,
                qa.q_scale(),
                qa.q_zero_point(),
                qb.q_scale(),
                qb.q_zero_point(),
                mod.scale,
                mod.zero_point,
                mod.quant_min,
                mod.quant_max,
                t is QAddReLU,
            )
            return
        if t in _MAX_POOLS or t in _AVG_POOLS or t in _ADAPTIVE_POOLS:
            self.pool_module(node, mod)
            return
        if t is pt.ReLU:
            src, q = self.q_in(node)
            self.guard(mod)
            self.add("relu", src, node, src.shape, q.q_zero_point())
            return
        if t is pt.Flatten:
            self.flatten(node, mod)
            return
        if t is DeQuantize:
            src, q = self.q_in(node)
            self.guard(mod)
            if q.dim() >= 3:
                src = self.to_contiguous(src, node)
            y = self.values.get(node)
            if y is None or not y.tensor:
                raise Unsupported("DeQuantize gave an unexpected value")
            dst = self.new_slot(node, tuple(y.shape))
            self.steps.append(
                ("dequantize", src.index, dst.index, list(src.shape), list(y.shape), q.q_scale(), q.q_zero_point())
            )
            self.names.append(node.name)
            return
        raise Unsupported(f"{node.name}: {t.__name__} runs in Python")

    def to_contiguous(self, src: _Slot, node: fx.Node) -> _Slot:
        """A step writing ``src`` (channels-last) in its logical order."""
        s = _Slot(self.count, src.shape, src.scale, src.zero_point)
        self.count += 1
        self.steps.append(("to_contiguous", src.index, s.index, list(src.shape), list(src.shape)))
        self.names.append(node.name)
        return s

    def pool_module(self, node: fx.Node, mod: Any) -> None:
        """A pooling module: its forward's call of the functional form."""
        t = type(mod)
        self.guard(mod, equal=_POOL_ATTRS)
        if t in _MAX_POOLS:
            args = (mod.kernel_size, mod.stride, mod.padding, mod.dilation)
            kw = {"ceil_mode": mod.ceil_mode, "return_indices": mod.return_indices}
            self.pool(node, "max", _MAX_POOLS[t], args, kw)
        elif t in _ADAPTIVE_POOLS:
            self.pool(node, "adaptive", _ADAPTIVE_POOLS[t], (mod.output_size,), {})
        else:
            args = (mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad)
            self.pool(node, "avg", _AVG_POOLS[t], (*args, getattr(mod, "divisor_override", None)), {})

    def pool(self, node: fx.Node, kind: str, nd: int, args: tuple, kwargs: dict) -> None:
        """``{kind}_pool{nd}d(input, *args, **kwargs)`` as the QTensor handlers run it."""
        src, q = self.q_in(node)
        if q.dim() != nd + 2 or q.int_repr().numel() == 0:
            raise Unsupported(f"{node.name}: pooling input of {q.dim()} dims")
        lift = [1] * (3 - nd)
        if kind == "max":
            geom = max_pool_geometry(nd, q.int_repr(), args, kwargs)
            if geom is None:
                raise Unsupported(f"{node.name}: max pooling the kernel does not run")
            k, s, p, dil = geom
            self.add("max_pool", src, node, src.shape, (lift + k, lift + s, [0] * (3 - nd) + p, lift + dil))
            return
        if kind == "adaptive":
            windows, divisor = adaptive_windows(nd, q.shape, args, kwargs), None
        else:
            found = avg_windows(nd, q.shape, args, kwargs)
            windows, divisor = (None, None) if found is None else found
        if windows is None:
            raise Unsupported(f"{node.name}: average pooling the kernel does not run")
        whole = ([0], [1], [1])
        dt = q.dtype
        self.add(
            "avg_pool",
            src,
            node,
            src.shape,
            [whole] * (3 - nd) + list(windows),
            divisor,
            q.q_zero_point(),
            dt.qmin,
            dt.qmax,
        )

    def call_function(self, node: fx.Node) -> None:
        """Functional pooling and ReLU on a quantized value, with constant arguments."""
        fn = node.target
        rest, kwargs = node.args[1:], dict(node.kwargs)
        if any(isinstance(a, fx.Node) for a in _flat((rest, kwargs))):
            raise Unsupported(f"{node.name}: arguments computed in the graph")
        if fn in _FN_RELU:
            src, q = self.q_in(node)
            self.add("relu", src, node, src.shape, q.q_zero_point())
            return
        for kind, table in (("max", _FN_MAX_POOLS), ("avg", _FN_AVG_POOLS), ("adaptive", _FN_ADAPTIVE_POOLS)):
            nd = table.get(fn)  # type: ignore[call-overload]
            if nd is not None:
                if kind == "max" and (kwargs.get("return_indices") or (len(rest) > 5 and rest[5])):
                    raise Unsupported(f"{node.name}: max pooling with indices")
                self.pool(node, kind, nd, tuple(rest), kwargs)
                return
        raise Unsupported(f"{node.name}: {getattr(fn, '__name__', fn)} runs in Python", structural=True)

    def flatten(self, node: fx.Node, mod: Any) -> None:
        src, q = self.q_in(node)
        y = self.out(node)
        nd = q.dim()
        start, end = mod.start_dim % max(nd, 1), mod.end_dim % max(nd, 1)
        if nd >= 3 and not (start == 1 and end == nd - 1):
            raise Unsupported(f"{node.name}: a flatten that keeps spatial dims")
        self.guard(mod, equal=("start_dim", "end_dim"))
        if nd >= 3 and any(v != 1 for v in q.shape[2:]) and q.shape[1] != 1:
            src = self.to_contiguous(src, node)
        self.slots[node] = _Slot(src.index, tuple(y.shape), src.scale, src.zero_point)


def _flat(v: Any) -> list:
    """The leaves of nested tuples / lists / dicts."""
    if isinstance(v, (tuple, list)):
        return [leaf for item in v for leaf in _flat(item)]
    if isinstance(v, dict):
        return _flat(list(v.values()))
    return [v]


def record(gm: fx.GraphModule, x: torch.Tensor) -> tuple[Any, dict[fx.Node, _Meta]]:
    """The graph's own result on ``x`` (module by module) and a summary of every node's value."""
    rec = _Recorder(gm)
    result = rec.run(x)
    return result, rec.meta


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, QTensor) and isinstance(b, QTensor):
        return (
            a.q_scale() == b.q_scale()
            and a.q_zero_point() == b.q_zero_point()
            and a.int_repr().stride() == b.int_repr().stride()
            and torch.equal(a.int_repr(), b.int_repr())
        )
    if type(a) is torch.Tensor and type(b) is torch.Tensor:
        return a.stride() == b.stride() and a.dtype == b.dtype and torch.equal(a, b)
    return False


class _Entry:
    """One input shape's plan (or why there is none)."""

    __slots__ = ("plan", "reason", "wrap", "steps", "wait", "names", "cl", "retry", "backoff")

    def __init__(self, reason: str, wait: Optional[list] = None) -> None:
        # calls left before a failed build is tried again (None: never), and the next wait
        self.retry: Optional[int] = None
        self.backoff = _FIRST_RETRY
        self.names: list[str] = []
        self.cl = False
        self.plan: Any = None
        self.reason = reason
        self.wait = wait or []
        self.wrap: Optional[Callable[[Any], Any]] = None
        self.steps = 0


class PlanCache:
    """Per converted model: input shape and layout → plan, the most recently used few. Never
    copied or pickled (a copy starts empty and builds its own)."""

    def __init__(self) -> None:
        self.entries: dict[tuple, _Entry] = {}
        # why no input can run as a plan (the graph's node kinds), until the graph changes
        self.never: Optional[str] = None

    def __deepcopy__(self, memo: dict) -> PlanCache:
        return PlanCache()

    def __reduce__(self) -> tuple:
        return (PlanCache, ())

    def clear(self) -> None:
        self.entries.clear()
        self.never = None

    def status(self) -> list[tuple[tuple[int, ...], bool, str]]:
        return [
            (
                key[0],
                e.plan is not None,
                (f"{e.steps} steps" if e.plan is not None else e.reason) + (" (channels-last input)" if key[1] else ""),
            )
            for key, e in self.entries.items()
        ]

    def profile(self, x: torch.Tensor, runs: int) -> Optional[list[tuple[str, str, float]]]:
        """``(node, step kind, median µs)`` per step of the plan for ``x``'s shape, or None when
        there is none (or a guard fails)."""
        cl = not x.is_contiguous()
        e = self.entries.get((tuple(x.shape), cl))
        if e is None or e.plan is None:
            return None
        xin = x.detach()
        arr = nhwc_numpy(xin) if cl else xin.numpy()
        times = []
        for _ in range(max(1, runs)):
            t = e.plan.step_seconds(arr, get_num_threads())
            if t is None:
                return None
            times.append(t)
        names = e.names
        out = []
        for i, kind in enumerate(e.plan.step_kinds()):
            col = sorted(t[i] for t in times)
            out.append((names[i] if i < len(names) else "", kind, col[len(col) // 2] * 1e6))
        return out

    def run(self, gm: fx.GraphModule, x: Any) -> Any:
        """The forward's result through a plan, or ``NotImplemented`` (then the caller runs the
        graph's forward)."""
        if self.never is not None:
            return NotImplemented
        if type(x) is not torch.Tensor or x.dtype != torch.float32 or x.device.type != "cpu":
            return NotImplemented
        if x.is_contiguous():
            cl = False
        elif x.dim() in (4, 5) and x.is_contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        ):
            cl = True
        else:
            return NotImplemented
        key = (tuple(x.shape), cl)
        e = self.entries.pop(key, None)  # re-inserted last: most recently used
        if e is None:
            return self._build(gm, x, key)
        self.entries[key] = e
        if e.plan is None:
            if e.wait:
                if not any(e.wait):  # the hooks or overrides that stopped it are gone
                    self.entries.pop(key, None)
                    return self._build(gm, x, key)
            elif e.retry is not None:
                e.retry -= 1
                if e.retry <= 0:  # the model may have changed in a way no guard sees
                    self.entries.pop(key, None)
                    return self._build(gm, x, key, min(e.backoff * 2, _LAST_RETRY))
            return NotImplemented
        xin = x.detach() if x.requires_grad else x
        arr = e.plan.run(nhwc_numpy(xin) if cl else xin.numpy(), get_num_threads())
        if arr is None:
            # a guard failed: the model changed; every plan may hold what was replaced
            self.entries.clear()
            return self._build(gm, x, key)
        assert e.wrap is not None
        return e.wrap(arr)

    def _build(self, gm: fx.GraphModule, x: torch.Tensor, key: tuple, backoff: int = _FIRST_RETRY) -> Any:
        while len(self.entries) >= _MAX_PLANS:
            self.entries.pop(next(iter(self.entries)), None)
        # the recording interprets gm.graph, the forward runs gm.code: the same program only
        if gm.graph.python_code(root_module="self").src != gm.code:
            self.entries[key] = _Entry("the graph was edited without recompile()")
            return NotImplemented
        result, values = record(gm, x)
        try:
            e = _make_entry(gm, x, key[1], values, result)
        except Unsupported as why:
            if why.structural:
                self.never = str(why)
            e = _Entry(str(why), why.wait)
            if not (why.structural or why.permanent or why.wait):
                e.retry, e.backoff = backoff, backoff
        self.entries[key] = e
        return result


def _make_entry(gm: fx.GraphModule, x: torch.Tensor, cl: bool, values: dict, result: Any) -> _Entry:
    b = _Builder(gm, values, x.detach())
    steps, _ = b.build()
    y = result  # the value of the output node's one argument
    if isinstance(y, QTensor):
        shape, scale, zp = tuple(y.shape), y.q_scale(), y.q_zero_point()
        if len(shape) >= 3:
            mem = [shape[0], *shape[2:], shape[1]]

            def wrap(a: Any) -> Any:
                return QTensor._trusted(from_nhwc(a), scale, zp, quint8)
        else:
            mem = list(shape)

            def wrap(a: Any) -> Any:
                return QTensor._trusted(torch.from_numpy(a), scale, zp, quint8)
    else:
        mem = list(y.shape)
        wrap = torch.from_numpy
    try:
        same = [*b.owners.values(), *b.same]
        plan = _core.Plan(steps, list(x.shape), mem, same, b.equal, b.versions, b.empty, b.lengths, b.types)
        xin = x.detach()
        arr = plan.run(nhwc_numpy(xin) if cl else xin.numpy(), get_num_threads())
        if arr is None:
            raise Unsupported("the model changed while the plan was built")
        got = wrap(arr)
    except Unsupported:
        raise
    except Exception as err:  # noqa: BLE001 - any failure means: run module by module
        raise Unsupported(f"the plan failed to build or run: {type(err).__name__}: {err}") from None
    if not _same(got, y):
        raise Unsupported("the plan's result differs from the module-by-module forward")
    e = _Entry("")
    e.plan, e.wrap, e.steps, e.names, e.cl = plan, wrap, len(steps), b.names, cl
    return e
