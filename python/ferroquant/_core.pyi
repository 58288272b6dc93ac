"""Type stubs for ferroquant._core (the PyO3 extension). Users import ferroquant, not this."""

from typing import Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

def available_engines() -> list[str]: ...
def best_engine() -> str: ...
def set_engine(name: str) -> None: ...
def engine_setting() -> str: ...
def current_engine() -> str: ...
def parallel_min_macs() -> int: ...
def set_parallel_min_macs(macs: int) -> int: ...
def max_threads() -> int: ...
def pool_workers() -> int: ...
def parallel_jobs() -> int: ...
def use_openmp_runtime(path: str) -> bool: ...
def set_openmp_enabled(on: bool) -> bool: ...
def thread_runtime() -> str: ...
def choose_qparams_dynamic(min: float, max: float, qmin: int, qmax: int) -> tuple[float, int]: ...
def quantize_per_tensor(
    x: npt.NDArray[np.float32],
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    dtype: str,
    channels_last: bool = False,
) -> npt.NDArray[np.generic]: ...
def quantize_per_channel(
    x: npt.NDArray[np.float32],
    scales: npt.NDArray[np.float32],
    zero_points: npt.NDArray[np.int32],
    axis: int,
    qmin: int,
    qmax: int,
    dtype: str,
) -> npt.NDArray[np.generic]: ...
def fake_quantize(
    x: npt.NDArray[np.float32],
    scales: npt.NDArray[np.float32],
    zero_points: npt.NDArray[np.int32],
    axis: int,
    qmin: int,
    qmax: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]: ...
def add_requant(
    a: npt.NDArray[np.uint8],
    a_scale: float,
    a_zp: int,
    b: npt.NDArray[np.uint8],
    b_scale: float,
    b_zp: int,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    relu: bool = False,
    out_dtype: str = "quint8",
    threads: int = 1,
) -> npt.NDArray[np.generic]: ...
def lut_u8(x: npt.NDArray[np.uint8], table: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]: ...
def max_pool_nhwc(
    x: npt.NDArray[np.uint8],
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    threads: int = 1,
) -> npt.NDArray[np.uint8]: ...
def avg_pool_nhwc(
    x: npt.NDArray[np.uint8],
    windows: list[tuple[list[int], list[int], list[int]]],
    divisor_override: Optional[int],
    zp: int,
    qmin: int,
    qmax: int,
) -> npt.NDArray[np.uint8]: ...
def dequantize_per_tensor(q: npt.NDArray[np.generic], scale: float, zero_point: int) -> npt.NDArray[np.float32]: ...
def dequantize_per_channel(
    q: npt.NDArray[np.generic],
    scales: npt.NDArray[np.float32],
    zero_points: npt.NDArray[np.int32],
    axis: int,
) -> npt.NDArray[np.float32]: ...
def rnn_layer(
    mode: str,
    x: npt.NDArray[np.float32],
    batch_sizes: list[int],
    w_ih: Union[PackedLinear, PackedLowLinear],
    b_ih: Optional[npt.NDArray[np.float32]],
    w_hh: Union[PackedLinear, PackedLowLinear],
    b_hh: Optional[npt.NDArray[np.float32]],
    h0: npt.NDArray[np.float32],
    c0: Optional[npt.NDArray[np.float32]] = None,
    reverse: bool = False,
    reduce_range: bool = False,
    per_row: bool = False,
    threads: int = 1,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Optional[npt.NDArray[np.float32]]]: ...

class PackedLinear:
    def __init__(
        self,
        weight: npt.NDArray[np.int8],
        scales: npt.NDArray[np.float32],
        zero_points: npt.NDArray[np.int32],
    ) -> None: ...
    @property
    def out_features(self) -> int: ...
    @property
    def in_features(self) -> int: ...
    @property
    def per_channel(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...
    def unpack(self) -> npt.NDArray[np.int8]: ...
    def linear_dynamic(
        self,
        x: npt.NDArray[np.float32],
        bias: Optional[npt.NDArray[np.float32]] = None,
        reduce_range: bool = False,
        relu: bool = False,
        threads: int = 1,
        per_row: bool = False,
    ) -> tuple[npt.NDArray[np.float32], list[float], list[int]]: ...
    def linear_static(
        self,
        a: npt.NDArray[np.uint8],
        a_scale: float,
        a_zp: int,
        bias: Optional[npt.NDArray[np.float32]],
        out_scale: float,
        out_zp: int,
        qmin: int,
        qmax: int,
        relu: bool = False,
        out_dtype: str = "quint8",
        threads: int = 1,
    ) -> npt.NDArray[np.generic]: ...

class PackedConv:
    def __init__(
        self,
        weight: npt.NDArray[np.int8],
        scales: npt.NDArray[np.float32],
        zero_points: npt.NDArray[np.int32],
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
    ) -> None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def depthwise(self) -> bool: ...
    def unpack(self) -> npt.NDArray[np.int8]: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    def conv_static(
        self,
        x: npt.NDArray[np.uint8],
        x_scale: float,
        x_zp: int,
        bias: Optional[npt.NDArray[np.float32]],
        out_scale: float,
        out_zp: int,
        qmin: int,
        qmax: int,
        relu: bool = False,
        out_dtype: str = "quint8",
        threads: int = 1,
    ) -> npt.NDArray[np.generic]: ...

class Plan:
    """A converted model's forward as kernel steps (ferroquant/_fx/plan.py builds it)."""

    def __init__(
        self,
        steps: list[tuple],
        input_shape: list[int],
        output_shape: list[int],
        same: list[tuple[dict, str, object]] = ...,
        equal: list[tuple[dict, str, object]] = ...,
        versions: list[tuple[object, int]] = ...,
        empty: list[object] = ...,
        lengths: list[tuple[object, int]] = ...,
        types: list[tuple[object, type]] = ...,
    ) -> None: ...
    def holds(self) -> bool: ...
    def run(self, x: npt.NDArray[np.float32], threads: int = 1) -> Optional[npt.NDArray[np.generic]]: ...
    def step_seconds(self, x: npt.NDArray[np.float32], threads: int = 1) -> Optional[list[float]]: ...
    def step_kinds(self) -> list[str]: ...
    def __len__(self) -> int: ...

class PackedLowLinear:
    @staticmethod
    def from_f16_bits(bits: npt.NDArray[np.uint16]) -> PackedLowLinear: ...
    @staticmethod
    def from_i8(
        weight: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], zero_points: npt.NDArray[np.int32]
    ) -> PackedLowLinear: ...
    @property
    def out_features(self) -> int: ...
    @property
    def in_features(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def per_channel(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...
    def unpack(self) -> npt.NDArray[np.generic]: ...
    def linear(
        self, x: npt.NDArray[np.float32], bias: Optional[npt.NDArray[np.float32]] = None, threads: int = 1
    ) -> npt.NDArray[np.float32]: ...

class EmbeddingTable:
    def __init__(
        self,
        data: npt.NDArray[np.uint8],
        dim: int,
        bits: int,
        scales: npt.NDArray[np.float32],
        zero_points: npt.NDArray[np.float32],
    ) -> None: ...
    @property
    def rows(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def bits(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def lookup(self, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...
    def bag(
        self,
        indices: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.int64],
        mode: str,
        per_sample_weights: Optional[npt.NDArray[np.float32]] = None,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
    ) -> npt.NDArray[np.float32]: ...

def softmax_u8(
    x: npt.NDArray[np.uint8], len: int, in_scale: float, in_zp: int, out_scale: float, out_zp: int
) -> npt.NDArray[np.uint8]: ...
def layer_norm_u8(
    x: npt.NDArray[np.uint8],
    len: int,
    weight: Optional[npt.NDArray[np.float32]],
    bias: Optional[npt.NDArray[np.float32]],
    eps: float,
    in_scale: float,
    in_zp: int,
    out_scale: float,
    out_zp: int,
) -> npt.NDArray[np.uint8]: ...
def group_norm_u8(
    x: npt.NDArray[np.uint8],
    groups: int,
    channels: int,
    inner: int,
    weight: Optional[npt.NDArray[np.float32]],
    bias: Optional[npt.NDArray[np.float32]],
    eps: float,
    in_scale: float,
    in_zp: int,
    out_scale: float,
    out_zp: int,
) -> npt.NDArray[np.uint8]: ...
def lut_u8_per_channel(
    x: npt.NDArray[np.uint8], tables: npt.NDArray[np.uint8], channels: int, inner: int
) -> npt.NDArray[np.uint8]: ...
