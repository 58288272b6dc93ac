//! `requantize`: the output stages of requant.rs (`Requantize<u8/i8>`, `DequantF32` per tensor
//! and per row) through `gemm::gemm`, with random (often extreme) scales, zero points, ranges
//! and biases, against the documented formulas evaluated element by element.

use ferroquant_kernels::gemm::gemm;
use ferroquant_kernels::quantize::QInt;
use ferroquant_kernels::requant::{DequantF32, Requantize};
use ferroquant_kernels::{Engine, PackedA, PackedWeights};

use crate::input::Input;
use crate::reference as r;
use crate::{
    assert_same_f32, assert_same_slice, engines, expect_validity, relu_zp_ok, with_threads, THREADS,
};

const BUDGET: usize = 1 << 15;

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 4;
    let n = inp.size_nonzero(65);
    let k = inp.size_nonzero(65);
    let mut m = inp.size(17);
    while m > 1 && m * n * k > BUDGET {
        m /= 2;
    }
    let w = inp.i8_vec(n * k);
    let per_channel = inp.bool();
    let ns = if per_channel { n } else { 1 };
    let scales: Vec<f32> = (0..ns).map(|_| inp.valid_scale()).collect();
    let zps: Vec<i32> = (0..ns)
        .map(|_| {
            if inp.chance(128) {
                0
            } else {
                inp.range_i64(-128, 127) as i32
            }
        })
        .collect();
    let pw = PackedWeights::new(&w, n, k, &scales, &zps).expect("valid weights");
    let bias: Option<Vec<f32>> = if inp.chance(170) {
        let len = inp.len_around(n, 12);
        Some(inp.f32_vec(len, true))
    } else {
        None
    };
    let bias_ok = bias.as_ref().is_none_or(|b| b.len() == n);
    match mode {
        0 | 1 => {
            let a = inp.u8_vec(m * k);
            let za = inp.range_i64(0, 255) as i32;
            let pa = PackedA::from_u8(&a, m, k, za).expect("valid activations");
            let acc = r::acc(&a, m, k, &[za], &w, n, pw.zero_points());
            if mode == 0 {
                requantize::<u8>(&mut inp, &pa, &pw, &acc, bias.as_deref(), bias_ok);
            } else {
                requantize::<i8>(&mut inp, &pa, &pw, &acc, bias.as_deref(), bias_ok);
            }
        }
        2 => {
            let a = inp.u8_vec(m * k);
            let za = inp.range_i64(0, 255) as i32;
            let pa = PackedA::from_u8(&a, m, k, za).expect("valid activations");
            let acc = r::acc(&a, m, k, &[za], &w, n, pw.zero_points());
            // any activation scale >= 0 (not NaN), as long as every product fl(xs·ws[j]) is
            // finite (else an output with accumulator 0 would be NaN)
            let a_scale = if inp.chance(40) {
                inp.f32_any()
            } else {
                inp.valid_scale()
            };
            let relu = inp.bool();
            let products_ok =
                a_scale >= 0.0 && pw.scales().iter().all(|&ws| (a_scale * ws).is_finite());
            let stage = DequantF32::new(a_scale, &pw, bias.as_deref(), relu);
            if !expect_validity(&stage, bias_ok && products_ok, "DequantF32::new") {
                return;
            }
            let stage = stage.unwrap();
            let want: Vec<f32> = acc
                .iter()
                .enumerate()
                .map(|(idx, &v)| {
                    let j = idx % n;
                    let s = a_scale * pw.scales()[j];
                    r::dequant_f32(v, s, bias.as_ref().map_or(0.0, |b| b[j]), relu)
                })
                .collect();
            for &e in engines() {
                for &t in &THREADS {
                    let mut out = vec![0f32; m * n];
                    with_threads(t, || gemm(e, &pa, &pw, &stage, &mut out, t)).expect("gemm");
                    assert_same_f32(&out, &want, &format!("DequantF32 {} t{t}", e.name()));
                }
            }
        }
        _ => {
            // per-row activations: their zero points come from dynamic quantization, their
            // scales (the stage's) are drawn freely
            let x = inp.f32_vec(m * k, false);
            let (pa, qps) = PackedA::quantize_dynamic_per_row_on(Engine::Scalar, &x, m, k, 0, 255)
                .expect("finite activations");
            let mut rows = vec![0u8; m * pa.kp()];
            rows.copy_from_slice(pa.rows(0, m));
            let a: Vec<u8> = (0..m * k)
                .map(|idx| rows[(idx / k) * pa.kp() + idx % k])
                .collect();
            let za: Vec<i32> = qps.iter().map(|q| q.zero_point).collect();
            let acc = r::acc(
                &a,
                m,
                k,
                if m == 0 { &[0] } else { &za },
                &w,
                n,
                pw.zero_points(),
            );
            // one scale per row; any other count is an error (`check_rows`)
            let ns = inp.len_around(m, 12);
            let row_scales: Vec<f32> = (0..ns)
                .map(|_| {
                    if inp.chance(40) {
                        inp.f32_any()
                    } else {
                        inp.valid_scale()
                    }
                })
                .collect();
            let relu = inp.bool();
            let stage = DequantF32::per_row(&row_scales, &pw, bias.as_deref(), relu);
            // every row scale finite and > 0, every product fl(xs[i]·ws[j]) finite
            let products_ok = row_scales.iter().all(|&xs| {
                xs.is_finite() && xs > 0.0 && pw.scales().iter().all(|&ws| (xs * ws).is_finite())
            });
            let valid = bias_ok && ns == m && products_ok;
            let stage = match stage {
                Ok(s) => s,
                Err(e) => {
                    assert!(!valid, "DequantF32::per_row rejected valid input: {e:?}");
                    return;
                }
            };
            let want: Vec<f32> = if valid {
                acc.iter()
                    .enumerate()
                    .map(|(idx, &v)| {
                        let (i, j) = (idx / n, idx % n);
                        let s = row_scales[i] * pw.scales()[j];
                        r::dequant_f32(v, s, bias.as_ref().map_or(0.0, |b| b[j]), relu)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            for &e in engines() {
                for &t in &THREADS {
                    let mut out = vec![0f32; m * n];
                    let res = with_threads(t, || gemm(e, &pa, &pw, &stage, &mut out, t));
                    let what = format!("DequantF32::per_row {} t{t}", e.name());
                    if expect_validity(&res, valid, &what) {
                        assert_same_f32(&out, &want, &what);
                    }
                }
            }
        }
    }
}

fn requantize<T: QInt + PartialEq + std::fmt::Debug>(
    inp: &mut Input,
    pa: &PackedA,
    pw: &PackedWeights,
    acc: &[i64],
    bias: Option<&[f32]>,
    bias_ok: bool,
) {
    let (m, n) = (pa.m(), pw.n());
    let (dmin, dmax) = if T::DTYPE == ferroquant_kernels::QDtype::QInt8 {
        (-128, 127)
    } else {
        (0, 255)
    };
    let a_scale = inp.scale(24);
    let out_scale = inp.scale(24);
    let (qmin, qmax) = match inp.u8() % 4 {
        0 | 1 => (dmin, dmax),
        2 => {
            let lo = inp.range_i64(dmin as i64, dmax as i64 - 1) as i32;
            (lo, inp.range_i64(lo as i64 + 1, dmax as i64) as i32)
        }
        _ => (
            inp.i32_around(dmin, dmax, 128),
            inp.i32_around(dmin, dmax, 128),
        ),
    };
    let out_zp = inp.i32_around(dmin, dmax, 24);
    let relu = inp.bool();
    let valid = crate::scale_ok(a_scale)
        && crate::scale_ok(out_scale)
        && dmin <= qmin
        && qmin < qmax
        && qmax <= dmax
        && (dmin..=dmax).contains(&out_zp)
        && relu_zp_ok(relu, out_zp, qmax)
        && bias_ok;
    // qint32 output is not a requantization target
    assert!(
        Requantize::<i32>::new(a_scale, pw, bias, out_scale, out_zp, qmin, qmax, relu).is_err()
    );
    let stage = Requantize::<T>::new(a_scale, pw, bias, out_scale, out_zp, qmin, qmax, relu);
    if !expect_validity(&stage, valid, "Requantize::new") {
        return;
    }
    let stage = stage.unwrap();
    let want: Vec<i32> = acc
        .iter()
        .enumerate()
        .map(|(idx, &v)| {
            let j = idx % n;
            r::requant(
                v,
                a_scale,
                pw.scales()[j],
                bias.map(|b| b[j]),
                out_scale,
                out_zp,
                qmin,
                qmax,
                relu,
            )
        })
        .collect();
    for &e in engines() {
        for &t in &THREADS {
            let mut out = vec![T::default(); m * n];
            with_threads(t, || gemm(e, pa, pw, &stage, &mut out, t)).expect("gemm");
            let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
            assert_same_slice(
                &got,
                &want,
                &format!(
                    "Requantize<{:?}> {} t{t} xs {a_scale:e} os {out_scale:e} oz {out_zp} [{qmin}, {qmax}] relu {relu}",
                    T::DTYPE,
                    e.name()
                ),
            );
        }
    }
}
