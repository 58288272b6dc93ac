"""Functional quantized ops (``torch.ao.nn.quantized.functional``): planned with the static
quantization work; nothing is exported yet."""

__all__: list[str] = []
