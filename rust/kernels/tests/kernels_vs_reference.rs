//! Every engine this CPU has must equal the naive reference bit for bit, on any thread count.

// `is_multiple_of` needs Rust 1.87; these tests also build for aarch64 with rustc 1.85.
#![allow(clippy::manual_is_multiple_of)]

use ferroquant_kernels::gemm::{gemm, reference::reference_acc};
use ferroquant_kernels::requant::{DequantF32, Requantize, StoreI32};
use ferroquant_kernels::{available_engines, linear_dynamic, Engine, PackedA, PackedWeights};
use proptest::prelude::*;

mod common;
use common::Rng;

/// Sizes exercised everywhere; QEMU runs (aarch64 tests on x86) use the short list.
fn sizes() -> &'static [usize] {
    if cfg!(target_arch = "aarch64") {
        &[1, 3, 4, 15, 16, 17, 33, 65]
    } else {
        &[1, 3, 4, 7, 15, 16, 17, 31, 63, 64, 65, 127, 129]
    }
}

fn assert_same<T: PartialEq + std::fmt::Debug>(
    got: &[T],
    want: &[T],
    e: Engine,
    threads: usize,
    what: &str,
) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: engine {} with {threads} threads differs at {i}: {:?} vs {:?}",
            e.name(),
            got[i],
            want[i]
        );
    }
}

fn case(m: usize, k: usize, n: usize, za: i32, per_channel: bool, w_zp: bool, seed: u64) {
    case_range(m, k, n, za, per_channel, w_zp, seed, 255);
}

/// [`case`] with activations in `0..=amax` (at most 127 selects AVX2's `vpmaddubsw` kernel).
#[allow(clippy::too_many_arguments)]
fn case_range(
    m: usize,
    k: usize,
    n: usize,
    za: i32,
    per_channel: bool,
    w_zp: bool,
    seed: u64,
    amax: u8,
) {
    let mut r = Rng(seed | 1);
    let a: Vec<u8> = (0..m * k).map(|_| r.u8_upto(amax)).collect();
    let w: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
    let zw: Vec<i32> = if per_channel {
        (0..n)
            .map(|_| if w_zp { r.i8() as i32 } else { 0 })
            .collect()
    } else {
        vec![if w_zp { -3 } else { 0 }; n]
    };
    let scales: Vec<f32> = if per_channel {
        (0..n).map(|_| 0.001 + r.f32().abs() * 0.01).collect()
    } else {
        vec![0.004]
    };
    let zps: Vec<i32> = if per_channel { zw.clone() } else { vec![zw[0]] };
    let pw = PackedWeights::new(&w, n, k, &scales, &zps).unwrap();
    let pa = PackedA::from_u8(&a, m, k, za).unwrap();
    let expect = reference_acc(&a, m, k, za, &w, n, &zw);
    let bias: Vec<f32> = (0..n).map(|_| r.f32() * 3.0).collect();
    let mut base_u8: Option<Vec<u8>> = None;
    let mut base_f32: Option<Vec<u32>> = None;
    for e in available_engines() {
        for threads in [1, 2] {
            let mut acc = vec![0i32; m * n];
            gemm(e, &pa, &pw, &StoreI32, &mut acc, threads).unwrap();
            let acc64: Vec<i64> = acc.iter().map(|&v| v as i64).collect();
            assert_same(
                &acc64,
                &expect,
                e,
                threads,
                &format!("accumulators m={m} k={k} n={n} za={za}"),
            );
            let stage =
                Requantize::<u8>::new(0.02, &pw, Some(&bias), 0.37, 77, 0, 255, seed % 5 == 0)
                    .unwrap();
            let mut q = vec![0u8; m * n];
            gemm(e, &pa, &pw, &stage, &mut q, threads).unwrap();
            match &base_u8 {
                None => base_u8 = Some(q),
                Some(b) => assert_same(&q, b, e, threads, "requantize"),
            }
            let stage = DequantF32::new(0.02, &pw, Some(&bias), false).unwrap();
            let mut f = vec![0f32; m * n];
            gemm(e, &pa, &pw, &stage, &mut f, threads).unwrap();
            let bits: Vec<u32> = f.iter().map(|v| v.to_bits()).collect();
            match &base_f32 {
                None => base_f32 = Some(bits),
                Some(b) => assert_same(&bits, b, e, threads, "dequantize"),
            }
        }
    }
}

#[test]
fn engines_order_puts_scalar_last() {
    let v = available_engines();
    assert_eq!(*v.last().unwrap(), Engine::Scalar);
    let names: Vec<&str> = v.iter().map(|e| e.name()).collect();
    eprintln!("engines: {names:?}");
    // scripts/test-aarch64.sh sets this so a QEMU CPU model that hides a path fails loudly.
    if let Ok(expect) = std::env::var("FERROQUANT_EXPECT_ENGINES") {
        assert_eq!(
            names.join(","),
            expect,
            "detected engines differ from the expected set"
        );
    }
}

#[test]
fn edge_shapes_all_engines() {
    let s = sizes();
    let mut seed = 1u64;
    for &m in &[1usize, 2, 3, 5, 8, 9, 17] {
        for &k in s {
            for &n in &[1usize, 15, 16, 17, 33] {
                seed += 7;
                case(
                    m,
                    k,
                    n,
                    [0, 128, 255, 3][(seed % 4) as usize],
                    seed % 2 == 0,
                    seed % 3 == 0,
                    seed,
                );
            }
        }
    }
    for &n in s {
        seed += 7;
        case(4, 37, n, 128, true, true, seed);
    }
}

#[test]
fn edge_shapes_7bit_activations_all_engines() {
    // activations in 0..=127 (torch's reduced range): AVX2 runs its vpmaddubsw kernel
    let s = sizes();
    let mut seed = 5u64;
    for &m in &[1usize, 2, 5, 6, 7, 13] {
        for &k in s {
            for &n in &[1usize, 16, 17, 33] {
                seed += 11;
                let za = [0, 64, 127, 3][(seed % 4) as usize];
                case_range(m, k, n, za, seed % 2 == 0, seed % 3 == 0, seed, 127);
            }
        }
    }
    // one value of 128 anywhere sends the whole GEMM to the exact i16 kernel
    case_range(7, 33, 17, 5, true, true, 99, 128);
}

#[test]
fn larger_shapes_split_across_threads() {
    // Big enough for the parallel schedules: columns split (many panels), rows split (one
    // panel group), and a two-row GEMV-shaped call split over columns.
    for &(m, k, n) in &[
        (300usize, 300usize, 200usize),
        (1024, 512, 16),
        (2, 4096, 1200),
    ] {
        assert!(
            ferroquant_kernels::threads_for(m * n * k, 2) == 2,
            "{m}x{k}x{n} must run on 2 threads"
        );
        case(m, k, n, 17, true, true, (m * 31 + n) as u64);
        case_range(m, k, n, 17, true, true, (m * 37 + n) as u64, 127);
        // symmetric weights: u8 outputs requantized inside the tile kernels where they can
        case(m, k, n, 17, true, false, (m * 41 + n) as u64);
    }
}

#[test]
fn worst_case_no_saturation_k4096() {
    let (m, k, n) = (3, 4096, 17);
    let a = vec![255u8; m * k];
    let w = vec![-128i8; n * k];
    let pw = PackedWeights::new(&w, n, k, &[1.0], &[0]).unwrap();
    let pa = PackedA::from_u8(&a, m, k, 0).unwrap();
    for e in available_engines() {
        let mut acc = vec![0i32; m * n];
        gemm(e, &pa, &pw, &StoreI32, &mut acc, 1).unwrap();
        assert!(acc.iter().all(|&v| v == 255 * -128 * 4096), "{}", e.name());
    }
    let w = vec![127i8; n * k];
    let pw = PackedWeights::new(&w, n, k, &[1.0], &[0]).unwrap();
    for e in available_engines() {
        let mut acc = vec![0i32; m * n];
        gemm(e, &pa, &pw, &StoreI32, &mut acc, 1).unwrap();
        assert!(acc.iter().all(|&v| v == 255 * 127 * 4096), "{}", e.name());
    }
}

#[test]
fn worst_case_7bit_pairs_stay_exact() {
    // 127 · ±128 per product, two per i16 pair: ±32512, the largest sums vpmaddubsw sees
    let (m, k, n) = (7, 4096, 17);
    let pa = PackedA::from_u8(&vec![127u8; m * k], m, k, 0).unwrap();
    assert!(pa.fits_7bit());
    for wv in [-128i8, 127] {
        let pw = PackedWeights::new(&vec![wv; n * k], n, k, &[1.0], &[0]).unwrap();
        for e in available_engines() {
            let mut acc = vec![0i32; m * n];
            gemm(e, &pa, &pw, &StoreI32, &mut acc, 1).unwrap();
            assert!(
                acc.iter().all(|&v| v == 127 * wv as i32 * 4096),
                "{}",
                e.name()
            );
        }
    }
}

#[test]
fn zero_rows_give_empty_output_and_bad_shapes_error() {
    let pw = PackedWeights::new(&[1, 2, 3, 4], 2, 2, &[1.0], &[0]).unwrap();
    let mut out: Vec<f32> = vec![];
    linear_dynamic(Engine::Scalar, &[], 0, &pw, None, false, false, &mut out, 1).unwrap();
    let mut out = vec![0f32; 2];
    assert!(linear_dynamic(
        Engine::Scalar,
        &[1.0; 3],
        1,
        &pw,
        None,
        false,
        false,
        &mut out,
        1
    )
    .is_err());
    assert!(linear_dynamic(
        Engine::Scalar,
        &[f32::NAN, 1.0],
        1,
        &pw,
        None,
        false,
        false,
        &mut out,
        1
    )
    .is_err());
    assert!(linear_dynamic(
        Engine::Scalar,
        &[1.0, 1.0],
        1,
        &pw,
        Some(&[1.0]),
        false,
        false,
        &mut out,
        1
    )
    .is_err());
}

#[test]
fn dynamic_linear_matches_float_math() {
    let (m, k, n) = (5, 33, 19);
    let mut r = Rng(42);
    let x: Vec<f32> = (0..m * k).map(|_| r.f32()).collect();
    let w: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
    let pw = PackedWeights::new(&w, n, k, &[0.01], &[0]).unwrap();
    let mut out = vec![0f32; m * n];
    let qp = linear_dynamic(Engine::Scalar, &x, m, &pw, None, false, false, &mut out, 1).unwrap();
    for i in 0..m {
        for j in 0..n {
            let exact: f32 = (0..k)
                .map(|kk| x[i * k + kk] * w[j * k + kk] as f32 * 0.01)
                .sum();
            assert!(
                (exact - out[i * n + j]).abs() < qp.scale * 0.01 * 128.0 * k as f32 * 0.5 + 1e-3
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(target_arch = "aarch64") { 16 } else { 64 }))]
    #[test]
    fn random_shapes_all_engines(m in 1usize..40, k in 1usize..200, n in 1usize..70,
                                 za in 0i32..=255, per_channel: bool, w_zp: bool, seed: u64,
                                 seven_bit: bool) {
        case_range(m, k, n, za, per_channel, w_zp, seed, if seven_bit { 127 } else { 255 });
    }
}

#[test]
fn dynamic_quantization_is_identical_on_every_engine() {
    let mut r = Rng(77);
    for &(m, k) in &[(1usize, 1usize), (3, 17), (5, 64), (2, 1000)] {
        let mut x: Vec<f32> = (0..m * k).map(|_| r.f32() * 7.0).collect();
        // exact ties of the chosen scale are the interesting inputs: a few multiples of 0.5
        for (i, v) in x.iter_mut().enumerate().step_by(5) {
            *v = (i % 9) as f32 * 0.5 - 2.0;
        }
        let (base, qp0) = PackedA::quantize_dynamic_on(Engine::Scalar, &x, m, k, 0, 255).unwrap();
        for e in available_engines() {
            for qmax in [127, 255] {
                let (a, qp) = PackedA::quantize_dynamic_on(e, &x, m, k, 0, qmax).unwrap();
                let (b, _) =
                    PackedA::quantize_dynamic_on(Engine::Scalar, &x, m, k, 0, qmax).unwrap();
                assert_eq!(a.rows(0, m), b.rows(0, m), "{}", e.name());
                assert_eq!(a.row_sums(), b.row_sums());
                if qmax == 255 {
                    assert_eq!(qp, qp0);
                    assert_eq!(a.rows(0, m), base.rows(0, m));
                }
            }
        }
    }
}

#[test]
fn per_row_dynamic_quantization_all_engines() {
    use ferroquant_kernels::{linear_dynamic_with, DynamicOptions};
    let mut r = Rng(99);
    for &(m, k, n) in &[(1usize, 5usize, 3usize), (7, 33, 17), (37, 100, 40)] {
        // rows of very different magnitudes: where per-row qparams help
        let x: Vec<f32> = (0..m * k)
            .map(|i| r.f32() * (1.0 + (i / k) as f32 * 10.0))
            .collect();
        let w: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
        let scales: Vec<f32> = (0..n).map(|_| 0.001 + r.f32().abs() * 0.01).collect();
        let zps: Vec<i32> = (0..n).map(|j| (j as i32 % 5) - 2).collect();
        let pw = PackedWeights::new(&w, n, k, &scales, &zps).unwrap();
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let opts = DynamicOptions {
            per_row: true,
            ..Default::default()
        };
        let mut base = vec![0f32; m * n];
        let qps = linear_dynamic_with(Engine::Scalar, &x, m, &pw, Some(&bias), opts, &mut base, 1)
            .unwrap();
        assert_eq!(qps.len(), m);
        for e in available_engines() {
            for t in [1, 2] {
                let mut out = vec![0f32; m * n];
                linear_dynamic_with(e, &x, m, &pw, Some(&bias), opts, &mut out, t).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_same(&bits(&out), &bits(&base), e, t, "per-row dynamic");
            }
        }
        // against exact float math: per-row error is no larger than per-tensor error
        let exact: Vec<f64> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..k)
                    .map(|kk| {
                        x[i * k + kk] as f64
                            * ((w[j * k + kk] as i32 - zps[j]) as f64 * scales[j] as f64)
                    })
                    .sum::<f64>()
                    + bias[j] as f64
            })
            .collect();
        let mut per_tensor = vec![0f32; m * n];
        linear_dynamic(
            Engine::Scalar,
            &x,
            m,
            &pw,
            Some(&bias),
            false,
            false,
            &mut per_tensor,
            1,
        )
        .unwrap();
        let err = |v: &[f32]| {
            v.iter()
                .zip(&exact)
                .map(|(a, b)| (*a as f64 - b).powi(2))
                .sum::<f64>()
        };
        assert!(
            err(&base) <= err(&per_tensor) * 1.0001 + 1e-9,
            "{} vs {}",
            err(&base),
            err(&per_tensor)
        );
        if m == 1 {
            assert_eq!(base, per_tensor, "one row: per-row equals per-tensor");
        }
    }
}

#[test]
fn requantization_multiplier_above_one_works() {
    // out_scale smaller than xs·ws: multiplier > 1 (QAT models hit this; torch's ARM engine rejects it)
    let (m, k, n) = (4, 8, 5);
    let a: Vec<u8> = (0..m * k).map(|i| (i % 7) as u8 + 100).collect();
    let w: Vec<i8> = (0..n * k).map(|i| (i % 5) as i8 - 2).collect();
    let pw = PackedWeights::new(&w, n, k, &[0.5], &[0]).unwrap();
    let pa = PackedA::from_u8(&a, m, k, 100).unwrap();
    let acc = reference_acc(&a, m, k, 100, &w, n, &vec![0; n]);
    for e in available_engines() {
        let stage = Requantize::<i8>::new(0.25, &pw, None, 0.01, 0, -128, 127, false).unwrap(); // mult 12.5
        let mut q = vec![0i8; m * n];
        gemm(e, &pa, &pw, &stage, &mut q, 1).unwrap();
        for (got, &a) in q.iter().zip(&acc) {
            let want = ((a as f32) * 12.5).round_ties_even().clamp(-128.0, 127.0) as i8;
            assert_eq!(*got, want, "{}", e.name());
        }
    }
}

/// Accumulators of every engine (1 and 2 threads) for constant operands, as i64.
fn constant_case(m: usize, k: usize, n: usize, a: u8, w: i8, zw: i32) -> Vec<Vec<i64>> {
    let pw = PackedWeights::new(&vec![w; n * k], n, k, &[1.0], &[zw]).unwrap();
    let pa = PackedA::from_u8(&vec![a; m * k], m, k, 0).unwrap();
    let mut all = Vec::new();
    for e in available_engines() {
        for threads in [1, 2] {
            let mut acc = vec![0i32; m * n];
            gemm(e, &pa, &pw, &StoreI32, &mut acc, threads).unwrap();
            all.push(acc.iter().map(|&v| v as i64).collect());
        }
    }
    all
}

#[test]
fn k_at_the_int32_limit_is_exact_and_beyond_it_is_rejected() {
    use ferroquant_kernels::packed::MAX_COLUMN_ABS_SUM;
    use ferroquant_kernels::KernelError;
    // zero point 0, all weights -128: exact up to K = 65793
    let k = 65793;
    assert_eq!(128 * k as i64, 8421504);
    assert!(128 * k as i64 <= MAX_COLUMN_ABS_SUM);
    for acc in constant_case(2, k, 3, 255, -128, 0) {
        assert!(acc.iter().all(|&v| v == -255 * 128 * k as i64));
    }
    let r = PackedWeights::new(&vec![-128i8; 65794], 1, 65794, &[1.0], &[0]);
    assert!(matches!(r, Err(KernelError::TooLarge(_))), "{r:?}");
    // zero point -128 and weights 127: |w - zw| = 255, exact up to K = 33025
    for acc in constant_case(1, 33025, 2, 255, 127, -128) {
        assert!(acc.iter().all(|&v| v == 255 * 255 * 33025));
    }
    let r = PackedWeights::new(&vec![127i8; 33026], 1, 33026, &[1.0], &[-128]);
    assert!(matches!(r, Err(KernelError::TooLarge(_))), "{r:?}");
    // large K with small weights is accepted and exact (the i32 raw sums wrap, the result not)
    for acc in constant_case(1, 200_000, 2, 255, 1, 0) {
        assert!(acc.iter().all(|&v| v == 255 * 200_000));
    }
    for acc in constant_case(1, 100_000, 2, 255, 100, 100) {
        assert!(acc.iter().all(|&v| v == 0));
    }
    // the dynamic path: the bug report's K = 70000, a = 255, w = -128 is refused, not wrapped
    let r = PackedWeights::new(&vec![-128i8; 70000], 1, 70000, &[1.0], &[0]);
    assert!(
        matches!(r, Err(KernelError::TooLarge(msg)) if msg.contains("split the layer") || msg.contains("Split the layer"))
    );
}

/// Inputs the fuzzer found panicking (debug) or wrapping (release): each is now a clean result
/// or an error.
#[test]
fn fuzzer_found_edge_cases_are_errors_or_exact() {
    use ferroquant_kernels::qparams::choose_qparams_dynamic;
    use ferroquant_kernels::quantize::{dequantize_per_tensor, ChannelLayout};
    let pw = PackedWeights::new(&[1, 2, 3, 4], 1, 4, &[1.0], &[0]).unwrap();
    // a fused ReLU with the output zero point above the range: an error, not a clamp panic
    assert!(Requantize::<u8>::new(1.0, &pw, None, 1.0, 200, 0, 127, true).is_err());
    // per-row scales that do not match the rows: an error from the GEMM, not an index panic
    let pa = PackedA::from_u8(&[1; 12], 3, 4, 0).unwrap();
    let stage = DequantF32::per_row(&[1.0, 1.0], &pw, None, false).unwrap();
    let mut out = vec![0f32; 3];
    for e in available_engines() {
        assert!(gemm(e, &pa, &pw, &stage, &mut out, 1).is_err());
    }
    // 8-bit dequantize with extreme zero points: q - zp in i64
    let mut f = [0f32; 2];
    dequantize_per_tensor(&[0u8, 255], 1.0, i32::MIN, &mut f).unwrap();
    assert_eq!(f, [2147483648.0, 2147483903.0f64 as f32]);
    dequantize_per_tensor(&[-128i8, 127], 1.0, i32::MAX, &mut f).unwrap();
    assert_eq!(f, [-2147483775.0f64 as f32, -2147483520.0]);
    // shapes whose element count overflows
    assert!(ChannelLayout::from_shape(&[usize::MAX, 2, 0], 1).is_err());
    assert!(ChannelLayout::from_shape(&[3, 0, 5], 1).is_ok());
    // ranges wider than i32
    assert!(choose_qparams_dynamic(-1.0, 1.0, i32::MIN, i32::MAX).is_ok());
    assert!(PackedA::quantize_dynamic(&[0.5; 4], 1, 4, -5, 300).is_err());
    // subnormal scales: their reciprocal overflows
    let mut q = [0u8; 1];
    assert!(
        ferroquant_kernels::quantize::quantize_per_tensor(&[0.0], 1e-40, 0, 0, 255, &mut q)
            .is_err()
    );
    assert!(PackedWeights::new(&[1], 1, 1, &[1e-40], &[0]).is_err());
    // activation × weight scale overflowing float32: an error, not NaN outputs
    let big = PackedWeights::new(&[0, 1], 2, 1, &[1e35, 1e35], &[0, 0]).unwrap();
    assert!(DequantF32::new(1e10, &big, None, false).is_err());
    assert!(DequantF32::per_row(&[1.0, 1e10], &big, None, false).is_err());
    assert!(linear_dynamic(
        Engine::Scalar,
        &[1e12, 0.0],
        2,
        &big,
        None,
        false,
        false,
        &mut [0.0; 4],
        1
    )
    .is_err());
}

#[test]
fn per_row_scales_and_per_channel_dequantize_scales_are_checked() {
    use ferroquant_kernels::quantize::{dequantize_per_channel, ChannelLayout};
    let pw = PackedWeights::new(&[1, 2, 3, 4], 2, 2, &[0.5, 0.25], &[0, 0]).unwrap();
    for bad in [f32::NAN, f32::NEG_INFINITY, -1.0, 0.0] {
        assert!(
            DequantF32::per_row(&[bad, 0.1], &pw, None, false).is_err(),
            "{bad}"
        );
    }
    let layout = ChannelLayout::from_shape(&[2, 2], 0).unwrap();
    let mut out = [0f32; 4];
    assert!(
        dequantize_per_channel(&[1u8, 2, 3, 4], layout, &[1.0, f32::NAN], &[0, 0], &mut out)
            .is_err()
    );
    assert!(
        dequantize_per_channel(&[1u8, 2, 3, 4], layout, &[1.0, 2.0], &[0, 1], &mut out).is_ok()
    );
    assert_eq!(out, [1.0, 2.0, 4.0, 6.0]);
}

/// `DequantF32::accumulating` adds into the output: two GEMMs into one buffer (an RNN cell's
/// input and hidden projections) equal the sum of their separate outputs, on every engine and
/// thread count, ReLU applied to the sum.
#[test]
fn accumulating_output_stage_adds_gemms_into_one_buffer() {
    // small; columns split over threads; rows split over threads
    for (m, k1, k2, n) in [(7, 37, 20, 50), (300, 300, 100, 200), (1024, 512, 64, 16)] {
        if m > 7 {
            assert_eq!(ferroquant_kernels::threads_for(m * n * k1, 2), 2);
        }
        accumulating_case(m, k1, k2, n);
    }
}

fn accumulating_case(m: usize, k1: usize, k2: usize, n: usize) {
    let mut r = Rng(7);
    let a1: Vec<u8> = (0..m * k1).map(|_| r.u8_upto(255)).collect();
    let a2: Vec<u8> = (0..m * k2).map(|_| r.u8_upto(255)).collect();
    let w1: Vec<i8> = (0..n * k1).map(|_| r.i8()).collect();
    let w2: Vec<i8> = (0..n * k2).map(|_| r.i8()).collect();
    let b1: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let b2: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let p1 = PackedA::from_u8(&a1, m, k1, 3).unwrap();
    let p2 = PackedA::from_u8(&a2, m, k2, 250).unwrap();
    let pw1 = PackedWeights::new(&w1, n, k1, &[0.02], &[1]).unwrap();
    let s2: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-4).collect();
    let pw2 = PackedWeights::new(&w2, n, k2, &s2, &vec![0; n]).unwrap();
    for relu in [false, true] {
        for e in available_engines() {
            for threads in [1, 2] {
                let (mut sep1, mut sep2) = (vec![0f32; m * n], vec![0f32; m * n]);
                let st1 = DequantF32::new(0.05, &pw1, Some(&b1), false).unwrap();
                let st2 = DequantF32::new(0.03, &pw2, Some(&b2), false).unwrap();
                gemm(e, &p1, &pw1, &st1, &mut sep1, threads).unwrap();
                gemm(e, &p2, &pw2, &st2, &mut sep2, threads).unwrap();
                let want: Vec<f32> = sep1
                    .iter()
                    .zip(&sep2)
                    .map(|(&x, &y)| if relu { (x + y).max(0.0) } else { x + y })
                    .collect();
                let mut out = vec![0f32; m * n];
                gemm(e, &p1, &pw1, &st1, &mut out, threads).unwrap();
                let acc = DequantF32::new(0.03, &pw2, Some(&b2), relu)
                    .unwrap()
                    .accumulating();
                gemm(e, &p2, &pw2, &acc, &mut out, threads).unwrap();
                let same = out
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "engine {} threads {threads} relu {relu}", e.name());
            }
        }
    }
}

/// A requantization stage built for more columns than the weights have (the public API lets a
/// caller do it): every engine, fused or not, writes only the GEMM's columns and agrees.
#[test]
fn a_stage_wider_than_the_weights_writes_only_the_gemm_columns() {
    let (m, k, n) = (9usize, 12usize, 20usize);
    let mut r = Rng(77);
    let a: Vec<u8> = (0..m * k).map(|_| r.u8_upto(127)).collect();
    let w: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
    let wide: Vec<i8> = (0..32 * k).map(|_| r.i8()).collect();
    let pw = PackedWeights::new(&w, n, k, &[0.01], &[0]).unwrap();
    let pw_wide = PackedWeights::new(&wide, 32, k, &[0.01], &[0]).unwrap();
    let pa = PackedA::from_u8(&a, m, k, 3).unwrap();
    let stage = Requantize::<u8>::new(0.02, &pw_wide, None, 0.37, 77, 0, 255, false).unwrap();
    let mut base: Option<Vec<u8>> = None;
    for e in available_engines() {
        let mut q = vec![0u8; m * n];
        gemm(e, &pa, &pw, &stage, &mut q, 1).unwrap();
        match &base {
            None => base = Some(q),
            Some(b) => assert_same(&q, b, e, 1, "wide stage"),
        }
    }
}
