//! Float activations × fp16 / int8 weight-only weights: every engine and thread count equals the
//! specification (one sequential FMA chain per output element) bit for bit.

use ferroquant_kernels::wgemm::{f16_to_f32, linear_low, PackedLowWeights};
use ferroquant_kernels::{available_engines, Engine};

mod common;
use common::Rng;

fn sizes() -> &'static [usize] {
    if cfg!(target_arch = "aarch64") {
        &[1, 3, 15, 16, 17, 33, 65]
    } else {
        &[1, 3, 7, 15, 16, 17, 63, 64, 65, 129]
    }
}

/// The specification, written as plainly as possible.
fn spec(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, s: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc = x[i * k + kk].mul_add(w[j * k + kk], acc);
            }
            out[i * n + j] = acc.mul_add(s[j], b[j]);
        }
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fp16_and_int8_weight_only_equal_the_spec_on_every_engine() {
    // small problems too take the parallel schedules (panel groups, row bands) on 2 threads
    ferroquant_kernels::set_parallel_min_macs(0);
    let mut r = Rng(77);
    for &(m, k, n) in &[
        (1usize, 5usize, 3usize),
        (2, 64, 16),
        (3, 33, 65),
        (5, 100, 70),
        (1, 256, 129),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| r.f32() * 3.0).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        // fp16: random finite halves (exponents up to 2^3)
        let hb: Vec<u16> = (0..n * k)
            .map(|_| ((r.next() as u16) & 0x83ff) | (((r.next() % 19) as u16) << 10))
            .collect();
        let wf: Vec<f32> = hb.iter().map(|&h| f16_to_f32(h)).collect();
        let p16 = PackedLowWeights::from_f16_bits(&hb, n, k).unwrap();
        assert_eq!(p16.unpack_f16().unwrap(), hb);
        let want16 = spec(&x, m, k, &wf, n, &vec![1.0; n], &bias);
        // int8 per channel with zero points
        let q: Vec<i8> = (0..n * k).map(|_| r.next() as u8 as i8).collect();
        let scales: Vec<f32> = (0..n).map(|_| 0.001 + r.f32().abs() * 0.01).collect();
        let zps: Vec<i32> = (0..n).map(|j| (j as i32 % 7) - 3).collect();
        let p8 = PackedLowWeights::from_i8(&q, n, k, &scales, &zps).unwrap();
        assert_eq!(p8.unpack_i8().unwrap(), q);
        let w8: Vec<f32> = (0..n * k)
            .map(|i| q[i] as f32 - zps[i / k] as f32)
            .collect();
        let want8 = spec(&x, m, k, &w8, n, &scales, &bias);
        for e in available_engines() {
            for t in [1, 2] {
                let mut out = vec![0f32; m * n];
                linear_low(e, &x, m, &p16, Some(&bias), &mut out, t).unwrap();
                assert_eq!(
                    bits(&out),
                    bits(&want16),
                    "fp16 {m}x{k}x{n} {} {t}",
                    e.name()
                );
                linear_low(e, &x, m, &p8, Some(&bias), &mut out, t).unwrap();
                assert_eq!(
                    bits(&out),
                    bits(&want8),
                    "int8 {m}x{k}x{n} {} {t}",
                    e.name()
                );
            }
        }
    }
    // edge sizes, no bias, per-tensor int8
    for &k in sizes() {
        for &n in sizes() {
            let m = 1 + (k + n) % 3;
            let x: Vec<f32> = (0..m * k).map(|_| r.f32()).collect();
            let q: Vec<i8> = (0..n * k).map(|_| r.next() as u8 as i8).collect();
            let p8 = PackedLowWeights::from_i8(&q, n, k, &[0.02], &[0]).unwrap();
            let w8: Vec<f32> = q.iter().map(|&v| v as f32).collect();
            let want = spec(&x, m, k, &w8, n, &vec![0.02; n], &vec![0.0; n]);
            for e in available_engines() {
                let mut out = vec![0f32; m * n];
                linear_low(e, &x, m, &p8, None, &mut out, 2).unwrap();
                assert_eq!(bits(&out), bits(&want), "int8 {m}x{k}x{n} {}", e.name());
            }
        }
    }
    let _ = Engine::Scalar;
}

#[test]
fn bad_weights_are_rejected() {
    assert!(
        PackedLowWeights::from_f16_bits(&[0x7c00], 1, 1).is_err(),
        "Inf"
    );
    assert!(PackedLowWeights::from_f16_bits(&[], 0, 1).is_err(), "empty");
    assert!(PackedLowWeights::from_i8(&[1, 2], 2, 1, &[0.1, 0.1, 0.1], &[0, 0, 0]).is_err());
    assert!(PackedLowWeights::from_i8(&[1], 1, 1, &[0.0], &[0]).is_err());
    assert!(PackedLowWeights::from_i8(&[1], 1, 1, &[0.1], &[200]).is_err());
    let w = PackedLowWeights::from_i8(&[1, 2], 1, 2, &[0.1], &[0]).unwrap();
    let mut out = vec![0f32; 1];
    assert!(
        linear_low(Engine::Scalar, &[1.0], 1, &w, None, &mut out, 1).is_err(),
        "x too short"
    );
}
