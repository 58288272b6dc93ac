"""Fused quantized modules (``torch.ao.nn.intrinsic.quantized``)."""

from ...quantized.batchnorm import BNReLU2d, BNReLU3d
from ...quantized.conv import ConvReLU1d, ConvReLU2d, ConvReLU3d
from ...quantized.linear import LinearReLU

__all__ = ["LinearReLU", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "BNReLU2d", "BNReLU3d"]
