//! Quantize and dequantize, per tensor and per channel (docs/numerics.md decision D3).
//!
//! One rule everywhere: `inv = fl(1/fl(scale))`, `q = clamp(rne(fl(x*inv)) + zp, qmin, qmax)`;
//! NaN maps to `qmax` (as torch does). Dequantize is `fl(scale * fl(q - zp))`.
//! The loops below are written once and are bit-identical on every ISA: they use only
//! IEEE-exact operations (no FMA contraction happens in Rust).

use crate::arch::{with_features, Vectorized};
use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};
use crate::qparams::{check_range, check_scale, QDtype};

/// An integer type that quantized data is stored in.
pub trait QInt: Copy + Send + Sync + Default + 'static {
    const DTYPE: QDtype;
    fn from_i32(v: i32) -> Self;
    fn to_i32(self) -> i32;
    /// The slice as bytes when `Self` is `u8` (for kernels that store bytes), else None.
    fn as_u8_mut(_s: &mut [Self]) -> Option<&mut [u8]> {
        None
    }
    /// [`QInt::as_u8_mut`] for a shared slice.
    fn as_u8(_s: &[Self]) -> Option<&[u8]> {
        None
    }
}

impl QInt for u8 {
    const DTYPE: QDtype = QDtype::QUInt8;
    fn as_u8_mut(s: &mut [u8]) -> Option<&mut [u8]> {
        Some(s)
    }
    fn as_u8(s: &[u8]) -> Option<&[u8]> {
        Some(s)
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as u8
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self as i32
    }
}

impl QInt for i8 {
    const DTYPE: QDtype = QDtype::QInt8;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self as i32
    }
}

impl QInt for i32 {
    const DTYPE: QDtype = QDtype::QInt32;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self
    }
}

/// Round half to even and convert to i32 in one step, for `|v| < 2^22`: after adding
/// 1.5·2^23 the float's unit is 1, so the hardware's default rounding (RNE) rounds, and the low
/// mantissa bits hold the integer (offset by the constant's bits). Branch-free and portable,
/// so it vectorises on every ISA.
#[inline(always)]
pub(crate) fn rne_to_i32(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    ((v + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32)
}

/// The quantize rule for 8-bit targets: returns `q` as i32 in `[qmin, qmax]`.
/// `lo = qmin - zp` and `hi = qmax - zp` as floats (exact: |.| ≤ 510).
#[inline(always)]
pub(crate) fn quantize_one_8bit(x: f32, inv: f32, lo: f32, hi: f32, zp: i32) -> i32 {
    let v = x * inv;
    // Clamp before rounding keeps |v| small for the rounding trick; NaN maps to the top.
    let v = if v.is_nan() {
        hi
    } else {
        v.max(lo - 1.0).min(hi + 1.0)
    };
    rne_to_i32(v).clamp(lo as i32, hi as i32) + zp
}

#[inline(always)]
fn quantize_one_i32(x: f32, inv: f32, qmin: i64, qmax: i64, zp: i64) -> i32 {
    let v = x * inv;
    if v.is_nan() {
        return qmax as i32;
    }
    let r = (v as f64).round_ties_even();
    let r = r.clamp(-4.0e18, 4.0e18) as i64; // saturating, exact for |r| < 2^62
    (r + zp).clamp(qmin, qmax) as i32
}

fn validate(scale: f32, zero_point: i32, qmin: i32, qmax: i32, dtype: QDtype) -> Result<()> {
    check_scale(scale)?;
    check_range(dtype, qmin as i64, qmax as i64, zero_point as i64)
}

/// Quantizes `x` into `out` with one scale and zero point, clamping to `[qmin, qmax]`.
pub fn quantize_per_tensor<T: QInt>(
    x: &[f32],
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [T],
) -> Result<()> {
    check_len("quantize output", x.len(), out.len())?;
    validate(scale, zero_point, qmin, qmax, T::DTYPE)?;
    quantize_per_tensor_unchecked(x, scale, zero_point, qmin, qmax, out);
    Ok(())
}

/// The loop of [`quantize_per_tensor`]; arguments must already be validated.
pub(crate) fn quantize_per_tensor_unchecked<T: QInt>(
    x: &[f32],
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [T],
) {
    let inv = 1.0f32 / scale;
    if T::DTYPE == QDtype::QInt32 {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = T::from_i32(quantize_one_i32(
                v,
                inv,
                qmin as i64,
                qmax as i64,
                zero_point as i64,
            ));
        }
    } else {
        // elementwise, so the same bits on every engine: compiled with the current engine's
        // vector features (AVX-512 / AVX2 make the NaN and clamp selects cheap)
        let engine = crate::current_engine();
        let work = Quant8 {
            x,
            rule: Rule8::new(scale, zero_point, qmin, qmax).on(engine),
            _t: std::marker::PhantomData,
        };
        with_features(engine, work, out);
    }
}

/// Quantizes `x`, laid out `[n, channels, inner]` (a contiguous NC… tensor), into `out` laid out
/// `[n, inner, channels]` (channels-last), with one scale and zero point: the same values as
/// [`quantize_per_tensor`] followed by a transpose, in one pass (8-bit dtypes).
#[allow(clippy::too_many_arguments)]
pub fn quantize_per_tensor_channels_last<T: QInt>(
    x: &[f32],
    n: usize,
    channels: usize,
    inner: usize,
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [T],
) -> Result<()> {
    let engine = crate::current_engine();
    quantize_channels_last_on(
        engine, x, n, channels, inner, scale, zero_point, qmin, qmax, out,
    )
}

/// [`quantize_per_tensor_channels_last`] compiled for `engine` (tests run every engine).
#[allow(clippy::too_many_arguments)]
fn quantize_channels_last_on<T: QInt>(
    engine: crate::Engine,
    x: &[f32],
    n: usize,
    channels: usize,
    inner: usize,
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [T],
) -> Result<()> {
    let numel = checked_numel(&[n, channels, inner], "quantize input")?;
    check_len("quantize input", numel, x.len())?;
    check_len("quantize output", numel, out.len())?;
    validate(scale, zero_point, qmin, qmax, T::DTYPE)?;
    if T::DTYPE == QDtype::QInt32 || channels <= 1 || inner <= 1 {
        // no transpose to do (or 32-bit values): quantize, then move if needed
        if channels <= 1 || inner <= 1 {
            quantize_per_tensor_unchecked(x, scale, zero_point, qmin, qmax, out);
            return Ok(());
        }
        let mut tmp = try_vec(numel, T::from_i32(0), "the quantized values")?;
        quantize_per_tensor_unchecked(x, scale, zero_point, qmin, qmax, &mut tmp);
        transpose_planes(&tmp, channels, inner, out);
        return Ok(());
    }
    let block = QUANT_CL_BLOCK.min(inner);
    let work = Quant8Cl {
        x,
        channels,
        inner,
        rule: Rule8::new(scale, zero_point, qmin, qmax).on(engine),
        tmp: try_vec(channels * block, T::from_i32(0), "the quantize buffer")?,
        block,
    };
    with_features(engine, work, out);
    Ok(())
}

/// `[outer, channels, inner]` → `[outer, inner, channels]`.
fn transpose_planes<T: Copy>(src: &[T], channels: usize, inner: usize, out: &mut [T]) {
    for (s, o) in src
        .chunks_exact(channels * inner)
        .zip(out.chunks_exact_mut(channels * inner))
    {
        for (i, px) in o.chunks_exact_mut(channels).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = s[c * inner + i];
            }
        }
    }
}

/// The channels-last 8-bit quantize: blocks of `block` positions quantized plane by plane into a
/// small buffer (vectorised), then interleaved.
struct Quant8Cl<'a, T> {
    x: &'a [f32],
    channels: usize,
    inner: usize,
    rule: Rule8,
    /// `channels × block` values: one block of every plane
    tmp: Vec<T>,
    block: usize,
}

/// Positions per block of the channels-last quantize.
const QUANT_CL_BLOCK: usize = 256;

/// The 8-bit quantize rule's constants: `fl(1/scale)` and the clamp bounds around the zero
/// point ([`quantize_one_8bit`]).
#[derive(Clone, Copy)]
struct Rule8 {
    inv: f32,
    lo: f32,
    hi: f32,
    zp: i32,
    /// Loops through the engine's vector kernel (an x86 SIMD engine), else elementwise.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    simd: bool,
}

impl Rule8 {
    fn new(scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> Self {
        Rule8 {
            inv: 1.0f32 / scale,
            lo: (qmin - zero_point) as f32,
            hi: (qmax - zero_point) as f32,
            zp: zero_point,
            simd: false,
        }
    }

    /// The rule as `engine` runs it (the scalar engine elementwise: the reference).
    fn on(self, engine: crate::Engine) -> Self {
        Rule8 {
            simd: engine != crate::Engine::Scalar,
            ..self
        }
    }

    #[inline(always)]
    fn one<T: QInt>(self, v: f32) -> T {
        T::from_i32(quantize_one_8bit(v, self.inv, self.lo, self.hi, self.zp))
    }

    /// The prefix of `x` an x86 SIMD engine's kernel quantized into `out` (0 elsewhere).
    #[inline(always)]
    fn simd_prefix(self, x: &[f32], out: &mut [u8]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            return crate::arch::x86_64::quant8::quantize_u8(
                x, self.inv, self.lo, self.hi, self.zp, out,
            );
        }
        let _ = (x, out);
        0
    }

    /// Pixels of three quint8 planes an x86 SIMD engine's kernel interleaved into `dst` (0
    /// elsewhere).
    #[inline(always)]
    fn simd_interleave3(self, planes: [&[u8]; 3], dst: &mut [u8]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            return crate::arch::x86_64::quant8::interleave3(planes[0], planes[1], planes[2], dst);
        }
        let _ = (planes, dst);
        0
    }

    /// `out[i] = one(x[i])`: quint8 on an x86 SIMD engine through the AVX2 kernel (the same
    /// values), the rest elementwise.
    #[inline(always)]
    fn run<T: QInt>(self, x: &[f32], out: &mut [T]) {
        let done = T::as_u8_mut(out).map_or(0, |bytes| self.simd_prefix(x, bytes));
        for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
            *o = self.one(v);
        }
    }
}

impl<T: QInt> Vectorized for Quant8Cl<'_, T> {
    type Elem = T;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [T]) {
        let Quant8Cl {
            x,
            channels: c,
            inner,
            rule,
            mut tmp,
            block: blk,
        } = self;
        for (xs, os) in x
            .chunks_exact(c * inner)
            .zip(out.chunks_exact_mut(c * inner))
        {
            let mut s0 = 0;
            while s0 < inner {
                let len = blk.min(inner - s0);
                for ch in 0..c {
                    let src = &xs[ch * inner + s0..][..len];
                    rule.run(src, &mut tmp[ch * blk..][..len]);
                }
                let dst = &mut os[s0 * c..][..len * c];
                if c == 3 {
                    let (t0, rest) = tmp.split_at(blk);
                    let (t1, t2) = rest.split_at(blk);
                    let done = match (
                        T::as_u8_mut(dst),
                        T::as_u8(&t0[..len]),
                        T::as_u8(&t1[..len]),
                        T::as_u8(&t2[..len]),
                    ) {
                        (Some(d), Some(p0), Some(p1), Some(p2)) => {
                            rule.simd_interleave3([p0, p1, p2], d)
                        }
                        _ => 0,
                    };
                    for (i, px) in dst.chunks_exact_mut(3).enumerate().skip(done) {
                        px[0] = t0[i];
                        px[1] = t1[i];
                        px[2] = t2[i];
                    }
                } else {
                    for (i, px) in dst.chunks_exact_mut(c).enumerate() {
                        for (ch, v) in px.iter_mut().enumerate() {
                            *v = tmp[ch * blk + i];
                        }
                    }
                }
                s0 += len;
            }
        }
    }
}

/// The 8-bit quantize loop, compiled per ISA.
struct Quant8<'a, T> {
    x: &'a [f32],
    rule: Rule8,
    _t: std::marker::PhantomData<T>,
}

impl<T: QInt> Vectorized for Quant8<'_, T> {
    type Elem = T;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [T]) {
        self.rule.run(self.x, out);
    }
}

/// A view of a tensor as `[outer, channels, inner]` for per-channel operations along `axis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl ChannelLayout {
    /// Builds the layout of a contiguous tensor of `shape` split at `axis`.
    pub fn from_shape(shape: &[usize], axis: usize) -> Result<Self> {
        if axis >= shape.len() {
            return Err(KernelError::ShapeMismatch {
                what: "per-channel axis".into(),
                expected: format!("an axis < {}", shape.len()),
                got: format!("axis {axis}"),
            });
        }
        // the whole shape's element count must fit (an empty tensor's nonzero dims too)
        let nonzero: Vec<usize> = shape.iter().copied().filter(|&d| d != 0).collect();
        crate::error::checked_numel(&nonzero, "per-channel tensor")?;
        Ok(ChannelLayout {
            outer: shape[..axis].iter().product(),
            channels: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        })
    }

    /// Element count (saturating: a hand-built layout too large for memory then fails every
    /// length check instead of wrapping).
    pub fn numel(&self) -> usize {
        self.outer
            .saturating_mul(self.channels)
            .saturating_mul(self.inner)
    }
}

/// Quantizes `x` (laid out as `layout`) with one scale and zero point per channel.
pub fn quantize_per_channel<T: QInt>(
    x: &[f32],
    layout: ChannelLayout,
    scales: &[f32],
    zero_points: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [T],
) -> Result<()> {
    check_len("quantize input", layout.numel(), x.len())?;
    check_len("quantize output", x.len(), out.len())?;
    check_len("per-channel scales", layout.channels, scales.len())?;
    check_len(
        "per-channel zero points",
        layout.channels,
        zero_points.len(),
    )?;
    for (&s, &z) in scales.iter().zip(zero_points) {
        validate(s, z, qmin, qmax, T::DTYPE)?;
    }
    let block = layout.channels * layout.inner;
    if block == 0 {
        return Ok(());
    }
    for (xo, oo) in x.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
        for c in 0..layout.channels {
            let r = c * layout.inner..(c + 1) * layout.inner;
            quantize_per_tensor_unchecked(
                &xo[r.clone()],
                scales[c],
                zero_points[c],
                qmin,
                qmax,
                &mut oo[r],
            );
        }
    }
    Ok(())
}

#[inline(always)]
fn dequantize_one<T: QInt>(q: T, scale: f32, zp: i32) -> f32 {
    // in i64: any i32 zero point, no overflow (exact for 8-bit data with an in-range zero point)
    ((q.to_i32() as i64 - zp as i64) as f32) * scale
}

/// Dequantizes `q` into `out`: `fl(scale * fl(q - zp))`.
pub fn dequantize_per_tensor<T: QInt>(
    q: &[T],
    scale: f32,
    zero_point: i32,
    out: &mut [f32],
) -> Result<()> {
    check_len("dequantize output", q.len(), out.len())?;
    if !scale.is_finite() {
        return Err(KernelError::InvalidQParams(format!(
            "scale must be finite, got {scale}"
        )));
    }
    for (o, &v) in out.iter_mut().zip(q) {
        *o = dequantize_one(v, scale, zero_point);
    }
    Ok(())
}

/// Dequantizes per channel.
pub fn dequantize_per_channel<T: QInt>(
    q: &[T],
    layout: ChannelLayout,
    scales: &[f32],
    zero_points: &[i32],
    out: &mut [f32],
) -> Result<()> {
    check_len("dequantize input", layout.numel(), q.len())?;
    check_len("dequantize output", q.len(), out.len())?;
    check_len("per-channel scales", layout.channels, scales.len())?;
    check_len(
        "per-channel zero points",
        layout.channels,
        zero_points.len(),
    )?;
    if let Some(bad) = scales.iter().find(|s| !s.is_finite()) {
        return Err(KernelError::InvalidQParams(format!(
            "per-channel scales must be finite, got {bad}"
        )));
    }
    let block = layout.channels * layout.inner;
    if block == 0 {
        return Ok(());
    }
    for (qo, oo) in q.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
        for c in 0..layout.channels {
            let r = c * layout.inner..(c + 1) * layout.inner;
            for (o, &v) in oo[r.clone()].iter_mut().zip(&qo[r]) {
                *o = dequantize_one(v, scales[c], zero_points[c]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(x: f32, scale: f32, zp: i32, qmin: i32, qmax: i32) -> i32 {
        let inv = 1.0f32 / scale;
        let v = x * inv;
        if v.is_nan() {
            return qmax;
        }
        let r = (v as f64).round_ties_even().clamp(-1e12, 1e12) as i64;
        (r + zp as i64).clamp(qmin as i64, qmax as i64) as i32
    }

    #[test]
    fn ties_round_to_even_and_zp_is_added_after() {
        let mut out = [0u8; 4];
        quantize_per_tensor(&[2.5, 3.5, -0.5, 0.5], 1.0, 1, 0, 255, &mut out).unwrap();
        assert_eq!(out, [3, 5, 1, 1]);
    }

    #[test]
    fn nan_and_inf_saturate_like_torch() {
        let mut out = [0i8; 3];
        quantize_per_tensor(
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
            0.1,
            0,
            -128,
            127,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [127, 127, -128]);
    }

    #[test]
    fn bad_qparams_are_errors() {
        let mut out = [0u8; 1];
        assert!(quantize_per_tensor(&[1.0], 0.0, 0, 0, 255, &mut out).is_err());
        assert!(quantize_per_tensor(&[1.0], 1.0, 300, 0, 255, &mut out).is_err());
        assert!(quantize_per_tensor(&[1.0], 1.0, 0, 0, 256, &mut out).is_err());
        let mut short = [0u8; 0];
        assert!(quantize_per_tensor(&[1.0], 1.0, 0, 0, 255, &mut short).is_err());
    }

    #[test]
    fn qint32_quantize() {
        let mut out = [0i32; 3];
        quantize_per_tensor(&[1e12, -2.5, 7.0], 0.5, 3, i32::MIN, i32::MAX, &mut out).unwrap();
        assert_eq!(out, [i32::MAX, -2, 17]);
    }

    #[test]
    fn per_channel_layout_and_values() {
        let layout = ChannelLayout::from_shape(&[2, 3, 2], 1).unwrap();
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut q = vec![0u8; 12];
        quantize_per_channel(&x, layout, &[1.0, 2.0, 4.0], &[0, 1, 2], 0, 255, &mut q).unwrap();
        assert_eq!(q, vec![0, 1, 2, 3, 3, 3, 6, 7, 5, 5, 4, 5]);
        let mut d = vec![0f32; 12];
        dequantize_per_channel(&q, layout, &[1.0, 2.0, 4.0], &[0, 1, 2], &mut d).unwrap();
        assert_eq!(d[4], 4.0);
        assert!(ChannelLayout::from_shape(&[2], 1).is_err());
    }

    proptest! {
        #[test]
        fn quantize_matches_reference(xs in proptest::collection::vec(-1000f32..1000f32, 0..300),
                                      scale in 1e-3f32..10.0, zp in 0i32..=255) {
            let mut out = vec![0u8; xs.len()];
            quantize_per_tensor(&xs, scale, zp, 0, 255, &mut out).unwrap();
            for (x, q) in xs.iter().zip(&out) {
                prop_assert_eq!(*q as i32, reference(*x, scale, zp, 0, 255));
            }
        }

        #[test]
        fn round_trip_error_is_at_most_half_a_step(xs in proptest::collection::vec(-5f32..5f32, 1..200)) {
            let scale = 10.0f32 / 255.0;
            let zp = 128;
            let mut q = vec![0u8; xs.len()];
            quantize_per_tensor(&xs, scale, zp, 0, 255, &mut q).unwrap();
            let mut d = vec![0f32; xs.len()];
            dequantize_per_tensor(&q, scale, zp, &mut d).unwrap();
            for (x, y) in xs.iter().zip(&d) {
                if *x > -128.0 * scale && *x < 127.0 * scale {
                    prop_assert!((x - y).abs() <= scale * 0.5 + 1e-6);
                }
            }
        }

        #[test]
        fn quantize_i8_matches_reference(xs in proptest::collection::vec(-100f32..100f32, 0..100),
                                         scale in 1e-2f32..1.0, zp in -128i32..=127) {
            let mut out = vec![0i8; xs.len()];
            quantize_per_tensor(&xs, scale, zp, -128, 127, &mut out).unwrap();
            for (x, q) in xs.iter().zip(&out) {
                prop_assert_eq!(*q as i32, reference(*x, scale, zp, -128, 127));
            }
        }
    }
}

/// Fake quantization for quantization-aware training, per tensor (`layout.channels == 1`) or per
/// channel along the layout's channel axis: for each value, with its channel's `s` and `zp`,
/// `r = rne(x·fl(1/s))`, `out = fl(clamp(r, qmin − zp, qmax − zp)·s)` (a NaN stays NaN) and
/// `mask = 1` where `qmin ≤ r + zp ≤ qmax` (the straight-through gradient's mask). The same
/// float operations, in the same order, as the Python definition
/// `(clamp(round(x·fl(1/s)) + zp, qmin, qmax) − zp)·s`, so both give the same bits; the
/// kernels' quantize rounds the same way (docs/numerics.md D3, D6).
#[allow(clippy::too_many_arguments)]
pub fn fake_quantize(
    x: &[f32],
    layout: ChannelLayout,
    scales: &[f32],
    zero_points: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [f32],
    mask: &mut [u8],
) -> Result<()> {
    let engine = crate::current_engine();
    fake_quantize_on(
        engine,
        x,
        layout,
        scales,
        zero_points,
        qmin,
        qmax,
        out,
        mask,
    )
}

/// [`fake_quantize`] compiled for `engine`'s vector features (the same bits on every engine).
#[allow(clippy::too_many_arguments)]
fn fake_quantize_on(
    engine: crate::arch::Engine,
    x: &[f32],
    layout: ChannelLayout,
    scales: &[f32],
    zero_points: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [f32],
    mask: &mut [u8],
) -> Result<()> {
    let total = layout
        .outer
        .checked_mul(layout.channels)
        .and_then(|n| n.checked_mul(layout.inner))
        .ok_or_else(|| {
            KernelError::InvalidQParams("fake_quantize: the layout's size overflows".into())
        })?;
    check_len("fake_quantize input", total, x.len())?;
    check_len("fake_quantize output", total, out.len())?;
    check_len("fake_quantize mask", total, mask.len())?;
    check_len("fake_quantize scales", layout.channels, scales.len())?;
    check_len(
        "fake_quantize zero points",
        layout.channels,
        zero_points.len(),
    )?;
    const LIMIT: i64 = 1 << 20; // integers stay exact in f32 with room for the clamp margin
    let in_limit = |v: i64| (-LIMIT..=LIMIT).contains(&v);
    if qmin > qmax || !in_limit(qmin as i64) || !in_limit(qmax as i64) {
        return Err(KernelError::InvalidQParams(format!(
            "fake_quantize needs qmin <= qmax within ±2^20, got [{qmin}, {qmax}]"
        )));
    }
    if let Some(z) = zero_points.iter().find(|&&z| !in_limit(z as i64)) {
        return Err(KernelError::InvalidQParams(format!(
            "fake_quantize zero points must be within ±2^20, got {z}"
        )));
    }
    let inner = layout.inner;
    for o in 0..layout.outer {
        for c in 0..layout.channels {
            let at = (o * layout.channels + c) * inner;
            let (s, zp) = (scales[c], zero_points[c]);
            let rule = FakeQuantRule {
                inv: 1.0f32 / s,
                s,
                lo: (qmin as i64 - zp as i64) as f32,
                hi: (qmax as i64 - zp as i64) as f32,
            };
            let xs = &x[at..at + inner];
            with_features(
                engine,
                FakeQuantValues { x: xs, rule },
                &mut out[at..at + inner],
            );
            with_features(
                engine,
                FakeQuantMask { x: xs, rule },
                &mut mask[at..at + inner],
            );
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct FakeQuantRule {
    inv: f32,
    s: f32,
    lo: f32,
    hi: f32,
}

impl FakeQuantRule {
    /// `rne(x·inv)` clamped to `[lo − 1, hi + 1]` first (the rounding trick needs `|v| < 2^22`;
    /// values beyond the margin clamp and mask the same way), as a float; NaN for NaN.
    #[inline(always)]
    fn rounded(self, x: f32) -> f32 {
        let v = x * self.inv;
        let c = v.max(self.lo - 1.0).min(self.hi + 1.0);
        let r = rne_to_i32(c) as f32;
        if v.is_nan() {
            f32::NAN
        } else {
            r
        }
    }
}

struct FakeQuantValues<'a> {
    x: &'a [f32],
    rule: FakeQuantRule,
}

impl Vectorized for FakeQuantValues<'_> {
    type Elem = f32;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [f32]) {
        let rule = self.rule;
        for (o, &v) in out.iter_mut().zip(self.x) {
            let r = rule.rounded(v);
            // max/min return the other operand for NaN: keep NaN explicitly
            let q = if r.is_nan() {
                r
            } else {
                r.max(rule.lo).min(rule.hi)
            };
            *o = q * rule.s;
        }
    }
}

struct FakeQuantMask<'a> {
    x: &'a [f32],
    rule: FakeQuantRule,
}

impl Vectorized for FakeQuantMask<'_> {
    type Elem = u8;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [u8]) {
        let rule = self.rule;
        for (m, &v) in out.iter_mut().zip(self.x) {
            let r = rule.rounded(v);
            *m = (r >= rule.lo && r <= rule.hi) as u8;
        }
    }
}

#[cfg(test)]
mod fake_quant_tests {
    use super::*;

    /// The Python definition, one value at a time, in f64-free f32 steps.
    fn reference(x: f32, s: f32, zp: i32, qmin: i32, qmax: i32) -> (f32, u8) {
        let inv = 1.0f32 / s;
        let q = (x * inv).round_ties_even() + zp as f32;
        let m = (q >= qmin as f32 && q <= qmax as f32) as u8;
        let c = if q.is_nan() {
            q
        } else {
            q.max(qmin as f32).min(qmax as f32)
        };
        ((c - zp as f32) * s, m)
    }

    fn channels_last_case<T: QInt + PartialEq + std::fmt::Debug>(qmin: i32, qmax: i32, zp: i32) {
        for &(n, c, inner) in &[
            (1usize, 3usize, 224 * 3 + 7),
            (2, 1, 17),
            (1, 7, 1),
            (2, 4, 255),
            (1, 16, 256),
            (3, 5, 257),
            (1, 64, 63),
            (1, 65, 65),
        ] {
            let x: Vec<f32> = (0..n * c * inner)
                .map(|i| match i % 97 {
                    0 => f32::NAN,
                    1 => 2.5 * 0.1,
                    2 => f32::INFINITY,
                    3 => f32::NEG_INFINITY,
                    4 => -0.0,
                    5 => 1e30,
                    6 => -3.5,
                    7 => ((i % 40) as f32 - 20.0 + 0.5) * 0.1,
                    _ => ((i as f32) * 0.731).sin() * 20.0,
                })
                .collect();
            // the reference: the scalar rule value by value (8-bit), the plain quantize (i32)
            let mut plain = vec![T::from_i32(0); x.len()];
            if T::DTYPE == QDtype::QInt32 {
                quantize_per_tensor(&x, 0.1, zp, qmin, qmax, &mut plain).unwrap();
            } else {
                let rule = Rule8::new(0.1, zp, qmin, qmax);
                for (o, &v) in plain.iter_mut().zip(&x) {
                    *o = rule.one(v);
                }
            }
            let mut want = vec![T::from_i32(0); x.len()];
            transpose_planes(&plain, c, inner, &mut want);
            for engine in crate::arch::available_engines() {
                let mut got = vec![T::from_i32(0); x.len()];
                quantize_channels_last_on(engine, &x, n, c, inner, 0.1, zp, qmin, qmax, &mut got)
                    .unwrap();
                assert_eq!(got, want, "{engine:?} n={n} c={c} inner={inner}");
            }
        }
    }

    #[test]
    fn channels_last_quantize_is_quantize_then_transpose_on_every_engine() {
        channels_last_case::<u8>(0, 255, 128);
        channels_last_case::<u8>(3, 100, 7);
        channels_last_case::<u8>(0, 127, 0);
        channels_last_case::<u8>(0, 255, 255);
        channels_last_case::<i8>(-128, 127, -5);
        channels_last_case::<i32>(i32::MIN, i32::MAX, 11);
        let mut out = [0u8; 5];
        assert!(
            quantize_per_tensor_channels_last(&[0.0; 6], 1, 2, 3, 1.0, 0, 0, 255, &mut out)
                .is_err(),
            "a short output is an error"
        );
        let mut out = [0u8; 6];
        assert!(
            quantize_per_tensor_channels_last(&[0.0; 6], 1, 2, 3, 0.0, 0, 0, 255, &mut out)
                .is_err(),
            "a zero scale is an error"
        );
    }

    #[test]
    fn fake_quantize_matches_the_definition_on_every_engine() {
        let mut xs: Vec<f32> = (0..4099).map(|i| ((i as f32) * 0.37).sin() * 9.0).collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.5,
            1.5,
            2.5,
            -0.5,
            1e30,
            -1e30,
        ]);
        for &(s, zp, qmin, qmax) in &[
            (0.05f32, 128, 0, 255),
            (0.031, 0, -128, 127),
            (0.5, 3, 0, 15),
        ] {
            let want: Vec<(f32, u8)> = xs
                .iter()
                .map(|&x| reference(x, s, zp, qmin, qmax))
                .collect();
            for engine in crate::arch::available_engines() {
                let (mut out, mut mask) = (vec![0f32; xs.len()], vec![0u8; xs.len()]);
                let layout = ChannelLayout {
                    outer: 1,
                    channels: 1,
                    inner: xs.len(),
                };
                fake_quantize_on(
                    engine,
                    &xs,
                    layout,
                    &[s],
                    &[zp],
                    qmin,
                    qmax,
                    &mut out,
                    &mut mask,
                )
                .unwrap();
                for (i, (&(w, wm), (&o, &m))) in want.iter().zip(out.iter().zip(&mask)).enumerate()
                {
                    assert!(
                        (w.is_nan() && o.is_nan()) || w.to_bits() == o.to_bits(),
                        "{engine:?} x={} want {w} got {o}",
                        xs[i]
                    );
                    assert_eq!(wm, m, "{engine:?} mask at x={}", xs[i]);
                }
            }
        }
    }

    #[test]
    fn fake_quantize_per_channel_uses_each_channels_qparams() {
        let layout = ChannelLayout {
            outer: 2,
            channels: 3,
            inner: 5,
        };
        let xs: Vec<f32> = (0..30).map(|i| i as f32 * 0.21 - 3.0).collect();
        let (scales, zps) = ([0.1f32, 0.02, 0.5], [0, 5, -3]);
        let (mut out, mut mask) = (vec![0f32; 30], vec![0u8; 30]);
        fake_quantize(&xs, layout, &scales, &zps, -128, 127, &mut out, &mut mask).unwrap();
        for (i, &x) in xs.iter().enumerate() {
            let c = (i / 5) % 3;
            let (w, wm) = reference(x, scales[c], zps[c], -128, 127);
            assert_eq!(w.to_bits(), out[i].to_bits());
            assert_eq!(wm, mask[i]);
        }
        let bad = fake_quantize(
            &xs,
            layout,
            &scales[..2],
            &zps[..2],
            0,
            255,
            &mut out,
            &mut mask,
        );
        assert!(bad.is_err());
    }
}
