//! AVX-512 VNNI grouped convolution (few channels per group): `vpdpbusd` over output channels,
//! with each output lane fed its own group's inputs by one `vpermd`.
//!
//! In channels-last order, the 4 input channels `4q .. 4q + 4` of a group form one dword of the
//! input pixel. For 16 output channels (one zmm of i32 accumulators), lane `l` needs dword
//! `group(o0 + l)·cin_g/4 + q`; those dwords all lie in one 64-byte window of the pixel (checked
//! when the plan is made), so a masked load of the window and one `vpermd` put every lane's 4
//! inputs in place, and one `vpdpbusd` with the weights `w[o][4q .. 4q + 4]` adds 64 exact
//! products. A 3x3 conv with 4 channels per group does 9 such steps per 16 outputs, where the
//! im2col + GEMM path ran one 16-column GEMM per group on a 4-channel im2col.

use crate::arch::grouped::{GroupedBlock, GroupedWeights};
use std::arch::x86_64::*;

/// A run of `count` output pixels: pixel `p` reads tap `t` at byte offset `off + p·step` of `x`
/// for every `(t, off)` of `taps`, and `acc[p·coutp + o] = Σ_(t, off) Σ_j x[off + p·step +
/// group(o)·cin_g + j]·w[o][j][t]` (`coutp` = `cout` rounded up to 16). Exact i32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate(
    x: &[u8],
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: GroupedWeights<'_>,
    n_taps: usize,
    acc: &mut [i32],
) {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 VNNI grouped kernel on a CPU without it"
    );
    let GroupedWeights::Bytes(w) = w else {
        panic!("the AVX-512 VNNI grouped kernel reads byte weights");
    };
    let coutp = blocks.len() * 16;
    assert!(count > 0, "no pixels");
    let need = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    assert!(
        need(&[count, coutp]).is_some_and(|n| acc.len() >= n),
        "accumulators too short"
    );
    let quads = blocks.first().map_or(0, |b| b.idx.len());
    assert!(blocks.iter().all(|b| b.idx.len() == quads), "ragged plan");
    assert!(
        need(&[n_taps, quads, coutp, 4]).is_some_and(|n| w.len() >= n),
        "weights too short"
    );
    let last = (count - 1).checked_mul(step).expect("pixel run too long");
    // the masked loads read each window's bytes below its mask only
    let reach = blocks
        .iter()
        .map(|b| b.window + 64 - b.mask.leading_zeros() as usize)
        .max()
        .unwrap_or(0);
    for &(t, off) in taps {
        assert!(t < n_taps, "tap index out of range");
        let end = off.checked_add(last).and_then(|v| v.checked_add(reach));
        assert!(end.is_some_and(|e| e <= x.len()), "tap outside the input");
    }
    // SAFETY: AVX-512 VNNI checked; every load is inside x (masked), w and acc (checked above).
    unsafe {
        accumulate_impl(
            x.as_ptr(),
            taps,
            step,
            count,
            blocks,
            w.as_ptr(),
            quads,
            acc.as_mut_ptr(),
        )
    }
}

/// # Safety
/// As checked by [`accumulate`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn accumulate_impl(
    x: *const u8,
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: *const i8,
    quads: usize,
    acc: *mut i32,
) {
    match quads {
        1 => run::<1>(x, taps, step, count, blocks, w, acc),
        2 => run::<2>(x, taps, step, count, blocks, w, acc),
        3 => run::<3>(x, taps, step, count, blocks, w, acc),
        4 => run::<4>(x, taps, step, count, blocks, w, acc),
        // a window holds 16 dwords: more quads than 16 never fit a plan
        _ => {
            let mut q0 = 0;
            while q0 < quads {
                // quads q0.. in steps of 4, adding into acc after the first step
                run_from::<4>(x, taps, step, count, blocks, w, acc, quads, q0, q0 > 0);
                q0 += 4;
            }
        }
    }
}

/// [`accumulate_impl`] for `Q` quads: the block's permutations stay in registers.
///
/// # Safety
/// As [`accumulate_impl`], `Q` = the plan's quads.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn run<const Q: usize>(
    x: *const u8,
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: *const i8,
    acc: *mut i32,
) {
    run_from::<Q>(x, taps, step, count, blocks, w, acc, Q, 0, false)
}

/// Quads `q0 .. q0 + Q` (those below `quads`) of every pixel, into `acc` (added to it with
/// `add`).
///
/// # Safety
/// As [`accumulate_impl`].
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn run_from<const Q: usize>(
    x: *const u8,
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: *const i8,
    acc: *mut i32,
    quads: usize,
    q0: usize,
    add: bool,
) {
    let coutp = blocks.len() * 16;
    let nq = Q.min(quads - q0);
    let tap_bytes = quads * coutp * 4;
    for (bi, b) in blocks.iter().enumerate() {
        let mut idx = [_mm512_setzero_si512(); Q];
        for (j, v) in idx.iter_mut().enumerate().take(nq) {
            *v = _mm512_loadu_si512(b.idx[q0 + j].as_ptr() as *const _);
        }
        // wrapping: with no taps nothing is read
        let xb = x.wrapping_add(b.window);
        let wb = w.add((q0 * coutp + bi * 16) * 4);
        for p in 0..count {
            let xp = xb.wrapping_add(p * step);
            // two chains (taps in pairs, even and odd quads) so consecutive steps do not wait
            // on each other; named accumulators stay in registers
            let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            macro_rules! tap {
                ($t:expr, $off:expr, $e:ident, $o:ident) => {{
                    let xw = _mm512_maskz_loadu_epi8(b.mask, xp.add($off) as *const i8);
                    let wt = wb.add($t * tap_bytes);
                    for j in 0..Q {
                        if j < nq {
                            let wv = _mm512_loadu_si512(wt.add(j * coutp * 4) as *const _);
                            let xq = _mm512_permutexvar_epi32(idx[j], xw);
                            if j % 2 == 0 {
                                $e = _mm512_dpbusd_epi32($e, xq, wv);
                            } else {
                                $o = _mm512_dpbusd_epi32($o, xq, wv);
                            }
                        }
                    }
                }};
            }
            let mut pairs = taps.chunks_exact(2);
            for pair in &mut pairs {
                tap!(pair[0].0, pair[0].1, a0, a1);
                tap!(pair[1].0, pair[1].1, a1, a0);
            }
            if let [(t, off)] = pairs.remainder() {
                tap!(*t, *off, a0, a1);
            }
            let dst = acc.add(p * coutp + bi * 16);
            let mut v = _mm512_add_epi32(a0, a1);
            if add {
                v = _mm512_add_epi32(v, _mm512_loadu_si512(dst as *const _));
            }
            _mm512_storeu_si512(dst as *mut _, v);
        }
    }
}
