//! The safe GEMM driver: tiles over M and N, runs the engine's micro-kernel on each tile and
//! applies the output stage to it, on one thread or several.

pub mod reference;

use std::sync::Mutex;

use crate::arch::{tile_kernel, with_features, AForm, Engine, Panels, TileKernel, Vectorized};
use crate::error::{check_len, KernelError, Result};
use crate::packed::{PackedA, PackedWeights, Residuals, NR};
use crate::requant::{Correction, OutAt, OutputStage, Tile};
use crate::threading::{parallel_for, threads_for};

/// `out[M, N] = stage(A[M, K] · W[N, K]ᵀ)`, with exact i32 accumulation and zero-point
/// correction. `threads` is the most worker threads to use (small problems use one).
pub fn gemm<S: OutputStage>(
    engine: Engine,
    a: &PackedA,
    w: &PackedWeights,
    stage: &S,
    out: &mut [S::Out],
    threads: usize,
) -> Result<()> {
    gemm_split(engine, a, w, stage, out, threads, None)
}

/// [`gemm`] of activations split by [`PackedA::split_7bit`]: `fix` holds the values taken off
/// `a`, added back as `r·w[k][·]` to the accumulators of their rows before the output stage
/// (those tiles skip the fused requantization) — the sums of the unsplit activations.
pub fn gemm_split<S: OutputStage>(
    engine: Engine,
    a: &PackedA,
    w: &PackedWeights,
    stage: &S,
    out: &mut [S::Out],
    threads: usize,
    fix: Option<&Residuals>,
) -> Result<()> {
    if a.k() != w.k() {
        return Err(KernelError::ShapeMismatch {
            what: "matmul inner dimension".into(),
            expected: format!("in_features = {}", w.k()),
            got: format!("input with last dimension {}", a.k()),
        });
    }
    let (m, n) = (a.m(), w.n());
    stage.check_rows(m)?;
    check_len(
        "output",
        crate::error::checked_numel(&[m, n], "output")?,
        out.len(),
    )?;
    let kern = tile_kernel(engine, m, w.panels(), a.max_value()).ok_or_else(|| {
        KernelError::KernelUnavailable(format!(
            "engine {:?} is not available on this CPU",
            engine.name()
        ))
    })?;
    if m == 0 {
        return Ok(());
    }
    let corr = Correction::new(a, w);
    if kern.a_form() == AForm::Bcast16 {
        a.prepare_bcast16()?;
    }
    let groups = w.panels().div_ceil(kern.np());
    let macs = m.saturating_mul(n).saturating_mul(a.kp());
    // parallelism sized by the work and bounded by the machine
    let threads = threads_for(macs, threads);
    if let Some(f) = fix {
        check_len("split activation rows", m + 1, f.rows() + 1)?;
    }
    let job = Job {
        kern,
        a,
        w,
        stage,
        corr: &corr,
        fix,
    };
    let cols_per_group = kern.np() * NR;
    if threads == 1 {
        run_block_for(
            engine,
            &job,
            0..m,
            0..groups,
            out,
            OutAt {
                ld: n,
                row0: 0,
                col0: 0,
            },
        );
    } else if groups >= threads * 2 {
        // Split the columns: each task keeps its weight panels hot in cache while it sweeps all
        // rows, and fills a private block of its columns, copied into place afterwards.
        let per_task = groups.div_ceil(threads * 2);
        let tasks: Vec<_> = (0..groups)
            .step_by(per_task)
            .map(|g0| g0..(g0 + per_task).min(groups))
            .collect();
        let parts: Vec<Mutex<Vec<S::Out>>> = tasks.iter().map(|_| Mutex::new(Vec::new())).collect();
        let out_view: &[S::Out] = out;
        parallel_for(threads, tasks.len(), &|t| {
            let gs = tasks[t].clone();
            let c0 = gs.start * cols_per_group;
            let c1 = (gs.end * cols_per_group).min(n);
            let mut buf = vec![S::Out::default(); m * (c1 - c0)];
            if stage.reads_output() {
                // an accumulating stage adds to what is there: start from the output's columns
                for (dst, src) in buf.chunks_exact_mut(c1 - c0).zip(out_view.chunks_exact(n)) {
                    dst.copy_from_slice(&src[c0..c1]);
                }
            }
            run_block_for(
                engine,
                &job,
                0..m,
                gs,
                &mut buf,
                OutAt {
                    ld: c1 - c0,
                    row0: 0,
                    col0: c0,
                },
            );
            *parts[t].lock().unwrap_or_else(|e| e.into_inner()) = buf;
        });
        for (gs, part) in tasks.iter().zip(parts) {
            let buf = part.into_inner().unwrap_or_else(|e| e.into_inner());
            let c0 = gs.start * cols_per_group;
            let c1 = (gs.end * cols_per_group).min(n);
            for (dst, src) in out.chunks_exact_mut(n).zip(buf.chunks_exact(c1 - c0)) {
                dst[c0..c1].copy_from_slice(src);
            }
        }
    } else {
        // Few columns: split the rows; each task owns a contiguous band of output rows.
        let row_blocks = m.div_ceil(kern.mr());
        let per_task = row_blocks.div_ceil(threads * 2).max(1) * kern.mr();
        let bands: Vec<Mutex<&mut [S::Out]>> =
            out.chunks_mut(per_task * n).map(Mutex::new).collect();
        parallel_for(threads, bands.len(), &|t| {
            let mut band = bands[t].lock().unwrap_or_else(|e| e.into_inner());
            let r0 = t * per_task;
            let rows = r0..(r0 + per_task).min(m);
            run_block_for(
                engine,
                &job,
                rows,
                0..groups,
                &mut band,
                OutAt {
                    ld: n,
                    row0: r0,
                    col0: 0,
                },
            );
        });
    }
    Ok(())
}

/// [`run_block`] compiled with `engine`'s vector features (FMA on the x86 engines), so that
/// output stages use hardware FMA; results are the same either way (`mul_add` is a correctly
/// rounded FMA on every path).
#[inline(always)]
fn run_block_for<S: OutputStage>(
    engine: Engine,
    job: &Job<'_, S>,
    rows: std::ops::Range<usize>,
    gs: std::ops::Range<usize>,
    out: &mut [S::Out],
    at: OutAt,
) {
    with_features(engine, Block { job, rows, gs, at }, out)
}

/// A block of tiles, compiled per ISA.
struct Block<'b, 'j, S: OutputStage> {
    job: &'b Job<'j, S>,
    rows: std::ops::Range<usize>,
    gs: std::ops::Range<usize>,
    at: OutAt,
}

impl<S: OutputStage> Vectorized for Block<'_, '_, S> {
    type Elem = S::Out;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [S::Out]) {
        run_block(self.job, self.rows, self.gs, out, self.at)
    }
}

/// Everything a block of tiles needs besides its ranges.
pub(crate) struct Job<'j, S: OutputStage> {
    pub kern: TileKernel,
    pub a: &'j PackedA<'j>,
    pub w: &'j PackedWeights,
    pub stage: &'j S,
    pub corr: &'j Correction<'j>,
    pub fix: Option<&'j Residuals>,
}

/// Computes rows `rows` × panel groups `gs` into `out` (laid out as `at` says).
/// `#[inline(always)]` so that [`run_block_for`] compiles it, output stage included, with the
/// engine's float features (FMA on x86).
#[inline(always)]
pub(crate) fn run_block<S: OutputStage>(
    job: &Job<'_, S>,
    rows: std::ops::Range<usize>,
    gs: std::ops::Range<usize>,
    out: &mut [S::Out],
    at: OutAt,
) {
    let Job {
        kern,
        a,
        w,
        stage,
        corr,
        fix,
    } = *job;
    let n = w.n();
    let ld = kern.np() * NR;
    let mut dots = vec![0i32; kern.mr() * ld];
    for g in gs {
        let p0 = g * kern.np();
        let panels = kern.np().min(w.panels() - p0);
        let col0 = p0 * NR;
        let cols = (panels * NR).min(n - col0);
        let mut r0 = rows.start;
        let (wp, cs) = (w.panel_data(p0, panels), w.panel_col_sums(p0, panels));
        let tile_at = |r0: usize, nr: usize| Panels {
            a: a.rows(r0, nr),
            a16: if kern.a_form() == AForm::Bcast16 {
                a.rows_bcast16(r0, nr)
            } else {
                &[]
            },
            kp: a.kp(),
            rows: nr,
            a_max: a.max_value(),
            w: wp,
            col_sums: cs,
            panels,
        };
        // a kernel that loops over its tiles itself takes all rows in one checked call
        if kern.many_rows() && kern.a_form() == AForm::Bytes && fix.is_none() && r0 < rows.end {
            let tile = tile_at(r0, rows.end - r0);
            if stage.store_fused(corr, &kern, &tile, (r0, col0, cols), out, at) {
                continue;
            }
        }
        while r0 < rows.end {
            let nr = kern.mr().min(rows.end - r0);
            let tile = tile_at(r0, nr);
            let split = fix.filter(|f| f.any_in(r0, nr));
            if split.is_none() && stage.store_fused(corr, &kern, &tile, (r0, col0, cols), out, at) {
                r0 += nr;
                continue;
            }
            kern.dot(&tile, &mut dots);
            if let Some(f) = split {
                add_residuals(f, r0, nr, wp, a.kp(), cols, &mut dots, ld);
            }
            stage.store(
                corr,
                Tile {
                    dots: &dots,
                    ld,
                    row0: r0,
                    rows: nr,
                    col0,
                    cols,
                },
                out,
                at,
            );
            r0 += nr;
        }
    }
}

/// `dots[i][c] += r·w[k][col0 + c]` for every split-off `(k, r)` of rows `r0..r0 + nr` (`wp`:
/// the tile's weight panels, `kp` bytes of K each, in the packed layout).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_residuals(
    fix: &Residuals,
    r0: usize,
    nr: usize,
    wp: &[i8],
    kp: usize,
    cols: usize,
    dots: &mut [i32],
    ld: usize,
) {
    use crate::packed::KR;
    for i in 0..nr {
        let d = &mut dots[i * ld..i * ld + cols];
        for (k, r) in fix.row(r0 + i) {
            let base = (k / KR) * NR * KR + k % KR;
            for (c, o) in d.iter_mut().enumerate() {
                let w = wp[(c / NR) * kp * NR + base + (c % NR) * KR];
                *o = o.wrapping_add(r.wrapping_mul(w as i32));
            }
        }
    }
}
