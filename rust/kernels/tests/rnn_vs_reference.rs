//! The recurrent layer kernel: every engine and thread count equals the scalar engine bit for
//! bit, and the scalar engine equals a step-by-step reference built from the dynamic linear
//! (one call per projection per step) and torch's cell formulas.

use ferroquant_kernels::rnn::{
    rnn_layer, sigmoid, tanh, CellKind, Projection, RnnState, RnnWeights,
};
use ferroquant_kernels::{
    available_engines, linear_dynamic_with, DynamicOptions, Engine, PackedWeights,
};

mod common;
use common::Rng;

fn packed(r: &mut Rng, n: usize, k: usize, per_channel: bool) -> PackedWeights {
    let w: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
    let c = if per_channel { n } else { 1 };
    let scales: Vec<f32> = (0..c).map(|_| 0.002 + r.f32().abs() * 0.01).collect();
    PackedWeights::new(&w, n, k, &scales, &vec![0; c]).unwrap()
}

/// The layer one step at a time: the input projection of the step's rows alone only matches the
/// whole-sequence projection per row, so the reference uses per-row activations.
#[allow(clippy::too_many_arguments)]
fn reference(
    kind: CellKind,
    w: &RnnWeights,
    x: &[f32],
    batch_sizes: &[usize],
    reverse: bool,
    opts: DynamicOptions,
    h: &mut [f32],
    c: &mut [f32],
    hidden: usize,
) -> Vec<f32> {
    let (input, g) = (w.w_ih.k(), kind.gates());
    let mut offsets = vec![0];
    for &b in batch_sizes {
        offsets.push(offsets.last().unwrap() + b);
    }
    let mut out = vec![0f32; offsets.last().unwrap() * hidden];
    let order: Vec<usize> = if reverse {
        (0..batch_sizes.len()).rev().collect()
    } else {
        (0..batch_sizes.len()).collect()
    };
    for t in order {
        let (bs, r0) = (batch_sizes[t], offsets[t]);
        let mut ig = vec![0f32; bs * g * hidden];
        let mut hg = vec![0f32; bs * g * hidden];
        let xs = &x[r0 * input..(r0 + bs) * input];
        let (Projection::Int8(w_ih), Projection::Int8(w_hh)) = (w.w_ih, w.w_hh) else {
            panic!("the reference covers int8 projections")
        };
        linear_dynamic_with(Engine::Scalar, xs, bs, w_ih, w.b_ih, opts, &mut ig, 1).unwrap();
        let hs = h[..bs * hidden].to_vec();
        linear_dynamic_with(Engine::Scalar, &hs, bs, w_hh, w.b_hh, opts, &mut hg, 1).unwrap();
        for r in 0..bs {
            for j in 0..hidden {
                let gate = |q: usize| {
                    let at = r * g * hidden + q * hidden + j;
                    (ig[at], hg[at])
                };
                let at = r * hidden + j;
                h[at] = match kind {
                    CellKind::Lstm => {
                        let s = |q| {
                            let (a, b) = gate(q);
                            b + a
                        };
                        let cy = sigmoid(s(1)) * c[at] + sigmoid(s(0)) * tanh(s(2));
                        c[at] = cy;
                        sigmoid(s(3)) * tanh(cy)
                    }
                    CellKind::Gru => {
                        let (ir, hr) = gate(0);
                        let (iz, hz) = gate(1);
                        let (inn, hn) = gate(2);
                        let rg = sigmoid(hr + ir);
                        let z = sigmoid(hz + iz);
                        let n = tanh(inn + hn * rg);
                        (h[at] - n) * z + n
                    }
                    CellKind::RnnTanh => {
                        let (a, b) = gate(0);
                        tanh(b + a)
                    }
                    CellKind::RnnRelu => {
                        let (a, b) = gate(0);
                        (b + a).max(0.0)
                    }
                };
            }
        }
        out[r0 * hidden..(r0 + bs) * hidden].copy_from_slice(&h[..bs * hidden]);
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn rnn_layer_equals_reference_on_every_engine_and_thread_count() {
    let mut r = Rng(2024);
    let kinds = [
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::RnnTanh,
        CellKind::RnnRelu,
    ];
    let shapes: &[(usize, usize, &[usize])] = &[
        (1, 1, &[1]),
        (7, 16, &[3, 3, 2, 1]),
        (17, 15, &[4, 4, 4]),
        (33, 65, &[2, 1, 1, 1, 1]),
        (64, 17, &[5, 5, 3, 3, 1]),
    ];
    for (si, &(input, hidden, batch_sizes)) in shapes.iter().enumerate() {
        for (ki, &kind) in kinds.iter().enumerate() {
            let g = kind.gates();
            let per_channel = (si + ki) % 2 == 0;
            let w_ih = packed(&mut r, g * hidden, input, per_channel);
            let w_hh = packed(&mut r, g * hidden, hidden, !per_channel);
            let b_ih: Vec<f32> = (0..g * hidden).map(|_| r.f32()).collect();
            let b_hh: Vec<f32> = (0..g * hidden).map(|_| r.f32()).collect();
            let weights = RnnWeights {
                kind,
                w_ih: Projection::Int8(&w_ih),
                b_ih: Some(&b_ih),
                w_hh: Projection::Int8(&w_hh),
                b_hh: if ki == 2 { None } else { Some(&b_hh) },
            };
            let rows: usize = batch_sizes.iter().sum();
            let b = batch_sizes[0];
            let x: Vec<f32> = (0..rows * input).map(|_| r.f32() * 2.0).collect();
            let h0: Vec<f32> = (0..b * hidden).map(|_| r.f32()).collect();
            let c0: Vec<f32> = (0..b * hidden).map(|_| r.f32()).collect();
            let lstm = kind == CellKind::Lstm;
            for reverse in [false, true] {
                for reduce_range in [false, true] {
                    let opts = DynamicOptions {
                        reduce_range,
                        per_row: true,
                        relu: false,
                    };
                    let run = |e: Engine, t: usize, opts: DynamicOptions| {
                        let (mut h, mut c) = (h0.clone(), c0.clone());
                        let mut out = vec![0f32; rows * hidden];
                        let state = RnnState {
                            h: &mut h,
                            c: if lstm { Some(&mut c) } else { None },
                        };
                        rnn_layer(
                            e,
                            &weights,
                            &x,
                            batch_sizes,
                            reverse,
                            opts,
                            state,
                            &mut out,
                            t,
                        )
                        .unwrap();
                        (out, h, c)
                    };
                    let base = run(Engine::Scalar, 1, opts);
                    let (mut h, mut c) = (h0.clone(), c0.clone());
                    let want = reference(
                        kind,
                        &weights,
                        &x,
                        batch_sizes,
                        reverse,
                        opts,
                        &mut h,
                        &mut c,
                        hidden,
                    );
                    let what = format!("{kind:?} {input}x{hidden} {batch_sizes:?} rev={reverse}");
                    assert_eq!(bits(&base.0), bits(&want), "{what}: output vs reference");
                    assert_eq!(bits(&base.1), bits(&h), "{what}: h_n vs reference");
                    if lstm {
                        assert_eq!(bits(&base.2), bits(&c), "{what}: c_n vs reference");
                    }
                    for e in available_engines() {
                        for t in [1, 2] {
                            for o in [
                                opts,
                                DynamicOptions {
                                    per_row: false,
                                    ..opts
                                },
                            ] {
                                let got = run(e, t, o);
                                let ref_o = run(Engine::Scalar, 1, o);
                                assert_eq!(bits(&got.0), bits(&ref_o.0), "{what} {}", e.name());
                                assert_eq!(bits(&got.1), bits(&ref_o.1), "{what} {}", e.name());
                                assert_eq!(bits(&got.2), bits(&ref_o.2), "{what} {}", e.name());
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn rnn_layer_rejects_bad_arguments() {
    let mut r = Rng(7);
    let (w_ih, w_hh) = (packed(&mut r, 12, 5, false), packed(&mut r, 12, 3, false));
    let weights = RnnWeights {
        kind: CellKind::Lstm,
        w_ih: Projection::Int8(&w_ih),
        b_ih: None,
        w_hh: Projection::Int8(&w_hh),
        b_hh: None,
    };
    let opts = DynamicOptions::default();
    let x = vec![0.5f32; 3 * 5];
    let mut out = vec![0f32; 3 * 3];
    let mut run = |bs: &[usize], h: &mut [f32], c: Option<&mut [f32]>| {
        let state = RnnState { h, c };
        rnn_layer(
            Engine::Scalar,
            &weights,
            &x,
            bs,
            false,
            opts,
            state,
            &mut out,
            1,
        )
    };
    let (mut h, mut c) = (vec![0f32; 3], vec![0f32; 3]);
    assert!(run(&[1, 1, 1], &mut h, Some(&mut c)).is_ok());
    let err = run(&[1, 2], &mut h, Some(&mut c)).unwrap_err().to_string();
    assert!(err.contains("non-increasing"), "{err}");
    assert!(run(&[1, 1, 1], &mut h, None).is_err(), "an LSTM needs c");
    assert!(
        run(&[3], &mut h, Some(&mut c)).is_err(),
        "h0 is [1, 3], not [3, 3]"
    );
    let mut bad_c = vec![f32::NAN; 3];
    let err = run(&[1, 1, 1], &mut h, Some(&mut bad_c))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN"), "{err}");
    // a GRU's weights have 3 gate blocks: the LSTM's 4·3 rows do not fit
    let gru = RnnWeights {
        kind: CellKind::Gru,
        ..weights
    };
    assert!(gru
        .hidden_size()
        .unwrap_err()
        .to_string()
        .contains("3 gates"));
}
