//! AVX2 and AVX-VNNI depthwise lines: the quad layout of [`super::depthwise_vnni`] on ymm, one
//! register per 8 channels (each channel's four kernel-row values side by side).
//!
//! AVX-VNNI multiplies a quad column with `vpdpbusd` on ymm, exact for every u8 input. AVX2 has
//! no `vpdpbusd`: `vpmaddubsw` forms i16 sums of two u8 × i8 products and `vpmaddwd` with ones
//! adds pairs of them into i32 — exact while every input byte is at most 127 (a pair sum then
//! stays within ±2·127·128 = 32512). [`build_quad`] returns the OR of the bytes it wrote; on a
//! line whose quads hold a larger byte (activations above the calibrated range — D7 keeps
//! them — or a zero point above 127) the driver says `wide` and each byte `x` goes in two parts,
//! `min(x, 127)` and `x − min(x, 127) ≤ 128`, each through `vpmaddubsw` (a pair sum of the
//! second stays within ±2·128·128 = 32768, −32768 the only extreme: `w ≤ 127`): exact, at
//! twice the products.

use super::depthwise_vnni::{check_line_with, check_quad, line_weights_with, StoreBytes, StoreI32};
use crate::arch::depthwise::{LineGeometry, PlainRequant};
use std::arch::x86_64::*;

/// Channels per column of a quad buffer: `c` rounded up to 8 (one ymm per 8 of them).
pub(crate) fn column_stride(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// Line weights `[kw][quad][cs][4]` i8 from centered weights (see
/// [`super::depthwise_vnni::line_weights`]), `cs = column_stride(c)`.
pub(crate) fn line_weights(w: &[i16], rows: usize, kw: usize, c: usize) -> Option<Vec<i8>> {
    line_weights_with(w, rows, kw, c, column_stride(c))
}

/// Fills one quad buffer as [`super::depthwise_vnni::build_quad`] does, with
/// `cs = column_stride(c)`; returns the OR of every byte written (above 127: the AVX2 kernel
/// is not exact on this quad).
pub(crate) fn build_quad(
    rows: &[Option<&[u8]>; 4],
    c: usize,
    lead: usize,
    zx: u8,
    out: &mut [u8],
) -> u8 {
    assert!(
        super::has_avx2_fma(),
        "AVX2 depthwise kernel on a CPU without AVX2"
    );
    let cs = column_stride(c);
    let (width, w_in) = check_quad(rows, c, cs, out);
    // SAFETY: AVX2 checked above; the impl reads rows[r][col·c .. col·c + c] for col < w_in
    // (through a copy past c) and writes out[.. width·cs·4], all checked by check_quad.
    unsafe { build_quad_impl(rows, c, w_in, lead, zx, width, out.as_mut_ptr()) }
}

/// # Safety
/// AVX2 available; every `Some` row holds `w_in·c` bytes; `out` holds `width·cs·4` bytes.
#[target_feature(enable = "avx2")]
unsafe fn build_quad_impl(
    rows: &[Option<&[u8]>; 4],
    c: usize,
    w_in: usize,
    lead: usize,
    zx: u8,
    width: usize,
    out: *mut u8,
) -> u8 {
    let cs = column_stride(c);
    let zv = _mm_set1_epi8(zx as i8);
    let mut or = _mm_setzero_si128();
    for col in 0..width {
        let dst = out.add(col * cs * 4);
        if col < lead || col - lead >= w_in {
            // cs·4 bytes: a multiple of 32
            for j in 0..cs / 4 {
                _mm_storeu_si128(dst.add(j * 16) as *mut _, zv);
            }
            or = _mm_or_si128(or, zv);
            continue;
        }
        let at = (col - lead) * c;
        // blocks of 16 channels (the last one of 8 where cs says so); ch0 < cs implies ch0 < c
        let mut ch0 = 0;
        while ch0 < cs {
            let n = (c - ch0).min(16);
            let load = |r: &Option<&[u8]>| match r {
                Some(row) if n == 16 => _mm_loadu_si128(row.as_ptr().add(at + ch0) as *const _),
                Some(row) => {
                    let mut t = [0u8; 16];
                    t[..n].copy_from_slice(&row[at + ch0..at + ch0 + n]);
                    _mm_loadu_si128(t.as_ptr() as *const _)
                }
                None => zv,
            };
            let (a, b, cc, dd) = (
                load(&rows[0]),
                load(&rows[1]),
                load(&rows[2]),
                load(&rows[3]),
            );
            let d = dst.add(ch0 * 4);
            let ab = _mm_unpacklo_epi8(a, b);
            let cd = _mm_unpacklo_epi8(cc, dd);
            let (q0, q1) = (_mm_unpacklo_epi16(ab, cd), _mm_unpackhi_epi16(ab, cd));
            _mm_storeu_si128(d as *mut _, q0);
            _mm_storeu_si128(d.add(16) as *mut _, q1);
            or = _mm_or_si128(or, _mm_or_si128(q0, q1));
            if cs - ch0 > 8 {
                let ab = _mm_unpackhi_epi8(a, b);
                let cd = _mm_unpackhi_epi8(cc, dd);
                let (q2, q3) = (_mm_unpacklo_epi16(ab, cd), _mm_unpackhi_epi16(ab, cd));
                _mm_storeu_si128(d.add(32) as *mut _, q2);
                _mm_storeu_si128(d.add(48) as *mut _, q3);
                or = _mm_or_si128(or, _mm_or_si128(q2, q3));
            }
            ch0 += 16;
        }
    }
    let mut t = [0u8; 16];
    _mm_storeu_si128(t.as_mut_ptr() as *mut _, or);
    t.iter().fold(0, |a, &b| a | b)
}

/// Checks the CPU (AVX-VNNI or AVX2) and the line.
fn check<const VNNI: bool>(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
) -> Vec<*const u8> {
    if VNNI {
        assert!(
            super::has_avxvnni(),
            "AVX-VNNI depthwise kernel on a CPU without it"
        );
    } else {
        assert!(
            super::has_avx2_fma(),
            "AVX2 depthwise kernel on a CPU without AVX2"
        );
    }
    check_line_with(quads, g, w, init, column_stride(g.c))
}

/// The line kernel's `accumulate` with `vpdpbusd` (`VNNI`, AVX-VNNI) or AVX2's `vpmaddubsw`
/// (`wide`: some quad byte is above 127; see the module notes): the contract of
/// [`super::depthwise_vnni::accumulate`], `cs = column_stride(c)`.
pub(crate) fn accumulate_on<const VNNI: bool>(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
    wide: bool,
    acc: &mut [i32],
) {
    let ptrs = check::<VNNI>(quads, g, w, init);
    let store = StoreI32::new(acc, g, column_stride(g.c));
    // SAFETY: the CPU was checked; every read is within the lengths check_line_with proved
    // (pixel p, column k reads quad column p·stride + k·dilation ≤ span, channels < cs) and
    // every write within acc[.. count·cs] (checked above).
    unsafe { run::<VNNI, _>(&ptrs, g, w.as_ptr(), init.as_ptr(), wide, &store) }
}

/// The line kernel's `accumulate_requant`: the contract of
/// [`super::depthwise_vnni::accumulate_requant`], `cs = column_stride(c)`.
pub(crate) fn accumulate_requant_on<const VNNI: bool>(
    quads: &[&[u8]],
    g: &LineGeometry,
    w: &[i8],
    init: &[i32],
    wide: bool,
    rq: &PlainRequant<'_>,
    out: &mut [u8],
) {
    let ptrs = check::<VNNI>(quads, g, w, init);
    let store = StoreBytes::new(out, g, rq, column_stride(g.c));
    // SAFETY: as in `accumulate_on`; StoreBytes writes out[p·c + ch] for ch < c only and reads
    // bias/mult below cs (checked above).
    unsafe { run::<VNNI, _>(&ptrs, g, w.as_ptr(), init.as_ptr(), wide, &store) }
}

/// What happens to 8 finished accumulators (channels `ch..ch + 8` of pixel `p`).
trait Finish {
    /// Per-channel factors of channels `ch..ch + 8`, loaded once per line and block.
    ///
    /// # Safety
    /// AVX available; the channels are inside the line the store was made for.
    unsafe fn factors(&self, ch: usize) -> [__m256; 2];
    /// # Safety
    /// AVX2 available; the pixel and channels are inside the line the store was made for;
    /// `f` from [`Finish::factors`] of the same channels.
    unsafe fn finish(&self, p: usize, ch: usize, v: __m256i, f: &[__m256; 2]);
    /// [`Finish::finish`] of channels `ch..ch + 8` (`v0`) and `ch + 8..ch + 16` (`v1`);
    /// `full`: all 16 channels lie below the line's channel count.
    ///
    /// # Safety
    /// As [`Finish::finish`] for both blocks.
    #[inline(always)]
    unsafe fn finish16(
        &self,
        p: usize,
        ch: usize,
        v: [__m256i; 2],
        f: [&[__m256; 2]; 2],
        _full: bool,
    ) {
        self.finish(p, ch, v[0], f[0]);
        self.finish(p, ch + 8, v[1], f[1]);
    }
}

impl Finish for StoreI32 {
    #[inline(always)]
    unsafe fn factors(&self, _ch: usize) -> [__m256; 2] {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn finish(&self, p: usize, ch: usize, v: __m256i, _f: &[__m256; 2]) {
        _mm256_storeu_si256(self.acc.add(p * self.cs + ch) as *mut _, v);
    }
}

/// The ymm side of the shared byte store.
impl StoreBytes {
    /// The requantized i32 values of 8 accumulators (the plain rule, see
    /// [`super::depthwise_vnni::accumulate_requant`]).
    #[inline(always)]
    unsafe fn quantize(&self, v: __m256i, fm: &[__m256; 2]) -> __m256i {
        let f = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(v), fm[0]), fm[1]);
        let f = _mm256_min_ps(
            _mm256_max_ps(f, _mm256_set1_ps(self.lo)),
            _mm256_set1_ps(self.hi),
        );
        // round half to even (the default rounding mode), then the zero point; the clamp
        // bounds keep the values in a byte's range, so the saturating packs below change
        // nothing
        _mm256_add_epi32(_mm256_cvtps_epi32(f), _mm256_set1_epi32(self.zp))
    }

    /// Stores the first `n ≤ 16` bytes of `q` at `dst`.
    #[inline(always)]
    unsafe fn store_part(dst: *mut u8, q: __m128i, n: usize) {
        let mut t = [0u8; 16];
        _mm_storeu_si128(t.as_mut_ptr() as *mut _, q);
        std::ptr::copy_nonoverlapping(t.as_ptr(), dst, n);
    }
}

impl Finish for StoreBytes {
    #[inline(always)]
    unsafe fn factors(&self, ch: usize) -> [__m256; 2] {
        [
            _mm256_loadu_ps(self.bias.add(ch)),
            _mm256_loadu_ps(self.mult.add(ch)),
        ]
    }
    #[inline(always)]
    unsafe fn finish(&self, p: usize, ch: usize, v: __m256i, fm: &[__m256; 2]) {
        let q = self.quantize(v, fm);
        let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        let q8 = _mm_packus_epi16(q16, q16);
        let dst = self.out.add(p * self.c + ch);
        let left = self.c - ch;
        if left >= 8 {
            _mm_storel_epi64(dst as *mut _, q8);
        } else {
            Self::store_part(dst, q8, left);
        }
    }
    #[inline(always)]
    unsafe fn finish16(
        &self,
        p: usize,
        ch: usize,
        v: [__m256i; 2],
        f: [&[__m256; 2]; 2],
        full: bool,
    ) {
        let (q0, q1) = (self.quantize(v[0], f[0]), self.quantize(v[1], f[1]));
        // packs work per 128-bit lane: [q0 0-3, q1 0-3 | q0 4-7, q1 4-7] → channel order
        let q16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q0, q1));
        let q8 = _mm_packus_epi16(
            _mm256_castsi256_si128(q16),
            _mm256_extracti128_si256::<1>(q16),
        );
        let dst = self.out.add(p * self.c + ch);
        if full {
            _mm_storeu_si128(dst as *mut _, q8);
        } else {
            Self::store_part(dst, q8, (self.c - ch).min(16));
        }
    }
}

/// `wide`: some quad byte is above 127 (AVX2 then splits the bytes).
///
/// # Safety
/// As checked by [`check`], with `store` valid for every pixel and channel of the line.
unsafe fn run<const VNNI: bool, F: Finish>(
    quads: &[*const u8],
    g: &LineGeometry,
    w: *const i8,
    init: *const i32,
    wide: bool,
    store: &F,
) {
    match (VNNI, wide) {
        (true, _) => run_vnni(quads, g, w, init, store),
        (false, false) => run_avx2::<false, F>(quads, g, w, init, store),
        (false, true) => run_avx2::<true, F>(quads, g, w, init, store),
    }
}

/// # Safety
/// As [`run`], AVX2 available.
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<const SPLIT: bool, F: Finish>(
    quads: &[*const u8],
    g: &LineGeometry,
    w: *const i8,
    init: *const i32,
    store: &F,
) {
    if SPLIT {
        line::<SPLIT7, F>(quads, g, w, init, store)
    } else {
        line::<BYTES7, F>(quads, g, w, init, store)
    }
}

/// # Safety
/// As [`run`], AVX2 and AVX-VNNI available.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn run_vnni<F: Finish>(
    quads: &[*const u8],
    g: &LineGeometry,
    w: *const i8,
    init: *const i32,
    store: &F,
) {
    line::<VNNI256, F>(quads, g, w, init, store)
}

/// One line: groups of 32 channels, each as [`group`] with about 8 accumulators.
///
/// # Safety
/// As [`run`]; inlined into the `#[target_feature]` callers.
#[inline(always)]
unsafe fn line<const D: u8, F: Finish>(
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
    for g0 in (0..g.c).step_by(32) {
        match (g.c - g0).min(32).div_ceil(8) {
            4 => group::<D, 4, 2, F>(&taps, g, init, store, g0),
            3 => group::<D, 3, 3, F>(&taps, g, init, store, g0),
            2 => group::<D, 2, 4, F>(&taps, g, init, store, g0),
            _ => group::<D, 1, 8, F>(&taps, g, init, store, g0),
        }
    }
}

/// How a line multiplies: `vpdpbusd` (AVX-VNNI), ...
const VNNI256: u8 = 0;
/// ... `vpmaddubsw` + `vpmaddwd` by ones (AVX2, every quad byte ≤ 127), ...
const BYTES7: u8 = 1;
/// ... or that twice, on `min(x, 127)` and the rest (AVX2, any byte).
const SPLIT7: u8 = 2;

/// `acc + Σ` of the four u8 × i8 products of each i32 lane, the [`VNNI256`] / [`BYTES7`] /
/// [`SPLIT7`] way (`c127`: 127 in every byte).
///
/// # Safety
/// AVX2 (and for [`VNNI256`], AVX-VNNI) available; inlined into the `#[target_feature]`
/// callers.
#[inline(always)]
unsafe fn dot<const D: u8>(
    acc: __m256i,
    x: __m256i,
    w: __m256i,
    ones: __m256i,
    c127: __m256i,
) -> __m256i {
    match D {
        VNNI256 => _mm256_dpbusd_avx_epi32(acc, x, w),
        BYTES7 => bytes7(acc, x, w, ones),
        _ => {
            // x = min(x, 127) + (x ⊖ 127), the second part at most 128
            let low = _mm256_min_epu8(x, c127);
            let high = _mm256_subs_epu8(x, c127);
            bytes7(bytes7(acc, low, w, ones), high, w, ones)
        }
    }
}

/// `acc + vpmaddwd(vpmaddubsw(x, w), ones)`: exact while no pair sum leaves i16.
///
/// # Safety
/// AVX2 available; inlined into the `#[target_feature]` callers.
#[inline(always)]
unsafe fn bytes7(acc: __m256i, x: __m256i, w: __m256i, ones: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))
}

/// Channels `g0 .. g0 + 8·S` of every pixel of the line, `P` pixels at a time (each weight
/// load serves `P` products), then one at a time.
///
/// # Safety
/// As [`run`]; `taps` from [`line`]; inlined into the `#[target_feature]` callers.
#[inline(always)]
unsafe fn group<const D: u8, const S: usize, const P: usize, F: Finish>(
    taps: &[(*const u8, *const i8)],
    g: &LineGeometry,
    init: *const i32,
    store: &F,
    g0: usize,
) {
    let cs = column_stride(g.c);
    let (ones, c127) = (_mm256_set1_epi16(1), _mm256_set1_epi8(127));
    let mut iv = [_mm256_setzero_si256(); S];
    let mut fs = [[_mm256_setzero_ps(); 2]; S];
    for (j, v) in iv.iter_mut().enumerate() {
        *v = _mm256_loadu_si256(init.add(g0 + 8 * j) as *const _);
        fs[j] = store.factors(g0 + 8 * j);
    }
    let step = g.stride * cs * 4;
    let full = g0 + 8 * S <= g.c;
    let mut p = 0;
    while p + P <= g.count {
        let mut a = [iv; P];
        let base = p * step + g0 * 4;
        for &(xp, wp) in taps {
            let (xp, wp) = (xp.add(base), wp.add(g0 * 4));
            for j in 0..S {
                let wv = _mm256_loadu_si256(wp.add(32 * j) as *const _);
                for (i, ai) in a.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(xp.add(i * step + 32 * j) as *const _);
                    ai[j] = dot::<D>(ai[j], xv, wv, ones, c127);
                }
            }
        }
        for (i, ai) in a.iter().enumerate() {
            finish(store, p + i, g0, ai, &fs, full);
        }
        p += P;
    }
    while p < g.count {
        let mut a = iv;
        let base = p * step + g0 * 4;
        for &(xp, wp) in taps {
            let (xp, wp) = (xp.add(base), wp.add(g0 * 4));
            for j in 0..S {
                let wv = _mm256_loadu_si256(wp.add(32 * j) as *const _);
                let xv = _mm256_loadu_si256(xp.add(32 * j) as *const _);
                a[j] = dot::<D>(a[j], xv, wv, ones, c127);
            }
        }
        finish(store, p, g0, &a, &fs, full);
        p += 1;
    }
}

/// The `S` finished blocks of pixel `p` from channel `g0`: pairs of blocks as 16 channels;
/// `full`: every channel of them lies below the line's channel count.
///
/// # Safety
/// As [`group`]; inlined into the `#[target_feature]` callers.
#[inline(always)]
unsafe fn finish<const S: usize, F: Finish>(
    store: &F,
    p: usize,
    g0: usize,
    a: &[__m256i; S],
    fs: &[[__m256; 2]; S],
    full: bool,
) {
    let mut j = 0;
    while j + 2 <= S {
        let ch = g0 + 8 * j;
        store.finish16(p, ch, [a[j], a[j + 1]], [&fs[j], &fs[j + 1]], full);
        j += 2;
    }
    if j < S {
        store.finish(p, g0 + 8 * j, a[j], &fs[j]);
    }
}
