//! Fuzz targets for `ferroquant-kernels`, written as plain functions over the fuzzer's bytes so
//! they can also be replayed by ordinary tests. The binaries in `fuzz_targets/` are one-line
//! `fuzz_target!` wrappers around [`targets`].
//!
//! Every target decodes shapes, qparams and data from the input ([`input::Input`]), predicts
//! from first principles (checked arithmetic, the documented rules) whether the call must fail,
//! and then checks:
//! - invalid inputs give `Err` (never a panic, an abort or a huge allocation);
//! - valid inputs give `Ok`, and every engine of `available_engines()` (on 1 and 2 threads where
//!   the API takes `threads`) equals the scalar engine and a naive reference ([`reference`])
//!   bit for bit (floats compared by bits, any NaN equal to any NaN).

// `is_multiple_of` needs Rust 1.87 and this crate follows the kernels' habits.
#![allow(clippy::manual_is_multiple_of, clippy::too_many_arguments)]

pub mod input;
pub mod reference;
pub mod targets;

use ferroquant_kernels::Engine;
use std::sync::OnceLock;

/// The engines this CPU has, best first (scalar last), detected once.
pub fn engines() -> &'static [Engine] {
    static E: OnceLock<Vec<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        let e = ferroquant_kernels::available_engines();
        let names: Vec<&str> = e.iter().map(|e| e.name()).collect();
        eprintln!("ferroquant-fuzz: engines {}", names.join(","));
        e
    })
}

/// Thread counts every `threads`-taking call is run with (through [`with_threads`], which makes
/// even small problems use them).
pub const THREADS: [usize; 2] = [1, 2];

/// Runs `f` as a call with `threads` threads should run: for `threads > 1` the kernels'
/// parallel threshold is lowered to 0 for the call, so that even the fuzzer's small problems
/// take the parallel schedules (column split, row split, conv blocks in parallel).
/// The fuzzer calls targets from one thread, so the global setting is ours alone.
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    if threads <= 1 {
        return f();
    }
    let old = ferroquant_kernels::set_parallel_min_macs(0);
    let r = f();
    ferroquant_kernels::set_parallel_min_macs(old);
    r
}

/// Float bits for comparisons: every NaN compares equal to every other NaN.
#[inline]
pub fn fbits(v: f32) -> u32 {
    if v.is_nan() {
        0x7fc0_0000
    } else {
        v.to_bits()
    }
}

/// Panics with a readable message at the first difference between `got` and `want`.
#[track_caller]
pub fn assert_same_slice<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: differs at index {i}: got {:?}, want {:?}",
            got[i], want[i]
        );
    }
}

/// [`assert_same_slice`] for floats, by bits (NaNs equal).
#[track_caller]
pub fn assert_same_f32(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got
        .iter()
        .zip(want)
        .position(|(a, b)| fbits(*a) != fbits(*b))
    {
        panic!(
            "{what}: differs at index {i}: got {:?} ({:#010x}), want {:?} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// A scale the kernels accept for weights, activations and outputs (qparams.rs `check_scale`):
/// finite, positive and normal (`>= f32::MIN_POSITIVE`; a subnormal scale has no finite
/// reciprocal). Dequantize takes any finite scale.
pub fn scale_ok(s: f32) -> bool {
    s.is_normal() && s > 0.0
}

/// A fused ReLU raises the lower clamp bound to the output zero point: with `out_zp > qmax`
/// the range is empty, and `Requantize::new` must reject it.
pub fn relu_zp_ok(relu: bool, out_zp: i32, qmax: i32) -> bool {
    !(relu && out_zp > qmax)
}

/// Checks that a call either failed because the input was invalid, or succeeded on a valid one.
#[track_caller]
pub fn expect_validity<T, E: std::fmt::Debug>(r: &Result<T, E>, valid: bool, what: &str) -> bool {
    match (r, valid) {
        (Ok(_), true) | (Err(_), false) => r.is_ok(),
        (Ok(_), false) => panic!("{what}: invalid input was accepted (expected Err)"),
        (Err(e), true) => panic!("{what}: valid input was rejected: {e:?}"),
    }
}
