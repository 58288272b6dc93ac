//! x86-64 engines: detection, and compiling plain-Rust loops with the engines' vector features.

use super::{Engine, Vectorized};

pub(crate) mod avx2;
pub(crate) mod avx512vnni;
pub(crate) mod avxvnni;
pub(crate) mod depthwise;
pub(crate) mod depthwise_vnni;
pub(crate) mod depthwise_ymm;
pub(crate) mod grouped_avx2;
pub(crate) mod grouped_vnni;
pub(crate) mod low;
pub mod peak;
pub(crate) mod quant8;

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
unsafe fn call_avx2<V: Vectorized>(v: V, out: &mut [V::Elem]) -> V::Out {
    v.run(out)
}

/// # Safety
/// The CPU supports AVX-512F/BW/VL, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn call_avx512<V: Vectorized>(v: V, out: &mut [V::Elem]) -> V::Out {
    v.run(out)
}

/// Runs `v` compiled with the vector features of `engine` (AVX-512 for the AVX-512 VNNI
/// engine, AVX2 + FMA for the other x86 engines). Plain code for engines this CPU cannot run.
#[inline(always)]
pub(crate) fn with_features<V: Vectorized>(engine: Engine, v: V, out: &mut [V::Elem]) -> V::Out {
    match engine {
        // SAFETY: the CPU supports every feature `call_avx512` enables (checked in the guard).
        Engine::Avx512Vnni if has_avx512vnni() => unsafe { call_avx512(v, out) },
        // SAFETY: the CPU supports AVX2 and FMA (checked in the guard).
        Engine::AvxVnni | Engine::Avx2 if has_avx2_fma() => unsafe { call_avx2(v, out) },
        _ => v.run(out),
    }
}
