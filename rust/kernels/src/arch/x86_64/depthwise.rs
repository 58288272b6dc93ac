//! AVX2 depthwise accumulation: one output pixel with every tap inside the input, 16 channels
//! at a time, taps in pairs through `vpmaddwd` (exact: `(x − zx)` and `(w − zw)` are in
//! `[−255, 255]`, a pair sum stays far inside i32).

use std::arch::x86_64::*;

/// Channels per block.
pub(crate) const CB: usize = 16;

/// Tap-pair weights for [`pixel_pairs`], built from centered weights `w` (`[taps][c]`, i16):
/// for each 16-channel block, for each pair of taps `(2p, 2p+1)` (the second zero past the
/// last tap), 32 i16 in the order `vpunpcklwd` / `vpunpckhwd` interleave 16 channels of two
/// taps: per 128-bit lane `L`, channels `8L..8L+4` then `8L+4..8L+8`.
pub(crate) fn pair_weights(w: &[i16], taps: usize, c: usize) -> Vec<i16> {
    let pairs = taps.div_ceil(2);
    let blocks = c / CB;
    let mut out = vec![0i16; blocks * pairs * 2 * CB];
    let at = |t: usize, ch: usize| if t < taps { w[t * c + ch] } else { 0 };
    for b in 0..blocks {
        for p in 0..pairs {
            let dst = &mut out[(b * pairs + p) * 2 * CB..][..2 * CB];
            let mut i = 0;
            for half in 0..2 {
                for lane in 0..2 {
                    for j in 0..4 {
                        let ch = b * CB + lane * 8 + half * 4 + j;
                        dst[i] = at(2 * p, ch);
                        dst[i + 1] = at(2 * p + 1, ch);
                        i += 2;
                    }
                }
            }
        }
    }
    out
}

/// `acc[ch] = Σ_t (x[offs[t] + ch] − zx)·w[t][ch]` for the channels of whole 16-channel blocks
/// (`c / 16 · 16`), with `wp` from [`pair_weights`] for `offs.len()` taps. Safe: checks the CPU
/// and every length first.
pub(crate) fn pixel_pairs(x: &[u8], offs: &[usize], wp: &[i16], c: usize, zx: u8, acc: &mut [i32]) {
    let taps = offs.len();
    let pairs = taps.div_ceil(2);
    let blocks = c / CB;
    assert!(
        super::has_avx2_fma(),
        "AVX2 depthwise kernel on a CPU without AVX2"
    );
    assert!(taps > 0, "no taps");
    assert!(
        wp.len() >= blocks * pairs * 2 * CB,
        "pair weights too short"
    );
    assert!(acc.len() >= blocks * CB, "accumulators too short");
    for &o in offs {
        assert!(o + blocks * CB <= x.len(), "tap outside the input");
    }
    // SAFETY: AVX2 checked above; every tap reads `blocks*16` bytes from its offset (checked),
    // `wp` holds `blocks*pairs*32` i16 and `acc` `blocks*16` i32 (checked).
    unsafe { pixel_pairs_avx2(x.as_ptr(), offs, wp.as_ptr(), blocks, zx, acc.as_mut_ptr()) }
}

/// # Safety
/// AVX2 is available; see [`pixel_pairs`] for the lengths.
#[target_feature(enable = "avx2")]
unsafe fn pixel_pairs_avx2(
    x: *const u8,
    offs: &[usize],
    wp: *const i16,
    blocks: usize,
    zx: u8,
    acc: *mut i32,
) {
    let taps = offs.len();
    let pairs = taps.div_ceil(2);
    let z = _mm256_set1_epi16(zx as i16);
    macro_rules! load {
        ($off:expr, $b:expr) => {
            _mm256_sub_epi16(
                _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add($off + $b * CB) as *const __m128i)),
                z,
            )
        };
    }
    for b in 0..blocks {
        let mut lo = _mm256_setzero_si256();
        let mut hi = _mm256_setzero_si256();
        let w = wp.add(b * pairs * 2 * CB);
        for p in 0..pairs {
            let a0 = load!(offs[2 * p], b);
            let a1 = if 2 * p + 1 < taps {
                load!(offs[2 * p + 1], b)
            } else {
                _mm256_setzero_si256()
            };
            let wl = _mm256_loadu_si256(w.add(p * 2 * CB) as *const __m256i);
            let wh = _mm256_loadu_si256(w.add(p * 2 * CB + CB) as *const __m256i);
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, a1), wl));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, a1), wh));
        }
        // lo holds channels 0-3 | 8-11, hi 4-7 | 12-15
        _mm256_storeu_si256(
            acc.add(b * CB) as *mut __m256i,
            _mm256_permute2x128_si256(lo, hi, 0x20),
        );
        _mm256_storeu_si256(
            acc.add(b * CB + 8) as *mut __m256i,
            _mm256_permute2x128_si256(lo, hi, 0x31),
        );
    }
}
