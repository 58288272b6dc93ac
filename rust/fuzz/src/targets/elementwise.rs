//! `elementwise`: the u8 ops of elementwise.rs and pool.rs — the fused add / add_relu, lookup
//! tables and max pooling — on every engine, against the rules evaluated element by element
//! (valid arguments), and `Err` for invalid ones.

use ferroquant_kernels::conv::ConvGeometry;
use ferroquant_kernels::elementwise::{add_requant, lut_u8, QOperand, QOutput};
use ferroquant_kernels::pool::max_pool_u8;
use ferroquant_kernels::quantize::QInt;
use ferroquant_kernels::QDtype;

use crate::input::Input;
use crate::{assert_same_slice, engines, expect_validity, scale_ok};

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => add::<u8>(&mut inp),
        1 => add::<i8>(&mut inp),
        2 => lut(&mut inp),
        _ => pool(&mut inp),
    }
}

fn add<T: QInt + PartialEq + std::fmt::Debug>(inp: &mut Input) {
    let n = inp.size(300);
    let a = inp.u8_vec(n);
    let b_len = inp.len_around(n, 8);
    let b = inp.u8_vec(b_len);
    let (sa, sb, so) = (inp.scale(16), inp.scale(16), inp.scale(16));
    let (za, zb) = (inp.i32_around(0, 255, 16), inp.i32_around(0, 255, 16));
    let (dmin, dmax) = if T::DTYPE == QDtype::QInt8 {
        (-128, 127)
    } else {
        (0, 255)
    };
    let oz = inp.i32_around(dmin, dmax, 16);
    let (qmin, qmax) = if inp.chance(200) {
        (dmin, dmax)
    } else {
        let lo = inp.i32_around(dmin, dmax, 16);
        (lo, inp.i32_around(dmin, dmax, 16))
    };
    let relu = inp.bool();
    let operand_ok = |s: f32, z: i32| s.is_finite() && s > 0.0 && (0..=255).contains(&z);
    let valid = b_len == n
        && operand_ok(sa, za)
        && operand_ok(sb, zb)
        && scale_ok(so)
        && dmin <= qmin
        && qmin < qmax
        && qmax <= dmax
        && (dmin..=dmax).contains(&oz);
    let o = QOutput {
        scale: so,
        zero_point: oz,
        qmin,
        qmax,
    };
    let qa = QOperand {
        data: &a,
        scale: sa,
        zero_point: za,
    };
    let qb = QOperand {
        data: &b,
        scale: sb,
        zero_point: zb,
    };
    let want: Vec<T> = if valid {
        let inv = 1.0f32 / so;
        a.iter()
            .zip(&b)
            .map(|(&x, &y)| {
                // torch's vector dequantization: fma(q, s, fl(s * -zp))
                let v = (x as f32).mul_add(sa, sa * -(za as f32))
                    + (y as f32).mul_add(sb, sb * -(zb as f32));
                let v = if relu && v < 0.0 { 0.0 } else { v };
                let q = v * inv;
                let r = if q.is_nan() {
                    qmax as i64
                } else {
                    (q as f64).round_ties_even().clamp(-1e12, 1e12) as i64 + oz as i64
                };
                T::from_i32(r.clamp(qmin as i64, qmax as i64) as i32)
            })
            .collect()
    } else {
        Vec::new()
    };
    for &e in engines() {
        let mut out = vec![T::default(); n];
        let r = add_requant(e, qa, qb, o, relu, &mut out);
        if !expect_validity(&r, valid, "add_requant") {
            return;
        }
        assert_same_slice(
            &out,
            &want,
            &format!("add_requant {} relu {relu}", e.name()),
        );
    }
}

fn lut(inp: &mut Input) {
    let n = inp.size(300);
    let x = inp.u8_vec(n);
    let t_len = inp.len_around(256, 8);
    let table = inp.i8_vec(t_len);
    let valid = t_len == 256;
    for &e in engines() {
        let mut out = vec![0i8; n];
        let r = lut_u8(e, &x, &table, &mut out);
        if !expect_validity(&r, valid, "lut_u8") {
            return;
        }
        let want: Vec<i8> = x.iter().map(|&v| table[v as usize]).collect();
        assert_same_slice(&out, &want, &format!("lut_u8 {}", e.name()));
    }
}

fn pool(inp: &mut Input) {
    let n = inp.size(3);
    let c = inp.size(40);
    let sp = [inp.size(4), inp.size(9), inp.size(9)];
    let kernel = [inp.size(3), inp.size(4), inp.size(4)];
    let stride = [inp.size(3), inp.size(3), inp.size(3)];
    let dilation = [inp.size(3), inp.size(3), inp.size(3)];
    let padding = [inp.size(3), inp.size(3), inp.size(3)];
    let geom = ConvGeometry {
        kernel,
        stride,
        padding,
        dilation,
        groups: 1,
    };
    let want_len = n * sp.iter().product::<usize>() * c;
    let len = inp.len_around(want_len, 8);
    let x = inp.u8_vec(len);
    let osp = geom.output_size(sp);
    let valid = len == want_len
        && osp.is_ok()
        && (0..3).all(|i| padding[i] <= kernel[i] / 2)
        && !kernel.contains(&0)
        && !stride.contains(&0)
        && !dilation.contains(&0);
    for &e in engines() {
        let r = max_pool_u8(e, &x, n, sp, c, &geom);
        if !expect_validity(&r, valid, "max_pool_u8") {
            return;
        }
        let (got, o) = r.unwrap();
        let osp = osp.as_ref().unwrap();
        assert_eq!(&o, osp);
        let mut want = Vec::with_capacity(got.len());
        for b in 0..n {
            for od in 0..osp[0] {
                for oh in 0..osp[1] {
                    for ow in 0..osp[2] {
                        for ch in 0..c {
                            let mut m = 0u8;
                            for kd in 0..kernel[0] {
                                for kh in 0..kernel[1] {
                                    for kw in 0..kernel[2] {
                                        let pos = [od, oh, ow];
                                        let k = [kd, kh, kw];
                                        let mut idx = [0usize; 3];
                                        let mut inside = true;
                                        for a in 0..3 {
                                            let v = (pos[a] * stride[a] + k[a] * dilation[a])
                                                as isize
                                                - padding[a] as isize;
                                            inside &= v >= 0 && (v as usize) < sp[a];
                                            idx[a] = v.max(0) as usize;
                                        }
                                        if inside {
                                            let p = ((b * sp[0] + idx[0]) * sp[1] + idx[1]) * sp[2]
                                                + idx[2];
                                            m = m.max(x[p * c + ch]);
                                        }
                                    }
                                }
                            }
                            want.push(m);
                        }
                    }
                }
            }
        }
        assert_same_slice(&got, &want, &format!("max_pool_u8 {}", e.name()));
    }
}
