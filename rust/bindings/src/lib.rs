//! `ferroquant._core`: a thin PyO3 layer over ferroquant-kernels.
//!
//! Every function validates its arguments (dtype through the numpy types, shapes, lengths,
//! qparams) and turns problems into Python exceptions; it never panics.
//!
//! **Memory Python can touch is read only with the GIL held.** Array arguments are copied into
//! Rust-owned buffers (in C order, whatever their strides: Fortran-ordered, sliced, negative
//! or zero strides) before the GIL is released; compute then runs GIL-free on memory no Python
//! thread can reach, and outputs are Rust vectors handed to numpy afterwards. Another thread
//! resizing or writing an argument during a call therefore cannot crash it or mix old and new
//! values. Users never import this module: `ferroquant` wraps it.
#![deny(unsafe_code)]

mod errors;
mod plan;

use ferroquant_kernels as k;
use ferroquant_kernels::quantize::{ChannelLayout, QInt};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use errors::{to_py, value_error};

/// What `o` is, for error messages: "float64 array of shape [2, 3]" or its Python type.
fn describe(o: &Bound<'_, PyAny>) -> String {
    match o.cast::<numpy::PyUntypedArray>() {
        Ok(a) => format!("a {} array of shape {:?}", a.dtype(), a.shape()),
        Err(_) => o
            .get_type()
            .name()
            .map(|n| format!("a {n}"))
            .unwrap_or_else(|_| "an object".into()),
    }
}

/// `o` as a numpy array of `T`, or a TypeError naming the argument, the dtype it needs and
/// what it got.
fn arr<'py, T: numpy::Element>(
    o: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    o.extract::<PyReadonlyArrayDyn<'py, T>>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be a numpy array of dtype {}, got {}",
            T::get_dtype(o.py()),
            describe(o)
        ))
    })
}

/// [`arr`] for 1-D arrays.
fn arr1<'py, T: numpy::Element>(
    o: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    o.extract::<PyReadonlyArray1<'py, T>>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be a 1-D numpy array of dtype {}, got {}",
            T::get_dtype(o.py()),
            describe(o)
        ))
    })
}

/// A C-order copy of any numpy array (any strides), taken with the GIL held.
fn owned<T: numpy::Element + Copy + Default>(
    a: &PyReadonlyArrayDyn<'_, T>,
    what: &str,
) -> PyResult<Vec<T>> {
    let v = a.as_array();
    let mut out = Vec::new();
    out.try_reserve_exact(v.len()).map_err(|_| {
        pyo3::exceptions::PyMemoryError::new_err(format!(
            "cannot allocate a copy of {what} ({} elements)",
            v.len()
        ))
    })?;
    match v.as_slice() {
        Some(s) => out.extend_from_slice(s),
        None => {
            // strided (e.g. a permuted channels-last view): ndarray's assign walks the
            // destination in C order with plain strided inner loops, many times faster than
            // the element iterator
            out.resize(v.len(), T::default());
            let mut dst = numpy::ndarray::ArrayViewMut::from_shape(v.raw_dim(), &mut out)
                .map_err(|e| value_error(format!("{what}: {e}")))?;
            dst.assign(&v);
        }
    }
    Ok(out)
}

/// [`owned`] for 1-D arrays.
fn owned1<T: numpy::Element + Copy>(a: &PyReadonlyArray1<'_, T>, what: &str) -> PyResult<Vec<T>> {
    let v = a.as_array();
    let mut out = Vec::new();
    out.try_reserve_exact(v.len()).map_err(|_| {
        pyo3::exceptions::PyMemoryError::new_err(format!("cannot allocate a copy of {what}"))
    })?;
    out.extend(v.iter().copied());
    Ok(out)
}

/// Convolutions up to this many multiply-adds (about a millisecond on one core) run with the GIL
/// held, reading their input in place: copying the input to release the GIL would cost them more
/// (up to a fifth of a depthwise conv's time) than other Python threads would gain.
const GIL_HELD_MAX_MACS: usize = 256 << 20;

/// The multiply-adds of a conv on `n` inputs of spatial size `sp` (saturating; 0 when the input
/// is smaller than the kernel, which the kernel call then reports).
fn conv_macs(pc: &k::conv::PackedConv, n: usize, sp: [usize; 3]) -> usize {
    let g = pc.geometry();
    let Ok(osp) = g.output_size(sp) else { return 0 };
    let taps = g.kernel.iter().product::<usize>();
    let per_out = taps.saturating_mul(pc.in_channels() / g.groups.max(1));
    [n, osp[0], osp[1], osp[2], pc.out_channels(), per_out]
        .iter()
        .fold(1usize, |a, &b| a.saturating_mul(b))
}

/// An array argument copied out of Python's memory with the GIL held: its values in C order and
/// its shape. The numpy borrow ends before this returns, so the GIL can be released afterwards
/// even if Python then resizes or frees the array (rust-numpy looks a borrow up by the array's
/// current data pointer when releasing it).
fn take<T: numpy::Element + Copy + Default>(
    o: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<(Vec<T>, Vec<usize>)> {
    let a = arr::<T>(o, what)?;
    let data = owned(&a, what)?;
    Ok((data, a.shape().to_vec()))
}

/// Calls `f` on the values of `o` in C order, with the GIL held and the numpy borrow alive only
/// during the call: straight from Python's buffer when it is C-contiguous, else from a copy.
/// For work whose first step copies anyway (quantize-and-pack), so the input is read once.
fn with_values<T: numpy::Element + Copy + Default, R>(
    o: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&[T], &[usize]) -> PyResult<R>,
) -> PyResult<R> {
    let a = arr::<T>(o, what)?;
    let shape = a.shape().to_vec();
    let v = a.as_array();
    match v.as_slice() {
        Some(s) => f(s, &shape),
        None => f(&owned(&a, what)?, &shape),
    }
}

/// `a`'s values in C order, read in place when contiguous, else copied into `buf` (for work that
/// runs with the GIL held and reads its input once).
fn in_place<'a, T: numpy::Element + Copy + Default>(
    a: &'a PyReadonlyArrayDyn<'_, T>,
    what: &str,
    buf: &'a mut Vec<T>,
) -> PyResult<&'a [T]> {
    // ndarray's `as_slice` is C order only (rust-numpy's would also take a Fortran-ordered
    // array, whose memory order is not the logical one)
    let v: numpy::ndarray::ArrayViewD<'a, T> = a.as_array();
    match v.to_slice() {
        Some(s) => Ok(s),
        None => {
            *buf = owned(a, what)?;
            Ok(&buf[..])
        }
    }
}

/// [`take`] for 1-D arrays.
fn take1<T: numpy::Element + Copy>(o: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<T>> {
    let a = arr1::<T>(o, what)?;
    owned1(&a, what)
}

/// A zero point from Python (any int) as the kernels' i32, or a ValueError that says why.
fn zp_i32(v: i64) -> PyResult<i32> {
    i32::try_from(v).map_err(|_| {
        value_error(format!(
            "zero_point {v} is outside the int32 range; a zero point must lie inside its dtype's \
             range (quint8 [0, 255], qint8 [-128, 127], qint32 [-2^31, 2^31 - 1])"
        ))
    })
}

/// An axis from Python (negative counts from the end, as in torch) for a tensor of `ndim` dims,
/// or an IndexError naming the valid range.
fn axis_of(axis: i64, ndim: usize) -> PyResult<usize> {
    let n = ndim as i64;
    if (-n..n).contains(&axis) {
        Ok(if axis < 0 { axis + n } else { axis } as usize)
    } else {
        Err(pyo3::exceptions::PyIndexError::new_err(format!(
            "axis {axis} is out of range for a {ndim}-D array; expected an axis in [{}, {}]",
            -n,
            n - 1
        )))
    }
}

/// A zero-filled output buffer of `shape`, or MemoryError / ValueError (never an abort).
fn output<T: Clone + Default>(shape: &[usize], what: &str) -> PyResult<Vec<T>> {
    let n = k::error::checked_numel(shape, what).map_err(to_py)?;
    k::error::try_vec(n, T::default(), what).map_err(to_py)
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
    k::parallel_min_macs()
}

/// Sets the multiply-accumulates below which a GEMM stays on one thread (tests lower it to run
/// small problems on several threads; results never depend on it). Returns the previous value.
#[pyfunction]
fn set_parallel_min_macs(macs: usize) -> usize {
    k::set_parallel_min_macs(macs)
}

/// The most threads a kernel call can use here (the CPUs this process may run on).
#[pyfunction]
fn max_threads() -> usize {
    k::max_threads()
}

/// Runs parallel kernel calls on the OpenMP runtime at `path` (a library this process already
/// loaded: torch's libgomp) instead of ferroquant's own pool. Returns whether it is in use.
#[pyfunction]
fn use_openmp_runtime(py: Python<'_>, path: &str) -> bool {
    let path = path.to_owned();
    py.detach(move || k::use_openmp_runtime(&path))
}

/// Switches between ferroquant's own pool (False) and the registered OpenMP runtime (True);
/// returns whether OpenMP is in use.
#[pyfunction]
fn set_openmp_enabled(on: bool) -> bool {
    k::set_openmp_enabled(on)
}

/// "openmp" when parallel kernel calls run on torch's OpenMP threads, "own" for ferroquant's pool.
#[pyfunction]
fn thread_runtime() -> &'static str {
    k::thread_runtime()
}

/// Kernel calls that ran on more than one thread so far.
#[pyfunction]
fn parallel_jobs() -> usize {
    k::parallel_jobs()
}

/// Worker threads the pool has started so far (never more than max_threads() - 1).
#[pyfunction]
fn pool_workers() -> usize {
    k::pool_workers()
}

/// FBGEMM's dynamic choose-qparams: returns (scale as double, zero_point).
#[pyfunction]
fn choose_qparams_dynamic(min: f32, max: f32, qmin: i32, qmax: i32) -> PyResult<(f64, i32)> {
    let q = k::qparams::choose_qparams_dynamic(min, max, qmin, qmax).map_err(to_py)?;
    Ok((q.scale_f64, q.zero_point))
}

/// Quantizes `x` with the GIL held: one pass over the input, read in place (no copy first);
/// `channels_last`: `[N, C, *S]` → `[N, *S, C]`.
#[allow(clippy::too_many_arguments)]
fn quantize_into<'py, T: QInt + numpy::Element>(
    py: Python<'py>,
    x: &[f32],
    shape: &[usize],
    scale: f32,
    zp: i32,
    qmin: i32,
    qmax: i32,
    channels_last: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mut out = output::<T>(shape, "the quantized output")?;
    if !channels_last {
        k::quantize::quantize_per_tensor(x, scale, zp, qmin, qmax, &mut out).map_err(to_py)?;
        return Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any());
    }
    if shape.len() < 3 {
        return Err(value_error(format!(
            "quantize_per_tensor(channels_last=True) needs an input [N, C, *spatial] of at least 3 dims, got shape {shape:?}"
        )));
    }
    let inner: usize = shape[2..].iter().product();
    k::quantize::quantize_per_tensor_channels_last(
        x, shape[0], shape[1], inner, scale, zp, qmin, qmax, &mut out,
    )
    .map_err(to_py)?;
    let mut cl_shape = vec![shape[0]];
    cl_shape.extend_from_slice(&shape[2..]);
    cl_shape.push(shape[1]);
    Ok(PyArray1::from_vec(py, out).reshape(cl_shape)?.into_any())
}

/// Quantizes a contiguous float32 array per tensor: zero point added after rounding half to even
/// (docs/numerics.md D3). dtype: quint8 | qint8 | qint32. With `channels_last`, `x` `[N, C, *S]`
/// (at least 3-D) gives `[N, *S, C]`: the same values, transposed in the same pass.
#[pyfunction]
#[pyo3(signature = (x, scale, zero_point, qmin, qmax, dtype, channels_last=false))]
#[allow(clippy::too_many_arguments)]
fn quantize_per_tensor<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scale: f32,
    zero_point: i64,
    qmin: i32,
    qmax: i32,
    dtype: &str,
    channels_last: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let zero_point = zp_i32(zero_point)?;
    let cl = channels_last;
    with_values::<f32, _>(x, "input", |xs, shape| match dtype {
        "quint8" => quantize_into::<u8>(py, xs, shape, scale, zero_point, qmin, qmax, cl),
        "qint8" => quantize_into::<i8>(py, xs, shape, scale, zero_point, qmin, qmax, cl),
        "qint32" => quantize_into::<i32>(py, xs, shape, scale, zero_point, qmin, qmax, cl),
        other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "unsupported quantized dtype {other:?}; use quint8, qint8 or qint32"
        ))),
    })
}

/// Fake quantization for quantization-aware training of a float32 array `x`: per tensor
/// (`axis = -1`, one scale and zero point) or per channel along `axis`; returns
/// `(out, mask)`: `out = (clamp(rne(x·fl(1/s)) + zp, qmin, qmax) − zp)·s` (float32, same shape)
/// and `mask` (uint8) = 1 where the rounded value lies inside `[qmin, qmax]`, the straight-through
/// gradient's mask. Runs with the GIL held (one memory-bound pass; a C-contiguous input is read
/// in place).
#[pyfunction]
#[pyo3(signature = (x, scales, zero_points, axis, qmin, qmax))]
fn fake_quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    zero_points: &Bound<'py, PyAny>,
    axis: i64,
    qmin: i32,
    qmax: i32,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let scales = take1::<f32>(scales, "scales")?;
    let zps = take1::<i32>(zero_points, "zero_points")?;
    with_values::<f32, _>(x, "input", |xs, shape| {
        let layout = if axis < 0 {
            if scales.len() != 1 || zps.len() != 1 {
                return Err(value_error(format!(
                    "per-tensor fake quantization (axis=-1) takes one scale and one zero point, got {} and {}",
                    scales.len(),
                    zps.len()
                )));
            }
            k::quantize::ChannelLayout {
                outer: 1,
                channels: 1,
                inner: xs.len(),
            }
        } else {
            let axis = usize::try_from(axis)
                .map_err(|_| value_error("axis must be -1 or a valid dimension"))?;
            k::quantize::ChannelLayout::from_shape(shape, axis).map_err(to_py)?
        };
        let mut out = output::<f32>(shape, "the fake-quantized output")?;
        let mut mask = output::<u8>(shape, "the fake-quantization mask")?;
        k::quantize::fake_quantize(xs, layout, &scales, &zps, qmin, qmax, &mut out, &mut mask)
            .map_err(to_py)?;
        let out = PyArray1::from_vec(py, out)
            .reshape(shape.to_vec())?
            .into_any();
        let mask = PyArray1::from_vec(py, mask)
            .reshape(shape.to_vec())?
            .into_any();
        Ok((out, mask))
    })
}

/// Quantized `a + b` (with `relu`, `max(a + b, 0)`) on quint8 arrays of one shape, requantized
/// to `(scale, zero_point)` and clamped to `[qmin, qmax]` in `out_dtype` (quint8 | qint8): the
/// float definition (dequantize, add in float32, quantize by D3) in one pass. Runs with the GIL
/// held (one memory-bound pass; contiguous inputs are read in place), on up to `threads` threads
/// for large tensors.
#[pyfunction]
#[pyo3(signature = (a, a_scale, a_zp, b, b_scale, b_zp, scale, zero_point, qmin, qmax, relu=false, out_dtype="quint8", threads=1))]
#[allow(clippy::too_many_arguments)]
fn add_requant<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    a_scale: f32,
    a_zp: i64,
    b: &Bound<'py, PyAny>,
    b_scale: f32,
    b_zp: i64,
    scale: f32,
    zero_point: i64,
    qmin: i32,
    qmax: i32,
    relu: bool,
    out_dtype: &str,
    threads: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (aa, ba) = (arr::<u8>(a, "a")?, arr::<u8>(b, "b")?);
    if aa.shape() != ba.shape() {
        return Err(value_error(format!(
            "add_requant: a and b must have one shape, got {:?} and {:?}",
            aa.shape(),
            ba.shape()
        )));
    }
    let shape = aa.shape().to_vec();
    let (mut av, mut bv) = (Vec::new(), Vec::new());
    let ad = in_place(&aa, "a", &mut av)?;
    let bd = in_place(&ba, "b", &mut bv)?;
    let qa = k::elementwise::QOperand {
        data: ad,
        scale: a_scale,
        zero_point: zp_i32(a_zp)?,
    };
    let qb = k::elementwise::QOperand {
        data: bd,
        scale: b_scale,
        zero_point: zp_i32(b_zp)?,
    };
    let o = k::elementwise::QOutput {
        scale,
        zero_point: zp_i32(zero_point)?,
        qmin,
        qmax,
    };
    macro_rules! run {
        ($t:ty) => {{
            let mut out = output::<$t>(&shape, "the add output")?;
            k::elementwise::add_requant_threads(engine(), qa, qb, o, relu, &mut out, threads)
                .map_err(to_py)?;
            Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any())
        }};
    }
    match out_dtype {
        "quint8" => run!(u8),
        "qint8" => run!(i8),
        other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "add_requant outputs quint8 or qint8, got {other:?}"
        ))),
    }
}

/// `table[x]` elementwise: `x` a uint8 array of any shape, `table` 256 uint8 or int8 values
/// (any function of one quint8 input, computed by its float definition). Runs with the GIL held
/// (one pass; a contiguous input is read in place).
#[pyfunction]
fn lut_u8<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    table: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let xa = arr::<u8>(x, "x")?;
    let shape = xa.shape().to_vec();
    let mut xv = Vec::new();
    let xd = in_place(&xa, "x", &mut xv)?;
    macro_rules! run {
        ($t:ty) => {{
            let t = take1::<$t>(table, "table")?;
            let mut out = output::<$t>(&shape, "the lookup output")?;
            k::elementwise::lut_u8(engine(), xd, &t, &mut out).map_err(to_py)?;
            Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any())
        }};
    }
    if arr1::<u8>(table, "table").is_ok() {
        run!(u8)
    } else if arr1::<i8>(table, "table").is_ok() {
        run!(i8)
    } else {
        Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "lut_u8: table must be a 1-D numpy array of 256 uint8 or int8 values, got {}",
            describe(table)
        )))
    }
}

/// Per-channel lookup: x uint8 `[outer, channels, inner]` (C order), tables uint8
/// `[channels, 256]` → `out[i] = tables[c(i)][x[i]]`.
#[pyfunction]
fn lut_u8_per_channel<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    tables: &Bound<'py, PyAny>,
    channels: usize,
    inner: usize,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let (xs, shape) = take::<u8>(x, "x")?;
    let (t, _) = take::<u8>(tables, "tables")?;
    let mut out = output::<u8>(&shape, "the lookup output")?;
    py.detach(|| k::elementwise::lut_u8_per_channel(&xs, &t, channels, inner, &mut out))
        .map_err(to_py)?;
    PyArray1::from_vec(py, out).reshape(shape)
}

/// Max pooling of a channels-last quint8 array `x` `[N, D, H, W, C]` (conv1d/2d-style inputs
/// with D = H = 1 / D = 1) → `[N, OD, OH, OW, C]`, floor mode, padding ≤ kernel / 2. Runs with the
/// GIL held (one memory-bound pass; a contiguous input is read in place).
#[pyfunction]
#[pyo3(signature = (x, kernel, stride, padding, dilation, threads=1))]
fn max_pool_nhwc<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kernel: Vec<usize>,
    stride: Vec<usize>,
    padding: Vec<usize>,
    dilation: Vec<usize>,
    threads: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let xa = arr::<u8>(x, "x")?;
    let shape = xa.shape().to_vec();
    if shape.len() != 5 {
        return Err(value_error(format!(
            "max_pool_nhwc: x must be 5-D [N, D, H, W, C], got shape {shape:?}"
        )));
    }
    let geom = k::conv::ConvGeometry {
        kernel: triple(kernel, "kernel")?,
        stride: triple(stride, "stride")?,
        padding: triple(padding, "padding")?,
        dilation: triple(dilation, "dilation")?,
        groups: 1,
    };
    let mut xv = Vec::new();
    let xd = in_place(&xa, "x", &mut xv)?;
    let sp = [shape[1], shape[2], shape[3]];
    let (out, osp) =
        k::pool::max_pool_u8_threads(engine(), xd, shape[0], sp, shape[4], &geom, threads)
            .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out)
        .reshape(vec![shape[0], osp[0], osp[1], osp[2], shape[4]])?
        .into_any())
}

/// Average pooling (plain or adaptive) of a channels-last quint8 array `x` `[N, D, H, W, C]`
/// with zero point `zp`: `windows` holds, per spatial axis (D, H, W), the `(start, end, count)`
/// of every output position (the input range summed, and the window's size toward the divisor);
/// `out = clamp(rne(Σ(q − zp) / divisor + zp), qmin, qmax)`, `divisor = divisor_override` or
/// the product of the counts. Runs with the GIL held (one memory-bound pass).
#[pyfunction]
#[pyo3(signature = (x, windows, divisor_override, zp, qmin, qmax))]
#[allow(clippy::type_complexity)]
fn avg_pool_nhwc<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    windows: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)>,
    divisor_override: Option<usize>,
    zp: i32,
    qmin: i32,
    qmax: i32,
) -> PyResult<Bound<'py, PyAny>> {
    let xa = arr::<u8>(x, "x")?;
    let shape = xa.shape().to_vec();
    if shape.len() != 5 {
        return Err(value_error(format!(
            "avg_pool_nhwc: x must be 5-D [N, D, H, W, C], got shape {shape:?}"
        )));
    }
    let axes: [k::pool::PoolAxis; 3] = windows
        .into_iter()
        .map(|(start, end, count)| k::pool::PoolAxis { start, end, count })
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|v: Vec<_>| {
            value_error(format!(
                "avg_pool_nhwc: windows must give 3 axes (D, H, W), got {}",
                v.len()
            ))
        })?;
    let mut xv = Vec::new();
    let xd = in_place(&xa, "x", &mut xv)?;
    let sp = [shape[1], shape[2], shape[3]];
    let (out, osp) = k::pool::avg_pool_u8(
        engine(),
        xd,
        shape[0],
        sp,
        shape[4],
        &axes,
        divisor_override,
        zp,
        qmin,
        qmax,
    )
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out)
        .reshape(vec![shape[0], osp[0], osp[1], osp[2], shape[4]])?
        .into_any())
}

#[allow(clippy::too_many_arguments)]
fn quantize_pc_into<'py, T: QInt + numpy::Element>(
    py: Python<'py>,
    x: Vec<f32>,
    shape: &[usize],
    layout: ChannelLayout,
    scales: Vec<f32>,
    zps: Vec<i32>,
    qmin: i32,
    qmax: i32,
) -> PyResult<Bound<'py, PyAny>> {
    let mut out = output::<T>(shape, "the quantized output")?;
    py.detach(|| {
        k::quantize::quantize_per_channel(&x, layout, &scales, &zps, qmin, qmax, &mut out)
    })
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any())
}

/// Quantizes a contiguous float32 array with one scale/zero point per slice along `axis`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_per_channel<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    zero_points: &Bound<'py, PyAny>,
    axis: i64,
    qmin: i32,
    qmax: i32,
    dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let (xs, shape) = take::<f32>(x, "input")?;
    let s = take1::<f32>(scales, "scales")?;
    let z = take1::<i32>(zero_points, "zero_points")?;
    let layout = ChannelLayout::from_shape(&shape, axis_of(axis, shape.len())?).map_err(to_py)?;
    match dtype {
        "quint8" => quantize_pc_into::<u8>(py, xs, &shape, layout, s, z, qmin, qmax),
        "qint8" => quantize_pc_into::<i8>(py, xs, &shape, layout, s, z, qmin, qmax),
        "qint32" => quantize_pc_into::<i32>(py, xs, &shape, layout, s, z, qmin, qmax),
        other => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "unsupported quantized dtype {other:?}; use quint8, qint8 or qint32"
        ))),
    }
}

/// The integer arrays `dequantize_*` accept, copied out of Python's memory (see [`take`]).
enum IntData {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
}

fn take_int(o: &Bound<'_, PyAny>, what: &str) -> PyResult<(IntData, Vec<usize>)> {
    if let Ok((v, shape)) = take::<u8>(o, what) {
        return Ok((IntData::U8(v), shape));
    }
    if let Ok((v, shape)) = take::<i8>(o, what) {
        return Ok((IntData::I8(v), shape));
    }
    if let Ok((v, shape)) = take::<i32>(o, what) {
        return Ok((IntData::I32(v), shape));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "{what} must be a numpy array of dtype uint8, int8 or int32, got {}",
        describe(o)
    )))
}

fn dequant_pt<T: QInt>(
    py: Python<'_>,
    qs: &[T],
    shape: &[usize],
    scale: f32,
    zp: i32,
) -> PyResult<Vec<f32>> {
    let mut out = output::<f32>(shape, "the dequantized output")?;
    py.detach(|| k::quantize::dequantize_per_tensor(qs, scale, zp, &mut out))
        .map_err(to_py)?;
    Ok(out)
}

/// Dequantizes an integer array (uint8 / int8 / int32) per tensor: fl(scale * fl(q - zp)).
#[pyfunction]
fn dequantize_per_tensor<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scale: f32,
    zero_point: i64,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (q, shape) = take_int(q, "quantized data")?;
    let zero_point = zp_i32(zero_point)?;
    let out = match &q {
        IntData::U8(a) => dequant_pt(py, a, &shape, scale, zero_point)?,
        IntData::I8(a) => dequant_pt(py, a, &shape, scale, zero_point)?,
        IntData::I32(a) => dequant_pt(py, a, &shape, scale, zero_point)?,
    };
    PyArray1::from_vec(py, out).reshape(shape)
}

fn dequant_pc<T: QInt>(
    py: Python<'_>,
    qs: &[T],
    shape: &[usize],
    scales: &[f32],
    zps: &[i32],
    axis: usize,
) -> PyResult<Vec<f32>> {
    let layout = ChannelLayout::from_shape(shape, axis).map_err(to_py)?;
    let mut out = output::<f32>(shape, "the dequantized output")?;
    py.detach(|| k::quantize::dequantize_per_channel(qs, layout, scales, zps, &mut out))
        .map_err(to_py)?;
    Ok(out)
}

/// Dequantizes per channel along `axis`.
#[pyfunction]
fn dequantize_per_channel<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    zero_points: &Bound<'py, PyAny>,
    axis: i64,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (q, shape) = take_int(q, "quantized data")?;
    let s = take1::<f32>(scales, "scales")?;
    let z = take1::<i32>(zero_points, "zero_points")?;
    let axis = axis_of(axis, shape.len())?;
    let out = match &q {
        IntData::U8(a) => dequant_pc(py, a, &shape, &s, &z, axis)?,
        IntData::I8(a) => dequant_pc(py, a, &shape, &s, &z, axis)?,
        IntData::I32(a) => dequant_pc(py, a, &shape, &s, &z, axis)?,
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

fn owned_bias(b: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<f32>>> {
    b.map(|b| take1::<f32>(b, "bias")).transpose()
}

/// Calls `f` with the bias values (or None), read with the GIL held: straight from Python's
/// buffer when contiguous. For output stages, which copy what they keep.
fn with_bias<R>(
    b: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce(Option<&[f32]>) -> PyResult<R>,
) -> PyResult<R> {
    match b {
        None => f(None),
        Some(b) => {
            let a = arr1::<f32>(b, "bias")?;
            match a.as_slice() {
                Ok(s) => f(Some(s)),
                Err(_) => f(Some(&owned1(&a, "bias")?)),
            }
        }
    }
}

#[pymethods]
impl PackedLinear {
    /// weight: int8 [out_features, in_features]; scales (float32) and zero_points (int32)
    /// of length 1 (per tensor) or out_features (per channel).
    #[new]
    fn new(
        py: Python<'_>,
        weight: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
        zero_points: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (w, shape) = take::<i8>(weight, "weight")?;
        let s = take1::<f32>(scales, "scales")?;
        let z = take1::<i32>(zero_points, "zero_points")?;
        if shape.len() != 2 {
            return Err(value_error(format!(
                "weight must be 2-D [out_features, in_features], got shape {shape:?}"
            )));
        }
        let inner = py
            .detach(|| k::PackedWeights::new(&w, shape[0], shape[1], &s, &z))
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

    /// Bytes held by the packed weights (panels, column sums, zero points, scales).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
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
        x: &Bound<'py, PyAny>,
        bias: Option<&Bound<'py, PyAny>>,
        reduce_range: bool,
        relu: bool,
        threads: usize,
        per_row: bool,
    ) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Vec<f64>, Vec<i32>)> {
        let e = engine();
        let w = &self.inner;
        let opts = k::DynamicOptions {
            reduce_range,
            per_row,
            relu,
        };
        // quantize + pack with the GIL held (the one pass over Python's memory), GEMM without
        let input = with_values::<f32, _>(x, "input", |xs, shape| {
            let m = check_2d(shape, w.k(), "input")?;
            k::DynamicInput::quantize(e, xs, m, w.k(), opts).map_err(to_py)
        })?;
        let stage = with_bias(bias, |b| input.output_stage(w, b).map_err(to_py))?;
        let (m, n) = (input.m(), w.n());
        let mut out = output::<f32>(&[m, n], "the linear output")?;
        py.detach(|| input.linear_with(e, w, &stage, &mut out, threads))
            .map_err(to_py)?;
        let qps = &input.qparams;
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
        a: &Bound<'py, PyAny>,
        a_scale: f32,
        a_zp: i32,
        bias: Option<&Bound<'py, PyAny>>,
        out_scale: f32,
        out_zp: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
        out_dtype: &str,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let w = &self.inner;
        // pack with the GIL held (the one pass over Python's memory), GEMM without
        let pa = with_values::<u8, _>(a, "input", |av, shape| {
            let m = check_2d(shape, w.k(), "input")?;
            k::PackedA::from_u8(av, m, w.k(), a_zp).map_err(to_py)
        })?;
        let (m, n) = (pa.m(), w.n());
        let b = owned_bias(bias)?;
        let e = engine();
        macro_rules! run {
            ($t:ty) => {{
                let mut out = output::<$t>(&[m, n], "the linear output")?;
                py.detach(|| {
                    k::linear_static_packed(
                        e,
                        &pa,
                        a_scale,
                        w,
                        b.as_deref(),
                        out_scale,
                        out_zp,
                        qmin,
                        qmax,
                        relu,
                        &mut out,
                        threads,
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
        weight: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
        zero_points: &Bound<'_, PyAny>,
        stride: Vec<usize>,
        padding: Vec<usize>,
        dilation: Vec<usize>,
        groups: usize,
    ) -> PyResult<Self> {
        let (w, shape) = take::<i8>(weight, "weight")?;
        let s = take1::<f32>(scales, "scales")?;
        let z = take1::<i32>(zero_points, "zero_points")?;
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
        let cin = shape[1].checked_mul(groups).ok_or_else(|| {
            value_error(format!(
                "groups = {groups} is too large for a weight of shape {shape:?}"
            ))
        })?;
        let inner = py
            .detach(|| k::conv::PackedConv::new(&w, shape[0], cin, geom, &s, &z))
            .map_err(to_py)?;
        Ok(PackedConv { inner })
    }

    /// Bytes held by the packed weights and their per-channel data.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    /// The int8 weights back in torch's layout, flattened `[out * in/groups * kd * kh * kw]`.
    fn unpack<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i8>> {
        PyArray1::from_vec(py, self.inner.unpack())
    }

    /// Whether the direct depthwise kernel runs this conv (groups = in = out channels).
    #[getter]
    fn depthwise(&self) -> bool {
        self.inner.is_depthwise()
    }

    /// Static quantized conv on a channels-last quint8 input [N, *spatial, C] (1 to 3 spatial dims:
    /// conv1d [N, W, C], conv2d [N, H, W, C], conv3d [N, D, H, W, C]) → [N, *out_spatial, Cout].
    #[pyo3(signature = (x, x_scale, x_zp, bias, out_scale, out_zp, qmin, qmax, relu=false, out_dtype="quint8", threads=1))]
    #[allow(clippy::too_many_arguments)]
    fn conv_static<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        x_scale: f32,
        x_zp: i32,
        bias: Option<&Bound<'py, PyAny>>,
        out_scale: f32,
        out_zp: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
        out_dtype: &str,
        threads: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let xa = arr::<u8>(x, "input")?;
        let shape = xa.shape().to_vec();
        let nd = shape.len().wrapping_sub(2);
        if !(1..=3).contains(&nd) || shape[nd + 1] != self.inner.in_channels() {
            return Err(value_error(format!(
                "conv input must be channels-last [N, *spatial (1 to 3 dims), {}], got {shape:?}",
                self.inner.in_channels()
            )));
        }
        let b = owned_bias(bias)?;
        // spatial dims lifted to (d, h, w) with leading 1s
        let mut sp = [1usize; 3];
        sp[3 - nd..].copy_from_slice(&shape[1..=nd]);
        let n = shape[0];
        let e = engine();
        let pc = &self.inner;
        let cout = pc.out_channels();
        // a short conv reads its input in place with the GIL held; a long one copies it and
        // releases the GIL (the copy is then a small part of the call)
        let held = conv_macs(pc, n, sp) <= GIL_HELD_MAX_MACS;
        macro_rules! run {
            ($t:ty) => {{
                let call = |xs: &[u8]| {
                    k::conv::conv_static::<$t>(
                        e,
                        xs,
                        n,
                        sp,
                        x_scale,
                        x_zp,
                        pc,
                        b.as_deref(),
                        out_scale,
                        out_zp,
                        qmin,
                        qmax,
                        relu,
                        threads,
                    )
                };
                let (out, osp) = if held {
                    let mut strided = Vec::new();
                    call(in_place(&xa, "input", &mut strided)?)
                } else {
                    // the numpy borrow ends before the GIL is released (see `take`)
                    let copy = owned(&xa, "input")?;
                    drop(xa);
                    py.detach(|| call(&copy))
                }
                .map_err(to_py)?;
                let mut oshape = vec![n];
                oshape.extend_from_slice(&osp[3 - nd..]);
                oshape.push(cout);
                Ok(PyArray1::from_vec(py, out).reshape(oshape)?.into_any())
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

/// The weights of a recurrent projection: a PackedLinear (int8, dynamic int8 activations) or a
/// PackedLowLinear (fp16 / int8 weight-only, float activations). The pyclass refs are held for
/// the call (frozen classes: shared borrows).
type ProjectionRefs<'py> = (
    Option<PyRef<'py, PackedLinear>>,
    Option<PyRef<'py, PackedLowLinear>>,
);

fn projection_of<'py>(o: &Bound<'py, PyAny>, what: &str) -> PyResult<ProjectionRefs<'py>> {
    if let Ok(p) = o.extract::<PyRef<'py, PackedLinear>>() {
        return Ok((Some(p), None));
    }
    if let Ok(p) = o.extract::<PyRef<'py, PackedLowLinear>>() {
        return Ok((None, Some(p)));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "{what} must be a ferroquant._core.PackedLinear or PackedLowLinear, got {}",
        describe(o)
    )))
}

fn projection<'a>(
    int8: &'a Option<PyRef<'_, PackedLinear>>,
    low: &'a Option<PyRef<'_, PackedLowLinear>>,
) -> k::rnn::Projection<'a> {
    match (int8, low) {
        (Some(p), _) => k::rnn::Projection::Int8(&p.inner),
        (None, Some(p)) => k::rnn::Projection::Low(&p.inner),
        (None, None) => unreachable!("projection_of returns one of the two"),
    }
}

/// fp16 or int8 weight-only Linear weights packed for float activations (never serialized).
#[pyclass(module = "ferroquant._core", frozen)]
struct PackedLowLinear {
    inner: k::wgemm::PackedLowWeights,
}

#[pymethods]
impl PackedLowLinear {
    /// fp16 weights given as their bits: uint16 [out_features, in_features] (``w.view(np.uint16)``).
    #[staticmethod]
    fn from_f16_bits(py: Python<'_>, bits: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (b, shape) = take::<u16>(bits, "weight bits")?;
        if shape.len() != 2 {
            return Err(value_error(format!(
                "fp16 weight bits must be 2-D [out_features, in_features], got shape {shape:?}"
            )));
        }
        let inner = py
            .detach(|| k::wgemm::PackedLowWeights::from_f16_bits(&b, shape[0], shape[1]))
            .map_err(to_py)?;
        Ok(PackedLowLinear { inner })
    }

    /// int8 weights [out_features, in_features] with float32 scales and int32 zero points of
    /// length 1 (per tensor) or out_features (per channel).
    #[staticmethod]
    fn from_i8(
        py: Python<'_>,
        weight: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
        zero_points: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (w, shape) = take::<i8>(weight, "weight")?;
        let s = take1::<f32>(scales, "scales")?;
        let z = take1::<i32>(zero_points, "zero_points")?;
        if shape.len() != 2 {
            return Err(value_error(format!(
                "weight must be 2-D [out_features, in_features], got shape {shape:?}"
            )));
        }
        let inner = py
            .detach(|| k::wgemm::PackedLowWeights::from_i8(&w, shape[0], shape[1], &s, &z))
            .map_err(to_py)?;
        Ok(PackedLowLinear { inner })
    }

    #[getter]
    fn out_features(&self) -> usize {
        self.inner.n()
    }

    #[getter]
    fn in_features(&self) -> usize {
        self.inner.k()
    }

    /// "float16" or "int8".
    #[getter]
    fn format(&self) -> &'static str {
        match self.inner.format() {
            k::wgemm::LowFormat::F16 => "float16",
            k::wgemm::LowFormat::I8 => "int8",
        }
    }

    #[getter]
    fn per_channel(&self) -> bool {
        self.inner.is_per_channel()
    }

    /// Bytes held by the packed weights.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    /// The weights back as [out_features, in_features]: uint16 fp16 bits, or int8.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shape = vec![self.inner.n(), self.inner.k()];
        match (self.inner.unpack_f16(), self.inner.unpack_i8()) {
            (Some(b), _) => Ok(PyArray1::from_vec(py, b).reshape(shape)?.into_any()),
            (None, Some(q)) => Ok(PyArray1::from_vec(py, q).reshape(shape)?.into_any()),
            (None, None) => unreachable!("weights are fp16 or int8"),
        }
    }

    /// float32 x [M, K] → float32 [M, N]: x · Wᵀ + bias, with the weights widened in registers.
    #[pyo3(signature = (x, bias=None, threads=1))]
    fn linear<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        bias: Option<&Bound<'py, PyAny>>,
        threads: usize,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let w = &self.inner;
        let (xs, shape) = take::<f32>(x, "input")?;
        let m = check_2d(&shape, w.k(), "input")?;
        let b = owned_bias(bias)?;
        let n = w.n();
        let mut out = output::<f32>(&[m, n], "the linear output")?;
        let e = engine();
        py.detach(|| k::wgemm::linear_low(e, &xs, m, w, b.as_deref(), &mut out, threads))
            .map_err(to_py)?;
        PyArray1::from_vec(py, out).reshape(vec![m, n])
    }

    fn __repr__(&self) -> String {
        format!(
            "PackedLowLinear(out_features={}, in_features={}, format={})",
            self.inner.n(),
            self.inner.k(),
            self.format()
        )
    }
}

/// Softmax over rows of `len` quint8 values (the last dimension of x), quantized to
/// (out_scale, out_zp).
#[pyfunction]
fn softmax_u8<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    len: usize,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let (xs, shape) = take::<u8>(x, "input")?;
    let mut out = output::<u8>(&shape, "the softmax output")?;
    py.detach(|| k::rowwise::softmax_u8(&xs, len, in_scale, in_zp, out_scale, out_zp, &mut out))
        .map_err(to_py)?;
    PyArray1::from_vec(py, out).reshape(shape)
}

/// Layer norm over rows of `len` quint8 values (the trailing dimensions of x), with optional
/// float32 weight / bias of `len` values, quantized to (out_scale, out_zp).
#[pyfunction]
#[pyo3(signature = (x, len, weight, bias, eps, in_scale, in_zp, out_scale, out_zp))]
#[allow(clippy::too_many_arguments)]
fn layer_norm_u8<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    len: usize,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f32,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let (xs, shape) = take::<u8>(x, "input")?;
    let w = weight.map(|w| take1::<f32>(w, "weight")).transpose()?;
    let b = bias.map(|b| take1::<f32>(b, "bias")).transpose()?;
    let mut out = output::<u8>(&shape, "the layer norm output")?;
    py.detach(|| {
        k::rowwise::layer_norm_u8(
            &xs,
            len,
            w.as_deref(),
            b.as_deref(),
            eps,
            in_scale,
            in_zp,
            out_scale,
            out_zp,
            &mut out,
        )
    })
    .map_err(to_py)?;
    PyArray1::from_vec(py, out).reshape(shape)
}

/// Group (or instance: groups == channels) norm of quint8 values laid out [batch, channels,
/// inner], with optional per-channel float32 weight / bias, quantized to (out_scale, out_zp).
#[pyfunction]
#[pyo3(signature = (x, groups, channels, inner, weight, bias, eps, in_scale, in_zp, out_scale, out_zp))]
#[allow(clippy::too_many_arguments)]
fn group_norm_u8<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    groups: usize,
    channels: usize,
    inner: usize,
    weight: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    eps: f32,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let (xs, shape) = take::<u8>(x, "input")?;
    let w = weight.map(|w| take1::<f32>(w, "weight")).transpose()?;
    let b = bias.map(|b| take1::<f32>(b, "bias")).transpose()?;
    let mut out = output::<u8>(&shape, "the group norm output")?;
    py.detach(|| {
        k::rowwise::group_norm_u8(
            &xs,
            groups,
            channels,
            inner,
            w.as_deref(),
            b.as_deref(),
            eps,
            in_scale,
            in_zp,
            out_scale,
            out_zp,
            &mut out,
        )
    })
    .map_err(to_py)?;
    PyArray1::from_vec(py, out).reshape(shape)
}

/// An 8-bit or 4-bit row-wise quantized embedding table (float scale and zero point per row).
#[pyclass(module = "ferroquant._core", frozen)]
struct EmbeddingTable {
    inner: k::embedding::RowwiseTable,
}

#[pymethods]
impl EmbeddingTable {
    /// data: uint8 [rows, row_bytes] (8 bits: row_bytes = dim; 4 bits: ceil(dim / 2), even
    /// values in the low nibble); scales, zero_points: float32 [rows].
    #[new]
    fn new(
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        dim: usize,
        bits: u32,
        scales: &Bound<'_, PyAny>,
        zero_points: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (d, shape) = take::<u8>(data, "table data")?;
        let s = take1::<f32>(scales, "scales")?;
        let z = take1::<f32>(zero_points, "zero_points")?;
        if shape.len() != 2 {
            return Err(value_error(format!(
                "table data must be 2-D [rows, row_bytes], got shape {shape:?}"
            )));
        }
        let want = k::embedding::RowwiseTable::row_bytes_for(dim, bits);
        if shape[1] != want {
            return Err(value_error(format!(
                "table data rows must hold {want} bytes for embedding_dim {dim} at {bits} bits, got {}",
                shape[1]
            )));
        }
        let inner = py
            .detach(|| k::embedding::RowwiseTable::new(&d, shape[0], dim, bits, &s, &z))
            .map_err(to_py)?;
        Ok(EmbeddingTable { inner })
    }

    #[getter]
    fn rows(&self) -> usize {
        self.inner.rows()
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    #[getter]
    fn bits(&self) -> u32 {
        self.inner.bits()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    /// Rows for int64 indices (any shape, flattened) → float32 [n, dim].
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (idx, _) = take::<i64>(indices, "indices")?;
        let dim = self.inner.dim();
        let mut out = output::<f32>(&[idx.len(), dim], "the embedding output")?;
        let e = engine();
        py.detach(|| k::embedding::embedding_lookup(e, &self.inner, &idx, &mut out))
            .map_err(to_py)?;
        PyArray1::from_vec(py, out).reshape(vec![idx.len(), dim])
    }

    /// Bags: int64 indices [n] and offsets [bags (+1)], mode "sum" / "mean" / "max" → float32
    /// [bags, dim].
    #[pyo3(signature = (indices, offsets, mode, per_sample_weights=None, include_last_offset=false, padding_idx=None))]
    #[allow(clippy::too_many_arguments)]
    fn bag<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        offsets: &Bound<'py, PyAny>,
        mode: &str,
        per_sample_weights: Option<&Bound<'py, PyAny>>,
        include_last_offset: bool,
        padding_idx: Option<i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let mode = k::embedding::BagMode::from_name(mode).map_err(to_py)?;
        let idx = take1::<i64>(indices, "indices")?;
        let off = take1::<i64>(offsets, "offsets")?;
        let w = per_sample_weights
            .map(|w| take1::<f32>(w, "per_sample_weights"))
            .transpose()?;
        let bags = if include_last_offset {
            off.len().saturating_sub(1)
        } else {
            off.len()
        };
        let dim = self.inner.dim();
        let mut out = output::<f32>(&[bags, dim], "the embedding bag output")?;
        let e = engine();
        py.detach(|| {
            k::embedding::embedding_bag(
                e,
                &self.inner,
                &idx,
                &off,
                mode,
                w.as_deref(),
                include_last_offset,
                padding_idx,
                &mut out,
            )
        })
        .map_err(to_py)?;
        PyArray1::from_vec(py, out).reshape(vec![bags, dim])
    }
}

/// One recurrent layer in one direction over a whole sequence (dynamic int8 weights):
/// `mode` is "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"; x float32 [rows, input_size] (every step's
/// rows, step after step); batch_sizes the rows per step (non-increasing); h0 (and c0 for LSTM)
/// float32 [batch, hidden]. Returns (out [rows, hidden], h_n, c_n or None).
#[pyfunction]
#[pyo3(signature = (mode, x, batch_sizes, w_ih, b_ih, w_hh, b_hh, h0, c0=None, reverse=false, reduce_range=false, per_row=false, threads=1))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn rnn_layer<'py>(
    py: Python<'py>,
    mode: &str,
    x: &Bound<'py, PyAny>,
    batch_sizes: Vec<usize>,
    w_ih: &Bound<'py, PyAny>,
    b_ih: Option<&Bound<'py, PyAny>>,
    w_hh: &Bound<'py, PyAny>,
    b_hh: Option<&Bound<'py, PyAny>>,
    h0: &Bound<'py, PyAny>,
    c0: Option<&Bound<'py, PyAny>>,
    reverse: bool,
    reduce_range: bool,
    per_row: bool,
    threads: usize,
) -> PyResult<(
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyArrayDyn<f32>>,
    Option<Bound<'py, PyArrayDyn<f32>>>,
)> {
    let kind = k::rnn::CellKind::from_name(mode).map_err(to_py)?;
    let b_ih = owned_bias(b_ih)?;
    let b_hh = owned_bias(b_hh)?;
    let (ih_int8, ih_low) = projection_of(w_ih, "w_ih")?;
    let (hh_int8, hh_low) = projection_of(w_hh, "w_hh")?;
    let weights = k::rnn::RnnWeights {
        kind,
        w_ih: projection(&ih_int8, &ih_low),
        b_ih: b_ih.as_deref(),
        w_hh: projection(&hh_int8, &hh_low),
        b_hh: b_hh.as_deref(),
    };
    let hidden = weights.hidden_size().map_err(to_py)?;
    let (xs, xshape) = take::<f32>(x, "input")?;
    let rows: usize = batch_sizes.iter().sum();
    let input_size = weights.w_ih.k();
    if xshape.len() != 2 || xshape[0] != rows || xshape[1] != input_size {
        return Err(value_error(format!(
            "input must have shape [{rows}, {input_size}] (the sum of batch_sizes, input_size), got {xshape:?}"
        )));
    }
    let batch = batch_sizes.first().copied().unwrap_or(0);
    let state_of = |o: &Bound<'py, PyAny>, what: &str| -> PyResult<Vec<f32>> {
        let (v, shape) = take::<f32>(o, what)?;
        if shape != [batch, hidden] {
            return Err(value_error(format!(
                "{what} must have shape [{batch}, {hidden}] (batch, hidden_size), got {shape:?}"
            )));
        }
        Ok(v)
    };
    let mut h = state_of(h0, "h0")?;
    let mut c = c0.map(|c| state_of(c, "c0")).transpose()?;
    let mut out = output::<f32>(&[rows, hidden], "the recurrent layer's output")?;
    let opts = k::DynamicOptions {
        reduce_range,
        per_row,
        relu: false,
    };
    let e = engine();
    py.detach(|| {
        let state = k::rnn::RnnState {
            h: &mut h,
            c: c.as_deref_mut(),
        };
        k::rnn::rnn_layer(
            e,
            &weights,
            &xs,
            &batch_sizes,
            reverse,
            opts,
            state,
            &mut out,
            threads,
        )
    })
    .map_err(to_py)?;
    let shape = vec![batch, hidden];
    Ok((
        PyArray1::from_vec(py, out).reshape(vec![rows, hidden])?,
        PyArray1::from_vec(py, h).reshape(shape.clone())?,
        c.map(|c| PyArray1::from_vec(py, c).reshape(shape))
            .transpose()?,
    ))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(available_engines, m)?)?;
    m.add_function(wrap_pyfunction!(best_engine, m)?)?;
    m.add_function(wrap_pyfunction!(set_engine, m)?)?;
    m.add_function(wrap_pyfunction!(engine_setting, m)?)?;
    m.add_function(wrap_pyfunction!(current_engine, m)?)?;
    m.add_function(wrap_pyfunction!(parallel_min_macs, m)?)?;
    m.add_function(wrap_pyfunction!(set_parallel_min_macs, m)?)?;
    m.add_function(wrap_pyfunction!(max_threads, m)?)?;
    m.add_function(wrap_pyfunction!(pool_workers, m)?)?;
    m.add_function(wrap_pyfunction!(parallel_jobs, m)?)?;
    m.add_function(wrap_pyfunction!(use_openmp_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(set_openmp_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(thread_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(choose_qparams_dynamic, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_per_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(fake_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(add_requant, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool_nhwc, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool_nhwc, m)?)?;
    m.add_function(wrap_pyfunction!(lut_u8, m)?)?;
    m.add_function(wrap_pyfunction!(lut_u8_per_channel, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_per_channel, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_per_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_per_channel, m)?)?;
    m.add_function(wrap_pyfunction!(rnn_layer, m)?)?;
    m.add_class::<PackedLinear>()?;
    m.add_class::<plan::Plan>()?;
    m.add_class::<PackedLowLinear>()?;
    m.add_class::<EmbeddingTable>()?;
    m.add_function(wrap_pyfunction!(softmax_u8, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm_u8, m)?)?;
    m.add_function(wrap_pyfunction!(group_norm_u8, m)?)?;
    m.add_class::<PackedConv>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
