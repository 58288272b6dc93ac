"""Fused float modules (``torch.ao.nn.intrinsic``): the results of ``fuse_modules``, which
``convert`` maps to their quantized counterparts."""

from torch import nn

from . import qat, quantized  # noqa: F401

__all__ = ["LinearReLU", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "BNReLU2d", "BNReLU3d"]


class _FusedModule(nn.Sequential):
    """A float module followed by others, run in order (same as torch's _FusedModule)."""


class LinearReLU(_FusedModule):
    """``nn.Linear`` then ``nn.ReLU`` (``fuse_modules``' result); ``convert`` makes a quantized ``LinearReLU``."""

    def __init__(self, linear: nn.Linear, relu: nn.ReLU) -> None:
        super().__init__(linear, relu)


class ConvReLU1d(_FusedModule):
    """``nn.Conv1d`` (BatchNorm folded in, if any) then ``nn.ReLU``; converts to a quantized ``ConvReLU1d``."""

    def __init__(self, conv: nn.Conv1d, relu: nn.ReLU) -> None:
        super().__init__(conv, relu)


class ConvReLU2d(_FusedModule):
    """``nn.Conv2d`` (BatchNorm folded in, if any) then ``nn.ReLU``; converts to a quantized ``ConvReLU2d``."""

    def __init__(self, conv: nn.Conv2d, relu: nn.ReLU) -> None:
        super().__init__(conv, relu)


class ConvReLU3d(_FusedModule):
    """``nn.Conv3d`` (BatchNorm folded in, if any) then ``nn.ReLU``; converts to a quantized ``ConvReLU3d``."""

    def __init__(self, conv: nn.Conv3d, relu: nn.ReLU) -> None:
        super().__init__(conv, relu)


class BNReLU2d(_FusedModule):
    """``nn.BatchNorm2d`` then ``nn.ReLU`` (``fuse_modules``' result). No quantized counterpart yet:
    keep it in float (``qconfig = None``, between a ``DeQuantStub`` and a ``QuantStub``)."""

    def __init__(self, bn: nn.BatchNorm2d, relu: nn.ReLU) -> None:
        super().__init__(bn, relu)


class BNReLU3d(_FusedModule):
    """``nn.BatchNorm3d`` then ``nn.ReLU`` (``fuse_modules``' result). No quantized counterpart yet:
    keep it in float (``qconfig = None``, between a ``DeQuantStub`` and a ``QuantStub``)."""

    def __init__(self, bn: nn.BatchNorm3d, relu: nn.ReLU) -> None:
        super().__init__(bn, relu)
