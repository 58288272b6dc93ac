//! `recurrent`: the float-activation GEMM of wgemm.rs (fp16 and int8 weight-only weights) against
//! its specification (one FMA chain per output element), and the recurrent layer of rnn.rs
//! (LSTM / GRU / RNN, int8 or fp16 projections, `PackedSequence` batch sizes, either direction):
//! `Err` for invalid arguments, and the same bits on every engine and thread count.

use ferroquant_kernels::rnn::{rnn_layer, CellKind, Projection, RnnState, RnnWeights};
use ferroquant_kernels::wgemm::{f16_to_f32, linear_low, PackedLowWeights};
use ferroquant_kernels::{DynamicOptions, Engine, PackedWeights};

use crate::input::Input;
use crate::{assert_same_f32, engines, expect_validity, with_threads, THREADS};

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    if inp.bool() {
        low(&mut inp)
    } else {
        layer(&mut inp)
    }
}

fn low(inp: &mut Input) {
    let (m, k, n) = (inp.size(40), inp.size(80), inp.size(70));
    let x = inp.f32_vec(m * k, true);
    let has_bias = inp.bool();
    let bias = inp.f32_vec(if has_bias { n } else { 0 }, true);
    let f16 = inp.bool();
    let (packed, w, scales) = if f16 {
        let bits: Vec<u16> = (0..n * k).map(|_| inp.u16()).collect();
        let finite = bits.iter().all(|&b| b & 0x7c00 != 0x7c00);
        let r = PackedLowWeights::from_f16_bits(&bits, n, k);
        if !expect_validity(&r, n > 0 && k > 0 && finite, "from_f16_bits") {
            return;
        }
        let w: Vec<f32> = bits.iter().map(|&b| f16_to_f32(b)).collect();
        (r.unwrap(), w, vec![1.0; n])
    } else {
        let q = inp.i8_vec(n * k);
        let per_channel = inp.bool();
        let c = if per_channel { n } else { 1 };
        let s: Vec<f32> = (0..c).map(|_| inp.scale(24)).collect();
        let z: Vec<i32> = (0..c).map(|_| inp.i32_around(-128, 127, 24)).collect();
        let ok = n > 0
            && k > 0
            && s.iter().all(|v| v.is_finite() && *v > 0.0)
            && z.iter().all(|v| (-128..=127).contains(v));
        let r = PackedLowWeights::from_i8(&q, n, k, &s, &z);
        if !expect_validity(&r, ok, "from_i8") {
            return;
        }
        let at = |j: usize| if c == 1 { 0 } else { j };
        let w: Vec<f32> = (0..n * k)
            .map(|i| q[i] as f32 - z[at(i / k)] as f32)
            .collect();
        (r.unwrap(), w, (0..n).map(|j| s[at(j)]).collect())
    };
    // the specification
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc = x[i * k + kk].mul_add(w[j * k + kk], acc);
            }
            want[i * n + j] = acc.mul_add(scales[j], if has_bias { bias[j] } else { 0.0 });
        }
    }
    for &e in engines() {
        for t in THREADS {
            let mut out = vec![0f32; m * n];
            let b = if has_bias { Some(&bias[..]) } else { None };
            with_threads(t, || linear_low(e, &x, m, &packed, b, &mut out, t)).unwrap();
            assert_same_f32(
                &out,
                &want,
                &format!("linear_low {m}x{k}x{n} on {} x{t}", e.name()),
            );
        }
    }
}

fn layer(inp: &mut Input) {
    let kind = inp.pick(&[
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::RnnTanh,
        CellKind::RnnRelu,
    ]);
    let g = kind.gates();
    let (input, hidden) = (inp.size_nonzero(24), inp.size_nonzero(20));
    let steps = inp.size(6);
    let mut batch_sizes: Vec<usize> = Vec::new();
    let mut b = inp.size_nonzero(4);
    for _ in 0..steps {
        batch_sizes.push(b);
        if inp.chance(60) && b > 1 {
            b -= 1;
        }
    }
    if inp.chance(10) && !batch_sizes.is_empty() {
        batch_sizes[0] = 0; // invalid: an empty step
    }
    let rows: usize = batch_sizes.iter().sum();
    let b0 = batch_sizes.first().copied().unwrap_or(0);
    let specials = [inp.chance(20), inp.chance(20), inp.chance(20)];
    let x = inp.f32_vec(rows * input, specials[0]);
    let h0 = inp.f32_vec(b0 * hidden, specials[1]);
    let c0 = inp.f32_vec(b0 * hidden, specials[2]);
    let fp16 = inp.bool();
    let int8 = |inp: &mut Input, k: usize| {
        let q = inp.i8_vec(g * hidden * k);
        PackedWeights::new(&q, g * hidden, k, &[0.01], &[0]).unwrap()
    };
    let half = |inp: &mut Input, k: usize| {
        let bits: Vec<u16> = (0..g * hidden * k).map(|_| inp.u16() & 0xbbff).collect();
        PackedLowWeights::from_f16_bits(&bits, g * hidden, k).unwrap()
    };
    let (pi, ph, li, lh);
    let (w_ih, w_hh) = if fp16 {
        li = half(inp, input);
        lh = half(inp, hidden);
        (Projection::Low(&li), Projection::Low(&lh))
    } else {
        pi = int8(inp, input);
        ph = int8(inp, hidden);
        (Projection::Int8(&pi), Projection::Int8(&ph))
    };
    let b_ih = inp.f32_vec(g * hidden, false);
    let weights = RnnWeights {
        kind,
        w_ih,
        b_ih: Some(&b_ih),
        w_hh,
        b_hh: None,
    };
    let opts = DynamicOptions {
        reduce_range: inp.bool(),
        per_row: inp.bool(),
        relu: false,
    };
    let reverse = inp.bool();
    let lstm = kind == CellKind::Lstm;
    let run = |e: Engine, t: usize| {
        let (mut h, mut c, mut out) = (h0.clone(), c0.clone(), vec![0f32; rows * hidden]);
        let state = RnnState {
            h: &mut h,
            c: if lstm { Some(&mut c) } else { None },
        };
        let r = with_threads(t, || {
            rnn_layer(
                e,
                &weights,
                &x,
                &batch_sizes,
                reverse,
                opts,
                state,
                &mut out,
                t,
            )
        });
        r.map(|_| (out, h, c))
    };
    let base = run(Engine::Scalar, 1);
    let well_formed = batch_sizes.iter().all(|&b| b > 0);
    if !well_formed {
        assert!(base.is_err(), "an empty step must be rejected");
        return;
    }
    for &e in engines() {
        for t in THREADS {
            let got = run(e, t);
            match (&got, &base) {
                (Ok(a), Ok(b)) => {
                    let what = format!(
                        "{kind:?} {input}x{hidden} {batch_sizes:?} on {} x{t}",
                        e.name()
                    );
                    assert_same_f32(&a.0, &b.0, &what);
                    assert_same_f32(&a.1, &b.1, &what);
                    assert_same_f32(&a.2, &b.2, &what);
                }
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "{kind:?}: engine {} x{t} and scalar disagree on validity",
                    e.name()
                ),
            }
        }
    }
}
