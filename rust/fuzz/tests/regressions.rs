//! The kernel bugs the fuzz targets found, as minimal cases (fixed in the kernels; kept so they
//! stay fixed). Each used to panic (debug builds: overflow checks) or return a wrong `Ok`.

use ferroquant_kernels::gemm::gemm;
use ferroquant_kernels::qparams::choose_qparams_dynamic;
use ferroquant_kernels::quantize::{dequantize_per_tensor, ChannelLayout};
use ferroquant_kernels::requant::{DequantF32, Requantize};
use ferroquant_kernels::{linear_static, Engine, PackedA, PackedWeights};

fn weights() -> PackedWeights {
    PackedWeights::new(&[1, 2, 3, 4], 2, 2, &[1.0], &[0]).unwrap()
}

/// A fused ReLU with `out_zp > qmax` was accepted, then `i32::clamp(lo > hi)` panicked in the
/// output stage (release builds too): linear_static / conv_static with relu=True.
#[test]
fn relu_with_zero_point_above_qmax_is_an_error() {
    let pw = weights();
    assert!(Requantize::<u8>::new(1.0, &pw, None, 1.0, 200, 0, 100, true).is_err());
    let mut out = [0u8; 2];
    let r = linear_static::<u8>(
        Engine::Scalar,
        &[1, 1],
        1,
        1.0,
        0,
        &pw,
        None,
        1.0,
        200,
        0,
        100,
        true,
        &mut out,
        1,
    );
    assert!(r.is_err());
}

/// `DequantF32::per_row` with fewer row scales than rows indexed out of bounds in the GEMM;
/// more were silently ignored.
#[test]
fn per_row_scales_must_match_the_rows() {
    let pw = weights();
    let x = [0.5f32, -1.0, 2.0, 0.25];
    let (a, _) = PackedA::quantize_dynamic_per_row_on(Engine::Scalar, &x, 2, 2, 0, 255).unwrap();
    for scales in [&[0.1f32][..], &[0.1, 0.1, 0.1]] {
        let st = DequantF32::per_row(scales, &pw, None, false).unwrap();
        let mut out = [0f32; 4];
        assert!(gemm(Engine::Scalar, &a, &pw, &st, &mut out, 1).is_err());
    }
}

/// 8-bit dequantize computed `q - zp` in i32: zp = i32::MIN overflowed (panic in debug, a
/// wrapped, negated value in release).
#[test]
fn dequantize_with_an_extreme_zero_point_is_exact() {
    let mut out = [0f32; 1];
    dequantize_per_tensor::<u8>(&[0], 1.0, i32::MIN, &mut out).unwrap();
    assert_eq!(out[0], 2147483648.0);
}

/// `ChannelLayout::from_shape` multiplied the dims unchecked (panic in debug, wrapped sizes in
/// release that let an empty buffer pass for a 2^65-element tensor).
#[test]
fn channel_layouts_that_overflow_are_errors() {
    assert!(ChannelLayout::from_shape(&[1 << 32, 2, 1 << 32], 1).is_err());
    assert!(ChannelLayout::from_shape(&[0, 1 << 40, 1 << 40], 0).is_err());
}

/// `choose_qparams_dynamic` computed `qmax - qmin` in i32 (exposed to Python): panic in debug,
/// a negative span in release. `quantize_dynamic` accepted ranges outside quint8 and then
/// overflowed `255 - zero_point` or clamped silently.
#[test]
fn dynamic_qparams_over_any_i32_range() {
    let q = choose_qparams_dynamic(0.0, 1.0, i32::MIN, i32::MAX).unwrap();
    assert!(q.scale > 0.0 && q.scale.is_finite());
    assert!(PackedA::quantize_dynamic(&[-1.0, 1.0], 1, 2, i32::MIN, i32::MIN + 1).is_err());
    assert!(PackedA::quantize_dynamic(&[-1.0, 1.0], 1, 2, -1000, 1000).is_err());
}

/// The direct depthwise path (groups = in = out channels) packed weights without the scale and
/// zero-point checks the GEMM path makes: a zero / NaN scale or a zero point outside int8 was
/// accepted (found by the conv target when the depthwise kernel landed).
#[test]
fn depthwise_weights_check_their_qparams() {
    use ferroquant_kernels::conv::{ConvGeometry, PackedConv};
    let geom = ConvGeometry {
        kernel: [1, 3, 3],
        stride: [1, 1, 1],
        padding: [0, 1, 1],
        dilation: [1, 1, 1],
        groups: 2,
    };
    let w = [1i8; 18];
    assert!(PackedConv::new(&w, 2, 2, geom, &[0.5], &[0])
        .unwrap()
        .is_depthwise());
    for (s, z) in [
        (0.0f32, 0),
        (f32::NAN, 0),
        (1e-40, 0),
        (0.5, 128),
        (0.5, -129),
    ] {
        assert!(
            PackedConv::new(&w, 2, 2, geom, &[s], &[z]).is_err(),
            "scale {s} zp {z}"
        );
    }
    assert!(PackedConv::new(&w, 2, 2, geom, &[0.5, -1.0], &[0, 0]).is_err());
}

/// A depthwise conv over an input of width 0 with padding (all outputs from padding taps)
/// underflowed computing the interior run of a line (found by the conv target).
#[test]
fn depthwise_over_an_empty_width_is_all_padding() {
    use ferroquant_kernels::conv::{conv_static, ConvGeometry, PackedConv};
    let geom = ConvGeometry {
        kernel: [1, 1, 1],
        stride: [1, 1, 1],
        padding: [0, 0, 1],
        dilation: [1, 1, 1],
        groups: 16,
    };
    let pc = PackedConv::new(&[1i8; 16], 16, 16, geom, &[0.5], &[0]).unwrap();
    for e in ferroquant_kernels::available_engines() {
        let (out, osp) = conv_static::<u8>(
            e,
            &[],
            1,
            [1, 1, 0],
            0.1,
            7,
            &pc,
            None,
            0.2,
            3,
            0,
            255,
            false,
            1,
        )
        .unwrap();
        assert_eq!(osp, [1, 1, 2]);
        // padding taps add (zx - zx)·w = 0: every output is the output zero point
        assert!(out.iter().all(|&v| v == 3), "{}", e.name());
    }
}
