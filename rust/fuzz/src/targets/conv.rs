//! `conv`: `conv::PackedConv::new` + `conv::conv_static` (u8 and i8 out) over 1d/2d/3d
//! geometry with groups, stride, padding and dilation, against a direct convolution; hostile
//! geometry (huge kernel, padding, dilation, stride, groups, batch) must be an `Err`.

use ferroquant_kernels::conv::{conv_static, ConvGeometry, PackedConv};
use ferroquant_kernels::quantize::QInt;

use crate::input::Input;
use crate::reference as r;
use crate::targets::pack::weight_qparams;
use crate::{
    assert_same_slice, engines, expect_validity, relu_zp_ok, scale_ok, with_threads, THREADS,
};

/// Multiply-accumulates of the direct reference per call (kept around a millisecond).
const BUDGET: u128 = 1 << 18;
/// Bytes of output + im2col beyond which a call is not made (too slow to fuzz), unless the
/// size arithmetic overflows or the output is absurd (see [`ABSURD_BYTES`]).
const CALL_BYTES: u128 = 1 << 22;
/// Output bytes no machine that runs this has (2 TiB, beyond ASan's largest allocation): the
/// kernel must say `Err` (`TooLarge` / `OutOfMemory`) rather than abort on a failed allocation.
const ABSURD_BYTES: u128 = 1 << 41;

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let dims = 1 + inp.below(3); // conv1d / conv2d / conv3d
    let hostile = inp.chance(32);
    let mut kernel = [1usize; 3];
    let mut stride = [1usize; 3];
    let mut padding = [0usize; 3];
    let mut dilation = [1usize; 3];
    let mut sp = [1usize; 3];
    for i in 3 - dims..3 {
        kernel[i] = 1 + inp.below(if dims == 3 { 3 } else { 5 });
        stride[i] = 1 + inp.below(3);
        padding[i] = inp.below(4);
        dilation[i] = 1 + inp.below(3);
        sp[i] = inp.size([33, 12, 6][dims - 1]);
        if inp.chance(200) {
            // usually at least the kernel span after padding (else the conv is an error)
            let span = dilation[i] * (kernel[i] - 1) + 1;
            sp[i] = sp[i].max(span.saturating_sub(2 * padding[i]));
        }
    }
    let groups = 1 + inp.below(4);
    let wide = inp.chance(40);
    let cin_g = inp.size_nonzero(if wide { 17 } else { 5 });
    let wide = inp.chance(40);
    let cout_g = inp.size_nonzero(if wide { 17 } else { 5 });
    let mut n = if inp.chance(32) { 0 } else { 1 + inp.below(2) };
    // invalid lengths and qparams in one input out of five (each of them rarely)
    let bad: u8 = if inp.chance(52) { 24 } else { 0 };
    let (mut cin, mut cout) = (cin_g * groups, cout_g * groups);
    let mut g = groups;
    if hostile {
        // replace one or two fields by a size no geometry has, or a zero
        for _ in 0..1 + inp.below(2) {
            let v = if inp.chance(40) {
                0
            } else {
                inp.hostile_size()
            };
            let d = inp.below(3);
            match inp.u8() % 9 {
                0 => kernel[d] = v,
                1 => stride[d] = v,
                2 => padding[d] = v,
                3 => dilation[d] = v,
                4 => g = v,
                5 => n = v,
                6 => sp[d] = v,
                7 => cin = v,
                _ => cout = v,
            }
        }
    }
    let geom = ConvGeometry {
        kernel,
        stride,
        padding,
        dilation,
        groups: g,
    };
    // --- PackedConv::new: validity from first principles (checked arithmetic)
    let geom_ok = g >= 1
        && !kernel.contains(&0)
        && !stride.contains(&0)
        && !dilation.contains(&0)
        && cin > 0
        && cout > 0
        && cin % g == 0
        && cout % g == 0;
    let taps = kernel[0]
        .checked_mul(kernel[1])
        .and_then(|t| t.checked_mul(kernel[2]));
    let w_want = taps
        .and_then(|t| t.checked_mul(cin / g.max(1)))
        .and_then(|k| k.checked_mul(cout));
    let w_len = inp.len_around(
        w_want.unwrap_or(0).min(1 << 14),
        if hostile { 0 } else { bad },
    );
    let w = inp.i8_vec(w_len);
    let (scales, zps) = weight_qparams(&mut inp, cout.min(1 << 12), bad);
    let qp_ok = ((scales.len() == 1 && zps.len() == 1)
        || (scales.len() == cout && zps.len() == cout))
        && scales.iter().all(|&s| scale_ok(s))
        && zps.iter().all(|z| (-128..=127).contains(z));
    let pc_valid = geom_ok && w_want == Some(w.len()) && qp_ok;
    let pc = PackedConv::new(&w, cout, cin, geom, &scales, &zps);
    if !expect_validity(&pc, pc_valid, "PackedConv::new") {
        return;
    }
    let pc = pc.unwrap();
    assert_eq!(
        (pc.geometry(), pc.in_channels(), pc.out_channels()),
        (geom, cin, cout)
    );

    // --- conv_static
    let bad: u8 = if hostile { 0 } else { bad };
    let x_want = sp
        .iter()
        .try_fold(n, |acc, &s| acc.checked_mul(s))
        .and_then(|v| v.checked_mul(cin));
    let x_len = inp.len_around(x_want.unwrap_or(0).min(1 << 15), bad);
    let x = inp.u8_vec(x_len);
    let x_zp = inp.i32_around(0, 255, bad);
    let x_scale = inp.scale(bad);
    let out_scale = inp.scale(bad);
    let i8_out = inp.bool();
    let relu = inp.bool();
    let (dmin, dmax) = if i8_out { (-128, 127) } else { (0, 255) };
    let (qmin, qmax) = if inp.chance(200) {
        (dmin, dmax)
    } else {
        let lo = inp.range_i64(dmin as i64, dmax as i64 - 1) as i32;
        (lo, inp.range_i64(lo as i64 + 1, dmax as i64) as i32)
    };
    let out_zp = inp.i32_around(dmin, dmax, bad);
    let bias: Option<Vec<f32>> = if inp.bool() {
        let len = inp.len_around(cout, bad);
        Some(inp.f32_vec_sp(len, 30))
    } else {
        None
    };
    let osp = r::conv_output_size(sp, kernel, stride, padding, dilation);
    let cin_g = cin / g;
    // the work a correct kernel does: output pixels × (im2col row + output row)
    let pixels = osp.and_then(|o| match o {
        Ok(o) => Some(Ok(o.iter().try_fold(n, |a, &s| a.checked_mul(s))?)),
        Err(()) => Some(Err(())),
    });
    let other_ok = x_want == Some(x.len())
        && (0..=255).contains(&x_zp)
        && scale_ok(x_scale)
        && scale_ok(out_scale)
        && (dmin..=dmax).contains(&out_zp)
        && relu_zp_ok(relu, out_zp, qmax)
        && bias.as_ref().is_none_or(|b| b.len() == cout);
    let (geom_valid, absurd, bytes, macs) = match pixels {
        // the size arithmetic overflows: must be an error
        None => (false, true, u128::MAX, u128::MAX),
        // the padded input is shorter than the kernel span
        Some(Err(())) => (false, false, 0, 0),
        Some(Ok(p)) => {
            let k = taps.unwrap() as u128 * cin_g as u128;
            let absurd = p as u128 * cout as u128 >= ABSURD_BYTES;
            let bytes = p as u128 * (k + cout as u128);
            (!absurd, absurd, bytes, p as u128 * k * cout as u128)
        }
    };
    if !absurd && (bytes > CALL_BYTES || macs > BUDGET) {
        // a legitimate but large request (or one rejected only for its qparams): too slow
        return;
    }
    let valid = other_ok && geom_valid;
    let want: Option<Vec<i32>> = valid.then(|| {
        let o = osp.unwrap().unwrap();
        let acc = r::conv_acc(
            &x, n, sp, cin, x_zp, &w, cout, &zps, kernel, stride, padding, dilation, g, o,
        );
        acc.iter()
            .enumerate()
            .map(|(idx, &v)| {
                let c = idx % cout;
                let ws = scales[if scales.len() == 1 { 0 } else { c }];
                let b = bias.as_ref().map(|b| b[c]);
                r::requant(v, x_scale, ws, b, out_scale, out_zp, qmin, qmax, relu)
            })
            .collect()
    });
    let args = Args {
        x: &x,
        n,
        sp,
        x_scale,
        x_zp,
        pc: &pc,
        bias: bias.as_deref(),
        out_scale,
        out_zp,
        qmin,
        qmax,
        relu,
        osp: osp.and_then(|o| o.ok()),
    };
    if i8_out {
        run_conv::<i8>(&args, want.as_deref());
    } else {
        run_conv::<u8>(&args, want.as_deref());
    }
}

struct Args<'a> {
    x: &'a [u8],
    n: usize,
    sp: [usize; 3],
    x_scale: f32,
    x_zp: i32,
    pc: &'a PackedConv,
    bias: Option<&'a [f32]>,
    out_scale: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
    relu: bool,
    osp: Option<[usize; 3]>,
}

fn run_conv<T: QInt + PartialEq + std::fmt::Debug>(a: &Args, want: Option<&[i32]>) {
    for &e in engines() {
        for &t in &THREADS {
            let res = with_threads(t, || {
                conv_static::<T>(
                    e,
                    a.x,
                    a.n,
                    a.sp,
                    a.x_scale,
                    a.x_zp,
                    a.pc,
                    a.bias,
                    a.out_scale,
                    a.out_zp,
                    a.qmin,
                    a.qmax,
                    a.relu,
                    t,
                )
            });
            let what = format!(
                "conv_static<{:?}> {} t{t} geom {:?} n {} sp {:?} cin {} cout {}",
                T::DTYPE,
                e.name(),
                a.pc.geometry(),
                a.n,
                a.sp,
                a.pc.in_channels(),
                a.pc.out_channels()
            );
            if expect_validity(&res, want.is_some(), &what) {
                let (out, osp) = res.unwrap();
                assert_eq!(Some(osp), a.osp, "{what}: output size");
                let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
                assert_same_slice(&got, want.unwrap(), &what);
            }
        }
    }
}
