//! ferroquant-kernels: int8 quantization kernels for ferroquant, in pure Rust.
//!
//! - [`quantize`]: quantize / dequantize, per tensor and per channel (docs/numerics.md D3).
//! - [`qparams`]: dtypes, ranges and FBGEMM's dynamic choose-qparams rule.
//! - [`packed`]: the ISA-neutral packed weight layout (panels of 16 columns, K in groups of 4)
//!   and packed activations.
//! - [`requant`]: output stages (dequantize to f32, requantize to u8/i8), specified once.
//! - [`gemm`]: the tiling/threading driver and the naive reference.
//! - [`conv`]: convolutions (blocked im2col + GEMM; direct depthwise).
//! - [`elementwise`]: quantized elementwise ops with fused requantization (add, add_relu).
//! - [`pool`]: max pooling on channels-last u8.
//! - [`rowwise`]: softmax and layer norm over rows of quint8 activations.
//! - [`embedding`]: 8-bit / 4-bit row-wise embedding tables, lookups and bags.
//! - [`rnn`]: dynamic quantized LSTM / GRU / RNN layers (whole sequence per call).
//! - [`wgemm`]: float activations × fp16 or int8 weight-only weights.
//! - [`arch`]: engines (`avx512vnni`, `avxvnni`, `avx2`, `neon_dotprod`, `neon`, `scalar`),
//!   detected once and selectable by name.
//!
//! Every engine computes bit-identical results, on any number of threads.

// `is_multiple_of` needs Rust 1.87; this crate also builds for aarch64 with rustc 1.85.
#![allow(clippy::manual_is_multiple_of)]

mod aligned;
// Micro-kernels index fixed-size register arrays by row and column on purpose.
#[allow(clippy::needless_range_loop)]
pub mod arch;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod error;
pub mod gemm;
pub mod packed;
pub mod pool;
pub mod qparams;
pub mod quantize;
pub mod requant;
pub mod rnn;
pub mod rowwise;
mod threading;
pub mod wgemm;

pub use arch::{
    available_engines, best_engine, current_engine, engine_setting, set_engine, Engine,
};
pub use error::{KernelError, Result};
pub use packed::{PackedA, PackedWeights};
pub use qparams::{DynamicQParams, QDtype};
pub use threading::{
    max_threads, parallel_jobs, parallel_min_macs, pool_workers, set_openmp_enabled,
    set_parallel_min_macs, thread_runtime, threads_for, use_openmp_runtime, MACS_PER_THREAD,
    MAX_THREADS_LIMIT, PARALLEL_MIN_MACS,
};

use quantize::QInt;
use requant::{DequantF32, Requantize};

/// How dynamic quantization picks activation qparams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DynamicOptions {
    /// Activations over `0..=127` (torch's x86 choice) instead of `0..=255`.
    pub reduce_range: bool,
    /// One scale and zero point per row of `x` instead of one for the whole tensor.
    pub per_row: bool,
    /// `max(y, 0)` on the output.
    pub relu: bool,
}

/// Dynamic quantized linear (`nnqd.Linear`): quantizes `x` (`[m, k]`) per tensor (or per row)
/// over `0..=255` (or `0..=127` with `reduce_range`, torch's choice), runs the int8 GEMM with
/// `w`, and writes `out = fma(acc, xs·ws[j], bias[j])` (`[m, n]`), with an optional ReLU.
/// Returns the activation qparams it chose (one entry, or one per row).
#[allow(clippy::too_many_arguments)]
pub fn linear_dynamic_with(
    engine: Engine,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    opts: DynamicOptions,
    out: &mut [f32],
    threads: usize,
) -> Result<Vec<DynamicQParams>> {
    let input = DynamicInput::quantize(engine, x, m, w.k(), opts)?;
    input.linear(engine, w, bias, out, threads)?;
    Ok(input.qparams)
}

/// The activations of a dynamic linear, quantized and packed: the only pass over the float
/// input. (The Python binding runs it while it holds the GIL, straight from the caller's array,
/// and releases the GIL only for [`DynamicInput::linear`], which reads nothing Python owns.)
#[derive(Debug, Clone)]
pub struct DynamicInput {
    a: PackedA<'static>,
    /// One entry, or one per row.
    pub qparams: Vec<DynamicQParams>,
    opts: DynamicOptions,
}

impl DynamicInput {
    /// Quantizes `x` (`[m, k]`) as `opts` says (first half of [`linear_dynamic_with`]).
    pub fn quantize(
        engine: Engine,
        x: &[f32],
        m: usize,
        k: usize,
        opts: DynamicOptions,
    ) -> Result<Self> {
        let qmax = if opts.reduce_range { 127 } else { 255 };
        let (a, qparams) = if opts.per_row {
            PackedA::quantize_dynamic_per_row_on(engine, x, m, k, 0, qmax)?
        } else {
            let (a, q) = PackedA::quantize_dynamic_on(engine, x, m, k, 0, qmax)?;
            (a, vec![q])
        };
        Ok(DynamicInput { a, qparams, opts })
    }

    /// Rows of the input.
    pub fn m(&self) -> usize {
        self.a.m()
    }

    /// The GEMM and output stage (second half of [`linear_dynamic_with`]).
    pub fn linear(
        &self,
        engine: Engine,
        w: &PackedWeights,
        bias: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        let stage = self.output_stage(w, bias)?;
        self.linear_with(engine, w, &stage, out, threads)
    }

    /// The output stage for these activations (it copies `bias`; the Python binding builds it
    /// while it holds the GIL, straight from the caller's array).
    pub fn output_stage(&self, w: &PackedWeights, bias: Option<&[f32]>) -> Result<DequantF32> {
        if self.opts.per_row {
            let scales: Vec<f32> = self.qparams.iter().map(|q| q.scale).collect();
            DequantF32::per_row(&scales, w, bias, self.opts.relu)
        } else {
            DequantF32::new(self.qparams[0].scale, w, bias, self.opts.relu)
        }
    }

    /// [`DynamicInput::linear`] with a stage from [`DynamicInput::output_stage`].
    pub fn linear_with(
        &self,
        engine: Engine,
        w: &PackedWeights,
        stage: &DequantF32,
        out: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        gemm::gemm(engine, &self.a, w, stage, out, threads)
    }
}

/// [`linear_dynamic_with`] for per-tensor activations; returns their qparams.
#[allow(clippy::too_many_arguments)]
pub fn linear_dynamic(
    engine: Engine,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    reduce_range: bool,
    relu: bool,
    out: &mut [f32],
    threads: usize,
) -> Result<DynamicQParams> {
    let qmax = if reduce_range { 127 } else { 255 };
    let (a, qp) = PackedA::quantize_dynamic_on(engine, x, m, w.k(), 0, qmax)?;
    let stage = DequantF32::new(qp.scale, w, bias, relu)?;
    gemm::gemm(engine, &a, w, &stage, out, threads)?;
    Ok(qp)
}

/// Static quantized linear (`nnq.Linear` / `LinearReLU`): `a` is quint8 `[m, k]` with
/// `(a_scale, a_zp)`; the output (quint8 or qint8, `[m, n]`) is requantized to
/// `(out_scale, out_zp)` and clamped to `[qmin, qmax]` (docs/numerics.md D7), raised to `out_zp`
/// with `relu`.
#[allow(clippy::too_many_arguments)]
pub fn linear_static<T: QInt>(
    engine: Engine,
    a: &[u8],
    m: usize,
    a_scale: f32,
    a_zp: i32,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    out: &mut [T],
    threads: usize,
) -> Result<()> {
    let pa = PackedA::from_u8(a, m, w.k(), a_zp)?;
    linear_static_packed(
        engine, &pa, a_scale, w, bias, out_scale, out_zp, qmin, qmax, relu, out, threads,
    )
}

/// [`linear_static`] on activations already packed ([`PackedA::from_u8`] with their zero point):
/// the Python binding packs while it holds the GIL and runs this without it.
#[allow(clippy::too_many_arguments)]
pub fn linear_static_packed<T: QInt>(
    engine: Engine,
    pa: &PackedA,
    a_scale: f32,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    out: &mut [T],
    threads: usize,
) -> Result<()> {
    let stage = Requantize::<T>::new(a_scale, w, bias, out_scale, out_zp, qmin, qmax, relu)?;
    gemm::gemm(engine, pa, w, &stage, out, threads)
}
