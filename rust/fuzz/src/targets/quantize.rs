//! `quantize`: quantize / dequantize per tensor and per channel (quantize.rs, NUMERICS D3) for
//! quint8, qint8 and qint32, against the rule evaluated element by element.

use ferroquant_kernels::quantize::{
    dequantize_per_channel, dequantize_per_tensor, quantize_per_channel, quantize_per_tensor,
    ChannelLayout, QInt,
};
use ferroquant_kernels::QDtype;

use crate::input::Input;
use crate::reference as r;
use crate::{assert_same_f32, assert_same_slice, expect_validity};

const MAX_LEN: usize = 1 << 12;

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    match (mode % 3, (mode / 3) % 2) {
        (0, 0) => per_tensor::<u8>(&mut inp),
        (1, 0) => per_tensor::<i8>(&mut inp),
        (_, 0) => per_tensor::<i32>(&mut inp),
        (0, _) => per_channel::<u8>(&mut inp),
        (1, _) => per_channel::<i8>(&mut inp),
        _ => per_channel::<i32>(&mut inp),
    }
}

fn dtype_range<T: QInt>() -> (i32, i32) {
    match T::DTYPE {
        QDtype::QUInt8 => (0, 255),
        QDtype::QInt8 => (-128, 127),
        QDtype::QInt32 => (i32::MIN, i32::MAX),
    }
}

/// qmin/qmax: the dtype's range, a sub-range, or anything.
fn range<T: QInt>(inp: &mut Input) -> (i32, i32) {
    let (dmin, dmax) = dtype_range::<T>();
    match inp.u8() % 8 {
        0..=3 => (dmin, dmax),
        4 | 5 => {
            let lo = inp.range_i64(dmin as i64, dmax as i64 - 1);
            (lo as i32, inp.range_i64(lo + 1, dmax as i64) as i32)
        }
        6 => (
            inp.i32_around(dmin, dmax, 255),
            inp.i32_around(dmin, dmax, 255),
        ),
        _ => (inp.u32() as i32, inp.u32() as i32),
    }
}

fn zero_point<T: QInt>(inp: &mut Input, bad: u8) -> i32 {
    let (dmin, dmax) = dtype_range::<T>();
    if T::DTYPE == QDtype::QInt32 && !inp.chance(32) {
        return inp.range_i64(-1000, 1000) as i32;
    }
    inp.i32_around(dmin, dmax, bad)
}

fn quantize_valid<T: QInt>(scale: f32, zp: i32, qmin: i32, qmax: i32) -> bool {
    let (dmin, dmax) = dtype_range::<T>();
    crate::scale_ok(scale)
        && scale > 0.0
        && dmin <= qmin
        && qmin < qmax
        && qmax <= dmax
        && (dmin..=dmax).contains(&zp)
}

/// Quantized values to dequantize: the dtype's extremes and anything in between.
fn q_vec<T: QInt>(inp: &mut Input, len: usize) -> Vec<T> {
    let (dmin, dmax) = dtype_range::<T>();
    (0..len)
        .map(|_| {
            let v = match inp.byte() % 4 {
                0 => dmin,
                1 => dmax,
                _ => {
                    let b = [inp.byte(), inp.byte(), inp.byte(), inp.byte()];
                    (i32::from_le_bytes(b) as i64).clamp(dmin as i64, dmax as i64) as i32
                }
            };
            T::from_i32(v)
        })
        .collect()
}

fn per_tensor<T: QInt + PartialEq + std::fmt::Debug>(inp: &mut Input) {
    let len = inp.size(65).max(if inp.chance(30) {
        inp.below(MAX_LEN)
    } else {
        0
    });
    let x = inp.f32_vec(len, true);
    let scale = inp.scale(30);
    let zp = zero_point::<T>(inp, 30);
    let (qmin, qmax) = range::<T>(inp);
    let out_len = inp.len_around(len, 12);
    let valid = quantize_valid::<T>(scale, zp, qmin, qmax) && out_len == len;
    let mut out = vec![T::default(); out_len];
    let res = quantize_per_tensor(&x, scale, zp, qmin, qmax, &mut out);
    if expect_validity(&res, valid, "quantize_per_tensor") {
        let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
        let want: Vec<i32> = x
            .iter()
            .map(|&v| r::quantize_one(v, scale, zp, qmin, qmax))
            .collect();
        assert_same_slice(&got, &want, &format!("quantize_per_tensor<{:?}>", T::DTYPE));
    }
    // dequantize: any finite scale (even 0 or negative) is accepted; zero points as drawn
    let q = q_vec::<T>(inp, len);
    let d_scale = if inp.chance(60) {
        inp.f32_any()
    } else {
        inp.valid_scale()
    };
    // any i32 zero point: `q - zp` is exact (i64)
    let d_zp = zero_point::<T>(inp, 30);
    let out_len = inp.len_around(len, 12);
    let valid = d_scale.is_finite() && out_len == len;
    let mut out = vec![0f32; out_len];
    let res = dequantize_per_tensor(&q, d_scale, d_zp, &mut out);
    if expect_validity(&res, valid, "dequantize_per_tensor") {
        let want: Vec<f32> = q
            .iter()
            .map(|v| r::dequantize_one(v.to_i32(), d_scale, d_zp))
            .collect();
        assert_same_f32(
            &out,
            &want,
            &format!("dequantize_per_tensor<{:?}>", T::DTYPE),
        );
    }
}

fn per_channel<T: QInt + PartialEq + std::fmt::Debug>(inp: &mut Input) {
    // a shape of up to 4 dims, one of them the channel axis
    let rank = 1 + inp.below(4);
    let mut shape: Vec<usize> = (0..rank).map(|_| inp.size(9)).collect();
    let hostile = inp.chance(16);
    if hostile {
        let d = inp.below(rank);
        shape[d] = inp.hostile_size();
        if inp.bool() {
            let d = inp.below(rank);
            shape[d] = inp.hostile_size();
        }
    }
    let axis = if inp.chance(12) {
        rank + inp.below(3)
    } else {
        inp.below(rank)
    };
    // the element count of the nonzero dims must fit (an empty tensor's too)
    let nonzero_fits = shape
        .iter()
        .filter(|&&s| s != 0)
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .is_some();
    let layout = ChannelLayout::from_shape(&shape, axis);
    if !expect_validity(
        &layout,
        axis < rank && nonzero_fits,
        "ChannelLayout::from_shape",
    ) {
        return;
    }
    let layout = layout.unwrap();
    assert_eq!(layout.channels, shape[axis]);
    let numel = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
    if let Some(numel) = numel {
        assert_eq!(
            (layout.outer, layout.inner),
            (
                shape[..axis].iter().product::<usize>(),
                shape[axis + 1..].iter().product::<usize>()
            )
        );
        assert_eq!(layout.numel(), numel);
    }
    let len = inp.len_around(numel.unwrap_or(0).min(MAX_LEN), 12);
    let channels = layout.channels;
    let nch = inp.len_around(channels.min(MAX_LEN), 12);
    let x = inp.f32_vec(len, true);
    let bad_q = if inp.chance(40) { 40 } else { 0 };
    let scales: Vec<f32> = (0..nch).map(|_| inp.scale(bad_q)).collect();
    let zps: Vec<i32> = (0..nch).map(|_| zero_point::<T>(inp, bad_q)).collect();
    let (qmin, qmax) = range::<T>(inp);
    let out_len = inp.len_around(len, 12);
    let valid = numel == Some(len)
        && out_len == len
        && nch == channels
        && scales
            .iter()
            .zip(&zps)
            .all(|(&s, &z)| quantize_valid::<T>(s, z, qmin, qmax));
    let mut out = vec![T::default(); out_len];
    let res = quantize_per_channel(&x, layout, &scales, &zps, qmin, qmax, &mut out);
    let (outer, inner) = (layout.outer, layout.inner);
    let chan = |idx: usize| (idx / inner.max(1)) % channels.max(1);
    if expect_validity(&res, valid, "quantize_per_channel") {
        let _ = outer;
        let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
        let want: Vec<i32> = x
            .iter()
            .enumerate()
            .map(|(idx, &v)| {
                let c = chan(idx);
                r::quantize_one(v, scales[c], zps[c], qmin, qmax)
            })
            .collect();
        assert_same_slice(
            &got,
            &want,
            &format!("quantize_per_channel<{:?}>", T::DTYPE),
        );
    }
    // dequantize per channel: scales must be finite (as per tensor), lengths must agree
    let q = q_vec::<T>(inp, len);
    let d_scales: Vec<f32> = (0..nch)
        .map(|_| {
            if inp.chance(60) {
                inp.f32_any()
            } else {
                inp.valid_scale()
            }
        })
        .collect();
    let d_zps: Vec<i32> = (0..nch).map(|_| zero_point::<T>(inp, 30)).collect();
    let out_len = inp.len_around(len, 12);
    let valid = numel == Some(len)
        && out_len == len
        && nch == channels
        && d_scales.iter().all(|s| s.is_finite());
    let mut out = vec![0f32; out_len];
    let res = dequantize_per_channel(&q, layout, &d_scales, &d_zps, &mut out);
    if expect_validity(&res, valid, "dequantize_per_channel") {
        let want: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(idx, v)| {
                let c = chan(idx);
                r::dequantize_one(v.to_i32(), d_scales[c], d_zps[c])
            })
            .collect();
        assert_same_f32(
            &out,
            &want,
            &format!("dequantize_per_channel<{:?}>", T::DTYPE),
        );
    }
}
