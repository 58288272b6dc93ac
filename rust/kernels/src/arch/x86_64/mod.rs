//! x86-64 engines: detection and the FMA wrapper for output stages.

use std::ops::Range;

use super::Engine;
use crate::gemm::Job;
use crate::requant::OutputStage;

pub(crate) mod avx2;
pub(crate) mod avx512vnni;
pub(crate) mod avxvnni;
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
