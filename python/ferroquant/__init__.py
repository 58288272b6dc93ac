"""ferroquant: int8 quantization for PyTorch models, on a Rust core.

The ``torch.ao.quantization`` workflow with the same names — change ``torch.quantization`` (or
``torch.ao.quantization``) to ``ferroquant`` and ``torch.nn.quantized`` to
``ferroquant.nn.quantized``. Results are bit-identical on every CPU path and thread count.
"""

from . import (
    _ops,  # noqa: F401  (registers torch.ops.ferroquant.*)
    backends,
    fake_quantize,
    nn,
    observer,
    qconfig,
    qconfig_mapping,
    quantize_fx,
    stubs,
)
from ._core import __version__
from ._dtypes import (
    per_channel_affine,
    per_channel_affine_float_qparams,
    per_channel_symmetric,
    per_tensor_affine,
    per_tensor_symmetric,
    qint8,
    qint32,
    quint4x2,
    quint8,
)
from ._threads import _attach_torch_openmp, get_num_threads, set_num_threads
from .fake_quantize import (
    FakeQuantize,
    FakeQuantizeBase,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    default_embedding_fake_quant,
    default_embedding_fake_quant_4bit,
    default_fake_quant,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant,
    default_weight_fake_quant,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)
from .footprint import memory_footprint
from .fuse_modules import fuse_modules, fuse_modules_qat
from .observer import (
    CalibrationError,
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    NoopObserver,
    ObserverBase,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    default_debug_observer,
    default_dynamic_quant_observer,
    default_float_qparams_observer,
    default_histogram_observer,
    default_observer,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_weight_observer,
)
from .qconfig import (
    QConfig,
    QConfigDynamic,
    default_activation_only_qconfig,
    default_debug_qconfig,
    default_dynamic_qconfig,
    default_dynamic_qconfig_torch,
    default_embedding_qat_qconfig,
    default_embedding_qat_qconfig_4bit,
    default_per_channel_qconfig,
    default_qat_qconfig,
    default_qat_qconfig_v2,
    default_qconfig,
    default_weight_only_qconfig,
    float16_dynamic_qconfig,
    float16_static_qconfig,
    float_qparams_weight_only_qconfig,
    float_qparams_weight_only_qconfig_4bit,
    full_range_dynamic_qconfig,
    get_default_qat_qconfig,
    get_default_qconfig,
    int8_weight_only_qconfig,
    per_channel_dynamic_qconfig,
    per_row_dynamic_qconfig,
)
from .qconfig_mapping import QConfigMapping, get_default_qat_qconfig_mapping, get_default_qconfig_mapping
from .qtensor import QTensor, dequantize, quantize_per_channel, quantize_per_tensor

# as in torch.ao, the names quantize and fuse_modules are the functions (the modules stay importable)
from .quantize import (
    convert,
    prepare,
    prepare_qat,
    propagate_qconfig_,
    quantize,
    quantize_dynamic,
    quantize_qat,
)
from .stubs import DeQuantStub, QuantStub, QuantWrapper

__all__ = [name for name in dir() if not name.startswith("_")]

_attach_torch_openmp()
