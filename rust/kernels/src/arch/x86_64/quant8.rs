//! The 8-bit quantize rule on AVX2, 32 values per step: the same values as the scalar
//! `quantize_one_8bit` (multiply by `fl(1/scale)`, NaN to the top, clamp to one past the
//! bounds, round half to even — `cvtps2dq` in the default rounding mode equals the scalar
//! trick for these magnitudes — clamp to the bounds, add the zero point).

use std::arch::x86_64::*;

/// Quantizes the longest prefix of `x` that is a multiple of 32 into `out` (quint8: `lo`,
/// `hi` are `qmin − zp`, `qmax − zp` with `0 ≤ qmin ≤ qmax ≤ 255`); returns its length, the
/// rest left to the caller. Safe: checks the CPU and the lengths.
pub(crate) fn quantize_u8(x: &[f32], inv: f32, lo: f32, hi: f32, zp: i32, out: &mut [u8]) -> usize {
    if !super::has_avx2_fma() {
        return 0;
    }
    let n = x.len().min(out.len()) / 32 * 32;
    // bounds that keep every value in a byte after the zero point (the callers validated them)
    let ok = (lo as i32 + zp) >= 0 && (hi as i32 + zp) <= 255 && lo <= hi;
    if n == 0 || !ok {
        return 0;
    }
    // SAFETY: AVX2 checked; the impl reads x[..n] and writes out[..n], both in bounds.
    unsafe { quantize_u8_impl(x.as_ptr(), n, inv, lo, hi, zp, out.as_mut_ptr()) };
    n
}

/// # Safety
/// AVX2 available; `x` holds `n` readable floats and `out` `n` writable bytes, `n % 32 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn quantize_u8_impl(
    x: *const f32,
    n: usize,
    inv: f32,
    lo: f32,
    hi: f32,
    zp: i32,
    out: *mut u8,
) {
    let vinv = _mm256_set1_ps(inv);
    let (lo1, hi1, vhi) = (
        _mm256_set1_ps(lo - 1.0),
        _mm256_set1_ps(hi + 1.0),
        _mm256_set1_ps(hi),
    );
    let (loi, hii, vzp) = (
        _mm256_set1_epi32(lo as i32),
        _mm256_set1_epi32(hi as i32),
        _mm256_set1_epi32(zp),
    );
    // packs then packus leave dwords as a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    macro_rules! q {
        ($p:expr) => {{
            let v = _mm256_mul_ps(_mm256_loadu_ps($p), vinv);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            let c = _mm256_min_ps(_mm256_max_ps(v, lo1), hi1);
            let r = _mm256_cvtps_epi32(_mm256_blendv_ps(c, vhi, nan));
            _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(r, loi), hii), vzp)
        }};
    }
    let mut i = 0;
    while i < n {
        let p = x.add(i);
        let ab = _mm256_packs_epi32(q!(p), q!(p.add(8)));
        let cd = _mm256_packs_epi32(q!(p.add(16)), q!(p.add(24)));
        let v = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
        _mm256_storeu_si256(out.add(i) as *mut _, v);
        i += 32;
    }
}

/// Interleaves three planes into pixels (`dst[3p + ch] = planes[ch][p]`) for the longest prefix
/// that is a multiple of 16 pixels; returns its pixel count, the rest left to the caller. Safe:
/// checks the CPU and the lengths.
pub(crate) fn interleave3(r: &[u8], g: &[u8], b: &[u8], dst: &mut [u8]) -> usize {
    if !super::has_avx2_fma() {
        return 0;
    }
    let n = r.len().min(g.len()).min(b.len()).min(dst.len() / 3) / 16 * 16;
    if n == 0 {
        return 0;
    }
    // SAFETY: AVX2 (hence SSSE3) checked; the impl reads [..n] of each plane and writes
    // dst[..3n], all in bounds.
    unsafe { interleave3_impl(r.as_ptr(), g.as_ptr(), b.as_ptr(), n, dst.as_mut_ptr()) };
    n
}

/// `pshufb` masks: for output block `o` (16 bytes) and plane `ch`, byte `j` takes pixel
/// `(16o + j) / 3` of the plane where `(16o + j) % 3 == ch`, else zero (0x80).
const fn interleave3_masks() -> [[[u8; 16]; 3]; 3] {
    let mut m = [[[0x80u8; 16]; 3]; 3];
    let mut o = 0;
    while o < 3 {
        let mut j = 0;
        while j < 16 {
            let t = 16 * o + j;
            m[o][t % 3][j] = (t / 3) as u8;
            j += 1;
        }
        o += 1;
    }
    m
}

/// # Safety
/// AVX2 available; each plane holds `n` readable bytes, `dst` `3n` writable; `n % 16 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn interleave3_impl(r: *const u8, g: *const u8, b: *const u8, n: usize, dst: *mut u8) {
    const M: [[[u8; 16]; 3]; 3] = interleave3_masks();
    let mut m = [[_mm_setzero_si128(); 3]; 3];
    for (o, mo) in m.iter_mut().enumerate() {
        for (ch, v) in mo.iter_mut().enumerate() {
            *v = _mm_loadu_si128(M[o][ch].as_ptr() as *const _);
        }
    }
    let mut p = 0;
    while p < n {
        let (vr, vg, vb) = (
            _mm_loadu_si128(r.add(p) as *const _),
            _mm_loadu_si128(g.add(p) as *const _),
            _mm_loadu_si128(b.add(p) as *const _),
        );
        for (o, mo) in m.iter().enumerate() {
            let v = _mm_or_si128(
                _mm_or_si128(_mm_shuffle_epi8(vr, mo[0]), _mm_shuffle_epi8(vg, mo[1])),
                _mm_shuffle_epi8(vb, mo[2]),
            );
            _mm_storeu_si128(dst.add(3 * p + 16 * o) as *mut _, v);
        }
        p += 16;
    }
}
