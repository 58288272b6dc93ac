//! Direct depthwise convolution (groups = in channels = out channels), channels-last.
//!
//! A depthwise conv is one tiny dot product per channel and output pixel, so im2col + GEMM
//! (one 1-column GEMM per channel) wastes almost all of its work. Here every output pixel
//! accumulates its taps straight from the channels-last input, 16 channels at a time in
//! registers: `acc[c] = Σ_taps (x[c] − zx)·(w[c] − zw[c])` in exact i32, then the same
//! requantization as the GEMM path ([`Requantize::requantize_row`]). Taps in the padding are
//! skipped (they would add `(zx − zx)·w = 0`). Any kernel size, stride and dilation; the loops
//! are written once and compiled per ISA ([`crate::arch::with_features`]); every engine and
//! thread count gives the same integers, hence the same bits.

use super::{ConvGeometry, ConvInput};
use crate::aligned::Aligned;
use crate::arch::{
    depthwise_kernel, depthwise_line_kernel, with_features, DepthwiseKernel, DepthwiseLineKernel,
    Engine, LineGeometry, PlainRequant, Vectorized, ALL_ENGINES,
};
use crate::error::{check_len, try_vec, KernelError, Result};
use crate::packed::MAX_COLUMN_ABS_SUM;
use crate::quantize::QInt;
use crate::requant::Requantize;
use crate::threading::{parallel_for, threads_for};
use std::sync::{Arc, Mutex, OnceLock};

/// Depthwise weights: int8 `[taps][c]` (channels innermost, as the input), with per-channel
/// zero points and scales, and each engine's kernel weights, prepared on first use.
#[derive(Clone)]
pub(crate) struct PackedDepthwise {
    c: usize,
    /// Kernel rows (`kd·kh`) and columns (`kw`); `taps = rows·kw`.
    rows: usize,
    kh: usize,
    kw: usize,
    taps: usize,
    w: Vec<i8>,
    zero_points: Vec<i32>,
    scales: Vec<f32>,
    prepared: [OnceLock<Arc<Prepared>>; ALL_ENGINES.len()],
}

impl std::fmt::Debug for PackedDepthwise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedDepthwise")
            .field("c", &self.c)
            .field("taps", &self.taps)
            .finish_non_exhaustive()
    }
}

/// What one engine runs a depthwise conv with: the centered weights `w − zw` (`[taps][c]`,
/// i16) for the portable loop, their per-channel sums (the input zero point enters as
/// `−zx·Σ_t (w − zw)`), and the engine's kernel with its weights: the whole-line kernel where it
/// takes these weights, else the pixel-run kernel.
struct Prepared {
    w: Vec<i16>,
    sums: Vec<i32>,
    kernel: Option<EngineKernel>,
}

impl Prepared {
    fn bytes(&self) -> usize {
        self.w.len() * 2
            + self.sums.len() * 4
            + match &self.kernel {
                Some(EngineKernel::Lines(_, wl, w1)) => {
                    wl.bytes() + w1.as_ref().map_or(0, |w| w.bytes())
                }
                Some(EngineKernel::Runs(_, wp)) => wp.len() * 2,
                None => 0,
            }
    }
}

enum EngineKernel {
    /// The line kernel, its weights, and (for one-row-deep 2-d kernels whose row count is not a
    /// multiple of 4) the weights one row down: then a quad of the rows of two consecutive
    /// output lines serves both (stride and dilation 1 along the height).
    Lines(DepthwiseLineKernel, Aligned<i8>, Option<Aligned<i8>>),
    Runs(DepthwiseKernel, Vec<i16>),
}

impl PackedDepthwise {
    /// `w`: torch's `[c, 1, kd, kh, kw]`; `scales` / `zero_points`: length 1 or `c` (checked by
    /// the caller, as are the channel count and kernel size).
    /// `kernel`: `[kd, kh, kw]`.
    pub(crate) fn new(
        w: &[i8],
        c: usize,
        kernel: [usize; 3],
        scales: &[f32],
        zero_points: &[i32],
    ) -> Result<Self> {
        let taps = kernel.iter().product::<usize>();
        check_len("depthwise convolution weight", c * taps, w.len())?;
        // the checks PackedWeights::new makes for the GEMM path
        for &s in scales {
            crate::qparams::check_scale(s)?;
        }
        if let Some(z) = zero_points.iter().find(|z| !(-128..=127).contains(*z)) {
            return Err(KernelError::InvalidQParams(format!(
                "int8 weight zero point {z} is outside [-128, 127]"
            )));
        }
        let pick = |v: &[i32], j: usize| v[if v.len() == 1 { 0 } else { j }];
        let mut wt = try_vec(c * taps, 0i8, "depthwise convolution weights")?;
        for ch in 0..c {
            let zw = pick(zero_points, ch) as i64;
            let l1: i64 = (0..taps)
                .map(|t| (w[ch * taps + t] as i64 - zw).abs())
                .sum();
            if l1 > MAX_COLUMN_ABS_SUM {
                return Err(KernelError::TooLarge(format!(
                    "channel {ch} of this depthwise convolution has sum |w - zero_point| = {l1} \
                     over its {taps} taps, above {MAX_COLUMN_ABS_SUM}: its int32 accumulator \
                     could overflow; use a smaller kernel or keep the layer in floating point"
                )));
            }
            for t in 0..taps {
                wt[t * c + ch] = w[ch * taps + t];
            }
        }
        let zero_points = (0..c).map(|j| pick(zero_points, j)).collect();
        let scales = (0..c)
            .map(|j| scales[if scales.len() == 1 { 0 } else { j }])
            .collect();
        Ok(PackedDepthwise {
            c,
            rows: kernel[0] * kernel[1],
            kh: kernel[1],
            kw: kernel[2],
            taps,
            w: wt,
            zero_points,
            scales,
            prepared: Default::default(),
        })
    }

    /// `engine`'s kernel weights, prepared once per engine.
    fn prepared(&self, engine: Engine) -> Result<Arc<Prepared>> {
        let slot = &self.prepared[ALL_ENGINES.iter().position(|&e| e == engine).unwrap_or(0)];
        if let Some(p) = slot.get() {
            return Ok(p.clone());
        }
        let (c, taps) = (self.c, self.taps);
        let w = self.centered()?;
        let sums = (0..c)
            .map(|ch| (0..taps).map(|t| w[t * c + ch] as i32).sum())
            .collect();
        let line_weights = match depthwise_line_kernel(engine) {
            Some(k) => match (k.weights)(&w, self.rows, self.kw, c) {
                Some(wl) => {
                    let what = "depthwise convolution weights";
                    let shifted = if self.rows == self.kh && self.rows % 4 != 0 {
                        // kernel row r at quad row r + 1: a zero row first
                        let mut down = vec![0i16; self.kw * c];
                        down.extend_from_slice(&w);
                        (k.weights)(&down, self.rows + 1, self.kw, c)
                    } else {
                        None
                    };
                    let w1 = match shifted {
                        Some(v) => Some(Aligned::from_slice(&v, what)?),
                        None => None,
                    };
                    Some((k, Aligned::from_slice(&wl, what)?, w1))
                }
                None => None,
            },
            None => None,
        };
        let kernel = line_weights
            .map(|(k, wl, w1)| EngineKernel::Lines(k, wl, w1))
            .or_else(|| {
                depthwise_kernel(engine)
                    .filter(|k| (k.done)(c) == c)
                    .map(|k| EngineKernel::Runs(k, (k.prepare)(&w, taps, c)))
            });
        // the centered weights stay: the portable loop is the fallback when a line kernel's
        // buffers cannot be allocated
        Ok(slot
            .get_or_init(|| Arc::new(Prepared { w, sums, kernel }))
            .clone())
    }

    /// One scale per channel.
    pub(crate) fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// `w − zw` as i16, `[taps][c]`, for one call.
    fn centered(&self) -> Result<Vec<i16>> {
        let mut v = try_vec(self.w.len(), 0i16, "depthwise convolution weights")?;
        for (t, row) in v.chunks_exact_mut(self.c).enumerate() {
            let src = &self.w[t * self.c..(t + 1) * self.c];
            for ((d, &w), &z) in row.iter_mut().zip(src).zip(&self.zero_points) {
                *d = (w as i16) - z as i16;
            }
        }
        Ok(v)
    }

    /// The weights back in torch's layout `[c, 1, taps]`.
    pub(crate) fn unpack(&self) -> Vec<i8> {
        let mut w = vec![0i8; self.w.len()];
        for t in 0..self.taps {
            for ch in 0..self.c {
                w[ch * self.taps + t] = self.w[t * self.c + ch];
            }
        }
        w
    }

    /// Bytes held (for memory accounting), the engines' prepared weights included.
    pub(crate) fn bytes(&self) -> usize {
        let prepared: usize = self
            .prepared
            .iter()
            .filter_map(|p| p.get())
            .map(|p| p.bytes())
            .sum();
        self.w.len() + self.zero_points.len() * 4 + self.scales.len() * 4 + prepared
    }
}

/// Channels per register block (4 zmm / 8 ymm of i32 accumulators).
const CB: usize = 64;

/// Everything a line of output pixels needs.
struct Ctx<'a, T: QInt> {
    input: &'a ConvInput<'a>,
    w: &'a [i16],
    /// The engine's kernel for runs of pixels with every tap inside, its weights and initial
    /// accumulators `−zx·Σ_t (w − zw)`.
    fast: Option<(DepthwiseKernel, &'a [i16], Vec<i32>)>,
    /// The engine's whole-line kernel (borders included) where it takes these weights, its
    /// weights and initial accumulators (padded to its column stride); it replaces `fast`.
    lines: Option<LineCtx<'a>>,
    c: usize,
    stage: &'a Requantize<T>,
}

/// The line kernel of one call: its weights (and the shifted ones for line pairs), the initial
/// accumulators, and the requantization as data when it can run in the kernel's registers
/// (u8 outputs, plain stage), padded to the kernel's column stride.
struct LineCtx<'a> {
    k: DepthwiseLineKernel,
    w: &'a [i8],
    w_down: Option<&'a [i8]>,
    init: Vec<i32>,
    rq: Option<PaddedRequant>,
}

/// A plain requantization rule with its factors padded to a line kernel's column stride.
struct PaddedRequant {
    bias: Vec<f32>,
    mult: Vec<f32>,
    lo: f32,
    hi: f32,
    zp: i32,
}

/// Output pixels of `[n, od, oh, ow]` go in lines of `ow` pixels; `out` holds lines
/// `l0..l0 + out.len() / (ow·c)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise<T: QInt>(
    engine: Engine,
    dw: &PackedDepthwise,
    input: &ConvInput<'_>,
    stage: &Requantize<T>,
    out: &mut [T],
    threads: usize,
) -> Result<()> {
    if !engine.is_available() {
        return Err(KernelError::KernelUnavailable(format!(
            "engine {:?} is not available on this CPU",
            engine.name()
        )));
    }
    let prep = dw.prepared(engine)?;
    let c = dw.c;
    let line_len = input.osp[2] * c;
    if out.is_empty() || line_len == 0 {
        return Ok(());
    }
    let lines = out.len() / line_len;
    let zx = input.zp as i32;
    let init = |n: usize| -> Vec<i32> {
        let mut v: Vec<i32> = prep.sums.iter().map(|s| s.wrapping_mul(-zx)).collect();
        v.resize(n.max(c), 0);
        v
    };
    let (mut fast, mut line_kernel) = (None, None);
    match &prep.kernel {
        Some(EngineKernel::Lines(k, wl, w1)) => {
            let cs = (k.column_stride)(c);
            let pad = |v: &[f32]| {
                let mut p = v.to_vec();
                p.resize(cs.max(v.len()), 0.0);
                p
            };
            let rq = stage
                .plain_parts()
                .filter(|_| T::DTYPE == crate::qparams::QDtype::QUInt8)
                .map(|p| PaddedRequant {
                    bias: pad(p.bias),
                    mult: pad(p.mult),
                    lo: p.lo,
                    hi: p.hi,
                    zp: p.zp,
                });
            line_kernel = Some(LineCtx {
                k: *k,
                w: wl.as_slice(),
                w_down: w1.as_ref().map(|w| w.as_slice()),
                init: init(cs),
                rq,
            });
        }
        Some(EngineKernel::Runs(k, wp)) => fast = Some((*k, wp.as_slice(), init(c))),
        None => {}
    }
    let ctx = Ctx {
        input,
        w: &prep.w,
        fast,
        lines: line_kernel,
        c,
        stage,
    };
    let macs = out.len().saturating_mul(dw.taps);
    // a depthwise MAC costs ~10-20x a GEMM MAC (no K reuse, one tap pair per vpmaddwd):
    // weigh them so that threads start at a similar amount of time
    let threads = threads_for(macs.saturating_mul(8), threads).min(lines);
    if threads <= 1 {
        with_features(engine, Lines { ctx: &ctx, l0: 0 }, out);
    } else {
        let per = lines.div_ceil(threads * 4);
        let parts: Vec<Mutex<&mut [T]>> = out.chunks_mut(per * line_len).map(Mutex::new).collect();
        parallel_for(threads, parts.len(), &|i| {
            let mut part = parts[i].lock().unwrap_or_else(|e| e.into_inner());
            with_features(
                engine,
                Lines {
                    ctx: &ctx,
                    l0: i * per,
                },
                &mut part,
            );
        });
    }
    Ok(())
}

/// Lines `l0..` of output into `out` (whole lines), compiled per ISA.
struct Lines<'a, 'c, T: QInt> {
    ctx: &'a Ctx<'c, T>,
    l0: usize,
}

impl<T: QInt> Vectorized for Lines<'_, '_, T> {
    type Elem = T;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [T]) {
        run_lines(self.ctx, self.l0, out)
    }
}

/// Lines `l0..` of output into `out` (whole lines).
#[inline(always)]
fn run_lines<T: QInt>(ctx: &Ctx<'_, T>, l0: usize, out: &mut [T]) {
    match &ctx.lines {
        Some(lc) => run_lines_with(ctx, lc, l0, out),
        None => run_lines_portable(ctx, l0, out),
    }
}

/// Lines `l0..` of output into `out`: the engine's pixel-run kernel inside, the portable loop
/// at the borders (and everywhere for engines without a kernel).
#[inline(always)]
fn run_lines_portable<T: QInt>(ctx: &Ctx<'_, T>, l0: usize, out: &mut [T]) {
    let input = ctx.input;
    let (geom, sp, osp, c) = (&input.geom, input.sp, input.osp, ctx.c);
    let zx = input.zp as i16;
    let x = input.x;
    let [kd_n, kh_n, kw_n] = geom.kernel;
    let (sw, pw, dw) = (geom.stride[2], geom.padding[2], geom.dilation[2]);
    // the output columns whose kw taps all fall inside the input row
    let span = (kw_n - 1) * dw;
    let ow_lo = pw.div_ceil(sw).min(osp[2]);
    let ow_hi = if sp[2] + pw > span {
        ((sp[2] + pw - span - 1) / sw + 1).clamp(ow_lo, osp[2])
    } else {
        ow_lo
    };
    // (tap index, input pixel) of the taps of one line's rows that are inside, then per pixel
    let mut rows: Vec<(usize, usize)> = Vec::with_capacity(kd_n * kh_n);
    let all = kd_n * kh_n * kw_n;
    let mut taps: Vec<(usize, usize)> = Vec::with_capacity(all);
    let mut offs: Vec<usize> = Vec::with_capacity(all);
    let mut acc = vec![0i32; c];
    let mut run_acc: Vec<i32> = Vec::new();
    let line_len = osp[2] * c;
    for (li, out_line) in out.chunks_exact_mut(line_len).enumerate() {
        let l = l0 + li;
        let oh = l % osp[1];
        let od = (l / osp[1]) % osp[0];
        let b = l / (osp[1] * osp[0]);
        rows.clear();
        for kd in 0..kd_n {
            let id =
                (od * geom.stride[0] + kd * geom.dilation[0]) as isize - geom.padding[0] as isize;
            if id < 0 || id as usize >= sp[0] {
                continue;
            }
            for kh in 0..kh_n {
                let ih = (oh * geom.stride[1] + kh * geom.dilation[1]) as isize
                    - geom.padding[1] as isize;
                if ih < 0 || ih as usize >= sp[1] {
                    continue;
                }
                let pix = ((b * sp[0] + id as usize) * sp[1] + ih as usize) * sp[2];
                rows.push(((kd * kh_n + kh) * kw_n, pix));
            }
        }
        // the interior run of the line through the engine's kernel
        let mut interior = 0..0;
        if let Some((k, wp, init)) = &ctx.fast {
            if rows.len() == kd_n * kh_n && ow_hi > ow_lo {
                interior = ow_lo..ow_hi;
                let iw0 = ow_lo * sw - pw;
                offs.clear();
                for &(_, pix) in &rows {
                    offs.extend((0..kw_n).map(|kw| (pix + iw0 + kw * dw) * c));
                }
                let count = ow_hi - ow_lo;
                run_acc.resize(count * c, 0);
                (k.run)(x, &offs, sw * c, count, wp, init, c, &mut run_acc);
                let dst = &mut out_line[ow_lo * c..ow_hi * c];
                for (px, a) in dst.chunks_exact_mut(c).zip(run_acc.chunks_exact(c)) {
                    ctx.stage.requantize_row(a, 0, px);
                }
            }
        }
        for (ow, px) in out_line.chunks_exact_mut(c).enumerate() {
            if interior.contains(&ow) {
                continue;
            }
            let iw0 = (ow * sw) as isize - pw as isize;
            taps.clear();
            for &(t0, pix) in &rows {
                for kw in 0..kw_n {
                    let iw = iw0 + (kw * dw) as isize;
                    if iw >= 0 && (iw as usize) < sp[2] {
                        taps.push((t0 + kw, (pix + iw as usize) * c));
                    }
                }
            }
            pixel(ctx, x, zx, &taps, &mut acc, px);
        }
    }
}

/// Lines `l0..` of output into `out` through an engine's line kernel: per line, the kernel
/// rows it reads go into quad buffers (four rows each, zero points outside the input), then the
/// kernel accumulates every pixel and requantizes (in its registers for u8 outputs). Two
/// consecutive lines of a 2-d kernel with `kh % 4 != 0`, stride and dilation 1 along the height
/// share one set of quads (rows `oh − ph ..`), the second line through the shifted weights.
#[inline(always)]
fn run_lines_with<T: QInt>(ctx: &Ctx<'_, T>, lc: &LineCtx<'_>, l0: usize, out: &mut [T]) {
    let input = ctx.input;
    let (geom, sp, osp, c) = (&input.geom, input.sp, input.osp, ctx.c);
    let [kd_n, kh_n, kw_n] = geom.kernel;
    let (sw, pw, dw) = (geom.stride[2], geom.padding[2], geom.dilation[2]);
    let rows = kd_n * kh_n;
    let quads = rows.div_ceil(4);
    let k = &lc.k;
    let cs = (k.column_stride)(c);
    let line = LineGeometry {
        c,
        kw: kw_n,
        stride: sw,
        dilation: dw,
        count: osp[2],
    };
    let w_down = lc.w_down.filter(|_| {
        geom.stride[1] == 1 && geom.dilation[1] == 1 && (rows + 1).div_ceil(4) == quads
    });
    let width = (osp[2] - 1) * sw + (kw_n - 1) * dw + 1;
    let quad_len = width * cs * 4;
    // cache-line aligned (the kernel loads whole 64-byte blocks of both), kept by the thread
    // from call to call; the accumulators only where the kernel cannot requantize
    let acc_len = if lc.rq.is_some() && T::DTYPE == crate::qparams::QDtype::QUInt8 {
        0
    } else {
        osp[2] * cs
    };
    let (Ok(mut buf_a), Ok(mut acc_a)) = (
        Aligned::reuse(
            LINE_BUF.take(),
            quads * quad_len,
            0u8,
            "depthwise line buffers",
        ),
        Aligned::reuse(LINE_ACC.take(), acc_len, 0i32, "depthwise line buffers"),
    ) else {
        return run_lines_portable(ctx, l0, out);
    };
    let (buf, acc) = (buf_a.as_mut_slice(), acc_a.as_mut_slice());
    let rq = lc.rq.as_ref().map(|p| PlainRequant {
        bias: &p.bias,
        mult: &p.mult,
        lo: p.lo,
        hi: p.hi,
        zp: p.zp,
    });
    let row_len = sp[2] * c;
    // the quad rows past the kernel, where there are some
    let zero_row = if quads * 4 > rows {
        vec![0u8; row_len]
    } else {
        Vec::new()
    };
    // input row (id, ih) of batch b, None when in the padding
    let input_row = |b: usize, id: isize, ih: isize| -> Option<&[u8]> {
        if id < 0 || id as usize >= sp[0] || ih < 0 || ih as usize >= sp[1] {
            return None;
        }
        let at = ((b * sp[0] + id as usize) * sp[1] + ih as usize) * row_len;
        Some(&input.x[at..at + row_len])
    };
    // one output line from the quads in `buf` with weights `w`
    let mut finish = |out_line: &mut [T], w: &[i8], buf: &[u8], wide: bool| {
        let qs: Vec<&[u8]> = buf.chunks_exact(quad_len).collect();
        match (&rq, T::as_u8_mut(out_line)) {
            (Some(rq), Some(bytes)) => {
                (k.accumulate_requant)(&qs, &line, w, &lc.init, wide, rq, bytes)
            }
            (_, _) => {
                (k.accumulate)(&qs, &line, w, &lc.init, wide, acc);
                for (px, a) in out_line.chunks_exact_mut(c).zip(acc.chunks_exact(cs)) {
                    ctx.stage.requantize_row(&a[..c], 0, px);
                }
            }
        }
    };
    let line_len = osp[2] * c;
    let n_lines = out.len() / line_len;
    let mut li = 0;
    while li < n_lines {
        let l = l0 + li;
        let oh = l % osp[1];
        let od = (l / osp[1]) % osp[0];
        let b = l / (osp[1] * osp[0]);
        let id0 = (od * geom.stride[0]) as isize - geom.padding[0] as isize;
        let ih0 = (oh * geom.stride[1]) as isize - geom.padding[1] as isize;
        let pair = w_down.filter(|_| li + 1 < n_lines && oh + 1 < osp[1]);
        // the OR of the quads' bytes: above 127, kernels on `vpmaddubsw` take the exact split
        let mut bits = 0u8;
        for (q, qb) in buf.chunks_exact_mut(quad_len).enumerate() {
            // rows past the kernel (zero weights) read zeros, not the zero point: any value
            // adds nothing, and a zero point above 127 there would make every line wide
            let four: [Option<&[u8]>; 4] = std::array::from_fn(|j| {
                let r = 4 * q + j;
                if pair.is_some() {
                    // quad row r: input row ih0 + r (kd = 1, rows kh + 1 for the pair)
                    if r <= rows {
                        input_row(b, id0, ih0 + r as isize)
                    } else {
                        Some(&zero_row[..])
                    }
                } else if r < rows {
                    let id = id0 + ((r / kh_n) * geom.dilation[0]) as isize;
                    let ih = ih0 + ((r % kh_n) * geom.dilation[1]) as isize;
                    input_row(b, id, ih)
                } else {
                    Some(&zero_row[..])
                }
            });
            bits |= (k.build_quad)(&four, c, pw, input.zp, qb);
        }
        let wide = bits > 127;
        let (first, rest) = out[li * line_len..].split_at_mut(line_len);
        finish(first, lc.w, buf, wide);
        if let Some(w1) = pair {
            finish(&mut rest[..line_len], w1, buf, wide);
            li += 2;
        } else {
            li += 1;
        }
    }
    keep(&LINE_BUF, buf_a.into_vec());
    keep(&LINE_ACC, acc_a.into_vec());
}

/// The largest line buffer a thread keeps between calls (bytes).
const KEEP_LINE_BYTES: usize = 1 << 20;

thread_local! {
    /// Each thread's quad buffers and accumulators, reused from call to call.
    static LINE_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    static LINE_ACC: std::cell::Cell<Vec<i32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Puts `v` back into the thread's slot unless it is larger than [`KEEP_LINE_BYTES`].
fn keep<T>(slot: &'static std::thread::LocalKey<std::cell::Cell<Vec<T>>>, v: Vec<T>) {
    if v.len() * std::mem::size_of::<T>() <= KEEP_LINE_BYTES {
        slot.set(v);
    }
}

/// One output pixel: every channel's accumulator in `acc` (long loops over the channels, which
/// vectorise well), then one requantization pass.
#[inline(always)]
fn pixel<T: QInt>(
    ctx: &Ctx<'_, T>,
    x: &[u8],
    zx: i16,
    taps: &[(usize, usize)],
    acc: &mut [i32],
    px: &mut [T],
) {
    let c = ctx.c;
    let acc = &mut acc[..c];
    // blocks of CB channels accumulate every tap in registers
    let full = c / CB * CB;
    for c0 in (0..full).step_by(CB) {
        let mut a = [0i32; CB];
        for &(t, off) in taps {
            let xv: &[u8; CB] = x[off + c0..off + c0 + CB].try_into().unwrap();
            let wv: &[i16; CB] = ctx.w[t * c + c0..t * c + c0 + CB].try_into().unwrap();
            for l in 0..CB {
                let d = (xv[l] as i16).wrapping_sub(zx) as i32;
                a[l] = a[l].wrapping_add(d.wrapping_mul(wv[l] as i32));
            }
        }
        acc[c0..c0 + CB].copy_from_slice(&a);
    }
    accumulate(ctx, x, zx, taps, full, acc);
    ctx.stage.requantize_row(acc, 0, px);
}

/// The portable loop for channels `from..c` of one pixel (the tail after an engine kernel).
#[inline(always)]
fn accumulate<T: QInt>(
    ctx: &Ctx<'_, T>,
    x: &[u8],
    zx: i16,
    taps: &[(usize, usize)],
    from: usize,
    acc: &mut [i32],
) {
    let c = ctx.c;
    if from >= c {
        return;
    }
    let tail = &mut acc[from..c];
    tail.fill(0);
    for &(t, off) in taps {
        let xv = &x[off + from..off + c];
        let wv = &ctx.w[t * c + from..(t + 1) * c];
        for ((a, &xi), &wi) in tail.iter_mut().zip(xv).zip(wv) {
            let d = (xi as i16).wrapping_sub(zx) as i32;
            *a = a.wrapping_add(d.wrapping_mul(wi as i32));
        }
    }
}

/// Whether a conv with this geometry and these channel counts runs as a depthwise conv here.
pub(crate) fn applies(geom: &ConvGeometry, cin: usize, cout: usize) -> bool {
    geom.groups == cin && cin == cout
}
