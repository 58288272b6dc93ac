//! Packed operands: int8 weights re-laid for the micro-kernels, and u8 activations padded
//! to whole K groups with their row sums.
//!
//! One layout serves every ISA (so switching engines never repacks): the N columns are cut
//! into panels of [`NR`] = 16 columns, K is padded to a multiple of [`KR`] = 4, and inside a
//! panel the bytes of group `g` (k = 4g..4g+3) are stored column after column:
//! `panel[g*64 + c*4 + t] = W[col0 + c][4g + t]`. That is one zmm for `vpdpbusd`, two ymm for
//! AVX-VNNI, four 16-byte rows for the AVX2 widening kernel and four q-registers for `sdot`.

use crate::aligned::Aligned;
use crate::arch::{with_features, Engine, Vectorized};
use std::borrow::Cow;
use std::sync::OnceLock;

use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};
use crate::qparams::{choose_qparams_dynamic, DynamicQParams};
use crate::quantize::quantize_one_8bit;

/// Columns per packed panel, and K elements per group: the micro-kernels' layout contract.
pub use crate::arch::{KR, NR};

/// The largest `Σ_k |w[j][k] − zw[j]|` a weight column may have. A GEMM accumulates in int32
/// (with wrapping adds, exact modulo 2³² whatever the order); its true result
/// `Σ_k (a − za)(w − zw)` has `|a − za| ≤ 255`, so it fits in int32 — and every engine returns it
/// exactly — when the column's sum stays within `(2³¹ − 1) / 255`. With all weights at −128 and
/// zero point 0 that is K ≤ 65793; typical weights allow far larger K. Packing rejects columns
/// beyond it instead of returning wrapped numbers.
pub const MAX_COLUMN_ABS_SUM: i64 = i32::MAX as i64 / 255;

/// Rounds `k` up to a whole number of K groups.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(KR) * KR
}

/// Int8 weights of a Linear (`[N, K]`, row-major, as `nn.Linear.weight`) packed for the GEMM,
/// with per-column scales, zero points and column sums. Derived data: never serialized.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    kp: usize,
    /// Panels on a cache-line boundary (the kernels load them 64 bytes at a time).
    data: Aligned<i8>,
    col_sums: Vec<i32>,
    col_sums_padded: Vec<i32>,
    zero_points: Vec<i32>,
    scales: Vec<f32>,
    /// The largest of `scales` (all are positive normal floats).
    max_scale: f32,
    per_channel: bool,
    any_zero_point: bool,
}

impl PackedWeights {
    /// Packs `w` (`n` rows of `k` int8 values). `scales` and `zero_points` have length 1
    /// (per tensor) or `n` (per output channel).
    pub fn new(w: &[i8], n: usize, k: usize, scales: &[f32], zero_points: &[i32]) -> Result<Self> {
        if n == 0 || k == 0 {
            return Err(KernelError::Empty(format!(
                "weights must not be empty, got shape [{n}, {k}]; a Linear needs in_features > 0 and out_features > 0"
            )));
        }
        check_len("weight", checked_numel(&[n, k], "weight")?, w.len())?;
        let per_channel = scales.len() != 1 || zero_points.len() != 1;
        if per_channel {
            check_len("per-channel weight scales", n, scales.len())?;
            check_len("per-channel weight zero points", n, zero_points.len())?;
        }
        for &s in scales {
            crate::qparams::check_scale(s)?;
        }
        for &z in zero_points {
            if !(-128..=127).contains(&z) {
                return Err(KernelError::InvalidQParams(format!(
                    "int8 weight zero point {z} is outside [-128, 127]"
                )));
            }
        }
        for (j, row) in w.chunks_exact(k).enumerate() {
            let zw = zero_points[if zero_points.len() == 1 { 0 } else { j }] as i64;
            let l1: i64 = row.iter().map(|&v| (v as i64 - zw).abs()).sum();
            if l1 > MAX_COLUMN_ABS_SUM {
                return Err(KernelError::TooLarge(format!(
                    "output channel {j} of this [{n}, {k}] int8 weight has sum |w - zero_point| = {l1}, \
                     above {MAX_COLUMN_ABS_SUM}: its int32 accumulator could overflow for some uint8 \
                     inputs (any int8 weights are exact up to K = 65793 inputs per output with \
                     zero point 0, 33025 with another zero point). Split the \
                     layer along its input features (e.g. two Linears whose outputs are added in \
                     float) or keep it in floating point"
                )));
            }
        }
        let kp = padded_k(k);
        let panels = n.div_ceil(NR);
        let mut data = Aligned::new(
            checked_numel(&[panels, kp, NR], "packed weight")?,
            0i8,
            "packed weights",
        )?;
        let packed = data.as_mut_slice();
        for (j, row) in w.chunks_exact(k).enumerate() {
            let panel = &mut packed[(j / NR) * kp * NR..(j / NR + 1) * kp * NR];
            let c = j % NR;
            for (kk, &v) in row.iter().enumerate() {
                panel[(kk / KR) * NR * KR + c * KR + kk % KR] = v;
            }
        }
        let col_sums: Vec<i32> = w
            .chunks_exact(k)
            .map(|row| row.iter().map(|&v| v as i32).sum())
            .collect();
        let mut col_sums_padded = col_sums.clone();
        col_sums_padded.resize(panels * NR, 0);
        let expand = |v: &[f32]| {
            if v.len() == 1 {
                vec![v[0]; n]
            } else {
                v.to_vec()
            }
        };
        let zero_points: Vec<i32> = if zero_points.len() == 1 {
            vec![zero_points[0]; n]
        } else {
            zero_points.to_vec()
        };
        let any_zero_point = zero_points.iter().any(|&z| z != 0);
        Ok(PackedWeights {
            n,
            k,
            kp,
            data,
            col_sums,
            col_sums_padded,
            zero_points,
            max_scale: scales.iter().fold(0f32, |a, &b| a.max(b)),
            scales: expand(scales),
            per_channel,
            any_zero_point,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes held: the packed panels and the per-column sums, zero points and scales.
    pub fn bytes(&self) -> usize {
        self.data.bytes()
            + 4 * (self.col_sums.len()
                + self.col_sums_padded.len()
                + self.zero_points.len()
                + self.scales.len())
    }
    /// K padded to a multiple of [`KR`].
    pub fn kp(&self) -> usize {
        self.kp
    }
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
    /// The bytes of panels `p0..p0+count`.
    pub fn panel_data(&self, p0: usize, count: usize) -> &[i8] {
        &self.data.as_slice()[p0 * self.kp * NR..(p0 + count) * self.kp * NR]
    }
    /// Column sums of panels `p0..p0+count`, zero for padding columns.
    pub fn panel_col_sums(&self, p0: usize, count: usize) -> &[i32] {
        &self.col_sums_padded[p0 * NR..(p0 + count) * NR]
    }
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }
    /// One zero point per output column (replicated for per-tensor weights).
    pub fn zero_points(&self) -> &[i32] {
        &self.zero_points
    }
    /// One scale per output column (replicated for per-tensor weights).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// The largest weight scale.
    pub fn max_scale(&self) -> f32 {
        self.max_scale
    }
    pub fn is_per_channel(&self) -> bool {
        self.per_channel
    }
    pub fn has_zero_points(&self) -> bool {
        self.any_zero_point
    }
    /// Reconstructs the `[N, K]` int8 weights (for tests and unpacking).
    pub fn unpack(&self) -> Vec<i8> {
        let mut w = vec![0i8; self.n * self.k];
        for j in 0..self.n {
            let panel = self.panel_data(j / NR, 1);
            for kk in 0..self.k {
                w[j * self.k + kk] = panel[(kk / KR) * NR * KR + (j % NR) * KR + kk % KR];
            }
        }
        w
    }
}

/// Dynamic activations are packed as u8: their range must lie in `0..=255`.
fn check_u8_range(qmin: i32, qmax: i32) -> Result<()> {
    if !(0 <= qmin && qmin < qmax && qmax <= 255) {
        return Err(KernelError::InvalidQParams(format!(
            "dynamic activation range [{qmin}, {qmax}] must be a sub-range of [0, 255]"
        )));
    }
    Ok(())
}

/// Appends each K group of `data` as i16, repeated 4 times (the AVX2 broadcast form).
fn extend_bcast16(data: &[u8], v: &mut Vec<i16>) {
    for g in data.chunks_exact(KR) {
        for _ in 0..4 {
            v.extend(g.iter().map(|&x| x as i16));
        }
    }
}

/// The rows of a [`PackedA`] that held a value above 127, sorted
/// ([`PackedA::wide_rows_7bit`]): a GEMM on AVX2's 7-bit kernel computes them apart, exactly,
/// from their values clamped to 127 and what the clamp took off. When
/// [`PackedA::clamp_wide_rows`] clamped them in place, the taken-off values are kept here.
/// Crate-internal: a `gemm_wide` trusts the list to name every row of its `PackedA` above 127.
#[derive(Debug, Clone)]
pub(crate) struct WideRows {
    rows: Vec<u32>,
    /// Whether the rows were clamped in the activations.
    clamped: bool,
    /// When clamped: `taken[start[i]..start[i + 1]]` are the `(k, value − 127)` of wide row `i`.
    start: Vec<u32>,
    taken: Vec<(u32, i32)>,
}

#[allow(dead_code)] // len / is_empty / end: for checks and tests
impl WideRows {
    /// The index range (into the list) of the wide rows among `rows`.
    pub fn range_within(&self, rows: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let a = self.rows.partition_point(|&r| (r as usize) < rows.start);
        let b = self.rows.partition_point(|&r| (r as usize) < rows.end);
        a..b
    }
    /// The wide rows among `rows`.
    pub fn within(&self, rows: std::ops::Range<usize>) -> &[u32] {
        &self.rows[self.range_within(rows)]
    }
    /// Whether the rows were clamped in the activations ([`PackedA::clamp_wide_rows`]).
    pub fn clamped(&self) -> bool {
        self.clamped
    }
    /// The `(k, value − 127)` taken off wide row `i` (of the list) by
    /// [`PackedA::clamp_wide_rows`] (none if they were not clamped).
    pub fn taken(&self, i: usize) -> impl Iterator<Item = (usize, i32)> + '_ {
        let r = if self.clamped {
            self.start[i] as usize..self.start[i + 1] as usize
        } else {
            0..0
        };
        self.taken[r].iter().map(|&(k, v)| (k as usize, v))
    }
    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// The last row index plus one (0 for none).
    pub fn end(&self) -> usize {
        self.rows.last().map_or(0, |&r| r as usize + 1)
    }
}

/// u8 activations (`[M, K]`) in rows of `kp` bytes (zero padded), with row sums and the
/// activation zero point. Building it from floats quantizes in the same pass. The rows are
/// owned, or borrowed where the caller's activations already are packed rows
/// ([`PackedA::borrowed`]: a 1x1 convolution's channels-last input).
#[derive(Debug, Clone)]
pub struct PackedA<'a> {
    m: usize,
    k: usize,
    kp: usize,
    data: Cow<'a, [u8]>,
    row_sums: Vec<i32>,
    zero_point: i32,
    /// Per-row zero points when the rows were quantized with their own qparams.
    row_zero_points: Option<Vec<i32>>,
    /// The largest activation value. At most 127, `u8 × s8` pair sums fit in i16
    /// (2·127·128 = 32512), so AVX2's `vpmaddubsw` is exact on these activations.
    max: u8,
    /// The AVX2 family's form, built on first use: every K group's 4 values as i16, repeated
    /// 4 times (32 bytes), so `vpmaddwd` can take activations straight from memory.
    bcast16: OnceLock<Vec<i16>>,
}

impl PackedA<'_> {
    /// Wraps already-quantized u8 activations with zero point `zero_point`.
    pub fn from_u8(a: &[u8], m: usize, k: usize, zero_point: i32) -> Result<Self> {
        check_len("activation", checked_numel(&[m, k], "activation")?, a.len())?;
        Self::from_fill(m, k, zero_point, true, |data, kp| {
            if k > 0 {
                for (src, dst) in a.chunks_exact(k).zip(data.chunks_exact_mut(kp)) {
                    dst[..k].copy_from_slice(src);
                }
            }
        })
    }

    /// Rows that already are packed (`m` rows of `k` bytes, `k` a multiple of 4: no padding),
    /// borrowed without a copy: a 1x1 convolution's channels-last input block. `stats` as in
    /// [`PackedA::from_fill`].
    pub fn borrowed(
        rows: &[u8],
        m: usize,
        k: usize,
        zero_point: i32,
        stats: bool,
    ) -> Result<PackedA<'_>> {
        if !(0..=255).contains(&zero_point) {
            return Err(KernelError::InvalidQParams(format!(
                "quint8 activation zero point {zero_point} is outside [0, 255]"
            )));
        }
        if padded_k(k) != k {
            return Err(KernelError::ShapeMismatch {
                what: "borrowed activation rows".into(),
                expected: "a row length that is a multiple of 4".into(),
                got: format!("{k}"),
            });
        }
        check_len(
            "activation",
            checked_numel(&[m, k], "activation")?,
            rows.len(),
        )?;
        let mut row_sums = try_vec(m, 0i32, "activation row sums")?;
        let mut max = if stats { 0u8 } else { u8::MAX };
        if k > 0 && stats {
            for (row, rs) in rows.chunks_exact(k).zip(&mut row_sums) {
                let (s, mx) = sum_max_u8(row);
                *rs = s;
                max = max.max(mx);
            }
        }
        Ok(PackedA {
            m,
            k,
            kp: k,
            data: Cow::Borrowed(rows),
            row_sums,
            zero_point,
            row_zero_points: None,
            max,
            bcast16: OnceLock::new(),
        })
    }

    /// Activations written straight into the packed rows by `fill(data, kp)` (`m` rows of `kp`
    /// bytes, zero on entry; `fill` writes the first `k` bytes of each row), with zero point
    /// `zero_point`. With `stats`, row sums and the largest value are computed after, in one
    /// pass; without, they are left at 0 and 255 — for GEMMs that need neither (weights without
    /// zero points, an engine whose kernel choice does not look at the largest value). The
    /// convolution's im2col builds its blocks this way (no intermediate copy).
    pub fn from_fill(
        m: usize,
        k: usize,
        zero_point: i32,
        stats: bool,
        fill: impl FnOnce(&mut [u8], usize),
    ) -> Result<Self> {
        Self::from_fill_reusing(Vec::new(), m, k, zero_point, stats, fill)
    }

    /// [`PackedA::from_fill`] into the storage of `data` (a buffer from
    /// [`PackedA::into_data`]: blocks of a conv reuse one buffer instead of allocating, and
    /// faulting in, fresh memory each). `fill` must write the first `k` bytes of every row; the
    /// rest of each row is zeroed here.
    pub fn from_fill_reusing(
        mut data: Vec<u8>,
        m: usize,
        k: usize,
        zero_point: i32,
        stats: bool,
        fill: impl FnOnce(&mut [u8], usize),
    ) -> Result<Self> {
        if !(0..=255).contains(&zero_point) {
            return Err(KernelError::InvalidQParams(format!(
                "quint8 activation zero point {zero_point} is outside [0, 255]"
            )));
        }
        let kp = padded_k(k);
        let len = checked_numel(&[m, kp], "packed activations")?;
        data.truncate(len);
        data.try_reserve_exact(len - data.len()).map_err(|_| {
            KernelError::OutOfMemory(format!("cannot allocate packed activations ({len} bytes)"))
        })?;
        data.resize(len, 0);
        let mut row_sums = try_vec(m, 0i32, "activation row sums")?;
        fill(&mut data, kp);
        if kp > k {
            // at most 3 bytes per row (K rounds up to 4): stores, not a memset call per row
            for row in data.chunks_exact_mut(kp) {
                for b in &mut row[k..] {
                    *b = 0;
                }
            }
        }
        let mut max = if stats { 0u8 } else { u8::MAX };
        if kp > 0 && stats {
            for (row, rs) in data.chunks_exact(kp).zip(&mut row_sums) {
                let (s, mx) = sum_max_u8(row);
                *rs = s;
                max = max.max(mx);
            }
        }
        Ok(PackedA {
            m,
            k,
            kp,
            data: Cow::Owned(data),
            row_sums,
            zero_point,
            row_zero_points: None,
            max,
            bcast16: OnceLock::new(),
        })
    }

    /// Dynamic quantization fused with packing: chooses per-tensor qparams from the min and
    /// max of `x` over `[qmin, qmax]` (FBGEMM's rule, docs/numerics.md "Dynamic activation
    /// qparams"), then quantizes (D3).
    pub fn quantize_dynamic(
        x: &[f32],
        m: usize,
        k: usize,
        qmin: i32,
        qmax: i32,
    ) -> Result<(Self, DynamicQParams)> {
        Self::quantize_dynamic_on(Engine::Scalar, x, m, k, qmin, qmax)
    }

    /// [`PackedA::quantize_dynamic`] with its float loops compiled for `engine`'s ISA
    /// (results are identical on every engine: min/max is exact, quantize is elementwise).
    pub fn quantize_dynamic_on(
        engine: Engine,
        x: &[f32],
        m: usize,
        k: usize,
        qmin: i32,
        qmax: i32,
    ) -> Result<(Self, DynamicQParams)> {
        check_len("activation", checked_numel(&[m, k], "activation")?, x.len())?;
        check_u8_range(qmin, qmax)?;
        let (lo, hi) = with_features(engine, MinMax(x), &mut []).unwrap_or((0.0, 0.0));
        let qp = choose_qparams_dynamic(lo, hi, qmin, qmax)?;
        let kp = padded_k(k);
        let mut data = try_vec(
            checked_numel(&[m, kp], "packed activations")?,
            0u8,
            "packed activations",
        )?;
        let mut row_sums = try_vec(m, 0i32, "activation row sums")?;
        if k > 0 {
            let rows = QuantizeRows {
                x,
                k,
                kp,
                scale: qp.scale,
                zp: qp.zero_point,
                sums: &mut row_sums,
            };
            with_features(engine, rows, &mut data);
        }
        let max = max_u8(&data);
        Ok((
            PackedA {
                m,
                k,
                kp,
                data: Cow::Owned(data),
                row_sums,
                zero_point: qp.zero_point,
                row_zero_points: None,
                max,
                bcast16: OnceLock::new(),
            },
            qp,
        ))
    }

    /// Dynamic quantization with one scale and zero point per row (each row's own min/max,
    /// FBGEMM's rule), fused with packing. Returns the qparams of every row.
    pub fn quantize_dynamic_per_row_on(
        engine: Engine,
        x: &[f32],
        m: usize,
        k: usize,
        qmin: i32,
        qmax: i32,
    ) -> Result<(Self, Vec<DynamicQParams>)> {
        check_len("activation", checked_numel(&[m, k], "activation")?, x.len())?;
        check_u8_range(qmin, qmax)?;
        let kp = padded_k(k);
        let mut data = try_vec(
            checked_numel(&[m, kp], "packed activations")?,
            0u8,
            "packed activations",
        )?;
        let mut row_sums = try_vec(m, 0i32, "activation row sums")?;
        let mut qps = Vec::with_capacity(m);
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            let (lo, hi) = with_features(engine, MinMax(row), &mut []).unwrap_or((0.0, 0.0));
            let qp = choose_qparams_dynamic(lo, hi, qmin, qmax)?;
            if k > 0 {
                with_features(
                    engine,
                    QuantizeRows {
                        x: row,
                        k,
                        kp,
                        scale: qp.scale,
                        zp: qp.zero_point,
                        sums: &mut row_sums[i..i + 1],
                    },
                    &mut data[i * kp..(i + 1) * kp],
                );
            }
            qps.push(qp);
        }
        let zps = qps.iter().map(|q| q.zero_point).collect();
        let max = max_u8(&data);
        let a = PackedA {
            m,
            k,
            kp,
            data: Cow::Owned(data),
            row_sums,
            zero_point: 0,
            row_zero_points: Some(zps),
            max,
            bcast16: OnceLock::new(),
        };
        Ok((a, qps))
    }

    pub fn m(&self) -> usize {
        self.m
    }

    /// The packed rows' storage, for [`PackedA::from_fill_reusing`] (empty when borrowed).
    pub fn into_data(self) -> Vec<u8> {
        match self.data {
            Cow::Owned(v) => v,
            Cow::Borrowed(_) => Vec::new(),
        }
    }

    /// Per-row zero points, when the rows were quantized per row.
    pub fn row_zero_points(&self) -> Option<&[i32]> {
        self.row_zero_points.as_deref()
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn kp(&self) -> usize {
        self.kp
    }
    pub fn rows(&self, r0: usize, count: usize) -> &[u8] {
        &self.data[r0 * self.kp..(r0 + count) * self.kp]
    }
    /// Builds the broadcast i16 form ([`PackedA::rows_bcast16`]) now, reporting a failed
    /// allocation (it is 8× the packed activations).
    pub fn prepare_bcast16(&self) -> Result<()> {
        if self.bcast16.get().is_none() {
            let len = checked_numel(&[self.data.len(), 4], "broadcast activations")?;
            let mut v = try_vec(0, 0i16, "broadcast activations")?;
            v.try_reserve_exact(len).map_err(|_| {
                KernelError::OutOfMemory(format!(
                    "cannot allocate the AVX2 broadcast form of the activations ({len} int16 values)"
                ))
            })?;
            extend_bcast16(&self.data, &mut v);
            let _ = self.bcast16.set(v);
        }
        Ok(())
    }

    /// Rows `r0..r0+count` in the broadcast i16 form (`kp/4` groups of 16 i16 per row); built
    /// on first use unless [`PackedA::prepare_bcast16`] ran.
    pub fn rows_bcast16(&self, r0: usize, count: usize) -> &[i16] {
        let b = self.bcast16.get_or_init(|| {
            let mut v = Vec::with_capacity(self.data.len() * 4);
            extend_bcast16(&self.data, &mut v);
            v
        });
        &b[r0 * self.kp * 4..(r0 + count) * self.kp * 4]
    }

    /// For AVX2's 7-bit kernels, exact only below 128: finds the rows holding a larger value
    /// (one pass compiled with `engine`'s vector features, which also sets the largest value;
    /// nothing when it is known to be at most 127). Returns them when there are some but at most
    /// `m / max_share` rows and `max(m·k / 64, k)` values above 127 (each costs about `n` scalar
    /// multiply-adds to add back): a GEMM given them ([`crate::gemm::gemm_wide`]) runs the 7-bit
    /// kernel on the tiles without them and computes each tile holding one from its rows
    /// clamped to 127, exactly. The activations are not changed.
    pub(crate) fn wide_rows_7bit(&mut self, engine: Engine, max_share: usize) -> Option<WideRows> {
        if self.max <= 127 || self.m == 0 || self.kp == 0 {
            return None;
        }
        let (max, wide) = with_features(
            engine,
            RowsAbove127 {
                data: &self.data,
                kp: self.kp,
            },
            &mut [],
        );
        self.max = max;
        if wide.is_empty() || wide.len() > self.m / max_share.max(1) {
            return None;
        }
        let kp = self.kp;
        let values: usize = wide
            .iter()
            .map(|&r| {
                let row = &self.data[r as usize * kp..(r as usize + 1) * kp];
                row.iter().filter(|&&v| v > 127).count()
            })
            .sum();
        (values <= (self.m * self.k / 64).max(self.k)).then_some(WideRows {
            rows: wide,
            clamped: false,
            start: Vec::new(),
            taken: Vec::new(),
        })
    }

    /// Clamps the `wide` rows (from [`PackedA::wide_rows_7bit`] on this `PackedA`) to 127 in
    /// place, keeping what the clamp took off in `wide`, when the activations are this
    /// `PackedA`'s own (a conv's im2col block; borrowed ones are left alone, copying them would
    /// cost more): then the GEMM reads the tiles holding wide rows straight from the block
    /// instead of clamping a copy of each. The row sums keep the original values (they feed the
    /// weight zero-point term).
    pub(crate) fn clamp_wide_rows(&mut self, wide: &mut WideRows) {
        let Cow::Owned(data) = &mut self.data else {
            return;
        };
        if wide.clamped || wide.end() > self.m {
            return;
        }
        let kp = self.kp;
        wide.start.clear();
        wide.taken.clear();
        for &r in &wide.rows {
            wide.start.push(wide.taken.len() as u32);
            let row = &mut data[r as usize * kp..(r as usize + 1) * kp];
            for (k, v) in row.iter_mut().enumerate() {
                if *v > 127 {
                    wide.taken.push((k as u32, *v as i32 - 127));
                    *v = 127;
                }
            }
        }
        wide.start.push(wide.taken.len() as u32);
        wide.clamped = true;
        self.max = 127;
        self.bcast16 = OnceLock::new();
    }

    pub fn row_sums(&self) -> &[i32] {
        &self.row_sums
    }
    /// The largest activation value (0 for no rows).
    pub fn max_value(&self) -> u8 {
        self.max
    }
    /// Whether every activation is at most 127, so `u8 × s8` pair sums cannot leave i16.
    pub fn fits_7bit(&self) -> bool {
        self.max <= 127
    }
    pub fn zero_point(&self) -> i32 {
        self.zero_point
    }
}

/// The sum and the largest value of a row, in one pass: 32 u16 lanes add up to 256 blocks of
/// 32 bytes (256 · 255 < 2^16) before they are folded into the i32 sum; the compiler vectorises
/// both folds.
#[inline]
fn sum_max_u8(row: &[u8]) -> (i32, u8) {
    let mut sum = 0i32;
    let mut mx = [0u8; 32];
    for part in row.chunks(32 * 256) {
        let mut s16 = [0u16; 32];
        let mut chunks = part.chunks_exact(32);
        for c in &mut chunks {
            for ((s, m), &v) in s16.iter_mut().zip(&mut mx).zip(c) {
                *s += v as u16;
                *m = (*m).max(v);
            }
        }
        for (s, &v) in s16.iter_mut().zip(chunks.remainder()) {
            *s += v as u16;
        }
        mx[0] = chunks.remainder().iter().fold(mx[0], |a, &b| a.max(b));
        sum += s16.iter().map(|&v| v as i32).sum::<i32>();
    }
    (sum, max_u8(&mx))
}

/// The largest byte (0 when empty); a plain fold the compiler vectorises.
fn max_u8(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |m, &v| m.max(v))
}

/// The largest byte and the rows (of `kp` bytes) holding one above 127: 256-byte chunks
/// tested at once, the rows of a chunk above 127 one by one; compiled per ISA.
struct RowsAbove127<'a> {
    data: &'a [u8],
    kp: usize,
}

impl Vectorized for RowsAbove127<'_> {
    type Elem = ();
    type Out = (u8, Vec<u32>);
    #[inline(always)]
    fn run(self, _: &mut [()]) -> Self::Out {
        const CHUNK: usize = 256;
        let (data, kp) = (self.data, self.kp);
        let mut wide: Vec<u32> = Vec::new();
        let mut max = 0u8;
        for (ci, chunk) in data.chunks(CHUNK).enumerate() {
            let m = max_u8(chunk);
            max = max.max(m);
            if m > 127 {
                let start = ci * CHUNK;
                for r in start / kp..=(start + chunk.len() - 1) / kp {
                    if wide.last() != Some(&(r as u32)) && max_u8(&data[r * kp..(r + 1) * kp]) > 127
                    {
                        wide.push(r as u32);
                    }
                }
            }
        }
        (max, wide)
    }
}

/// The min/max pass of dynamic quantization, compiled per ISA (exact on every engine).
struct MinMax<'a>(&'a [f32]);

impl Vectorized for MinMax<'_> {
    type Elem = ();
    type Out = Option<(f32, f32)>;
    #[inline(always)]
    fn run(self, _: &mut [()]) -> Self::Out {
        crate::qparams::min_max_body(self.0)
    }
}

/// The quantize-and-pack pass of dynamic quantization, compiled per ISA (elementwise: the same
/// bits on every engine).
struct QuantizeRows<'a> {
    x: &'a [f32],
    k: usize,
    kp: usize,
    scale: f32,
    zp: i32,
    sums: &'a mut [i32],
}

impl Vectorized for QuantizeRows<'_> {
    type Elem = u8;
    type Out = ();
    #[inline(always)]
    fn run(self, data: &mut [u8]) {
        quantize_rows_body(
            self.x, self.k, self.kp, self.scale, self.zp, data, self.sums,
        )
    }
}

/// Quantizes rows of `k` floats into rows of `kp` bytes (zero padded) with their sums
/// (docs/numerics.md decision D3, over 0..=255). Inlined into [`QuantizeRows`], compiled per ISA.
#[inline(always)]
pub(crate) fn quantize_rows_body(
    x: &[f32],
    k: usize,
    kp: usize,
    scale: f32,
    zp: i32,
    data: &mut [u8],
    sums: &mut [i32],
) {
    let inv = 1.0f32 / scale;
    let (flo, fhi) = ((0 - zp) as f32, (255 - zp) as f32);
    for ((src, dst), rs) in x
        .chunks_exact(k)
        .zip(data.chunks_exact_mut(kp))
        .zip(sums.iter_mut())
    {
        let mut s = 0i32;
        for (d, &v) in dst[..k].iter_mut().zip(src) {
            let q = quantize_one_8bit(v, inv, flo, fhi, zp);
            *d = q as u8;
            s += q;
        }
        *rs = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_rows_apart_give_the_whole_gemm_on_every_engine() {
        use crate::arch::available_engines;
        // threads split these small GEMMs too (wide rows at band and column-group edges)
        let old = crate::threading::set_parallel_min_macs(0);
        use crate::gemm::{gemm, gemm_wide};
        use crate::requant::{Requantize, StoreI32};
        for &(m, k, n, zw) in &[
            (37usize, 150usize, 70usize, 0i32),
            (20, 64, 48, 3),
            (9, 7, 16, 0),
            (64, 16, 96, 0),
        ] {
            // mostly 0..127, a few values up to 255 (one in ~1500), two wide rows side by side
            let a: Vec<u8> = (0..m * k)
                .map(|i| {
                    if i % 1499 == 7 || i == k + 1 || i == 2 * k + 3 {
                        128 + (i % 128) as u8
                    } else {
                        (i * 31 % 128) as u8
                    }
                })
                .collect();
            let w: Vec<i8> = (0..n * k)
                .map(|i| ((i * 53 + 7) % 255) as i32 as i8)
                .collect();
            let scales: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-4).collect();
            let zps = vec![zw; n];
            let pw = PackedWeights::new(&w, n, k, &scales, &zps).unwrap();
            let stage = Requantize::<u8>::new(0.02, &pw, None, 0.5, 100, 0, 255, false).unwrap();
            let want_rows: Vec<u32> = (0..m)
                .filter(|r| a[r * k..(r + 1) * k].iter().any(|&v| v > 127))
                .map(|r| r as u32)
                .collect();
            for e in available_engines() {
                let whole = PackedA::from_u8(&a, m, k, 4).unwrap();
                let (mut want8, mut want32) = (vec![0u8; m * n], vec![0i32; m * n]);
                gemm(e, &whole, &pw, &stage, &mut want8, 1).unwrap();
                gemm(e, &whole, &pw, &StoreI32, &mut want32, 1).unwrap();
                let mut apart = whole.clone();
                let wide = apart
                    .wide_rows_7bit(e, 2)
                    .expect("a few wide rows are listed");
                assert_eq!(wide.within(0..m), &want_rows[..]);
                assert_eq!(apart.max_value(), *a.iter().max().unwrap());
                assert_eq!(apart.rows(0, m), whole.rows(0, m), "activations unchanged");
                // the rows as they are, then clamped in place (the taken-off values kept)
                let mut clamped = apart.clone();
                let mut wide_c = wide.clone();
                clamped.clamp_wide_rows(&mut wide_c);
                assert!(wide_c.clamped() && clamped.max_value() == 127);
                assert_eq!(clamped.row_sums(), whole.row_sums(), "row sums kept");
                for (pa, wr) in [(&apart, &wide), (&clamped, &wide_c)] {
                    for threads in [1, 3] {
                        let (mut got8, mut got32) = (vec![0u8; m * n], vec![0i32; m * n]);
                        gemm_wide(e, pa, &pw, &stage, &mut got8, threads, Some(wr)).unwrap();
                        gemm_wide(e, pa, &pw, &StoreI32, &mut got32, threads, Some(wr)).unwrap();
                        let what =
                            format!("{} m={m} k={k} n={n} zw={zw} {}", e.name(), wr.clamped());
                        assert_eq!(got32, want32, "{what}");
                        assert_eq!(got8, want8, "{what}");
                    }
                }
            }
            // too many wide rows: none listed, the largest value found
            let dense: Vec<u8> = (0..m * k).map(|i| (i * 37 % 256) as u8).collect();
            let mut d = PackedA::from_u8(&dense, m, k, 4).unwrap();
            let e = available_engines()[0];
            assert!(d.wide_rows_7bit(e, 8).is_none() && d.max_value() > 127);
            // none above 127: none listed, the largest value is the 7-bit one
            let low: Vec<u8> = dense.iter().map(|&v| v / 2).collect();
            let mut l = PackedA::from_u8(&low, m, k, 4).unwrap();
            assert!(l.wide_rows_7bit(e, 8).is_none() && l.max_value() <= 127);
        }
        crate::threading::set_parallel_min_macs(old);
    }

    #[test]
    fn borrowed_rows_equal_copied_rows_and_bad_ones_are_errors() {
        let a: Vec<u8> = (0..24u32).map(|i| (i * 37 % 256) as u8).collect();
        let b = PackedA::borrowed(&a, 3, 8, 5, true).unwrap();
        let c = PackedA::from_u8(&a, 3, 8, 5).unwrap();
        assert_eq!(b.rows(0, 3), c.rows(0, 3));
        assert_eq!(b.row_sums(), c.row_sums());
        assert_eq!(b.max_value(), c.max_value());
        assert_eq!((b.kp(), b.zero_point()), (8, 5));
        assert!(b.into_data().is_empty());
        assert!(PackedA::borrowed(&a[..18], 3, 6, 5, true).is_err()); // K not a multiple of 4
        assert!(PackedA::borrowed(&a[..20], 3, 8, 5, true).is_err()); // too short
        assert!(PackedA::borrowed(&a, 3, 8, 256, true).is_err()); // zero point
    }

    #[test]
    fn pack_unpack_round_trip_odd_sizes() {
        for &(n, k) in &[(1, 1), (7, 3), (16, 4), (17, 5), (33, 65)] {
            let w: Vec<i8> = (0..n * k)
                .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
                .collect();
            let p = PackedWeights::new(&w, n, k, &[0.5], &[0]).unwrap();
            assert_eq!(p.unpack(), w);
            assert_eq!(p.kp() % KR, 0);
            assert_eq!(
                p.col_sums()[0],
                w[..k].iter().map(|&v| v as i32).sum::<i32>()
            );
            assert!(!p.is_per_channel());
        }
    }

    #[test]
    fn empty_or_mismatched_weights_are_errors() {
        assert!(PackedWeights::new(&[], 0, 4, &[1.0], &[0]).is_err());
        assert!(PackedWeights::new(&[1, 2, 3], 1, 4, &[1.0], &[0]).is_err());
        assert!(PackedWeights::new(&[1, 2], 2, 1, &[1.0, 1.0, 1.0], &[0, 0, 0]).is_err());
        assert!(PackedWeights::new(&[1, 2], 2, 1, &[0.0], &[0]).is_err());
        assert!(PackedWeights::new(&[1, 2], 2, 1, &[1.0], &[200]).is_err());
    }

    #[test]
    fn packed_a_pads_and_sums() {
        let a: Vec<u8> = (0..10).collect();
        let p = PackedA::from_u8(&a, 2, 5, 3).unwrap();
        assert_eq!(p.kp(), 8);
        assert_eq!(p.rows(1, 1), &[5, 6, 7, 8, 9, 0, 0, 0]);
        assert_eq!(p.row_sums(), &[10, 35]);
        assert!(PackedA::from_u8(&a, 2, 5, 256).is_err());
    }

    #[test]
    fn dynamic_quantization_zero_rows() {
        let (p, qp) = PackedA::quantize_dynamic(&[], 0, 8, 0, 255).unwrap();
        assert_eq!(p.m(), 0);
        assert_eq!(qp.scale, 0.1);
    }
}
