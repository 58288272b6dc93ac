"""Float modules that also run on quantized activations under TorchScript.

In eager mode ``nn.ReLU``, the pooling layers, ``nn.Flatten``, ``nn.Identity`` (what fusion leaves
behind) and ``nn.Sequential`` work on a ``QTensor`` directly (through ``QTensor.__torch_function__``).
Under ``torch.jit.script`` a quantized tensor is the tuple ``(int_repr, scale, zero_point)``,
which torch's own modules do not accept. ``convert`` therefore swaps these modules, where they
have a qconfig, for the subclasses below: same class name, attributes, ``repr`` and eager
behaviour (their forward *is* torch's), plus a TorchScript overload for the tuple that computes
exactly what the eager QTensor path computes. Float inputs keep working under TorchScript too
(the overload is chosen by the argument's type), so a swapped module may sit on either side of
a DeQuantStub.

This file must not use ``from __future__ import annotations``: TorchScript reads the overloads'
annotations as real types.
"""

# TorchScript overloads: each class declares `forward` three times (two typed stubs, then the body)
# ruff: noqa: F811

import copy
from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._script import script_unpack

__all__ = [
    "Identity",
    "ReLU",
    "Flatten",
    "Dropout",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "Sequential",
    "PASSTHROUGH_MODULES",
]

# the TorchScript form of a quantized tensor (written out: the overloads need real annotations)
_QT = Tuple[Tensor, Tensor, Tensor]


def _retyped(mod: nn.Module, cls: type) -> nn.Module:
    """A shallow copy of ``mod`` as an instance of ``cls`` (a subclass of ``type(mod)``): same
    attributes, hooks and children; its own parameter / buffer / child tables."""
    base = cls.__bases__[-1]
    if type(mod) is not base:
        raise TypeError(f"{cls.__name__}.from_float expects an nn.{base.__name__}, got {type(mod).__name__}")
    new = cls.__new__(cls)
    state = dict(mod.__dict__)
    for table in ("_parameters", "_buffers", "_modules"):
        state[table] = copy.copy(state[table])
    new.__dict__.update(state)
    return new


class _Passthrough:
    """Mixin: ``from_float`` retypes the float module; the name in ``repr`` stays torch's."""

    _fq_io = "**"  # TorchScript: takes a float or a quantized tensor and returns the same kind

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        if getattr(mod, "return_indices", False):
            return mod  # max pooling with indices does not run on quantized tensors: leave it as it is
        return _retyped(mod, cls)

    def _get_name(self) -> str:
        return type(self).__bases__[-1].__name__  # the torch class this one extends


class Identity(_Passthrough, nn.Identity):
    """``nn.Identity`` for float or quantized inputs (fusion leaves these in place of the ReLU / BN)."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        return input


class ReLU(_Passthrough, nn.ReLU):
    """``nn.ReLU``; on quantized input ``max(q, zero_point)`` with the input's qparams."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.relu(input, inplace=self.inplace)
        d, s, z = script_unpack(input, "ReLU")
        return torch.clamp(d, min=z), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.ReLU.forward(self, input)


class Flatten(_Passthrough, nn.Flatten):
    """``nn.Flatten``; on quantized input it flattens the int data, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return input.flatten(self.start_dim, self.end_dim)
        d, s, z = script_unpack(input, "Flatten")
        return d.flatten(self.start_dim, self.end_dim), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.Flatten.forward(self, input)


class Dropout(nn.Module):
    """``torch.ao.nn.quantized.Dropout``: the identity (inference), for quantized or float inputs."""

    _fq_io = "**"

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p, self.inplace = p, inplace

    @torch.jit._overload_method
    def forward(self, x: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, x: _QT) -> _QT: ...

    def forward(self, x: Any) -> Any:
        return x

    def _get_name(self) -> str:
        return "QuantizedDropout"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> "Dropout":
        return cls(getattr(mod, "p", 0.5), getattr(mod, "inplace", False))


def _wide(d: Tensor) -> torch.dtype:
    # 8-bit integers are exact in float32 and int32 ones in float64 (as the eager QTensor path)
    return torch.float64 if d.dtype == torch.int32 else torch.float32


def _int_range(d: Tensor, who: str) -> Tuple[int, int]:
    if d.dtype == torch.uint8:
        return 0, 255
    if d.dtype == torch.int8:
        return -128, 127
    raise TypeError(who + " under TorchScript supports quint8 and qint8 activations (torch.uint8 / torch.int8 data)")


def _avg_requant(mean: Tensor, d: Tensor, z: int, who: str) -> Tensor:
    # rne(mean(q - zp) + zp), clamped to the dtype's range (the eager QTensor rule)
    lo, hi = _int_range(d, who)
    return torch.clamp(torch.round(mean + z), lo, hi).to(d.dtype)


class MaxPool1d(_Passthrough, nn.MaxPool1d):
    """``nn.MaxPool1d``; on quantized input the max of the integers, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.max_pool1d(
                input, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode
            )
        d, s, z = script_unpack(input, "MaxPool1d")
        out = F.max_pool1d(
            d.to(_wide(d)), self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode
        )
        return out.to(d.dtype), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.MaxPool1d.forward(self, input)


class MaxPool2d(_Passthrough, nn.MaxPool2d):
    """``nn.MaxPool2d``; on quantized input the max of the integers, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.max_pool2d(
                input, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode
            )
        d, s, z = script_unpack(input, "MaxPool2d")
        out = F.max_pool2d(
            d.to(_wide(d)), self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode
        )
        return out.to(d.dtype), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.MaxPool2d.forward(self, input)


class MaxPool3d(_Passthrough, nn.MaxPool3d):
    """``nn.MaxPool3d``; on quantized input the max of the integers, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.max_pool3d(
                input, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode
            )
        d, s, z = script_unpack(input, "MaxPool3d")
        out = F.max_pool3d(
            d.to(_wide(d)), self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode
        )
        return out.to(d.dtype), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.MaxPool3d.forward(self, input)


class AvgPool1d(_Passthrough, nn.AvgPool1d):
    """``nn.AvgPool1d``; on quantized input ``rne(mean(q − zp) + zp)``, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.avg_pool1d(
                input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
            )
        d, s, z = script_unpack(input, "AvgPool1d")
        mean = F.avg_pool1d(
            d.to(torch.float32) - z, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )
        return _avg_requant(mean, d, z, "AvgPool1d"), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.AvgPool1d.forward(self, input)


class AvgPool2d(_Passthrough, nn.AvgPool2d):
    """``nn.AvgPool2d``; on quantized input ``rne(mean(q − zp) + zp)``, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.avg_pool2d(
                input,
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            )
        d, s, z = script_unpack(input, "AvgPool2d")
        mean = F.avg_pool2d(
            d.to(torch.float32) - z,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
        return _avg_requant(mean, d, z, "AvgPool2d"), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.AvgPool2d.forward(self, input)


class AvgPool3d(_Passthrough, nn.AvgPool3d):
    """``nn.AvgPool3d``; on quantized input ``rne(mean(q − zp) + zp)``, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.avg_pool3d(
                input,
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            )
        d, s, z = script_unpack(input, "AvgPool3d")
        mean = F.avg_pool3d(
            d.to(torch.float32) - z,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
        return _avg_requant(mean, d, z, "AvgPool3d"), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.AvgPool3d.forward(self, input)


class AdaptiveAvgPool1d(_Passthrough, nn.AdaptiveAvgPool1d):
    """``nn.AdaptiveAvgPool1d``; on quantized input ``rne(mean(q − zp) + zp)``, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.adaptive_avg_pool1d(input, self.output_size)
        d, s, z = script_unpack(input, "AdaptiveAvgPool1d")
        mean = F.adaptive_avg_pool1d(d.to(torch.float32) - z, self.output_size)
        return _avg_requant(mean, d, z, "AdaptiveAvgPool1d"), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.AdaptiveAvgPool1d.forward(self, input)


class AdaptiveAvgPool2d(_Passthrough, nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d``; on quantized input ``rne(mean(q − zp) + zp)``, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.adaptive_avg_pool2d(input, self.output_size)
        d, s, z = script_unpack(input, "AdaptiveAvgPool2d")
        mean = F.adaptive_avg_pool2d(d.to(torch.float32) - z, self.output_size)
        return _avg_requant(mean, d, z, "AdaptiveAvgPool2d"), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.AdaptiveAvgPool2d.forward(self, input)


class AdaptiveAvgPool3d(_Passthrough, nn.AdaptiveAvgPool3d):
    """``nn.AdaptiveAvgPool3d``; on quantized input ``rne(mean(q − zp) + zp)``, qparams unchanged."""

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        if isinstance(input, Tensor):
            return F.adaptive_avg_pool3d(input, self.output_size)
        d, s, z = script_unpack(input, "AdaptiveAvgPool3d")
        mean = F.adaptive_avg_pool3d(d.to(torch.float32) - z, self.output_size)
        return _avg_requant(mean, d, z, "AdaptiveAvgPool3d"), input[1], input[2]

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.AdaptiveAvgPool3d.forward(self, input)


class Sequential(_Passthrough, nn.Sequential):
    """``nn.Sequential`` whose scripted forward also takes quantized tensors. ``convert`` converts
    its children, then ``settle`` gives it the TorchScript signature they need: float or
    quantized in and out when every child passes either through (ReLU, pooling, ...), quantized
    in and out around quantized modules, float → quantized when it starts with a QuantStub,
    quantized → float when it ends with a DeQuantStub; a container of float modules only goes
    back to a plain ``nn.Sequential``."""

    _fq_convert_children = True
    _fq_io = "**"  # float or quantized, the same out as in

    @torch.jit._overload_method
    def forward(self, input: Tensor) -> Tensor: ...

    @torch.jit._overload_method
    def forward(self, input: _QT) -> _QT: ...

    def forward(self, input: Any) -> Any:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        for module in self:
            input = module(input)
        return input

    @torch.jit.unused
    def _forward_eager(self, input: Any) -> Any:
        return nn.Sequential.forward(self, input)

    def settle(self) -> nn.Module:
        """This container as the class whose scripted forward fits its (converted) children."""
        # each child's TorchScript input and output: T(ensor), Q(uantized tuple), * (either, unchanged)
        kinds = [getattr(type(m), "_fq_io", "TT") for m in self]
        typed = [k for k in kinds if k != "**"]
        if not typed:
            return self
        io = typed[0][0] + typed[-1][1]
        cls = {"QQ": _SequentialQQ, "TQ": _SequentialTQ, "QT": _SequentialQT}.get(io, nn.Sequential)
        new = cls.__new__(cls)
        new.__dict__.update(self.__dict__)
        return new


class _SequentialQQ(Sequential):
    _fq_io = "QQ"

    def forward(self, input: _QT) -> _QT:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        for module in self:
            input = module(input)
        return input


class _SequentialTQ(Sequential):
    _fq_io = "TQ"

    def forward(self, input: Tensor) -> _QT:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        for module in self:
            input = module(input)
        return input


class _SequentialQT(Sequential):
    _fq_io = "QT"

    def forward(self, input: _QT) -> Tensor:
        if not torch.jit.is_scripting():
            return self._forward_eager(input)
        for module in self:
            input = module(input)
        return input


#: torch module type → its subclass here (added to convert's default mapping).
PASSTHROUGH_MODULES: dict[type, type] = {
    nn.Identity: Identity,
    nn.ReLU: ReLU,
    nn.Flatten: Flatten,
    nn.MaxPool1d: MaxPool1d,
    nn.MaxPool2d: MaxPool2d,
    nn.MaxPool3d: MaxPool3d,
    nn.AvgPool1d: AvgPool1d,
    nn.AvgPool2d: AvgPool2d,
    nn.AvgPool3d: AvgPool3d,
    nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d,
    nn.Sequential: Sequential,
}
