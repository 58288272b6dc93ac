//! Pooling on channels-last u8 activations (quint8).
//!
//! - Max pooling: the max of the integers is the max of the values, so no requantization.
//!   Windows skip the padding, as torch's do.
//! - Average pooling (plain and adaptive): `rne(Σ(q − zp) / divisor + zp)` per window, exact
//!   (integer sums, one f64 division), the qparams unchanged — docs/numerics.md. The caller gives
//!   each axis's windows, so torch's rules (ceil mode, `count_include_pad`, `divisor_override`,
//!   adaptive windows) live in one place, beside the float path that checks them.

use crate::arch::{with_features, Engine, Vectorized};
use crate::conv::ConvGeometry;
use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};
use crate::threading::{for_parts, threads_for};

/// Max pooling of `x` (`[n, d, h, w, c]` u8, channels-last) with `geom` (kernel, stride,
/// padding, dilation; `groups` unused): returns `[n, od, oh, ow, c]` and the output spatial
/// size (floor mode), with torch's rule `padding ≤ kernel / 2`. A window that holds no input
/// element (possible with dilation, e.g. kernel 2, padding 1, dilation 3 on a width of 2) gives
/// 0, as torch.ao's quantized max pooling does.
pub fn max_pool_u8(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    c: usize,
    geom: &ConvGeometry,
) -> Result<(Vec<u8>, [usize; 3])> {
    max_pool_u8_threads(engine, x, n, spatial, c, geom, 1)
}

/// [`max_pool_u8`] on up to `threads` threads, whole output lines each (the same bytes for any
/// count).
pub fn max_pool_u8_threads(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    c: usize,
    geom: &ConvGeometry,
    threads: usize,
) -> Result<(Vec<u8>, [usize; 3])> {
    let numel = checked_numel(&[n, spatial[0], spatial[1], spatial[2], c], "pooling input")?;
    check_len("pooling input", numel, x.len())?;
    for i in 0..3 {
        if geom.padding[i] > geom.kernel[i] / 2 {
            return Err(KernelError::InvalidQParams(format!(
                "pooling padding {:?} must be at most half the kernel {:?}",
                geom.padding, geom.kernel
            )));
        }
    }
    let osp = geom.output_size(spatial)?;
    let out_numel = checked_numel(&[n, osp[0], osp[1], osp[2], c], "pooling output")?;
    let mut out = try_vec(out_numel, 0u8, "the pooling output")?;
    let line = osp[2] * c;
    if out_numel > 0 && line > 0 {
        // a tap of one byte costs about as much as ~16 multiply-adds of a GEMM
        let taps: usize = geom.kernel.iter().product();
        let threads = threads_for(out_numel.saturating_mul(taps).saturating_mul(16), threads);
        for_parts(threads, line, &mut out, &|start, part| {
            with_features(
                engine,
                MaxLines {
                    x,
                    sp: spatial,
                    osp,
                    c,
                    geom,
                    l0: start / line,
                },
                part,
            )
        });
    }
    Ok((out, osp))
}

/// Output lines `l0..` (of `osp[2]` pixels) of a max pool.
struct MaxLines<'a> {
    x: &'a [u8],
    sp: [usize; 3],
    osp: [usize; 3],
    c: usize,
    geom: &'a ConvGeometry,
    l0: usize,
}

impl Vectorized for MaxLines<'_> {
    type Elem = u8;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [u8]) {
        let MaxLines {
            x,
            sp,
            osp,
            c,
            geom,
            l0,
        } = self;
        let inside = |v: isize, n: usize| v >= 0 && (v as usize) < n;
        let mut rows: Vec<usize> = Vec::new();
        let mut taps: Vec<usize> = Vec::new();
        // a full window's taps relative to its first column (rows × kernel columns)
        let mut rel: Vec<usize> = Vec::new();
        let (k2, s2, p2, d2) = (
            geom.kernel[2],
            geom.stride[2],
            geom.padding[2],
            geom.dilation[2],
        );
        let span = k2.saturating_sub(1) * d2;
        for (i, line) in out.chunks_exact_mut(osp[2] * c).enumerate() {
            let l = l0 + i;
            let oh = l % osp[1];
            let od = (l / osp[1]) % osp[0];
            let b = l / (osp[1] * osp[0]);
            rows.clear();
            for kd in 0..geom.kernel[0] {
                let id = (od * geom.stride[0] + kd * geom.dilation[0]) as isize
                    - geom.padding[0] as isize;
                for kh in 0..geom.kernel[1] {
                    let ih = (oh * geom.stride[1] + kh * geom.dilation[1]) as isize
                        - geom.padding[1] as isize;
                    if inside(id, sp[0]) && inside(ih, sp[1]) {
                        rows.push(((b * sp[0] + id as usize) * sp[1] + ih as usize) * sp[2]);
                    }
                }
            }
            rel.clear();
            for &row in &rows {
                for kw in 0..k2 {
                    rel.push((row + kw * d2) * c);
                }
            }
            for (ow, px) in line.chunks_exact_mut(c).enumerate() {
                let iw0 = (ow * s2) as isize - p2 as isize;
                taps.clear();
                if iw0 >= 0 && iw0 as usize + span < sp[2] {
                    // the whole window is inside the row: fixed offsets from its first column
                    let base = iw0 as usize * c;
                    taps.extend(rel.iter().map(|&r| r + base));
                } else {
                    for &row in &rows {
                        for kw in 0..k2 {
                            let iw = iw0 + (kw * d2) as isize;
                            if inside(iw, sp[2]) {
                                taps.push((row + iw as usize) * c);
                            }
                        }
                    }
                }
                max_taps(x, &taps, px);
            }
        }
    }
}

/// `px[i] = max over taps t of x[t + i]` (0 for no taps), 64 channels at a time with the running
/// max in a register across the window (a max stored back per tap would wait on its own store).
#[inline(always)]
fn max_taps(x: &[u8], taps: &[usize], px: &mut [u8]) {
    let c = px.len();
    let mut c0 = 0;
    while c0 + 64 <= c {
        let mut acc = [0u8; 64];
        for &t in taps {
            let s: &[u8; 64] = x[t + c0..t + c0 + 64].try_into().expect("64 bytes");
            for i in 0..64 {
                acc[i] = acc[i].max(s[i]);
            }
        }
        px[c0..c0 + 64].copy_from_slice(&acc);
        c0 += 64;
    }
    if c0 < c {
        let o = &mut px[c0..];
        o.fill(0);
        for &t in taps {
            for (a, &v) in o.iter_mut().zip(&x[t + c0..t + c]) {
                *a = (*a).max(v);
            }
        }
    }
}

/// The windows of an average pool along one spatial axis: output `i` sums input positions
/// `start[i]..end[i]` and contributes `count[i]` to the divisor (the window's size with or
/// without padding: torch's `count_include_pad`). All three have the output's length.
#[derive(Clone, Debug, Default)]
pub struct PoolAxis {
    pub start: Vec<usize>,
    pub end: Vec<usize>,
    pub count: Vec<usize>,
}

impl PoolAxis {
    /// One window covering the whole axis (an axis of size `n` pooled to 1, or a lifted axis).
    pub fn whole(n: usize) -> Self {
        PoolAxis {
            start: vec![0],
            end: vec![n],
            count: vec![n],
        }
    }

    fn check(&self, n: usize, axis: usize) -> Result<()> {
        let o = self.start.len();
        if self.end.len() != o || self.count.len() != o {
            return Err(KernelError::ShapeMismatch {
                what: format!("pooling windows of axis {axis}"),
                expected: format!("start, end and count of one length ({o})"),
                got: format!("{}, {}", self.end.len(), self.count.len()),
            });
        }
        for i in 0..o {
            if self.start[i] > self.end[i] || self.end[i] > n || self.count[i] == 0 {
                return Err(KernelError::InvalidQParams(format!(
                    "pooling window {i} of axis {axis} is {}..{} (divisor count {}) on an axis of {n}",
                    self.start[i], self.end[i], self.count[i]
                )));
            }
        }
        Ok(())
    }
}

/// Average pooling of `x` (`[n, d, h, w, c]` u8, channels-last, zero point `zp`) over the
/// windows `axes` (depth, height, width): `out = clamp(rne(Σ(q − zp) / divisor + zp), qmin,
/// qmax)` with `divisor = divisor_override` or the product of the windows' counts (taps in the
/// padding count as the zero point). Returns `[n, od, oh, ow, c]` and the output spatial size.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool_u8(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    c: usize,
    axes: &[PoolAxis; 3],
    divisor_override: Option<usize>,
    zp: i32,
    qmin: i32,
    qmax: i32,
) -> Result<(Vec<u8>, [usize; 3])> {
    let numel = checked_numel(&[n, spatial[0], spatial[1], spatial[2], c], "pooling input")?;
    check_len("pooling input", numel, x.len())?;
    for (a, ax) in axes.iter().enumerate() {
        ax.check(spatial[a], a)?;
    }
    if divisor_override == Some(0) {
        return Err(KernelError::InvalidQParams(
            "divisor_override must be positive".into(),
        ));
    }
    if !(0..=255).contains(&zp) || qmin > qmax || qmin < 0 || qmax > 255 {
        return Err(KernelError::InvalidQParams(format!(
            "quint8 pooling: zero point {zp} and range [{qmin}, {qmax}] must lie in [0, 255]"
        )));
    }
    let osp = [
        axes[0].start.len(),
        axes[1].start.len(),
        axes[2].start.len(),
    ];
    let out_numel = checked_numel(&[n, osp[0], osp[1], osp[2], c], "pooling output")?;
    // the largest window must keep its i32 sums exact
    let most = axes.iter().map(|a| {
        (0..a.start.len())
            .map(|i| a.end[i] - a.start[i])
            .max()
            .unwrap_or(0)
    });
    let taps = most.fold(1usize, |t, m| t.saturating_mul(m));
    if taps > (i32::MAX as usize) / 256 {
        return Err(KernelError::TooLarge(format!(
            "an average-pooling window of {taps} elements is too large"
        )));
    }
    let mut out = try_vec(out_numel, 0u8, "the pooling output")?;
    if out_numel > 0 && c > 0 {
        with_features(
            engine,
            AvgLines {
                x,
                sp: spatial,
                c,
                axes,
                divisor_override,
                zp,
                qmin,
                qmax,
            },
            &mut out,
        );
    }
    Ok((out, osp))
}

struct AvgLines<'a> {
    x: &'a [u8],
    sp: [usize; 3],
    c: usize,
    axes: &'a [PoolAxis; 3],
    divisor_override: Option<usize>,
    zp: i32,
    qmin: i32,
    qmax: i32,
}

impl Vectorized for AvgLines<'_> {
    type Elem = u8;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [u8]) {
        let AvgLines {
            x,
            sp,
            c,
            axes,
            divisor_override,
            zp,
            qmin,
            qmax,
        } = self;
        let osp = [
            axes[0].start.len(),
            axes[1].start.len(),
            axes[2].start.len(),
        ];
        let mut acc = vec![0i32; c];
        for (l, line) in out.chunks_exact_mut(osp[2] * c).enumerate() {
            let oh = l % osp[1];
            let od = (l / osp[1]) % osp[0];
            let b = l / (osp[1] * osp[0]);
            let (d0, d1) = (axes[0].start[od], axes[0].end[od]);
            let (h0, h1) = (axes[1].start[oh], axes[1].end[oh]);
            for (ow, px) in line.chunks_exact_mut(c).enumerate() {
                let (w0, w1) = (axes[2].start[ow], axes[2].end[ow]);
                acc.fill(0);
                for id in d0..d1 {
                    for ih in h0..h1 {
                        let row = ((b * sp[0] + id) * sp[1] + ih) * sp[2];
                        for iw in w0..w1 {
                            let src = &x[(row + iw) * c..][..c];
                            for (a, &v) in acc.iter_mut().zip(src) {
                                *a += v as i32;
                            }
                        }
                    }
                }
                let inside = ((d1 - d0) * (h1 - h0) * (w1 - w0)) as i32;
                let divisor = divisor_override
                    .unwrap_or(axes[0].count[od] * axes[1].count[oh] * axes[2].count[ow])
                    as f64;
                let base = zp * inside;
                for (o, &a) in px.iter_mut().zip(&acc) {
                    let mean = (a - base) as f64 / divisor;
                    let q = (mean + zp as f64).round_ties_even() as i32;
                    *o = q.clamp(qmin, qmax) as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::available_engines;

    #[test]
    fn max_pool_matches_a_direct_reference_on_every_engine() {
        type Case = ([usize; 3], [usize; 3], [usize; 3], [usize; 3], [usize; 3]);
        let cases: [Case; 4] = [
            ([1, 9, 8], [1, 3, 3], [1, 2, 2], [0, 1, 1], [1, 1, 1]),
            ([1, 7, 7], [1, 2, 2], [1, 2, 2], [0, 0, 0], [1, 1, 1]),
            ([1, 1, 11], [1, 1, 3], [1, 1, 1], [0, 0, 1], [1, 1, 2]),
            ([3, 5, 4], [2, 3, 2], [1, 1, 2], [1, 1, 1], [1, 1, 1]),
        ];
        for (ci, &(sp, kernel, stride, padding, dilation)) in cases.iter().enumerate() {
            for c in [1usize, 3, 16, 17, 64] {
                let geom = ConvGeometry {
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups: 1,
                };
                let n = 2;
                let x: Vec<u8> = (0..n * sp.iter().product::<usize>() * c)
                    .map(|i| ((i * 131 + ci * 7) % 256) as u8)
                    .collect();
                let osp = geom.output_size(sp).unwrap();
                let mut want = Vec::new();
                for b in 0..n {
                    for od in 0..osp[0] {
                        for oh in 0..osp[1] {
                            for ow in 0..osp[2] {
                                for ch in 0..c {
                                    let mut m: Option<u8> = None;
                                    for kd in 0..kernel[0] {
                                        for kh in 0..kernel[1] {
                                            for kw in 0..kernel[2] {
                                                let o = [od, oh, ow];
                                                let k = [kd, kh, kw];
                                                let mut idx = [0usize; 3];
                                                let mut ok = true;
                                                for a in 0..3 {
                                                    let v = (o[a] * stride[a] + k[a] * dilation[a])
                                                        as isize
                                                        - padding[a] as isize;
                                                    ok &= v >= 0 && (v as usize) < sp[a];
                                                    idx[a] = v.max(0) as usize;
                                                }
                                                if ok {
                                                    let p = ((b * sp[0] + idx[0]) * sp[1] + idx[1])
                                                        * sp[2]
                                                        + idx[2];
                                                    let v = x[p * c + ch];
                                                    m = Some(m.map_or(v, |m| m.max(v)));
                                                }
                                            }
                                        }
                                    }
                                    want.push(m.unwrap());
                                }
                            }
                        }
                    }
                }
                for e in available_engines() {
                    let (got, o) = max_pool_u8(e, &x, n, sp, c, &geom).unwrap();
                    assert_eq!(o, osp);
                    assert_eq!(got, want, "case {ci} c {c} {}", e.name());
                }
            }
        }
    }

    #[test]
    fn threaded_max_pool_gives_the_bytes_of_one_thread() {
        let old = crate::threading::set_parallel_min_macs(0);
        let (sp, c) = ([1usize, 23, 19], 70usize);
        let x: Vec<u8> = (0..2 * 23 * 19 * c)
            .map(|i| (i * 131 % 251) as u8)
            .collect();
        let geom = ConvGeometry {
            kernel: [1, 3, 3],
            stride: [1, 2, 2],
            padding: [0, 1, 1],
            dilation: [1, 1, 1],
            groups: 1,
        };
        for e in available_engines() {
            let (one, osp) = max_pool_u8_threads(e, &x, 2, sp, c, &geom, 1).unwrap();
            for t in [2, 3, 5] {
                let (many, o) = max_pool_u8_threads(e, &x, 2, sp, c, &geom, t).unwrap();
                assert_eq!((many, o), (one.clone(), osp), "{} threads {t}", e.name());
            }
        }
        crate::threading::set_parallel_min_macs(old);
    }

    #[test]
    fn bad_pools_are_errors() {
        let geom = ConvGeometry {
            kernel: [1, 2, 2],
            stride: [1, 1, 1],
            padding: [0, 2, 0],
            dilation: [1, 1, 1],
            groups: 1,
        };
        assert!(max_pool_u8(Engine::Scalar, &[0; 16], 1, [1, 4, 4], 1, &geom).is_err());
        let ok = ConvGeometry {
            padding: [0, 0, 0],
            ..geom
        };
        assert!(max_pool_u8(Engine::Scalar, &[0; 15], 1, [1, 4, 4], 1, &ok).is_err());
    }

    #[test]
    fn avg_pool_matches_the_rational_rule_on_every_engine() {
        // windows per axis: (start, end, count); counts past the input stand for padding
        let axes = [
            PoolAxis::whole(1),
            PoolAxis {
                start: vec![0, 0, 1, 3],
                end: vec![1, 2, 4, 5],
                count: vec![2, 3, 3, 3],
            },
            PoolAxis {
                start: vec![0, 2, 4],
                end: vec![2, 4, 6],
                count: vec![2, 2, 3],
            },
        ];
        let sp = [1, 5, 6];
        for c in [1usize, 3, 16, 17, 64] {
            for (zp, divisor) in [(0, None), (7, None), (128, Some(3)), (255, None)] {
                let n = 2;
                let x: Vec<u8> = (0..n * 30 * c)
                    .map(|i| ((i * 89 + c) % 256) as u8)
                    .collect();
                let mut want = Vec::new();
                for b in 0..n {
                    for oh in 0..4 {
                        for ow in 0..3 {
                            for ch in 0..c {
                                let mut s = 0i64;
                                for ih in axes[1].start[oh]..axes[1].end[oh] {
                                    for iw in axes[2].start[ow]..axes[2].end[ow] {
                                        s += x[((b * 5 + ih) * 6 + iw) * c + ch] as i64 - zp as i64;
                                    }
                                }
                                let d =
                                    divisor.unwrap_or(axes[1].count[oh] * axes[2].count[ow]) as i64;
                                // rne(s / d + zp) in exact rationals
                                let num = s + zp as i64 * d;
                                let (q, r) = (num.div_euclid(d), num.rem_euclid(d));
                                let q = if 2 * r > d || (2 * r == d && q % 2 != 0) {
                                    q + 1
                                } else {
                                    q
                                };
                                want.push(q.clamp(2, 250) as u8);
                            }
                        }
                    }
                }
                for e in available_engines() {
                    let (got, o) =
                        avg_pool_u8(e, &x, n, sp, c, &axes, divisor, zp, 2, 250).unwrap();
                    assert_eq!(o, [1, 4, 3]);
                    assert_eq!(got, want, "c {c} zp {zp} {divisor:?} {}", e.name());
                }
            }
        }
    }

    #[test]
    fn bad_avg_pools_are_errors() {
        let whole = || [PoolAxis::whole(1), PoolAxis::whole(2), PoolAxis::whole(2)];
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 4],
            1,
            [1, 2, 2],
            1,
            &whole(),
            None,
            0,
            0,
            255
        )
        .is_ok());
        // input length, window past the axis, zero count, zero divisor, bad zero point
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 3],
            1,
            [1, 2, 2],
            1,
            &whole(),
            None,
            0,
            0,
            255
        )
        .is_err());
        let mut past = whole();
        past[2].end[0] = 3;
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 4],
            1,
            [1, 2, 2],
            1,
            &past,
            None,
            0,
            0,
            255
        )
        .is_err());
        let mut zero = whole();
        zero[1].count[0] = 0;
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 4],
            1,
            [1, 2, 2],
            1,
            &zero,
            None,
            0,
            0,
            255
        )
        .is_err());
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 4],
            1,
            [1, 2, 2],
            1,
            &whole(),
            Some(0),
            0,
            0,
            255
        )
        .is_err());
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 4],
            1,
            [1, 2, 2],
            1,
            &whole(),
            None,
            256,
            0,
            255
        )
        .is_err());
        let mut ragged = whole();
        ragged[2].count.push(1);
        assert!(avg_pool_u8(
            Engine::Scalar,
            &[0; 4],
            1,
            [1, 2, 2],
            1,
            &ragged,
            None,
            0,
            0,
            255
        )
        .is_err());
    }
}
