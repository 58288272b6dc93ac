"""Fused float modules (``torch.ao.nn.intrinsic``): the results of ``fuse_modules``, which
``convert`` maps to their quantized counterparts."""

from torch import nn

from . import qat, quantized  # noqa: F401

__all__ = ["LinearReLU", "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "BNReLU2d", "BNReLU3d"]


class _FusedModule(nn.Sequential):
    """A float module followed by others, run in order (same as torch's _FusedModule)."""


class LinearReLU(_FusedModule):
    def __init__(self, linear: nn.Linear, relu: nn.ReLU) -> None:
        super().__init__(linear, relu)


class ConvReLU1d(_FusedModule):
    def __init__(self, conv: nn.Conv1d, relu: nn.ReLU) -> None:
        super().__init__(conv, relu)


class ConvReLU2d(_FusedModule):
    def __init__(self, conv: nn.Conv2d, relu: nn.ReLU) -> None:
        super().__init__(conv, relu)


class ConvReLU3d(_FusedModule):
    def __init__(self, conv: nn.Conv3d, relu: nn.ReLU) -> None:
        super().__init__(conv, relu)


class BNReLU2d(_FusedModule):
    def __init__(self, bn: nn.BatchNorm2d, relu: nn.ReLU) -> None:
        super().__init__(bn, relu)


class BNReLU3d(_FusedModule):
    def __init__(self, bn: nn.BatchNorm3d, relu: nn.ReLU) -> None:
        super().__init__(bn, relu)
