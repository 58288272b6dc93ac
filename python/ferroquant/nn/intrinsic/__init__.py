"""Fused float modules (``torch.ao.nn.intrinsic``): the results of ``fuse_modules`` (eval mode:
BatchNorm already folded) and ``fuse_modules_qat`` (train mode: ``ConvBn*`` / ``LinearBn1d`` keep
the BatchNorm for quantization-aware training), which ``convert`` / ``prepare_qat`` map on."""

from torch import nn

__all__ = [
    "LinearReLU",
    "ConvReLU1d",
    "ConvReLU2d",
    "ConvReLU3d",
    "BNReLU2d",
    "BNReLU3d",
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "ConvBnReLU1d",
    "ConvBnReLU2d",
    "ConvBnReLU3d",
    "LinearBn1d",
]


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
    """``nn.BatchNorm2d`` then ``nn.ReLU`` (``fuse_modules``' result); ``convert`` makes a quantized ``BNReLU2d``."""

    def __init__(self, bn: nn.BatchNorm2d, relu: nn.ReLU) -> None:
        super().__init__(bn, relu)


class BNReLU3d(_FusedModule):
    """``nn.BatchNorm3d`` then ``nn.ReLU`` (``fuse_modules``' result); ``convert`` makes a quantized ``BNReLU3d``."""

    def __init__(self, bn: nn.BatchNorm3d, relu: nn.ReLU) -> None:
        super().__init__(bn, relu)


class ConvBn1d(_FusedModule):
    """``nn.Conv1d`` then ``nn.BatchNorm1d``, kept apart for quantization-aware training
    (``fuse_modules_qat``); ``prepare_qat`` makes a ``nn.intrinsic.qat.ConvBn1d``."""

    def __init__(self, conv: nn.Conv1d, bn: nn.BatchNorm1d) -> None:
        super().__init__(conv, bn)


class ConvBn2d(_FusedModule):
    """``nn.Conv2d`` then ``nn.BatchNorm2d``, kept apart for quantization-aware training
    (``fuse_modules_qat``); ``prepare_qat`` makes a ``nn.intrinsic.qat.ConvBn2d``."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__(conv, bn)


class ConvBn3d(_FusedModule):
    """``nn.Conv3d`` then ``nn.BatchNorm3d``, kept apart for quantization-aware training
    (``fuse_modules_qat``); ``prepare_qat`` makes a ``nn.intrinsic.qat.ConvBn3d``."""

    def __init__(self, conv: nn.Conv3d, bn: nn.BatchNorm3d) -> None:
        super().__init__(conv, bn)


class ConvBnReLU1d(_FusedModule):
    """``nn.Conv1d``, ``nn.BatchNorm1d``, ``nn.ReLU`` for quantization-aware training."""

    def __init__(self, conv: nn.Conv1d, bn: nn.BatchNorm1d, relu: nn.Module) -> None:
        super().__init__(conv, bn, relu)


class ConvBnReLU2d(_FusedModule):
    """``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU`` for quantization-aware training."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: nn.Module) -> None:
        super().__init__(conv, bn, relu)


class ConvBnReLU3d(_FusedModule):
    """``nn.Conv3d``, ``nn.BatchNorm3d``, ``nn.ReLU`` for quantization-aware training."""

    def __init__(self, conv: nn.Conv3d, bn: nn.BatchNorm3d, relu: nn.Module) -> None:
        super().__init__(conv, bn, relu)


class LinearBn1d(_FusedModule):
    """``nn.Linear`` then ``nn.BatchNorm1d`` for quantization-aware training."""

    def __init__(self, linear: nn.Linear, bn: nn.BatchNorm1d) -> None:
        super().__init__(linear, bn)


from . import qat, quantized  # noqa: E402, F401  (after the classes: qat builds on them)
