//! AVX2 micro-kernel, exact for the full u8 range (decision D1): `vpmaddwd` on i16 operands
//! forms i32 sums of two u8×s8 products (at most 2·255·128, far from overflow) — no
//! `vpmaddubsw`, so no i16 saturation and no `reduce_range` needed.
//!
//! The AVX2 family reads activations in their broadcast i16 form (`PackedA::rows_bcast16`:
//! each K group's 4 values as i16, repeated to 32 bytes, built once per GEMM), so `vpmaddwd`
//! takes them straight from memory; each 16-byte quarter of a weight group is sign-extended
//! once (`vpmovsxbw`) and used for all rows. 3 rows × 16 columns per tile keep 12
//! accumulators, one widened weight and one product in 14 ymm registers.

use std::arch::x86_64::*;

use super::super::{check_dot_args, TileKernel};
use crate::packed::{PackedA, PackedWeights, NR};

pub(crate) const MR: usize = 3;
pub(crate) const NP: usize = 1;
pub(crate) const KERNEL: TileKernel = TileKernel {
    mr: MR,
    np: NP,
    dot,
};

fn dot(
    pa: &PackedA,
    r0: usize,
    rows: usize,
    pw: &PackedWeights,
    p0: usize,
    panels: usize,
    out: &mut [i32],
) {
    check_dot_args(&KERNEL, pa, r0, rows, pw, p0, panels, out);
    assert!(
        super::has_avx2_fma(),
        "avx2 kernel called on a CPU without AVX2"
    );
    let kp = pa.kp();
    let a = pa.rows_bcast16(r0, rows);
    let w = pw.panel_data(p0, 1);
    // SAFETY: CPU features checked above; `a` holds rows*(kp/4)*16 i16, `w` one panel of
    // kp*16 bytes, and check_dot_args proved `out` holds rows*16 i32 (panels == 1).
    unsafe {
        match rows {
            1 => tile::<1>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            2 => tile::<2>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            _ => tile::<3>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports AVX2; `a` points to `R` rows of `kp*4` i16 (broadcast form), `w` to
/// `kp*16` bytes, `out` to `R*16` writable i32; `kp % 4 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize>(a: *const i16, kp: usize, w: *const i8, out: *mut i32) {
    // acc[r][q]: columns 4q..4q+3 of row r, as pairs (k0+k1, k2+k3) per column.
    let mut acc = [[_mm256_setzero_si256(); 4]; R];
    let row = kp * 4;
    for g in 0..kp / 4 {
        for q in 0..4 {
            let wq = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(g * 64 + q * 16) as *const _));
            for r in 0..R {
                let av = _mm256_loadu_si256(a.add(r * row + g * 16) as *const _);
                acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(wq, av));
            }
        }
    }
    for r in 0..R {
        for q in 0..4 {
            // add the (k0+k1, k2+k3) pairs of each column
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc[r][q]);
            for c in 0..4 {
                *out.add(r * NR + q * 4 + c) = lanes[2 * c].wrapping_add(lanes[2 * c + 1]);
            }
        }
    }
}

/// Rows per tile of the 7-bit kernel.
pub(crate) const MR7: usize = 6;

/// AVX2 micro-kernel for activations in 0..=127 (`PackedA::fits_7bit`): `vpmaddubsw` forms
/// i16 sums of two u8×s8 products, which cannot saturate there (|sum| ≤ 2·127·128 = 32512),
/// `vpmaddwd` with ones widens them to i32 per column and `vpaddd` accumulates: 32 exact MACs
/// per 3 instructions (the exact kernel above needs 2 instructions per 16). Activations are
/// read as plain bytes (one 4-byte broadcast per row and K group), weights as packed; one
/// ymm holds one K group of 8 columns, so a tile is 6 rows × 2 ymm (16 columns).
pub(crate) const KERNEL_7BIT: TileKernel = TileKernel {
    mr: MR7,
    np: 1,
    dot: dot_7bit,
};

fn dot_7bit(
    pa: &PackedA,
    r0: usize,
    rows: usize,
    pw: &PackedWeights,
    p0: usize,
    panels: usize,
    out: &mut [i32],
) {
    check_dot_args(&KERNEL_7BIT, pa, r0, rows, pw, p0, panels, out);
    assert!(
        super::has_avx2_fma(),
        "avx2 kernel called on a CPU without AVX2"
    );
    // Exactness rests on this: a value above 127 could saturate an i16 pair sum.
    assert!(
        pa.fits_7bit(),
        "7-bit AVX2 kernel given activations above 127"
    );
    let kp = pa.kp();
    let a = pa.rows(r0, rows);
    let w = pw.panel_data(p0, 1);
    // SAFETY: CPU features checked above; check_dot_args proved `a` holds rows*kp bytes, `w`
    // one panel of kp*16 bytes and `out` rows*16 i32 (panels == 1).
    unsafe {
        match rows {
            1 => tile7::<1>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            2 => tile7::<2>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            3 => tile7::<3>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            4 => tile7::<4>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            5 => tile7::<5>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            _ => tile7::<6>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports AVX2; `a` points to `R` rows of `kp` bytes, each at most 127; `w` to
/// `kp*16` bytes; `out` to `R*16` writable i32; `kp % 4 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn tile7<const R: usize>(a: *const u8, kp: usize, w: *const i8, out: *mut i32) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..kp / 4 {
        let w0 = _mm256_loadu_si256(w.add(g * 64) as *const _);
        let w1 = _mm256_loadu_si256(w.add(g * 64 + 32) as *const _);
        for r in 0..R {
            let av = _mm256_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones);
            acc[r][0] = _mm256_add_epi32(acc[r][0], p0);
            acc[r][1] = _mm256_add_epi32(acc[r][1], p1);
        }
    }
    for r in 0..R {
        _mm256_storeu_si256(out.add(r * NR) as *mut _, acc[r][0]);
        _mm256_storeu_si256(out.add(r * NR + 8) as *mut _, acc[r][1]);
    }
}
