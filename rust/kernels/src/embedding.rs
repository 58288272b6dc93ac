//! Weight-only quantized embeddings: tables of 8-bit or 4-bit rows, each row with its own float
//! scale and float zero point (torch's `per_channel_affine_float_qparams`), looked up and reduced
//! into float32 outputs (`nn.quantized.Embedding`, `EmbeddingBag`).
//!
//! The specification (docs/numerics.md D8): a stored value `q` of row `r` is
//! `v = (q − zp[r]) · scale[r]` (two f32 roundings, torch's dequantize); a bag adds its rows'
//! values in index order (`acc = acc + v`, or `acc = acc + w · v` with per-sample weights),
//! `mean` divides the sum by the bag's size, `max` takes the elementwise maximum; an empty bag
//! gives zeros. Loops are plain Rust compiled per ISA: every engine gives the same bits.

use crate::arch::{with_features, Engine, Vectorized};
use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};

/// How an `EmbeddingBag` reduces its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BagMode {
    Sum,
    Mean,
    Max,
}

impl BagMode {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "sum" => Ok(BagMode::Sum),
            "mean" => Ok(BagMode::Mean),
            "max" => Ok(BagMode::Max),
            _ => Err(KernelError::InvalidQParams(format!(
                "unknown EmbeddingBag mode {name:?}: expected \"sum\", \"mean\" or \"max\""
            ))),
        }
    }
}

/// A table of `rows` quantized rows of `dim` values: 8 bits (one byte per value) or 4 bits (two
/// values per byte, the even index in the low nibble).
#[derive(Debug, Clone)]
pub struct RowwiseTable {
    rows: usize,
    dim: usize,
    bits: u32,
    data: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
}

impl RowwiseTable {
    /// Bytes per stored row for `dim` values of `bits` bits.
    pub fn row_bytes_for(dim: usize, bits: u32) -> usize {
        if bits == 4 {
            dim.div_ceil(2)
        } else {
            dim
        }
    }

    /// `data`: `rows × row_bytes_for(dim, bits)` bytes; `scales` / `zero_points`: one per row
    /// (finite; scales > 0).
    pub fn new(
        data: &[u8],
        rows: usize,
        dim: usize,
        bits: u32,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<Self> {
        if bits != 8 && bits != 4 {
            return Err(KernelError::UnsupportedDtype(format!(
                "embedding tables hold 8-bit (quint8) or 4-bit (quint4x2) rows, got {bits} bits"
            )));
        }
        if dim == 0 {
            return Err(KernelError::Empty(
                "an embedding needs embedding_dim > 0".into(),
            ));
        }
        let rb = Self::row_bytes_for(dim, bits);
        check_len(
            "embedding table bytes",
            checked_numel(&[rows, rb], "embedding table")?,
            data.len(),
        )?;
        check_len("row scales", rows, scales.len())?;
        check_len("row zero points", rows, zero_points.len())?;
        if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(KernelError::InvalidQParams(format!(
                "row {i}: scale must be finite and > 0, got {}",
                scales[i]
            )));
        }
        if let Some(i) = zero_points.iter().position(|z| !z.is_finite()) {
            return Err(KernelError::InvalidQParams(format!(
                "row {i}: zero point must be finite, got {}",
                zero_points[i]
            )));
        }
        if bits == 4 && dim % 2 == 1 {
            // the unused high nibble of each row's last byte must be zero (canonical storage)
            if let Some(r) = (0..rows).find(|r| data[r * rb + rb - 1] >> 4 != 0) {
                return Err(KernelError::InvalidQParams(format!(
                    "row {r}: the unused high nibble of the last byte of a 4-bit row of odd length must be 0"
                )));
            }
        }
        let mut copy = try_vec(data.len(), 0u8, "embedding table")?;
        copy.copy_from_slice(data);
        Ok(RowwiseTable {
            rows,
            dim,
            bits,
            data: copy,
            scales: scales.to_vec(),
            zero_points: zero_points.to_vec(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn bits(&self) -> u32 {
        self.bits
    }
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    pub fn zero_points(&self) -> &[f32] {
        &self.zero_points
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.rows
    }

    fn row(&self, r: usize) -> &[u8] {
        let rb = Self::row_bytes_for(self.dim, self.bits);
        &self.data[r * rb..(r + 1) * rb]
    }
}

fn index(table: &RowwiseTable, i: i64, at: usize) -> Result<usize> {
    if i < 0 || i as u64 >= table.rows as u64 {
        return Err(KernelError::ShapeMismatch {
            what: format!("index {at}"),
            expected: format!(
                "an index in [0, {}) (num_embeddings = {})",
                table.rows, table.rows
            ),
            got: i.to_string(),
        });
    }
    Ok(i as usize)
}

/// `out[i, :]` = row `indices[i]` (plain `Embedding`): `out` holds `indices.len() × dim` values.
pub fn embedding_lookup(
    engine: Engine,
    table: &RowwiseTable,
    indices: &[i64],
    out: &mut [f32],
) -> Result<()> {
    let dim = table.dim;
    check_len(
        "output",
        checked_numel(&[indices.len(), dim], "output")?,
        out.len(),
    )?;
    let rows: Vec<usize> = indices
        .iter()
        .enumerate()
        .map(|(at, &i)| index(table, i, at))
        .collect::<Result<_>>()?;
    for (r, dst) in rows.iter().zip(out.chunks_exact_mut(dim)) {
        let body = Accumulate {
            table,
            row: *r,
            weight: None,
            op: Op::Store,
        };
        with_features(engine, body, dst);
    }
    Ok(())
}

/// The bags of an `EmbeddingBag`: bag `b` covers `indices[offsets[b]..offsets[b + 1]]` (the
/// last bag runs to the end, or with `include_last_offset` the last offset is the end). Entries
/// equal to `padding_idx` are left out (and not counted by `mean`). `per_sample_weights` (one per
/// index) only with `Sum`. Returns the number of bags; `out` holds `bags × dim` values.
#[allow(clippy::too_many_arguments)]
pub fn embedding_bag(
    engine: Engine,
    table: &RowwiseTable,
    indices: &[i64],
    offsets: &[i64],
    mode: BagMode,
    per_sample_weights: Option<&[f32]>,
    include_last_offset: bool,
    padding_idx: Option<i64>,
    out: &mut [f32],
) -> Result<usize> {
    let dim = table.dim;
    let n = indices.len();
    let bags = if include_last_offset {
        offsets.len().checked_sub(1).ok_or_else(|| {
            KernelError::Empty("include_last_offset needs at least one offset (the end)".into())
        })?
    } else {
        offsets.len()
    };
    check_len("output", checked_numel(&[bags, dim], "output")?, out.len())?;
    if let Some(w) = per_sample_weights {
        if mode != BagMode::Sum {
            return Err(KernelError::InvalidQParams(
                "per_sample_weights are only supported with mode='sum' (as in torch)".into(),
            ));
        }
        check_len("per_sample_weights", n, w.len())?;
    }
    if !offsets.is_empty() && offsets[0] != 0 {
        return Err(KernelError::ShapeMismatch {
            what: "offsets[0]".into(),
            expected: "0 (the first bag starts at the first index)".into(),
            got: offsets[0].to_string(),
        });
    }
    let bound = |b: usize| -> Result<usize> {
        let o = if b < offsets.len() {
            offsets[b]
        } else {
            n as i64
        };
        if o < 0 || o as u64 > n as u64 {
            return Err(KernelError::ShapeMismatch {
                what: format!("offsets[{b}]"),
                expected: format!("a position in [0, {n}] (the number of indices)"),
                got: o.to_string(),
            });
        }
        Ok(o as usize)
    };
    for b in 0..bags {
        let (s, e) = (bound(b)?, bound(b + 1)?);
        if e < s {
            return Err(KernelError::ShapeMismatch {
                what: "offsets".into(),
                expected: "non-decreasing values".into(),
                got: format!("offsets[{b}] = {s} > offsets[{}] = {e}", b + 1),
            });
        }
    }
    for (at, &i) in indices.iter().enumerate() {
        index(table, i, at)?;
    }
    for (b, dst) in out.chunks_exact_mut(dim).enumerate() {
        let (s, e) = (bound(b)?, bound(b + 1)?);
        dst.fill(0.0);
        let mut count = 0usize;
        for at in s..e {
            let i = indices[at];
            if Some(i) == padding_idx {
                continue;
            }
            let op = match mode {
                BagMode::Max if count == 0 => Op::Store,
                BagMode::Max => Op::Max,
                _ => Op::Add,
            };
            let body = Accumulate {
                table,
                row: i as usize,
                weight: per_sample_weights.map(|w| w[at]),
                op,
            };
            with_features(engine, body, dst);
            count += 1;
        }
        if mode == BagMode::Mean && count > 0 {
            let c = count as f32;
            dst.iter_mut().for_each(|v| *v /= c);
        }
    }
    Ok(bags)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Store,
    Add,
    Max,
}

/// One row's values into `out`: stored, added (times an optional weight) or maxed.
struct Accumulate<'a> {
    table: &'a RowwiseTable,
    row: usize,
    weight: Option<f32>,
    op: Op,
}

impl Vectorized for Accumulate<'_> {
    type Elem = f32;
    type Out = ();

    #[inline(always)]
    fn run(self, out: &mut [f32]) {
        let t = self.table;
        let (s, z) = (t.scales[self.row], t.zero_points[self.row]);
        let src = t.row(self.row);
        let value = |j: usize| -> f32 {
            let q = if t.bits == 8 {
                src[j]
            } else {
                (src[j / 2] >> ((j % 2) * 4)) & 0x0f
            };
            (q as f32 - z) * s
        };
        match (self.op, self.weight) {
            (Op::Store, _) => out.iter_mut().enumerate().for_each(|(j, o)| *o = value(j)),
            (Op::Add, None) => out.iter_mut().enumerate().for_each(|(j, o)| *o += value(j)),
            (Op::Add, Some(w)) => out
                .iter_mut()
                .enumerate()
                .for_each(|(j, o)| *o += w * value(j)),
            (Op::Max, _) => out
                .iter_mut()
                .enumerate()
                .for_each(|(j, o)| *o = o.max(value(j))),
        }
    }
}
