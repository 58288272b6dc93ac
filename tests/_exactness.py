"""When torch's int8 engine computes exactly, and a float64 reference for the cases where it doesn't.

torch's x86 engine multiplies quint8 activations by qint8 weights with ``vpmaddubsw`` unless the CPU
has AVX-512 VNNI; that instruction saturates the int16 sum of two products, so with activations
above 127 torch's answer can be wrong (by tens of LSB). ferroquant is exact on every engine. Parity
tests therefore compare with torch only where torch is exact (probed, not guessed from the CPU),
and always compare every weighted layer with the float64 reference of its own integer problem:
dequantize the layer's int8 input and weights, run the op in float64, quantize with the layer's
output qparams; ferroquant must be within 1 LSB on every element.
"""

from __future__ import annotations

import functools
import os

import ferroquant as fq
import torch
import torch.nn.functional as F

# the env vars that make torch's x86 int8 engine behave as on an AVX2-only CPU: FBGEMM (Linear)
# and oneDNN (which the x86 engine uses for convs) restricted to their AVX2 code
TORCH_AVX2_ENV = "FBGEMM_ENABLE_INSTRUCTIONS"
TORCH_CONV_AVX2_ENV = "ONEDNN_MAX_CPU_ISA"


@functools.cache
def torch_linear_full_range_exact() -> bool:
    """Whether torch's int8 Linear is exact for activations in 0..255 here (probed once)."""
    return _linear_probe()


def _linear_probe() -> bool:
    """Whether torch's int8 Linear is exact for activations in 0..255 on this process's CPU path.

    Probe: activations 255 and weights 127 make each u8×s8 pair sum 64770, which ``vpmaddubsw``
    saturates to 32767; an exact engine returns 4·255·127 = 129540 (130 at output scale 1000).
    """
    w = torch.quantize_per_tensor(torch.full((1, 4), 127.0), 1.0, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(w, None)
    x = torch.quantize_per_tensor(torch.full((1, 4), 255.0), 1.0, 0, torch.quint8)
    y = torch.ops.quantized.linear(x, packed, 1000.0, 0)
    return int(y.int_repr().reshape(-1)[0]) == 130


@functools.cache
def torch_conv_full_range_exact() -> bool:
    """Whether torch's int8 Conv2d is exact for activations in 0..255 here (probed once)."""
    return _conv_probe()


def _conv_probe() -> bool:
    """The same probe through torch's int8 Conv2d (a 1x1 conv over 4 channels), which the x86
    engine runs on oneDNN: exact with VNNI, saturating on oneDNN's AVX2 code."""
    w = torch.quantize_per_tensor(torch.full((1, 4, 1, 1), 127.0), 1.0, 0, torch.qint8)
    packed = torch.ops.quantized.conv2d_prepack(w, None, [1, 1], [0, 0], [1, 1], 1)
    x = torch.quantize_per_tensor(torch.full((1, 4, 2, 2), 255.0), 1.0, 0, torch.quint8)
    y = torch.ops.quantized.conv2d(x, packed, 1000.0, 0)
    return int(y.int_repr().reshape(-1)[0]) == 130


def torch_full_range_exact() -> bool:
    """Whether torch's int8 Linear and Conv are both exact for activations in 0..255 here."""
    return torch_linear_full_range_exact() and torch_conv_full_range_exact()


def torch_engine_full_range_exact() -> bool:
    """The probes, run now on ``torch.backends.quantized.engine`` (not cached: tests switch it)."""
    return _linear_probe() and _conv_probe()


def torch_forced_to_avx2() -> bool:
    return os.environ.get(TORCH_AVX2_ENV, "").upper() == "AVX2"


def torch_conv_forced_to_avx2() -> bool:
    return os.environ.get(TORCH_CONV_AVX2_ENV, "").upper() == "AVX2"


def _dequantize64(q) -> torch.Tensor:
    """A ferroquant QTensor as float64, computed in float64: (q - zero_point) · scale."""
    v = q.int_repr().to(torch.float64)
    if q.is_per_channel:
        shape = [1] * v.dim()
        axis = q.q_per_channel_axis()
        shape[axis] = -1
        zp = q.q_per_channel_zero_points().to(torch.float64).reshape(shape)
        sc = q.q_per_channel_scales().to(torch.float64).reshape(shape)
        return (v - zp) * sc
    return (v - q.q_zero_point()) * q.q_scale()


_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def float64_reference(module, qx) -> torch.Tensor:
    """The integer output (int64) of a static quantized Linear / Conv (± fused ReLU) for the
    QTensor input ``qx``, computed in float64 and quantized with the module's output qparams."""
    x = _dequantize64(qx)
    w = _dequantize64(module.weight())
    b = module.bias()
    b = None if b is None else b.detach().to(torch.float64)
    if isinstance(module, fq.nn.quantized.Linear):
        y = F.linear(x, w, b)
    else:
        nd = w.dim() - 2
        pads = [p for pair in reversed(module._pads()) for p in pair]  # F.pad: last dim first
        y = _CONVS[nd](F.pad(x, pads), w, b, stride=module.stride, dilation=module.dilation, groups=module.groups)
    if getattr(module, "_FUSED_RELU", False):
        y = y.clamp(min=0)
    q = torch.round(y / module.scale) + module.zero_point
    return q.clamp(module.quant_min, module.quant_max).to(torch.int64)


WEIGHTED = (fq.nn.quantized.Linear, fq.nn.quantized.Conv1d, fq.nn.quantized.Conv2d, fq.nn.quantized.Conv3d)


def layer_lsb_errors(model, *inputs) -> list[tuple[str, int]]:
    """Runs ``model`` and returns, for every weighted quantized layer it ran, its class name and
    the largest |output − :func:`float64_reference` of its own input| in LSB."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out)))
        for m in model.modules()
        if isinstance(m, WEIGHTED)
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    errors = []
    for mod, qx, qy in seen:
        ref = float64_reference(mod, qx)
        got = qy.int_repr().to(torch.int64)
        assert got.shape == ref.shape, (type(mod).__name__, got.shape, ref.shape)
        errors.append((type(mod).__name__, int((got - ref).abs().max()) if got.numel() else 0))
    return errors


def assert_layers_match_float64(model, *inputs) -> int:
    """Every weighted quantized layer of ``model`` within 1 LSB of the float64 reference of its
    own input, on every element. Returns the number of layers checked (so callers can assert
    that something was checked)."""
    errors = layer_lsb_errors(model, *inputs)
    for name, diff in errors:
        assert diff <= 1, f"{name}: {diff} LSB from the float64 reference"
    return len(errors)
