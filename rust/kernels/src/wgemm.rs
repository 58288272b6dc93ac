//! Float activations times low-precision weights: fp16 weights (`float16_dynamic_qconfig`,
//! torch's fp16 dynamic Linear) and int8 weight-only (`int8_weight_only_qconfig`).
//!
//! The weights stay fp16 or int8 in memory and are widened to f32 in registers; nothing about the
//! activations is quantized. The specification, per output element (docs/numerics.md D8):
//!
//! ```text
//! acc = 0;  for k in 0..K (in order):  acc = fma(x[i][k], w(j, k), acc)
//! out[i][j] = fma(acc, scale[j], bias[j])          (bias 0 when absent)
//! ```
//!
//! with `w(j, k)` the fp16 value as f32 (scale 1), or `q[j][k] − zero_point[j]` as f32 (both exact).
//! One sequential FMA chain per element, whatever the engine or thread count: the loop below is
//! plain Rust compiled per ISA ([`with_features`]); engines vectorise across the 16 columns of a
//! panel, and `f32::mul_add` is a hardware FMA where the CPU has one and a correctly rounded
//! software FMA elsewhere — the same bits.

use crate::arch::{with_features, Engine, Vectorized};
use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};
use crate::threading::{parallel_for, threads_for};
use std::sync::Mutex;

/// Columns per panel.
const LANES: usize = 16;
/// Panels computed together (independent FMA chains for the GEMV case).
const PANELS: usize = 4;

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowFormat {
    /// IEEE half precision (bits), scale 1.
    F16,
    /// int8 with a scale and zero point per tensor or per output channel.
    I8,
}

#[derive(Debug, Clone)]
enum Store {
    F16(Vec<u16>),
    I8(Vec<i8>),
}

/// Weights `[N, K]` (as `nn.Linear.weight`) in panels of 16 columns: `panel[k*16 + c] =
/// W[col0 + c][k]`, the last panel padded with zeros.
#[derive(Debug, Clone)]
pub struct PackedLowWeights {
    n: usize,
    k: usize,
    store: Store,
    /// Per column, padded to whole panels.
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    per_channel: bool,
}

fn check_shape(n: usize, k: usize, len: usize) -> Result<usize> {
    if n == 0 || k == 0 {
        return Err(KernelError::Empty(format!(
            "weights must not be empty, got shape [{n}, {k}]; a Linear needs in_features > 0 and out_features > 0"
        )));
    }
    let numel = checked_numel(&[n, k], "weights")?;
    check_len("weights", numel, len)?;
    Ok(n.div_ceil(LANES))
}

fn pack<T: Copy + Default>(w: &[T], k: usize, panels: usize) -> Result<Vec<T>> {
    let mut data = try_vec(
        checked_numel(&[panels, k, LANES], "packed weights")?,
        T::default(),
        "packed weights",
    )?;
    for (j, row) in w.chunks_exact(k).enumerate() {
        let (p, c) = (j / LANES, j % LANES);
        let panel = &mut data[p * k * LANES..(p + 1) * k * LANES];
        for (kk, &v) in row.iter().enumerate() {
            panel[kk * LANES + c] = v;
        }
    }
    Ok(data)
}

impl PackedLowWeights {
    /// fp16 weights given as their bits (`n` rows of `k`).
    pub fn from_f16_bits(bits: &[u16], n: usize, k: usize) -> Result<Self> {
        let panels = check_shape(n, k, bits.len())?;
        if let Some(i) = bits.iter().position(|&b| b & 0x7c00 == 0x7c00) {
            return Err(KernelError::NonFinite(format!(
                "fp16 weight {i} (row {}, column {}) is Inf or NaN; weights must be finite",
                i / k,
                i % k
            )));
        }
        Ok(PackedLowWeights {
            n,
            k,
            store: Store::F16(pack(bits, k, panels)?),
            scales: vec![1.0; panels * LANES],
            zero_points: vec![0.0; panels * LANES],
            per_channel: false,
        })
    }

    /// int8 weights with `scales` / `zero_points` of length 1 (per tensor) or `n`.
    pub fn from_i8(
        w: &[i8],
        n: usize,
        k: usize,
        scales: &[f32],
        zero_points: &[i32],
    ) -> Result<Self> {
        let panels = check_shape(n, k, w.len())?;
        let c = scales.len();
        if (c != 1 && c != n) || zero_points.len() != c {
            return Err(KernelError::ShapeMismatch {
                what: "weight scales and zero points".into(),
                expected: format!("1 each (per tensor) or {n} each (per channel)"),
                got: format!("{} scales and {} zero points", c, zero_points.len()),
            });
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(KernelError::InvalidQParams(format!(
                "weight scales must be finite and > 0, got {s}"
            )));
        }
        if let Some(z) = zero_points.iter().find(|z| !(-128..=127).contains(*z)) {
            return Err(KernelError::InvalidQParams(format!(
                "int8 weight zero points must lie in [-128, 127], got {z}"
            )));
        }
        let mut s = vec![1.0f32; panels * LANES];
        let mut z = vec![0.0f32; panels * LANES];
        for j in 0..n {
            let at = if c == 1 { 0 } else { j };
            s[j] = scales[at];
            z[j] = zero_points[at] as f32;
        }
        Ok(PackedLowWeights {
            n,
            k,
            store: Store::I8(pack(w, k, panels)?),
            scales: s,
            zero_points: z,
            per_channel: c != 1,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn format(&self) -> LowFormat {
        match self.store {
            Store::F16(_) => LowFormat::F16,
            Store::I8(_) => LowFormat::I8,
        }
    }
    pub fn is_per_channel(&self) -> bool {
        self.per_channel
    }
    /// Bytes held (panels, scales, zero points).
    pub fn bytes(&self) -> usize {
        let data = match &self.store {
            Store::F16(d) => d.len() * 2,
            Store::I8(d) => d.len(),
        };
        data + (self.scales.len() + self.zero_points.len()) * 4
    }
    fn panels(&self) -> usize {
        self.n.div_ceil(LANES)
    }

    /// The fp16 bits back as `[n, k]` (None for int8 weights).
    pub fn unpack_f16(&self) -> Option<Vec<u16>> {
        match &self.store {
            Store::F16(d) => Some(self.unpack(d)),
            Store::I8(_) => None,
        }
    }

    /// The int8 weights back as `[n, k]` (None for fp16 weights).
    pub fn unpack_i8(&self) -> Option<Vec<i8>> {
        match &self.store {
            Store::I8(d) => Some(self.unpack(d)),
            Store::F16(_) => None,
        }
    }

    fn unpack<T: Copy + Default>(&self, data: &[T]) -> Vec<T> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![T::default(); n * k];
        for j in 0..n {
            let panel = &data[(j / LANES) * k * LANES..];
            for kk in 0..k {
                out[j * k + kk] = panel[kk * LANES + j % LANES];
            }
        }
        out
    }
}

/// `out[m, n] = x[m, k] · Wᵀ` (+ bias) as the module documentation specifies; `threads` is the
/// most worker threads to use.
pub fn linear_low(
    engine: Engine,
    x: &[f32],
    m: usize,
    w: &PackedLowWeights,
    bias: Option<&[f32]>,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let (n, k) = (w.n, w.k);
    check_len("input", checked_numel(&[m, k], "input")?, x.len())?;
    check_len("output", checked_numel(&[m, n], "output")?, out.len())?;
    if let Some(b) = bias {
        check_len("bias", n, b.len())?;
    }
    if m == 0 {
        return Ok(());
    }
    let panels = w.panels();
    let mut b = vec![0f32; panels * LANES];
    if let Some(bias) = bias {
        b[..n].copy_from_slice(bias);
    }
    let groups = panels.div_ceil(PANELS);
    let threads = threads_for(m.saturating_mul(n).saturating_mul(k), threads);
    let block = |rows: std::ops::Range<usize>, gs: std::ops::Range<usize>, buf: &mut [f32]| {
        let p0 = gs.start * PANELS;
        let p1 = (gs.end * PANELS).min(panels);
        let xs = &x[rows.start * k..rows.end * k];
        if simd_block(engine, w, xs, p0..p1, &b, buf) {
            return;
        }
        let body = Block {
            x: xs,
            k,
            w,
            panels: p0..p1,
            bias: &b,
        };
        with_features(engine, body, buf);
    };
    // every task fills a private [rows, panel columns] block, copied into place after
    let tasks: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> =
        if threads > 1 && groups >= threads {
            let per = groups.div_ceil(threads);
            (0..groups)
                .step_by(per)
                .map(|g0| (0..m, g0..(g0 + per).min(groups)))
                .collect()
        } else {
            let per = m.div_ceil(threads.max(1));
            (0..m)
                .step_by(per)
                .map(|r0| (r0..(r0 + per).min(m), 0..groups))
                .collect()
        };
    let parts: Vec<Mutex<Vec<f32>>> = tasks.iter().map(|_| Mutex::new(Vec::new())).collect();
    parallel_for(threads, tasks.len(), &|t| {
        let (rows, gs) = tasks[t].clone();
        let cols = ((gs.end * PANELS).min(panels) - gs.start * PANELS) * LANES;
        let mut buf = vec![0f32; rows.len() * cols];
        block(rows, gs, &mut buf);
        *parts[t].lock().unwrap_or_else(|e| e.into_inner()) = buf;
    });
    for ((rows, gs), part) in tasks.iter().zip(parts) {
        let buf = part.into_inner().unwrap_or_else(|e| e.into_inner());
        let c0 = gs.start * PANELS * LANES;
        let cols = ((gs.end * PANELS).min(panels) - gs.start * PANELS) * LANES;
        let c1 = (c0 + cols).min(n);
        for (i, src) in rows.clone().zip(buf.chunks_exact(cols)) {
            out[i * n + c0..i * n + c1].copy_from_slice(&src[..c1 - c0]);
        }
    }
    Ok(())
}

/// The block with the engine's hand-written kernel, where it has one (x86: AVX-512, AVX2);
/// false: run the generic loop.
#[allow(unused_variables)]
fn simd_block(
    engine: Engine,
    w: &PackedLowWeights,
    x: &[f32],
    panels: std::ops::Range<usize>,
    bias: &[f32],
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::arch::x86_64::{has_avx2_fma, has_avx512vnni, low};
        let k = w.k;
        let (c0, c1) = (panels.start * LANES, panels.end * LANES);
        let data = match &w.store {
            Store::F16(d) => {
                low::LowData::F16(&d[panels.start * k * LANES..panels.end * k * LANES])
            }
            Store::I8(d) => low::LowData::I8(&d[panels.start * k * LANES..panels.end * k * LANES]),
        };
        let block = low::LowBlock {
            x,
            k,
            data,
            zps: &w.zero_points[c0..c1],
            has_zp: w.zero_points[c0..c1].iter().any(|&z| z != 0.0),
            scales: &w.scales[c0..c1],
            bias: &bias[c0..c1],
        };
        match engine {
            Engine::Avx512Vnni if has_avx512vnni() => return low::block_avx512(&block, out),
            Engine::AvxVnni | Engine::Avx2 if has_avx2_fma() => {
                return low::block_avx2(&block, out)
            }
            _ => {}
        }
    }
    false
}

/// One block of rows and panels, written to `out` as `[rows, panels·16]`.
struct Block<'a> {
    x: &'a [f32],
    k: usize,
    w: &'a PackedLowWeights,
    panels: std::ops::Range<usize>,
    bias: &'a [f32],
}

impl Vectorized for Block<'_> {
    type Elem = f32;
    type Out = ();

    #[inline(always)]
    fn run(self, out: &mut [f32]) {
        match &self.w.store {
            Store::F16(d) => block_body(&self, d, out, |h: u16, _z: f32| f16_to_f32(h)),
            Store::I8(d) => block_body(&self, d, out, |q: i8, z: f32| q as f32 - z),
        }
    }
}

#[inline(always)]
fn block_body<T: Copy>(
    b: &Block,
    data: &[T],
    out: &mut [f32],
    widen: impl Fn(T, f32) -> f32 + Copy,
) {
    let k = b.k;
    let rows = b.x.len() / k;
    let cols = b.panels.len() * LANES;
    let mut p = b.panels.start;
    while p < b.panels.end {
        let np = (b.panels.end - p).min(PANELS);
        let c0 = (p - b.panels.start) * LANES;
        let mut r = 0;
        while r < rows {
            let nr = (rows - r).min(2);
            match (nr, np) {
                (2, PANELS) => tile::<T, 2, PANELS>(b, data, p, r, c0, cols, out, widen),
                (1, PANELS) => tile::<T, 1, PANELS>(b, data, p, r, c0, cols, out, widen),
                (2, _) => {
                    for q in 0..np {
                        tile::<T, 2, 1>(b, data, p + q, r, c0 + q * LANES, cols, out, widen)
                    }
                }
                _ => {
                    for q in 0..np {
                        tile::<T, 1, 1>(b, data, p + q, r, c0 + q * LANES, cols, out, widen)
                    }
                }
            }
            r += nr;
        }
        p += np;
    }
}

/// `R` rows × `P` panels: `R·P·16` independent FMA chains over k.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
fn tile<T: Copy, const R: usize, const P: usize>(
    b: &Block,
    data: &[T],
    p0: usize,
    r0: usize,
    c0: usize,
    ld: usize,
    out: &mut [f32],
    widen: impl Fn(T, f32) -> f32,
) {
    let k = b.k;
    let mut acc = [[[0f32; LANES]; P]; R];
    let mut zps = [[0f32; LANES]; P];
    for q in 0..P {
        zps[q].copy_from_slice(&b.w.zero_points[(p0 + q) * LANES..][..LANES]);
    }
    let panels: [&[T]; P] = std::array::from_fn(|q| &data[(p0 + q) * k * LANES..][..k * LANES]);
    let xs: [&[f32]; R] = std::array::from_fn(|r| &b.x[(r0 + r) * k..][..k]);
    for kk in 0..k {
        let mut wv = [[0f32; LANES]; P];
        for q in 0..P {
            let src = &panels[q][kk * LANES..][..LANES];
            for l in 0..LANES {
                wv[q][l] = widen(src[l], zps[q][l]);
            }
        }
        for r in 0..R {
            let xv = xs[r][kk];
            for q in 0..P {
                for l in 0..LANES {
                    acc[r][q][l] = xv.mul_add(wv[q][l], acc[r][q][l]);
                }
            }
        }
    }
    for r in 0..R {
        for q in 0..P {
            let col = (p0 + q) * LANES;
            let s = &b.w.scales[col..][..LANES];
            let bias = &b.bias[col..][..LANES];
            let dst = &mut out[(r0 + r) * ld + c0 + q * LANES..][..LANES];
            for l in 0..LANES {
                dst[l] = acc[r][q][l].mul_add(s[l], bias[l]);
            }
        }
    }
}

/// IEEE half (bits) to f32, exactly (normal, subnormal, zero, Inf, NaN); branch-free selects.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = (h & 0x7fff) << 13;
    let exp = em & (0x7c00 << 13);
    let normal = em + ((127 - 15) << 23);
    let inf_nan = normal + ((128 - 16) << 23);
    // subnormal: rebias as a normal number, then remove the implicit one (2^-14)
    let sub = (f32::from_bits(normal + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let bits = if exp == 0x7c00 << 13 {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let got = f16_to_f32(h);
            let e = (h >> 10) & 0x1f;
            let m = (h & 0x3ff) as f64;
            let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
            let want = match e {
                0 => sign * m * 2f64.powi(-24),
                31 if m == 0.0 => sign * f64::INFINITY,
                31 => f64::NAN,
                _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e as i32 - 15),
            };
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#x}");
            } else {
                assert_eq!(got as f64, want, "{h:#x}");
                assert_eq!(got.is_sign_negative(), h & 0x8000 != 0, "{h:#x}");
            }
        }
    }
}
