"""Quantized and quantization-ready modules, with torch.ao.nn's import paths."""

from . import intrinsic, qat, quantizable, quantized  # noqa: F401
