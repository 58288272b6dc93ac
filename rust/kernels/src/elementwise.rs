//! Elementwise ops on quantized tensors, requantization fused: the residual `add` / `add_relu`
//! of `FloatFunctional` in one pass over u8 data (no float tensors in between), and lookup
//! tables for any function of one 8-bit input (activations such as hardswish, requantization).
//!
//! The arithmetic is exactly the float definition (dequantize each input, add in f32, ReLU,
//! quantize by docs/numerics.md D3), written once and compiled per ISA: every engine gives the
//! same bits as dequantize → add → quantize.

use crate::arch::{with_features, Engine, Vectorized};
use crate::error::{check_len, KernelError, Result};
use crate::qparams::{check_range, check_scale};
use crate::quantize::{quantize_one_8bit, QInt};
use crate::threading::{for_parts, threads_for};

/// One quantized operand: data and per-tensor qparams.
#[derive(Debug, Clone, Copy)]
pub struct QOperand<'a> {
    pub data: &'a [u8],
    pub scale: f32,
    pub zero_point: i32,
}

/// Output qparams and clamp range of a requantizing op.
#[derive(Debug, Clone, Copy)]
pub struct QOutput {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

/// `out = quantize(dequantize(a) + dequantize(b))` (with `relu`, `max(·, 0)` before quantizing),
/// elementwise over equal-length quint8 operands, into quint8 or qint8 `out` clamped to
/// `[qmin, qmax]`: `fl(fl(fl(qa − za)·sa) + fl(fl(qb − zb)·sb))`, then D3.
pub fn add_requant<T: QInt>(
    engine: Engine,
    a: QOperand<'_>,
    b: QOperand<'_>,
    o: QOutput,
    relu: bool,
    out: &mut [T],
) -> Result<()> {
    add_requant_threads(engine, a, b, o, relu, out, 1)
}

/// [`add_requant`] on up to `threads` threads (large tensors only; the same bytes for any
/// count: every element is computed alone).
pub fn add_requant_threads<T: QInt>(
    engine: Engine,
    a: QOperand<'_>,
    b: QOperand<'_>,
    o: QOutput,
    relu: bool,
    out: &mut [T],
    threads: usize,
) -> Result<()> {
    check_len("second operand", a.data.len(), b.data.len())?;
    check_len("output", a.data.len(), out.len())?;
    for (what, q) in [("first", &a), ("second", &b)] {
        if !q.scale.is_finite() || q.scale <= 0.0 {
            return Err(KernelError::InvalidQParams(format!(
                "{what} operand scale must be finite and > 0, got {}",
                q.scale
            )));
        }
        if !(0..=255).contains(&q.zero_point) {
            return Err(KernelError::InvalidQParams(format!(
                "{what} operand zero point {} is outside the quint8 range [0, 255]",
                q.zero_point
            )));
        }
    }
    check_scale(o.scale)?;
    check_range(T::DTYPE, o.qmin as i64, o.qmax as i64, o.zero_point as i64)?;
    if T::DTYPE == crate::qparams::QDtype::QInt32 {
        return Err(KernelError::UnsupportedDtype(
            "add_requant outputs quint8 or qint8".into(),
        ));
    }
    // an element costs about as much as ~64 multiply-adds of a GEMM
    let threads = threads_for(out.len().saturating_mul(64), threads);
    for_parts(threads, 64, out, &|start, part| {
        let end = start + part.len();
        let work = AddLoop {
            a: QOperand {
                data: &a.data[start..end],
                ..a
            },
            b: QOperand {
                data: &b.data[start..end],
                ..b
            },
            o,
            relu,
            _t: std::marker::PhantomData,
        };
        with_features(engine, work, part);
    });
    Ok(())
}

struct AddLoop<'a, T: QInt> {
    a: QOperand<'a>,
    b: QOperand<'a>,
    o: QOutput,
    relu: bool,
    _t: std::marker::PhantomData<T>,
}

impl<T: QInt> Vectorized for AddLoop<'_, T> {
    type Elem = T;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [T]) {
        let AddLoop { a, b, o, relu, .. } = self;
        let inv = 1.0f32 / o.scale;
        let (lo, hi) = (
            (o.qmin - o.zero_point) as f32,
            (o.qmax - o.zero_point) as f32,
        );
        let (sa, sb) = (a.scale, b.scale);
        // torch's dequantization in its vector loops: `fma(q, s, fl(s * -zp))` (NUMERICS §3)
        let (na, nb) = (sa * -(a.zero_point as f32), sb * -(b.zero_point as f32));
        let one = |qa: u8, qb: u8| {
            let v = (qa as f32).mul_add(sa, na) + (qb as f32).mul_add(sb, nb);
            // max(v, 0) that keeps a NaN (as torch.relu), which D3 then maps to the top
            let v = if relu && v < 0.0 { 0.0 } else { v };
            T::from_i32(quantize_one_8bit(v, inv, lo, hi, o.zero_point))
        };
        for ((d, &qa), &qb) in out.iter_mut().zip(a.data).zip(b.data) {
            *d = one(qa, qb);
        }
    }
}

/// `out[i] = table[x[i]]`: any function of one quint8 input (dequantize → activation →
/// quantize, or a requantization) as a 256-entry table computed once per call by the float
/// definition, so the result is that definition's, bit for bit. Plain loops, compiled per ISA.
pub fn lut_u8<T: QInt>(engine: Engine, x: &[u8], table: &[T], out: &mut [T]) -> Result<()> {
    check_len("lookup table", 256, table.len())?;
    check_len("output", x.len(), out.len())?;
    let table: &[T; 256] = table.try_into().expect("length checked");
    with_features(engine, Lut { x, table }, out);
    Ok(())
}

/// Per-channel tables (`BatchNorm`: one function of one quint8 input per channel): `x` is
/// `[outer, channels, inner]` in C order and `out[i] = tables[c(i)][x[i]]` with
/// `c(i) = (i / inner) % channels`; `tables` holds `channels × 256` values.
pub fn lut_u8_per_channel(
    x: &[u8],
    tables: &[u8],
    channels: usize,
    inner: usize,
    out: &mut [u8],
) -> Result<()> {
    check_len("lookup tables", channels.saturating_mul(256), tables.len())?;
    check_len("output", x.len(), out.len())?;
    let run = channels.checked_mul(inner).unwrap_or(0);
    if run == 0 || x.len() % run != 0 {
        return Err(crate::error::KernelError::ShapeMismatch {
            what: "input".into(),
            expected: format!("a multiple of channels × inner = {channels} × {inner}"),
            got: format!("{} values", x.len()),
        });
    }
    for (i, (xb, ob)) in x
        .chunks_exact(inner)
        .zip(out.chunks_exact_mut(inner))
        .enumerate()
    {
        let t = &tables[(i % channels) * 256..][..256];
        for (o, &v) in ob.iter_mut().zip(xb) {
            *o = t[v as usize];
        }
    }
    Ok(())
}

struct Lut<'a, T> {
    x: &'a [u8],
    table: &'a [T; 256],
}

impl<T: QInt> Vectorized for Lut<'_, T> {
    type Elem = T;
    type Out = ();
    #[inline(always)]
    fn run(self, out: &mut [T]) {
        for (o, &v) in out.iter_mut().zip(self.x) {
            *o = self.table[v as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::available_engines;

    #[test]
    fn threaded_add_gives_the_bytes_of_one_thread() {
        let old = crate::threading::set_parallel_min_macs(0);
        let n = 64 * 37 + 11;
        let a: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
        let b: Vec<u8> = (0..n).map(|i| (i * 91 % 253) as u8).collect();
        let qa = QOperand {
            data: &a,
            scale: 0.031,
            zero_point: 7,
        };
        let qb = QOperand {
            data: &b,
            scale: 0.017,
            zero_point: 130,
        };
        let o = QOutput {
            scale: 0.05,
            zero_point: 3,
            qmin: 0,
            qmax: 255,
        };
        for e in available_engines() {
            for relu in [false, true] {
                let mut one = vec![0u8; n];
                add_requant_threads(e, qa, qb, o, relu, &mut one, 1).unwrap();
                for t in [2, 3, 7] {
                    let mut many = vec![0u8; n];
                    add_requant_threads(e, qa, qb, o, relu, &mut many, t).unwrap();
                    assert_eq!(many, one, "{} threads {t} relu {relu}", e.name());
                }
            }
        }
        crate::threading::set_parallel_min_macs(old);
    }

    /// The float definition, step by step (dequantize, add, relu, quantize) on every engine.
    #[test]
    fn per_channel_tables_follow_the_channel_of_each_element() {
        let tables: Vec<u8> = (0..3 * 256)
            .map(|i| ((i / 256) * 10 + (i % 256) % 7) as u8)
            .collect();
        let x: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let mut out = vec![0u8; x.len()];
        lut_u8_per_channel(&x, &tables, 3, 4, &mut out).unwrap();
        for (i, (&o, &v)) in out.iter().zip(&x).enumerate() {
            assert_eq!(o, ((i / 4) % 3 * 10 + v as usize % 7) as u8);
        }
        assert!(lut_u8_per_channel(&x, &tables, 3, 5, &mut out).is_err());
        assert!(lut_u8_per_channel(&x, &tables[..10], 3, 4, &mut out).is_err());
    }

    #[test]
    fn add_equals_dequantize_add_quantize_on_every_engine() {
        let n = 1000;
        let a: Vec<u8> = (0..n).map(|i| ((i * 37 + 5) % 256) as u8).collect();
        let b: Vec<u8> = (0..n).map(|i| ((i * 91 + 17) % 256) as u8).collect();
        for &(sa, za, sb, zb, so, oz) in &[
            (0.05f32, 3, 0.07f32, 200, 0.11f32, 128),
            (0.5, 0, 0.5, 0, 1.0, 0),
            (1e-3, 255, 2.0, 0, 0.3, 17),
        ] {
            for relu in [false, true] {
                for (qmin, qmax) in [(0, 255), (0, 127), (10, 200)] {
                    let inv = 1.0f32 / so;
                    let want: Vec<u8> = a
                        .iter()
                        .zip(&b)
                        .map(|(&x, &y)| {
                            // torch's vector dequantization: fma(q, s, fl(s * -zp))
                            let fx = (x as f32).mul_add(sa, sa * -(za as f32));
                            let fy = (y as f32).mul_add(sb, sb * -(zb as f32));
                            let mut v = fx + fy;
                            if relu {
                                v = v.max(0.0);
                            }
                            let r = (v * inv).round_ties_even() as i64 + oz as i64;
                            r.clamp(qmin as i64, qmax as i64) as u8
                        })
                        .collect();
                    for e in available_engines() {
                        let mut got = vec![0u8; n];
                        add_requant(
                            e,
                            QOperand {
                                data: &a,
                                scale: sa,
                                zero_point: za,
                            },
                            QOperand {
                                data: &b,
                                scale: sb,
                                zero_point: zb,
                            },
                            QOutput {
                                scale: so,
                                zero_point: oz,
                                qmin,
                                qmax,
                            },
                            relu,
                            &mut got,
                        )
                        .unwrap();
                        assert_eq!(got, want, "{} relu {relu} [{qmin}, {qmax}]", e.name());
                    }
                }
            }
        }
    }

    #[test]
    fn lookup_tables_map_every_byte_on_every_engine() {
        let x: Vec<u8> = (0..1000).map(|i| ((i * 131 + 7) % 256) as u8).collect();
        let table: Vec<i8> = (0..256).map(|v| (255 - v) as u8 as i8).collect();
        for e in available_engines() {
            let mut out = vec![0i8; x.len()];
            lut_u8(e, &x, &table, &mut out).unwrap();
            assert!(out.iter().zip(&x).all(|(&o, &v)| o == table[v as usize]));
        }
        let mut out = vec![0i8; x.len()];
        assert!(lut_u8(Engine::Scalar, &x, &table[..255], &mut out).is_err());
    }

    #[test]
    fn bad_operands_are_errors() {
        let a = [1u8, 2];
        let op = |d: &'static [u8], s: f32, z: i32| QOperand {
            data: d,
            scale: s,
            zero_point: z,
        };
        let o = QOutput {
            scale: 0.1,
            zero_point: 0,
            qmin: 0,
            qmax: 255,
        };
        let mut out = [0u8; 2];
        let e = Engine::Scalar;
        assert!(add_requant(e, op(&[1, 2], 0.1, 0), op(&[1], 0.1, 0), o, false, &mut out).is_err());
        assert!(add_requant(
            e,
            op(&[1, 2], f32::NAN, 0),
            op(&[1, 2], 0.1, 0),
            o,
            false,
            &mut out
        )
        .is_err());
        assert!(add_requant(
            e,
            op(&[1, 2], 0.1, 300),
            op(&[1, 2], 0.1, 0),
            o,
            false,
            &mut out
        )
        .is_err());
        let bad = QOutput {
            zero_point: 300,
            ..o
        };
        assert!(add_requant(
            e,
            op(&[1, 2], 0.1, 0),
            op(&[1, 2], 0.1, 0),
            bad,
            false,
            &mut out
        )
        .is_err());
        let _ = a;
    }
}
