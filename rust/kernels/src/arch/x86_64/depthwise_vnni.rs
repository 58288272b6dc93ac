//! AVX-512 VNNI depthwise lines: `vpdpbusd` over four kernel rows at once.
//!
//! A line of output pixels reads, per kernel row, one input row. Four such rows (a "quad") are
//! interleaved once per line into a column buffer where every channel holds its four row values
//! side by side: `quad[(col·cs + ch)·4 + r]`, columns padded with the input zero point on both
//! sides. An output pixel then needs, per quad and per kernel column, one `vpdpbusd` per 16
//! channels (u8 inputs × i8 centered weights, summed exactly in i32) with both operands straight
//! from memory, and no shuffle at all: the interleave is paid once per input column instead of
//! once per tap. Padding (columns and rows outside the input, read as the zero point) cancels
//! against the initial accumulator `−zx·Σ_t (w − zw)`, so border pixels take the same path.
//! Used when every centered weight `w − zw` fits in i8 (always so for symmetric weights).

use crate::arch::depthwise::LineGeometry;
use std::arch::x86_64::*;

/// Channels per column of a quad buffer: `c` rounded up to 64 (one zmm per 16 of them).
pub(crate) fn column_stride(c: usize) -> usize {
    c.div_ceil(64) * 64
}

/// Line weights from centered weights `w` (`[rows·kw][c]`, i16, taps row-major): `[kw][quad][cs][4]`
/// i8, row `4·quad + r` of the kernel in byte `r`, zeros past the last row and channel. `None` if
/// a centered weight does not fit in i8.
pub(crate) fn line_weights(w: &[i16], rows: usize, kw: usize, c: usize) -> Option<Vec<i8>> {
    if w.len() != rows * kw * c || w.iter().any(|&v| i8::try_from(v).is_err()) {
        return None;
    }
    let (quads, cs) = (rows.div_ceil(4), column_stride(c));
    let mut out = vec![0i8; kw * quads * cs * 4];
    for row in 0..rows {
        for k in 0..kw {
            for ch in 0..c {
                out[((k * quads + row / 4) * cs + ch) * 4 + row % 4] =
                    w[(row * kw + k) * c + ch] as i8;
            }
        }
    }
    Some(out)
}

/// Fills one quad buffer `out` (`width·cs·4` bytes, `cs = column_stride(c)`): column `col` holds
/// input column `col − lead` of the four `rows` (channels-last rows of `c` channels; `None`: a
/// row of zero points), and the zero point `zx` where that column is outside the row; channels
/// past `c` hold zeros (their weights are zero).
pub(crate) fn build_quad(rows: &[Option<&[u8]>; 4], c: usize, lead: usize, zx: u8, out: &mut [u8]) {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 depthwise kernel on a CPU without AVX-512"
    );
    assert!(c > 0, "no channels");
    let cs = column_stride(c);
    assert_eq!(out.len() % (cs * 4), 0, "quad buffer is not whole columns");
    let width = out.len() / (cs * 4);
    let w_in = rows
        .iter()
        .flatten()
        .map(|r| r.len() / c)
        .next()
        .unwrap_or(0);
    for r in rows.iter().flatten() {
        assert_eq!(
            r.len(),
            w_in * c,
            "quad rows differ in length or are not whole pixels"
        );
    }
    // SAFETY: AVX-512F/BW checked above; the impl reads rows[r][col·c .. col·c + c] for
    // col < w_in (masked past c) and writes out[.. width·cs·4], all checked above.
    unsafe { build_quad_impl(rows, c, w_in, lead, zx, width, out.as_mut_ptr()) }
}

/// # Safety
/// AVX-512F/BW available; every `Some` row holds `w_in·c` bytes; `out` holds `width·cs·4` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn build_quad_impl(
    rows: &[Option<&[u8]>; 4],
    c: usize,
    w_in: usize,
    lead: usize,
    zx: u8,
    width: usize,
    out: *mut u8,
) {
    let cs = column_stride(c);
    let zv = _mm512_set1_epi8(zx as i8);
    // dword 4i+k of a row ← dword 4k+i: lane i then holds channels 4i.., 16+4i.., 32+4i.., 48+4i..
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for col in 0..width {
        let dst = out.add(col * cs * 4);
        let inside = col >= lead && col - lead < w_in;
        for g in 0..cs / 64 {
            let d = dst.add(g * 256);
            if !inside {
                for j in 0..4 {
                    _mm512_storeu_si512(d.add(j * 64) as *mut _, zv);
                }
                continue;
            }
            let n = (c - g * 64).min(64);
            let mask: u64 = if n == 64 { !0 } else { (1u64 << n) - 1 };
            let at = (col - lead) * c + g * 64;
            macro_rules! load {
                ($r:expr) => {
                    match $r {
                        Some(row) => _mm512_permutexvar_epi32(
                            idx,
                            _mm512_maskz_loadu_epi8(mask, row.as_ptr().add(at) as *const i8),
                        ),
                        None => zv,
                    }
                };
            }
            let (a, b, cc, dd) = (
                load!(rows[0]),
                load!(rows[1]),
                load!(rows[2]),
                load!(rows[3]),
            );
            let ab_lo = _mm512_unpacklo_epi8(a, b);
            let ab_hi = _mm512_unpackhi_epi8(a, b);
            let cd_lo = _mm512_unpacklo_epi8(cc, dd);
            let cd_hi = _mm512_unpackhi_epi8(cc, dd);
            _mm512_storeu_si512(d as *mut _, _mm512_unpacklo_epi16(ab_lo, cd_lo));
            _mm512_storeu_si512(d.add(64) as *mut _, _mm512_unpackhi_epi16(ab_lo, cd_lo));
            _mm512_storeu_si512(d.add(128) as *mut _, _mm512_unpacklo_epi16(ab_hi, cd_hi));
            _mm512_storeu_si512(d.add(192) as *mut _, _mm512_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
}

/// `acc[p·cs + ch] = init[ch] + Σ_q Σ_k Σ_r quads[q][((p·stride + k·dilation)·cs + ch)·4 + r] ·
/// w[((k·nq + q)·cs + ch)·4 + r]` for `p < count` and `ch` below `c` rounded up to 16
/// (`cs = column_stride(c)`, `w` from [`line_weights`], `nq = quads.len()`); exact i32.
pub(crate) fn accumulate(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
    acc: &mut [i32],
) {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 VNNI depthwise kernel on a CPU without it"
    );
    let cs = column_stride(g.c);
    assert!(
        g.c > 0 && g.kw > 0 && g.count > 0 && !quads.is_empty(),
        "empty depthwise line"
    );
    let span = (g.count - 1)
        .checked_mul(g.stride)
        .and_then(|v| v.checked_add((g.kw - 1).checked_mul(g.dilation)?))
        .expect("depthwise line too long");
    for q in quads {
        assert!(q.len() >= (span + 1) * cs * 4, "quad buffer too short");
    }
    assert!(
        w.len() >= g.kw * quads.len() * cs * 4,
        "line weights too short"
    );
    assert!(init.len() >= cs, "initial accumulators too short");
    assert!(acc.len() >= g.count * cs, "accumulators too short");
    let ptrs: Vec<*const u8> = quads.iter().map(|q| q.as_ptr()).collect();
    // SAFETY: AVX-512 VNNI checked above; every read below is within the lengths checked above:
    // pixel p, column k reads quad column p·stride + k·dilation ≤ span, channels < cs.
    unsafe { accumulate_impl(&ptrs, g, w.as_ptr(), init.as_ptr(), acc.as_mut_ptr()) }
}

/// # Safety
/// As checked by [`accumulate`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn accumulate_impl(
    quads: &[*const u8],
    g: &LineGeometry,
    w: *const i8,
    init: *const i32,
    acc: *mut i32,
) {
    // (quad column offset, weights) of every (kernel column, quad), in bytes from the line start
    let cs = column_stride(g.c);
    let nq = quads.len();
    let mut taps: Vec<(*const u8, *const i8)> = Vec::with_capacity(g.kw * nq);
    for k in 0..g.kw {
        for (q, &qp) in quads.iter().enumerate() {
            taps.push((
                qp.add(k * g.dilation * cs * 4),
                w.add((k * nq + q) * cs * 4),
            ));
        }
    }
    for g0 in (0..g.c).step_by(64) {
        // about 12 accumulators: pixels × 16-channel blocks
        match (g.c - g0).min(64).div_ceil(16) {
            4 => group::<4, 3>(&taps, g, init, acc, g0),
            3 => group::<3, 4>(&taps, g, init, acc, g0),
            2 => group::<2, 6>(&taps, g, init, acc, g0),
            _ => group::<1, 8>(&taps, g, init, acc, g0),
        }
    }
}

/// Channels `g0 .. g0 + 16·S` of every pixel of the line, `P` pixels at a time (each weight
/// load serves `P` `vpdpbusd`), then one at a time.
///
/// # Safety
/// As [`accumulate_impl`]; `taps` from it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn group<const S: usize, const P: usize>(
    taps: &[(*const u8, *const i8)],
    g: &LineGeometry,
    init: *const i32,
    acc: *mut i32,
    g0: usize,
) {
    let cs = column_stride(g.c);
    let mut iv = [_mm512_setzero_si512(); S];
    for (j, v) in iv.iter_mut().enumerate() {
        *v = _mm512_loadu_si512(init.add(g0 + 16 * j) as *const _);
    }
    let step = g.stride * cs * 4;
    let mut p = 0;
    while p + P <= g.count {
        let mut a = [iv; P];
        let base = p * step + g0 * 4;
        for &(xp, wp) in taps {
            let xp = xp.add(base);
            let wp = wp.add(g0 * 4);
            for j in 0..S {
                let wv = _mm512_loadu_si512(wp.add(64 * j) as *const _);
                for (i, ai) in a.iter_mut().enumerate() {
                    let xv = _mm512_loadu_si512(xp.add(i * step + 64 * j) as *const _);
                    ai[j] = _mm512_dpbusd_epi32(ai[j], xv, wv);
                }
            }
        }
        for (i, ai) in a.iter().enumerate() {
            for j in 0..S {
                _mm512_storeu_si512(acc.add((p + i) * cs + g0 + 16 * j) as *mut _, ai[j]);
            }
        }
        p += P;
    }
    while p < g.count {
        let mut a = iv;
        let base = p * step + g0 * 4;
        for &(xp, wp) in taps {
            let (xp, wp) = (xp.add(base), wp.add(g0 * 4));
            for j in 0..S {
                let wv = _mm512_loadu_si512(wp.add(64 * j) as *const _);
                let xv = _mm512_loadu_si512(xp.add(64 * j) as *const _);
                a[j] = _mm512_dpbusd_epi32(a[j], xv, wv);
            }
        }
        for j in 0..S {
            _mm512_storeu_si512(acc.add(p * cs + g0 + 16 * j) as *mut _, a[j]);
        }
        p += 1;
    }
}
