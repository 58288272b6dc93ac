//! `pack`: `PackedWeights::new` / `unpack`, `PackedA::from_u8`,
//! `PackedA::quantize_dynamic(_per_row)_on` on every engine, and `choose_qparams_dynamic`.

use ferroquant_kernels::qparams::choose_qparams_dynamic;
use ferroquant_kernels::{Engine, PackedA, PackedWeights};

use crate::input::{Input, HOSTILE_SIZES};
use crate::reference::{self as r, padded_k};
use crate::{assert_same_slice, engines, expect_validity};

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => packed_weights(&mut inp),
        1 => packed_a(&mut inp),
        2 => dynamic(&mut inp),
        _ => qparams(&mut inp),
    }
}

/// Weight scales / zero points: per tensor, per channel, or a wrong number of them.
pub fn weight_qparams(inp: &mut Input, n: usize, bad: u8) -> (Vec<f32>, Vec<i32>) {
    let (ns, nz) = match inp.u8() % 8 {
        0..=2 => (1, 1),
        3..=5 => (n, n),
        _ if inp.chance(bad) => (inp.len_around(n, 255), inp.len_around(n, 128)),
        _ => (n, n),
    };
    let ns = ns.min(1 << 16);
    let nz = nz.min(1 << 16);
    let bad_s = if inp.chance(bad) { 64 } else { 0 };
    let scales = (0..ns).map(|_| inp.scale(bad_s)).collect();
    let bad_z = if inp.chance(bad) { 64 } else { 0 };
    let zps = (0..nz).map(|_| inp.i32_around(-128, 127, bad_z)).collect();
    (scales, zps)
}

/// Whether `PackedWeights::new` must accept these arguments.
pub fn weights_valid(w_len: usize, n: usize, k: usize, scales: &[f32], zps: &[i32]) -> bool {
    n > 0
        && k > 0
        && n.checked_mul(k) == Some(w_len)
        && ((scales.len() == 1 && zps.len() == 1) || (scales.len() == n && zps.len() == n))
        && scales.iter().all(|&s| crate::scale_ok(s))
        && zps.iter().all(|z| (-128..=127).contains(z))
}

/// Checks everything observable about packed weights against the documented layout.
pub fn check_packed_weights(
    p: &PackedWeights,
    w: &[i8],
    n: usize,
    k: usize,
    scales: &[f32],
    zps: &[i32],
) {
    let kp = padded_k(k);
    assert_eq!(
        (p.n(), p.k(), p.kp(), p.panels()),
        (n, k, kp, n.div_ceil(16))
    );
    assert_same_slice(&p.unpack(), w, "unpack(new(w)) == w");
    let per_channel = !(scales.len() == 1 && zps.len() == 1);
    assert_eq!(p.is_per_channel(), per_channel, "is_per_channel");
    let expand = |v: &[i32]| -> Vec<i32> {
        if v.len() == 1 {
            vec![v[0]; n]
        } else {
            v.to_vec()
        }
    };
    let zp_full = expand(zps);
    assert_same_slice(p.zero_points(), &zp_full, "zero_points()");
    let s_full: Vec<u32> = if scales.len() == 1 {
        vec![scales[0].to_bits(); n]
    } else {
        scales.iter().map(|s| s.to_bits()).collect()
    };
    let got_s: Vec<u32> = p.scales().iter().map(|s| s.to_bits()).collect();
    assert_same_slice(&got_s, &s_full, "scales()");
    assert_eq!(p.has_zero_points(), zp_full.iter().any(|&z| z != 0));
    let sums: Vec<i32> = w
        .chunks_exact(k)
        .map(|row| row.iter().map(|&v| v as i32).sum())
        .collect();
    assert_same_slice(p.col_sums(), &sums, "col_sums()");
    // the layout: panel[g*64 + c*4 + t] = W[col0 + c][4g + t], zeros in the padding
    let panels = p.panels();
    let all = p.panel_data(0, panels);
    assert_eq!(all.len(), panels * kp * 16);
    for pi in 0..panels {
        let panel = &all[pi * kp * 16..(pi + 1) * kp * 16];
        for g in 0..kp / 4 {
            for c in 0..16 {
                for t in 0..4 {
                    let (j, kk) = (pi * 16 + c, 4 * g + t);
                    let want = if j < n && kk < k { w[j * k + kk] } else { 0 };
                    assert_eq!(
                        panel[g * 64 + c * 4 + t],
                        want,
                        "panel {pi} g {g} c {c} t {t}"
                    );
                }
            }
        }
        for (c, &cs) in p.panel_col_sums(pi, 1).iter().enumerate() {
            let j = pi * 16 + c;
            assert_eq!(cs, if j < n { sums[j] } else { 0 }, "panel_col_sums");
        }
    }
}

fn packed_weights(inp: &mut Input) {
    let hostile = inp.chance(24);
    let (n, k) = if hostile {
        match inp.u8() % 3 {
            0 => (inp.hostile_size(), inp.size(65)),
            1 => (inp.size(65), inp.hostile_size()),
            _ => (inp.hostile_size(), inp.hostile_size()),
        }
    } else {
        (inp.size(129), inp.size(129))
    };
    let want = n.checked_mul(k).unwrap_or(0).min(1 << 15);
    let len = inp.len_around(want, 24);
    let w = inp.i8_vec(len);
    let sn = if hostile { 1 } else { n };
    let (scales, zps) = weight_qparams(inp, sn, 40);
    let valid = weights_valid(w.len(), n, k, &scales, &zps);
    let res = PackedWeights::new(&w, n, k, &scales, &zps);
    if expect_validity(&res, valid, "PackedWeights::new") {
        check_packed_weights(&res.unwrap(), &w, n, k, &scales, &zps);
    }
}

fn packed_a(inp: &mut Input) {
    let hostile = inp.chance(24);
    let (m, k) = if hostile {
        match inp.u8() % 4 {
            0 => (inp.hostile_size(), inp.size_nonzero(65)),
            1 => (inp.size_nonzero(65), inp.hostile_size()),
            2 => (inp.hostile_size(), inp.hostile_size()),
            // [m, 0] is a valid empty shape, but m row sums cannot be allocated for huge m
            _ => (inp.pick(&HOSTILE_SIZES[..9]), 0),
        }
    } else {
        (inp.size(65), inp.size(129))
    };
    let want = m.checked_mul(k).unwrap_or(0).min(1 << 15);
    let len = inp.len_around(want, 24);
    let a = inp.u8_vec(len);
    let zp = inp.i32_around(0, 255, 24);
    let valid = m.checked_mul(k) == Some(a.len()) && (0..=255).contains(&zp);
    let res = PackedA::from_u8(&a, m, k, zp);
    if k == 0 && m >= 1 << 40 {
        // no machine has the memory: an error (OutOfMemory / TooLarge), never an abort
        assert!(
            res.is_err() || !valid,
            "PackedA::from_u8 with {m} rows of K = 0 succeeded"
        );
        return;
    }
    if !expect_validity(&res, valid, "PackedA::from_u8") {
        return;
    }
    let p = res.unwrap();
    let kp = padded_k(k);
    assert_eq!((p.m(), p.k(), p.kp(), p.zero_point()), (m, k, kp, zp));
    assert!(p.row_zero_points().is_none());
    let mut rows = vec![0u8; m * kp];
    let mut sums = vec![0i32; m];
    for i in 0..m {
        for kk in 0..k {
            rows[i * kp + kk] = a[i * k + kk];
            sums[i] += a[i * k + kk] as i32;
        }
    }
    assert_same_slice(p.rows(0, m), &rows, "PackedA rows");
    assert_same_slice(p.row_sums(), &sums, "PackedA row sums");
    let max = a.iter().copied().max().unwrap_or(0);
    assert_eq!(p.max_value(), max);
    assert_eq!(p.fits_7bit(), max <= 127);
    // the AVX2 form: each K group's 4 values as i16, repeated 4 times
    let b = p.rows_bcast16(0, m);
    assert_eq!(b.len(), m * kp * 4);
    for (gi, g) in rows.chunks_exact(4).enumerate() {
        for rep in 0..4 {
            for t in 0..4 {
                assert_eq!(b[gi * 16 + rep * 4 + t], g[t] as i16, "bcast16 group {gi}");
            }
        }
    }
    if m > 1 {
        let r0 = inp.below(m);
        let cnt = 1 + inp.below(m - r0);
        assert_same_slice(
            p.rows(r0, cnt),
            &rows[r0 * kp..(r0 + cnt) * kp],
            "rows(r0, count)",
        );
    }
}

/// The qmin/qmax of dynamic quantization: the two torch uses, a sub-range of [0, 255], or
/// anything (an error unless inside [0, 255]).
fn dynamic_range(inp: &mut Input) -> (i32, i32) {
    match inp.u8() % 16 {
        0..=6 => (0, 255),
        7..=12 => (0, 127),
        13 => {
            let lo = inp.range_i64(0, 254) as i32;
            (lo, inp.range_i64(lo as i64 + 1, 255) as i32)
        }
        14 => (inp.i32_around(0, 255, 255), inp.i32_around(0, 255, 255)),
        _ => (inp.u32() as i32, inp.u32() as i32),
    }
}

fn dynamic(inp: &mut Input) {
    let per_row = inp.bool();
    let (m, k) = if inp.chance(16) {
        (inp.hostile_size(), inp.size_nonzero(65))
    } else {
        (inp.size(33), inp.size(129))
    };
    let want = m.checked_mul(k).unwrap_or(0).min(1 << 15);
    let len = inp.len_around(want, 16);
    let x = inp.f32_vec_sp(len, 40);
    let (qmin, qmax) = dynamic_range(inp);
    let shape_ok = m.checked_mul(k) == Some(x.len());
    // reference qparams: per tensor over all of x, or per row; NaN/Inf anywhere is an error
    let ref_qps: Option<Vec<_>> = if !shape_ok || !x.iter().all(|v| v.is_finite()) {
        None
    } else if per_row {
        (0..m)
            .map(|i| {
                let (lo, hi) = r::min_max(&x[i * k..(i + 1) * k]).unwrap();
                choose_qparams_dynamic(lo, hi, qmin, qmax).ok()
            })
            .collect()
    } else {
        let (lo, hi) = r::min_max(&x).unwrap();
        choose_qparams_dynamic(lo, hi, qmin, qmax)
            .ok()
            .map(|q| vec![q])
    };
    // activations are packed as u8: the range must be a sub-range of [0, 255]
    let valid = shape_ok && (0 <= qmin && qmin < qmax && qmax <= 255) && ref_qps.is_some();
    let run = |e: Engine| {
        if per_row {
            PackedA::quantize_dynamic_per_row_on(e, &x, m, k, qmin, qmax)
        } else {
            PackedA::quantize_dynamic_on(e, &x, m, k, qmin, qmax).map(|(a, q)| (a, vec![q]))
        }
    };
    let base = run(Engine::Scalar);
    if !per_row && m == 1 {
        // the public per-tensor wrapper is the scalar engine
        let w = PackedA::quantize_dynamic(&x, m, k, qmin, qmax);
        assert_eq!(w.is_ok(), base.is_ok());
    }
    if !expect_validity(&base, valid, "quantize_dynamic (scalar)") {
        for &e in engines() {
            assert!(
                run(e).is_err(),
                "engine {} accepted what scalar rejected",
                e.name()
            );
        }
        return;
    }
    let (a0, q0) = base.unwrap();
    let ref_qps = ref_qps.unwrap();
    assert_eq!(q0, ref_qps, "dynamic qparams vs reference");
    let kp = padded_k(k);
    // the reference quantization: D3 (docs/numerics.md) over 0..=255 with each row's qparams
    let mut rows = vec![0u8; m * kp];
    let mut sums = vec![0i32; m];
    for i in 0..m {
        let q = ref_qps[if per_row { i } else { 0 }];
        for kk in 0..k {
            let v = r::quantize_one(x[i * k + kk], q.scale, q.zero_point, 0, 255);
            rows[i * kp + kk] = v as u8;
            sums[i] += v;
        }
    }
    assert_same_slice(a0.rows(0, m), &rows, "dynamic rows vs reference");
    assert_same_slice(a0.row_sums(), &sums, "dynamic row sums vs reference");
    assert_eq!(a0.max_value(), rows.iter().copied().max().unwrap_or(0));
    if per_row {
        let zps: Vec<i32> = ref_qps.iter().map(|q| q.zero_point).collect();
        assert_eq!(a0.row_zero_points(), Some(&zps[..]));
    } else {
        assert_eq!(a0.zero_point(), ref_qps[0].zero_point);
    }
    for &e in engines() {
        let (a, q) = run(e).unwrap_or_else(|err| panic!("engine {}: {err:?}", e.name()));
        assert_eq!(q, q0, "engine {} qparams", e.name());
        assert_same_slice(a.rows(0, m), a0.rows(0, m), e.name());
        assert_same_slice(a.row_sums(), a0.row_sums(), e.name());
        assert_eq!(a.zero_point(), a0.zero_point());
        assert_eq!(a.row_zero_points(), a0.row_zero_points());
        assert_eq!(a.max_value(), a0.max_value());
    }
}

/// `choose_qparams_dynamic` on any min/max/qmin/qmax: an error for non-finite input or
/// `qmin >= qmax`, else a positive scale and a zero point inside `[qmin, qmax]`.
fn qparams(inp: &mut Input) {
    let lo = inp.f32_any();
    let hi = inp.f32_any();
    let (qmin, qmax) = match inp.u8() % 4 {
        0 => (0, 255),
        1 => (0, 127),
        2 => (inp.i32_around(-128, 255, 128), inp.i32_around(0, 255, 128)),
        _ => (inp.u32() as i32, inp.u32() as i32),
    };
    let valid = lo.is_finite() && hi.is_finite() && qmin < qmax;
    let res = choose_qparams_dynamic(lo, hi, qmin, qmax);
    if expect_validity(&res, valid, "choose_qparams_dynamic") {
        let q = res.unwrap();
        // +inf when (max - min)/(qmax - qmin) exceeds f32::MAX (as FBGEMM's float scale would)
        assert!(q.scale > 0.0, "scale {} for [{lo}, {hi}]", q.scale);
        assert!(
            (qmin..=qmax).contains(&q.zero_point),
            "zero point {} outside [{qmin}, {qmax}]",
            q.zero_point
        );
        assert_eq!(q.scale, q.scale_f64 as f32);
    }
}
