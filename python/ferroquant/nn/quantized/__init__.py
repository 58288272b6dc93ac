"""Quantized modules (``torch.ao.nn.quantized``). Dynamic modules live in ``.dynamic``."""

from . import dynamic  # noqa: F401

__all__ = ["dynamic"]
