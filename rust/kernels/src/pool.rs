//! Max pooling on channels-last u8 activations (quint8: the max of the integers is the max of
//! the values, so no requantization). Windows skip the padding, as torch's do.

use crate::arch::{with_features, Engine, Vectorized};
use crate::conv::ConvGeometry;
use crate::error::{check_len, checked_numel, try_vec, KernelError, Result};

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
    if out_numel > 0 {
        with_features(
            engine,
            MaxLines {
                x,
                sp: spatial,
                osp,
                c,
                geom,
            },
            &mut out,
        );
    }
    Ok((out, osp))
}

struct MaxLines<'a> {
    x: &'a [u8],
    sp: [usize; 3],
    osp: [usize; 3],
    c: usize,
    geom: &'a ConvGeometry,
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
        } = self;
        let inside = |v: isize, n: usize| v >= 0 && (v as usize) < n;
        let mut rows: Vec<usize> = Vec::new();
        for (l, line) in out.chunks_exact_mut(osp[2] * c).enumerate() {
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
            for (ow, px) in line.chunks_exact_mut(c).enumerate() {
                let iw0 = (ow * geom.stride[2]) as isize - geom.padding[2] as isize;
                for &row in &rows {
                    for kw in 0..geom.kernel[2] {
                        let iw = iw0 + (kw * geom.dilation[2]) as isize;
                        if inside(iw, sp[2]) {
                            let src = &x[(row + iw as usize) * c..][..c];
                            for (o, &v) in px.iter_mut().zip(src) {
                                *o = (*o).max(v);
                            }
                        }
                    }
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
}
