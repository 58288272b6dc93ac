//! Quantized embedding tables: lookups and bags on every engine equal the specification
//! (`(q − zp) · scale`, rows added in index order) bit for bit; bad arguments are errors.

use ferroquant_kernels::embedding::{embedding_bag, embedding_lookup, BagMode, RowwiseTable};
use ferroquant_kernels::{available_engines, Engine};

mod common;
use common::Rng;

fn value(t: &RowwiseTable, r: usize, j: usize) -> f32 {
    let rb = RowwiseTable::row_bytes_for(t.dim(), t.bits());
    let byte = t.data()[r * rb + if t.bits() == 8 { j } else { j / 2 }];
    let q = if t.bits() == 8 {
        byte
    } else {
        (byte >> ((j % 2) * 4)) & 15
    };
    (q as f32 - t.zero_points()[r]) * t.scales()[r]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn lookups_and_bags_equal_the_spec_on_every_engine() {
    let mut r = Rng(5);
    for &(rows, dim, nbits) in &[
        (7usize, 1usize, 8u32),
        (20, 13, 4),
        (33, 64, 8),
        (50, 17, 4),
        (9, 129, 8),
    ] {
        let rb = RowwiseTable::row_bytes_for(dim, nbits);
        let mut data: Vec<u8> = (0..rows * rb).map(|_| r.next() as u8).collect();
        if nbits == 4 && dim % 2 == 1 {
            for row in 0..rows {
                data[row * rb + rb - 1] &= 0x0f;
            }
        }
        let scales: Vec<f32> = (0..rows).map(|_| 0.001 + r.f32().abs() * 0.1).collect();
        let zps: Vec<f32> = (0..rows).map(|_| r.f32() * 100.0).collect();
        let t = RowwiseTable::new(&data, rows, dim, nbits, &scales, &zps).unwrap();
        let n = 23;
        let idx: Vec<i64> = (0..n).map(|_| (r.next() % rows as u64) as i64).collect();
        let w: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let offsets = [0i64, 3, 3, 10, 22];
        let pad = Some(idx[4]);
        for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
            for weighted in [false, true] {
                if weighted && mode != BagMode::Sum {
                    continue;
                }
                // the specification
                let mut want = vec![0f32; offsets.len() * dim];
                for b in 0..offsets.len() {
                    let s = offsets[b] as usize;
                    let e = offsets.get(b + 1).map_or(n, |&o| o as usize);
                    let dst = &mut want[b * dim..(b + 1) * dim];
                    let mut count = 0;
                    for at in s..e {
                        if Some(idx[at]) == pad {
                            continue;
                        }
                        for (j, o) in dst.iter_mut().enumerate() {
                            let v = value(&t, idx[at] as usize, j);
                            *o = match mode {
                                BagMode::Max if count == 0 => v,
                                BagMode::Max => o.max(v),
                                _ if weighted => *o + w[at] * v,
                                _ => *o + v,
                            };
                        }
                        count += 1;
                    }
                    if mode == BagMode::Mean && count > 0 {
                        dst.iter_mut().for_each(|o| *o /= count as f32);
                    }
                }
                for e in available_engines() {
                    let mut out = vec![0f32; offsets.len() * dim];
                    let psw = if weighted { Some(&w[..]) } else { None };
                    let bags =
                        embedding_bag(e, &t, &idx, &offsets, mode, psw, false, pad, &mut out)
                            .unwrap();
                    assert_eq!(bags, offsets.len());
                    assert_eq!(
                        bits(&out),
                        bits(&want),
                        "{mode:?} {rows}x{dim}x{nbits} {}",
                        e.name()
                    );
                }
            }
        }
        let want: Vec<f32> = idx
            .iter()
            .flat_map(|&i| (0..dim).map(move |j| (i, j)))
            .map(|(i, j)| value(&t, i as usize, j))
            .collect();
        for e in available_engines() {
            let mut out = vec![0f32; n * dim];
            embedding_lookup(e, &t, &idx, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&want), "lookup {}", e.name());
        }
    }
}

#[test]
fn bad_tables_and_bags_are_errors() {
    let e = Engine::Scalar;
    assert!(
        RowwiseTable::new(&[0; 4], 2, 2, 8, &[0.1, 0.0], &[0.0, 0.0]).is_err(),
        "zero scale"
    );
    assert!(
        RowwiseTable::new(&[0; 4], 2, 2, 8, &[0.1, 0.1], &[f32::NAN, 0.0]).is_err(),
        "NaN zp"
    );
    assert!(
        RowwiseTable::new(&[0; 4], 2, 2, 5, &[0.1, 0.1], &[0.0, 0.0]).is_err(),
        "5 bits"
    );
    assert!(
        RowwiseTable::new(&[0; 3], 2, 2, 8, &[0.1, 0.1], &[0.0, 0.0]).is_err(),
        "short data"
    );
    assert!(
        RowwiseTable::new(&[0xf0], 1, 1, 4, &[0.1], &[0.0]).is_err(),
        "junk high nibble"
    );
    let t = RowwiseTable::new(&[1, 2, 3, 4], 2, 2, 8, &[0.1, 0.1], &[0.0, 0.0]).unwrap();
    let mut out = vec![0f32; 4];
    let bag = |idx: &[i64], off: &[i64], out: &mut [f32]| {
        embedding_bag(e, &t, idx, off, BagMode::Sum, None, false, None, out)
    };
    assert!(
        bag(&[0, 2], &[0, 1], &mut out).is_err(),
        "index out of range"
    );
    assert!(bag(&[0, -1], &[0, 1], &mut out).is_err(), "negative index");
    assert!(bag(&[0, 1], &[1, 1], &mut out).is_err(), "offsets[0] != 0");
    assert!(
        bag(&[0, 1], &[0, 3], &mut out).is_err(),
        "offset past the end"
    );
    let mut three = vec![0f32; 6];
    assert!(
        bag(&[0, 1], &[0, 2, 1], &mut three).is_err(),
        "decreasing offsets"
    );
    assert!(embedding_bag(
        e,
        &t,
        &[0],
        &[0],
        BagMode::Mean,
        Some(&[1.0]),
        false,
        None,
        &mut out[..2]
    )
    .is_err());
    assert!(embedding_bag(
        e,
        &t,
        &[0],
        &[],
        BagMode::Sum,
        None,
        true,
        None,
        &mut out[..0]
    )
    .is_err());
    let ok = embedding_bag(
        e,
        &t,
        &[0, 1],
        &[0, 0, 2],
        BagMode::Sum,
        None,
        true,
        None,
        &mut out,
    )
    .unwrap();
    assert_eq!(ok, 2);
    assert_eq!(&out[..2], &[0.0, 0.0], "an empty bag is zeros");
}
