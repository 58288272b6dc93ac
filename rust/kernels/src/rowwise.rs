//! Row-wise float ops on quantized (quint8) activations: softmax and layer normalisation over the
//! last, contiguous dimension (the caller moves the dimension there). Each row is dequantized
//! (`fl(scale · fl(q − zp))`), computed in f32 in one fixed sequential order — the reductions
//! (max, sums) run element after element, `exp` is [`crate::rnn::exp`], no FMA — and quantized
//! with the D3 rule onto the output qparams: the same bits on every engine and thread count
//! (docs/numerics.md D8). torch computes the same definitions (dequantize, float op, quantize) in
//! its own order: results agree within 1 LSB.

use crate::error::{check_len, checked_numel, KernelError, Result};
use crate::quantize::quantize_per_tensor;
use crate::rnn::exp;

/// Checks shapes; returns the number of rows.
fn rows_of(x: &[u8], len: usize, out: &[u8]) -> Result<usize> {
    if len == 0 {
        return Err(KernelError::Empty(
            "the normalised dimension must not be empty".into(),
        ));
    }
    check_len("output", x.len(), out.len())?;
    if x.len() % len != 0 {
        return Err(KernelError::ShapeMismatch {
            what: "input".into(),
            expected: format!("a multiple of the row length {len}"),
            got: format!("{} values", x.len()),
        });
    }
    checked_numel(&[x.len() / len, len], "input")?;
    Ok(x.len() / len)
}

fn qparams_ok(scale: f32, zp: i32, what: &str) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0 && (0..=255).contains(&zp)) {
        return Err(KernelError::InvalidQParams(format!(
            "{what}: scale must be finite and > 0 and the zero point in [0, 255], got {scale} and {zp}"
        )));
    }
    Ok(())
}

/// Each row of `x` dequantized into a buffer, transformed in place by `f`, quantized into `out`.
#[allow(clippy::too_many_arguments)]
fn map_rows(
    x: &[u8],
    len: usize,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
    out: &mut [u8],
    mut f: impl FnMut(&mut [f32]),
) -> Result<()> {
    let rows = rows_of(x, len, out)?;
    qparams_ok(in_scale, in_zp, "input")?;
    qparams_ok(out_scale, out_zp, "output")?;
    let mut v = vec![0f32; len];
    for r in 0..rows {
        for (d, &q) in v.iter_mut().zip(&x[r * len..(r + 1) * len]) {
            *d = in_scale * (q as i32 - in_zp) as f32;
        }
        f(&mut v);
        quantize_per_tensor::<u8>(
            &v,
            out_scale,
            out_zp,
            0,
            255,
            &mut out[r * len..(r + 1) * len],
        )?;
    }
    Ok(())
}

/// Softmax of each row of `len` quint8 values, quantized to (`out_scale`, `out_zp`) over 0..255.
pub fn softmax_u8(
    x: &[u8],
    len: usize,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
    out: &mut [u8],
) -> Result<()> {
    map_rows(x, len, in_scale, in_zp, out_scale, out_zp, out, |v| {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for d in v.iter_mut() {
            *d = exp(*d - m);
            sum += *d;
        }
        for d in v.iter_mut() {
            *d /= sum;
        }
    })
}

/// Layer normalisation of each row of `len` quint8 values: `((v − mean) · rstd) · γ + β` with the
/// biased variance and `rstd = 1 / sqrt(var + eps)`, quantized to (`out_scale`, `out_zp`).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_u8(
    x: &[u8],
    len: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
    out: &mut [u8],
) -> Result<()> {
    for (what, p) in [("weight", weight), ("bias", bias)] {
        if let Some(p) = p {
            check_len(what, len, p.len())?;
            if p.iter().any(|v| !v.is_finite()) {
                return Err(KernelError::NonFinite(format!(
                    "layer_norm {what} contains NaN or Inf"
                )));
            }
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(KernelError::InvalidQParams(format!(
            "eps must be finite and >= 0, got {eps}"
        )));
    }
    let n = len as f32;
    map_rows(x, len, in_scale, in_zp, out_scale, out_zp, out, |v| {
        let mut sum = 0f32;
        for d in v.iter() {
            sum += *d;
        }
        let mean = sum / n;
        let mut sq = 0f32;
        for d in v.iter() {
            let c = *d - mean;
            sq += c * c;
        }
        let rstd = 1.0 / (sq / n + eps).sqrt();
        for (j, d) in v.iter_mut().enumerate() {
            let mut y = (*d - mean) * rstd;
            if let Some(w) = weight {
                y *= w[j];
            }
            if let Some(b) = bias {
                y += b[j];
            }
            *d = y;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_layer_norm_centres() {
        let x: Vec<u8> = (0..64).map(|i| (i * 37 % 256) as u8).collect();
        let mut out = vec![0u8; 64];
        softmax_u8(&x, 16, 0.05, 128, 1.0 / 256.0, 0, &mut out).unwrap();
        for row in out.chunks(16) {
            let s: u32 = row.iter().map(|&q| q as u32).sum();
            assert!((240..=272).contains(&s), "{s}");
        }
        layer_norm_u8(&x, 16, None, None, 1e-5, 0.05, 128, 0.02, 128, &mut out).unwrap();
        for row in out.chunks(16) {
            let mean: f32 = row.iter().map(|&q| (q as f32 - 128.0) * 0.02).sum::<f32>() / 16.0;
            assert!(mean.abs() < 0.02, "{mean}");
        }
        assert!(softmax_u8(&x, 0, 0.05, 128, 0.1, 0, &mut out).is_err());
        assert!(softmax_u8(&x, 15, 0.05, 128, 0.1, 0, &mut out).is_err());
        assert!(softmax_u8(&x, 16, 0.0, 128, 0.1, 0, &mut out).is_err());
        assert!(layer_norm_u8(
            &x,
            16,
            Some(&[1.0; 3]),
            None,
            1e-5,
            0.05,
            128,
            0.1,
            0,
            &mut out
        )
        .is_err());
    }
}
