"""Quantized modules (``torch.ao.nn.quantized``). Dynamic modules live in ``.dynamic``."""

from . import dynamic  # noqa: F401
from .activation import ELU, Hardswish, LeakyReLU, PReLU, ReLU6
from .attention import MultiheadAttention
from .batchnorm import BatchNorm2d, BatchNorm3d
from .conv import Conv1d, Conv2d, Conv3d
from .conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .embedding import Embedding, EmbeddingBag
from .functional_modules import FloatFunctional, QFunctional
from .linear import Linear
from .misc import DeQuantize, Dropout, Quantize
from .normalization import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm, Softmax
from .rnn import LSTM
from .weight_only import WeightOnlyLinear

__all__ = [
    "dynamic",
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ReLU6",
    "Hardswish",
    "ELU",
    "LeakyReLU",
    "PReLU",
    "FloatFunctional",
    "QFunctional",
    "Quantize",
    "DeQuantize",
    "Dropout",
    "WeightOnlyLinear",
    "LSTM",
    "MultiheadAttention",
    "Embedding",
    "EmbeddingBag",
    "Softmax",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "BatchNorm2d",
    "BatchNorm3d",
]
