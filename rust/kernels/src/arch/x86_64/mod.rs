//! x86-64 engines: detection and the FMA wrapper for output stages.

use std::ops::Range;

use super::{Engine, Vectorized};
use crate::gemm::Job;
use crate::requant::OutputStage;

pub(crate) mod avx2;
pub(crate) mod avx512vnni;
pub(crate) mod avxvnni;
pub(crate) mod depthwise;
pub mod peak;

pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub(crate) fn has_avx512vnni() -> bool {
    has_avx2_fma()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

pub(crate) fn has_avxvnni() -> bool {
    has_avx2_fma() && is_x86_feature_detected!("avxvnni")
}

pub(crate) fn detect() -> Vec<Engine> {
    let mut v = Vec::new();
    if has_avx512vnni() {
        v.push(Engine::Avx512Vnni);
    }
    if has_avxvnni() {
        v.push(Engine::AvxVnni);
    }
    if has_avx2_fma() {
        v.push(Engine::Avx2);
    }
    v
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn run_block_avx2_fma<S: OutputStage>(
    job: &Job<'_, S>,
    rows: Range<usize>,
    gs: Range<usize>,
    out: &mut [S::Out],
    at: crate::requant::OutAt,
) {
    crate::gemm::run_block(job, rows, gs, out, at)
}

/// # Safety
/// The CPU supports AVX-512F/BW/VL, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn run_block_avx512<S: OutputStage>(
    job: &Job<'_, S>,
    rows: Range<usize>,
    gs: Range<usize>,
    out: &mut [S::Out],
    at: crate::requant::OutAt,
) {
    crate::gemm::run_block(job, rows, gs, out, at)
}

/// A block of GEMM tiles with output stages compiled for AVX-512 (16-lane float loops), for
/// the AVX-512 VNNI engine.
#[inline(always)]
pub(crate) fn run_block_512<S: OutputStage>(
    job: &Job<'_, S>,
    rows: Range<usize>,
    gs: Range<usize>,
    out: &mut [S::Out],
    at: crate::requant::OutAt,
) {
    if has_avx512vnni() {
        // SAFETY: the CPU supports AVX-512F/BW/VL, AVX2 and FMA (checked just above).
        unsafe { run_block_avx512(job, rows, gs, out, at) }
    } else {
        run_block_fma(job, rows, gs, out, at)
    }
}

/// A block of GEMM tiles compiled for AVX2+FMA (plain code when the CPU lacks them, which
/// cannot happen for the engines that call this).
#[inline(always)]
pub(crate) fn run_block_fma<S: OutputStage>(
    job: &Job<'_, S>,
    rows: Range<usize>,
    gs: Range<usize>,
    out: &mut [S::Out],
    at: crate::requant::OutAt,
) {
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { run_block_avx2_fma(job, rows, gs, out, at) }
    } else {
        crate::gemm::run_block(job, rows, gs, out, at)
    }
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn call_avx2<V: Vectorized>(v: V) -> V::Out {
    v.run()
}

/// # Safety
/// The CPU supports AVX-512F/BW/VL, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn call_avx512<V: Vectorized>(v: V) -> V::Out {
    v.run()
}

/// Runs `v` compiled with the vector features of `engine` (AVX-512 for the AVX-512 VNNI
/// engine, AVX2 + FMA for the other x86 engines). Plain code for engines this CPU cannot run.
#[inline(always)]
pub(crate) fn with_features<V: Vectorized>(engine: Engine, v: V) -> V::Out {
    match engine {
        // SAFETY: the CPU supports every feature `call_avx512` enables (checked in the guard).
        Engine::Avx512Vnni if has_avx512vnni() => unsafe { call_avx512(v) },
        // SAFETY: the CPU supports AVX2 and FMA (checked in the guard).
        Engine::AvxVnni | Engine::Avx2 if has_avx2_fma() => unsafe { call_avx2(v) },
        _ => v.run(),
    }
}

/// Dynamic-quantization float loops compiled for AVX2 (same results as the portable loops).
pub(crate) const FLOAT_KERNELS: super::FloatKernels = super::FloatKernels {
    min_max: min_max_avx2,
    quantize_rows: quantize_rows_avx2,
};

fn min_max_avx2(x: &[f32]) -> Option<(f32, f32)> {
    assert!(has_avx2_fma(), "AVX2 loops called on a CPU without AVX2");
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn inner(x: &[f32]) -> Option<(f32, f32)> {
        crate::qparams::min_max_body(x)
    }
    // SAFETY: AVX2 and FMA checked above.
    unsafe { inner(x) }
}

fn quantize_rows_avx2(
    x: &[f32],
    k: usize,
    kp: usize,
    scale: f32,
    zp: i32,
    data: &mut [u8],
    sums: &mut [i32],
) {
    assert!(has_avx2_fma(), "AVX2 loops called on a CPU without AVX2");
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn inner(
        x: &[f32],
        k: usize,
        kp: usize,
        scale: f32,
        zp: i32,
        data: &mut [u8],
        sums: &mut [i32],
    ) {
        crate::packed::quantize_rows_body(x, k, kp, scale, zp, data, sums)
    }
    // SAFETY: AVX2 and FMA checked above.
    unsafe { inner(x, k, kp, scale, zp, data, sums) }
}
