//! Dynamic quantized recurrent layers (`nnqd.LSTM`, `GRU`, `RNN` and their cells).
//!
//! One call runs one layer in one direction over a whole sequence, as torch's CPU path does
//! (`aten/src/ATen/native/RNN.cpp`, `FullLayer` / `PackedLayer`):
//!
//! 1. the input projection of every time step as **one** dynamic int8 GEMM (`M` = all rows of the
//!    sequence), bias `b_ih` in its output stage;
//! 2. per step, the hidden state's dynamic quantization and its GEMM with `w_hh` (bias `b_hh`),
//!    then the gates and the state update in f32, in torch's order of operations.
//!
//! Variable-length batches (`PackedSequence`) are `batch_sizes`: step `t` updates the first
//! `batch_sizes[t]` rows of the hidden state; rows of finished sequences keep their last state
//! (the final hidden state), and in the reverse direction rows that have not started yet keep
//! their initial state — torch's `PackedLayer` / `ReversedPackedLayer` semantics.
//!
//! The float parts follow docs/numerics.md D8: `exp`, `sigmoid` and `tanh` are one polynomial
//! ([`exp`], [`sigmoid`], [`tanh`]), written once and used by every engine, with no fused
//! multiply-adds, so every engine and thread count gives the same bits (the GEMMs are exact).

use crate::arch::{with_features, Vectorized};
use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};
use crate::wgemm::{linear_low, PackedLowWeights};
use crate::{DynamicInput, DynamicOptions, Engine, PackedWeights};

/// A projection's weights: int8 with dynamic int8 activations, or fp16 / int8 weight-only with
/// float activations ([`crate::wgemm`]).
#[derive(Debug, Clone, Copy)]
pub enum Projection<'a> {
    Int8(&'a PackedWeights),
    Low(&'a PackedLowWeights),
}

impl Projection<'_> {
    /// Output features.
    pub fn n(&self) -> usize {
        match self {
            Projection::Int8(w) => w.n(),
            Projection::Low(w) => w.n(),
        }
    }

    /// Input features.
    pub fn k(&self) -> usize {
        match self {
            Projection::Int8(w) => w.k(),
            Projection::Low(w) => w.k(),
        }
    }

    /// `out[rows, n] = x[rows, k] · Wᵀ + bias`.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        engine: Engine,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        opts: DynamicOptions,
        out: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        match self {
            Projection::Int8(w) => DynamicInput::quantize(engine, x, rows, w.k(), opts)?
                .linear(engine, w, bias, out, threads),
            Projection::Low(w) => linear_low(engine, x, rows, w, bias, out, threads),
        }
    }
}

/// The cell of a recurrent layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// Gates `i, f, g, o` (torch's order); state `(h, c)`.
    Lstm,
    /// Gates `r, z, n` (torch's order).
    Gru,
    /// `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`.
    RnnTanh,
    /// `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`.
    RnnRelu,
}

impl CellKind {
    /// Gate blocks in the weights' rows: the weights are `[gates · hidden, ·]`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
        }
    }

    /// torch's mode name.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
            CellKind::RnnTanh => "RNN_TANH",
            CellKind::RnnRelu => "RNN_RELU",
        }
    }

    /// Parses torch's mode names: `"LSTM"`, `"GRU"`, `"RNN_TANH"`, `"RNN_RELU"`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "LSTM" => Ok(CellKind::Lstm),
            "GRU" => Ok(CellKind::Gru),
            "RNN_TANH" => Ok(CellKind::RnnTanh),
            "RNN_RELU" => Ok(CellKind::RnnRelu),
            _ => Err(KernelError::InvalidQParams(format!(
                "unknown recurrent cell {name:?}: expected \"LSTM\", \"GRU\", \"RNN_TANH\" or \"RNN_RELU\""
            ))),
        }
    }
}

/// The weights of one layer and direction: `w_ih` is `[G·H, I]`, `w_hh` is `[G·H, H]`.
#[derive(Debug, Clone, Copy)]
pub struct RnnWeights<'a> {
    pub kind: CellKind,
    pub w_ih: Projection<'a>,
    pub b_ih: Option<&'a [f32]>,
    pub w_hh: Projection<'a>,
    pub b_hh: Option<&'a [f32]>,
}

impl RnnWeights<'_> {
    /// The hidden size, after checking that the shapes agree.
    pub fn hidden_size(&self) -> Result<usize> {
        let g = self.kind.gates();
        let name = self.kind.name();
        // w_hh is [G·H, H]: it defines the hidden size
        let h = self.w_hh.k();
        let gh = g * h;
        if self.w_hh.n() != gh {
            return Err(KernelError::ShapeMismatch {
                what: format!(
                    "w_hh of a {name} layer (shape [{g} gates x hidden_size, hidden_size])"
                ),
                expected: format!("{gh} rows for hidden_size {h}"),
                got: format!("{} rows", self.w_hh.n()),
            });
        }
        if self.w_ih.n() != gh {
            return Err(KernelError::ShapeMismatch {
                what: format!(
                    "w_ih of a {name} layer (shape [{g} gates x hidden_size, input_size])"
                ),
                expected: format!("{gh} rows for hidden_size {h}"),
                got: format!("{} rows", self.w_ih.n()),
            });
        }
        for (what, b) in [("b_ih", self.b_ih), ("b_hh", self.b_hh)] {
            if let Some(b) = b {
                check_len(what, gh, b.len())?;
            }
        }
        Ok(h)
    }
}

/// The state a layer starts from and ends with: `h` is `[B, H]`, `c` (LSTM only) `[B, H]`.
#[derive(Debug)]
pub struct RnnState<'a> {
    pub h: &'a mut [f32],
    pub c: Option<&'a mut [f32]>,
}

/// Runs one layer in one direction over a sequence.
///
/// - `x`: the rows of every step, step after step (`[Σ batch_sizes, I]`; time-major).
/// - `batch_sizes`: rows per step, non-increasing, the first equal to `B`.
/// - `state`: the initial state on entry, the final state on return (per row: the state after
///   that row's last step).
/// - `out`: the hidden state of every row after every step, laid out as `x` (`[Σ, H]`).
#[allow(clippy::too_many_arguments)]
pub fn rnn_layer(
    engine: Engine,
    weights: &RnnWeights,
    x: &[f32],
    batch_sizes: &[usize],
    reverse: bool,
    opts: DynamicOptions,
    state: RnnState,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let h = weights.hidden_size()?;
    let input_size = weights.w_ih.k();
    let gh = weights.kind.gates() * h;
    let opts = DynamicOptions {
        relu: false,
        ..opts
    };
    let b = batch_sizes.first().copied().unwrap_or(0);
    if batch_sizes.windows(2).any(|w| w[1] > w[0]) || batch_sizes.contains(&0) {
        return Err(KernelError::ShapeMismatch {
            what: "batch_sizes".into(),
            expected: "positive and non-increasing (sequences sorted by length, longest first)"
                .into(),
            got: format!("{batch_sizes:?}"),
        });
    }
    let rows = batch_sizes
        .iter()
        .try_fold(0usize, |acc, &bs| acc.checked_add(bs))
        .ok_or_else(|| KernelError::TooLarge("the sum of batch_sizes overflows".into()))?;
    check_len(
        "input",
        checked_numel(&[rows, input_size], "input")?,
        x.len(),
    )?;
    check_len("output", checked_numel(&[rows, h], "output")?, out.len())?;
    let state_len = checked_numel(&[b, h], "hidden state")?;
    check_len("initial hidden state", state_len, state.h.len())?;
    let is_lstm = weights.kind == CellKind::Lstm;
    match (&state.c, is_lstm) {
        (Some(c), true) => check_len("initial cell state", state_len, c.len())?,
        (None, false) => {}
        (None, true) => {
            return Err(KernelError::Empty(
                "an LSTM layer needs an initial cell state".into(),
            ))
        }
        (Some(_), false) => {
            return Err(KernelError::InvalidQParams(format!(
                "a {} layer has no cell state; pass c0 only for LSTM",
                weights.kind.name()
            )))
        }
    }
    if let Some(c) = &state.c {
        if c.iter().any(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite(
                "the initial cell state contains NaN or Inf; pass finite values".into(),
            ));
        }
    }
    if rows == 0 {
        return Ok(());
    }
    // 1. every step's input projection, one GEMM
    let mut gi = try_vec(checked_numel(&[rows, gh], "gates")?, 0f32, "input gates")?;
    weights
        .w_ih
        .apply(engine, x, rows, weights.b_ih, opts, &mut gi, threads)?;
    // 2. the recurrence
    let mut hg = try_vec(
        checked_numel(&[b, gh], "hidden gates")?,
        0f32,
        "hidden gates",
    )?;
    let RnnState { h: hs, c: mut cs } = state;
    // prefix sums: no overflow, their total (`rows`) was checked
    let offsets: Vec<usize> = batch_sizes
        .iter()
        .scan(0usize, |at, &bs| {
            let start = *at;
            *at += bs;
            Some(start)
        })
        .collect();
    let steps: Vec<usize> = if reverse {
        (0..batch_sizes.len()).rev().collect()
    } else {
        (0..batch_sizes.len()).collect()
    };
    for t in steps {
        let (bs, row0) = (batch_sizes[t], offsets[t]);
        let hcur = &mut hs[..bs * h];
        let hgates = &mut hg[..bs * gh];
        weights
            .w_hh
            .apply(engine, hcur, bs, weights.b_hh, opts, hgates, threads)?;
        let update = StateUpdate {
            kind: weights.kind,
            hidden: h,
            ig: &gi[row0 * gh..(row0 + bs) * gh],
            hg: hgates,
            c: cs.as_deref_mut().map(|c| &mut c[..bs * h]),
        };
        with_features(engine, update, hcur);
        out[row0 * h..(row0 + bs) * h].copy_from_slice(hcur);
    }
    Ok(())
}

/// The gates and the state update of one step for every active row, in torch's order of
/// operations (`RNN.cpp` `LSTMCell`, `GRUCell`, `SimpleCell`); compiled per ISA by
/// [`with_features`] (plain IEEE f32 operations, no contraction: the same bits everywhere).
struct StateUpdate<'a> {
    kind: CellKind,
    /// `H`.
    hidden: usize,
    /// `[rows, G·H]`: the input projection (with `b_ih`).
    ig: &'a [f32],
    /// `[rows, G·H]`: the hidden projection (with `b_hh`).
    hg: &'a [f32],
    /// `[rows, H]`: the LSTM cell state.
    c: Option<&'a mut [f32]>,
}

impl Vectorized for StateUpdate<'_> {
    type Elem = f32;
    type Out = ();

    /// `h`: `[rows, H]`, the hidden state, updated in place.
    #[inline(always)]
    fn run(self, h: &mut [f32]) {
        let n = self.hidden;
        let rows = h.len().checked_div(n).unwrap_or(0);
        let gh = self.kind.gates() * n;
        match self.kind {
            CellKind::Lstm => {
                let c = self.c.expect("an LSTM update has a cell state");
                for r in 0..rows {
                    let (ig, hg) = (&self.ig[r * gh..][..gh], &self.hg[r * gh..][..gh]);
                    lstm_update(ig, hg, &mut h[r * n..][..n], &mut c[r * n..][..n]);
                }
            }
            CellKind::Gru => {
                for r in 0..rows {
                    let (ig, hg) = (&self.ig[r * gh..][..gh], &self.hg[r * gh..][..gh]);
                    gru_update(ig, hg, &mut h[r * n..][..n]);
                }
            }
            CellKind::RnnTanh => h
                .iter_mut()
                .zip(self.ig.iter().zip(self.hg))
                .for_each(|(y, (&a, &b))| *y = tanh(b + a)),
            CellKind::RnnRelu => h
                .iter_mut()
                .zip(self.ig.iter().zip(self.hg))
                .for_each(|(y, (&a, &b))| *y = relu(b + a)),
        }
    }
}

/// torch's LSTM cell: gates `hh + ih`, `c' = f·c + i·g`, `h' = o·tanh(c')`.
#[inline(always)]
fn lstm_update(ig: &[f32], hg: &[f32], h: &mut [f32], c: &mut [f32]) {
    let n = h.len();
    let (ig, hg, c) = (&ig[..4 * n], &hg[..4 * n], &mut c[..n]);
    for j in 0..n {
        let i = sigmoid(hg[j] + ig[j]);
        let f = sigmoid(hg[n + j] + ig[n + j]);
        let g = tanh(hg[2 * n + j] + ig[2 * n + j]);
        let o = sigmoid(hg[3 * n + j] + ig[3 * n + j]);
        let cy = f * c[j] + i * g;
        c[j] = cy;
        h[j] = o * tanh(cy);
    }
}

/// torch's GRU cell: `r = σ(hh_r + ih_r)`, `z = σ(hh_z + ih_z)`, `n = tanh(ih_n + hh_n·r)`,
/// `h' = (h − n)·z + n`.
#[inline(always)]
fn gru_update(ig: &[f32], hg: &[f32], h: &mut [f32]) {
    let n = h.len();
    let (ig, hg) = (&ig[..3 * n], &hg[..3 * n]);
    for j in 0..n {
        let r = sigmoid(hg[j] + ig[j]);
        let z = sigmoid(hg[n + j] + ig[n + j]);
        let new = tanh(ig[2 * n + j] + hg[2 * n + j] * r);
        h[j] = (h[j] - new) * z + new;
    }
}

/// `e^x` in f32 for finite `x` (Cephes' `expf`: Cody–Waite reduction by ln 2 with `n` rounded
/// to nearest, a degree-6 polynomial; within 2 ulp); underflows gradually to 0 and overflows to
/// +∞ as `expf`. Branch-free, so the update loops vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer (ties to even)
    const ROUND: f32 = 12_582_912.0;
    // below −104 the result rounds to 0, above 89 it is +∞: computed, not special-cased
    let x = x.clamp(-104.0, 89.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5e-1)
        * z
        + r
        + 1.0;
    // 2^n, n in -126..=128, as two factors that are both normal
    let n = n as i32;
    let n1 = n >> 1;
    let n2 = n - n1;
    p * f32::from_bits(((n1 + 127) as u32) << 23) * f32::from_bits(((n2 + 127) as u32) << 23)
}

/// `max(v, 0)` that keeps NaN (as torch's relu).
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// The logistic function `1 / (1 + e^−x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh(x)` in f32: an odd polynomial below |x| = 0.625 (Cephes' `tanhf`), `1 − 2/(e^{2|x|} + 1)`
/// with the sign of `x` above it. Branch-free (both computed, one selected).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    let large = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    // odd: the sign of x on both branches (and tanh(−0) = −0)
    (if a < 0.625 { small } else { large }).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_functions_match_libm() {
        let mut worst = [0f64; 3];
        let mut x = -30.0f32;
        while x < 30.0 {
            let xd = x as f64;
            let rel = |a: f32, b: f64| ((a as f64 - b) / b.abs().max(1e-30)).abs();
            if x < 88.0 {
                worst[0] = worst[0].max(rel(exp(x), xd.exp()));
            }
            worst[1] = worst[1].max(rel(sigmoid(x), 1.0 / (1.0 + (-xd).exp())));
            worst[2] = worst[2].max(rel(tanh(x), xd.tanh()));
            x += 0.000_731;
        }
        for w in worst {
            assert!(w < 4.0 * f32::EPSILON as f64, "{worst:?}");
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(20.0), 1.0);
        assert_eq!(tanh(-20.0), -1.0);
        assert_eq!(sigmoid(-100.0), 0.0);
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(sigmoid(100.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(-110.0), 0.0);
        assert!(
            exp(-100.0) > 0.0 && exp(-100.0) < 1e-43,
            "gradual underflow"
        );
        assert!(exp(f32::NAN).is_nan() && relu(f32::NAN).is_nan());
    }
}
