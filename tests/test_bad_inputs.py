"""The bad-input matrix (docs/reliability.md): each row is a bad call, the exception type it must
raise and a regex its message must match — the message has to name the argument, state_dict key
or module, not just say that something failed. Wrong dtype, rank and device, NaN / Inf in inputs
and in calibration, observers that never ran, bad scales / zero points / axes, corrupted
state_dicts (strict and not), mismatched weights, the int32 limit on K, outputs too large to
allocate, conv geometry that overflows, and set_num_threads."""

from __future__ import annotations

import math

import ferroquant as fq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

Q = fq.nn.quantized
NAN, INF = math.nan, math.inf
RULE = r"must be a finite number in \[1\.1754944e-38, 3\.4028235e\+38\] \(a positive, normal float32\)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# -- builders (called inside each row, so every row gets fresh objects) -----------------------------


def qx(shape=(2, 4), dtype=fq.quint8, scale=0.1, zp=3, device="cpu") -> fq.QTensor:
    data = torch.zeros(shape, dtype=dtype.storage, device=device)
    return fq.QTensor(data, scale, zp, dtype)


def dyn(k: int = 4, n: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return Q.dynamic.Linear.from_float(nn.Linear(k, n))


def qlinear(k: int = 4, n: int = 3) -> nn.Module:
    m = Q.Linear(k, n)
    m.set_weight_bias(fq.quantize_per_tensor(torch.randn(n, k), 0.02, 0, fq.qint8), torch.zeros(n))
    return m


def qconv(cls=Q.Conv2d, cin: int = 2, cout: int = 3, k: int = 3, **kw) -> nn.Module:
    return cls(cin, cout, k, **kw)


class Net(nn.Module):
    """quant → fc → (conv on a reshape) → skip add → dequant: every kind of observer site."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = fq.QuantStub()
        self.fc = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 3)
        self.skip = Q.FloatFunctional()
        self.dequant = fq.DeQuantStub()

    def forward(self, x: torch.Tensor, use_fc2: bool = True) -> torch.Tensor:
        y = self.fc(self.quant(x))
        if use_fc2:
            y = self.skip.add(y, self.fc2(y))
        return self.dequant(y)


def prepared(qconfig=None) -> nn.Module:
    torch.manual_seed(0)
    m = Net().eval()
    m.qconfig = qconfig or fq.QConfig(
        activation=fq.MinMaxObserver.with_args(quant_min=0, quant_max=127),
        weight=fq.default_per_channel_weight_observer,
    )
    return fq.prepare(m)


def _converted_without_fc2() -> nn.Module:
    p = prepared()
    p(torch.randn(4, 4), use_fc2=False)
    with pytest.warns(UserWarning, match="never ran during calibration and stay unquantized: fc2"):
        return fq.convert(p)


def converted() -> nn.Module:
    p = prepared()
    p(torch.randn(8, 4))
    return fq.convert(p)


def dynamic_model() -> nn.Module:
    torch.manual_seed(0)
    return fq.quantize_dynamic(nn.Sequential(nn.Linear(4, 3)), {nn.Linear: fq.per_channel_dynamic_qconfig})


def nan_weight_model() -> nn.Module:
    p = prepared()
    with torch.no_grad():
        p.fc.weight[0, 0] = NAN  # the float model's own output becomes NaN inside
    return p


def float_linear(k: int, n: int, value: float) -> nn.Module:
    lin = nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.fill_(value)
    return nn.Sequential(lin)


def load(model: nn.Module, edit, strict: bool):
    sd = model.state_dict()
    edit(sd)
    return model.load_state_dict(sd, strict=strict)


def huge_k_weight(k: int = 70000, n: int = 2) -> fq.QTensor:
    return fq.QTensor(torch.full((n, k), -128, dtype=torch.int8), 0.01, 0, fq.qint8)


def per_channel_along_inputs() -> fq.QTensor:
    w = torch.zeros(3, 4, dtype=torch.int8)
    return fq.QTensor(w, torch.full((4,), 0.1), torch.zeros(4), fq.qint8, axis=1)


def unobserved_qfunctional() -> Q.QFunctional:
    ff = Q.FloatFunctional()
    ff.activation_post_process = fq.MinMaxObserver()
    q = Q.QFunctional.from_float(ff)
    q._fq_name = "skip"
    return q


X = torch.randn(2, 4)


def row(name, call, exc, match, *marks):
    return pytest.param(call, exc, match, id=name, marks=marks)


# -- the matrix -------------------------------------------------------------------------------------

ROWS = [
    # ---- wrong dtype ------------------------------------------------------------------------------
    row(
        "quantize_per_tensor-int64",
        lambda: fq.quantize_per_tensor(torch.arange(4), 0.1, 0, fq.quint8),
        TypeError,
        r"quantize_per_tensor: input must be a floating point tensor, got torch\.int64",
    ),
    row(
        "quantize_per_tensor-bool",
        lambda: fq.quantize_per_tensor(torch.ones(4, dtype=torch.bool), 0.1, 0, fq.quint8),
        TypeError,
        r"quantize_per_tensor: input must be a floating point tensor, got torch\.bool",
    ),
    row(
        "quantize_per_tensor-complex",
        lambda: fq.quantize_per_tensor(torch.ones(4, dtype=torch.complex64), 0.1, 0, fq.quint8),
        TypeError,
        r"quantize_per_tensor: input must be a floating point tensor, got torch\.complex64",
    ),
    row(
        "quantize_per_channel-int32",
        lambda: fq.quantize_per_channel(
            torch.ones(2, 2, dtype=torch.int32), torch.ones(2), torch.zeros(2), 0, fq.qint8
        ),
        TypeError,
        r"quantize_per_channel: input must be a floating point tensor, got torch\.int32",
    ),
    row(
        "quantize_per_tensor-float-dtype-as-target",
        lambda: fq.quantize_per_tensor(X, 0.1, 0, torch.float32),
        TypeError,
        r"unsupported quantized dtype torch\.float32",
    ),
    row(
        "quantize_per_tensor-quint4x2",
        lambda: fq.quantize_per_tensor(X, 0.1, 0, fq.quint4x2),
        TypeError,
        r"quint4x2 is for embedding weights only",
    ),
    row(
        "dynamic-linear-int64",
        lambda: dyn()(torch.ones(2, 4, dtype=torch.int64)),
        TypeError,
        r"DynamicQuantizedLinear .*expects a floating point input, got torch\.int64",
    ),
    row(
        "dynamic-linear-bool",
        lambda: dyn()(torch.ones(2, 4, dtype=torch.bool)),
        TypeError,
        r"DynamicQuantizedLinear .*expects a floating point input, got torch\.bool",
    ),
    row(
        "dynamic-linear-qtensor",
        lambda: dyn()(qx()),
        TypeError,
        r"dynamic\.Linear takes float input .*but got a QTensor",
    ),
    row(
        "dynamic-linear-float64-beyond-float32",
        lambda: dyn()(torch.full((2, 4), 1e300, dtype=torch.float64)),
        ValueError,
        r"DynamicQuantizedLinear: .*the activation contains NaN or Inf",
    ),
    row(
        "static-linear-float-tensor",
        lambda: qlinear()(X),
        TypeError,
        r"Linear is a quantized module but received a float torch\.Tensor; insert a QuantStub",
    ),
    row(
        "static-linear-qint8-qtensor",
        lambda: qlinear()(qx(dtype=fq.qint8)),
        TypeError,
        r"Linear expects quint8 activations, got ferroquant\.qint8",
    ),
    row(
        "static-linear-per-channel-qtensor",
        lambda: qlinear()(fq.QTensor(torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2), torch.zeros(2), axis=0)),
        TypeError,
        r"Linear expects a per-tensor quantized input, got a per-channel QTensor",
    ),
    row(
        "conv2d-qint32-qtensor",
        lambda: qconv()(qx((1, 2, 5, 5), dtype=fq.qint32)),
        TypeError,
        r"Conv2d expects quint8 activations, got ferroquant\.qint32",
    ),
    row(
        "converted-model-float-into-quantized-part",
        lambda: converted().fc(X),
        TypeError,
        r"Linear 'fc' is a quantized module but received a float torch\.Tensor",
    ),
    row(
        "qfunctional-add-float",
        lambda: converted().skip.add(X[:, :3], qx((2, 3))),
        TypeError,
        r"QFunctional 'skip' is a quantized module but received a float torch\.Tensor",
    ),
    row(
        "qtensor-into-float-op-exp",
        lambda: torch.exp(qx()),
        TypeError,
        r"torch op 'exp' is not supported on a ferroquant QTensor.*DeQuantStub",
    ),
    row(
        "qtensor-into-float-op-linear",
        lambda: F.linear(qx(), torch.randn(3, 4)),
        TypeError,
        r"torch op 'linear' is not supported on a ferroquant QTensor",
    ),
    row(
        "qtensor-into-float-module",
        lambda: nn.Linear(4, 3)(qx()),
        TypeError,
        r"torch op 'linear' is not supported on a ferroquant QTensor",
    ),
    row(
        "qtensor-data-float32",
        lambda: fq.QTensor(torch.zeros(3), 0.1, 0),
        TypeError,
        r"QTensor data must be a torch\.uint8, torch\.int8 or torch\.int32 tensor, got torch\.float32",
    ),
    row(
        "qtensor-data-storage-mismatch",
        lambda: fq.QTensor(torch.zeros(3, dtype=torch.uint8), 0.1, 0, fq.qint8),
        TypeError,
        r"qint8 data must be stored as torch\.int8, got torch\.uint8",
    ),
    row(
        "dequantize-int-tensor",
        lambda: fq.dequantize(torch.zeros(3, dtype=torch.int8)),
        TypeError,
        r"dequantize expects a ferroquant QTensor, got Tensor",
    ),
    row(
        "quantize-module-int64",
        lambda: Q.Quantize(0.1, 0)(torch.arange(4)),
        TypeError,
        r"Quantize expects a float tensor, got torch\.int64",
    ),
    row(
        "dequantize-module-float",
        lambda: Q.DeQuantize()(X),
        TypeError,
        r"DeQuantize received a float tensor",
    ),
    row(
        "observer-complex",
        lambda: fq.MinMaxObserver()(torch.ones(3, dtype=torch.complex64)),
        TypeError,
        r"MinMaxObserver expects a real-valued tensor, got torch\.complex64",
    ),
    row(
        "observer-list",
        lambda: fq.HistogramObserver()([1.0, 2.0]),
        TypeError,
        r"HistogramObserver expects a torch\.Tensor, got list",
    ),
    row(
        "set_weight_bias-quint8-weight",
        lambda: qlinear().set_weight_bias(fq.QTensor(torch.zeros(3, 4, dtype=torch.uint8), 0.1, 0), None),
        TypeError,
        r"Linear\.set_weight_bias: w must be a qint8 ferroquant QTensor, got ferroquant\.quint8",
    ),
    row(
        "set_weight_bias-int-bias",
        lambda: qlinear().set_weight_bias(qlinear().weight(), torch.zeros(3, dtype=torch.int64)),
        TypeError,
        r"Linear\.set_weight_bias: b must be a float tensor or None, got torch\.int64",
    ),
    # ---- wrong rank / shape -----------------------------------------------------------------------
    row(
        "dynamic-linear-0d",
        lambda: dyn()(torch.tensor(1.0)),
        ValueError,
        r"DynamicQuantizedLinear expects input of shape \[\.\.\., 4\] \(in_features = 4\), got \[\]",
    ),
    row(
        "dynamic-linear-wrong-features",
        lambda: dyn()(torch.randn(2, 5)),
        ValueError,
        r"DynamicQuantizedLinear expects input of shape \[\.\.\., 4\] \(in_features = 4\), got \[2, 5\]",
    ),
    row(
        "static-linear-0d",
        lambda: qlinear()(qx(())),
        ValueError,
        r"Linear expects input \[\.\.\., 4\] \(in_features = 4\), got \[\]",
    ),
    row(
        "conv2d-3d-input",
        lambda: qconv()(qx((2, 5, 5))),
        ValueError,
        r"Conv2d expects input \[N, 2, \*x\*\], got \[2, 5, 5\]",
    ),
    row(
        "conv1d-4d-input",
        lambda: qconv(Q.Conv1d)(qx((1, 2, 5, 5))),
        ValueError,
        r"Conv1d expects input \[N, 2, \*\], got \[1, 2, 5, 5\]",
    ),
    row(
        "conv2d-input-smaller-than-kernel",
        lambda: qconv()(qx((1, 2, 2, 2))),
        ValueError,
        r"Conv2d: convolution input along the height axis: expected size ≥ 3 \(kernel span\) after padding, got 2",
    ),
    row(
        "quantize_per_channel-0d",
        lambda: fq.quantize_per_channel(torch.tensor(1.0), torch.ones(1), torch.zeros(1), 0, fq.qint8),
        ValueError,
        r"per-channel quantization needs a tensor with at least 1 dimension, got a 0-d one \(quantize_per_channel",
    ),
    row(
        "qfunctional-matmul-0d",
        lambda: converted().skip.matmul(qx(()), qx((2, 3))),
        ValueError,
        r"QFunctional\.matmul needs inputs with at least 1 dimension",
    ),
    row(
        "per-channel-observer-0d",
        lambda: fq.PerChannelMinMaxObserver()(torch.tensor(1.0)),
        ValueError,
        r"PerChannelMinMaxObserver observes per channel along ch_axis 0, so it needs inputs with at least one "
        r"dimension, got a 0-d tensor",
    ),
    row(
        "per-channel-observer-channel-count-changes",
        lambda: (lambda o: [o(t) for t in (torch.randn(2, 3), torch.randn(3, 3))])(fq.PerChannelMinMaxObserver()),
        ValueError,
        r"PerChannelMinMaxObserver saw 3 channels along axis 0 after 2 before",
    ),
    # ---- meta tensors -----------------------------------------------------------------------------
    row(
        "quantize_per_tensor-meta",
        lambda: fq.quantize_per_tensor(torch.ones(3, device="meta"), 0.1, 0, fq.quint8),
        ValueError,
        r"quantize_per_tensor: input is on meta; ferroquant runs on the CPU",
    ),
    row(
        "quantize_per_channel-meta-scales",
        lambda: fq.quantize_per_channel(X, torch.ones(2, device="meta"), torch.zeros(2), 0, fq.qint8),
        ValueError,
        r"quantize_per_channel: scales is on meta; ferroquant runs on the CPU",
    ),
    row(
        "dynamic-linear-meta",
        lambda: dyn()(torch.ones(2, 4, device="meta")),
        ValueError,
        r"DynamicQuantizedLinear: input is on meta; ferroquant runs on the CPU",
    ),
    row(
        "static-linear-meta",
        lambda: qlinear()(qx(device="meta")),
        ValueError,
        r"Linear received a QTensor on meta; ferroquant's quantized modules run on the CPU",
    ),
    row(
        "conv2d-meta",
        lambda: qconv()(qx((1, 2, 5, 5), device="meta")),
        ValueError,
        r"Conv2d received a QTensor on meta",
    ),
    row(
        "qtensor-dequantize-meta",
        lambda: qx(device="meta").dequantize(),
        ValueError,
        r"QTensor\.dequantize: the quantized data is on meta",
    ),
    row(
        "observer-meta",
        lambda: fq.MinMaxObserver()(torch.ones(3, device="meta")),
        ValueError,
        r"MinMaxObserver got a tensor on the meta device",
    ),
    row(
        "prepared-model-meta",
        lambda: prepared()(torch.ones(2, 4, device="meta")),
        ValueError,
        r"MinMaxObserver of module 'quant' got a tensor on the meta device",
    ),
    row(
        "converted-model-meta",
        lambda: converted()(torch.ones(2, 4, device="meta")),
        ValueError,
        r"Quantize 'quant': quantize_per_tensor: input is on meta",
    ),
    row(
        "qfunctional-mul-meta",
        lambda: converted().skip.mul(qx((2, 3), device="meta"), qx((2, 3))),
        ValueError,
        r"QFunctional 'skip' received a QTensor on meta",
    ),
    # ---- CUDA tensors (where there is a GPU) ------------------------------------------------------
    row(
        "quantize_per_tensor-cuda",
        lambda: fq.quantize_per_tensor(torch.ones(3, device="cuda"), 0.1, 0, fq.quint8),
        ValueError,
        r"quantize_per_tensor: input is on cuda",
        needs_cuda,
    ),
    row(
        "quantize_per_channel-cuda-scales",
        lambda: fq.quantize_per_channel(X, torch.ones(2, device="cuda"), torch.zeros(2), 0, fq.qint8),
        ValueError,
        r"quantize_per_channel: scales is on cuda",
        needs_cuda,
    ),
    row(
        "dynamic-linear-cuda",
        lambda: dyn()(torch.ones(2, 4, device="cuda")),
        ValueError,
        r"DynamicQuantizedLinear: input is on cuda",
        needs_cuda,
    ),
    row(
        "static-linear-cuda",
        lambda: qlinear()(qx(device="cuda")),
        ValueError,
        r"Linear received a QTensor on cuda",
        needs_cuda,
    ),
    row(
        "qtensor-dequantize-cuda",
        lambda: qx(device="cuda").dequantize(),
        ValueError,
        r"QTensor\.dequantize: the quantized data is on cuda",
        needs_cuda,
    ),
    # ---- NaN / Inf in inputs ----------------------------------------------------------------------
    row(
        "dynamic-linear-nan",
        lambda: dyn()(torch.tensor([[NAN, 1.0, 2.0, 3.0]])),
        ValueError,
        r"DynamicQuantizedLinear: dynamic quantization got a non-finite input \(min NaN, max NaN\); the "
        r"activation contains NaN or Inf",
    ),
    row(
        "dynamic-linear-inf",
        lambda: dyn()(torch.tensor([[1.0, INF, 2.0, 3.0]])),
        ValueError,
        r"DynamicQuantizedLinear: .*max inf.*the activation contains NaN or Inf",
    ),
    row(
        "dynamic-linear-in-model-nan",
        lambda: dynamic_model()(torch.tensor([[1.0, -INF, 2.0, 3.0]])),
        ValueError,
        r"DynamicQuantizedLinear '0': .*the activation contains NaN or Inf",
    ),
    # ---- NaN / Inf in calibration -----------------------------------------------------------------
    row(
        "minmax-observer-nan",
        lambda: fq.MinMaxObserver()(torch.tensor([NAN, 1.0])),
        ValueError,
        r"MinMaxObserver saw NaN in its input; calibration data must be finite",
    ),
    row(
        "moving-average-observer-inf",
        lambda: fq.MovingAverageMinMaxObserver()(torch.tensor([INF, 1.0])),
        ValueError,
        r"MovingAverageMinMaxObserver saw Inf in its input",
    ),
    row(
        "per-channel-observer-nan",
        lambda: fq.PerChannelMinMaxObserver()(torch.tensor([[1.0, 2.0], [NAN, 0.0]])),
        ValueError,
        r"PerChannelMinMaxObserver saw NaN in its input",
    ),
    row(
        "histogram-observer-inf",
        lambda: fq.HistogramObserver()(torch.tensor([-INF, 1.0])),
        ValueError,
        r"HistogramObserver saw Inf in its input",
    ),
    row(
        "observer-float64-beyond-float32",
        lambda: fq.MinMaxObserver()(torch.tensor([1e300, 1.0], dtype=torch.float64)),
        ValueError,
        r"MinMaxObserver saw values as large as 1e\+300 \(torch\.float64\), beyond float32's range",
    ),
    row(
        "prepared-model-nan-input",
        lambda: prepared()(torch.tensor([[NAN, 1.0, 2.0, 3.0]])),
        ValueError,
        r"MinMaxObserver of module 'quant' saw NaN in its input",
    ),
    row(
        "prepared-model-nan-inside",
        lambda: nan_weight_model()(torch.randn(2, 4)),
        ValueError,
        r"MinMaxObserver of module 'fc' saw NaN in its input",
    ),
    # ---- observers that never ran -----------------------------------------------------------------
    row(
        "convert-uncalibrated-model",
        lambda: fq.convert(prepared()),
        fq.CalibrationError,
        r"MinMaxObserver of module 'quant' has not observed any data, so it has no qparams; run calibration data",
    ),
    row(
        # convert keeps a module calibration never reached (with a warning); calling it says so
        "call-module-calibration-never-reached",
        lambda: _converted_without_fc2()(torch.randn(4, 4), use_fc2=True),
        fq.CalibrationError,
        r"module 'fc2' \(Linear\) never ran during calibration",
    ),
    row(
        "calculate_qparams-never-run",
        lambda: fq.HistogramObserver().calculate_qparams(),
        fq.CalibrationError,
        r"HistogramObserver has not observed any data",
    ),
    row(
        "calculate_qparams-only-empty-batches",
        lambda: (lambda o: (o(torch.empty(0, 3)), o.calculate_qparams()))(fq.PerChannelMinMaxObserver()),
        fq.CalibrationError,
        r"PerChannelMinMaxObserver has not observed any data",
    ),
    row(
        "unobserved-floatfunctional-add",
        lambda: unobserved_qfunctional().add(qx(), qx()),
        fq.CalibrationError,
        r"FloatFunctional 'skip' saw no data during calibration",
    ),
    row(
        "unobserved-floatfunctional-mul",
        lambda: unobserved_qfunctional().mul(qx(), qx()),
        fq.CalibrationError,
        r"FloatFunctional 'skip' saw no data during calibration",
    ),
    row(
        "unobserved-floatfunctional-cat",
        lambda: unobserved_qfunctional().cat([qx(scale=1.0, zp=0), qx(scale=1.0, zp=0)]),
        fq.CalibrationError,
        r"FloatFunctional 'skip' saw no data during calibration",
    ),
    row(
        "placeholder-observer-qparams",
        lambda: fq.PlaceholderObserver().calculate_qparams(),
        fq.CalibrationError,
        r"PlaceholderObserver records nothing and has no qparams",
    ),
    # ---- scales -----------------------------------------------------------------------------------
    *[
        row(
            f"quantize_per_tensor-scale-{label}",
            lambda s=s: fq.quantize_per_tensor(X, s, 0, fq.quint8),
            ValueError,
            r"quantize_per_tensor: scale " + RULE + r", got " + got,
        )
        for label, s, got in [
            ("zero", 0.0, r"0\.0"),
            ("negative", -0.5, r"-0\.5"),
            ("nan", NAN, "nan"),
            ("inf", INF, "inf"),
            ("denormal", 1e-40, r"1e-40"),
            ("huge", 1e39, r"1e\+39"),
        ]
    ],
    row(
        "quantize_per_tensor-scale-string",
        lambda: fq.quantize_per_tensor(X, "0.1", 0, fq.quint8),
        TypeError,
        r"quantize_per_tensor: scale must be a real number, got str",
    ),
    row(
        "quantize_per_tensor-scale-vector",
        lambda: fq.quantize_per_tensor(X, torch.tensor([0.1, 0.2]), 0, fq.quint8),
        ValueError,
        r"quantize_per_tensor: scale must be a single real number, got a tensor of shape \[2\]",
    ),
    row(
        "quantize_per_channel-scale-zero-in-channel-1",
        lambda: fq.quantize_per_channel(X, torch.tensor([0.1, 0.0]), torch.zeros(2), 0, fq.qint8),
        ValueError,
        r"quantize_per_channel: scales: each scale " + RULE + r", got 0\.0 for channel 1",
    ),
    row(
        "qtensor-scale-denormal",
        lambda: fq.QTensor(torch.zeros(3, dtype=torch.uint8), 1e-45, 0),
        ValueError,
        r"QTensor: scale " + RULE,
    ),
    row(
        "quantize-module-scale-inf",
        lambda: Q.Quantize(INF, 0),
        ValueError,
        r"Quantize: output scale " + RULE + r", got inf",
    ),
    row(
        "static-linear-requantization-overflows",
        lambda: qlinear()(qx(scale=1e-37)),
        ValueError,
        r"Linear: input scale 1e-37 x weight scales .* leave float32's normal range .* in the requantization",
    ),
    row(
        "mul_scalar-makes-scale-denormal",
        lambda: converted().skip.mul_scalar(qx(scale=1e-30), 1e-20),
        ValueError,
        r"QFunctional 'skip': mul_scalar: QTensor: scale " + RULE,
    ),
    row(
        "add_scalar-nan",
        lambda: converted().skip.add_scalar(qx(), NAN),
        ValueError,
        r"QFunctional 'skip': add_scalar: the scalar c must be finite, got nan",
    ),
    # ---- zero points ------------------------------------------------------------------------------
    *[
        row(
            f"quantize_per_tensor-zero-point-{dt.name}-{zp}",
            lambda dt=dt, zp=zp: fq.quantize_per_tensor(X, 0.1, zp, dt),
            ValueError,
            rf"quantize_per_tensor: zero_point {zp} is outside the {dt.name} range \[{dt.qmin}, {dt.qmax}\]",
        )
        for dt, zp in [(fq.quint8, 256), (fq.quint8, -1), (fq.qint8, 128), (fq.qint8, -129), (fq.qint32, 2**31)]
    ],
    row(
        "quantize_per_tensor-zero-point-non-integral",
        lambda: fq.quantize_per_tensor(X, 0.1, 1.5, fq.quint8),
        ValueError,
        r"quantize_per_tensor: zero_point must be an integer, got 1\.5",
    ),
    row(
        "quantize_per_tensor-zero-point-nan",
        lambda: fq.quantize_per_tensor(X, 0.1, NAN, fq.quint8),
        ValueError,
        r"quantize_per_tensor: zero_point must be an integer, got nan",
    ),
    row(
        "quantize_per_tensor-zero-point-string",
        lambda: fq.quantize_per_tensor(X, 0.1, "3", fq.quint8),
        TypeError,
        r"quantize_per_tensor: zero_point must be an integer, got str",
    ),
    row(
        "quantize_per_channel-zero-points-non-integral",
        lambda: fq.quantize_per_channel(X, torch.ones(2), torch.tensor([0.0, 0.5]), 0, fq.qint8),
        ValueError,
        r"quantize_per_channel: zero_points must be integers, got 0\.5 for channel 1",
    ),
    row(
        "quantize_per_channel-zero-points-out-of-range",
        lambda: fq.quantize_per_channel(X, torch.ones(2), torch.tensor([0, 300]), 0, fq.quint8),
        ValueError,
        r"quantize_per_channel: zero_points: each zero point must lie in the quint8 range \[0, 255\], got 300 "
        r"for channel 1",
    ),
    row(
        "quantize-module-zero-point",
        lambda: Q.Quantize(0.1, -5, fq.quint8),
        ValueError,
        r"Quantize: output zero_point -5 is outside the quint8 range",
    ),
    # ---- axes -------------------------------------------------------------------------------------
    row(
        "quantize_per_channel-axis-too-large",
        lambda: fq.quantize_per_channel(X, torch.ones(2), torch.zeros(2), 2, fq.qint8),
        IndexError,
        r"quantize_per_channel: axis 2 is out of range for a 2-d tensor: expected an axis in \[-2, 1\]",
    ),
    row(
        "quantize_per_channel-axis-too-negative",
        lambda: fq.quantize_per_channel(X, torch.ones(2), torch.zeros(2), -3, fq.qint8),
        IndexError,
        r"quantize_per_channel: axis -3 is out of range",
    ),
    row(
        "quantize_per_channel-axis-float",
        lambda: fq.quantize_per_channel(X, torch.ones(2), torch.zeros(2), 0.0, fq.qint8),
        TypeError,
        r"quantize_per_channel: axis must be an int, got float",
    ),
    row(
        "quantize_per_channel-wrong-channel-count",
        lambda: fq.quantize_per_channel(X, torch.ones(3), torch.zeros(3), 1, fq.qint8),
        ValueError,
        r"quantize_per_channel: scales must be a 1-d tensor with one value per channel \(4 along the axis\)",
    ),
    row(
        "qtensor-axis",
        lambda: fq.QTensor(torch.zeros(2, 3, dtype=torch.int8), torch.ones(2), torch.zeros(2), axis=5),
        IndexError,
        r"QTensor: axis 5 is out of range for a 2-d tensor",
    ),
    row(
        "per-channel-observer-ch-axis",
        lambda: fq.PerChannelMinMaxObserver(ch_axis=5)(X),
        IndexError,
        r"PerChannelMinMaxObserver: ch_axis 5 is out of range for a 2-d input: expected an axis in \[-2, 1\]",
    ),
    # ---- set_weight_bias --------------------------------------------------------------------------
    row(
        "set_weight_bias-weight-shape",
        lambda: qlinear().set_weight_bias(fq.quantize_per_tensor(torch.randn(3, 5), 0.1, 0, fq.qint8), None),
        ValueError,
        r"Linear\.set_weight_bias: w has shape \[3, 5\], this module needs \[3, 4\]",
    ),
    row(
        "set_weight_bias-conv-weight-shape",
        lambda: qconv().set_weight_bias(fq.quantize_per_tensor(torch.randn(3, 2, 3, 2), 0.1, 0, fq.qint8), None),
        ValueError,
        r"Conv2d\.set_weight_bias: w has shape \[3, 2, 3, 2\], this module needs \[3, 2, 3, 3\]",
    ),
    row(
        "set_weight_bias-dynamic-weight-shape",
        lambda: dyn().set_weight_bias(fq.quantize_per_tensor(torch.randn(4, 3), 0.1, 0, fq.qint8), None),
        ValueError,
        r"Linear\.set_weight_bias: w has shape \[4, 3\], this module needs \[3, 4\]",
    ),
    row(
        "set_weight_bias-bias-shape",
        lambda: qlinear().set_weight_bias(qlinear().weight(), torch.zeros(2)),
        ValueError,
        r"Linear\.set_weight_bias: b has shape \[2\], this module needs \[3\]",
    ),
    row(
        "set_weight_bias-bias-nan",
        lambda: qlinear().set_weight_bias(qlinear().weight(), torch.tensor([0.0, NAN, 1.0])),
        ValueError,
        r"Linear\.set_weight_bias: b must hold finite float32 values .* got nan for output channel 1",
    ),
    row(
        "set_weight_bias-per-channel-along-inputs",
        lambda: qlinear().set_weight_bias(per_channel_along_inputs(), None),
        ValueError,
        r"Linear\.set_weight_bias: per-channel weights must be quantized along axis 0 .* got axis 1",
    ),
    # ---- the int32 limit on K (docs/numerics.md, "the limit on K") ----------------------------------
    row(
        "huge-k-set_weight_bias",
        lambda: Q.dynamic.Linear(70000, 2).set_weight_bias(huge_k_weight(), None),
        ValueError,
        r"Linear\.set_weight_bias: output channel 0 of this \[2, 70000\] int8 weight has sum \|w - zero_point\| = "
        r"8960000, above 8421504: its int32 accumulator could overflow",
    ),
    row(
        "huge-k-one-past-the-limit",
        lambda: Q.dynamic.Linear(65794, 1).set_weight_bias(huge_k_weight(65794, 1), None),
        ValueError,
        r"output channel 0 of this \[1, 65794\] int8 weight has sum \|w - zero_point\| = 8421632, above 8421504",
    ),
    row(
        "huge-k-nonzero-weight-zero-point",
        lambda: Q.dynamic.Linear(33026, 1).set_weight_bias(
            fq.QTensor(torch.full((1, 33026), 127, dtype=torch.int8), 0.01, -128, fq.qint8), None
        ),
        ValueError,
        r"output channel 0 of this \[1, 33026\] int8 weight has sum \|w - zero_point\| = 8421630, above 8421504",
    ),
    row(
        "huge-k-quantize_dynamic",
        lambda: fq.quantize_dynamic(float_linear(70000, 2, -1.0)),
        ValueError,
        r"cannot quantize Linear '0': .*output channel 0 of this \[2, 70000\] int8 weight .* above 8421504",
    ),
    row(
        "huge-k-static-conv",
        lambda: Q.Conv2d(8000, 1, 3).set_weight_bias(
            fq.QTensor(torch.full((1, 8000, 3, 3), -128, dtype=torch.int8), 0.01, 0, fq.qint8), None
        ),
        ValueError,
        r"Conv2d\.set_weight_bias: .*output channel 0 .* above 8421504",
    ),
    # ---- outputs too large to allocate, conv geometry ------------------------------------------------
    row(
        "huge-output-dynamic-linear",
        lambda: Q.dynamic.Linear(1, 2**20)(torch.zeros(2**22, 1)),
        MemoryError,
        r"DynamicQuantizedLinear: cannot allocate the linear output: 4398046511104 elements of 4 bytes",
    ),
    row(
        "huge-output-conv2d-padding",
        lambda: Q.Conv2d(1, 1, 1, padding=10**6)(qx((1, 1, 1, 1))),
        MemoryError,
        r"Conv2d: cannot allocate the convolution output: 4000004000001 elements",
    ),
    row(
        "conv2d-padding-2**63",
        lambda: Q.Conv2d(1, 1, 1, padding=2**63)(qx((1, 1, 1, 1))),
        ValueError,
        r"Conv2d: convolution geometry overflows along the height axis: input 1, padding 9223372036854775808",
    ),
    row(
        "conv2d-dilation-2**64-1",
        lambda: Q.Conv2d(1, 1, 2, dilation=2**64 - 1)(qx((1, 1, 1, 1))),
        ValueError,
        r"Conv2d: convolution geometry overflows along the height axis: .*dilation 18446744073709551615",
    ),
    row(
        "conv2d-same-padding-huge-dilation",
        lambda: Q.Conv2d(1, 1, 5, padding="same", dilation=2**63),
        ValueError,
        r"Conv2d: convolution geometry overflows: padding .* dilation \(9223372036854775808, 9223372036854775808\)",
    ),
    row(
        "conv2d-padding-2**64",
        lambda: Q.Conv2d(1, 1, 1, padding=2**64),
        ValueError,
        r"Conv2d: padding must hold ints in \[0, 2\*\*64 - 1\], got 18446744073709551616",
    ),
    row(
        "conv2d-negative-padding",
        lambda: Q.Conv2d(1, 1, 1, padding=-1),
        ValueError,
        r"Conv2d: padding must hold ints in \[0, 2\*\*64 - 1\], got -1",
    ),
    row(
        "conv2d-stride-0",
        lambda: Q.Conv2d(1, 1, 1, stride=(1, 0)),
        ValueError,
        r"Conv2d: stride must hold ints in \[1, 2\*\*64 - 1\], got \(1, 0\)",
    ),
    row(
        "conv2d-groups-0",
        lambda: Q.Conv2d(2, 2, 1, groups=0),
        ValueError,
        r"Conv2d: groups must hold ints in \[1, 2\*\*64 - 1\], got 0",
    ),
    row(
        "conv3d-kernel-float",
        lambda: Q.Conv3d(1, 1, 1.5),
        TypeError,
        r"Conv3d: kernel_size must hold ints, got float \(1\.5\)",
    ),
    row(
        "conv1d-kernel-tuple-length",
        lambda: Q.Conv1d(1, 1, (3, 3)),
        ValueError,
        r"Conv1d: kernel_size must be an int or a tuple of 1 ints, got \(3, 3\)",
    ),
    # ---- set_num_threads --------------------------------------------------------------------------
    row("set_num_threads-0", lambda: fq.set_num_threads(0), ValueError, r"set_num_threads expects an int >= 1, got 0"),
    row(
        "set_num_threads--1", lambda: fq.set_num_threads(-1), ValueError, r"set_num_threads expects an int >= 1, got -1"
    ),
    row(
        "set_num_threads-1.5",
        lambda: fq.set_num_threads(1.5),
        TypeError,
        r"set_num_threads expects an int >= 1, got float 1\.5",
    ),
    row(
        "set_num_threads-True",
        lambda: fq.set_num_threads(True),
        TypeError,
        r"set_num_threads expects an int >= 1, got bool True",
    ),
    # ---- the TorchScript ops ----------------------------------------------------------------------
    row(
        "op-quantize_per_tensor-denormal-scale",
        lambda: torch.ops.ferroquant.quantize_per_tensor(X, 1e-40, 0, 0, 255, "quint8"),
        ValueError,
        r"torch\.ops\.ferroquant\.quantize_per_tensor: scale " + RULE,
    ),
    row(
        "op-dequantize-zero-point",
        lambda: torch.ops.ferroquant.dequantize(qx().int_repr(), torch.tensor([0.1]), torch.tensor([300]), -1),
        ValueError,
        r"torch\.ops\.ferroquant\.dequantize: zero_point 300 is outside the quint8 range",
    ),
    row(
        "op-linear_dynamic-weight-scale",
        lambda: torch.ops.ferroquant.linear_dynamic(
            X, torch.zeros(3, 4, dtype=torch.int8), torch.tensor([0.0]), torch.tensor([0]), None, True
        ),
        ValueError,
        r"torch\.ops\.ferroquant\.linear_dynamic: weight_scale: each scale " + RULE + r", got 0\.0 for channel 0",
    ),
]


@pytest.mark.parametrize("call,exc,match", ROWS)
def test_bad_input_raises_a_named_error(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert type(info.value) is exc or exc is fq.CalibrationError and isinstance(info.value, exc), type(info.value)


# -- state_dicts: corrupted values (strict and not), missing and extra keys --------------------------


def _set(key, value_fn):
    def edit(sd):
        sd[key] = value_fn(sd[key])

    return edit


def _drop(key):
    return lambda sd: sd.pop(key)


# (id, model builder, edit, regex naming the key); every one raises RuntimeError whatever ``strict``
STATE_ROWS = [
    (
        "static-weight-shape",
        converted,
        _set("fc.weight", lambda t: t[:, :-1]),
        r"size mismatch for 'fc\.weight': "
        r"expected int8 \[3, 4\], got torch\.int8 \[3, 3\]",
    ),
    (
        "static-weight-dtype",
        converted,
        _set("fc.weight", lambda t: t.float()),
        r"size mismatch for 'fc\.weight': "
        r"expected int8 \[3, 4\], got torch\.float32 \[3, 4\]",
    ),
    (
        "static-weight_scale-zeros",
        converted,
        _set("fc.weight_scale", torch.zeros_like),
        r"'fc\.weight_scale': each "
        r"scale " + RULE + r", got 0\.0 for channel 0",
    ),
    (
        "static-weight_scale-scalar-for-vector",
        converted,
        _set("fc.weight_scale", lambda t: t[0]),
        r"size mismatch "
        r"for 'fc\.weight_scale': expected shape \[3\] \(weight_axis 0\), got \[\]",
    ),
    (
        "static-weight_scale-int",
        converted,
        _set("fc.weight_scale", lambda t: t.long()),
        r"'fc\.weight_scale': "
        r"expected a floating point tensor \(float32\), got torch\.int64",
    ),
    (
        "static-weight_zero_point-range",
        converted,
        _set("fc.weight_zero_point", lambda t: t + 200),
        r"'fc\."
        r"weight_zero_point': each zero point must lie in the qint8 range",
    ),
    (
        "static-weight_axis",
        converted,
        _set("fc.weight_axis", lambda t: torch.tensor(1)),
        r"'fc\.weight_axis': "
        r"expected -1 \(per-tensor weights\) or 0",
    ),
    (
        "static-bias-shape",
        converted,
        _set("fc.bias", lambda t: t[:2]),
        r"size mismatch for 'fc\.bias': expected a "
        r"float tensor of shape \[3\]",
    ),
    (
        "static-bias-nan",
        converted,
        _set("fc.bias", lambda t: torch.full_like(t, NAN)),
        r"'fc\.bias': must hold finite "
        r"float32 values .* got nan for output channel 0",
    ),
    (
        "static-output-scale-nan",
        converted,
        _set("fc.scale", lambda t: torch.tensor(NAN)),
        r"'fc\.scale' \(the output "
        r"scale\) " + RULE,
    ),
    (
        "static-output-scale-vector",
        converted,
        _set("fc.scale", lambda t: torch.tensor([0.1, 0.2])),
        r"'fc\.scale': "
        r"expected a single float \(a 0-dim tensor\), got shape \[2\]",
    ),
    (
        "static-output-zero-point",
        converted,
        _set("fc.zero_point", lambda t: torch.tensor(256)),
        r"'fc\.zero_point': "
        r"the output zero point must lie in the quint8 range",
    ),
    (
        "static-quant-range",
        converted,
        _set("fc.quant_min", lambda t: torch.tensor(255)),
        r"'fc\.quant_min' / "
        r"'fc\.quant_max': the output clamp range \[quant_min, quant_max\] = \[255, 255\] must have quant_min < "
        r"quant_max",
    ),
    (
        "quantize-scale-zero",
        converted,
        _set("quant.scale", lambda t: torch.tensor(0.0)),
        r"'quant\.scale' \(the output "
        r"scale\) " + RULE,
    ),
    (
        "qfunctional-zero-point",
        converted,
        _set("skip.zero_point", lambda t: torch.tensor(1.5)),
        r"'skip\.zero_point': "
        r"expected an integer, got 1\.5",
    ),
    (
        "dynamic-weight_scale-zeros",
        dynamic_model,
        _set("0.weight_scale", torch.zeros_like),
        r"'0\.weight_scale': each "
        r"scale " + RULE,
    ),
    (
        "dynamic-reduce_range-vector",
        dynamic_model,
        _set("0.reduce_range", lambda t: torch.tensor([True, False])),
        r"'0\.reduce_range': expected a single bool",
    ),
    (
        "dynamic-huge-k-weights",
        lambda: fq.quantize_dynamic(float_linear(65794, 1, 0.01)),
        _set("0.weight", lambda t: torch.full_like(t, -128)),
        r"'0\.weight': the int8 kernels rejected these weights: "
        r"output channel 0 .* above 8421504",
    ),
]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("build,edit,match", [pytest.param(b, e, m, id=i) for i, b, e, m in STATE_ROWS])
def test_corrupted_state_dict_names_the_key_and_loads_nothing(build, edit, match, strict):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=match) as info:
        load(model, edit, strict)
    assert "nothing in this module was loaded" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the module kept its state


# (id, model builder, edit, the key reported)
KEY_ROWS = [
    ("static-missing-weight_scale", converted, _drop("fc.weight_scale"), "missing", "fc.weight_scale"),
    ("static-missing-output-scale", converted, _drop("fc2.scale"), "missing", "fc2.scale"),
    (
        "static-extra-key",
        converted,
        lambda sd: sd.__setitem__("fc.surprise", torch.zeros(1)),
        "unexpected",
        "fc.surprise",
    ),
    ("dynamic-missing-bias", dynamic_model, _drop("0.bias"), "missing", "0.bias"),
    ("dynamic-extra-key", dynamic_model, lambda sd: sd.__setitem__("0.extra", torch.zeros(1)), "unexpected", "0.extra"),
]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("build,edit,kind,key", [pytest.param(*r[1:], id=r[0]) for r in KEY_ROWS])
def test_missing_and_extra_state_dict_keys_are_named(build, edit, kind, key, strict):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if strict:
        title = "Missing key" if kind == "missing" else "Unexpected key"
        with pytest.raises(RuntimeError, match=rf'{title}\(s\) in state_dict: "{key}"'):
            load(model, edit, strict)
    else:
        result = load(model, edit, strict)
        assert (result.missing_keys if kind == "missing" else result.unexpected_keys) == [key]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- not errors: what the documentation promises instead ----------------------------------------------


def test_nan_and_inf_in_quantize_follow_the_documented_mapping():
    # docs/numerics.md: NaN → qmax, +Inf → qmax, −Inf → qmin (as torch); only the dynamic Linear and
    # the observers refuse non-finite data, because they would derive qparams from it
    x = torch.tensor([NAN, INF, -INF, 1.0])
    for dt in (fq.quint8, fq.qint8, fq.qint32):
        q = fq.quantize_per_tensor(x, 0.5, 0, dt)
        assert q.int_repr().tolist() == [dt.qmax, dt.qmax, dt.qmin, 2]
    assert Q.Quantize(0.5, 0)(x).int_repr().tolist() == [255, 255, 0, 2]


def test_k_at_the_limit_is_accepted_and_exact():
    # 65,793 inputs at -128 with zero point 0: the largest K any int8 weights are accepted at
    m = Q.dynamic.Linear(65793, 1, bias_=False)
    m.set_weight_bias(huge_k_weight(65793, 1), None)
    m.reduce_range, m.per_row_activations = False, False
    x = torch.full((1, 65793), 2.55)  # quantizes to 255 with scale 0.01, zero point 0
    y = m(x)
    assert y.item() == pytest.approx(65793 * 255 * -128 * 0.01 * 0.01, rel=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fq.HistogramObserver(bins=-3), "bins must be an int >= 1"),
        (lambda: fq.HistogramObserver(bins=0), "bins must be an int >= 1"),
        (lambda: fq.HistogramObserver(bins=2.5), "bins must be an int >= 1"),
        (lambda: fq.MinMaxObserver(eps=0), "eps .* must be a finite number > 0"),
        (lambda: fq.MinMaxObserver(eps=-1e-3), "eps .* must be a finite number > 0"),
        (lambda: fq.MinMaxObserver(eps=float("nan")), "eps .* must be a finite number > 0"),
        (lambda: fq.MovingAverageMinMaxObserver(averaging_constant=2), "averaging_constant must be a number in"),
        (lambda: fq.MovingAverageMinMaxObserver(averaging_constant=0), "averaging_constant must be a number in"),
        (
            lambda: fq.MovingAveragePerChannelMinMaxObserver(averaging_constant=-0.5),
            "averaging_constant must be a number in",
        ),
    ],
)
def test_observer_constructor_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_core_axis_and_zero_point_errors_say_what_is_wrong():
    import numpy as np
    from ferroquant import _core

    q = np.zeros((2, 3), np.uint8)
    with pytest.raises(IndexError, match=r"axis -5 is out of range for a 2-D array; expected an axis in \[-2, 1\]"):
        _core.dequantize_per_channel(q, np.ones(2, np.float32), np.zeros(2, np.int32), -5)
    # negative axes count from the end, as in torch
    assert _core.dequantize_per_channel(q, np.ones(3, np.float32), np.zeros(3, np.int32), -1).shape == (2, 3)
    with pytest.raises(ValueError, match=r"zero_point 2147483648 is outside the int32 range"):
        _core.quantize_per_tensor(np.zeros(3, np.float32), 1.0, 2**31, 0, 255, "quint8")
    with pytest.raises(ValueError, match=r"zero_point -2147483649 is outside the int32 range"):
        _core.dequantize_per_tensor(q, 1.0, -(2**31) - 1)
