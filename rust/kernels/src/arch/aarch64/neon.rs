//! Plain NEON micro-kernel (every aarch64 CPU), exact for the full u8 range: a u8×s8 product
//! always fits in i16 (−32640..32385), so activations widened to i16 times weights widened to
//! i16 are multiplied exactly with `mul` (16-bit), and `sadalp` adds product pairs into i32.
//! 2 rows × 16 columns per tile.

use std::arch::aarch64::*;

use super::super::{check_dot_args, TileKernel};
use crate::packed::{PackedA, PackedWeights, NR};

pub(crate) const MR: usize = 2;
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
    let (kp, a) = (pa.kp(), pa.rows(r0, rows));
    let w = pw.panel_data(p0, panels);
    assert!(
        std::arch::is_aarch64_feature_detected!("neon"),
        "neon kernel called on a CPU without NEON"
    );
    // SAFETY: NEON checked above; lengths checked by check_dot_args (panels == 1).
    unsafe {
        match rows {
            1 => tile::<1>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            _ => tile::<2>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports NEON; `a` points to `R*kp` bytes, `w` to `kp*16` bytes, `out` to `R*16`
/// writable i32; `kp % 4 == 0`.
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize>(a: *const u8, kp: usize, w: *const i8, out: *mut i32) {
    let groups = kp / 4;
    // acc[r][h]: columns 2h, 2h+1 of row r as [c(k0+k1), c(k2+k3), c'(k0+k1), c'(k2+k3)].
    let mut acc = [[vdupq_n_s32(0); 8]; R];
    for g in 0..groups {
        let mut av = [vdupq_n_s16(0); R];
        for r in 0..R {
            let four = (a.add(r * kp + g * 4) as *const u32).read_unaligned();
            let a8 = vreinterpret_u8_u32(vdup_n_u32(four)); // a0..a3 a0..a3
            av[r] = vreinterpretq_s16_u16(vmovl_u8(a8));
        }
        for q in 0..4 {
            let w8 = vld1q_s8(w.add(g * 64 + q * 16));
            let wl = vmovl_s8(vget_low_s8(w8));
            let wh = vmovl_high_s8(w8);
            for r in 0..R {
                acc[r][2 * q] = vpadalq_s16(acc[r][2 * q], vmulq_s16(wl, av[r]));
                acc[r][2 * q + 1] = vpadalq_s16(acc[r][2 * q + 1], vmulq_s16(wh, av[r]));
            }
        }
    }
    for r in 0..R {
        for h in 0..8 {
            // pairwise add: [c(k01)+c(k23), c'(k01)+c'(k23)]
            let s = vpaddq_s32(acc[r][h], acc[r][h]);
            *out.add(r * NR + 2 * h) = vgetq_lane_s32::<0>(s);
            *out.add(r * NR + 2 * h + 1) = vgetq_lane_s32::<1>(s);
        }
    }
}
