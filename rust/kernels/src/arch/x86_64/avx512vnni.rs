//! AVX-512 VNNI micro-kernel: `vpdpbusd` on zmm, 8 rows × 48 columns per tile.
//! One zmm holds one K group (4 bytes) of a 16-column panel, which is exactly the packed layout.

use std::arch::x86_64::*;

use super::super::tile::{AForm, FusedOut, Panels, TileKernel, NR};

pub(crate) const MR: usize = 8;
pub(crate) const NP: usize = 3;
pub(crate) const KERNEL: TileKernel = TileKernel::new(MR, NP, AForm::Bytes, false, dot)
    .with_requant(dot_requant::<NP>)
    .with_many_rows();

/// 6 rows × 64 columns: for weights of a multiple of 4 panels but not of 3 (64, 128, 256
/// columns), which [`KERNEL`] would finish with a 1- or 2-panel tile. Per K group it loads 10
/// values for 24 `vpdpbusd` (the 8×48 tile: 11).
pub(crate) const KERNEL_64: TileKernel = TileKernel::new(6, 4, AForm::Bytes, false, dot64)
    .with_requant(dot_requant::<4>)
    .with_many_rows();

/// # Safety
/// The CPU supports AVX-512 VNNI; [`TileKernel::dot`] checked the lengths.
unsafe fn dot64(p: &Panels<'_>, out: &mut [i32]) {
    dot_tiles::<4>(p, out)
}

/// # Safety
/// The CPU supports AVX-512 VNNI; [`TileKernel::dot`] checked the lengths.
unsafe fn dot(p: &Panels<'_>, out: &mut [i32]) {
    dot_tiles::<NP>(p, out)
}

/// The `dot` of a `vpdpbusd` tile kernel with `LD` panels per output row (up to 8 rows, 4
/// panels): one monomorphised tile per row and panel count.
///
/// # Safety
/// The CPU supports AVX-512 VNNI; `p.rows ≤ 8`, `p.panels ≤ LD ≤ 4`, `p.a` holds `rows·kp` bytes,
/// `p.w` `panels·kp·16` bytes and `out` `rows·LD·16` i32 (checked by [`TileKernel::dot`] for a
/// kernel with `np = LD`).
#[inline(always)]
unsafe fn dot_tiles<const LD: usize>(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, a, w, panels) = (p.kp, p.a.as_ptr(), p.w.as_ptr(), p.panels);
    let o = out.as_mut_ptr();
    macro_rules! go {
        ($r:literal) => {
            match panels {
                1 => tile::<$r, 1, LD>(a, kp, w, o),
                2 => tile::<$r, 2, LD>(a, kp, w, o),
                3 if LD >= 3 => tile::<$r, 3, LD>(a, kp, w, o),
                _ if LD >= 4 => tile::<$r, 4, LD>(a, kp, w, o),
                _ => unreachable!("panels ≤ LD (TileKernel::dot)"),
            }
        };
    }
    match p.rows {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        7 => go!(7),
        _ => go!(8),
    }
}

/// # Safety
/// The CPU supports AVX-512F/BW/VNNI; `a` points to `R*kp` readable bytes, `w` to `P*kp*16`
/// bytes, `out` to `R*LD*16` writable i32 (rows `LD*16` apart); `kp % 4 == 0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const P: usize, const LD: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    out: *mut i32,
) {
    let groups = kp / 4;
    let stride = kp * NR;
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for g in 0..groups {
        let mut wv = [_mm512_setzero_si512(); P];
        for p in 0..P {
            wv[p] = _mm512_loadu_si512(w.add(p * stride + g * 64) as *const _);
        }
        for r in 0..R {
            let av = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
            for p in 0..P {
                acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], av, wv[p]);
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            _mm512_storeu_si512(out.add(r * LD * NR + p * NR) as *mut _, acc[r][p]);
        }
    }
}

/// The requantizing entry of a tile kernel with `LD` panels per row (see [`FusedOut`]).
///
/// # Safety
/// The CPU supports AVX-512 VNNI; [`TileKernel::dot_requant`] checked the lengths
/// (`p.panels ≤ LD`).
/// Rows of any count (the kernels are marked `with_many_rows`): tiles of 8 rows (6 for the
/// 4-panel kernel) one after another, then the remainder.
unsafe fn dot_requant<const LD: usize>(p: &Panels<'_>, f: &FusedOut<'_>, out: &mut [u8]) {
    let (kp, w, panels) = (p.kp, p.w.as_ptr(), p.panels);
    let mr = if LD >= 4 { 6 } else { MR };
    let mut r0 = 0;
    while r0 < p.rows {
        let rows = mr.min(p.rows - r0);
        // SAFETY: TileKernel::dot_requant checked `a` (rows·kp bytes) and `out` ((rows − 1)·ld
        // + cols bytes) for all `p.rows` rows; this tile's rows are among them.
        let (a, o) = (p.a.as_ptr().add(r0 * kp), out.as_mut_ptr().add(r0 * f.ld));
        macro_rules! go {
            ($r:literal) => {
                match panels {
                    1 => tile_rq::<$r, 1>(a, kp, w, f, o),
                    2 => tile_rq::<$r, 2>(a, kp, w, f, o),
                    3 if LD >= 3 => tile_rq::<$r, 3>(a, kp, w, f, o),
                    _ if LD >= 4 => tile_rq::<$r, 4>(a, kp, w, f, o),
                    _ => unreachable!("panels ≤ LD (TileKernel::dot_requant)"),
                }
            };
        }
        match rows {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            6 => go!(6),
            7 => go!(7),
            _ => go!(8),
        }
        r0 += rows;
    }
}

/// [`tile`] with the requantization of [`FusedOut`] applied in registers and u8 stores
/// (channels past `f.cols` masked off).
///
/// # Safety
/// As [`tile`]; `f.off`, `f.rq.bias`, `f.rq.mult` hold `P·16` values; `out` holds
/// `(R − 1)·f.ld + f.cols` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_rq<const R: usize, const P: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    f: &FusedOut<'_>,
    out: *mut u8,
) {
    let groups = kp / 4;
    let stride = kp * NR;
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for g in 0..groups {
        let mut wv = [_mm512_setzero_si512(); P];
        for p in 0..P {
            wv[p] = _mm512_loadu_si512(w.add(p * stride + g * 64) as *const _);
        }
        for r in 0..R {
            let av = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
            for p in 0..P {
                acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], av, wv[p]);
            }
        }
    }
    let (lo, hi) = (_mm512_set1_ps(f.rq.lo), _mm512_set1_ps(f.rq.hi));
    let zp = _mm512_set1_epi32(f.rq.zp);
    for p in 0..P {
        let c = p * NR;
        if c >= f.cols {
            break;
        }
        let left = f.cols - c;
        let mask: __mmask16 = if left >= 16 {
            0xFFFF
        } else {
            (1u16 << left) - 1
        };
        let off = _mm512_loadu_si512(f.off.as_ptr().add(c) as *const _);
        let bias = _mm512_loadu_ps(f.rq.bias.as_ptr().add(c));
        let mult = _mm512_loadu_ps(f.rq.mult.as_ptr().add(c));
        for r in 0..R {
            let v = _mm512_add_epi32(acc[r][p], off);
            let x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(v), bias), mult);
            let x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
            // round half to even (the default rounding mode), then the zero point
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(x), zp);
            _mm512_mask_cvtepi32_storeu_epi8(out.add(r * f.ld + c) as *mut _, mask, q);
        }
    }
}

/// How many K groups (64 bytes each per panel) ahead the GEMV prefetches.
const PREFETCH_GROUPS: usize = 16;

pub(crate) const GEMV: TileKernel = TileKernel::new(4, 8, AForm::Bytes, false, gemv_dot);

/// # Safety
/// The CPU supports AVX-512 VNNI; [`TileKernel::dot`] checked the lengths.
unsafe fn gemv_dot(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, panels, a, w) = (p.kp, p.rows, p.panels, p.a, p.w);
    let ld = GEMV.np() * NR;
    let mut p0 = 0;
    while p0 < panels {
        let left = panels - p0;
        // 8 panels for 1-2 rows (8-16 chains), 4 panels for 3-4 rows (12-16 chains)
        let chunk = if left >= 8 && rows <= 2 {
            8
        } else if left >= 4 {
            4
        } else if left >= 2 {
            2
        } else {
            1
        };
        let wp = &w[p0 * kp * NR..(p0 + chunk) * kp * NR];
        let o = &mut out[p0 * NR..];
        // SAFETY: the CPU supports AVX-512 VNNI (the caller's contract); `a` holds rows*kp bytes,
        // `wp` chunk*kp*16 bytes and `o` (rows-1)*ld + chunk*16 i32 from its start
        // (TileKernel::dot checked rows*np*16 in total).
        unsafe {
            macro_rules! go {
                ($r:literal) => {
                    match chunk {
                        8 => gemv::<$r, 8>(a.as_ptr(), kp, wp.as_ptr(), o.as_mut_ptr(), ld),
                        4 => gemv::<$r, 4>(a.as_ptr(), kp, wp.as_ptr(), o.as_mut_ptr(), ld),
                        2 => gemv::<$r, 2>(a.as_ptr(), kp, wp.as_ptr(), o.as_mut_ptr(), ld),
                        _ => gemv::<$r, 1>(a.as_ptr(), kp, wp.as_ptr(), o.as_mut_ptr(), ld),
                    }
                };
            }
            match rows {
                1 => go!(1),
                2 => go!(2),
                3 => go!(3),
                _ => go!(4),
            }
        }
        p0 += chunk;
    }
}

/// # Safety
/// The CPU supports AVX-512F/BW/VNNI; `a` points to `R*kp` bytes, `w` to `P*kp*16` bytes and
/// `out` to a tile whose rows are `ld` i32 apart with `P*16` writable values each; `kp % 4 == 0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv<const R: usize, const P: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    out: *mut i32,
    ld: usize,
) {
    let groups = kp / 4;
    let stride = kp * NR;
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for g in 0..groups {
        let mut av = [_mm512_setzero_si512(); R];
        for r in 0..R {
            av[r] = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
        }
        for p in 0..P {
            // the weights stream from L2/L3: ask for them a few groups ahead
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(p * stride + (g + PREFETCH_GROUPS) * 64));
            let wv = _mm512_loadu_si512(w.add(p * stride + g * 64) as *const _);
            for r in 0..R {
                acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], av[r], wv);
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            _mm512_storeu_si512(out.add(r * ld + p * NR) as *mut _, acc[r][p]);
        }
    }
}
