//! x86 depthwise accumulation: runs of output pixels with every tap inside the input, taps in
//! pairs through `vpmaddwd` on raw u8 inputs and centered weights (exact: `x ≤ 255` and
//! `|w − zw| ≤ 255`, so a pair sum stays far inside i32); the input zero point enters once per
//! channel through the initial accumulator `−zx·Σ_t (w − zw)`. AVX2 takes 16 channels per block
//! (ymm); AVX-512 takes 32 (zmm), then one 16-channel block when 16 channels remain.

use std::arch::x86_64::*;

/// The channels the kernels handle: every whole 16 (they run only where that is all of them).
pub(crate) fn channels_done(c: usize) -> usize {
    c / 16 * 16
}

/// Appends the tap-pair weights of the channels `base..base + 8·lanes` (`lanes` 128-bit lanes):
/// for each pair of taps `(2p, 2p+1)` (the second zero past the last tap), `16·lanes` i16 in the
/// order `vpunpcklwd` / `vpunpckhwd` interleave two taps' channels: first, per lane `L`,
/// channels `base+8L .. +4` ("lo"), then per lane channels `base+8L+4 .. +8` ("hi").
fn push_block(w: &[i16], taps: usize, c: usize, base: usize, lanes: usize, out: &mut Vec<i16>) {
    let at = |t: usize, ch: usize| if t < taps { w[t * c + ch] } else { 0 };
    for p in 0..taps.div_ceil(2) {
        for half in 0..2 {
            for lane in 0..lanes {
                for j in 0..4 {
                    let ch = base + lane * 8 + half * 4 + j;
                    out.push(at(2 * p, ch));
                    out.push(at(2 * p + 1, ch));
                }
            }
        }
    }
}

/// Tap-pair weights for [`run_avx2`] from centered weights `w` (`[taps][c]`, i16).
pub(crate) fn pair_weights_avx2(w: &[i16], taps: usize, c: usize) -> Vec<i16> {
    let mut out = Vec::with_capacity(channels_done(c) * taps.div_ceil(2) * 2);
    for b in 0..c / 16 {
        push_block(w, taps, c, b * 16, 2, &mut out);
    }
    out
}

/// Tap-pair weights for [`run_avx512`]: 32-channel blocks, then one 16-channel block.
pub(crate) fn pair_weights_avx512(w: &[i16], taps: usize, c: usize) -> Vec<i16> {
    let mut out = Vec::with_capacity(channels_done(c) * taps.div_ceil(2) * 2);
    for b in 0..c / 32 {
        push_block(w, taps, c, b * 32, 4, &mut out);
    }
    if c % 32 >= 16 {
        push_block(w, taps, c, c / 32 * 32, 2, &mut out);
    }
    out
}

/// Checks the arguments of both kernels.
#[allow(clippy::too_many_arguments)]
fn check(
    x: &[u8],
    offs: &[usize],
    step: usize,
    count: usize,
    wp: &[i16],
    init: &[i32],
    c: usize,
    acc: &[i32],
) {
    assert!(!offs.is_empty() && count > 0, "no taps or no pixels");
    assert_eq!(channels_done(c), c, "channels must be a multiple of 16");
    assert!(
        wp.len() >= c * offs.len().div_ceil(2) * 2,
        "pair weights too short"
    );
    assert!(init.len() >= c, "initial accumulators too short");
    assert!(acc.len() >= count * c, "accumulators too short");
    let last = (count - 1).checked_mul(step).expect("pixel run too long");
    for &o in offs {
        let end = o.checked_add(last).and_then(|v| v.checked_add(c));
        assert!(end.is_some_and(|e| e <= x.len()), "tap outside the input");
    }
}

/// A run of `count` output pixels whose taps all lie inside the input, `c` channels (a multiple
/// of 16): tap `t` of pixel `p` reads `x[offs[t] + p·step ..][..c]`, and
/// `acc[p·c + ch] = init[ch] + Σ_t x[..][ch]·w[t][ch]` with `wp` from [`pair_weights_avx2`]
/// (`init = −zx·Σ_t w[t][ch]` folds the input zero point in). Safe: checks the CPU and every
/// length first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_avx2(
    x: &[u8],
    offs: &[usize],
    step: usize,
    count: usize,
    wp: &[i16],
    init: &[i32],
    c: usize,
    acc: &mut [i32],
) {
    assert!(
        super::has_avx2_fma(),
        "AVX2 depthwise kernel on a CPU without AVX2"
    );
    run_checked(run_avx2_impl, x, offs, step, count, wp, init, c, acc)
}

/// [`run_avx2`] with 32-channel AVX-512 blocks (then one 16-channel block), `wp` from
/// [`pair_weights_avx512`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_avx512(
    x: &[u8],
    offs: &[usize],
    step: usize,
    count: usize,
    wp: &[i16],
    init: &[i32],
    c: usize,
    acc: &mut [i32],
) {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 depthwise kernel on a CPU without AVX-512"
    );
    run_checked(run_avx512_impl, x, offs, step, count, wp, init, c, acc)
}

/// `run_avx2_impl` / `run_avx512_impl` (whose instructions the caller checked) after
/// checking every length.
type RunImpl =
    unsafe fn(*const u8, &[usize], usize, usize, *const i16, *const i32, usize, *mut i32);

#[allow(clippy::too_many_arguments)]
fn run_checked(
    f: RunImpl,
    x: &[u8],
    offs: &[usize],
    step: usize,
    count: usize,
    wp: &[i16],
    init: &[i32],
    c: usize,
    acc: &mut [i32],
) {
    check(x, offs, step, count, wp, init, c, acc);
    // SAFETY: the callers checked the CPU features of `f`; check() proved every read and write
    // in bounds (see run_avx2_impl's contract).
    unsafe {
        f(
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
/// AVX2 is available; for every tap `t` and pixel `p < count`, `x + offs[t] + p·step .. + c` is
/// readable; `wp` holds `c·pairs·2` i16, `init` `c` i32 and `acc` `count·c` writable i32.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2_impl(
    x: *const u8,
    offs: &[usize],
    step: usize,
    count: usize,
    wp: *const i16,
    init: *const i32,
    c: usize,
    acc: *mut i32,
) {
    let pairs = offs.len().div_ceil(2);
    for b in 0..c / 16 {
        let w = wp.add(b * pairs * 32);
        for p in 0..count {
            block16(x, offs, p * step, w, b * 16, init, acc.add(p * c));
        }
    }
}

/// # Safety
/// As [`run_avx2_impl`], with AVX-512F/BW available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn run_avx512_impl(
    x: *const u8,
    offs: &[usize],
    step: usize,
    count: usize,
    wp: *const i16,
    init: *const i32,
    c: usize,
    acc: *mut i32,
) {
    let pairs = offs.len().div_ceil(2);
    for b in 0..c / 32 {
        let w = wp.add(b * pairs * 64);
        for p in 0..count {
            block32(x, offs, p * step, w, b * 32, init, acc.add(p * c));
        }
    }
    if c % 32 >= 16 {
        let base = c / 32 * 32;
        let w = wp.add(base * pairs * 2);
        for p in 0..count {
            block16(x, offs, p * step, w, base, init, acc.add(p * c));
        }
    }
}

/// 16 channels from `base` of one pixel (`pix` added to every tap offset), accumulators
/// starting at `init`.
///
/// # Safety
/// AVX2 is available; every `x + off + pix + base .. +16` is readable, `w` points to `pairs·32`
/// i16, `init + base .. +16` is readable and `acc + base .. +16` writable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block16(
    x: *const u8,
    offs: &[usize],
    pix: usize,
    w: *const i16,
    base: usize,
    init: *const i32,
    acc: *mut i32,
) {
    let taps = offs.len();
    let x = x.add(pix + base);
    macro_rules! load {
        ($off:expr) => {
            _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add($off) as *const __m128i))
        };
    }
    // init in the lanes' channel order: lo holds channels 0-3 | 8-11, hi 4-7 | 12-15
    let i0 = _mm256_loadu_si256(init.add(base) as *const __m256i);
    let i1 = _mm256_loadu_si256(init.add(base + 8) as *const __m256i);
    let (mut lo, mut hi) = split16(i0, i1);
    for p in 0..taps.div_ceil(2) {
        let a0 = load!(offs[2 * p]);
        let a1 = if 2 * p + 1 < taps {
            load!(offs[2 * p + 1])
        } else {
            _mm256_setzero_si256()
        };
        let wl = _mm256_loadu_si256(w.add(p * 32) as *const __m256i);
        let wh = _mm256_loadu_si256(w.add(p * 32 + 16) as *const __m256i);
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, a1), wl));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, a1), wh));
    }
    _mm256_storeu_si256(
        acc.add(base) as *mut __m256i,
        _mm256_permute2x128_si256(lo, hi, 0x20),
    );
    _mm256_storeu_si256(
        acc.add(base + 8) as *mut __m256i,
        _mm256_permute2x128_si256(lo, hi, 0x31),
    );
}

/// Channels 0-7 (`i0`) and 8-15 (`i1`) of i32 values as the (lo, hi) lane order of
/// [`block16`]: lo = 0-3 | 8-11, hi = 4-7 | 12-15 (the inverse of its final permutes).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn split16(i0: __m256i, i1: __m256i) -> (__m256i, __m256i) {
    (
        _mm256_permute2x128_si256(i0, i1, 0x20),
        _mm256_permute2x128_si256(i0, i1, 0x31),
    )
}

/// 32 channels from `base` of one pixel.
///
/// # Safety
/// AVX-512F/BW is available; every `x + off + pix + base .. +32` is readable, `w` points to
/// `pairs·64` i16, `init + base .. +32` is readable and `acc + base .. +32` writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block32(
    x: *const u8,
    offs: &[usize],
    pix: usize,
    w: *const i16,
    base: usize,
    init: *const i32,
    acc: *mut i32,
) {
    let taps = offs.len();
    let x = x.add(pix + base);
    macro_rules! load {
        ($off:expr) => {
            _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add($off) as *const __m256i))
        };
    }
    // init in the lanes' channel order (the inverse of the final shuffles): lane L of lo holds
    // channels 8L..8L+4, of hi 8L+4..8L+8
    let i0 = _mm512_loadu_si512(init.add(base) as *const _); // channels 0-15
    let i1 = _mm512_loadu_si512(init.add(base + 16) as *const _); // channels 16-31
                                                                  // i0 lanes: [0-3, 4-7, 8-11, 12-15]; i1: [16-19, 20-23, 24-27, 28-31]
    let mut lo = _mm512_shuffle_i64x2::<0b10_00_10_00>(i0, i1); // 0-3 8-11 16-19 24-27
    let mut hi = _mm512_shuffle_i64x2::<0b11_01_11_01>(i0, i1); // 4-7 12-15 20-23 28-31
    for p in 0..taps.div_ceil(2) {
        let a0 = load!(offs[2 * p]);
        let a1 = if 2 * p + 1 < taps {
            load!(offs[2 * p + 1])
        } else {
            _mm512_setzero_si512()
        };
        let wl = _mm512_loadu_si512(w.add(p * 64) as *const _);
        let wh = _mm512_loadu_si512(w.add(p * 64 + 32) as *const _);
        lo = _mm512_add_epi32(lo, _mm512_madd_epi16(_mm512_unpacklo_epi16(a0, a1), wl));
        hi = _mm512_add_epi32(hi, _mm512_madd_epi16(_mm512_unpackhi_epi16(a0, a1), wh));
    }
    let t0 = _mm512_shuffle_i64x2::<0b01_00_01_00>(lo, hi); // lo.0 lo.1 hi.0 hi.1
    let t1 = _mm512_shuffle_i64x2::<0b11_10_11_10>(lo, hi); // lo.2 lo.3 hi.2 hi.3
    _mm512_storeu_si512(
        acc.add(base) as *mut _,
        _mm512_shuffle_i64x2::<0b11_01_10_00>(t0, t0),
    );
    _mm512_storeu_si512(
        acc.add(base + 16) as *mut _,
        _mm512_shuffle_i64x2::<0b11_01_10_00>(t1, t1),
    );
}
