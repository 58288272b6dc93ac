//! x86-64 engines: detection and the FMA wrapper for output stages.

use super::Engine;

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

#[target_feature(enable = "avx2,fma")]
unsafe fn call_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` inside a function compiled for AVX2+FMA (falls back to a plain call when the
/// CPU lacks them, which cannot happen for the engines that use this).
#[inline(always)]
pub(crate) fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { call_avx2_fma(f) }
    } else {
        f()
    }
}
