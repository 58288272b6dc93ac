//! A converted model's whole forward in one call (`_core.Plan`): the steps of a graph of
//! quantized ops (quantize, conv, linear, add, pooling, relu, dequantize), each the same kernel
//! call the module would make, run back to back on buffers that never leave Rust. Python builds
//! a plan for one input shape from a recorded forward (`ferroquant/_fx/plan.py`) and falls back
//! to the module-by-module forward for anything a plan does not cover.
//!
//! The plan validates its steps when built (slots, shapes, qparams); at run time the kernels
//! check lengths again, so a bad plan gives a Python exception, never a wrong read.

use super::*;
use k::conv::ConvGeometry;
use k::elementwise::{QOperand, QOutput};
use k::pool::PoolAxis;
use pyo3::types::{PyDict, PyString};

/// What a step computes; its input is `Step::src` (and `Add::b`).
enum Op {
    /// float `[N, C, *S]` (the plan's input; `[N, *S, C]` when `channels_last_input`) → quint8
    /// channels-last.
    Quantize {
        channels_last_input: bool,
        scale: f32,
        zp: i32,
        qmin: i32,
        qmax: i32,
    },
    Conv {
        w: Py<PackedConv>,
        /// The module's bias array, read (copied) at every run with the GIL held, as the module
        /// reads it at every call: writes that bypass torch's version counter are seen too.
        bias: Option<Py<PyAny>>,
        x: (f32, i32),
        out: QOutput,
        relu: bool,
    },
    Linear {
        w: Py<PackedLinear>,
        bias: Option<Py<PyAny>>,
        x: (f32, i32),
        out: QOutput,
        relu: bool,
    },
    Add {
        b: usize,
        a_q: (f32, i32),
        b_q: (f32, i32),
        out: QOutput,
        relu: bool,
    },
    MaxPool(ConvGeometry),
    AvgPool {
        axes: [PoolAxis; 3],
        divisor: Option<usize>,
        zp: i32,
        qmin: i32,
        qmax: i32,
    },
    /// `max(q, zp)`.
    Relu(u8),
    /// channels-last `[N, *S, C]` → contiguous `[N, C, *S]` (a flatten of a map wider than 1x1).
    ToContiguous,
    /// quint8 → float32, the plan's float output.
    Dequantize(f32, i32),
}

struct Step {
    op: Op,
    src: usize,
    dst: usize,
    /// The input's logical shape `[N, C, *S]` (`[M, K]`-like for linear / dequantize).
    shape: Vec<usize>,
    /// Elements of the output.
    out_len: usize,
    /// Slots whose last reader this step is: freed after it.
    frees: Vec<usize>,
}

/// A model's forward as kernel steps over numbered buffers; see the module docs.
#[pyclass(module = "ferroquant._core", frozen)]
pub(crate) struct Plan {
    steps: Vec<Step>,
    slots: usize,
    input_shape: Vec<usize>,
    /// The result's shape in memory order (as returned to Python).
    output_shape: Vec<usize>,
    guards: Guards,
}

/// What must still hold for the plan to compute what the modules would (checked before each
/// run, in a few microseconds): the objects it was built from are still in place, plain
/// attributes keep their values, tensors were not changed in place, hook tables are empty.
#[derive(Default)]
struct Guards {
    /// `d[key] is obj` (`obj` None: the key is absent or None).
    same: Vec<(Py<PyDict>, Py<PyString>, Py<PyAny>)>,
    /// `d.get(key) == value`.
    equal: Vec<(Py<PyDict>, Py<PyString>, Py<PyAny>)>,
    /// `tensor._version == version`.
    versions: Vec<(Py<PyAny>, i64)>,
    /// `len(container) == 0`.
    empty: Vec<Py<PyAny>>,
    /// `len(container) == n` (a module's `__dict__`: an attribute added to an instance, such as
    /// a method replaced on it, is a change).
    lengths: Vec<(Py<PyAny>, usize)>,
    /// `type(obj) is t`.
    types: Vec<(Py<PyAny>, Py<PyAny>)>,
}

type Entry = (Py<PyDict>, Py<PyString>, Py<PyAny>);

impl Guards {
    fn hold(&self, py: Python<'_>) -> PyResult<bool> {
        for (d, k, obj) in &self.same {
            let got = d.bind(py).get_item(k.bind(py))?;
            let ok = match got {
                Some(v) => v.is(obj.bind(py)),
                None => obj.is_none(py),
            };
            if !ok {
                return Ok(false);
            }
        }
        for (d, k, value) in &self.equal {
            let got = d.bind(py).get_item(k.bind(py))?;
            let value = value.bind(py);
            // the same type and an equal value (`3.0 == 3` is no match; a comparison that
            // raises, e.g. of tensors, is no match either)
            let ok = match got {
                Some(v) => v.get_type().is(value.get_type()) && v.eq(value).unwrap_or(false),
                None => value.is_none(),
            };
            if !ok {
                return Ok(false);
            }
        }
        let version = pyo3::intern!(py, "_version");
        for (t, v) in &self.versions {
            if t.bind(py).getattr(version)?.extract::<i64>()? != *v {
                return Ok(false);
            }
        }
        for c in &self.empty {
            if c.bind(py).len()? != 0 {
                return Ok(false);
            }
        }
        for (c, n) in &self.lengths {
            if c.bind(py).len()? != *n {
                return Ok(false);
            }
        }
        for (o, t) in &self.types {
            if !o.bind(py).get_type().is(t.bind(py)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

type Geom = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);
type Windows = Vec<(Vec<usize>, Vec<usize>, Vec<usize>)>;

fn qout(scale: f32, zp: i64, qmin: i32, qmax: i32) -> PyResult<QOutput> {
    if !(0..=255).contains(&qmin) || !(qmin..=255).contains(&qmax) {
        return Err(value_error(format!(
            "plan: output range [{qmin}, {qmax}] must lie in quint8's [0, 255]"
        )));
    }
    Ok(QOutput {
        scale,
        zero_point: zp_i32(zp)?,
        qmin,
        qmax,
    })
}

fn qin(scale: f32, zp: i64) -> PyResult<(f32, i32)> {
    Ok((scale, zp_i32(zp)?))
}

/// `[N, C, *S]` (1 to 3 spatial dims) → (N, (D, H, W), C).
fn nsc(shape: &[usize], what: &str) -> PyResult<(usize, [usize; 3], usize)> {
    let nd = shape.len().wrapping_sub(2);
    if !(1..=3).contains(&nd) {
        return Err(value_error(format!(
            "plan: {what} input must be [N, C, *spatial] with 1 to 3 spatial dims, got {shape:?}"
        )));
    }
    let mut sp = [1usize; 3];
    sp[3 - nd..].copy_from_slice(&shape[2..]);
    Ok((shape[0], sp, shape[1]))
}

fn numel(shape: &[usize]) -> PyResult<usize> {
    k::error::checked_numel(shape, "plan value").map_err(to_py)
}

impl Plan {
    /// Parses one step description `(kind, src, dst, in_shape, out_shape, *args)`.
    fn step(d: &Bound<'_, PyAny>) -> PyResult<Step> {
        let kind: String = d.get_item(0)?.extract()?;
        let src: usize = d.get_item(1)?.extract()?;
        let dst: usize = d.get_item(2)?.extract()?;
        let shape: Vec<usize> = d.get_item(3)?.extract()?;
        let out_shape: Vec<usize> = d.get_item(4)?.extract()?;
        let arg = |i: usize| d.get_item(5 + i);
        let op = match kind.as_str() {
            "quantize" => {
                if shape.len() != 2 {
                    nsc(&shape, "quantize")?;
                }
                Op::Quantize {
                    channels_last_input: arg(0)?.extract()?,
                    scale: arg(1)?.extract()?,
                    zp: zp_i32(arg(2)?.extract()?)?,
                    qmin: arg(3)?.extract()?,
                    qmax: arg(4)?.extract()?,
                }
            }
            "conv" | "linear" => {
                let bias_arg = arg(1)?;
                let bias_len =
                    owned_bias(Some(&bias_arg).filter(|b| !b.is_none()))?.map(|b| b.len());
                let bias = (!bias_arg.is_none()).then(|| bias_arg.unbind());
                let x = qin(arg(2)?.extract()?, arg(3)?.extract()?)?;
                let out = qout(
                    arg(4)?.extract()?,
                    arg(5)?.extract()?,
                    arg(6)?.extract()?,
                    arg(7)?.extract()?,
                )?;
                let relu: bool = arg(8)?.extract()?;
                if kind == "conv" {
                    let w: Py<PackedConv> = arg(0)?.extract()?;
                    let (_, _, c) = nsc(&shape, "conv")?;
                    if bias_len.is_some_and(|n| n != w.get().inner.out_channels()) {
                        return Err(value_error("plan: conv bias length is not out_channels"));
                    }
                    if c != w.get().inner.in_channels() {
                        return Err(value_error(format!(
                            "plan: conv input {shape:?} does not have the weights' {} channels",
                            w.get().inner.in_channels()
                        )));
                    }
                    Op::Conv {
                        w,
                        bias,
                        x,
                        out,
                        relu,
                    }
                } else {
                    let w: Py<PackedLinear> = arg(0)?.extract()?;
                    if bias_len.is_some_and(|n| n != w.get().inner.n()) {
                        return Err(value_error("plan: linear bias length is not out_features"));
                    }
                    if shape.last() != Some(&w.get().inner.k()) {
                        return Err(value_error(format!(
                            "plan: linear input {shape:?} does not end in in_features = {}",
                            w.get().inner.k()
                        )));
                    }
                    Op::Linear {
                        w,
                        bias,
                        x,
                        out,
                        relu,
                    }
                }
            }
            "add" => Op::Add {
                b: arg(0)?.extract()?,
                a_q: qin(arg(1)?.extract()?, arg(2)?.extract()?)?,
                b_q: qin(arg(3)?.extract()?, arg(4)?.extract()?)?,
                out: qout(
                    arg(5)?.extract()?,
                    arg(6)?.extract()?,
                    arg(7)?.extract()?,
                    arg(8)?.extract()?,
                )?,
                relu: arg(9)?.extract()?,
            },
            "max_pool" => {
                nsc(&shape, "max_pool")?;
                let (kernel, stride, padding, dilation): Geom = arg(0)?.extract()?;
                Op::MaxPool(ConvGeometry {
                    kernel: triple(kernel, "kernel")?,
                    stride: triple(stride, "stride")?,
                    padding: triple(padding, "padding")?,
                    dilation: triple(dilation, "dilation")?,
                    groups: 1,
                })
            }
            "avg_pool" => {
                nsc(&shape, "avg_pool")?;
                let windows: Windows = arg(0)?.extract()?;
                let axes: [PoolAxis; 3] = windows
                    .into_iter()
                    .map(|(start, end, count)| PoolAxis { start, end, count })
                    .collect::<Vec<_>>()
                    .try_into()
                    .map_err(|_| value_error("plan: avg_pool windows must give 3 axes"))?;
                Op::AvgPool {
                    axes,
                    divisor: arg(1)?.extract()?,
                    zp: zp_i32(arg(2)?.extract()?)?,
                    qmin: arg(3)?.extract()?,
                    qmax: arg(4)?.extract()?,
                }
            }
            "relu" => {
                let zp: i64 = arg(0)?.extract()?;
                Op::Relu(u8::try_from(zp).map_err(|_| value_error("plan: relu zero point"))?)
            }
            "to_contiguous" => {
                nsc(&shape, "to_contiguous")?;
                Op::ToContiguous
            }
            "dequantize" => Op::Dequantize(arg(0)?.extract()?, zp_i32(arg(1)?.extract()?)?),
            other => return Err(value_error(format!("plan: unknown step kind {other:?}"))),
        };
        Ok(Step {
            op,
            src,
            dst,
            out_len: numel(&out_shape)?,
            shape,
            frees: Vec::new(),
        })
    }

    /// Runs the steps after the quantize step (no Python memory: the GIL may be released).
    fn run_steps(
        &self,
        mut slots: Vec<Option<Vec<u8>>>,
        biases: &[Option<Vec<f32>>],
        threads: usize,
        mut times: Option<&mut Vec<f64>>,
    ) -> Result<RunOut, k::KernelError> {
        let e = engine();
        let mut float_out = None;
        // outputs freed by later steps, recycled for the next ones (no fill, no page faults)
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let missing = || k::KernelError::InvalidQParams("plan: a step reads an empty slot".into());
        for (si, st) in self.steps.iter().enumerate().skip(1) {
            let t0 = times.is_some().then(std::time::Instant::now);
            let x = slots[st.src].as_deref().ok_or_else(missing)?;
            let bias = biases.get(si).and_then(|b| b.as_deref());
            let y: Vec<u8> = match &st.op {
                Op::Quantize { .. } => return Err(missing()),
                Op::Conv {
                    w,
                    x: (xs, xz),
                    out,
                    relu,
                    ..
                } => {
                    let (n, sp, _) = nsc_k(&st.shape)?;
                    let buf = take_buf(&mut pool, st.out_len);
                    let (y, _) = k::conv::conv_static_reusing::<u8>(
                        e,
                        x,
                        n,
                        sp,
                        *xs,
                        *xz,
                        &w.get().inner,
                        bias,
                        out.scale,
                        out.zero_point,
                        out.qmin,
                        out.qmax,
                        *relu,
                        threads,
                        buf,
                    )?;
                    y
                }
                Op::Linear {
                    w,
                    x: (xs, xz),
                    out,
                    relu,
                    ..
                } => {
                    let w = &w.get().inner;
                    let m = x.len() / w.k().max(1);
                    let pa = k::PackedA::from_u8(x, m, w.k(), *xz)?;
                    let buf = take_buf(&mut pool, m * w.n());
                    let mut y = k::error::reuse_vec(buf, m * w.n(), 0u8, "the linear output")?;
                    k::linear_static_packed(
                        e,
                        &pa,
                        *xs,
                        w,
                        bias,
                        out.scale,
                        out.zero_point,
                        out.qmin,
                        out.qmax,
                        *relu,
                        &mut y,
                        threads,
                    )?;
                    y
                }
                Op::Add {
                    b,
                    a_q,
                    b_q,
                    out,
                    relu,
                } => {
                    let bd = slots[*b].as_deref().ok_or_else(missing)?;
                    let buf = take_buf(&mut pool, x.len());
                    let mut y = k::error::reuse_vec(buf, x.len(), 0u8, "the add output")?;
                    k::elementwise::add_requant_threads(
                        e,
                        QOperand {
                            data: x,
                            scale: a_q.0,
                            zero_point: a_q.1,
                        },
                        QOperand {
                            data: bd,
                            scale: b_q.0,
                            zero_point: b_q.1,
                        },
                        *out,
                        *relu,
                        &mut y,
                        threads,
                    )?;
                    y
                }
                Op::MaxPool(geom) => {
                    let (n, sp, c) = nsc_k(&st.shape)?;
                    k::pool::max_pool_u8_threads(e, x, n, sp, c, geom, threads)?.0
                }
                Op::AvgPool {
                    axes,
                    divisor,
                    zp,
                    qmin,
                    qmax,
                } => {
                    let (n, sp, c) = nsc_k(&st.shape)?;
                    k::pool::avg_pool_u8(e, x, n, sp, c, axes, *divisor, *zp, *qmin, *qmax)?.0
                }
                Op::Relu(zp) => x.iter().map(|&v| v.max(*zp)).collect(),
                Op::ToContiguous => {
                    let (n, sp, c) = nsc_k(&st.shape)?;
                    let inner = sp[0] * sp[1] * sp[2];
                    same_len("plan transpose input", n * inner * c, x.len())?;
                    let mut y = k::error::try_vec(x.len(), 0u8, "the flattened output")?;
                    for b in 0..n {
                        let (xi, yo) = (&x[b * inner * c..], &mut y[b * inner * c..]);
                        for p in 0..inner {
                            for ch in 0..c {
                                yo[ch * inner + p] = xi[p * c + ch];
                            }
                        }
                    }
                    y
                }
                Op::Dequantize(scale, zp) => {
                    let mut y = k::error::try_vec(x.len(), 0f32, "the dequantized output")?;
                    k::quantize::dequantize_per_tensor(x, *scale, *zp, &mut y)?;
                    float_out = Some(y);
                    Vec::new()
                }
            };
            if !matches!(st.op, Op::Dequantize(..)) {
                same_len("plan step output", st.out_len, y.len())?;
                slots[st.dst] = Some(y);
            }
            for &f in &st.frees {
                if let Some(b) = slots[f].take() {
                    pool.push(b);
                }
            }
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(match float_out {
            Some(f) => RunOut::Float(f),
            None => {
                let last = self.steps.last().map_or(0, |s| s.dst);
                RunOut::Quant(slots[last].take().ok_or_else(missing)?)
            }
        })
    }
}

type Prepared = (Vec<Option<Vec<u8>>>, Vec<Option<Vec<f32>>>);

impl Plan {
    /// With the GIL held: the guards, the quantized input in its slot and the biases as they
    /// are now; None when a guard no longer holds.
    fn prepare(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Option<Prepared>> {
        if !self.guards.hold(py)? {
            return Ok(None);
        }
        let q = &self.steps[0];
        let Op::Quantize {
            channels_last_input,
            scale,
            zp,
            qmin,
            qmax,
        } = q.op
        else {
            return Err(value_error("plan: the first step must quantize the input"));
        };
        let first = with_values::<f32, _>(x, "input", |xs, shape| {
            if self.input_shape.len() == 2 {
                // [N, features]: nothing to transpose
                if shape != self.input_shape.as_slice() || channels_last_input {
                    return Err(value_error(format!(
                        "plan: input must have shape {:?}, got {shape:?}",
                        self.input_shape
                    )));
                }
                let mut out = output::<u8>(shape, "the quantized input")?;
                k::quantize::quantize_per_tensor(xs, scale, zp, qmin, qmax, &mut out)
                    .map_err(to_py)?;
                return Ok(out);
            }
            let (n, sp, c) = nsc(&self.input_shape, "quantize")?;
            let expect: Vec<usize> = if channels_last_input {
                let mut s = vec![n];
                s.extend_from_slice(&self.input_shape[2..]);
                s.push(c);
                s
            } else {
                self.input_shape.clone()
            };
            if shape != expect.as_slice() {
                return Err(value_error(format!(
                    "plan: input must have shape {expect:?}, got {shape:?}"
                )));
            }
            let mut out = output::<u8>(shape, "the quantized input")?;
            if channels_last_input {
                k::quantize::quantize_per_tensor(xs, scale, zp, qmin, qmax, &mut out)
            } else {
                let inner = sp[0] * sp[1] * sp[2];
                k::quantize::quantize_per_tensor_channels_last(
                    xs, n, c, inner, scale, zp, qmin, qmax, &mut out,
                )
            }
            .map_err(to_py)?;
            Ok(out)
        })?;
        let mut slots: Vec<Option<Vec<u8>>> = (0..self.slots).map(|_| None).collect();
        slots[q.dst] = Some(first);
        // the biases as they are now (the build checked their lengths; a bias resized since
        // then fails the step's length check)
        let biases = self
            .steps
            .iter()
            .map(|st| match &st.op {
                Op::Conv { bias: Some(b), .. } | Op::Linear { bias: Some(b), .. } => {
                    // a plain copy under the GIL (no borrow bookkeeping: ~0.1 µs a bias)
                    let b = b.bind(py);
                    match b
                        .cast::<numpy::PyArray1<f32>>()
                        .ok()
                        .and_then(|a| a.to_vec().ok())
                    {
                        Some(v) => Ok(Some(v)),
                        None => take1::<f32>(b, "bias").map(Some),
                    }
                }
                _ => Ok(None),
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Some((slots, biases)))
    }
}

enum RunOut {
    Float(Vec<f32>),
    Quant(Vec<u8>),
}

/// The pooled buffer that fits `len` best (the shortest at least that long, else the longest),
/// or a new empty one.
fn take_buf(pool: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    let fit = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.len() >= len)
        .min_by_key(|(_, b)| b.len())
        .or_else(|| pool.iter().enumerate().max_by_key(|(_, b)| b.len()))
        .map(|(i, _)| i);
    fit.map_or_else(Vec::new, |i| pool.swap_remove(i))
}

fn same_len(what: &str, expected: usize, got: usize) -> Result<(), k::KernelError> {
    if expected == got {
        return Ok(());
    }
    Err(k::KernelError::ShapeMismatch {
        what: what.to_string(),
        expected: format!("length {expected}"),
        got: format!("length {got}"),
    })
}

fn nsc_k(shape: &[usize]) -> Result<(usize, [usize; 3], usize), k::KernelError> {
    nsc(shape, "step").map_err(|_| k::KernelError::InvalidQParams(format!("plan shape {shape:?}")))
}

#[pymethods]
impl Plan {
    /// `steps`: tuples `(kind, src, dst, in_shape, out_shape, *args)` in execution order; the
    /// first is the `quantize` of the input (slot `src` unused), the last writes the output.
    /// `output_shape`: the result's shape in memory order.
    ///
    /// `same`, `equal`, `versions`, `empty`: the guards (see `Guards`), checked before each run.
    #[new]
    #[pyo3(signature = (steps, input_shape, output_shape, same=vec![], equal=vec![], versions=vec![], empty=vec![], lengths=vec![], types=vec![]))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        steps: Vec<Bound<'_, PyAny>>,
        input_shape: Vec<usize>,
        output_shape: Vec<usize>,
        same: Vec<Entry>,
        equal: Vec<Entry>,
        versions: Vec<(Py<PyAny>, i64)>,
        empty: Vec<Py<PyAny>>,
        lengths: Vec<(Py<PyAny>, usize)>,
        types: Vec<(Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<Self> {
        let mut parsed = steps.iter().map(Plan::step).collect::<PyResult<Vec<_>>>()?;
        if !matches!(parsed.first().map(|s| &s.op), Some(Op::Quantize { .. })) {
            return Err(value_error("plan: the first step must quantize the input"));
        }
        if parsed.first().map(|s| &s.shape) != Some(&input_shape) {
            return Err(value_error(
                "plan: the quantize step's shape must be the input's",
            ));
        }
        if parsed[1..]
            .iter()
            .any(|s| matches!(s.op, Op::Quantize { .. }))
        {
            return Err(value_error("plan: only the first step may quantize"));
        }
        if let Some(i) = parsed
            .iter()
            .position(|s| matches!(s.op, Op::Dequantize(..)))
        {
            if i + 1 != parsed.len() {
                return Err(value_error("plan: dequantize must be the last step"));
            }
        }
        let slots = parsed.iter().map(|s| s.dst + 1).max().unwrap_or(0);
        // the quantize step reads the input, not a slot
        parsed[0].src = 0;
        for s in &parsed {
            let b = if let Op::Add { b, .. } = s.op { b } else { 0 };
            if s.src >= slots || b >= slots {
                return Err(value_error("plan: a step reads a slot no step writes"));
            }
        }
        // every read slot is written by an earlier step, with the element count it expects
        let mut len: Vec<Option<usize>> = vec![None; slots];
        for s in parsed.iter() {
            let reads: Vec<usize> = match &s.op {
                Op::Quantize { .. } => vec![],
                Op::Add { b, .. } => vec![s.src, *b],
                _ => vec![s.src],
            };
            for r in reads {
                let have = len.get(r).copied().flatten();
                if have != Some(numel(&s.shape)?) {
                    return Err(value_error(format!(
                        "plan: a step reads slot {r} as {:?} ({} values), which holds {have:?}",
                        s.shape,
                        numel(&s.shape)?
                    )));
                }
            }
            len[s.dst] = Some(s.out_len);
        }
        if numel(&output_shape)? != parsed.last().map_or(0, |s| s.out_len) {
            return Err(value_error(
                "plan: output_shape does not match the last step",
            ));
        }
        // free each slot after its last reader (never the output's)
        let out_slot = parsed.last().map_or(0, |s| s.dst);
        let mut last_read = vec![None; slots];
        for (i, s) in parsed.iter().enumerate() {
            last_read[s.src] = Some(i);
            if let Op::Add { b, .. } = s.op {
                last_read[b] = Some(i);
            }
        }
        for (slot, r) in last_read.into_iter().enumerate() {
            if let Some(i) = r {
                if slot != out_slot && i > 0 {
                    parsed[i].frees.push(slot);
                }
            }
        }
        Ok(Plan {
            steps: parsed,
            slots,
            input_shape,
            output_shape,
            guards: Guards {
                same,
                equal,
                versions,
                empty,
                lengths,
                types,
            },
        })
    }

    /// The Python objects the plan holds, for the cycle collector.
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let g = &self.guards;
        for (d, k, o) in g.same.iter().chain(&g.equal) {
            visit.call(d)?;
            visit.call(k)?;
            visit.call(o)?;
        }
        for (t, _) in &g.versions {
            visit.call(t)?;
        }
        for c in &g.empty {
            visit.call(c)?;
        }
        for (c, _) in &g.lengths {
            visit.call(c)?;
        }
        for (o, t) in &g.types {
            visit.call(o)?;
            visit.call(t)?;
        }
        for st in &self.steps {
            match &st.op {
                Op::Conv { w, bias, .. } => {
                    visit.call(w)?;
                    if let Some(b) = bias {
                        visit.call(b)?;
                    }
                }
                Op::Linear { w, bias, .. } => {
                    visit.call(w)?;
                    if let Some(b) = bias {
                        visit.call(b)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the guards still hold.
    fn holds(&self, py: Python<'_>) -> PyResult<bool> {
        self.guards.hold(py)
    }

    /// Runs the plan on a float32 input of the plan's shape (C-contiguous, in the layout the
    /// quantize step was built for); returns float32 (a plan ending in dequantize) or uint8
    /// data shaped `output_shape`, or None when a guard no longer holds (nothing ran). The
    /// input is quantized with the GIL held, the rest runs without it.
    #[pyo3(signature = (x, threads=1))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        threads: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some((slots, biases)) = self.prepare(py, x)? else {
            return Ok(None);
        };
        let out = py
            .detach(|| self.run_steps(slots, &biases, threads, None))
            .map_err(to_py)?;
        let shape = self.output_shape.clone();
        Ok(Some(match out {
            RunOut::Float(f) => PyArray1::from_vec(py, f).reshape(shape)?.into_any(),
            RunOut::Quant(mut u) => {
                // a recycled buffer may be far longer than the result it now holds
                u.shrink_to_fit();
                PyArray1::from_vec(py, u).reshape(shape)?.into_any()
            }
        }))
    }

    /// Number of steps.
    fn __len__(&self) -> usize {
        self.steps.len()
    }

    /// Seconds each step took in one run on `x` (the quantize step first), for profiling a
    /// model layer by layer; None when a guard no longer holds.
    #[pyo3(signature = (x, threads=1))]
    fn step_seconds(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        threads: usize,
    ) -> PyResult<Option<Vec<f64>>> {
        let mut times = Vec::with_capacity(self.steps.len());
        let t0 = std::time::Instant::now();
        let Some((slots, biases)) = self.prepare(py, x)? else {
            return Ok(None);
        };
        times.push(t0.elapsed().as_secs_f64());
        py.detach(|| self.run_steps(slots, &biases, threads, Some(&mut times)))
            .map_err(to_py)?;
        Ok(Some(times))
    }

    /// The kind of each step (`"quantize"`, `"conv"`, ...), in order.
    fn step_kinds(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .map(|s| match s.op {
                Op::Quantize { .. } => "quantize",
                Op::Conv { .. } => "conv",
                Op::Linear { .. } => "linear",
                Op::Add { .. } => "add",
                Op::MaxPool(_) => "max_pool",
                Op::AvgPool { .. } => "avg_pool",
                Op::Relu(_) => "relu",
                Op::ToContiguous => "to_contiguous",
                Op::Dequantize(..) => "dequantize",
            })
            .collect()
    }
}
