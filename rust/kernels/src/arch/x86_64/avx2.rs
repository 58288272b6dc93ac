//! AVX2 micro-kernel, exact for the full u8 range (decision D1): weights are sign-extended
//! to i16 and activations zero-extended to i16, then `vpmaddwd` forms i32 sums of two
//! products (at most 2·255·128, far from overflow). No `vpmaddubsw`, so no i16 saturation.
//! 3 rows × 16 columns per tile.

use std::arch::x86_64::*;

use super::super::{check_dot_args, TileKernel};
use crate::packed::NR;

pub(crate) const MR: usize = 3;
pub(crate) const NP: usize = 1;
pub(crate) const KERNEL: TileKernel = TileKernel {
    mr: MR,
    np: NP,
    dot,
};

fn dot(a: &[u8], kp: usize, rows: usize, w: &[i8], _csum: &[i32], panels: usize, out: &mut [i32]) {
    check_dot_args(&KERNEL, a, kp, rows, w, panels, out);
    assert!(
        super::has_avx2_fma(),
        "avx2 kernel called on a CPU without AVX2"
    );
    // SAFETY: CPU features checked above; lengths checked by check_dot_args (panels == 1).
    unsafe {
        match rows {
            1 => tile::<1>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            2 => tile::<2>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            _ => tile::<3>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports AVX2; `a` points to `R*kp` bytes, `w` to `kp*16` bytes, `out` to `R*16`
/// writable i32; `kp % 4 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize>(a: *const u8, kp: usize, w: *const i8, out: *mut i32) {
    let groups = kp / 4;
    // acc[r][q]: columns 4q..4q+3 of row r, as pairs (k0k1, k2k3) per column.
    let mut acc = [[_mm256_setzero_si256(); 4]; R];
    for g in 0..groups {
        let mut av = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let four = (a.add(r * kp + g * 4) as *const i32).read_unaligned();
            let a16 = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(four));
            av[r] = _mm256_broadcastq_epi64(a16);
        }
        for q in 0..4 {
            let w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(g * 64 + q * 16) as *const _));
            for r in 0..R {
                acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(w16, av[r]));
            }
        }
    }
    for r in 0..R {
        for q in 0..4 {
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc[r][q]);
            for c in 0..4 {
                *out.add(r * NR + q * 4 + c) = lanes[2 * c].wrapping_add(lanes[2 * c + 1]);
            }
        }
    }
}
