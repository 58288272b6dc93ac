"""Functional quantized ops (``torch.ao.nn.quantized.functional``): not available yet (open
work); nothing is exported."""

__all__: list[str] = []
