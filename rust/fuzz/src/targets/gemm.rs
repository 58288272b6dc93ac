//! `gemm`: exact accumulators (`gemm` + `StoreI32`), `linear_static` (u8 and i8 out) and
//! `linear_dynamic_with` (per tensor / per row, reduce_range, ReLU) on every engine and on 1 and 2
//! threads, against the naive reference. Calls on 2 threads lower the parallel threshold to 0
//! ([`crate::with_threads`]), so the column-split and row-split schedules run on small problems.

use ferroquant_kernels::gemm::gemm;
use ferroquant_kernels::qparams::choose_qparams_dynamic;
use ferroquant_kernels::quantize::QInt;
use ferroquant_kernels::requant::StoreI32;
use ferroquant_kernels::{
    linear_dynamic, linear_dynamic_with, linear_static, DynamicOptions, Engine, PackedA,
    PackedWeights,
};

use crate::input::Input;
use crate::reference as r;
use crate::targets::pack::{weight_qparams, weights_valid};
use crate::{
    assert_same_f32, assert_same_slice, engines, expect_validity, relu_zp_ok, scale_ok,
    with_threads, THREADS,
};

/// Multiply-accumulates per call (keeps an execution around a millisecond under ASan).
const BUDGET: usize = 1 << 16;

/// Output widths past the tile edges of the widest kernels: the AVX-512 kernel takes 3 panels
/// (48 columns) at a time and its GEMV kernel 8 (128 columns), so the column-split parallel
/// schedule (at least 2 panel groups per thread) needs n > 144, and n > 384 for the GEMV.
const WIDE_N: [usize; 8] = [144, 145, 161, 192, 193, 384, 385, 449];

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    if mode >= 252 {
        return k_at_int32_limit(&mut inp);
    }
    let n = if inp.chance(32) {
        inp.pick(&WIDE_N)
    } else {
        inp.size_nonzero(129)
    };
    let k = inp.size_nonzero(129);
    let mut m = inp.size(33);
    while m > 1 && m * n * k > BUDGET {
        m /= 2;
    }
    let w = inp.i8_vec(n * k);
    let (scales, zps) = weight_qparams(&mut inp, n, 0);
    assert!(weights_valid(w.len(), n, k, &scales, &zps));
    let pw = PackedWeights::new(&w, n, k, &scales, &zps).expect("valid weights");
    match mode % 3 {
        0 => accumulators(&mut inp, &pw, &w, m),
        1 => static_linear(&mut inp, &pw, &w, m),
        _ => dynamic_linear(&mut inp, &pw, &w, m),
    }
}

fn accumulators(inp: &mut Input, pw: &PackedWeights, w: &[i8], m: usize) {
    let (n, k) = (pw.n(), pw.k());
    let a = inp.u8_vec(m * k);
    let za = inp.range_i64(0, 255) as i32;
    let pa = PackedA::from_u8(&a, m, k, za).expect("valid activations");
    let want: Vec<i32> = r::acc(&a, m, k, &[za], w, n, pw.zero_points())
        .into_iter()
        .map(|v| i32::try_from(v).expect("accumulator fits i32"))
        .collect();
    for &e in engines() {
        for &t in &THREADS {
            let mut out = vec![0i32; m * n];
            with_threads(t, || gemm(e, &pa, pw, &StoreI32, &mut out, t)).expect("gemm");
            assert_same_slice(
                &out,
                &want,
                &format!("acc {} t{t} m{m} k{k} n{n}", e.name()),
            );
        }
    }
    // a wrong output length is an error, not a write out of bounds
    if m * n > 0 {
        let mut short = vec![0i32; m * n - 1];
        assert!(gemm(Engine::Scalar, &pa, pw, &StoreI32, &mut short, 1).is_err());
    }
}

fn static_linear(inp: &mut Input, pw: &PackedWeights, w: &[i8], m: usize) {
    let bad: u8 = if inp.chance(64) { 24 } else { 0 };
    let (n, k) = (pw.n(), pw.k());
    let a_len = inp.len_around(m * k, bad);
    let a = inp.u8_vec(a_len);
    let a_zp = inp.i32_around(0, 255, bad);
    let a_scale = inp.scale(bad);
    let bias: Option<Vec<f32>> = if inp.bool() {
        let len = inp.len_around(n, bad);
        Some(inp.f32_vec_sp(len, 30))
    } else {
        None
    };
    let out_scale = inp.scale(bad);
    let relu = inp.bool();
    let i8_out = inp.bool();
    let (dmin, dmax) = if i8_out { (-128, 127) } else { (0, 255) };
    let (qmin, qmax) = if inp.chance(200) {
        (dmin, dmax)
    } else {
        let lo = inp.i32_around(dmin, dmax - 1, bad);
        (
            lo,
            inp.i32_around(lo.saturating_add(1).min(dmax), dmax, bad),
        )
    };
    let out_zp = inp.i32_around(dmin, dmax, bad);
    let out_len = inp.len_around(m * n, bad);
    let valid = a.len() == m * k
        && (0..=255).contains(&a_zp)
        && scale_ok(a_scale)
        && scale_ok(out_scale)
        && dmin <= qmin
        && qmin < qmax
        && qmax <= dmax
        && (dmin..=dmax).contains(&out_zp)
        && relu_zp_ok(relu, out_zp, qmax)
        && bias.as_ref().is_none_or(|b| b.len() == n)
        && out_len == m * n;
    let want: Option<Vec<i32>> = valid.then(|| {
        let acc = r::acc(&a, m, k, &[a_zp], w, n, pw.zero_points());
        acc.iter()
            .enumerate()
            .map(|(idx, &v)| {
                let j = idx % n;
                r::requant(
                    v,
                    a_scale,
                    pw.scales()[j],
                    bias.as_ref().map(|b| b[j]),
                    out_scale,
                    out_zp,
                    qmin,
                    qmax,
                    relu,
                )
            })
            .collect()
    });
    let b = bias.as_deref();
    if i8_out {
        run_static::<i8>(
            &a, m, a_scale, a_zp, pw, b, out_scale, out_zp, qmin, qmax, relu, out_len, want,
        );
    } else {
        run_static::<u8>(
            &a, m, a_scale, a_zp, pw, b, out_scale, out_zp, qmin, qmax, relu, out_len, want,
        );
    }
}

fn run_static<T: QInt + PartialEq + std::fmt::Debug>(
    a: &[u8],
    m: usize,
    a_scale: f32,
    a_zp: i32,
    pw: &PackedWeights,
    bias: Option<&[f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    out_len: usize,
    want: Option<Vec<i32>>,
) {
    for &e in engines() {
        for &t in &THREADS {
            let mut out = vec![T::default(); out_len];
            let res = with_threads(t, || {
                linear_static::<T>(
                    e, a, m, a_scale, a_zp, pw, bias, out_scale, out_zp, qmin, qmax, relu,
                    &mut out, t,
                )
            });
            let what = format!("linear_static<{:?}> {} t{t}", T::DTYPE, e.name());
            if expect_validity(&res, want.is_some(), &what) {
                let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
                assert_same_slice(&got, want.as_ref().unwrap(), &what);
            }
        }
    }
}

/// Whether every output scale `fl(xs·ws[j])` of a dynamic linear is finite (else
/// `DequantF32` rejects the call): the activation scales come from FBGEMM's rule, per tensor
/// or per row (positive, so the largest product decides).
fn products_finite(x: &[f32], m: usize, k: usize, qmax: i32, ws: &[f32], per_row: bool) -> bool {
    if x.len() != m * k || !x.iter().all(|v| v.is_finite()) {
        return true; // rejected earlier anyway
    }
    let wmax = ws.iter().fold(0f32, |a, &b| a.max(b));
    let scale = |v: &[f32]| {
        let (lo, hi) = r::min_max(v).unwrap();
        choose_qparams_dynamic(lo, hi, 0, qmax).unwrap().scale
    };
    let xmax = if per_row {
        (0..m)
            .map(|i| scale(&x[i * k..(i + 1) * k]))
            .fold(0f32, f32::max)
    } else {
        scale(x)
    };
    (xmax * wmax).is_finite()
}

fn dynamic_linear(inp: &mut Input, pw: &PackedWeights, w: &[i8], m: usize) {
    let bad: u8 = if inp.chance(64) { 24 } else { 0 };
    let (n, k) = (pw.n(), pw.k());
    let x_len = inp.len_around(m * k, bad);
    let x = inp.f32_vec_sp(x_len, bad);
    let bias: Option<Vec<f32>> = if inp.bool() {
        let len = inp.len_around(n, bad);
        Some(inp.f32_vec_sp(len, 30))
    } else {
        None
    };
    let opts = DynamicOptions {
        reduce_range: inp.bool(),
        per_row: inp.bool(),
        relu: inp.bool(),
    };
    let out_len = inp.len_around(m * n, bad);
    let qmax = if opts.reduce_range { 127 } else { 255 };
    let valid = x.len() == m * k
        && x.iter().all(|v| v.is_finite())
        && bias.as_ref().is_none_or(|b| b.len() == n)
        && out_len == m * n
        && products_finite(&x, m, k, qmax, pw.scales(), opts.per_row);
    // reference: qparams (FBGEMM's rule on a naive min/max), D3 quantization (docs/numerics.md), exact
    // accumulators with the per-tensor or per-row zero points, then fma(acc, fl(xs·ws), b)
    let want = valid.then(|| {
        let qps: Vec<_> = if opts.per_row {
            (0..m)
                .map(|i| {
                    let (lo, hi) = r::min_max(&x[i * k..(i + 1) * k]).unwrap();
                    choose_qparams_dynamic(lo, hi, 0, qmax).unwrap()
                })
                .collect()
        } else {
            let (lo, hi) = r::min_max(&x).unwrap();
            vec![choose_qparams_dynamic(lo, hi, 0, qmax).unwrap()]
        };
        let q = |i: usize| qps[if opts.per_row { i } else { 0 }];
        let a: Vec<u8> = (0..m * k)
            .map(|idx| {
                let qp = q(idx / k.max(1));
                r::quantize_one(x[idx], qp.scale, qp.zero_point, 0, 255) as u8
            })
            .collect();
        let za: Vec<i32> = (0..m).map(|i| q(i).zero_point).collect();
        let acc = r::acc(
            &a,
            m,
            k,
            if m == 0 { &[0] } else { &za },
            w,
            n,
            pw.zero_points(),
        );
        let out: Vec<f32> = acc
            .iter()
            .enumerate()
            .map(|(idx, &v)| {
                let (i, j) = (idx / n, idx % n);
                let s = q(i).scale * pw.scales()[j];
                let b = bias.as_ref().map_or(0.0, |b| b[j]);
                r::dequant_f32(v, s, b, opts.relu)
            })
            .collect();
        (qps, out)
    });
    for &e in engines() {
        for &t in &THREADS {
            let mut out = vec![0f32; out_len];
            let res = with_threads(t, || {
                linear_dynamic_with(e, &x, m, pw, bias.as_deref(), opts, &mut out, t)
            });
            let what = format!("linear_dynamic_with {:?} {} t{t}", opts, e.name());
            if expect_validity(&res, want.is_some(), &what) {
                let (qps, ref_out) = want.as_ref().unwrap();
                assert_eq!(&res.unwrap(), qps, "{what}: qparams");
                assert_same_f32(&out, ref_out, &what);
            }
            if !opts.per_row && t == 1 {
                // the per-tensor entry point is the same computation
                let mut out2 = vec![0f32; out_len];
                let res2 = linear_dynamic(
                    e,
                    &x,
                    m,
                    pw,
                    bias.as_deref(),
                    opts.reduce_range,
                    opts.relu,
                    &mut out2,
                    t,
                );
                assert_eq!(res2.is_ok(), want.is_some(), "linear_dynamic");
                if let Some((_, ref_out)) = &want {
                    assert_same_f32(&out2, ref_out, "linear_dynamic");
                }
            }
        }
    }
}

/// K around the largest the kernels accept (`MAX_COLUMN_ABS_SUM`): weights whose column sums of
/// `|w - zw|` exceed it must be rejected (`TooLarge`), and below it the extreme activations
/// (`|a - za| = 255` everywhere) give exact accumulators on every engine.
fn k_at_int32_limit(inp: &mut Input) {
    let limit = ferroquant_kernels::packed::MAX_COLUMN_ABS_SUM as usize;
    let (v, zw) = inp.pick(&[
        (-128i8, 127i32),
        (127, -128),
        (-128, 0),
        (127, 0),
        (-100, 27),
    ]);
    let d = (v as i32 - zw).unsigned_abs() as usize;
    let k = (limit / d).saturating_add_signed(inp.range_i64(-2, 2) as isize);
    let n = 1 + inp.below(2);
    let m = 1 + inp.below(2);
    let w = vec![v; n * k];
    let res = PackedWeights::new(&w, n, k, &[0.01], &[zw]);
    if !expect_validity(
        &res,
        k * d <= limit,
        &format!("PackedWeights k={k} |w-zw|={d}"),
    ) {
        return;
    }
    let pw = res.unwrap();
    // the sign of (a - za) that makes every product extreme
    let (a_val, za) = if inp.bool() { (0u8, 255) } else { (255u8, 0) };
    let a = vec![a_val; m * k];
    let pa = PackedA::from_u8(&a, m, k, za).expect("valid activations");
    let want: Vec<i32> = r::acc(&a, m, k, &[za], &w, n, pw.zero_points())
        .into_iter()
        .map(|v| i32::try_from(v).expect("accepted weights give accumulators that fit i32"))
        .collect();
    for &e in engines() {
        for &t in &THREADS {
            let mut out = vec![0i32; m * n];
            with_threads(t, || gemm(e, &pa, &pw, &StoreI32, &mut out, t)).expect("gemm");
            assert_same_slice(
                &out,
                &want,
                &format!("acc at the K limit {} t{t} k{k}", e.name()),
            );
        }
    }
}
