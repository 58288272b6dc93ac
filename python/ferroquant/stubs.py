"""QuantStub, DeQuantStub and QuantWrapper: where float becomes quantized and back.

Before ``convert`` they are float identities (QuantStub carries the activation observer after
``prepare``); ``convert`` turns them into ``ferroquant.nn.quantized.Quantize`` / ``DeQuantize``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = ["QuantStub", "DeQuantStub", "QuantWrapper"]


class QuantStub(nn.Module):
    """Marks where activations become quantized (an observer watches here after ``prepare``)."""

    def __init__(self, qconfig: Optional[Any] = None) -> None:
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DeQuantStub(nn.Module):
    """Marks where quantized activations go back to float."""

    def __init__(self, qconfig: Optional[Any] = None) -> None:
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x: Any) -> Any:
        return x


class QuantWrapper(nn.Module):
    """Wraps a module between a QuantStub and a DeQuantStub."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        qconfig = getattr(module, "qconfig", None)
        self.add_module("quant", QuantStub(qconfig))
        self.add_module("dequant", DeQuantStub(qconfig))
        self.add_module("module", module)
        self.train(module.training)

    def forward(self, x: Any) -> Any:
        return self.dequant(self.module(self.quant(x)))
