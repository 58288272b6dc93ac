//! Output stages: what happens to the exact i32 accumulators of a GEMM tile.
//!
//! Specified once here (docs/numerics.md D2, D3, D8) and applied by the GEMM driver on each tile.
//! Every engine runs these same scalar expressions (compiled with or without the ISA's
//! target features), and they contain only IEEE-exact operations (`mul_add` is a correctly
//! rounded FMA on every target), so all paths agree bit for bit.
//!
//! Zero-point correction: with activations `a` (zero point `za`) and weights `w` (zero point
//! `zw[j]`), `acc = Σ a·w − za·colsum[j] − zw[j]·rowsum[i] + K·za·zw[j]`, computed with
//! wrapping i32 arithmetic (exact whenever the true value fits in i32).

use crate::arch::{FusedOut, Panels, PlainRequant, TileKernel};
use crate::error::{check_len, KernelError, Result};
use crate::packed::{PackedA, PackedWeights};
use crate::quantize::{rne_to_i32, QInt};

/// Per-call data for the zero-point correction of a tile.
#[derive(Debug, Clone)]
pub struct Correction<'a> {
    /// Per-tensor activation zero point: `K·za·zw[j] − za·colsum[j]` per column.
    /// Per-row zero points: `K·zw[j] − colsum[j]` per column, multiplied by `za[i]` per row.
    col_term: Vec<i32>,
    /// The activations' per-row zero points, when they have them.
    row_za: Option<&'a [i32]>,
    /// Weight zero point per column.
    w_zp: &'a [i32],
    /// Row sums of the activations.
    row_sums: &'a [i32],
    /// Whether any `zw[j] != 0` (else the row term vanishes).
    has_w_zp: bool,
}

impl<'a> Correction<'a> {
    pub fn new(a: &'a PackedA, w: &'a PackedWeights) -> Self {
        let row_za = a.row_zero_points();
        // with per-row zero points the column term is computed for za = 1 and scaled per row
        let za = if row_za.is_some() { 1 } else { a.zero_point() };
        let k = a.k() as i32;
        let col_term = w
            .col_sums()
            .iter()
            .zip(w.zero_points())
            .map(|(&cs, &zw)| {
                k.wrapping_mul(za)
                    .wrapping_mul(zw)
                    .wrapping_sub(za.wrapping_mul(cs))
            })
            .collect::<Vec<i32>>();
        // padded to whole panels for kernels that read 16 columns at a time
        let mut col_term = col_term;
        col_term.resize(w.panels() * crate::packed::NR, 0);
        Correction {
            col_term,
            row_za,
            w_zp: w.zero_points(),
            row_sums: a.row_sums(),
            has_w_zp: w.has_zero_points(),
        }
    }

    #[inline(always)]
    pub fn apply(&self, dot: i32, i: usize, j: usize) -> i32 {
        let ct = match self.row_za {
            Some(za) => self.col_term[j].wrapping_mul(za[i]),
            None => self.col_term[j],
        };
        let acc = dot.wrapping_add(ct);
        if self.has_w_zp {
            acc.wrapping_sub(self.w_zp[j].wrapping_mul(self.row_sums[i]))
        } else {
            acc
        }
    }

    /// Corrected accumulators of row `i`, columns `col0..col0+dots.len()`, into `acc`.
    /// Written as zipped slices so it vectorises.
    /// Row `i`'s correction for columns `col0..col0 + n`, as the terms of
    /// `acc[j] = dot[j] + ct[j]·za − wz[j]·rs` (`za` = 1 without per-row zero points; `wz` empty
    /// when the weights have no zero points).
    #[inline(always)]
    pub(crate) fn row_terms(&self, i: usize, col0: usize, n: usize) -> RowTerms<'_> {
        let za = self.row_za.map_or(1, |z| z[i]);
        let wz: &[i32] = if self.has_w_zp || self.row_za.is_some() {
            &self.w_zp[col0..col0 + n]
        } else {
            &[]
        };
        RowTerms {
            ct: &self.col_term[col0..col0 + n],
            za,
            wz,
            rs: self.row_sums[i],
        }
    }

    #[inline(always)]
    pub fn row(&self, dots: &[i32], i: usize, col0: usize, acc: &mut [i32]) {
        let n = dots.len();
        let ct = &self.col_term[col0..col0 + n];
        let acc = &mut acc[..n];
        if let Some(za) = self.row_za {
            let (za, rs) = (za[i], self.row_sums[i]);
            let wz = &self.w_zp[col0..col0 + n];
            for (((a, &d), &c), &z) in acc.iter_mut().zip(dots).zip(ct).zip(wz) {
                *a = d
                    .wrapping_add(c.wrapping_mul(za))
                    .wrapping_sub(z.wrapping_mul(rs));
            }
        } else if self.has_w_zp {
            let rs = self.row_sums[i];
            let wz = &self.w_zp[col0..col0 + n];
            for (((a, &d), &c), &z) in acc.iter_mut().zip(dots).zip(ct).zip(wz) {
                *a = d.wrapping_add(c).wrapping_sub(z.wrapping_mul(rs));
            }
        } else {
            for ((a, &d), &c) in acc.iter_mut().zip(dots).zip(ct) {
                *a = d.wrapping_add(c);
            }
        }
    }
}

/// The zero-point correction of one output row, see [`Correction::row_terms`].
#[derive(Clone, Copy)]
pub(crate) struct RowTerms<'a> {
    ct: &'a [i32],
    za: i32,
    wz: &'a [i32],
    rs: i32,
}

impl RowTerms<'_> {
    /// The corrected accumulators of 16 columns starting at `c` (of `dots`, as many).
    #[inline(always)]
    fn acc16(&self, dots: &[i32; 16], c: usize) -> [i32; 16] {
        let ct: &[i32; 16] = self.ct[c..c + 16].try_into().unwrap();
        let mut acc = [0i32; 16];
        if self.wz.is_empty() {
            for l in 0..16 {
                acc[l] = dots[l].wrapping_add(ct[l].wrapping_mul(self.za));
            }
        } else {
            let wz: &[i32; 16] = self.wz[c..c + 16].try_into().unwrap();
            for l in 0..16 {
                acc[l] = dots[l]
                    .wrapping_add(ct[l].wrapping_mul(self.za))
                    .wrapping_sub(wz[l].wrapping_mul(self.rs));
            }
        }
        acc
    }

    /// The corrected accumulator of column `c`.
    #[inline(always)]
    fn acc1(&self, dot: i32, c: usize) -> i32 {
        let a = dot.wrapping_add(self.ct[c].wrapping_mul(self.za));
        if self.wz.is_empty() {
            a
        } else {
            a.wrapping_sub(self.wz[c].wrapping_mul(self.rs))
        }
    }
}

/// Most columns a tile may have (the widest micro-kernel's tile).
pub const MAX_TILE_COLS: usize = 128;

/// A tile of raw dot products: `rows × cols` values at `dots[r*ld + c]`, for output rows
/// `row0..row0+rows` and columns `col0..col0+cols`.
#[derive(Debug, Clone, Copy)]
pub struct Tile<'t> {
    pub dots: &'t [i32],
    pub ld: usize,
    pub row0: usize,
    pub rows: usize,
    pub col0: usize,
    pub cols: usize,
}

/// Where a block of output lives: row stride `ld`, and the global row and column of its first
/// element (a thread may fill a private block of columns).
#[derive(Debug, Clone, Copy)]
pub struct OutAt {
    pub ld: usize,
    pub row0: usize,
    pub col0: usize,
}

/// An output stage: turns corrected accumulators of a tile into output elements.
pub trait OutputStage: Sync {
    type Out: Copy + Default + Send + Sync;
    /// Writes the tile into `out`, laid out as `at` says.
    fn store(&self, corr: &Correction<'_>, tile: Tile<'_>, out: &mut [Self::Out], at: OutAt);
    /// Checks that the stage fits a GEMM with `m` rows (before any tile is stored).
    fn check_rows(&self, _m: usize) -> Result<()> {
        Ok(())
    }
    /// Whether `store` reads the output it writes (an accumulating stage): then every tile must
    /// see the output's current values.
    fn reads_output(&self) -> bool {
        false
    }
    /// Computes and stores the tile `p` (rows from `row0`, `cols` columns from `col0`) in one pass
    /// through the kernel's requantizing entry, where the stage and the kernel allow it; false
    /// (nothing done) otherwise, and the driver runs `dot` + [`OutputStage::store`]. A hook for
    /// this crate's driver: its kernel types cannot be named or built outside the crate.
    #[allow(private_interfaces)]
    fn store_fused(
        &self,
        _corr: &Correction<'_>,
        _kern: &TileKernel,
        _p: &Panels<'_>,
        _at_tile: (usize, usize, usize),
        _out: &mut [Self::Out],
        _at: OutAt,
    ) -> bool {
        false
    }
}

/// Exact i32 accumulators (zero points corrected), no further processing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreI32;

impl OutputStage for StoreI32 {
    type Out = i32;
    fn store(&self, corr: &Correction<'_>, t: Tile<'_>, out: &mut [i32], at: OutAt) {
        for r in 0..t.rows {
            let i = t.row0 + r;
            let o = &mut out[(i - at.row0) * at.ld + (t.col0 - at.col0)..][..t.cols];
            corr.row(&t.dots[r * t.ld..][..t.cols], i, t.col0, o);
        }
    }
}

/// The products `fl(xs·ws[j])` must stay finite, or an output with accumulator 0 would be NaN.
fn check_products(products: &[f32]) -> Result<()> {
    match products.iter().find(|p| !p.is_finite()) {
        None => Ok(()),
        Some(p) => Err(KernelError::InvalidQParams(format!(
            "activation scale × weight scale = {p} overflows float32; the weight scales are too \
             large for these activations (re-quantize the weights with an observer)"
        ))),
    }
}

/// Dynamic-linear output (docs/numerics.md "Dynamic activation qparams"):
/// `y = fma(float(acc), fl(xs·ws[j]), b[j])`,
/// then `max(y, 0)` when `relu`.
#[derive(Debug, Clone)]
pub struct DequantF32 {
    /// `fl(xs·ws[j])` for per-tensor activations.
    scale: Vec<f32>,
    /// Per-row activation scales (then the product `fl(xs[i]·ws[j])` is formed per row).
    row_scales: Option<Vec<f32>>,
    w_scales: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
    /// Add into the output (`out += …`) instead of overwriting it.
    accumulate: bool,
}

impl DequantF32 {
    pub fn new(a_scale: f32, w: &PackedWeights, bias: Option<&[f32]>, relu: bool) -> Result<Self> {
        let n = w.n();
        // scales are positive: the largest product decides (and it is the same f32 rounding)
        if a_scale.is_nan() || a_scale < 0.0 {
            return Err(KernelError::InvalidQParams(format!(
                "activation scale must be >= 0, got {a_scale}"
            )));
        }
        check_products(&[a_scale * w.max_scale()])?;
        let scale: Vec<f32> = w.scales().iter().map(|&ws| a_scale * ws).collect();
        let bias = match bias {
            Some(b) => {
                check_len("bias", n, b.len())?;
                b.to_vec()
            }
            None => vec![0.0; n],
        };
        Ok(DequantF32 {
            scale,
            row_scales: None,
            w_scales: w.scales().to_vec(),
            bias,
            relu,
            accumulate: false,
        })
    }

    /// This stage adding into the output instead of overwriting it:
    /// `out = out + fma(acc, s, b)` (then `max(·, 0)` with ReLU, on the sum) — for results that
    /// sum several GEMMs (an RNN cell's input and hidden projections into one gate buffer, the
    /// rows of an embedding bag), with no temporary output.
    pub fn accumulating(mut self) -> Self {
        self.accumulate = true;
        self
    }

    /// The same stage for activations quantized per row with scales `row_scales`.
    pub fn per_row(
        row_scales: &[f32],
        w: &PackedWeights,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<Self> {
        let mut s = Self::new(1.0, w, bias, relu)?;
        if let Some(bad) = row_scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(KernelError::InvalidQParams(format!(
                "per-row activation scales must be finite and > 0, got {bad}"
            )));
        }
        // weight scales are checked when packing: both sides positive and finite, so the
        // largest product decides
        let xmax = row_scales.iter().fold(0f32, |a, &b| a.max(b));
        check_products(&[xmax * w.max_scale()])?;
        s.row_scales = Some(row_scales.to_vec());
        Ok(s)
    }
}

impl OutputStage for DequantF32 {
    type Out = f32;
    fn reads_output(&self) -> bool {
        self.accumulate
    }
    fn check_rows(&self, m: usize) -> Result<()> {
        match &self.row_scales {
            Some(s) => check_len("per-row activation scales", m, s.len()),
            None => Ok(()),
        }
    }
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn store(&self, corr: &Correction<'_>, t: Tile<'_>, out: &mut [f32], at: OutAt) {
        let b = &self.bias[t.col0..t.col0 + t.cols];
        let mut acc = [0i32; MAX_TILE_COLS];
        let mut row_scale = [0f32; MAX_TILE_COLS];
        for r in 0..t.rows {
            let i = t.row0 + r;
            corr.row(&t.dots[r * t.ld..][..t.cols], i, t.col0, &mut acc);
            let o = &mut out[(i - at.row0) * at.ld + (t.col0 - at.col0)..][..t.cols];
            let s = match &self.row_scales {
                None => &self.scale[t.col0..t.col0 + t.cols],
                Some(xs) => {
                    // fl(xs[i]·ws[j]): the same single rounding as the per-tensor product
                    let ws = &self.w_scales[t.col0..t.col0 + t.cols];
                    for (d, &w) in row_scale.iter_mut().zip(ws) {
                        *d = xs[i] * w;
                    }
                    &row_scale[..t.cols]
                }
            };
            if self.accumulate {
                for (((o, &a), &s), &b) in o.iter_mut().zip(&acc[..t.cols]).zip(s).zip(b) {
                    let v = *o + (a as f32).mul_add(s, b);
                    *o = if self.relu { v.max(0.0) } else { v };
                }
            } else if self.relu {
                for (((o, &a), &s), &b) in o.iter_mut().zip(&acc[..t.cols]).zip(s).zip(b) {
                    *o = (a as f32).mul_add(s, b).max(0.0);
                }
            } else {
                for (((o, &a), &s), &b) in o.iter_mut().zip(&acc[..t.cols]).zip(s).zip(b) {
                    *o = (a as f32).mul_add(s, b);
                }
            }
        }
    }
}

/// Static requantization (docs/numerics.md "Requantization" / D2, D7): with `atws[j] = fl(xs·ws[j])`,
/// `mult[j] = fl(atws[j]/os)` and `bq[j] = fl(b[j]/atws[j])`:
/// `y = clamp(rne(fl(fl(float(acc) + bq[j]) · mult[j])) + oz, lo, hi)`.
/// `lo`/`hi` are the output observer's range (D7); a fused ReLU raises `lo` to `oz`.
#[derive(Debug, Clone)]
pub struct Requantize<T: QInt> {
    /// Every `mult` finite and > 0 and every `bias_q` finite: `v` is never NaN.
    plain: bool,
    /// Output columns (`mult` and `bias_q` are padded past them to whole 16-column panels).
    n: usize,
    mult: Vec<f32>,
    bias_q: Vec<f32>,
    out_zp: i32,
    lo: f32,
    hi: f32,
    _t: std::marker::PhantomData<T>,
}

impl<T: QInt> Requantize<T> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        a_scale: f32,
        w: &PackedWeights,
        bias: Option<&[f32]>,
        out_scale: f32,
        out_zp: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
    ) -> Result<Self> {
        Self::with_scales(
            a_scale,
            w.scales(),
            bias,
            out_scale,
            out_zp,
            qmin,
            qmax,
            relu,
        )
    }

    /// [`Requantize::new`] for outputs with weight scales `w_scales` (one per output channel;
    /// checked by whoever packed the weights).
    #[allow(clippy::too_many_arguments)]
    pub fn with_scales(
        a_scale: f32,
        w_scales: &[f32],
        bias: Option<&[f32]>,
        out_scale: f32,
        out_zp: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
    ) -> Result<Self> {
        crate::qparams::check_scale(a_scale)?;
        crate::qparams::check_scale(out_scale)?;
        crate::qparams::check_range(T::DTYPE, qmin as i64, qmax as i64, out_zp as i64)?;
        if T::DTYPE == crate::qparams::QDtype::QInt32 {
            return Err(KernelError::UnsupportedDtype(
                "requantize outputs quint8 or qint8, not qint32".into(),
            ));
        }
        let n = w_scales.len();
        if let Some(b) = bias {
            check_len("bias", n, b.len())?;
        }
        let atws: Vec<f32> = w_scales.iter().map(|&ws| a_scale * ws).collect();
        let mult: Vec<f32> = atws.iter().map(|&s| s / out_scale).collect();
        let bias_q = match bias {
            Some(b) => b.iter().zip(&atws).map(|(&b, &s)| b / s).collect(),
            None => vec![0.0; n],
        };
        if relu && out_zp > qmax {
            return Err(KernelError::InvalidQParams(format!(
                "a fused ReLU needs the output zero point ({out_zp}) within the output range \
                 [{qmin}, {qmax}]; recalibrate the output observer"
            )));
        }
        let lo = if relu { qmin.max(out_zp) } else { qmin };
        // no NaN can arise before rounding when every factor is finite and every multiplier
        // positive: then the store clamps with plain min/max (the usual case, vectorised)
        let plain = mult.iter().all(|&m: &f32| m.is_finite() && m > 0.0)
            && bias_q.iter().all(|b: &f32| b.is_finite());
        // padded to whole panels (mult 1, bias 0) for kernels that read 16 columns at a time
        let (mut mult, mut bias_q) = (mult, bias_q);
        let padded = n.div_ceil(crate::packed::NR) * crate::packed::NR;
        mult.resize(padded, 1.0);
        bias_q.resize(padded, 0.0);
        Ok(Requantize {
            plain,
            n,
            mult,
            bias_q,
            out_zp,
            lo: (lo - out_zp) as f32,
            hi: (qmax - out_zp) as f32,
            _t: std::marker::PhantomData,
        })
    }
}

impl<T: QInt> Requantize<T> {
    /// The plain rule as data (`bias` = `bias_q`, `mult`, `lo`, `hi`, `zp` = `out_zp`), for kernels that requantize in
    /// their registers: `rne(clamp((acc + bias_q[j])·mult[j], lo, hi)) + out_zp`. None when the
    /// stage needs the general rule (a NaN could arise).
    pub(crate) fn plain_parts(&self) -> Option<PlainRequant<'_>> {
        self.plain.then_some(PlainRequant {
            bias: &self.bias_q,
            mult: &self.mult,
            lo: self.lo,
            hi: self.hi,
            zp: self.out_zp,
        })
    }

    /// Requantizes exact accumulators `acc` of output columns `col0..col0 + acc.len()` into
    /// `out` (the rule above).
    #[inline(always)]
    pub(crate) fn requantize_row(&self, acc: &[i32], col0: usize, out: &mut [T]) {
        if self.plain {
            self.requantize_row_plain(acc, col0, out)
        } else {
            self.requantize_row_general(acc, col0, out)
        }
    }

    /// The rule as written, for stages where `v` may be NaN (a NaN bias, degenerate scales):
    /// a NaN gives `lo`.
    fn requantize_row_general(&self, acc: &[i32], col0: usize, out: &mut [T]) {
        let n = acc.len();
        let (bq, mu) = (&self.bias_q[col0..col0 + n], &self.mult[col0..col0 + n]);
        let (lo, hi) = (self.lo - 1.0, self.hi + 1.0);
        let (qlo, qhi) = (self.lo as i32 + self.out_zp, self.hi as i32 + self.out_zp);
        for (((o, &a), &b), &m) in out[..n].iter_mut().zip(acc).zip(bq).zip(mu) {
            let v = ((a as f32) + b) * m;
            // clamp first so the rounding trick is exact; NaN → lo
            let q = rne_to_i32(v.max(lo).min(hi)) + self.out_zp;
            *o = T::from_i32(q.clamp(qlo, qhi));
        }
    }

    /// For stages whose `v` cannot be NaN (`plain`): the same value as the general rule, as
    /// clamping the float to the integer bounds `[lo, hi]` commutes with rounding.
    #[inline(always)]
    fn requantize_row_plain(&self, acc: &[i32], col0: usize, out: &mut [T]) {
        let n = acc.len();
        let (bq, mu) = (&self.bias_q[col0..col0 + n], &self.mult[col0..col0 + n]);
        let (lo, hi, zp) = (self.lo, self.hi, self.out_zp);
        for (((o, &a), &b), &m) in out[..n].iter_mut().zip(acc).zip(bq).zip(mu) {
            let v = ((a as f32) + b) * m;
            let v = if v > lo { v } else { lo };
            let v = if v < hi { v } else { hi };
            *o = T::from_i32(rne_to_i32(v) + zp);
        }
    }

    /// [`Requantize::requantize_row`] on GEMM dot products, corrected on the fly (one pass,
    /// 16 columns at a time in registers).
    #[inline(always)]
    fn requantize_row_with(&self, dots: &[i32], terms: RowTerms<'_>, col0: usize, out: &mut [T]) {
        let n = dots.len();
        let (bq, mu) = (&self.bias_q[col0..col0 + n], &self.mult[col0..col0 + n]);
        let (lo, hi, zp) = (self.lo, self.hi, self.out_zp);
        let one = |a: i32, b: f32, m: f32| {
            let v = ((a as f32) + b) * m;
            let v = if v > lo { v } else { lo };
            let v = if v < hi { v } else { hi };
            T::from_i32(rne_to_i32(v) + zp)
        };
        let full = n / 16 * 16;
        for c in (0..full).step_by(16) {
            let acc = terms.acc16(dots[c..c + 16].try_into().unwrap(), c);
            let b: &[f32; 16] = bq[c..c + 16].try_into().unwrap();
            let m: &[f32; 16] = mu[c..c + 16].try_into().unwrap();
            let o: &mut [T; 16] = (&mut out[c..c + 16]).try_into().unwrap();
            for l in 0..16 {
                o[l] = one(acc[l], b[l], m[l]);
            }
        }
        for c in full..n {
            out[c] = one(terms.acc1(dots[c], c), bq[c], mu[c]);
        }
    }
}

impl<T: QInt> OutputStage for Requantize<T> {
    type Out = T;
    #[inline(always)]
    #[allow(private_interfaces)]
    fn store_fused(
        &self,
        corr: &Correction<'_>,
        kern: &TileKernel,
        p: &Panels<'_>,
        (row0, col0, cols): (usize, usize, usize),
        out: &mut [T],
        at: OutAt,
    ) -> bool {
        // u8 outputs, the plain rule, and a correction without row terms
        if !kern.requantizes() || !self.plain || corr.row_za.is_some() || corr.has_w_zp {
            return false;
        }
        let width = p.panels * crate::packed::NR;
        // the stage must cover the tile's columns (else the driver's store reports it)
        if col0 + cols > self.n || cols > width {
            return false;
        }
        let start = (row0 - at.row0) * at.ld + (col0 - at.col0);
        let Some(bytes) = T::as_u8_mut(&mut out[start..]) else {
            return false;
        };
        let f = FusedOut {
            off: &corr.col_term[col0..col0 + width],
            rq: PlainRequant {
                bias: &self.bias_q[col0..col0 + width],
                mult: &self.mult[col0..col0 + width],
                lo: self.lo,
                hi: self.hi,
                zp: self.out_zp,
            },
            cols,
            ld: at.ld,
        };
        kern.dot_requant(p, &f, bytes)
    }
    #[inline(always)]
    fn store(&self, corr: &Correction<'_>, t: Tile<'_>, out: &mut [T], at: OutAt) {
        let mut acc = [0i32; MAX_TILE_COLS];
        for r in 0..t.rows {
            let i = t.row0 + r;
            let o = &mut out[(i - at.row0) * at.ld + (t.col0 - at.col0)..][..t.cols];
            let dots = &t.dots[r * t.ld..][..t.cols];
            if self.plain {
                let terms = corr.row_terms(i, t.col0, t.cols);
                self.requantize_row_with(dots, terms, t.col0, o);
            } else {
                corr.row(dots, i, t.col0, &mut acc);
                self.requantize_row_general(&acc[..t.cols], t.col0, o);
            }
        }
    }
}
