//! NEON dot-product micro-kernel (`sdot`, ARMv8.2 DotProd): activations are shifted to signed
//! (`a ^ 0x80` = a − 128), `sdot` accumulates exact i32 sums of four i8×i8 products, and
//! 128·colsum(W) restores `Σ a·w`. 4 rows × 16 columns per tile.
//! `sdot` is written with `asm!` because its intrinsic is unstable on rustc 1.85.

use std::arch::aarch64::*;
use std::arch::asm;

use super::super::tile::{AForm, Panels, TileKernel, NR};

pub(crate) const MR: usize = 4;
pub(crate) const NP: usize = 1;
pub(crate) const KERNEL: TileKernel = TileKernel::new(MR, NP, AForm::Bytes, false, dot);

/// # Safety
/// The CPU supports DotProd; [`TileKernel::dot`] checked the lengths (panels == 1, column sums
/// of the panel included).
unsafe fn dot(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, a, w, csum) = (p.kp, p.rows, p.a, p.w, p.col_sums);
    unsafe {
        match rows {
            1 => tile::<1>(a.as_ptr(), kp, w.as_ptr(), csum.as_ptr(), out.as_mut_ptr()),
            2 => tile::<2>(a.as_ptr(), kp, w.as_ptr(), csum.as_ptr(), out.as_mut_ptr()),
            3 => tile::<3>(a.as_ptr(), kp, w.as_ptr(), csum.as_ptr(), out.as_mut_ptr()),
            _ => tile::<4>(a.as_ptr(), kp, w.as_ptr(), csum.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// `acc + sdot(x, y)` per 32-bit lane.
///
/// # Safety
/// The CPU supports DotProd.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) x, in(vreg) y,
         options(pure, nomem, nostack, preserves_flags));
    acc
}

/// # Safety
/// The CPU supports DotProd; `a` points to `R*kp` bytes, `w` to `kp*16` bytes, `csum` to 16
/// i32, `out` to `R*16` writable i32; `kp % 4 == 0`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile<const R: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    csum: *const i32,
    out: *mut i32,
) {
    let groups = kp / 4;
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    for g in 0..groups {
        let w0 = vld1q_s8(w.add(g * 64));
        let w1 = vld1q_s8(w.add(g * 64 + 16));
        let w2 = vld1q_s8(w.add(g * 64 + 32));
        let w3 = vld1q_s8(w.add(g * 64 + 48));
        for r in 0..R {
            let four = (a.add(r * kp + g * 4) as *const u32).read_unaligned();
            let ab = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(four)), flip));
            acc[r][0] = sdot(acc[r][0], w0, ab);
            acc[r][1] = sdot(acc[r][1], w1, ab);
            acc[r][2] = sdot(acc[r][2], w2, ab);
            acc[r][3] = sdot(acc[r][3], w3, ab);
        }
    }
    for q in 0..4 {
        let corr = vshlq_n_s32::<7>(vld1q_s32(csum.add(q * 4)));
        for r in 0..R {
            vst1q_s32(out.add(r * NR + q * 4), vaddq_s32(acc[r][q], corr));
        }
    }
}
