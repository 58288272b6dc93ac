"""``torch.ao.nn.intrinsic.quantized`` counterpart: planned with the static and QAT workflows;
nothing is exported yet."""

__all__: list[str] = []
