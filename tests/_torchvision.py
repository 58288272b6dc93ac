"""torchvision's quantization-ready models as the parity tests and scripts/torchvision-parity.py
build them: random weights, non-trivial BatchNorm statistics, torchvision's own fuse_model()."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

# torch.ao's conversion is run on its "fbgemm" engine: FBGEMM's requantization is the rule ferroquant
# follows (NUMERICS D2). On a VNNI CPU the "x86" engine runs these convs on oneDNN, which adds the
# output zero point before rounding: a last-bit difference at near-ties that a deep residual net
# amplifies — torch's x86 and fbgemm engines agreed with each other on only 95.5 % of resnet18's
# outputs within 1 LSB on a 64x64 batch (scripts/torchvision-parity.py measures all three).
REFERENCE_ENGINE = "fbgemm"

#: torchvision's quantization-ready models the parity test and scripts/torchvision-parity.py run
QUANTIZABLE_MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "googlenet",
    "inception_v3",
]


def off_quantize_ties(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` with the values whose ``x / scale`` lies within 1e-3 of a .5 fraction moved off it by
    2e-3 steps: there torch's QuantStub adds the zero point before rounding and ferroquant after
    (D3), so the two quantize such inputs 1 LSB apart by decision."""
    v = x / scale
    near = ((v - v.floor()) - 0.5).abs() < 1e-3
    return torch.where(near, x + 2e-3 * scale, x)


def torchvision_model(name: str) -> nn.Module:
    """torchvision's quantization-ready model with random weights and BatchNorm statistics that
    are not the identity (seeded)."""
    import torchvision.models.quantization as tvq

    torch.manual_seed(0)
    aux = {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return with_trained_batchnorm(getattr(tvq, name)(weights=None, quantize=False, **aux).eval())


def with_trained_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm statistics and affine parameters away from the identity (as after
    training; torchvision's random init leaves them at it), drawn from torch's global generator."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def convert_torchvision(lib, base: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """torchvision's own flow: fuse_model() (torch.ao's fused modules), the x86 qconfig, prepare,
    calibrate, convert — with ``lib`` = ferroquant or torch.ao.quantization."""
    m = copy.deepcopy(base)
    m.fuse_model()
    m.qconfig = lib.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation; ours: the aux heads stay float
        prepared = lib.prepare(m)
        with torch.no_grad():
            for c in calib:
                prepared(c)
        return lib.convert(prepared)
