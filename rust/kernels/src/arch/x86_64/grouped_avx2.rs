//! Grouped convolution kernels on ymm (AVX2, AVX-VNNI): the zmm kernel's scheme
//! (`grouped_vnni.rs`) with blocks of 8 output channels and 32-byte input windows. AVX-VNNI
//! adds each lane's 4 products with `vpdpbusd`; AVX2, exact for any u8 input, splits the
//! permuted inputs into even and odd bytes (as i16) and adds both `vpmaddwd` with the matching
//! weight pairs.

use crate::arch::grouped::{GroupedBlock, GroupedWeights};
use std::arch::x86_64::*;

/// Checks a run (as the zmm kernel) and returns the plan's quads and padded outputs.
#[allow(clippy::too_many_arguments)]
fn check(
    x: &[u8],
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w_len: usize,
    w_per_quad: usize,
    n_taps: usize,
    acc: &[i32],
) -> (usize, usize) {
    // accumulators per pixel: whole blocks; weights per tap and quad: outputs rounded up to 16
    let coutp = blocks.len() * 8;
    let wstride = coutp.div_ceil(16) * 16;
    assert!(count > 0, "no pixels");
    let need = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    assert!(
        need(&[count, coutp]).is_some_and(|n| acc.len() >= n),
        "accumulators too short"
    );
    let quads = blocks.first().map_or(0, |b| b.idx.len());
    assert!(blocks.iter().all(|b| b.idx.len() == quads), "ragged plan");
    assert!(
        need(&[n_taps, quads, wstride, w_per_quad]).is_some_and(|n| w_len >= n),
        "weights too short"
    );
    let last = (count - 1).checked_mul(step).expect("pixel run too long");
    // each window load starts inside x and reads 32 bytes when they are inside, else a copy of
    // the bytes that are (see `window`)
    let far = blocks.iter().map(|b| b.window).max().unwrap_or(0);
    for &(t, off) in taps {
        assert!(t < n_taps, "tap index out of range");
        let start = off.checked_add(last).and_then(|v| v.checked_add(far));
        assert!(start.is_some_and(|e| e < x.len()), "tap outside the input");
    }
    (quads, coutp)
}

/// The 32 bytes of `x` at `at`, or those inside `x` (zeros after) near its end.
///
/// # Safety
/// AVX available; `at < len` (`x` holds `len` bytes).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn window(x: *const u8, len: usize, at: usize) -> __m256i {
    if at + 32 <= len {
        _mm256_loadu_si256(x.add(at) as *const _)
    } else {
        let mut tmp = [0u8; 32];
        std::ptr::copy_nonoverlapping(x.add(at), tmp.as_mut_ptr(), len - at);
        _mm256_loadu_si256(tmp.as_ptr() as *const _)
    }
}

/// AVX2 entry (exact for any u8 input; weights in [`GroupedWeights::Split16`] form).
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_avx2(
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
        super::has_avx2_fma(),
        "AVX2 grouped kernel on a CPU without AVX2"
    );
    let GroupedWeights::Split16(w) = w else {
        panic!("the AVX2 grouped kernel reads split i16 weights");
    };
    let (quads, coutp) = check(x, taps, step, count, blocks, w.len(), 4, n_taps, acc);
    // SAFETY: AVX2 checked; loads stay inside x (`window`), w and acc (checked above): a
    // window starts at a pixel's first channel plus the block's offset, below the pixel's end.
    unsafe {
        avx2_impl(
            x.as_ptr(),
            x.len(),
            taps,
            step,
            count,
            blocks,
            w.as_ptr(),
            quads,
            coutp,
            acc.as_mut_ptr(),
        )
    }
}

/// # Safety
/// As checked by [`accumulate_avx2`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn avx2_impl(
    x: *const u8,
    len: usize,
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: *const i16,
    quads: usize,
    coutp: usize,
    acc: *mut i32,
) {
    match quads {
        1 => avx2_q::<1>(x, len, taps, step, count, blocks, w, quads, coutp, acc),
        2 => avx2_q::<2>(x, len, taps, step, count, blocks, w, quads, coutp, acc),
        3 => avx2_q::<3>(x, len, taps, step, count, blocks, w, quads, coutp, acc),
        4 => avx2_q::<4>(x, len, taps, step, count, blocks, w, quads, coutp, acc),
        // a window holds 8 dwords: a plan never has more quads
        _ => avx2_q::<8>(x, len, taps, step, count, blocks, w, quads, coutp, acc),
    }
}

/// [`avx2_impl`] with at most `Q` quads: the block's permutations stay in registers.
///
/// # Safety
/// As [`avx2_impl`], `quads ≤ Q`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn avx2_q<const Q: usize>(
    x: *const u8,
    len: usize,
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: *const i16,
    quads: usize,
    coutp: usize,
    acc: *mut i32,
) {
    let low = _mm256_set1_epi32(0x00FF_00FF);
    let wstride = coutp.div_ceil(16) * 16;
    let nq = quads.min(Q);
    for (bi, b) in blocks.iter().enumerate() {
        let mut idx = [_mm256_setzero_si256(); Q];
        for (q, v) in idx.iter_mut().enumerate().take(nq) {
            *v = _mm256_loadu_si256(b.idx[q].as_ptr() as *const _);
        }
        let wb = w.add(bi * 16);
        for p in 0..count {
            // even and odd products in two chains
            let (mut a, mut a_odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for &(t, off) in taps {
                let xw = window(x, len, off + p * step + b.window);
                let wt = wb.add(t * quads * 4 * wstride);
                for (q, &iq) in idx.iter().enumerate().take(nq) {
                    let xq = _mm256_permutevar8x32_epi32(xw, iq);
                    let even = _mm256_and_si256(xq, low);
                    let odd = _mm256_srli_epi16::<8>(xq);
                    let wq = wt.add(q * 4 * wstride);
                    let we = _mm256_loadu_si256(wq as *const _);
                    let wo = _mm256_loadu_si256(wq.add(wstride * 2) as *const _);
                    a = _mm256_add_epi32(a, _mm256_madd_epi16(even, we));
                    a_odd = _mm256_add_epi32(a_odd, _mm256_madd_epi16(odd, wo));
                }
            }
            _mm256_storeu_si256(
                acc.add(p * coutp + bi * 8) as *mut _,
                _mm256_add_epi32(a, a_odd),
            );
        }
    }
}

/// AVX-VNNI entry (weights in [`GroupedWeights::Bytes`] form).
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_avxvnni(
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
        super::has_avxvnni(),
        "AVX-VNNI grouped kernel on a CPU without it"
    );
    let GroupedWeights::Bytes(w) = w else {
        panic!("the AVX-VNNI grouped kernel reads byte weights");
    };
    let (quads, coutp) = check(x, taps, step, count, blocks, w.len(), 4, n_taps, acc);
    // SAFETY: as in `accumulate_avx2`, with AVX-VNNI checked.
    unsafe {
        avxvnni_impl(
            x.as_ptr(),
            x.len(),
            taps,
            step,
            count,
            blocks,
            w.as_ptr(),
            quads,
            coutp,
            acc.as_mut_ptr(),
        )
    }
}

/// # Safety
/// As checked by [`accumulate_avxvnni`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avxvnni_impl(
    x: *const u8,
    len: usize,
    taps: &[(usize, usize)],
    step: usize,
    count: usize,
    blocks: &[GroupedBlock],
    w: *const i8,
    quads: usize,
    coutp: usize,
    acc: *mut i32,
) {
    let wstride = coutp.div_ceil(16) * 16;
    for (bi, b) in blocks.iter().enumerate() {
        for p in 0..count {
            let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for (i, &(t, off)) in taps.iter().enumerate() {
                let xw = window(x, len, off + p * step + b.window);
                for q in 0..quads {
                    let idx = _mm256_loadu_si256(b.idx[q].as_ptr() as *const _);
                    let xq = _mm256_permutevar8x32_epi32(xw, idx);
                    let wv = _mm256_loadu_si256(
                        w.add(((t * quads + q) * wstride + bi * 8) * 4) as *const _
                    );
                    if (i + q) % 2 == 0 {
                        a0 = _mm256_dpbusd_avx_epi32(a0, xq, wv);
                    } else {
                        a1 = _mm256_dpbusd_avx_epi32(a1, xq, wv);
                    }
                }
            }
            _mm256_storeu_si256(
                acc.add(p * coutp + bi * 8) as *mut _,
                _mm256_add_epi32(a0, a1),
            );
        }
    }
}
