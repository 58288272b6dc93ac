//! x86 depthwise accumulation: one output pixel with every tap inside the input, taps in pairs
//! through `vpmaddwd` (exact: `(x − zx)` and `(w − zw)` are in `[−255, 255]`, so a pair sum stays
//! far inside i32). AVX2 takes 16 channels per block (ymm); AVX-512 takes 32 (zmm), then one
//! 16-channel AVX2 block when at least 16 channels remain.

use std::arch::x86_64::*;

/// The channels [`pixel_pairs_avx2`] / [`pixel_pairs_avx512`] handle: every whole 16 (the rest
/// is the caller's portable loop).
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

/// Tap-pair weights for [`pixel_pairs_avx2`] from centered weights `w` (`[taps][c]`, i16).
pub(crate) fn pair_weights_avx2(w: &[i16], taps: usize, c: usize) -> Vec<i16> {
    let mut out = Vec::with_capacity(channels_done(c) * taps.div_ceil(2) * 2);
    for b in 0..c / 16 {
        push_block(w, taps, c, b * 16, 2, &mut out);
    }
    out
}

/// Tap-pair weights for [`pixel_pairs_avx512`]: 32-channel blocks, then one 16-channel block.
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

/// Checks the arguments of both pixel kernels.
fn check(x: &[u8], offs: &[usize], wp: &[i16], c: usize, acc: &[i32]) {
    let done = channels_done(c);
    assert!(!offs.is_empty(), "no taps");
    assert!(
        wp.len() >= done * offs.len().div_ceil(2) * 2,
        "pair weights too short"
    );
    assert!(acc.len() >= done, "accumulators too short");
    for &o in offs {
        assert!(o + done <= x.len(), "tap outside the input");
    }
}

/// `acc[ch] = Σ_t (x[offs[t] + ch] − zx)·w[t][ch]` for the channels [`channels_done`] counts,
/// with `wp` from [`pair_weights_avx2`]. Safe: checks the CPU and every length first.
pub(crate) fn pixel_pairs_avx2(
    x: &[u8],
    offs: &[usize],
    wp: &[i16],
    c: usize,
    zx: u8,
    acc: &mut [i32],
) {
    assert!(
        super::has_avx2_fma(),
        "AVX2 depthwise kernel on a CPU without AVX2"
    );
    check(x, offs, wp, c, acc);
    let pairs = offs.len().div_ceil(2);
    for b in 0..c / 16 {
        // SAFETY: AVX2 checked; every tap reads channels b*16..b*16+16 < done of its pixel, the
        // block's weights are wp[b*pairs*32..][..pairs*32] and acc holds `done` values (checked).
        unsafe {
            block16(
                x.as_ptr(),
                offs,
                wp.as_ptr().add(b * pairs * 32),
                b * 16,
                zx,
                acc.as_mut_ptr(),
            )
        }
    }
}

/// [`pixel_pairs_avx2`] with 32-channel AVX-512 blocks, `wp` from [`pair_weights_avx512`].
pub(crate) fn pixel_pairs_avx512(
    x: &[u8],
    offs: &[usize],
    wp: &[i16],
    c: usize,
    zx: u8,
    acc: &mut [i32],
) {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 depthwise kernel on a CPU without AVX-512"
    );
    check(x, offs, wp, c, acc);
    let pairs = offs.len().div_ceil(2);
    for b in 0..c / 32 {
        // SAFETY: AVX-512 checked; reads channels b*32..b*32+32 ≤ done, weights
        // wp[b*pairs*64..][..pairs*64], writes acc[b*32..b*32+32] (lengths checked).
        unsafe {
            block32(
                x.as_ptr(),
                offs,
                wp.as_ptr().add(b * pairs * 64),
                b * 32,
                zx,
                acc.as_mut_ptr(),
            )
        }
    }
    if c % 32 >= 16 {
        let base = c / 32 * 32;
        // SAFETY: as above for the 16 channels base..base+16 ≤ done (AVX-512 implies AVX2).
        unsafe {
            block16(
                x.as_ptr(),
                offs,
                wp.as_ptr().add(base * pairs * 2),
                base,
                zx,
                acc.as_mut_ptr(),
            )
        }
    }
}

/// 16 channels from `base`.
///
/// # Safety
/// AVX2 is available; every `x + off + base .. +16` is readable, `w` points to `pairs·32` i16,
/// `acc + base .. +16` is writable.
#[target_feature(enable = "avx2")]
unsafe fn block16(x: *const u8, offs: &[usize], w: *const i16, base: usize, zx: u8, acc: *mut i32) {
    let taps = offs.len();
    let z = _mm256_set1_epi16(zx as i16);
    macro_rules! load {
        ($off:expr) => {
            _mm256_sub_epi16(
                _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add($off + base) as *const __m128i)),
                z,
            )
        };
    }
    let mut lo = _mm256_setzero_si256();
    let mut hi = _mm256_setzero_si256();
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
    // lo holds channels 0-3 | 8-11, hi 4-7 | 12-15
    _mm256_storeu_si256(
        acc.add(base) as *mut __m256i,
        _mm256_permute2x128_si256(lo, hi, 0x20),
    );
    _mm256_storeu_si256(
        acc.add(base + 8) as *mut __m256i,
        _mm256_permute2x128_si256(lo, hi, 0x31),
    );
}

/// 32 channels from `base`.
///
/// # Safety
/// AVX-512F/BW is available; every `x + off + base .. +32` is readable, `w` points to
/// `pairs·64` i16, `acc + base .. +32` is writable.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block32(x: *const u8, offs: &[usize], w: *const i16, base: usize, zx: u8, acc: *mut i32) {
    let taps = offs.len();
    let z = _mm512_set1_epi16(zx as i16);
    macro_rules! load {
        ($off:expr) => {
            _mm512_sub_epi16(
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add($off + base) as *const __m256i)),
                z,
            )
        };
    }
    let mut lo = _mm512_setzero_si512();
    let mut hi = _mm512_setzero_si512();
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
    // lane L of lo holds channels 8L..8L+4, of hi 8L+4..8L+8
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
