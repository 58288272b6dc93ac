//! Grouped convolutions with few channels per group, straight from the channels-last input.
//!
//! im2col + GEMM runs such a conv as one GEMM per group on an im2col of the group's few
//! channels (runs of 4 bytes for 4 channels per group) with 16-column weight panels mostly empty.
//! Here every output pixel accumulates its taps inside the input with the engine's grouped
//! kernel (`arch::grouped_kernel`: each block of 16 output channels reads its groups' input
//! dwords through one permute), exact i32; taps in the padding are skipped and the input zero
//! point enters as `−zx·Σ_(taps inside) w`. Then the GEMM path's requantization. Used for
//! weights without zero points (symmetric, as torch's x86 qconfigs make them) where the plan
//! fits (`arch::grouped_plan`: any input channels per group whose block of output channels
//! reads one window); every engine gives the bits of the GEMM path.

use super::ConvInput;
use crate::aligned::Aligned;
use crate::arch::{
    grouped_plan, grouped_quads, grouped_weights, grouped_weights_split16, with_features, Engine,
    GroupedBlock, GroupedKernel, GroupedWeights, Vectorized,
};
use crate::error::Result;
use crate::quantize::QInt;
use crate::requant::Requantize;
use crate::threading::{parallel_for, threads_for};
use std::sync::{Mutex, OnceLock};

/// A grouped conv's weights for the grouped kernels.
#[derive(Clone, Debug)]
pub(crate) struct PackedGrouped {
    cin_g: usize,
    /// K quads per tap (`arch::grouped_quads`).
    quads: usize,
    cout: usize,
    taps: usize,
    /// The plans for blocks of 16 (zmm) and 8 (ymm) output channels, where they fit.
    blocks16: Option<Vec<GroupedBlock>>,
    blocks8: Option<Vec<GroupedBlock>>,
    /// `[taps][quads][cout rounded up to 16][4]`, see `arch::grouped_weights`.
    w: Aligned<i8>,
    /// The same as i16 pairs for AVX2 (`arch::grouped_weights_split16`), built on first use.
    w16: OnceLock<Vec<i16>>,
    /// `Σ_j w[o][j][t]` per tap (`[taps][cout]`) and over every tap (`[cout]`).
    tap_sums: Vec<i32>,
    sums: Vec<i32>,
    scales: Vec<f32>,
}

impl PackedGrouped {
    /// `w`: torch's `[cout, cin_g, taps]` int8 with zero points 0; `scales`: per output channel.
    /// None where the plan does not fit (then im2col + GEMM runs).
    pub(crate) fn new(
        w: &[i8],
        cin: usize,
        cout: usize,
        groups: usize,
        taps: usize,
        scales: Vec<f32>,
    ) -> Result<Option<Self>> {
        let (cin_g, cout_g) = (cin / groups, cout / groups);
        let blocks16 = grouped_plan(cin, cin_g, cout_g, cout, 16);
        let blocks8 = grouped_plan(cin, cin_g, cout_g, cout, 8);
        if blocks16.is_none() && blocks8.is_none() {
            return Ok(None);
        }
        let mut tap_sums = vec![0i32; taps * cout];
        for o in 0..cout {
            for j in 0..cin_g {
                for t in 0..taps {
                    tap_sums[t * cout + o] += w[(o * cin_g + j) * taps + t] as i32;
                }
            }
        }
        let sums = (0..cout)
            .map(|o| (0..taps).map(|t| tap_sums[t * cout + o]).sum())
            .collect();
        let wv = grouped_weights(w, cout, cout_g, cin_g, taps);
        Ok(Some(PackedGrouped {
            cin_g,
            quads: grouped_quads(cin_g, groups),
            cout,
            taps,
            blocks16,
            blocks8,
            w: Aligned::from_slice(&wv, "grouped convolution weights")?,
            w16: OnceLock::new(),
            tap_sums,
            sums,
            scales,
        }))
    }

    /// One scale per output channel.
    pub(crate) fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The plan for `kernel`'s block width, where it fits.
    pub(crate) fn blocks_for(&self, kernel: &GroupedKernel) -> Option<&[GroupedBlock]> {
        match kernel.lanes {
            16 => self.blocks16.as_deref(),
            _ => self.blocks8.as_deref(),
        }
    }

    /// The weights in the form `kernel` reads.
    fn weights_for(&self, kernel: &GroupedKernel) -> GroupedWeights<'_> {
        if kernel.split16 {
            let coutp = self.cout.div_ceil(16) * 16;
            let w16 = self.w16.get_or_init(|| {
                grouped_weights_split16(self.w.as_slice(), self.taps, self.quads, coutp)
            });
            GroupedWeights::Split16(w16)
        } else {
            GroupedWeights::Bytes(self.w.as_slice())
        }
    }

    /// Bytes held (for memory accounting).
    pub(crate) fn bytes(&self) -> usize {
        let plans = [&self.blocks16, &self.blocks8]
            .iter()
            .filter_map(|b| b.as_ref())
            .map(|b| b.iter().map(|b| b.idx.len() * 64 + 16).sum::<usize>())
            .sum::<usize>();
        self.w.bytes()
            + self.w16.get().map_or(0, |v| v.len() * 2)
            + (self.tap_sums.len() + self.sums.len()) * 4
            + self.scales.len() * 4
            + plans
    }
}

/// Runs the conv through `kernel` (with its plan `blocks`) into `out` (`[pixels, cout]`),
/// lines over threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grouped<T: QInt>(
    engine: Engine,
    kernel: GroupedKernel,
    blocks: &[GroupedBlock],
    gp: &PackedGrouped,
    input: &ConvInput<'_>,
    stage: &Requantize<T>,
    out: &mut [T],
    threads: usize,
) -> Result<()> {
    let line_len = input.osp[2] * gp.cout;
    if out.is_empty() || line_len == 0 {
        return Ok(());
    }
    let lines = out.len() / line_len;
    let ctx = Ctx {
        input,
        gp,
        kernel,
        blocks,
        w: gp.weights_for(&kernel),
        stage,
    };
    let macs = out.len().saturating_mul(gp.taps * gp.cin_g);
    let threads = threads_for(macs, threads).min(lines);
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

struct Ctx<'a, T: QInt> {
    input: &'a ConvInput<'a>,
    gp: &'a PackedGrouped,
    kernel: GroupedKernel,
    blocks: &'a [GroupedBlock],
    w: GroupedWeights<'a>,
    stage: &'a Requantize<T>,
}

/// Lines `l0..` of output into `out`, compiled per ISA.
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

#[inline(always)]
fn run_lines<T: QInt>(ctx: &Ctx<'_, T>, l0: usize, out: &mut [T]) {
    let (input, gp) = (ctx.input, ctx.gp);
    let (geom, sp, osp, c, cout) = (&input.geom, input.sp, input.osp, input.c, gp.cout);
    let [kd_n, kh_n, kw_n] = geom.kernel;
    let (sw, pw, dw) = (geom.stride[2], geom.padding[2], geom.dilation[2]);
    let coutp = ctx.blocks.len() * ctx.kernel.lanes;
    let zx = input.zp as i32;
    // the output columns whose kw taps all fall inside the input row
    let span = (kw_n - 1) * dw;
    let ow_lo = pw.div_ceil(sw).min(osp[2]);
    let ow_hi = if sp[2] + pw > span {
        ((sp[2] + pw - span - 1) / sw + 1).clamp(ow_lo, osp[2])
    } else {
        ow_lo
    };
    let mut rows: Vec<(usize, usize)> = Vec::with_capacity(kd_n * kh_n);
    let mut taps: Vec<(usize, usize)> = Vec::with_capacity(gp.taps);
    let mut acc = vec![0i32; osp[2] * coutp];
    let mut inside_sums = vec![0i32; cout];
    let finish = |acc: &mut [i32], sums: &[i32], px: &mut [T]| finish(ctx.stage, zx, acc, sums, px);
    for (li, out_line) in out.chunks_exact_mut(osp[2] * cout).enumerate() {
        let l = l0 + li;
        let oh = l % osp[1];
        let od = (l / osp[1]) % osp[0];
        let b = l / (osp[1] * osp[0]);
        rows.clear();
        for kd in 0..kd_n {
            let id =
                (od * geom.stride[0] + kd * geom.dilation[0]) as isize - geom.padding[0] as isize;
            for kh in 0..kh_n {
                let ih = (oh * geom.stride[1] + kh * geom.dilation[1]) as isize
                    - geom.padding[1] as isize;
                if id >= 0 && (id as usize) < sp[0] && ih >= 0 && (ih as usize) < sp[1] {
                    let pix = ((b * sp[0] + id as usize) * sp[1] + ih as usize) * sp[2];
                    rows.push(((kd * kh_n + kh) * kw_n, pix));
                }
            }
        }
        // the interior run: every tap inside, one kernel call
        let mut interior = 0..0;
        if rows.len() == kd_n * kh_n && ow_hi > ow_lo {
            interior = ow_lo..ow_hi;
            let iw0 = ow_lo * sw - pw;
            taps.clear();
            for &(t0, pix) in &rows {
                taps.extend((0..kw_n).map(|kw| (t0 + kw, (pix + iw0 + kw * dw) * c)));
            }
            let count = ow_hi - ow_lo;
            let run = &mut acc[..count * coutp];
            (ctx.kernel.accumulate)(
                input.x,
                &taps,
                sw * c,
                count,
                ctx.blocks,
                ctx.w,
                gp.taps,
                run,
            );
            let dst = &mut out_line[ow_lo * cout..ow_hi * cout];
            for (px, a) in dst.chunks_exact_mut(cout).zip(run.chunks_exact_mut(coutp)) {
                finish(a, &gp.sums, px);
            }
        }
        for (ow, px) in out_line.chunks_exact_mut(cout).enumerate() {
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
            let a = &mut acc[..coutp];
            (ctx.kernel.accumulate)(input.x, &taps, 0, 1, ctx.blocks, ctx.w, gp.taps, a);
            inside_sums.fill(0);
            for &(t, _) in &taps {
                let ts = &gp.tap_sums[t * cout..(t + 1) * cout];
                for (s, &v) in inside_sums.iter_mut().zip(ts) {
                    *s += v;
                }
            }
            finish(a, &inside_sums, px);
        }
    }
}

/// Requantizes one pixel's accumulators after the zero-point term `−zx·Σ w` (taps inside).
/// `#[inline(always)]`: compiled inside the engine's `Vectorized` body, with its features.
#[inline(always)]
fn finish<T: QInt>(stage: &Requantize<T>, zx: i32, acc: &mut [i32], sums: &[i32], px: &mut [T]) {
    let acc = &mut acc[..px.len()];
    for (a, &s) in acc.iter_mut().zip(sums) {
        *a = a.wrapping_sub(zx.wrapping_mul(s));
    }
    stage.requantize_row(acc, 0, px);
}
