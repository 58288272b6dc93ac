//! Engines (ISA paths): detection once per process, selection by name, and the per-engine
//! micro-kernel table. `#[cfg(target_arch)]` only decides which files compile; the engine
//! that runs is chosen at run time, so one wheel serves every CPU of an architecture.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::error::{KernelError, Result};
use crate::packed::{PackedA, PackedWeights};

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// An ISA path. The names are those of `ferroquant.backends.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Avx512Vnni,
    AvxVnni,
    Avx2,
    NeonDotprod,
    Neon,
    Scalar,
}

/// Every engine, best first (the order `auto` tries them in).
pub const ALL_ENGINES: [Engine; 6] = [
    Engine::Avx512Vnni,
    Engine::AvxVnni,
    Engine::Avx2,
    Engine::NeonDotprod,
    Engine::Neon,
    Engine::Scalar,
];

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Avx512Vnni => "avx512vnni",
            Engine::AvxVnni => "avxvnni",
            Engine::Avx2 => "avx2",
            Engine::NeonDotprod => "neon_dotprod",
            Engine::Neon => "neon",
            Engine::Scalar => "scalar",
        }
    }

    /// Parses an engine name (exactly as [`Engine::name`] prints it).
    pub fn from_name(name: &str) -> Result<Engine> {
        ALL_ENGINES
            .iter()
            .copied()
            .find(|e| e.name() == name)
            .ok_or_else(|| {
                KernelError::KernelUnavailable(format!(
                    "unknown engine {name:?}; choose \"auto\" or one of {}",
                    ALL_ENGINES.map(|e| format!("{:?}", e.name())).join(", ")
                ))
            })
    }

    /// Whether this CPU can run the engine (detected once, then cached).
    pub fn is_available(self) -> bool {
        detected().contains(&self)
    }

    /// Index into [`ALL_ENGINES`].
    fn index(self) -> u8 {
        ALL_ENGINES.iter().position(|&e| e == self).unwrap_or(5) as u8
    }
}

fn detect() -> Vec<Engine> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::detect());
    #[cfg(target_arch = "aarch64")]
    v.extend(aarch64::detect());
    v.push(Engine::Scalar);
    v
}

fn detected() -> &'static [Engine] {
    static DETECTED: OnceLock<Vec<Engine>> = OnceLock::new();
    DETECTED.get_or_init(detect)
}

/// The engines this CPU supports, best first; `scalar` is always last.
pub fn available_engines() -> Vec<Engine> {
    detected().to_vec()
}

/// The engine `auto` resolves to.
pub fn best_engine() -> Engine {
    detected()[0]
}

/// 255 = auto; otherwise the index of the forced engine.
static SELECTED: AtomicU8 = AtomicU8::new(AUTO);
const AUTO: u8 = 255;

/// Selects the engine used by later calls: `"auto"` or an engine name this CPU supports.
pub fn set_engine(name: &str) -> Result<()> {
    if name == "auto" {
        SELECTED.store(AUTO, Ordering::Relaxed);
        return Ok(());
    }
    let e = Engine::from_name(name)?;
    if !e.is_available() {
        return Err(KernelError::KernelUnavailable(format!(
            "engine {:?} is not available on this CPU; available: {}",
            name,
            detected()
                .iter()
                .map(|e| format!("{:?}", e.name()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    SELECTED.store(e.index(), Ordering::Relaxed);
    Ok(())
}

/// `"auto"` or the forced engine's name.
pub fn engine_setting() -> &'static str {
    match SELECTED.load(Ordering::Relaxed) {
        AUTO => "auto",
        i => ALL_ENGINES[i as usize].name(),
    }
}

/// The engine calls run on now.
pub fn current_engine() -> Engine {
    match SELECTED.load(Ordering::Relaxed) {
        AUTO => best_engine(),
        i => ALL_ENGINES[i as usize],
    }
}

/// `dot(a, r0, rows, w, p0, panels, out)`, see [`TileKernel`].
pub(crate) type DotFn = fn(&PackedA, usize, usize, &PackedWeights, usize, usize, &mut [i32]);

/// A micro-kernel: exact `u8 × s8 → i32` dot products of up to `mr` activation rows with up to
/// `np` weight panels. Arguments of `dot`: `a` and `r0`, `rows` (the activation rows
/// `r0..r0+rows`; each kernel reads the form its ISA family uses), `w` (the
/// packed weights: each kernel reads the panel form its ISA family uses, and column sums if it
/// shifts activations to signed), `p0` and `panels` (the panels `p0..p0+panels`), `out`
/// (`rows × np*16`, row stride `np*16`); `out[r][c] = Σ_k a[r][k]·w[k][c]`.
/// Each `dot` is safe: it checks the CPU feature and every length before any `unsafe`.
#[derive(Clone, Copy)]
pub(crate) struct TileKernel {
    pub mr: usize,
    pub np: usize,
    pub dot: DotFn,
}

/// The micro-kernel `engine` uses for a GEMM with activations `a`: a GEMV-shaped kernel for
/// few rows where the engine has one, and on AVX2 the `vpmaddubsw` kernel when every
/// activation is at most 127 (exact there; both kernels give the same bits).
pub(crate) fn tile_kernel(engine: Engine, a: &PackedA, w: &PackedWeights) -> TileKernel {
    #[cfg(target_arch = "x86_64")]
    if engine == Engine::Avx512Vnni && a.m() <= x86_64::avx512vnni::GEMV.mr {
        return x86_64::avx512vnni::GEMV;
    }
    #[cfg(target_arch = "x86_64")]
    if engine == Engine::Avx512Vnni && w.panels() % 4 == 0 && w.panels() % 3 != 0 {
        return x86_64::avx512vnni::KERNEL_64;
    }
    let _ = w;
    #[cfg(target_arch = "x86_64")]
    if engine == Engine::Avx2 && a.fits_7bit() {
        return x86_64::avx2::KERNEL_7BIT;
    }
    let _ = a;
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni => x86_64::avx512vnni::KERNEL,
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni => x86_64::avxvnni::KERNEL,
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 => x86_64::avx2::KERNEL,
        #[cfg(target_arch = "aarch64")]
        Engine::NeonDotprod => aarch64::neon_dotprod::KERNEL,
        #[cfg(target_arch = "aarch64")]
        Engine::Neon => aarch64::neon::KERNEL,
        _ => generic::KERNEL,
    }
}

/// Whether the kernel [`tile_kernel`] picks reads `PackedA::rows_bcast16` (AVX2's exact
/// kernel), whose buffer the driver then builds up front, where its allocation can fail cleanly.
pub(crate) fn needs_bcast16(engine: Engine, a: &PackedA) -> bool {
    engine == Engine::Avx2 && !a.fits_7bit()
}

/// Runs a block of GEMM tiles compiled with the float features of `engine` (FMA on the x86
/// SIMD engines), so that output stages use hardware FMA; results are the same either way
/// (`mul_add` is a correctly rounded FMA on every path).
#[inline(always)]
pub(crate) fn run_block_for<S: crate::requant::OutputStage>(
    engine: Engine,
    job: &crate::gemm::Job<'_, S>,
    rows: std::ops::Range<usize>,
    gs: std::ops::Range<usize>,
    out: &mut [S::Out],
    at: crate::requant::OutAt,
) {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni => x86_64::run_block_512(job, rows, gs, out, at),
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni | Engine::Avx2 => x86_64::run_block_fma(job, rows, gs, out, at),
        _ => crate::gemm::run_block(job, rows, gs, out, at),
    }
}

/// Work whose loops vectorise per ISA: [`with_features`] runs [`Vectorized::run`] inside a
/// function compiled with the engine's vector features. Implementations mark `run`
/// `#[inline(always)]` and call `#[inline(always)]` loops, so all of it is compiled there.
pub(crate) trait Vectorized {
    type Out;
    fn run(self) -> Self::Out;
}

/// Runs `v` compiled with the vector features of `engine` where the architecture has optional
/// ones (x86: AVX2 / AVX-512). Integer loops give the same results on every engine; aarch64's
/// NEON is always on.
#[inline(always)]
pub(crate) fn with_features<V: Vectorized>(engine: Engine, v: V) -> V::Out {
    #[cfg(target_arch = "x86_64")]
    return x86_64::with_features(engine, v);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = engine;
        v.run()
    }
}

/// An engine's depthwise kernel for runs of output pixels whose taps are all inside the input,
/// for channel counts `c` with `done(c) == c`: `run(x, offs, step, count, wp, init, c, acc)`
/// sets `acc[p·c + ch] = init[ch] + Σ_t x[offs[t] + p·step + ch]·w[t][ch]` for `p < count`, with
/// `wp = prepare(w, taps, c)` from the centered weights `w` (`[taps][c]`, i16). Exact integers:
/// the same as the portable loop.
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseKernel {
    pub done: fn(usize) -> usize,
    pub prepare: fn(&[i16], usize, usize) -> Vec<i16>,
    pub run: DepthwiseRunFn,
}

/// `run(x, offs, step, count, wp, init, c, acc)`, see [`DepthwiseKernel`].
pub(crate) type DepthwiseRunFn =
    fn(&[u8], &[usize], usize, usize, &[i16], &[i32], usize, &mut [i32]);

/// The depthwise kernel of `engine`, where it has one (else the portable loop runs).
pub(crate) fn depthwise_kernel(engine: Engine) -> Option<DepthwiseKernel> {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if x86_64::has_avx512vnni() => Some(DepthwiseKernel {
            done: x86_64::depthwise::channels_done,
            prepare: x86_64::depthwise::pair_weights_avx512,
            run: x86_64::depthwise::run_avx512,
        }),
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni | Engine::Avx2 if x86_64::has_avx2_fma() => Some(DepthwiseKernel {
            done: x86_64::depthwise::channels_done,
            prepare: x86_64::depthwise::pair_weights_avx2,
            run: x86_64::depthwise::run_avx2,
        }),
        _ => None,
    }
}

/// `quantize_rows(x, k, kp, scale, zero_point, data, row_sums)`, see `packed::quantize_rows_body`.
pub(crate) type QuantizeRowsFn = fn(&[f32], usize, usize, f32, i32, &mut [u8], &mut [i32]);

/// Float loops of dynamic quantization (min/max, quantize + pack), compiled per ISA.
#[derive(Clone, Copy)]
pub(crate) struct FloatKernels {
    pub min_max: fn(&[f32]) -> Option<(f32, f32)>,
    pub quantize_rows: QuantizeRowsFn,
}

pub(crate) fn float_kernels(engine: Engine) -> FloatKernels {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni | Engine::AvxVnni | Engine::Avx2 if x86_64::has_avx2_fma() => {
            x86_64::FLOAT_KERNELS
        }
        _ => FloatKernels {
            min_max: crate::qparams::min_max_body,
            quantize_rows: crate::packed::quantize_rows_body,
        },
    }
}

/// Checks the arguments every `dot` receives (shared by all ISA files).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_dot_args(
    k: &TileKernel,
    a: &PackedA,
    r0: usize,
    rows: usize,
    w: &PackedWeights,
    p0: usize,
    panels: usize,
    out: &[i32],
) {
    let kp = a.kp();
    // (`is_multiple_of` needs Rust 1.87; the aarch64 build uses 1.85)
    assert_eq!(kp % crate::packed::KR, 0, "kp must be a multiple of 4");
    assert!((1..=k.mr).contains(&rows), "rows out of range");
    assert!((1..=k.np).contains(&panels), "panels out of range");
    assert!(r0 + rows <= a.m(), "activation rows out of bounds");
    assert_eq!(w.kp(), kp, "weights packed for another K");
    assert!(p0 + panels <= w.panels(), "panel range out of bounds");
    assert!(
        out.len() >= rows * k.np * crate::packed::NR,
        "output tile too short"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in ALL_ENGINES {
            assert_eq!(Engine::from_name(e.name()).unwrap(), e);
        }
        assert!(Engine::from_name("avx3").is_err());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_picks_the_vpmaddubsw_kernel_only_for_7bit_activations() {
        let low = PackedA::from_u8(&[127, 0, 5, 64], 2, 2, 0).unwrap();
        let high = PackedA::from_u8(&[127, 0, 128, 64], 2, 2, 0).unwrap();
        assert_eq!(low.max_value(), 127);
        assert_eq!(high.max_value(), 128);
        let w = PackedWeights::new(&[1, 2, 3, 4], 2, 2, &[1.0], &[0]).unwrap();
        let k7 = tile_kernel(Engine::Avx2, &low, &w);
        let k8 = tile_kernel(Engine::Avx2, &high, &w);
        assert_eq!(k7.dot as usize, x86_64::avx2::KERNEL_7BIT.dot as usize);
        assert_eq!(k8.dot as usize, x86_64::avx2::KERNEL.dot as usize);
    }

    #[test]
    fn scalar_is_always_available_and_last() {
        let v = available_engines();
        assert_eq!(*v.last().unwrap(), Engine::Scalar);
        assert!(Engine::Scalar.is_available());
    }
}
