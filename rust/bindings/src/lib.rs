//! `ferroquant._core`: a thin PyO3 layer over ferroquant-kernels.
//!
//! Every function validates its arguments (dtype through the numpy types, contiguity,
//! shapes, lengths, qparams) and turns problems into Python exceptions; compute runs with
//! the GIL released. Users never import this module: `ferroquant` wraps it.
#![deny(unsafe_code)]

mod errors;

use ferroquant_kernels as k;
use ferroquant_kernels::quantize::{ChannelLayout, QInt};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use errors::{to_py, value_error};

fn contiguous<'a, T: numpy::Element>(
    a: &'a PyReadonlyArrayDyn<'_, T>,
    what: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        value_error(format!(
            "{what} must be C-contiguous; call .contiguous() first"
        ))
    })
}

fn engine() -> k::Engine {
    k::current_engine()
}

/// Names of the engines this CPU supports, best first (always ends with "scalar").
#[pyfunction]
fn available_engines() -> Vec<&'static str> {
    k::available_engines()
        .into_iter()
        .map(|e| e.name())
        .collect()
}

/// The engine "auto" resolves to on this CPU.
#[pyfunction]
fn best_engine() -> &'static str {
    k::best_engine().name()
}

/// Selects the engine ("auto" or a name from available_engines()).
#[pyfunction]
fn set_engine(name: &str) -> PyResult<()> {
    k::set_engine(name).map_err(to_py)
}

/// The engine setting: "auto" or the forced name.
#[pyfunction]
fn engine_setting() -> &'static str {
    k::engine_setting()
}

/// The engine kernels run on now.
#[pyfunction]
fn current_engine() -> &'static str {
    k::current_engine().name()
}

/// Multiply-accumulates below which a GEMM stays on one thread.
#[pyfunction]
fn parallel_min_macs() -> usize {
    k::PARALLEL_MIN_MACS
}

/// FBGEMM's dynamic choose-qparams: returns (scale as double, zero_point).
#[pyfunction]
fn choose_qparams_dynamic(min: f32, max: f32, qmin: i32, qmax: i32) -> PyResult<(f64, i32)> {
    let q = k::qparams::choose_qparams_dynamic(min, max, qmin, qmax).map_err(to_py)?;
    Ok((q.scale_f64, q.zero_point))
}

fn quantize_into<'py, T: QInt + numpy::Element>(
    py: Python<'py>,
    x: &[f32],
    shape: &[usize],
    scale: f32,
    zp: i32,
    qmin: i32,
    qmax: i32,
) -> PyResult<Bound<'py, PyAny>> {
    let mut out = vec![T::default(); x.len()];
    py.detach(|| k::quantize::quantize_per_tensor(x, scale, zp, qmin, qmax, &mut out))
        .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any())
}

/// Quantizes a contiguous float32 array per tensor (decision D3). dtype: quint8 | qint8 | qint32.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_per_tensor<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let xs = contiguous(&x, "input")?;
    let shape = x.shape().to_vec();
    match dtype {
        "quint8" => quantize_into::<u8>(py, xs, &shape, scale, zero_point, qmin, qmax),
        "qint8" => quantize_into::<i8>(py, xs, &shape, scale, zero_point, qmin, qmax),
        "qint32" => quantize_into::<i32>(py, xs, &shape, scale, zero_point, qmin, qmax),
        other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "unsupported quantized dtype {other:?}; use quint8, qint8 or qint32"
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn quantize_pc_into<'py, T: QInt + numpy::Element>(
    py: Python<'py>,
    x: &[f32],
    shape: &[usize],
    layout: ChannelLayout,
    scales: &[f32],
    zps: &[i32],
    qmin: i32,
    qmax: i32,
) -> PyResult<Bound<'py, PyAny>> {
    let mut out = vec![T::default(); x.len()];
    py.detach(|| k::quantize::quantize_per_channel(x, layout, scales, zps, qmin, qmax, &mut out))
        .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any())
}

/// Quantizes a contiguous float32 array with one scale/zero point per slice along `axis`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_per_channel<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scales: PyReadonlyArray1<'py, f32>,
    zero_points: PyReadonlyArray1<'py, i32>,
    axis: usize,
    qmin: i32,
    qmax: i32,
    dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let xs = contiguous(&x, "input")?;
    let shape = x.shape().to_vec();
    let layout = ChannelLayout::from_shape(&shape, axis).map_err(to_py)?;
    let s = scales
        .as_slice()
        .map_err(|_| value_error("scales must be contiguous"))?;
    let z = zero_points
        .as_slice()
        .map_err(|_| value_error("zero_points must be contiguous"))?;
    match dtype {
        "quint8" => quantize_pc_into::<u8>(py, xs, &shape, layout, s, z, qmin, qmax),
        "qint8" => quantize_pc_into::<i8>(py, xs, &shape, layout, s, z, qmin, qmax),
        "qint32" => quantize_pc_into::<i32>(py, xs, &shape, layout, s, z, qmin, qmax),
        other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "unsupported quantized dtype {other:?}; use quint8, qint8 or qint32"
        ))),
    }
}

/// The integer arrays `dequantize_*` accept.
#[derive(FromPyObject)]
enum IntArray<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    I8(PyReadonlyArrayDyn<'py, i8>),
    I32(PyReadonlyArrayDyn<'py, i32>),
}

fn dequant_pt<T: QInt + numpy::Element>(
    py: Python<'_>,
    q: &PyReadonlyArrayDyn<'_, T>,
    scale: f32,
    zp: i32,
) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let qs = contiguous(q, "quantized data")?;
    let mut out = vec![0f32; qs.len()];
    py.detach(|| k::quantize::dequantize_per_tensor(qs, scale, zp, &mut out))
        .map_err(to_py)?;
    Ok((out, q.shape().to_vec()))
}

/// Dequantizes an integer array (uint8 / int8 / int32) per tensor: fl(scale * fl(q - zp)).
#[pyfunction]
fn dequantize_per_tensor<'py>(
    py: Python<'py>,
    q: IntArray<'py>,
    scale: f32,
    zero_point: i32,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (out, shape) = match &q {
        IntArray::U8(a) => dequant_pt(py, a, scale, zero_point)?,
        IntArray::I8(a) => dequant_pt(py, a, scale, zero_point)?,
        IntArray::I32(a) => dequant_pt(py, a, scale, zero_point)?,
    };
    PyArray1::from_vec(py, out).reshape(shape)
}

fn dequant_pc<T: QInt + numpy::Element>(
    py: Python<'_>,
    q: &PyReadonlyArrayDyn<'_, T>,
    scales: &[f32],
    zps: &[i32],
    axis: usize,
) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let qs = contiguous(q, "quantized data")?;
    let shape = q.shape().to_vec();
    let layout = ChannelLayout::from_shape(&shape, axis).map_err(to_py)?;
    let mut out = vec![0f32; qs.len()];
    py.detach(|| k::quantize::dequantize_per_channel(qs, layout, scales, zps, &mut out))
        .map_err(to_py)?;
    Ok((out, shape))
}

/// Dequantizes per channel along `axis`.
#[pyfunction]
fn dequantize_per_channel<'py>(
    py: Python<'py>,
    q: IntArray<'py>,
    scales: PyReadonlyArray1<'py, f32>,
    zero_points: PyReadonlyArray1<'py, i32>,
    axis: usize,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let s = scales
        .as_slice()
        .map_err(|_| value_error("scales must be contiguous"))?;
    let z = zero_points
        .as_slice()
        .map_err(|_| value_error("zero_points must be contiguous"))?;
    let (out, shape) = match &q {
        IntArray::U8(a) => dequant_pc(py, a, s, z, axis)?,
        IntArray::I8(a) => dequant_pc(py, a, s, z, axis)?,
        IntArray::I32(a) => dequant_pc(py, a, s, z, axis)?,
    };
    PyArray1::from_vec(py, out).reshape(shape)
}

/// Int8 Linear weights packed for this machine's kernels (never serialized: modules keep the
/// canonical int8 tensor and rebuild this after loading a state_dict).
#[pyclass(module = "ferroquant._core", frozen)]
struct PackedLinear {
    inner: k::PackedWeights,
}

fn check_2d(shape: &[usize], k_expect: usize, what: &str) -> PyResult<usize> {
    if shape.len() != 2 || shape[1] != k_expect {
        return Err(value_error(format!(
            "{what} must have shape [M, {k_expect}] (in_features = {k_expect}), got {shape:?}"
        )));
    }
    Ok(shape[0])
}

fn bias_slice<'a>(b: &'a Option<PyReadonlyArray1<'_, f32>>) -> PyResult<Option<&'a [f32]>> {
    match b {
        None => Ok(None),
        Some(b) => Ok(Some(
            b.as_slice()
                .map_err(|_| value_error("bias must be contiguous"))?,
        )),
    }
}

#[pymethods]
impl PackedLinear {
    /// weight: int8 [out_features, in_features]; scales (float32) and zero_points (int32)
    /// of length 1 (per tensor) or out_features (per channel).
    #[new]
    fn new(
        py: Python<'_>,
        weight: PyReadonlyArrayDyn<'_, i8>,
        scales: PyReadonlyArray1<'_, f32>,
        zero_points: PyReadonlyArray1<'_, i32>,
    ) -> PyResult<Self> {
        let shape = weight.shape().to_vec();
        if shape.len() != 2 {
            return Err(value_error(format!(
                "weight must be 2-D [out_features, in_features], got shape {shape:?}"
            )));
        }
        let w = contiguous(&weight, "weight")?;
        let s = scales
            .as_slice()
            .map_err(|_| value_error("scales must be contiguous"))?;
        let z = zero_points
            .as_slice()
            .map_err(|_| value_error("zero_points must be contiguous"))?;
        let inner = py
            .detach(|| k::PackedWeights::new(w, shape[0], shape[1], s, z))
            .map_err(to_py)?;
        Ok(PackedLinear { inner })
    }

    #[getter]
    fn out_features(&self) -> usize {
        self.inner.n()
    }

    #[getter]
    fn in_features(&self) -> usize {
        self.inner.k()
    }

    #[getter]
    fn per_channel(&self) -> bool {
        self.inner.is_per_channel()
    }

    /// The int8 weights back as [out_features, in_features].
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<i8>>> {
        PyArray1::from_vec(py, self.inner.unpack()).reshape(vec![self.inner.n(), self.inner.k()])
    }

    /// Dynamic quantized linear on float32 x [M, K] → float32 [M, N]. Returns
    /// (out, scales, zero_points): the activation qparams chosen for this call (one entry, or one
    /// per row with per_row=True).
    #[pyo3(signature = (x, bias=None, reduce_range=false, relu=false, threads=1, per_row=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn linear_dynamic<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        reduce_range: bool,
        relu: bool,
        threads: usize,
        per_row: bool,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Vec<f64>, Vec<i32>)> {
        let m = check_2d(x.shape(), self.inner.k(), "input")?;
        let xs = contiguous(&x, "input")?;
        let b = bias_slice(&bias)?;
        let n = self.inner.n();
        let mut out = vec![0f32; m * n];
        let e = engine();
        let w = &self.inner;
        let opts = k::DynamicOptions {
            reduce_range,
            per_row,
            relu,
        };
        let qps = py
            .detach(|| k::linear_dynamic_with(e, xs, m, w, b, opts, &mut out, threads))
            .map_err(to_py)?;
        Ok((
            PyArray1::from_vec(py, out).reshape(vec![m, n])?,
            qps.iter().map(|q| q.scale_f64).collect(),
            qps.iter().map(|q| q.zero_point).collect(),
        ))
    }

    /// Static quantized linear: quint8 a [M, K] with (a_scale, a_zp) → out_dtype [M, N]
    /// requantized to (out_scale, out_zp) and clamped to [qmin, qmax].
    #[pyo3(signature = (a, a_scale, a_zp, bias, out_scale, out_zp, qmin, qmax, relu=false, out_dtype="quint8", threads=1))]
    #[allow(clippy::too_many_arguments)]
    fn linear_static<'py>(
        &self,
        py: Python<'py>,
        a: PyReadonlyArrayDyn<'py, u8>,
        a_scale: f32,
        a_zp: i32,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        out_scale: f32,
        out_zp: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
        out_dtype: &str,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = check_2d(a.shape(), self.inner.k(), "input")?;
        let av = contiguous(&a, "input")?;
        let b = bias_slice(&bias)?;
        let n = self.inner.n();
        let e = engine();
        let w = &self.inner;
        macro_rules! run {
            ($t:ty) => {{
                let mut out = vec![<$t>::default(); m * n];
                py.detach(|| {
                    k::linear_static(
                        e, av, m, a_scale, a_zp, w, b, out_scale, out_zp, qmin, qmax, relu,
                        &mut out, threads,
                    )
                })
                .map_err(to_py)?;
                Ok(PyArray1::from_vec(py, out).reshape(vec![m, n])?.into_any())
            }};
        }
        match out_dtype {
            "quint8" => run!(u8),
            "qint8" => run!(i8),
            other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "unsupported output dtype {other:?}; use quint8 or qint8"
            ))),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "PackedLinear(out_features={}, in_features={}, per_channel={})",
            self.inner.n(),
            self.inner.k(),
            self.inner.is_per_channel()
        )
    }
}

/// Conv weights (int8 `[cout, cin/groups, kd, kh, kw]`) packed per group for this machine.
#[pyclass(module = "ferroquant._core", frozen)]
struct PackedConv {
    inner: k::conv::PackedConv,
}

fn triple(v: Vec<usize>, what: &str) -> PyResult<[usize; 3]> {
    <[usize; 3]>::try_from(v).map_err(|v| {
        value_error(format!(
            "{what} must have 3 entries (d, h, w), got {}",
            v.len()
        ))
    })
}

#[pymethods]
impl PackedConv {
    #[new]
    #[pyo3(signature = (weight, scales, zero_points, stride, padding, dilation, groups))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        weight: PyReadonlyArrayDyn<'_, i8>,
        scales: PyReadonlyArray1<'_, f32>,
        zero_points: PyReadonlyArray1<'_, i32>,
        stride: Vec<usize>,
        padding: Vec<usize>,
        dilation: Vec<usize>,
        groups: usize,
    ) -> PyResult<Self> {
        let shape = weight.shape().to_vec();
        if shape.len() != 5 {
            return Err(value_error(format!(
                "conv weight must be 5-D [out, in/groups, kd, kh, kw] (1d/2d weights unsqueezed), got shape {shape:?}"
            )));
        }
        let geom = k::conv::ConvGeometry {
            kernel: [shape[2], shape[3], shape[4]],
            stride: triple(stride, "stride")?,
            padding: triple(padding, "padding")?,
            dilation: triple(dilation, "dilation")?,
            groups,
        };
        let w = contiguous(&weight, "weight")?;
        let s = scales
            .as_slice()
            .map_err(|_| value_error("scales must be contiguous"))?;
        let z = zero_points
            .as_slice()
            .map_err(|_| value_error("zero_points must be contiguous"))?;
        let cin = shape[1] * groups;
        let inner = py
            .detach(|| k::conv::PackedConv::new(w, shape[0], cin, geom, s, z))
            .map_err(to_py)?;
        Ok(PackedConv { inner })
    }

    /// Static quantized conv on a channels-last quint8 input [N, D, H, W, C] → [N, OD, OH, OW, Cout].
    #[pyo3(signature = (x, x_scale, x_zp, bias, out_scale, out_zp, qmin, qmax, relu=false, out_dtype="quint8", threads=1))]
    #[allow(clippy::too_many_arguments)]
    fn conv_static<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, u8>,
        x_scale: f32,
        x_zp: i32,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        out_scale: f32,
        out_zp: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
        out_dtype: &str,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shape = x.shape().to_vec();
        if shape.len() != 5 || shape[4] != self.inner.in_channels() {
            return Err(value_error(format!(
                "conv input must be channels-last [N, D, H, W, {}], got {shape:?}",
                self.inner.in_channels()
            )));
        }
        let xs = contiguous(&x, "input")?;
        let b = bias_slice(&bias)?;
        let (n, sp) = (shape[0], [shape[1], shape[2], shape[3]]);
        let e = engine();
        let pc = &self.inner;
        let cout = pc.out_channels();
        macro_rules! run {
            ($t:ty) => {{
                let (out, osp) = py
                    .detach(|| {
                        k::conv::conv_static::<$t>(
                            e, xs, n, sp, x_scale, x_zp, pc, b, out_scale, out_zp, qmin, qmax,
                            relu, threads,
                        )
                    })
                    .map_err(to_py)?;
                Ok(PyArray1::from_vec(py, out)
                    .reshape(vec![n, osp[0], osp[1], osp[2], cout])?
                    .into_any())
            }};
        }
        match out_dtype {
            "quint8" => run!(u8),
            "qint8" => run!(i8),
            other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "unsupported output dtype {other:?}; use quint8 or qint8"
            ))),
        }
    }

    #[getter]
    fn in_channels(&self) -> usize {
        self.inner.in_channels()
    }

    #[getter]
    fn out_channels(&self) -> usize {
        self.inner.out_channels()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(available_engines, m)?)?;
    m.add_function(wrap_pyfunction!(best_engine, m)?)?;
    m.add_function(wrap_pyfunction!(set_engine, m)?)?;
    m.add_function(wrap_pyfunction!(engine_setting, m)?)?;
    m.add_function(wrap_pyfunction!(current_engine, m)?)?;
    m.add_function(wrap_pyfunction!(parallel_min_macs, m)?)?;
    m.add_function(wrap_pyfunction!(choose_qparams_dynamic, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_per_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_per_channel, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_per_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_per_channel, m)?)?;
    m.add_class::<PackedLinear>()?;
    m.add_class::<PackedConv>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
