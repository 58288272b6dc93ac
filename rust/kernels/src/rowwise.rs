//! Row-wise float ops on quantized (quint8) activations: softmax and layer normalisation over the
//! last, contiguous dimension (the caller moves the dimension there), group / instance
//! normalisation over contiguous `[channels of a group, spatial]` blocks. Each row is dequantized
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
    mut f: impl FnMut(usize, &mut [f32]),
) -> Result<()> {
    let rows = rows_of(x, len, out)?;
    qparams_ok(in_scale, in_zp, "input")?;
    qparams_ok(out_scale, out_zp, "output")?;
    let mut v = vec![0f32; len];
    for r in 0..rows {
        for (d, &q) in v.iter_mut().zip(&x[r * len..(r + 1) * len]) {
            *d = in_scale * (q as i32 - in_zp) as f32;
        }
        f(r, &mut v);
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
    map_rows(x, len, in_scale, in_zp, out_scale, out_zp, out, |_, v| {
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
    check_affine(weight, bias, len)?;
    check_eps(eps)?;
    map_rows(x, len, in_scale, in_zp, out_scale, out_zp, out, |_, v| {
        normalize(v, eps);
        for (j, d) in v.iter_mut().enumerate() {
            *d = affine(*d, weight.map(|w| w[j]), bias.map(|b| b[j]));
        }
    })
}

/// Group normalisation of `x` laid out `[batch, channels, inner]` (C order, `inner` = the
/// spatial size): each block of `channels / groups` channels × `inner` values of one sample is
/// normalised as [`layer_norm_u8`] does a row, then scaled and shifted per channel (`weight`,
/// `bias`: `channels` values). Instance normalisation is `groups == channels`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_u8(
    x: &[u8],
    groups: usize,
    channels: usize,
    inner: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    in_scale: f32,
    in_zp: i32,
    out_scale: f32,
    out_zp: i32,
    out: &mut [u8],
) -> Result<()> {
    if groups == 0 || channels % groups != 0 {
        return Err(KernelError::ShapeMismatch {
            what: "groups".into(),
            expected: format!("a divisor of the {channels} channels"),
            got: format!("{groups}"),
        });
    }
    check_affine(weight, bias, channels)?;
    check_eps(eps)?;
    let per_group = channels / groups;
    let overflow = || KernelError::ShapeMismatch {
        what: "group norm geometry".into(),
        expected: "channels × inner within the address space".into(),
        got: format!("{channels} × {inner}"),
    };
    let len = per_group.checked_mul(inner).ok_or_else(overflow)?;
    let sample = channels.checked_mul(inner).ok_or_else(overflow)?;
    if sample != 0 && x.len() % sample != 0 {
        return Err(KernelError::ShapeMismatch {
            what: "input".into(),
            expected: format!("a multiple of channels × inner = {channels} × {inner}"),
            got: format!("{} values", x.len()),
        });
    }
    map_rows(x, len, in_scale, in_zp, out_scale, out_zp, out, |r, v| {
        normalize(v, eps);
        let first = (r % groups) * per_group;
        for (k, block) in v.chunks_exact_mut(inner).enumerate() {
            let c = first + k;
            let (w, b) = (weight.map(|w| w[c]), bias.map(|b| b[c]));
            for d in block.iter_mut() {
                *d = affine(*d, w, b);
            }
        }
    })
}

fn check_affine(weight: Option<&[f32]>, bias: Option<&[f32]>, len: usize) -> Result<()> {
    for (what, p) in [("weight", weight), ("bias", bias)] {
        if let Some(p) = p {
            check_len(what, len, p.len())?;
            if p.iter().any(|v| !v.is_finite()) {
                return Err(KernelError::NonFinite(format!(
                    "normalisation {what} contains NaN or Inf"
                )));
            }
        }
    }
    Ok(())
}

fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(KernelError::InvalidQParams(format!(
            "eps must be finite and >= 0, got {eps}"
        )));
    }
    Ok(())
}

/// `(v − mean) · rstd` in place: mean and biased variance summed element after element,
/// `rstd = 1 / sqrt(var + eps)`.
fn normalize(v: &mut [f32], eps: f32) {
    let n = v.len() as f32;
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
    for d in v.iter_mut() {
        *d = (*d - mean) * rstd;
    }
}

#[inline(always)]
fn affine(y: f32, w: Option<f32>, b: Option<f32>) -> f32 {
    let y = match w {
        Some(w) => y * w,
        None => y,
    };
    match b {
        Some(b) => y + b,
        None => y,
    }
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

    #[test]
    fn group_norm_is_layer_norm_per_block_then_per_channel_affine() {
        // [batch 2, channels 6, inner 5], 3 groups of 2 channels
        let (c, inner, groups) = (6usize, 5usize, 3usize);
        let x: Vec<u8> = (0..2 * c * inner).map(|i| (i * 53 % 251) as u8).collect();
        let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let b: Vec<f32> = (0..c).map(|i| -0.3 + i as f32 * 0.1).collect();
        let (s, z, os, oz) = (0.04, 100, 0.03, 120);
        let mut got = vec![0u8; x.len()];
        group_norm_u8(
            &x,
            groups,
            c,
            inner,
            Some(&w),
            Some(&b),
            1e-5,
            s,
            z,
            os,
            oz,
            &mut got,
        )
        .unwrap();
        // the same through layer_norm_u8 with each block's per-element weights
        let len = c / groups * inner;
        for (r, (xb, gb)) in x.chunks(len).zip(got.chunks(len)).enumerate() {
            let g = r % groups;
            let we: Vec<f32> = (0..len).map(|j| w[g * 2 + j / inner]).collect();
            let be: Vec<f32> = (0..len).map(|j| b[g * 2 + j / inner]).collect();
            let mut want = vec![0u8; len];
            layer_norm_u8(xb, len, Some(&we), Some(&be), 1e-5, s, z, os, oz, &mut want).unwrap();
            assert_eq!(gb, &want[..], "row {r}");
        }
        // instance norm (groups = channels), no affine
        group_norm_u8(&x, c, c, inner, None, None, 1e-5, s, z, os, oz, &mut got).unwrap();
        let mut want = vec![0u8; x.len()];
        layer_norm_u8(&x, inner, None, None, 1e-5, s, z, os, oz, &mut want).unwrap();
        assert_eq!(got, want);
        for bad_groups in [0, 4] {
            assert!(group_norm_u8(
                &x, bad_groups, c, inner, None, None, 1e-5, s, z, os, oz, &mut got
            )
            .is_err());
        }
        assert!(group_norm_u8(
            &x,
            groups,
            c,
            inner,
            Some(&w[..5]),
            None,
            1e-5,
            s,
            z,
            os,
            oz,
            &mut got
        )
        .is_err());
        assert!(group_norm_u8(
            &x[..7],
            groups,
            c,
            inner,
            None,
            None,
            1e-5,
            s,
            z,
            os,
            oz,
            &mut got[..7]
        )
        .is_err());
        // a whole number of groups but not of samples; sizes that overflow
        let run = |x: &[u8], channels: usize, out: &mut [u8]| {
            group_norm_u8(x, 1, channels, inner, None, None, 1e-5, s, z, os, oz, out)
        };
        assert!(run(&x[..20], c, &mut got[..20]).is_err());
        assert!(run(&x, usize::MAX, &mut got).is_err());
    }
}
