//! AVX-VNNI micro-kernel (CPUs with VEX-encoded `vpdpbusd` on ymm but no AVX-512):
//! 6 rows × 16 columns per tile, two ymm per K group of a panel.

use std::arch::x86_64::*;

use super::super::tile::{AForm, FusedOut, Panels, TileKernel, NR};
use super::avx2::store_requant16;

/// The accumulators of an `R`-row tile: per row, columns 0-7 and 8-15 (expanded inside the
/// `#[target_feature]` callers).
macro_rules! acc {
    ($r:expr, $a:expr, $kp:expr, $w:expr) => {{
        let (a, kp, w) = ($a, $kp, $w);
        let mut lo = [_mm256_setzero_si256(); $r];
        let mut hi = [_mm256_setzero_si256(); $r];
        for g in 0..kp / 4 {
            let w0 = _mm256_loadu_si256(w.add(g * 64) as *const _);
            let w1 = _mm256_loadu_si256(w.add(g * 64 + 32) as *const _);
            for r in 0..$r {
                let av = _mm256_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
                lo[r] = _mm256_dpbusd_avx_epi32(lo[r], av, w0);
                hi[r] = _mm256_dpbusd_avx_epi32(hi[r], av, w1);
            }
        }
        (lo, hi)
    }};
}

pub(crate) const MR: usize = 6;
pub(crate) const NP: usize = 1;
pub(crate) const KERNEL: TileKernel = TileKernel::new(MR, NP, AForm::Bytes, false, dot)
    .with_requant(dot_requant)
    .with_many_rows();

/// # Safety
/// The CPU supports AVX-VNNI; [`TileKernel::dot`] checked the lengths (panels == 1).
unsafe fn dot(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, a, w) = (p.kp, p.rows, p.a, p.w);
    unsafe {
        match rows {
            1 => tile::<1>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            2 => tile::<2>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            3 => tile::<3>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            4 => tile::<4>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            5 => tile::<5>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            _ => tile::<6>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports AVX2 and AVX-VNNI; `a` points to `R*kp` bytes, `w` to `kp*16` bytes,
/// `out` to `R*16` writable i32; `kp % 4 == 0`.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile<const R: usize>(a: *const u8, kp: usize, w: *const i8, out: *mut i32) {
    let (lo, hi) = acc!(R, a, kp, w);
    for r in 0..R {
        _mm256_storeu_si256(out.add(r * NR) as *mut _, lo[r]);
        _mm256_storeu_si256(out.add(r * NR + 8) as *mut _, hi[r]);
    }
}

/// [`tile`] requantized by [`FusedOut`] into bytes, rows `f.ld` apart.
///
/// # Safety
/// As [`tile`]; `f` and `out` as [`TileKernel::dot_requant`] checked them.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_rq<const R: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    f: &FusedOut<'_>,
    out: *mut u8,
) {
    let (lo, hi) = acc!(R, a, kp, w);
    for r in 0..R {
        store_requant16!(lo[r], hi[r], f, out.add(r * f.ld));
    }
}

/// The requantizing entry of [`KERNEL`] (see [`FusedOut`]).
///
/// # Safety
/// The CPU supports AVX-VNNI; [`TileKernel::dot_requant`] checked the lengths (panels == 1).
unsafe fn dot_requant(p: &Panels<'_>, f: &FusedOut<'_>, out: &mut [u8]) {
    // any number of rows (`with_many_rows`): tiles of MR rows, then the remainder
    let (kp, w) = (p.kp, p.w.as_ptr());
    let mut r0 = 0;
    while r0 < p.rows {
        let rows = MR.min(p.rows - r0);
        // SAFETY: TileKernel::dot_requant checked `a` and `out` for all `p.rows` rows.
        let (a, o) = (p.a.as_ptr().add(r0 * kp), out.as_mut_ptr().add(r0 * f.ld));
        match rows {
            1 => tile_rq::<1>(a, kp, w, f, o),
            2 => tile_rq::<2>(a, kp, w, f, o),
            3 => tile_rq::<3>(a, kp, w, f, o),
            4 => tile_rq::<4>(a, kp, w, f, o),
            5 => tile_rq::<5>(a, kp, w, f, o),
            _ => tile_rq::<6>(a, kp, w, f, o),
        }
        r0 += rows;
    }
}
