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

use crate::arch::depthwise::{LineGeometry, PlainRequant};
use std::arch::x86_64::*;

/// Channels per column of a quad buffer: `c` rounded up to 16 (one zmm per 16 of them). A
/// column holds groups of 64 channels (256 bytes), the last one only as many blocks of 16 as
/// it needs.
pub(crate) fn column_stride(c: usize) -> usize {
    c.div_ceil(16) * 16
}

/// Line weights from centered weights `w` (`[rows·kw][c]`, i16, taps row-major): `[kw][quad][cs][4]`
/// i8, row `4·quad + r` of the kernel in byte `r`, zeros past the last row and channel. `None` if
/// a centered weight does not fit in i8.
pub(crate) fn line_weights(w: &[i16], rows: usize, kw: usize, c: usize) -> Option<Vec<i8>> {
    line_weights_with(w, rows, kw, c, column_stride(c))
}

/// [`line_weights`] for a kernel whose columns hold `cs` channels (`cs ≥ c`).
pub(super) fn line_weights_with(
    w: &[i16],
    rows: usize,
    kw: usize,
    c: usize,
    cs: usize,
) -> Option<Vec<i8>> {
    if w.len() != rows * kw * c || cs < c || w.iter().any(|&v| i8::try_from(v).is_err()) {
        return None;
    }
    let quads = rows.div_ceil(4);
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
/// past `c` hold zeros or the zero point (their weights are zero, so either adds nothing).
/// Returns 0: this kernel is exact for every byte (the AVX2 one returns the bytes' OR).
pub(crate) fn build_quad(
    rows: &[Option<&[u8]>; 4],
    c: usize,
    lead: usize,
    zx: u8,
    out: &mut [u8],
) -> u8 {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 depthwise kernel on a CPU without AVX-512"
    );
    let cs = column_stride(c);
    let (width, w_in) = check_quad(rows, c, cs, out);
    // SAFETY: AVX-512F/BW checked above; the impl reads rows[r][col·c .. col·c + c] for
    // col < w_in (masked past c) and writes out[.. width·cs·4], all checked above.
    unsafe { build_quad_impl(rows, c, w_in, lead, zx, width, out.as_mut_ptr()) };
    0
}

/// Checks a quad's rows and buffer (`cs` channels per column): returns the buffer's width in
/// columns and the rows' width in pixels.
pub(super) fn check_quad(
    rows: &[Option<&[u8]>; 4],
    c: usize,
    cs: usize,
    out: &[u8],
) -> (usize, usize) {
    assert!(
        c > 0 && cs >= c,
        "no channels, or columns narrower than them"
    );
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
    (width, w_in)
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
        for g in 0..cs.div_ceil(64) {
            let d = dst.add(g * 256);
            // blocks of 16 channels in this group (4 but in a last group of fewer channels)
            let blocks = (cs - g * 64).min(64) / 16;
            if !inside {
                for j in 0..blocks {
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
            let cd_lo = _mm512_unpacklo_epi8(cc, dd);
            _mm512_storeu_si512(d as *mut _, _mm512_unpacklo_epi16(ab_lo, cd_lo));
            if blocks > 1 {
                _mm512_storeu_si512(d.add(64) as *mut _, _mm512_unpackhi_epi16(ab_lo, cd_lo));
            }
            if blocks > 2 {
                let ab_hi = _mm512_unpackhi_epi8(a, b);
                let cd_hi = _mm512_unpackhi_epi8(cc, dd);
                _mm512_storeu_si512(d.add(128) as *mut _, _mm512_unpacklo_epi16(ab_hi, cd_hi));
                if blocks > 3 {
                    _mm512_storeu_si512(d.add(192) as *mut _, _mm512_unpackhi_epi16(ab_hi, cd_hi));
                }
            }
        }
    }
}

/// Checks the arguments of [`accumulate`] / [`accumulate_requant`] and returns the quad
/// pointers.
fn check_line(quads: &[&[u8]], g: &LineGeometry, w: &[i8], init: &[i32]) -> Vec<*const u8> {
    assert!(
        super::has_avx512vnni(),
        "AVX-512 VNNI depthwise kernel on a CPU without it"
    );
    check_line_with(quads, g, w, init, column_stride(g.c))
}

/// [`check_line`] for a kernel whose columns hold `cs` channels (the caller checked the CPU).
pub(super) fn check_line_with(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
    cs: usize,
) -> Vec<*const u8> {
    assert!(
        g.c > 0 && g.kw > 0 && g.count > 0 && !quads.is_empty(),
        "empty depthwise line"
    );
    let span = (g.count - 1)
        .checked_mul(g.stride)
        .and_then(|v| v.checked_add((g.kw - 1).checked_mul(g.dilation)?))
        .expect("depthwise line too long");
    let need = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    for q in quads {
        assert!(
            need(&[span + 1, cs, 4]).is_some_and(|n| q.len() >= n),
            "quad buffer too short"
        );
    }
    assert!(
        need(&[g.kw, quads.len(), cs, 4]).is_some_and(|n| w.len() >= n),
        "line weights too short"
    );
    assert!(
        need(&[g.stride, cs, 4]).is_some(),
        "depthwise line stride too large"
    );
    assert!(init.len() >= cs, "initial accumulators too short");
    quads.iter().map(|q| q.as_ptr()).collect()
}

/// `acc[p·cs + ch] = init[ch] + Σ_q Σ_k Σ_r quads[q][((p·stride + k·dilation)·cs + ch)·4 + r] ·
/// w[((k·nq + q)·cs + ch)·4 + r]` for `p < count` and `ch` below `c` rounded up to 16
/// (`cs = column_stride(c)`, `w` from [`line_weights`], `nq = quads.len()`); exact i32.
pub(crate) fn accumulate(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
    _wide: bool,
    acc: &mut [i32],
) {
    let ptrs = check_line(quads, g, w, init);
    let cs = column_stride(g.c);
    let store = StoreI32::new(acc, g, cs);
    // SAFETY: AVX-512 VNNI checked; every read is within the lengths check_line proved (pixel
    // p, column k reads quad column p·stride + k·dilation ≤ span, channels < cs) and every
    // write within acc[.. count·cs] (checked above).
    unsafe { accumulate_impl(&ptrs, g, w.as_ptr(), init.as_ptr(), &store) }
}

/// [`accumulate`] followed by the plain requantization of each accumulator, written as bytes:
/// `out[p·c + ch] = rne(clamp((acc + bias[ch])·mult[ch], lo, hi)) + zp` for `ch < c` (the same
/// bits as `Requantize`'s plain rule; `bias` and `mult` hold `cs` values, the outputs lie in a
/// byte's range by the caller's clamp bounds).
pub(crate) fn accumulate_requant(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
    _wide: bool,
    rq: &PlainRequant<'_>,
    out: &mut [u8],
) {
    let ptrs = check_line(quads, g, w, init);
    let store = StoreBytes::new(out, g, rq, column_stride(g.c));
    // SAFETY: as in `accumulate`; StoreBytes writes out[p·c + ch] for ch < c only (masked) and
    // reads bias/mult below cs (checked above).
    unsafe { accumulate_impl(&ptrs, g, w.as_ptr(), init.as_ptr(), &store) }
}

/// What happens to 16 finished accumulators (channels `ch..ch + 16` of pixel `p`).
trait Finish {
    /// Per-channel factors of channels `ch..ch + 16`, loaded once per line and block.
    ///
    /// # Safety
    /// AVX-512F available; the channels are inside the line the store was made for.
    unsafe fn factors(&self, ch: usize) -> [__m512; 2];
    /// # Safety
    /// AVX-512F/BW available; the pixel and channels are inside the line the store was made for;
    /// `f` from [`Finish::factors`] of the same channels.
    unsafe fn finish(&self, p: usize, ch: usize, v: __m512i, f: &[__m512; 2]);
}

/// Accumulators to `acc[p·cs + ch ..]` (shared with the ymm kernels).
pub(super) struct StoreI32 {
    pub(super) acc: *mut i32,
    pub(super) cs: usize,
}

impl StoreI32 {
    /// The accumulators of a line of `g.count` pixels, `cs` apart; checks the length.
    pub(super) fn new(acc: &mut [i32], g: &LineGeometry, cs: usize) -> Self {
        assert!(
            g.count.checked_mul(cs).is_some_and(|n| acc.len() >= n),
            "accumulators too short"
        );
        StoreI32 {
            acc: acc.as_mut_ptr(),
            cs,
        }
    }
}

impl Finish for StoreI32 {
    #[inline(always)]
    unsafe fn factors(&self, _ch: usize) -> [__m512; 2] {
        [_mm512_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn finish(&self, p: usize, ch: usize, v: __m512i, _f: &[__m512; 2]) {
        _mm512_storeu_si512(self.acc.add(p * self.cs + ch) as *mut _, v);
    }
}

/// Requantized bytes to `out[p·c + ch ..]`, channels past `c` left alone (shared with the ymm
/// kernels).
pub(super) struct StoreBytes {
    pub(super) out: *mut u8,
    pub(super) c: usize,
    pub(super) bias: *const f32,
    pub(super) mult: *const f32,
    pub(super) lo: f32,
    pub(super) hi: f32,
    pub(super) zp: i32,
}

impl StoreBytes {
    /// The bytes of a line of `g.count` pixels by `rq` (factors padded to `cs` channels);
    /// checks the lengths.
    pub(super) fn new(out: &mut [u8], g: &LineGeometry, rq: &PlainRequant<'_>, cs: usize) -> Self {
        assert!(
            rq.bias.len() >= cs && rq.mult.len() >= cs,
            "requantization factors too short"
        );
        assert!(
            g.count.checked_mul(g.c).is_some_and(|n| out.len() >= n),
            "output too short"
        );
        StoreBytes {
            out: out.as_mut_ptr(),
            c: g.c,
            bias: rq.bias.as_ptr(),
            mult: rq.mult.as_ptr(),
            lo: rq.lo,
            hi: rq.hi,
            zp: rq.zp,
        }
    }
}

impl Finish for StoreBytes {
    #[inline(always)]
    unsafe fn factors(&self, ch: usize) -> [__m512; 2] {
        [
            _mm512_loadu_ps(self.bias.add(ch)),
            _mm512_loadu_ps(self.mult.add(ch)),
        ]
    }
    #[inline(always)]
    unsafe fn finish(&self, p: usize, ch: usize, v: __m512i, fm: &[__m512; 2]) {
        let f = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(v), fm[0]), fm[1]);
        let f = _mm512_min_ps(
            _mm512_max_ps(f, _mm512_set1_ps(self.lo)),
            _mm512_set1_ps(self.hi),
        );
        // round half to even (the default rounding mode), then the zero point
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(self.zp));
        let left = self.c - ch;
        let mask: __mmask16 = if left >= 16 {
            0xFFFF
        } else {
            (1u16 << left) - 1
        };
        _mm512_mask_cvtepi32_storeu_epi8(self.out.add(p * self.c + ch) as *mut _, mask, q);
    }
}

/// # Safety
/// As checked by [`check_line`], with `store` valid for every pixel and channel of the line.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn accumulate_impl<F: Finish>(
    quads: &[*const u8],
    g: &LineGeometry,
    w: *const i8,
    init: *const i32,
    store: &F,
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
            4 => group::<4, 3, F>(&taps, g, init, store, g0),
            3 => group::<3, 4, F>(&taps, g, init, store, g0),
            2 => group::<2, 6, F>(&taps, g, init, store, g0),
            _ => group::<1, 8, F>(&taps, g, init, store, g0),
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
unsafe fn group<const S: usize, const P: usize, F: Finish>(
    taps: &[(*const u8, *const i8)],
    g: &LineGeometry,
    init: *const i32,
    store: &F,
    g0: usize,
) {
    let cs = column_stride(g.c);
    let mut iv = [_mm512_setzero_si512(); S];
    let mut fs = [[_mm512_setzero_ps(); 2]; S];
    for (j, v) in iv.iter_mut().enumerate() {
        *v = _mm512_loadu_si512(init.add(g0 + 16 * j) as *const _);
        fs[j] = store.factors(g0 + 16 * j);
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
                store.finish(p + i, g0 + 16 * j, ai[j], &fs[j]);
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
            store.finish(p, g0 + 16 * j, a[j], &fs[j]);
        }
        p += 1;
    }
}
