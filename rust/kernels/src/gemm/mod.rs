//! The safe GEMM driver: tiles over M and N, runs the engine's micro-kernel on each tile and
//! applies the output stage to it, on one thread or several.

pub mod reference;

use rayon::prelude::*;

use crate::arch::{run_block_for, tile_kernel, Engine, TileKernel};
use crate::error::{check_len, KernelError, Result};
use crate::packed::{PackedA, PackedWeights, NR};
use crate::requant::{Correction, OutputStage, Tile};
use crate::threading::{pool, PARALLEL_MIN_MACS};

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
    check_len("output", m * n, out.len())?;
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
    let kern = tile_kernel(engine, m);
    let groups = w.panels().div_ceil(kern.np);
    let macs = m.saturating_mul(n).saturating_mul(a.kp());
    let threads = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        threads.max(1)
    };
    let job = Job {
        kern,
        a,
        w,
        stage,
        corr: &corr,
    };
    let run = |rows: std::ops::Range<usize>,
               gs: std::ops::Range<usize>,
               o: &mut [S::Out],
               row0: usize| { run_block_for(engine, &job, rows, gs, o, n, row0) };
    if threads == 1 {
        run(0..m, 0..groups, out, 0);
    } else if m >= kern.mr * threads * 2 {
        // Split rows: each task owns a contiguous band of output rows.
        let row_blocks = m.div_ceil(kern.mr);
        let per_task = row_blocks.div_ceil(threads * 4).max(1) * kern.mr;
        pool(threads).install(|| {
            out.par_chunks_mut(per_task * n)
                .enumerate()
                .for_each(|(t, chunk)| {
                    let r0 = t * per_task;
                    run(r0..(r0 + per_task).min(m), 0..groups, chunk, r0);
                })
        });
    } else {
        // Few rows: split the columns; each task fills a private buffer, copied back after.
        let per_task = groups.div_ceil(threads * 2).max(1);
        let tasks: Vec<_> = (0..groups)
            .step_by(per_task)
            .map(|g0| g0..(g0 + per_task).min(groups))
            .collect();
        let parts: Vec<(std::ops::Range<usize>, Vec<S::Out>)> = pool(threads).install(|| {
            tasks
                .into_par_iter()
                .map(|gs| {
                    let mut buf = vec![S::Out::default(); m * n];
                    run(0..m, gs.clone(), &mut buf, 0);
                    (gs, buf)
                })
                .collect()
        });
        let cols_per_group = kern.np * NR;
        for (gs, buf) in parts {
            let c0 = gs.start * cols_per_group;
            let c1 = (gs.end * cols_per_group).min(n);
            for i in 0..m {
                out[i * n + c0..i * n + c1].copy_from_slice(&buf[i * n + c0..i * n + c1]);
            }
        }
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

/// Computes rows `rows` × panel groups `gs` into `out` (row stride `ldo`, first row `out_row0`).
/// `#[inline(always)]` so that the engine's wrapper (`arch::run_block_for`) compiles it, output
/// stage included, with the engine's float features (FMA on x86).
#[inline(always)]
pub(crate) fn run_block<S: OutputStage>(
    job: &Job<'_, S>,
    rows: std::ops::Range<usize>,
    gs: std::ops::Range<usize>,
    out: &mut [S::Out],
    ldo: usize,
    out_row0: usize,
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
                ldo,
                out_row0,
            );
            r0 += nr;
        }
    }
}
