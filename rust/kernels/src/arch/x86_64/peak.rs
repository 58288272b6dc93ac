//! Peak-throughput loops for one instruction mix each (benches/peak): independent accumulator
//! chains, operands in registers, no memory traffic. They say what a kernel could reach.

use std::arch::asm;
use std::arch::x86_64::*;
use std::hint::black_box;

/// Which instruction mix to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakMix {
    /// `vpdpbusd zmm` (64 MACs per instruction).
    Vnni512,
    /// `vpdpbusd ymm` with the VEX (AVX-VNNI) encoding (32 MACs).
    AvxVnni256,
    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd` on ymm (32 MACs, saturating i16 pairs: torch's AVX2 mix).
    Avx2Saturating,
    /// `vpmaddwd` + `vpaddd` on ymm with i16 operands (16 MACs, exact: our avx2 kernel's mix).
    Avx2Exact,
}

/// Runs `iters` iterations of 12 independent chains; returns the MACs done, or `None` when
/// the CPU lacks the instructions.
pub fn run(mix: PeakMix, iters: u64) -> Option<u64> {
    match mix {
        PeakMix::Vnni512 if super::has_avx512vnni() => {
            // SAFETY: AVX-512 VNNI checked on this line.
            unsafe { vnni512(iters) };
            Some(iters * 12 * 64)
        }
        PeakMix::AvxVnni256 if super::has_avxvnni() => {
            // SAFETY: AVX-VNNI checked on this line.
            unsafe { avxvnni256(iters) };
            Some(iters * 12 * 32)
        }
        PeakMix::Avx2Saturating if super::has_avx2_fma() => {
            // SAFETY: AVX2 checked on this line.
            unsafe { avx2_saturating(iters) };
            Some(iters * 12 * 32)
        }
        PeakMix::Avx2Exact if super::has_avx2_fma() => {
            // SAFETY: AVX2 checked on this line.
            unsafe { avx2_exact(iters) };
            Some(iters * 12 * 16)
        }
        _ => None,
    }
}

/// # Safety
/// The CPU supports AVX-512F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni512(iters: u64) {
    let a = _mm512_set1_epi8(black_box(3));
    let b = _mm512_set1_epi8(black_box(5));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    black_box(acc);
}

/// # Safety
/// The CPU supports AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avxvnni256(iters: u64) {
    let a = _mm256_set1_epi8(black_box(3));
    let b = _mm256_set1_epi8(black_box(5));
    let mut acc = [_mm256_setzero_si256(); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_dpbusd_avx_epi32(*v, a, b);
        }
    }
    black_box(acc);
}

// The AVX2 mixes are written in asm: their products do not depend on the accumulators, so
// the compiler would hoist intrinsics out of the loop.

/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn avx2_saturating(iters: u64) {
    let a = _mm256_set1_epi8(black_box(3));
    let b = _mm256_set1_epi8(black_box(5));
    let ones = _mm256_set1_epi16(1);
    let mut c = [_mm256_setzero_si256(); 4];
    for _ in 0..iters {
        // 4 chains x 3 = 12 (maddubs, madd, add) groups per iteration
        asm!(
            "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c0}, {c0}, {t0}",
            "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c1}, {c1}, {t1}",
            "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c2}, {c2}, {t2}",
            "vpmaddubsw {t3}, {a}, {b}", "vpmaddwd {t3}, {t3}, {o}", "vpaddd {c3}, {c3}, {t3}",
            "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c0}, {c0}, {t0}",
            "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c1}, {c1}, {t1}",
            "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c2}, {c2}, {t2}",
            "vpmaddubsw {t3}, {a}, {b}", "vpmaddwd {t3}, {t3}, {o}", "vpaddd {c3}, {c3}, {t3}",
            "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c0}, {c0}, {t0}",
            "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c1}, {c1}, {t1}",
            "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c2}, {c2}, {t2}",
            "vpmaddubsw {t3}, {a}, {b}", "vpmaddwd {t3}, {t3}, {o}", "vpaddd {c3}, {c3}, {t3}",
            a = in(ymm_reg) a, b = in(ymm_reg) b, o = in(ymm_reg) ones,
            t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _, t3 = out(ymm_reg) _,
            c0 = inout(ymm_reg) c[0], c1 = inout(ymm_reg) c[1], c2 = inout(ymm_reg) c[2],
            c3 = inout(ymm_reg) c[3],
            options(nomem, nostack),
        );
    }
    black_box(c);
}

/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn avx2_exact(iters: u64) {
    let a = _mm256_set1_epi16(black_box(3));
    let b = _mm256_set1_epi16(black_box(5));
    let mut c = [_mm256_setzero_si256(); 4];
    for _ in 0..iters {
        asm!(
            "vpmaddwd {t0}, {a}, {b}", "vpaddd {c0}, {c0}, {t0}",
            "vpmaddwd {t1}, {a}, {b}", "vpaddd {c1}, {c1}, {t1}",
            "vpmaddwd {t2}, {a}, {b}", "vpaddd {c2}, {c2}, {t2}",
            "vpmaddwd {t3}, {a}, {b}", "vpaddd {c3}, {c3}, {t3}",
            "vpmaddwd {t0}, {a}, {b}", "vpaddd {c0}, {c0}, {t0}",
            "vpmaddwd {t1}, {a}, {b}", "vpaddd {c1}, {c1}, {t1}",
            "vpmaddwd {t2}, {a}, {b}", "vpaddd {c2}, {c2}, {t2}",
            "vpmaddwd {t3}, {a}, {b}", "vpaddd {c3}, {c3}, {t3}",
            "vpmaddwd {t0}, {a}, {b}", "vpaddd {c0}, {c0}, {t0}",
            "vpmaddwd {t1}, {a}, {b}", "vpaddd {c1}, {c1}, {t1}",
            "vpmaddwd {t2}, {a}, {b}", "vpaddd {c2}, {c2}, {t2}",
            "vpmaddwd {t3}, {a}, {b}", "vpaddd {c3}, {c3}, {t3}",
            a = in(ymm_reg) a, b = in(ymm_reg) b,
            t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _, t3 = out(ymm_reg) _,
            c0 = inout(ymm_reg) c[0], c1 = inout(ymm_reg) c[1], c2 = inout(ymm_reg) c[2],
            c3 = inout(ymm_reg) c[3],
            options(nomem, nostack),
        );
    }
    black_box(c);
}
