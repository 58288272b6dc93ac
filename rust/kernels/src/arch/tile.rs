//! The micro-kernel interface: raw packed panels in, exact i32 dot products out.
//!
//! The packed layout is the contract between packing and the ISA kernels: weights in panels of
//! [`NR`] = 16 columns with K in groups of [`KR`] = 4 (`panel[g*64 + c*4 + t] = W[col0 + c][4g + t]`),
//! activations as rows of `kp` bytes (K padded to whole groups). Kernels see only these raw
//! panels ([`Panels`]); the GEMM driver above cuts them out of its packed operands.
//!
//! A [`TileKernel`] can only be obtained from [`tile_kernel`], which hands out kernels of
//! engines this CPU runs: holding one is the proof that its instructions are available, so the
//! ISA code behind it does not re-check the CPU on every tile. [`TileKernel::dot`] checks the
//! lengths before it enters the kernel's `unsafe` code.

use super::Engine;

#[cfg(target_arch = "aarch64")]
use super::aarch64;
use super::generic;
#[cfg(target_arch = "x86_64")]
use super::x86_64;

/// Columns per packed weight panel.
pub const NR: usize = 16;
/// K elements per group (one 4-way dot product).
pub const KR: usize = 4;

/// The activations a kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AForm {
    /// Rows of `kp` bytes.
    Bytes,
    /// The AVX2 broadcast form: each K group's 4 values as i16, repeated 4 times (`kp·4` i16 a row).
    Bcast16,
}

/// One micro-kernel call's operands, as raw panels of the packed layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Panels<'a> {
    /// `rows` activation rows of `kp` bytes.
    pub a: &'a [u8],
    /// The same rows in [`AForm::Bcast16`] (`rows·kp·4` i16) for kernels that read it, else empty.
    pub a16: &'a [i16],
    pub kp: usize,
    pub rows: usize,
    /// The largest activation of `a` (or an upper bound).
    pub a_max: u8,
    /// `panels` weight panels of `kp·16` bytes.
    pub w: &'a [i8],
    /// Their column sums (`panels·16`, zero for padding columns).
    pub col_sums: &'a [i32],
    pub panels: usize,
}

/// `dot(panels, out)`: `out[r·np·16 + c] = Σ_k a[r][k]·w[k][c]` (wrapping i32) for the given
/// rows and panels.
///
/// # Safety
/// The CPU supports the kernel's instructions, and [`TileKernel::dot`]'s checks hold.
pub(crate) type DotFn = unsafe fn(&Panels<'_>, &mut [i32]);

/// A tile requantized in the kernel's registers (u8 outputs): for row `r < rows` and column
/// `c < cols`, `out[r·ld + c] = rne(clamp((dot + off[c] + bias[c])·mult[c], lo, hi)) + zp`, the
/// output stage's plain rule with the zero-point correction `off` (per column: no row term).
/// `off`, `rq.bias` and `rq.mult` hold at least `panels·16` values.
#[derive(Clone, Copy)]
pub(crate) struct FusedOut<'a> {
    pub off: &'a [i32],
    pub rq: super::PlainRequant<'a>,
    pub cols: usize,
    pub ld: usize,
}

/// `dot_requant(panels, fused, out)`, see [`FusedOut`].
///
/// # Safety
/// The CPU supports the kernel's instructions, and [`TileKernel::dot_requant`]'s checks hold.
pub(crate) type DotRequantFn = unsafe fn(&Panels<'_>, &FusedOut<'_>, &mut [u8]);

/// A micro-kernel: exact `u8 × s8 → i32` dot products of up to `mr` activation rows with up to
/// `np` weight panels.
///
/// Its fields are private (read through the methods): nothing outside `arch` can build one or
/// change what [`TileKernel::dot`] checks.
#[derive(Clone, Copy)]
pub(crate) struct TileKernel {
    mr: usize,
    np: usize,
    a_form: AForm,
    needs_7bit: bool,
    dot: DotFn,
    dot_requant: Option<DotRequantFn>,
    /// Whether `dot_requant` takes any number of rows (looping over tiles of `mr` itself): one
    /// checked call per column group instead of one per tile.
    many_rows: bool,
}

impl TileKernel {
    /// Activation rows per tile.
    pub(crate) fn mr(&self) -> usize {
        self.mr
    }
    /// Weight panels per tile.
    pub(crate) fn np(&self) -> usize {
        self.np
    }
    /// The activation form `dot` reads.
    pub(crate) fn a_form(&self) -> AForm {
        self.a_form
    }
    /// Exact only for activations ≤ 127 (AVX2's `vpmaddubsw` kernel).
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(crate) fn needs_7bit(&self) -> bool {
        self.needs_7bit
    }

    /// For the ISA files: a kernel whose `dot` needs the instructions of its engine.
    pub(super) const fn new(
        mr: usize,
        np: usize,
        a_form: AForm,
        needs_7bit: bool,
        dot: DotFn,
    ) -> Self {
        TileKernel {
            mr,
            np,
            a_form,
            needs_7bit,
            dot,
            dot_requant: None,
            many_rows: false,
        }
    }

    /// For the ISA files: the same kernel, whose requantizing entry loops over tiles of `mr`
    /// rows itself (any number of rows).
    pub(super) const fn with_many_rows(self) -> Self {
        TileKernel {
            many_rows: true,
            ..self
        }
    }

    /// Whether [`TileKernel::dot_requant`] takes more than `mr` rows.
    pub(crate) fn many_rows(&self) -> bool {
        self.many_rows && self.dot_requant.is_some()
    }

    /// For the ISA files: the same kernel with a requantizing entry ([`FusedOut`]).
    pub(super) const fn with_requant(self, f: DotRequantFn) -> Self {
        TileKernel {
            dot_requant: Some(f),
            ..self
        }
    }

    /// Whether [`TileKernel::dot_requant`] runs on this kernel.
    pub(crate) fn requantizes(&self) -> bool {
        self.dot_requant.is_some()
    }

    /// The tile's dot products requantized into `out` (see [`FusedOut`]), after checking every
    /// length; false (nothing written) when this kernel has no requantizing entry.
    #[inline]
    pub(crate) fn dot_requant(&self, p: &Panels<'_>, f: &FusedOut<'_>, out: &mut [u8]) -> bool {
        let Some(run) = self.dot_requant else {
            return false;
        };
        self.check_operands(p, if self.many_rows { usize::MAX } else { self.mr });
        let width = p.panels * NR;
        assert!(f.cols >= 1 && f.cols <= width, "columns out of range");
        assert!(
            f.off.len() >= width && f.rq.bias.len() >= width && f.rq.mult.len() >= width,
            "requantization factors too short"
        );
        assert!(f.ld >= f.cols, "output rows overlap");
        let end = (p.rows - 1)
            .checked_mul(f.ld)
            .and_then(|v| v.checked_add(f.cols));
        assert!(end.is_some_and(|e| out.len() >= e), "output tile too short");
        // SAFETY: as in `dot`; the lengths were checked above.
        unsafe { run(p, f, out) };
        true
    }

    /// Runs the kernel after checking every length it relies on.
    #[inline]
    pub(crate) fn dot(&self, p: &Panels<'_>, out: &mut [i32]) {
        self.check(p);
        assert!(out.len() >= p.rows * self.np * NR, "output tile too short");
        // SAFETY: a TileKernel comes only from `tile_kernel`, which hands out kernels of engines
        // this CPU runs; the lengths were checked above.
        unsafe { (self.dot)(p, out) }
    }

    /// The checks on the operands both entries rely on.
    #[inline]
    fn check(&self, p: &Panels<'_>) {
        self.check_operands(p, self.mr)
    }

    /// [`TileKernel::check`] with up to `max_rows` rows.
    #[inline]
    fn check_operands(&self, p: &Panels<'_>, max_rows: usize) {
        assert_eq!(p.kp % KR, 0, "kp must be a multiple of 4");
        assert!((1..=max_rows).contains(&p.rows), "rows out of range");
        assert!((1..=self.np).contains(&p.panels), "panels out of range");
        assert!(p.a.len() >= p.rows * p.kp, "activation rows too short");
        if self.a_form == AForm::Bcast16 {
            assert!(
                p.a16.len() >= p.rows * p.kp * 4,
                "broadcast activations too short"
            );
        }
        assert!(p.w.len() >= p.panels * p.kp * NR, "weight panels too short");
        assert!(p.col_sums.len() >= p.panels * NR, "column sums too short");
        // exactness rests on this: a value above 127 could saturate an i16 pair sum
        assert!(
            !self.needs_7bit || p.a_max <= 127,
            "7-bit kernel given activations above 127"
        );
    }
}

/// The micro-kernel `engine` uses for a GEMM of `m` rows, `panels` weight panels and activations
/// at most `a_max`; `None` when this CPU cannot run the engine. A GEMV-shaped kernel for few rows
/// where the engine has one, a 64-column tile for 4k panels on AVX-512 VNNI, and on AVX2 the
/// `vpmaddubsw` kernel when every activation is at most 127 (exact there; both give the same bits).
pub(crate) fn tile_kernel(
    engine: Engine,
    m: usize,
    panels: usize,
    a_max: u8,
) -> Option<TileKernel> {
    if !engine.is_available() {
        return None;
    }
    let _ = (m, panels, a_max);
    Some(match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if m <= x86_64::avx512vnni::GEMV.mr() => x86_64::avx512vnni::GEMV,
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if panels % 4 == 0 && panels % 3 != 0 => x86_64::avx512vnni::KERNEL_64,
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni => x86_64::avx512vnni::KERNEL,
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni => x86_64::avxvnni::KERNEL,
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 if a_max <= 127 => x86_64::avx2::KERNEL_7BIT,
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 => x86_64::avx2::KERNEL,
        #[cfg(target_arch = "aarch64")]
        Engine::NeonDotprod => aarch64::neon_dotprod::KERNEL,
        #[cfg(target_arch = "aarch64")]
        Engine::Neon => aarch64::neon::KERNEL,
        _ => generic::KERNEL,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_picks_the_vpmaddubsw_kernel_only_for_7bit_activations() {
        if !Engine::Avx2.is_available() {
            return;
        }
        let k7 = tile_kernel(Engine::Avx2, 16, 2, 127).unwrap();
        let k8 = tile_kernel(Engine::Avx2, 16, 2, 128).unwrap();
        assert!(k7.needs_7bit() && !k8.needs_7bit());
        assert_eq!(k8.a_form(), AForm::Bcast16);
    }

    #[test]
    fn unavailable_engines_give_no_kernel() {
        for e in super::super::ALL_ENGINES {
            assert_eq!(tile_kernel(e, 8, 1, 255).is_some(), e.is_available());
        }
    }

    #[test]
    #[should_panic(expected = "7-bit kernel given activations above 127")]
    #[cfg(target_arch = "x86_64")]
    fn the_7bit_precondition_is_checked() {
        if !Engine::Avx2.is_available() {
            panic!("7-bit kernel given activations above 127 (no AVX2 here)");
        }
        let k7 = tile_kernel(Engine::Avx2, 1, 1, 0).unwrap();
        let (a, w, cs) = ([200u8; 4], [1i8; 64], [0i32; 16]);
        let p = Panels {
            a: &a,
            a16: &[],
            kp: 4,
            rows: 1,
            a_max: 200,
            w: &w,
            col_sums: &cs,
            panels: 1,
        };
        k7.dot(&p, &mut [0i32; 16]);
    }
}
