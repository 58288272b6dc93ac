"""Fused modules for quantization-aware training (``torch.ao.nn.intrinsic.qat``): conv / linear
with BatchNorm folded into the fake-quantized weight while training, and their ReLU forms.
``model.apply(freeze_bn_stats)`` switches BatchNorm to its running statistics."""

from .modules import (
    ConvBn1d,
    ConvBn2d,
    ConvBn3d,
    ConvBnReLU1d,
    ConvBnReLU2d,
    ConvBnReLU3d,
    ConvReLU1d,
    ConvReLU2d,
    ConvReLU3d,
    LinearBn1d,
    LinearReLU,
    freeze_bn_stats,
    update_bn_stats,
)

__all__ = [
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "ConvBnReLU1d",
    "ConvBnReLU2d",
    "ConvBnReLU3d",
    "ConvReLU1d",
    "ConvReLU2d",
    "ConvReLU3d",
    "LinearReLU",
    "LinearBn1d",
    "freeze_bn_stats",
    "update_bn_stats",
]
