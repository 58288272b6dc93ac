//! Plain NEON micro-kernel (every aarch64 CPU), exact for the full u8 range: a u8×s8 product
//! always fits in i16 (−32640..32385), so activations widened to i16 times weights widened to
//! i16 are multiplied exactly with `mul` (16-bit), and `sadalp` adds product pairs into i32.
//! 2 rows × 16 columns per tile.

use std::arch::aarch64::*;

use super::super::tile::{AForm, Panels, TileKernel, NR};

pub(crate) const MR: usize = 2;
pub(crate) const NP: usize = 1;
pub(crate) const KERNEL: TileKernel = TileKernel::new(MR, NP, AForm::Bytes, false, dot);

/// # Safety
/// The CPU supports NEON; [`TileKernel::dot`] checked the lengths (panels == 1).
unsafe fn dot(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, a, w) = (p.kp, p.rows, p.a, p.w);
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
