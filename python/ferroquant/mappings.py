"""Tables from float modules to their quantized counterparts (data, not if-chains)."""

from __future__ import annotations

from torch import nn

from .nn import intrinsic as nni
from .nn import qat as nnqat
from .nn import quantized as nnq
from .nn.intrinsic import qat as nniqat
from .nn.intrinsic import quantized as nniq
from .nn.quantized import dynamic as nnqd
from .nn.quantized.passthrough import PASSTHROUGH_MODULES
from .stubs import DeQuantStub, QuantStub

#: Float module type → dynamic quantized module type (quantize_dynamic's default mapping).
DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS: dict[type, type] = {
    nn.Linear: nnqd.Linear,
    nn.LSTM: nnqd.LSTM,
    nn.GRU: nnqd.GRU,
    nn.RNN: nnqd.RNN,
    nn.LSTMCell: nnqd.LSTMCell,
    nn.GRUCell: nnqd.GRUCell,
    nn.RNNCell: nnqd.RNNCell,
    # opt-in (not in quantize_dynamic's default set): torch.ao has no dynamic MultiheadAttention
    nn.MultiheadAttention: nnqd.MultiheadAttention,
    # weight-only rows (dtype=torch.quint8 / quint4x2, float_qparams_weight_only_qconfig)
    nn.Embedding: nnq.Embedding,
    nn.EmbeddingBag: nnq.EmbeddingBag,
}

#: Float (or fused) module type → static quantized module type (convert's default mapping).
DEFAULT_STATIC_QUANT_MODULE_MAPPINGS: dict[type, type] = {
    QuantStub: nnq.Quantize,
    DeQuantStub: nnq.DeQuantize,
    nn.Linear: nnq.Linear,
    nn.Conv1d: nnq.Conv1d,
    nn.Conv2d: nnq.Conv2d,
    nn.Conv3d: nnq.Conv3d,
    nn.ConvTranspose1d: nnq.ConvTranspose1d,
    nn.ConvTranspose2d: nnq.ConvTranspose2d,
    nn.ConvTranspose3d: nnq.ConvTranspose3d,
    nni.LinearReLU: nniq.LinearReLU,
    nni.ConvReLU1d: nniq.ConvReLU1d,
    nni.ConvReLU2d: nniq.ConvReLU2d,
    nni.ConvReLU3d: nniq.ConvReLU3d,
    # quantization-aware training modules: converted with their fake-quants' frozen qparams, BN folded
    nnqat.Linear: nnq.Linear,
    nnqat.Conv1d: nnq.Conv1d,
    nnqat.Conv2d: nnq.Conv2d,
    nnqat.Conv3d: nnq.Conv3d,
    nniqat.LinearReLU: nniq.LinearReLU,
    nniqat.LinearBn1d: nnq.Linear,
    nniqat.ConvReLU1d: nniq.ConvReLU1d,
    nniqat.ConvReLU2d: nniq.ConvReLU2d,
    nniqat.ConvReLU3d: nniq.ConvReLU3d,
    nniqat.ConvBn1d: nnq.Conv1d,
    nniqat.ConvBn2d: nnq.Conv2d,
    nniqat.ConvBn3d: nnq.Conv3d,
    nniqat.ConvBnReLU1d: nniq.ConvReLU1d,
    nniqat.ConvBnReLU2d: nniq.ConvReLU2d,
    nniqat.ConvBnReLU3d: nniq.ConvReLU3d,
    nnqat.Embedding: nnq.Embedding,
    nnqat.EmbeddingBag: nnq.EmbeddingBag,
    # weight-only rows with float qparams (float_qparams_weight_only_qconfig); float output
    nn.Embedding: nnq.Embedding,
    nn.EmbeddingBag: nnq.EmbeddingBag,
    nn.ReLU6: nnq.ReLU6,
    nn.Hardswish: nnq.Hardswish,
    nn.ELU: nnq.ELU,
    nn.LeakyReLU: nnq.LeakyReLU,
    nn.PReLU: nnq.PReLU,
    nn.Dropout: nnq.Dropout,
    nn.LayerNorm: nnq.LayerNorm,
    nn.GroupNorm: nnq.GroupNorm,
    nn.InstanceNorm1d: nnq.InstanceNorm1d,
    nn.InstanceNorm2d: nnq.InstanceNorm2d,
    nn.InstanceNorm3d: nnq.InstanceNorm3d,
    nn.BatchNorm2d: nnq.BatchNorm2d,
    nn.BatchNorm3d: nnq.BatchNorm3d,
    nni.BNReLU2d: nniq.BNReLU2d,
    nni.BNReLU3d: nniq.BNReLU3d,
    nnq.FloatFunctional: nnq.QFunctional,
    # nn.ReLU, pooling, nn.Flatten, nn.Identity, nn.Sequential: same modules, plus a TorchScript
    # path for quantized tensors (ferroquant.nn.quantized.passthrough); no observer of their own
    **PASSTHROUGH_MODULES,
}

#: Float (or fused) module type → QAT module type (``prepare_qat``'s default mapping).
DEFAULT_QAT_MODULE_MAPPINGS: dict[type, type] = {
    nn.Linear: nnqat.Linear,
    # nn.MultiheadAttention's out_proj, as torch.ao maps it
    nn.modules.linear.NonDynamicallyQuantizableLinear: nnqat.Linear,
    nn.Conv1d: nnqat.Conv1d,
    nn.Conv2d: nnqat.Conv2d,
    nn.Conv3d: nnqat.Conv3d,
    nni.LinearReLU: nniqat.LinearReLU,
    nni.LinearBn1d: nniqat.LinearBn1d,
    nni.ConvReLU1d: nniqat.ConvReLU1d,
    nni.ConvReLU2d: nniqat.ConvReLU2d,
    nni.ConvReLU3d: nniqat.ConvReLU3d,
    nni.ConvBn1d: nniqat.ConvBn1d,
    nni.ConvBn2d: nniqat.ConvBn2d,
    nni.ConvBn3d: nniqat.ConvBn3d,
    nni.ConvBnReLU1d: nniqat.ConvBnReLU1d,
    nni.ConvBnReLU2d: nniqat.ConvBnReLU2d,
    nni.ConvBnReLU3d: nniqat.ConvBnReLU3d,
    # with a float-qparams weight fake-quant only (default_embedding_qat_qconfig), as torch.ao
    nn.Embedding: nnqat.Embedding,
    nn.EmbeddingBag: nnqat.EmbeddingBag,
}

#: torch.ao's own stub / FloatFunctional classes, recognised by name so models written for
#: torch.ao convert too (ferroquant never imports torch.ao).
TORCH_AO_EQUIVALENTS: dict[str, type] = {
    "torch.ao.quantization.stubs.QuantStub": QuantStub,
    "torch.ao.quantization.stubs.DeQuantStub": DeQuantStub,
    "torch.ao.nn.quantized.modules.functional_modules.FloatFunctional": nnq.FloatFunctional,
    # torch.ao's fused float modules (torchvision's fuse_model() builds these): the same
    # Sequential layout as ferroquant's, converted exactly as ours
    **{f"torch.ao.nn.intrinsic.modules.fused.{name}": getattr(nni, name) for name in nni.__all__},
}

#: Modules whose outputs need no observer of their own (they keep their input's qparams, or
#: leave the quantized world).
NO_OUTPUT_OBSERVER: set[type] = {
    DeQuantStub,
    nn.Dropout,
    nn.ReLU6,
    nn.Embedding,
    nn.EmbeddingBag,
    nnqat.Embedding,
    nnqat.EmbeddingBag,
    *PASSTHROUGH_MODULES,
}


def get_default_dynamic_quant_module_mappings() -> dict[type, type]:
    return dict(DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS)


def get_default_static_quant_module_mappings() -> dict[type, type]:
    return dict(DEFAULT_STATIC_QUANT_MODULE_MAPPINGS)


def get_default_qat_module_mappings() -> dict[type, type]:
    return dict(DEFAULT_QAT_MODULE_MAPPINGS)


def canonical_type_of(t: type) -> type:
    """``t``, with torch.ao's stubs, FloatFunctional and fused modules mapped to ferroquant's."""
    return TORCH_AO_EQUIVALENTS.get(f"{t.__module__}.{t.__qualname__}", t)


def canonical_type(mod: nn.Module) -> type:
    """The module's type, with torch.ao's stubs, FloatFunctional and fused modules mapped to ferroquant's."""
    return canonical_type_of(type(mod))
