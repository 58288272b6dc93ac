//! Quantization dtypes, schemes and the choose-qparams rules of docs/numerics.md.

use crate::error::{KernelError, Result};

/// The integer storage of a quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QDtype {
    /// `quint8`: u8 in `[0, 255]`.
    QUInt8,
    /// `qint8`: i8 in `[-128, 127]`.
    QInt8,
    /// `qint32`: i32.
    QInt32,
}

impl QDtype {
    /// The full range `(dmin, dmax)` of the dtype.
    pub fn range(self) -> (i64, i64) {
        match self {
            QDtype::QUInt8 => (0, 255),
            QDtype::QInt8 => (-128, 127),
            QDtype::QInt32 => (i32::MIN as i64, i32::MAX as i64),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QDtype::QUInt8 => "quint8",
            QDtype::QInt8 => "qint8",
            QDtype::QInt32 => "qint32",
        }
    }
}

/// Checks that a scale is usable by the kernels: a positive normal float32 (a subnormal scale's
/// reciprocal overflows, so quantize would map every value to the range's end).
pub fn check_scale(scale: f32) -> Result<()> {
    if !(scale.is_normal() && scale > 0.0) {
        return Err(KernelError::InvalidQParams(format!(
            "scale must be a finite float32 number >= 1.1754944e-38 (the smallest normal), got \
             {scale:e}; recalibrate the observer or pass a valid scale"
        )));
    }
    Ok(())
}

/// Checks `qmin < qmax`, both inside the dtype range, and `zero_point` inside `[qmin, qmax]`.
pub fn check_range(dtype: QDtype, qmin: i64, qmax: i64, zero_point: i64) -> Result<()> {
    let (dmin, dmax) = dtype.range();
    if !(dmin <= qmin && qmin < qmax && qmax <= dmax) {
        return Err(KernelError::InvalidQParams(format!(
            "quant range [{qmin}, {qmax}] is not a valid sub-range of {} [{dmin}, {dmax}]",
            dtype.name()
        )));
    }
    if zero_point < dmin || zero_point > dmax {
        return Err(KernelError::InvalidQParams(format!(
            "zero_point {zero_point} is outside the {} range [{dmin}, {dmax}]",
            dtype.name()
        )));
    }
    Ok(())
}

/// Per-tensor affine qparams chosen at run time for an activation tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicQParams {
    /// The scale, as the kernels use it (f32).
    pub scale: f32,
    /// The exact (double) scale that torch reports from `_choose_qparams_per_tensor`.
    pub scale_f64: f64,
    pub zero_point: i32,
}

/// The smallest scale `ChooseQuantizationParams` lets through (FBGEMM's `SMALL_SCALE_THRESHOLD`).
const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;

/// FBGEMM's `ChooseQuantizationParams` (docs/numerics.md "Dynamic activation qparams"), used by
/// dynamic quantization.
///
/// `min`/`max` are the tensor's extremes; `qmin..qmax` the integer range (0..255, or 0..127
/// with `reduce_range`). Widens the interval to contain 0, computes the scale in double,
/// replaces degenerate scales by 0.1, cuts tiny scales at 6.1e-5 and nudges the zero point.
pub fn choose_qparams_dynamic(min: f32, max: f32, qmin: i32, qmax: i32) -> Result<DynamicQParams> {
    if !(min.is_finite() && max.is_finite()) {
        return Err(KernelError::NonFinite(format!(
            "dynamic quantization got a non-finite input (min {min}, max {max}); the activation contains NaN or Inf"
        )));
    }
    if qmin >= qmax {
        return Err(KernelError::InvalidQParams(format!(
            "qmin {qmin} must be < qmax {qmax}"
        )));
    }
    let mut min = min.min(0.0);
    let mut max = max.max(0.0);
    let span = (qmax as i64 - qmin as i64) as f64;
    let mut scale = (max as f64 - min as f64) / span;
    if (scale as f32) == 0.0 || (1.0f32 / (scale as f32)).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE_THRESHOLD as f64 {
        let org_scale = scale as f32;
        scale = SMALL_SCALE_THRESHOLD as f64;
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * span as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * span as f32;
        } else {
            let amplifier = SMALL_SCALE_THRESHOLD / org_scale;
            min *= amplifier;
            max *= amplifier;
        }
    }
    let zp_from_min = qmin as f64 - min as f64 / scale;
    let zp_from_max = qmax as f64 - max as f64 / scale;
    let err_min = (qmin as f64).abs() + (min as f64 / scale).abs();
    let err_max = (qmax as f64).abs() + (max as f64 / scale).abs();
    let initial = if err_min < err_max {
        zp_from_min
    } else {
        zp_from_max
    };
    let zero_point = if initial < qmin as f64 {
        qmin
    } else if initial > qmax as f64 {
        qmax
    } else {
        initial.round_ties_even() as i32
    };
    Ok(DynamicQParams {
        scale: scale as f32,
        scale_f64: scale,
        zero_point,
    })
}

/// Min and max of a float slice in one pass; `None` for an empty slice.
/// Any NaN makes the result NaN (so callers can report it).
pub fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    min_max_body(x)
}

/// The loop of [`min_max`], also compiled per ISA for dynamic quantization (`packed::MinMax`).
#[inline(always)]
pub(crate) fn min_max_body(x: &[f32]) -> Option<(f32, f32)> {
    if x.is_empty() {
        return None;
    }
    // 16 lanes of running min/max; `if v < lo` (not f32::min) lowers to plain vminps/vmaxps.
    // NaN never wins a comparison, so it is tracked on the side.
    const L: usize = 16;
    let mut lo = [f32::INFINITY; L];
    let mut hi = [f32::NEG_INFINITY; L];
    let mut nan = [false; L];
    let chunks = x.chunks_exact(L);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            let v = c[i];
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
            nan[i] |= v.is_nan();
        }
    }
    for (i, &v) in rem.iter().enumerate() {
        lo[i] = if v < lo[i] { v } else { lo[i] };
        hi[i] = if v > hi[i] { v } else { hi[i] };
        nan[i] |= v.is_nan();
    }
    if nan.iter().any(|&b| b) {
        return Some((f32::NAN, f32::NAN));
    }
    let l = lo.iter().copied().fold(f32::INFINITY, f32::min);
    let h = hi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Some((l, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_input_gets_scale_point_one() {
        let q = choose_qparams_dynamic(0.0, 0.0, 0, 255).unwrap();
        assert_eq!(q.scale, 0.1);
        assert_eq!(q.zero_point, 0);
    }

    #[test]
    fn range_is_widened_to_contain_zero() {
        let q = choose_qparams_dynamic(1.0, 2.0, 0, 255).unwrap();
        assert_eq!(q.scale_f64, 2.0 / 255.0);
        assert_eq!(q.zero_point, 0);
        let q = choose_qparams_dynamic(-2.0, -1.0, 0, 255).unwrap();
        assert_eq!(q.zero_point, 255);
    }

    #[test]
    fn symmetric_range_has_midpoint_zero_point() {
        let q = choose_qparams_dynamic(-1.0, 1.0, 0, 255).unwrap();
        assert_eq!(q.zero_point, 128); // 127.5 rounds to even
        let q = choose_qparams_dynamic(-1.0, 1.0, 0, 127).unwrap();
        assert_eq!(q.zero_point, 64); // 63.5 rounds to even
    }

    #[test]
    fn tiny_scale_is_cut_off() {
        let q = choose_qparams_dynamic(0.0, 1e-4, 0, 255).unwrap();
        assert_eq!(q.scale, SMALL_SCALE_THRESHOLD);
        assert_eq!(q.zero_point, 0);
    }

    #[test]
    fn non_finite_is_an_error() {
        assert!(choose_qparams_dynamic(f32::NAN, 1.0, 0, 255).is_err());
        assert!(choose_qparams_dynamic(0.0, f32::INFINITY, 0, 255).is_err());
    }

    #[test]
    fn min_max_handles_remainders_and_nan() {
        let v: Vec<f32> = (0..19).map(|i| i as f32 - 5.0).collect();
        assert_eq!(min_max(&v), Some((-5.0, 13.0)));
        assert_eq!(min_max(&[]), None);
        let (a, _) = min_max(&[1.0, f32::NAN]).unwrap();
        assert!(a.is_nan());
    }

    #[test]
    fn range_checks() {
        assert!(check_range(QDtype::QUInt8, 0, 255, 3).is_ok());
        assert!(check_range(QDtype::QUInt8, 0, 256, 3).is_err());
        assert!(check_range(QDtype::QInt8, -128, 127, 200).is_err());
        assert!(check_scale(0.0).is_err());
        assert!(check_scale(f32::NAN).is_err());
        assert!(check_scale(1e-3).is_ok());
    }
}
