//! NEON depthwise accumulation: runs of output pixels with every tap inside the input, 16
//! channels per block. Each tap's 16 inputs are widened to i16 (`uxtl`) and multiplied by the
//! centered i16 weights into four i32x4 accumulators (`smlal` / `smlal2`): exact, as `x ≤ 255`
//! and `|w − zw| ≤ 255`. The input zero point enters once per channel through the initial
//! accumulator `−zx·Σ_t (w − zw)`, as on x86.

use std::arch::aarch64::*;

/// The channels the kernel handles: every whole 16 (it runs only where that is all of them).
pub(crate) fn channels_done(c: usize) -> usize {
    c / 16 * 16
}

/// The kernel reads the centered weights as they are (`[taps][c]`, i16).
pub(crate) fn prepare(w: &[i16], _taps: usize, _c: usize) -> Vec<i16> {
    w.to_vec()
}

/// A run of `count` output pixels whose taps all lie inside the input, `c` channels (a multiple
/// of 16): tap `t` of pixel `p` reads `x[offs[t] + p·step ..][..c]`, and
/// `acc[p·c + ch] = init[ch] + Σ_t x[..][ch]·w[t][ch]` (`wp` from [`prepare`]). Safe: checks
/// every length first (NEON is part of the aarch64 baseline).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    x: &[u8],
    offs: &[usize],
    step: usize,
    count: usize,
    wp: &[i16],
    init: &[i32],
    c: usize,
    acc: &mut [i32],
) {
    assert!(!offs.is_empty() && count > 0, "no taps or no pixels");
    assert_eq!(channels_done(c), c, "channels must be a multiple of 16");
    assert!(
        offs.len().checked_mul(c).is_some_and(|n| wp.len() >= n),
        "weights too short"
    );
    assert!(init.len() >= c, "initial accumulators too short");
    assert!(
        count.checked_mul(c).is_some_and(|n| acc.len() >= n),
        "accumulators too short"
    );
    let last = (count - 1).checked_mul(step).expect("pixel run too long");
    for &o in offs {
        let end = o.checked_add(last).and_then(|v| v.checked_add(c));
        assert!(end.is_some_and(|e| e <= x.len()), "tap outside the input");
    }
    // SAFETY: NEON is in the aarch64 baseline; every read and write is inside the lengths
    // checked above (pixel p, tap t reads x[offs[t] + p·step .. + c], weights wp[t·c .. + c]).
    unsafe {
        run_impl(
            x.as_ptr(),
            offs,
            step,
            count,
            wp.as_ptr(),
            init.as_ptr(),
            c,
            acc.as_mut_ptr(),
        )
    }
}

/// # Safety
/// As checked by [`run`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn run_impl(
    x: *const u8,
    offs: &[usize],
    step: usize,
    count: usize,
    w: *const i16,
    init: *const i32,
    c: usize,
    acc: *mut i32,
) {
    for base in (0..c).step_by(16) {
        let i0 = vld1q_s32(init.add(base));
        let i1 = vld1q_s32(init.add(base + 4));
        let i2 = vld1q_s32(init.add(base + 8));
        let i3 = vld1q_s32(init.add(base + 12));
        for p in 0..count {
            let (mut a0, mut a1, mut a2, mut a3) = (i0, i1, i2, i3);
            for (t, &o) in offs.iter().enumerate() {
                let x16 = vld1q_u8(x.add(o + p * step + base));
                let xl = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x16)));
                let xh = vreinterpretq_s16_u16(vmovl_high_u8(x16));
                let wl = vld1q_s16(w.add(t * c + base));
                let wh = vld1q_s16(w.add(t * c + base + 8));
                a0 = vmlal_s16(a0, vget_low_s16(xl), vget_low_s16(wl));
                a1 = vmlal_high_s16(a1, xl, wl);
                a2 = vmlal_s16(a2, vget_low_s16(xh), vget_low_s16(wh));
                a3 = vmlal_high_s16(a3, xh, wh);
            }
            let out = acc.add(p * c + base);
            vst1q_s32(out, a0);
            vst1q_s32(out.add(4), a1);
            vst1q_s32(out.add(8), a2);
            vst1q_s32(out.add(12), a3);
        }
    }
}
