"""Fused modules for quantization-aware training (``torch.ao.nn.intrinsic.qat``).

``ConvBn*`` / ``LinearBn1d`` fold BatchNorm into the weight while training, as torch does: the
weight seen by the fake-quant is ``W·γ/√(running_var + ε)`` (what the int8 layer will hold), the
layer's output is divided back by that factor and BatchNorm runs on it, so the batch statistics
(in training) and the running statistics (once frozen) behave as in the float model.
``freeze_bn_stats`` switches BatchNorm to its running statistics; ``convert`` then folds BN with
exactly the formula the training forward used (docs/numerics.md D6/D7), so the int8 model
computes what the fake-quant model computed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import intrinsic as nni
from ...qat.modules import Conv1d as QATConv1d
from ...qat.modules import Conv2d as QATConv2d
from ...qat.modules import Conv3d as QATConv3d
from ...qat.modules import Linear as QATLinear
from ...qat.modules import _require_qconfig

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

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_CONV_RELU_FLOAT = {1: nni.ConvReLU1d, 2: nni.ConvReLU2d, 3: nni.ConvReLU3d}
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _is_fused(mod: nn.Module, fused: type) -> bool:
    """``mod`` is the fused float module ``fused``: ferroquant's, or torch.ao's class of that name."""
    from ....mappings import canonical_type  # (mappings imports this module)

    return canonical_type(mod) is fused


class _BnFolding:
    """BatchNorm folded into the weight for training (shared by the conv and linear forms)."""

    bn: nn.Module
    weight: torch.Tensor
    bias: Any
    weight_fake_quant: nn.Module
    freeze_bn: bool

    def _init_bn(self, bn_type: type, channels: int, eps: float, momentum: float, freeze_bn: bool) -> None:
        self.bn = bn_type(channels, eps, momentum, True, True)
        # freeze_bn as a buffer: saved in the state_dict (checkpoints resume frozen), synced by DDP
        self.register_buffer("bn_frozen", torch.zeros(1, dtype=torch.uint8))  # type: ignore[attr-defined]
        self.freeze_bn = freeze_bn if self.training else True  # type: ignore[attr-defined]
        if self.freeze_bn:
            self.freeze_bn_stats()
        else:
            self.update_bn_stats()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        # a checkpoint taken after freeze_bn_stats resumes frozen (the flag is the bn_frozen buffer)
        if bool(self.bn_frozen[0]):
            self.freeze_bn_stats()
        else:
            self.update_bn_stats()
            self.bn.training = self.training  # type: ignore[attr-defined]

    def update_bn_stats(self) -> Any:
        """BatchNorm uses (and updates) batch statistics while training."""
        self.freeze_bn = False
        self.bn_frozen.fill_(0)
        self.bn.training = True
        return self

    def freeze_bn_stats(self) -> Any:
        """BatchNorm uses its running statistics from now on, in training too."""
        self.freeze_bn = True
        self.bn_frozen.fill_(1)
        self.bn.training = False
        return self

    def train(self, mode: bool = True) -> Any:
        """As torch: a frozen BatchNorm stays in eval mode when the model goes back to training."""
        self.training = mode
        if not self.freeze_bn:
            for module in self.children():  # type: ignore[attr-defined]
                module.train(mode)
        else:
            for module in self.children():  # type: ignore[attr-defined]
                if module is not self.bn:
                    module.train(mode)
        return self

    def bn_scale_factor(self) -> torch.Tensor:
        """``γ / √(running_var + ε)``: the per-channel factor folded into the weight."""
        running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
        return self.bn.weight / running_std

    def folded_weight(self) -> torch.Tensor:
        """``W·γ/√(running_var + ε)``: the weight the fake-quant sees and ``convert`` quantizes."""
        shape = [1] * self.weight.dim()
        shape[0] = -1
        return self.weight * self.bn_scale_factor().reshape(shape)

    def folded_bias(self) -> torch.Tensor:
        """The bias of the folded layer with frozen statistics: ``β + (b − mean)·γ/√(var + ε)``."""
        b = self.bias if self.bias is not None else torch.zeros_like(self.bn.running_mean)
        return self.bn.bias + (b - self.bn.running_mean) * self.bn_scale_factor()

    def _folded_forward(self, input: torch.Tensor, layer: Any) -> torch.Tensor:
        """torch's approximate fold: layer(x, fq(W·f), 0) / f + b, then BatchNorm."""
        factor = self.bn_scale_factor()
        scaled = self.weight_fake_quant(self.folded_weight())
        zero_bias = torch.zeros(scaled.shape[0], device=scaled.device, dtype=input.dtype)
        out = layer(input, scaled, zero_bias)
        shape = [1] * out.dim()
        shape[1] = -1
        out = out / factor.reshape(shape)
        if self.bias is not None:
            out = out + self.bias.reshape(shape)
        return self.bn(out)


class _ConvBnNd(_BnFolding):
    _DIM: int
    _FUSED_FLOAT: type
    _WITH_RELU = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        eps: float = 1e-05,
        momentum: float = 0.1,
        freeze_bn: bool = False,
        qconfig: Any = None,
    ) -> None:
        _CONV[self._DIM].__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode
        )
        self.qconfig = _require_qconfig(qconfig, type(self).__name__)
        self.weight_fake_quant = self.qconfig.weight()
        self.relu = nn.ReLU() if self._WITH_RELU else None
        self._init_bn(_BN[self._DIM], out_channels, eps, momentum, freeze_bn)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self._folded_forward(input, self._conv_forward)  # type: ignore[attr-defined]
        return self.relu(out) if self.relu is not None else out

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """From the fused float module of ``fuse_modules_qat`` (conv, bn[, relu]) with a qconfig;
        shares its parameters and BatchNorm buffers."""
        if not _is_fused(mod, cls._FUSED_FLOAT):
            raise TypeError(
                f"{cls.__name__}.from_float expects a {cls._FUSED_FLOAT.__name__}, got {type(mod).__name__}"
            )
        conv, bn = mod[0], mod[1]
        qat = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            bn.eps,
            bn.momentum,
            False,
            getattr(mod, "qconfig", None),
        )
        qat.weight = conv.weight
        qat.bias = conv.bias
        qat.bn.weight = bn.weight
        qat.bn.bias = bn.bias
        qat.bn.running_mean = bn.running_mean
        qat.bn.running_var = bn.running_var
        qat.bn.num_batches_tracked = bn.num_batches_tracked
        if cls._WITH_RELU:
            qat.relu = mod[2]
        return qat

    def to_float(self) -> nn.Module:
        """The float conv with BatchNorm folded in (and its ReLU), as torch's ``to_float``."""
        conv = _CONV[self._DIM](
            self.in_channels,  # type: ignore[attr-defined]
            self.out_channels,  # type: ignore[attr-defined]
            self.kernel_size,  # type: ignore[attr-defined]
            self.stride,  # type: ignore[attr-defined]
            self.padding,  # type: ignore[attr-defined]
            self.dilation,  # type: ignore[attr-defined]
            self.groups,  # type: ignore[attr-defined]
            True,
            self.padding_mode,  # type: ignore[attr-defined]
        )
        with torch.no_grad():
            conv.weight.copy_(self.folded_weight())
            conv.bias.copy_(self.folded_bias())
        conv.train(self.training)
        if self.relu is None:
            return conv
        fused = _CONV_RELU_FLOAT[self._DIM](conv, self.relu)
        fused.train(self.training)
        return fused


class ConvBn1d(_ConvBnNd, nn.Conv1d):
    """Conv1d + BatchNorm1d for QAT, BatchNorm folded into the fake-quantized weight."""

    _DIM, _FUSED_FLOAT = 1, nni.ConvBn1d


class ConvBn2d(_ConvBnNd, nn.Conv2d):
    """Conv2d + BatchNorm2d for QAT, BatchNorm folded into the fake-quantized weight."""

    _DIM, _FUSED_FLOAT = 2, nni.ConvBn2d


class ConvBn3d(_ConvBnNd, nn.Conv3d):
    """Conv3d + BatchNorm3d for QAT, BatchNorm folded into the fake-quantized weight."""

    _DIM, _FUSED_FLOAT = 3, nni.ConvBn3d


class ConvBnReLU1d(_ConvBnNd, nn.Conv1d):
    """Conv1d + BatchNorm1d + ReLU for QAT."""

    _DIM, _FUSED_FLOAT, _WITH_RELU = 1, nni.ConvBnReLU1d, True


class ConvBnReLU2d(_ConvBnNd, nn.Conv2d):
    """Conv2d + BatchNorm2d + ReLU for QAT."""

    _DIM, _FUSED_FLOAT, _WITH_RELU = 2, nni.ConvBnReLU2d, True


class ConvBnReLU3d(_ConvBnNd, nn.Conv3d):
    """Conv3d + BatchNorm3d + ReLU for QAT."""

    _DIM, _FUSED_FLOAT, _WITH_RELU = 3, nni.ConvBnReLU3d, True


class _ConvReLU:
    """A QAT conv followed by its ReLU (or the ReLU-like module ``fuse_modules_qat`` kept)."""

    _FUSED_FLOAT: type

    def __init__(self, *args: Any, qconfig: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, qconfig=qconfig, **kwargs)  # type: ignore[call-arg]
        self.relu = nn.ReLU()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.relu(super().forward(input))  # type: ignore[misc]

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """From a fused (conv, relu) with a qconfig; shares its parameters."""
        if not _is_fused(mod, cls._FUSED_FLOAT):
            raise TypeError(
                f"{cls.__name__}.from_float expects a {cls._FUSED_FLOAT.__name__}, got {type(mod).__name__}"
            )
        mod[0].qconfig = getattr(mod, "qconfig", None)
        qat = super().from_float(mod[0])  # type: ignore[misc]
        qat.relu = mod[1]
        return qat

    def to_float(self) -> nn.Module:
        """The fused float module (``nn.intrinsic.ConvReLU*d`` / ``LinearReLU``), as torch's."""
        fused = self._FUSED_FLOAT(super().to_float(), self.relu)  # type: ignore[misc]
        fused.train(self.training)  # type: ignore[attr-defined]
        return fused


class ConvReLU1d(_ConvReLU, QATConv1d):
    """QAT Conv1d + ReLU."""

    _FUSED_FLOAT = nni.ConvReLU1d


class ConvReLU2d(_ConvReLU, QATConv2d):
    """QAT Conv2d + ReLU."""

    _FUSED_FLOAT = nni.ConvReLU2d


class ConvReLU3d(_ConvReLU, QATConv3d):
    """QAT Conv3d + ReLU."""

    _FUSED_FLOAT = nni.ConvReLU3d


class LinearReLU(_ConvReLU, QATLinear):
    """QAT Linear + ReLU."""

    _FUSED_FLOAT = nni.LinearReLU


class LinearBn1d(_BnFolding, nn.Linear):
    """Linear + BatchNorm1d for QAT, BatchNorm folded into the fake-quantized weight."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        eps: float = 1e-05,
        momentum: float = 0.1,
        freeze_bn: bool = False,
        qconfig: Any = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias)
        self.qconfig = _require_qconfig(qconfig, type(self).__name__)
        self.weight_fake_quant = self.qconfig.weight()
        self._init_bn(nn.BatchNorm1d, out_features, eps, momentum, freeze_bn)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._folded_forward(input, F.linear)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> LinearBn1d:
        """From a fused (linear, bn) with a qconfig; shares its parameters and BatchNorm buffers."""
        if not _is_fused(mod, nni.LinearBn1d):
            raise TypeError(f"{cls.__name__}.from_float expects a LinearBn1d, got {type(mod).__name__}")
        linear, bn = mod[0], mod[1]
        qat = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bn.eps,
            bn.momentum,
            False,
            getattr(mod, "qconfig", None),
        )
        qat.weight = linear.weight
        qat.bias = linear.bias
        qat.bn.weight = bn.weight
        qat.bn.bias = bn.bias
        qat.bn.running_mean = bn.running_mean
        qat.bn.running_var = bn.running_var
        qat.bn.num_batches_tracked = bn.num_batches_tracked
        return qat

    def to_float(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, True)
        with torch.no_grad():
            lin.weight.copy_(self.folded_weight())
            lin.bias.copy_(self.folded_bias())
        return lin


_BN_FOLDING = (_BnFolding,)


def freeze_bn_stats(mod: nn.Module) -> None:
    """``model.apply(freeze_bn_stats)``: BatchNorm in the QAT fused modules uses running statistics."""
    if isinstance(mod, _BN_FOLDING):
        mod.freeze_bn_stats()


def update_bn_stats(mod: nn.Module) -> None:
    """``model.apply(update_bn_stats)``: BatchNorm in the QAT fused modules uses batch statistics again."""
    if isinstance(mod, _BN_FOLDING):
        mod.update_bn_stats()
