"""Fused modules for quantization-aware training (``torch.ao.nn.intrinsic.qat``): conv / linear
with BatchNorm folded into the fake-quantized weight while training, and their ReLU forms.
``model.apply(freeze_bn_stats)`` switches BatchNorm to its running statistics."""

from .modules import *  # noqa: F403
from .modules import __all__  # noqa: F401
