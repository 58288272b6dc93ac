//! The safe GEMM driver: tiles over M and N, runs the engine's micro-kernel on each tile and
//! applies the output stage to it, on one thread or several.

pub mod reference;

use std::sync::Mutex;

use crate::arch::{tile_kernel, with_features, AForm, Engine, Panels, TileKernel, Vectorized};
use crate::error::{check_len, KernelError, Result};
use crate::packed::{PackedA, PackedWeights, WideRows, NR};
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
    gemm_wide(engine, a, w, stage, out, threads, None)
}

/// [`gemm`] with the rows of `a` that hold a value above 127 listed apart
/// ([`PackedA::wide_rows_7bit`]): AVX2's 7-bit kernel runs the other rows (fused output stage
/// and all), and each listed row goes once through it clamped to 127, the clamped-off part
/// added back as `r·w[k][·]` to its accumulators before the output stage — the exact sums.
pub(crate) fn gemm_wide<S: OutputStage>(
    engine: Engine,
    a: &PackedA,
    w: &PackedWeights,
    stage: &S,
    out: &mut [S::Out],
    threads: usize,
    wide: Option<&WideRows>,
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
    // with the wide rows apart, every row the kernel sees is at most 127
    let a_max = if wide.is_some() { 127 } else { a.max_value() };
    let kern = tile_kernel(engine, m, w.panels(), a_max).ok_or_else(|| {
        KernelError::KernelUnavailable(format!(
            "engine {:?} is not available on this CPU",
            engine.name()
        ))
    })?;
    if let Some(wr) = wide {
        check_len("wide activation rows", m.max(wr.end()), m)?;
        if kern.a_form() != AForm::Bytes {
            return Err(KernelError::KernelUnavailable(
                "rows computed apart need a kernel that reads activation bytes".into(),
            ));
        }
    }
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
    let job = Job {
        kern,
        a,
        w,
        stage,
        corr: &corr,
        wide,
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
    pub wide: Option<&'j WideRows>,
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
        wide,
    } = *job;
    let n = w.n();
    let ld = kern.np() * NR;
    let mut dots = vec![0i32; kern.mr() * ld];
    // the wide rows of this block (and their index in the list)
    let (wide_rows, w0) = match wide {
        Some(wr) => (wr.within(rows.clone()), wr.range_within(rows.clone()).start),
        None => (&[][..], 0),
    };
    let in_place = wide.is_some_and(|wr| wr.clamped());
    let kp = a.kp();
    // a tile holding wide rows: its rows clamped to 127 (unless they are in place) and what
    // the clamp took off, `(row in the tile, k, r)`
    let mut clamped: Vec<u8> = Vec::new();
    let mut taken: Vec<(usize, usize, i32)> = Vec::new();
    for g in gs {
        let p0 = g * kern.np();
        let panels = kern.np().min(w.panels() - p0);
        let col0 = p0 * NR;
        let cols = (panels * NR).min(n - col0);
        let (wp, cs) = (w.panel_data(p0, panels), w.panel_col_sums(p0, panels));
        let base = Panels {
            a: &[],
            a16: &[],
            kp: a.kp(),
            rows: 0,
            // the rows outside `wide_rows` hold nothing above 127
            a_max: if wide.is_some() { 127 } else { a.max_value() },
            w: wp,
            col_sums: cs,
            panels,
        };
        let tile_of = |r0: usize, nr: usize| Panels {
            a: a.rows(r0, nr),
            a16: if kern.a_form() == AForm::Bcast16 {
                a.rows_bcast16(r0, nr)
            } else {
                &[]
            },
            rows: nr,
            ..base
        };
        let store = |dots: &[i32], r0: usize, nr: usize, out: &mut [S::Out]| {
            let tile = Tile {
                dots,
                ld,
                row0: r0,
                rows: nr,
                col0,
                cols,
            };
            stage.store(corr, tile, out, at);
        };
        // stretches of whole tiles without wide rows (a kernel that loops over its tiles
        // itself takes a stretch in one checked call), and the tiles holding wide rows
        let mr = kern.mr();
        let mut r0 = rows.start;
        let mut wi = 0;
        while r0 < rows.end {
            let next = wide_rows.get(wi).map_or(rows.end, |&r| r as usize);
            let end = if next >= rows.end {
                rows.end
            } else {
                r0 + (next - r0) / mr * mr
            };
            if end > r0 {
                let whole = kern.many_rows() && kern.a_form() == AForm::Bytes;
                if !(whole
                    && stage.store_fused(
                        corr,
                        &kern,
                        &tile_of(r0, end - r0),
                        (r0, col0, cols),
                        out,
                        at,
                    ))
                {
                    let mut t0 = r0;
                    while t0 < end {
                        let nr = mr.min(end - t0);
                        let tile = tile_of(t0, nr);
                        if !stage.store_fused(corr, &kern, &tile, (t0, col0, cols), out, at) {
                            kern.dot(&tile, &mut dots);
                            store(&dots, t0, nr, out);
                        }
                        t0 += nr;
                    }
                }
                r0 = end;
                continue;
            }
            // a tile holding wide rows: clamped through the 7-bit kernel, then what the clamp
            // took off added back before the output stage
            let nr = mr.min(rows.end - r0);
            let wj = wi + wide_rows[wi..].partition_point(|&r| (r as usize) < r0 + nr);
            taken.clear();
            let tile_a = if in_place {
                if let Some(wr) = wide {
                    for (j, &r) in wide_rows[wi..wj].iter().enumerate() {
                        let i = r as usize - r0;
                        taken.extend(wr.taken(w0 + wi + j).map(|(k, v)| (i, k, v)));
                    }
                }
                a.rows(r0, nr)
            } else {
                clamped.clear();
                for (i, row) in a.rows(r0, nr).chunks_exact(kp).enumerate() {
                    for (k, &v) in row.iter().enumerate() {
                        clamped.push(v.min(127));
                        if v > 127 {
                            taken.push((i, k, v as i32 - 127));
                        }
                    }
                }
                &clamped[..]
            };
            let tile = Panels {
                a: tile_a,
                rows: nr,
                a_max: 127,
                ..base
            };
            kern.dot(&tile, &mut dots);
            add_taken(&taken, wp, kp, cols, &mut dots, ld);
            store(&dots, r0, nr, out);
            r0 += nr;
            wi = wj;
        }
    }
}

/// `dots[i][c] += r·w[k][col0 + c]` for every `(i, k, r)` taken off row `i` of a tile (`wp`:
/// the tile's weight panels, `kp` bytes of K each, in the packed layout; rows `ld` apart).
#[inline(always)]
fn add_taken(
    taken: &[(usize, usize, i32)],
    wp: &[i8],
    kp: usize,
    cols: usize,
    dots: &mut [i32],
    ld: usize,
) {
    use crate::packed::KR;
    for &(i, k, r) in taken {
        let base = (k / KR) * NR * KR + k % KR;
        for (c, o) in dots[i * ld..i * ld + cols].iter_mut().enumerate() {
            let w = wp[(c / NR) * kp * NR + base + (c % NR) * KR];
            *o = o.wrapping_add(r.wrapping_mul(w as i32));
        }
    }
}
