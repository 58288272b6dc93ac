"""``torch.ao.nn.intrinsic.qat`` counterpart: not available yet (quantization-aware training is
open work); nothing is exported."""

__all__: list[str] = []
