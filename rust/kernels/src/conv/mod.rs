//! Quantized convolution (1d/2d/3d as one 3-D case), channels-last, by im2col + the int8 GEMM.
//!
//! Activations are `[N, D, H, W, C]` u8 (conv1d/2d use D = H = 1 / D = 1). Weights arrive in
//! torch's layout `[Cout, Cin/groups, kd, kh, kw]` and are packed once per group as a GEMM
//! `[Cout/groups, kd·kh·kw·Cin/groups]` with K ordered (kd, kh, kw, c) — the order im2col
//! writes a patch of the channels-last input. Padding uses the input zero point, so padded taps
//! contribute exactly `(zp − zp)·w = 0` (NUMERICS §1.4). Output stages are the GEMM's.
//! (A faster direct depthwise kernel and implicit GEMM come with the conv performance work.)

use crate::arch::Engine;
use crate::error::{check_len, KernelError, Result};
use crate::gemm::gemm;
use crate::packed::{PackedA, PackedWeights};
use crate::quantize::QInt;
use crate::requant::Requantize;

/// Geometry of a convolution (spatial dims as (d, h, w); unused dims are 1 / 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl ConvGeometry {
    /// Output spatial size for an input of spatial size `input`.
    pub fn output_size(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for i in 0..3 {
            let span = self.dilation[i] * (self.kernel[i] - 1) + 1;
            let padded = input[i] + 2 * self.padding[i];
            if padded < span {
                return Err(KernelError::ShapeMismatch {
                    what: "convolution input".into(),
                    expected: format!("spatial size ≥ {} (kernel span) after padding", span),
                    got: format!("{} (+ padding {})", input[i], 2 * self.padding[i]),
                });
            }
            out[i] = (padded - span) / self.stride[i] + 1;
        }
        Ok(out)
    }

    fn check(&self) -> Result<()> {
        if self.groups == 0
            || self.kernel.contains(&0)
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
        {
            return Err(KernelError::InvalidQParams(format!(
                "invalid convolution geometry {self:?}: kernel, stride, dilation and groups must be ≥ 1"
            )));
        }
        Ok(())
    }
}

/// Conv weights packed per group for this machine's GEMM kernels.
#[derive(Debug, Clone)]
pub struct PackedConv {
    geom: ConvGeometry,
    cin: usize,
    cout: usize,
    groups: Vec<PackedWeights>,
}

impl PackedConv {
    /// `w`: int8 `[cout, cin/groups, kd, kh, kw]`; `scales` / `zero_points`: length 1 or `cout`.
    pub fn new(
        w: &[i8],
        cout: usize,
        cin: usize,
        geom: ConvGeometry,
        scales: &[f32],
        zero_points: &[i32],
    ) -> Result<Self> {
        geom.check()?;
        let g = geom.groups;
        if cin % g != 0 || cout % g != 0 || cin == 0 || cout == 0 {
            return Err(KernelError::ShapeMismatch {
                what: "convolution channels".into(),
                expected: format!("in and out channels > 0 and divisible by groups = {g}"),
                got: format!("in {cin}, out {cout}"),
            });
        }
        let (cin_g, cout_g) = (cin / g, cout / g);
        let taps: usize = geom.kernel.iter().product();
        let k = taps * cin_g;
        check_len("convolution weight", cout * k, w.len())?;
        let per_channel = scales.len() != 1 || zero_points.len() != 1;
        if per_channel {
            check_len("per-channel weight scales", cout, scales.len())?;
            check_len("per-channel weight zero points", cout, zero_points.len())?;
        }
        let mut groups = Vec::with_capacity(g);
        for gi in 0..g {
            // re-lay [cout_g, cin_g, taps] as [cout_g, taps, cin_g]
            let mut wg = vec![0i8; cout_g * k];
            for o in 0..cout_g {
                let src = &w[(gi * cout_g + o) * k..(gi * cout_g + o + 1) * k];
                for c in 0..cin_g {
                    for t in 0..taps {
                        wg[o * k + t * cin_g + c] = src[c * taps + t];
                    }
                }
            }
            let (s, z) = if per_channel {
                (
                    &scales[gi * cout_g..(gi + 1) * cout_g],
                    &zero_points[gi * cout_g..(gi + 1) * cout_g],
                )
            } else {
                (scales, zero_points)
            };
            groups.push(PackedWeights::new(&wg, cout_g, k, s, z)?);
        }
        Ok(PackedConv {
            geom,
            cin,
            cout,
            groups,
        })
    }

    pub fn geometry(&self) -> ConvGeometry {
        self.geom
    }
    pub fn in_channels(&self) -> usize {
        self.cin
    }
    pub fn out_channels(&self) -> usize {
        self.cout
    }
}

#[allow(clippy::too_many_arguments)]
/// im2col of group `gi` of a channels-last input: one row per output pixel, `taps·cin_g` bytes.
fn im2col(
    x: &[u8],
    n: usize,
    sp: [usize; 3],
    c: usize,
    gi: usize,
    cin_g: usize,
    geom: &ConvGeometry,
    osp: [usize; 3],
    zp: u8,
) -> Vec<u8> {
    let taps: usize = geom.kernel.iter().product();
    let k = taps * cin_g;
    let rows = n * osp[0] * osp[1] * osp[2];
    let mut cols = vec![zp; rows * k];
    let mut r = 0;
    for b in 0..n {
        for od in 0..osp[0] {
            for oh in 0..osp[1] {
                for ow in 0..osp[2] {
                    let row = &mut cols[r * k..(r + 1) * k];
                    let mut t = 0;
                    for kd in 0..geom.kernel[0] {
                        let id = (od * geom.stride[0] + kd * geom.dilation[0]) as isize
                            - geom.padding[0] as isize;
                        for kh in 0..geom.kernel[1] {
                            let ih = (oh * geom.stride[1] + kh * geom.dilation[1]) as isize
                                - geom.padding[1] as isize;
                            for kw in 0..geom.kernel[2] {
                                let iw = (ow * geom.stride[2] + kw * geom.dilation[2]) as isize
                                    - geom.padding[2] as isize;
                                let inside = id >= 0
                                    && ih >= 0
                                    && iw >= 0
                                    && (id as usize) < sp[0]
                                    && (ih as usize) < sp[1]
                                    && (iw as usize) < sp[2];
                                if inside {
                                    let pix = ((b * sp[0] + id as usize) * sp[1] + ih as usize)
                                        * sp[2]
                                        + iw as usize;
                                    let src = &x[pix * c + gi * cin_g..pix * c + (gi + 1) * cin_g];
                                    row[t * cin_g..(t + 1) * cin_g].copy_from_slice(src);
                                }
                                t += 1;
                            }
                        }
                    }
                    r += 1;
                }
            }
        }
    }
    cols
}

/// Static quantized convolution: `x` u8 `[n, d, h, w, cin]` with `(x_scale, x_zp)` → `out`
/// `[n, od, oh, ow, cout]` requantized to `(out_scale, out_zp)`, clamped to `[qmin, qmax]`
/// (raised to `out_zp` with `relu`). Returns the output spatial size.
#[allow(clippy::too_many_arguments)]
pub fn conv_static<T: QInt>(
    engine: Engine,
    x: &[u8],
    n: usize,
    spatial: [usize; 3],
    x_scale: f32,
    x_zp: i32,
    pc: &PackedConv,
    bias: Option<&[f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    threads: usize,
) -> Result<(Vec<T>, [usize; 3])> {
    let geom = pc.geom;
    let (cin, cout, g) = (pc.cin, pc.cout, geom.groups);
    check_len(
        "convolution input",
        n * spatial.iter().product::<usize>() * cin,
        x.len(),
    )?;
    if !(0..=255).contains(&x_zp) {
        return Err(KernelError::InvalidQParams(format!(
            "quint8 input zero point {x_zp} is outside [0, 255]"
        )));
    }
    if let Some(b) = bias {
        check_len("bias", cout, b.len())?;
    }
    let osp = geom.output_size(spatial)?;
    let pixels = n * osp[0] * osp[1] * osp[2];
    let (cin_g, cout_g) = (cin / g, cout / g);
    let mut out = vec![T::default(); pixels * cout];
    let mut tmp = if g > 1 {
        vec![T::default(); pixels * cout_g]
    } else {
        Vec::new()
    };
    for (gi, pw) in pc.groups.iter().enumerate() {
        let cols = im2col(x, n, spatial, cin, gi, cin_g, &geom, osp, x_zp as u8);
        let a = PackedA::from_u8(&cols, pixels, pw.k(), x_zp)?;
        let b = bias.map(|b| &b[gi * cout_g..(gi + 1) * cout_g]);
        let stage = Requantize::<T>::new(x_scale, pw, b, out_scale, out_zp, qmin, qmax, relu)?;
        if g == 1 {
            gemm(engine, &a, pw, &stage, &mut out, threads)?;
        } else {
            gemm(engine, &a, pw, &stage, &mut tmp, threads)?;
            for (dst, src) in out.chunks_exact_mut(cout).zip(tmp.chunks_exact(cout_g)) {
                dst[gi * cout_g..(gi + 1) * cout_g].copy_from_slice(src);
            }
        }
    }
    Ok((out, osp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::available_engines;

    /// Direct reference: exact integer conv on NCDHW-free indexing, then the same requant.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[u8],
        n: usize,
        sp: [usize; 3],
        cin: usize,
        w: &[i8],
        cout: usize,
        geom: &ConvGeometry,
        zp: i32,
    ) -> Vec<i64> {
        let osp = geom.output_size(sp).unwrap();
        let (g, cin_g, cout_g) = (geom.groups, cin / geom.groups, cout / geom.groups);
        let taps: usize = geom.kernel.iter().product();
        let mut out = vec![0i64; n * osp.iter().product::<usize>() * cout];
        let mut p = 0;
        for b in 0..n {
            for od in 0..osp[0] {
                for oh in 0..osp[1] {
                    for ow in 0..osp[2] {
                        for o in 0..cout {
                            let gi = o / cout_g;
                            let mut s = 0i64;
                            for c in 0..cin_g {
                                for kd in 0..geom.kernel[0] {
                                    for kh in 0..geom.kernel[1] {
                                        for kw in 0..geom.kernel[2] {
                                            let id = (od * geom.stride[0] + kd * geom.dilation[0])
                                                as isize
                                                - geom.padding[0] as isize;
                                            let ih = (oh * geom.stride[1] + kh * geom.dilation[1])
                                                as isize
                                                - geom.padding[1] as isize;
                                            let iw = (ow * geom.stride[2] + kw * geom.dilation[2])
                                                as isize
                                                - geom.padding[2] as isize;
                                            if id < 0
                                                || ih < 0
                                                || iw < 0
                                                || id as usize >= sp[0]
                                                || ih as usize >= sp[1]
                                                || iw as usize >= sp[2]
                                            {
                                                continue;
                                            }
                                            let pix = ((b * sp[0] + id as usize) * sp[1]
                                                + ih as usize)
                                                * sp[2]
                                                + iw as usize;
                                            let xv =
                                                x[pix * cin + gi * cin_g + c] as i64 - zp as i64;
                                            let t =
                                                (kd * geom.kernel[1] + kh) * geom.kernel[2] + kw;
                                            s += xv * w[(o * cin_g + c) * taps + t] as i64;
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
        let _ = g;
        out
    }

    #[test]
    fn conv_matches_direct_reference_on_every_engine() {
        let cases = [
            // (n, spatial, cin, cout, kernel, stride, padding, dilation, groups)
            (
                1,
                [1, 5, 5],
                3,
                4,
                [1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                [1, 1, 1],
                1,
            ),
            (
                2,
                [1, 7, 6],
                4,
                6,
                [1, 3, 2],
                [1, 2, 1],
                [0, 1, 0],
                [1, 1, 2],
                2,
            ),
            (
                1,
                [1, 6, 6],
                5,
                5,
                [1, 3, 3],
                [1, 1, 1],
                [0, 2, 2],
                [1, 2, 2],
                5,
            ), // depthwise, dilated
            (
                1,
                [1, 1, 9],
                3,
                2,
                [1, 1, 4],
                [1, 1, 2],
                [0, 0, 1],
                [1, 1, 1],
                1,
            ), // conv1d
            (
                1,
                [3, 4, 4],
                2,
                3,
                [2, 2, 2],
                [1, 1, 1],
                [1, 0, 1],
                [1, 1, 1],
                1,
            ), // conv3d
        ];
        for (ci, &(n, sp, cin, cout, kernel, stride, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let geom = ConvGeometry {
                kernel,
                stride,
                padding,
                dilation,
                groups,
            };
            let taps: usize = kernel.iter().product();
            let x: Vec<u8> = (0..n * sp.iter().product::<usize>() * cin)
                .map(|i| ((i * 37 + ci * 11) % 256) as u8)
                .collect();
            let w: Vec<i8> = (0..cout * cin / groups * taps)
                .map(|i| ((i * 53 + 7) % 255) as i32 as i8)
                .collect();
            let pc = PackedConv::new(&w, cout, cin, geom, &[1.0], &[0]).unwrap();
            let want = reference(&x, n, sp, cin, &w, cout, &geom, 9);
            let mut base: Option<Vec<i8>> = None;
            for e in available_engines() {
                // multiplier 1/64 and a wide output range keep the comparison exact
                let (got, _) = conv_static::<i8>(
                    e, &x, n, sp, 1.0, 9, &pc, None, 64.0, 0, -128, 127, false, 1,
                )
                .unwrap();
                for (g, &v) in got.iter().zip(&want) {
                    let expect = ((v as f64) / 64.0).round_ties_even().clamp(-128.0, 127.0) as i8;
                    assert!(
                        (*g as i32 - expect as i32).abs() <= 1,
                        "case {ci} engine {}",
                        e.name()
                    );
                }
                match &base {
                    None => base = Some(got),
                    Some(b) => assert_eq!(b, &got, "case {ci}: engine {} differs", e.name()),
                }
            }
        }
    }

    #[test]
    fn bad_geometry_and_shapes_are_errors() {
        let geom = ConvGeometry {
            kernel: [1, 3, 3],
            stride: [1, 1, 1],
            padding: [0; 3],
            dilation: [1; 3],
            groups: 2,
        };
        assert!(PackedConv::new(&[0; 27], 3, 3, geom, &[1.0], &[0]).is_err()); // channels not divisible
        let geom1 = ConvGeometry { groups: 1, ..geom };
        let pc = PackedConv::new(&[0; 27], 1, 3, geom1, &[1.0], &[0]).unwrap();
        assert!(conv_static::<u8>(
            Engine::Scalar,
            &[0; 12],
            1,
            [1, 2, 2],
            1.0,
            0,
            &pc,
            None,
            1.0,
            0,
            0,
            255,
            false,
            1
        )
        .is_err());
    }
}
