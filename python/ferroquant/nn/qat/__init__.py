"""Quantization-aware training modules (``torch.ao.nn.qat``): float layers whose weights pass
through the qconfig's weight fake-quant. ``prepare_qat`` swaps them in; ``convert`` turns them
into the quantized modules of ``ferroquant.nn.quantized`` with the fake-quants' frozen qparams."""

from .modules import Conv1d, Conv2d, Conv3d, Embedding, EmbeddingBag, Linear

__all__ = ["Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "EmbeddingBag"]
