//! The safe GEMM driver: tiles over M and N, runs the engine's micro-kernel on each tile and
//! applies the output stage to it, on one thread or several.

pub mod reference;

use std::sync::Mutex;

use crate::arch::{needs_bcast16, run_block_for, tile_kernel, Engine, TileKernel};
use crate::error::{check_len, KernelError, Result};
use crate::packed::{PackedA, PackedWeights, NR};
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
    if !engine.is_available() {
        return Err(KernelError::KernelUnavailable(format!(
            "engine {:?} is not available on this CPU",
            engine.name()
        )));
    }
    if m == 0 {
        return Ok(());
    }
    let corr = Correction::new(a, w);
    let kern = tile_kernel(engine, a, w);
    if needs_bcast16(engine, a) {
        a.prepare_bcast16()?;
    }
    let groups = w.panels().div_ceil(kern.np);
    let macs = m.saturating_mul(n).saturating_mul(a.kp());
    // parallelism sized by the work and bounded by the machine
    let threads = threads_for(macs, threads);
    let job = Job {
        kern,
        a,
        w,
        stage,
        corr: &corr,
    };
    let cols_per_group = kern.np * NR;
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
        parallel_for(threads, tasks.len(), &|t| {
            let gs = tasks[t].clone();
            let c0 = gs.start * cols_per_group;
            let c1 = (gs.end * cols_per_group).min(n);
            let mut buf = vec![S::Out::default(); m * (c1 - c0)];
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
        let row_blocks = m.div_ceil(kern.mr);
        let per_task = row_blocks.div_ceil(threads * 2).max(1) * kern.mr;
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

/// Everything a block of tiles needs besides its ranges.
pub(crate) struct Job<'j, S: OutputStage> {
    pub kern: TileKernel,
    pub a: &'j PackedA,
    pub w: &'j PackedWeights,
    pub stage: &'j S,
    pub corr: &'j Correction<'j>,
}

/// Computes rows `rows` × panel groups `gs` into `out` (laid out as `at` says).
/// `#[inline(always)]` so that the engine's wrapper (`arch::run_block_for`) compiles it, output
/// stage included, with the engine's float features (FMA on x86).
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
    } = *job;
    let n = w.n();
    let ld = kern.np * NR;
    let mut dots = vec![0i32; kern.mr * ld];
    for g in gs {
        let p0 = g * kern.np;
        let panels = kern.np.min(w.panels() - p0);
        let col0 = p0 * NR;
        let cols = (panels * NR).min(n - col0);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let nr = kern.mr.min(rows.end - r0);
            (kern.dot)(a, r0, nr, w, p0, panels, &mut dots);
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
