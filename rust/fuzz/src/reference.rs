//! Naive references, written from the documented rules (docs/numerics.md; quantize.rs D3, requant.rs D2/D7/D8,
//! packed.rs layout, conv/mod.rs geometry), with unpacked operands, i64 accumulation, f64
//! rounding and checked arithmetic. No tiling, no SIMD, no `unsafe`.

/// The quantize rule (docs/numerics.md D3, quantize.rs): `inv = fl(1/scale)`, `v = fl(x·inv)`,
/// NaN → `qmax`, else `clamp(rne(v) + zp, qmin, qmax)` (exact integer arithmetic).
pub fn quantize_one(x: f32, scale: f32, zp: i32, qmin: i32, qmax: i32) -> i32 {
    let inv = 1.0f32 / scale;
    let v = x * inv;
    if v.is_nan() {
        return qmax;
    }
    // any |r| beyond 2^40 saturates the same way
    let r = (v as f64).round_ties_even().clamp(-1e12, 1e12) as i64;
    (r + zp as i64).clamp(qmin as i64, qmax as i64) as i32
}

/// The dequantize rule: `fl(scale · fl(q − zp))`, `q − zp` exact.
pub fn dequantize_one(q: i32, scale: f32, zp: i32) -> f32 {
    ((q as i64 - zp as i64) as f32) * scale
}

/// Min and max of `x` by plain comparisons; `(0, 0)` when empty, `None` with a NaN.
pub fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    if x.is_empty() {
        return Some((0.0, 0.0));
    }
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in x {
        if v.is_nan() {
            return None;
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    Some((lo, hi))
}

/// `acc[i][j] = Σ_k (a[i][k] − za[i])·(w[j][k] − zw[j])` in i64, `a: [m, k]`, `w: [n, k]`,
/// `za` one per row (or one for all), `zw` one per column.
pub fn acc(a: &[u8], m: usize, k: usize, za: &[i32], w: &[i8], n: usize, zw: &[i32]) -> Vec<i64> {
    let mut out = vec![0i64; m * n];
    for i in 0..m {
        let z = if za.len() == 1 { za[0] } else { za[i] } as i64;
        for j in 0..n {
            let mut s = 0i64;
            for kk in 0..k {
                s += (a[i * k + kk] as i64 - z) * (w[j * k + kk] as i64 - zw[j] as i64);
            }
            out[i * n + j] = s;
        }
    }
    out
}

/// `float(acc)` as the kernels form it: the i32 accumulator (the true value must fit).
pub fn acc_f32(acc: i64) -> f32 {
    let a = i32::try_from(acc).expect("reference accumulator does not fit in i32");
    a as f32
}

/// Static requantization (requant.rs, docs/numerics.md "Requantization" / D2, D7), per output element:
/// `atws = fl(xs·ws)`, `mult = fl(atws/os)`, `bq = fl(b/atws)`,
/// `y = clamp(rne(fl(fl(float(acc) + bq)·mult)) + oz, lo, qmax)` with `lo = max(qmin, oz)` under
/// ReLU; a NaN before rounding (only from a NaN bias term) gives `lo`.
pub fn requant(
    acc: i64,
    a_scale: f32,
    w_scale: f32,
    bias: Option<f32>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
) -> i32 {
    let atws = a_scale * w_scale;
    let mult = atws / out_scale;
    let bq = match bias {
        Some(b) => b / atws,
        None => 0.0,
    };
    let v = (acc_f32(acc) + bq) * mult;
    let lo = if relu { qmin.max(out_zp) } else { qmin };
    if v.is_nan() {
        return lo;
    }
    let r = (v as f64).round_ties_even().clamp(-1e12, 1e12) as i64;
    (r + out_zp as i64).clamp(lo as i64, qmax as i64) as i32
}

/// Dynamic-linear output (requant.rs `DequantF32`, docs/numerics.md "Dynamic activation qparams"):
/// `y = fma(float(acc), s, b)` (one rounding; `f32::mul_add` is correctly rounded), `max(y, 0)`
/// with ReLU. `s` is `fl(xs·ws[j])`.
pub fn dequant_f32(acc: i64, s: f32, bias: f32, relu: bool) -> f32 {
    let y = acc_f32(acc).mul_add(s, bias);
    if relu {
        y.max(0.0)
    } else {
        y
    }
}

/// K rounded up to whole groups of 4 (packed.rs).
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Direct convolution accumulators over channels-last `x` `[n, d, h, w, cin]` and torch-layout
/// weights `[cout, cin/g, kd, kh, kw]`: `Σ (x − xz)·(w − wz[o])` over the taps inside the input
/// (padding taps are the zero point, so they add exactly 0). `osp` is the output size.
pub fn conv_acc(
    x: &[u8],
    n: usize,
    sp: [usize; 3],
    cin: usize,
    x_zp: i32,
    w: &[i8],
    cout: usize,
    w_zp: &[i32],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    groups: usize,
    osp: [usize; 3],
) -> Vec<i64> {
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let taps = kernel[0] * kernel[1] * kernel[2];
    let mut out = vec![0i64; n * osp[0] * osp[1] * osp[2] * cout];
    let mut p = 0;
    for b in 0..n {
        for od in 0..osp[0] {
            for oh in 0..osp[1] {
                for ow in 0..osp[2] {
                    for o in 0..cout {
                        let gi = o / cout_g;
                        let zw = w_zp[if w_zp.len() == 1 { 0 } else { o }] as i64;
                        let mut s = 0i64;
                        for kd in 0..kernel[0] {
                            let id = (od * stride[0] + kd * dilation[0]) as i64 - padding[0] as i64;
                            for kh in 0..kernel[1] {
                                let ih =
                                    (oh * stride[1] + kh * dilation[1]) as i64 - padding[1] as i64;
                                for kw in 0..kernel[2] {
                                    let iw = (ow * stride[2] + kw * dilation[2]) as i64
                                        - padding[2] as i64;
                                    if id < 0
                                        || ih < 0
                                        || iw < 0
                                        || id >= sp[0] as i64
                                        || ih >= sp[1] as i64
                                        || iw >= sp[2] as i64
                                    {
                                        continue;
                                    }
                                    let pix = ((b * sp[0] + id as usize) * sp[1] + ih as usize)
                                        * sp[2]
                                        + iw as usize;
                                    let t = (kd * kernel[1] + kh) * kernel[2] + kw;
                                    for c in 0..cin_g {
                                        let xv = x[pix * cin + gi * cin_g + c] as i64 - x_zp as i64;
                                        let wv = w[(o * cin_g + c) * taps + t] as i64 - zw;
                                        s += xv * wv;
                                    }
                                }
                            }
                        }
                        out[p * cout + o] = s;
                    }
                    p += 1;
                }
            }
        }
    }
    out
}

/// The kernels' documented limit on a padded input or a kernel span along one dimension
/// (conv/mod.rs `MAX_EXTENT`): beyond it a conv is an error (`TooLarge`).
pub const CONV_MAX_EXTENT: usize = 1 << 62;

/// Conv output size per dimension with checked arithmetic: `None` if a sum or product overflows
/// or exceeds [`CONV_MAX_EXTENT`], `Some(Err(()))` if the padded input is shorter than the
/// kernel span.
pub fn conv_output_size(
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
) -> Option<Result<[usize; 3], ()>> {
    let mut out = [0usize; 3];
    for i in 0..3 {
        let span = dilation[i]
            .checked_mul(kernel[i].checked_sub(1)?)?
            .checked_add(1)
            .filter(|&v| v <= CONV_MAX_EXTENT)?;
        let padded = input[i]
            .checked_add(padding[i].checked_mul(2)?)
            .filter(|&v| v <= CONV_MAX_EXTENT)?;
        if padded < span {
            return Some(Err(()));
        }
        out[i] = (padded - span) / stride[i] + 1;
    }
    Some(Ok(out))
}
