//! AVX2 micro-kernel, exact for the full u8 range (docs/numerics.md decision D1): `vpmaddwd` on i16 operands
//! forms i32 sums of two u8×s8 products (at most 2·255·128, far from overflow) — no
//! `vpmaddubsw`, so no i16 saturation and no `reduce_range` needed.
//!
//! The AVX2 family reads activations in their broadcast i16 form (`PackedA::rows_bcast16`:
//! each K group's 4 values as i16, repeated to 32 bytes, built once per GEMM), so `vpmaddwd`
//! takes them straight from memory; each 16-byte quarter of a weight group is sign-extended
//! once (`vpmovsxbw`) and used for all rows of a tile (6 rows, one half-panel at a time).

use std::arch::x86_64::*;

use super::super::tile::{AForm, FusedOut, Panels, TileKernel, NR};

/// The accumulators of an `R`-row 7-bit tile: per row, columns 0-7 and 8-15 (expanded inside
/// the `#[target_feature]` callers).
macro_rules! acc7 {
    ($r:expr, $a:expr, $kp:expr, $w:expr) => {{
        let (a, kp, w) = ($a, $kp, $w);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; $r];
        for g in 0..kp / 4 {
            let w0 = _mm256_loadu_si256(w.add(g * 64) as *const _);
            let w1 = _mm256_loadu_si256(w.add(g * 64 + 32) as *const _);
            for r in 0..$r {
                let av = _mm256_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones);
                acc[r][0] = _mm256_add_epi32(acc[r][0], p0);
                acc[r][1] = _mm256_add_epi32(acc[r][1], p1);
            }
        }
        acc
    }};
}

/// The accumulators of a full 6-row 7-bit tile, the K loop in assembly: 12 accumulators, the
/// broadcast activation, one product and the ones fit the 16 ymm registers only with the
/// weights read as memory operands, which the compiler does not choose (its loop kept two
/// accumulators on the stack and moved registers around). Instructions of the requantizing
/// tile, 3x3 64→64 56², cachegrind: 16.3M → 14.2M a conv (47 per K group, of which 24
/// multiplies): on 4-wide AVX2 cores the loop is no longer issue-bound.
///
/// # Safety
/// AVX2 available; `a` points to 6 rows of `kp` bytes, each at most 127; `w` to `kp*16` bytes;
/// `kp % 4 == 0`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn acc7_6(a: *const u8, kp: usize, w: *const i8) -> [[__m256i; 2]; 6] {
    let z = _mm256_setzero_si256();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let groups = kp / 4;
    if groups > 0 {
        let ones = _mm256_set1_epi16(1);
        std::arch::asm!(
            "2:",
            "vpbroadcastd {a}, dword ptr [{pa}]",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw}]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c00}, {c00}, {t}",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw} + 32]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c01}, {c01}, {t}",
            "vpbroadcastd {a}, dword ptr [{pa} + {kp}]",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw}]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c10}, {c10}, {t}",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw} + 32]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c11}, {c11}, {t}",
            "vpbroadcastd {a}, dword ptr [{pa} + {kp} * 2]",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw}]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c20}, {c20}, {t}",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw} + 32]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c21}, {c21}, {t}",
            "vpbroadcastd {a}, dword ptr [{pb}]",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw}]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c30}, {c30}, {t}",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw} + 32]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c31}, {c31}, {t}",
            "vpbroadcastd {a}, dword ptr [{pb} + {kp}]",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw}]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c40}, {c40}, {t}",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw} + 32]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c41}, {c41}, {t}",
            "vpbroadcastd {a}, dword ptr [{pb} + {kp} * 2]",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw}]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c50}, {c50}, {t}",
            "vpmaddubsw {t}, {a}, ymmword ptr [{pw} + 32]",
            "vpmaddwd {t}, {t}, {ones}",
            "vpaddd {c51}, {c51}, {t}",
            "add {pa}, 4",
            "add {pb}, 4",
            "add {pw}, 64",
            "dec {n}",
            "jnz 2b",
            c00 = inout(ymm_reg) c00,
            c01 = inout(ymm_reg) c01,
            c10 = inout(ymm_reg) c10,
            c11 = inout(ymm_reg) c11,
            c20 = inout(ymm_reg) c20,
            c21 = inout(ymm_reg) c21,
            c30 = inout(ymm_reg) c30,
            c31 = inout(ymm_reg) c31,
            c40 = inout(ymm_reg) c40,
            c41 = inout(ymm_reg) c41,
            c50 = inout(ymm_reg) c50,
            c51 = inout(ymm_reg) c51,
            a = out(ymm_reg) _,
            t = out(ymm_reg) _,
            ones = in(ymm_reg) ones,
            pa = inout(reg) a => _,
            pb = inout(reg) a.add(3 * kp) => _,
            pw = inout(reg) w => _,
            kp = in(reg) kp,
            n = inout(reg) groups => _,
            options(nostack, readonly),
        );
    }
    [
        [c00, c01],
        [c10, c11],
        [c20, c21],
        [c30, c31],
        [c40, c41],
        [c50, c51],
    ]
}

/// Requantizes one row of a 16-column tile (accumulators of columns 0-7 in `$v0`, 8-15 in
/// `$v1`) by a [`FusedOut`] `$f` and stores its first `$f.cols` bytes at `$out`: the output
/// stage's plain rule, `rne(clamp((acc + off + bias)·mult, lo, hi)) + zp`, packed to bytes
/// (exact: the values lie in `[0, 255]` by the clamp bounds). A macro so that it expands inside
/// the caller's `#[target_feature]` function (AVX2 at least): `f.off`, `f.rq.bias`, `f.rq.mult`
/// hold 16 values, `$out` `f.cols ≤ 16` bytes.
macro_rules! store_requant16 {
    ($v0:expr, $v1:expr, $f:expr, $out:expr) => {{
        let f: &FusedOut<'_> = $f;
        let (lo, hi) = (_mm256_set1_ps(f.rq.lo), _mm256_set1_ps(f.rq.hi));
        let zp = _mm256_set1_epi32(f.rq.zp);
        macro_rules! one {
            ($v:expr, $c:expr) => {{
                let v =
                    _mm256_add_epi32($v, _mm256_loadu_si256(f.off.as_ptr().add($c) as *const _));
                let b = _mm256_loadu_ps(f.rq.bias.as_ptr().add($c));
                let m = _mm256_loadu_ps(f.rq.mult.as_ptr().add($c));
                let x = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(v), b), m);
                let x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
                // round half to even (the default rounding mode), then the zero point
                _mm256_add_epi32(_mm256_cvtps_epi32(x), zp)
            }};
        }
        let (q0, q1) = (one!($v0, 0), one!($v1, 8));
        // i32 → i16 → u8 in column order (packs work per 128-bit lane)
        let p16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q0, q1));
        let p8 = _mm_packus_epi16(
            _mm256_castsi256_si128(p16),
            _mm256_extracti128_si256::<1>(p16),
        );
        let out: *mut u8 = $out;
        if f.cols >= 16 {
            _mm_storeu_si128(out as *mut _, p8);
        } else {
            let mut tmp = [0u8; 16];
            _mm_storeu_si128(tmp.as_mut_ptr() as *mut _, p8);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, f.cols);
        }
    }};
}
pub(super) use store_requant16;

pub(crate) const MR: usize = 6;
pub(crate) const NP: usize = 1;
pub(crate) const KERNEL: TileKernel = TileKernel::new(MR, NP, AForm::Bcast16, false, dot);

/// # Safety
/// The CPU supports AVX2; [`TileKernel::dot`] checked the lengths: `p.a16` holds
/// rows*(kp/4)*16 i16, `p.w` one panel of kp*16 bytes, `out` rows*16 i32 (panels == 1).
unsafe fn dot(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, a, w) = (p.kp, p.rows, p.a16, p.w);
    unsafe {
        let (a, w, o) = (a.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        match rows {
            // few rows (GEMV-like, weight-bandwidth bound): all 16 columns in one pass
            1 => tile::<1, 4>(a, kp, w, o, 0),
            2 => tile::<2, 4>(a, kp, w, o, 0),
            3 => tile::<3, 4>(a, kp, w, o, 0),
            // more rows: two passes of 8 columns, 6 rows sharing each widened weight
            _ => {
                for q0 in [0, 2] {
                    match rows {
                        4 => tile::<4, 2>(a, kp, w, o, q0),
                        5 => tile::<5, 2>(a, kp, w, o, q0),
                        _ => tile::<6, 2>(a, kp, w, o, q0),
                    }
                }
            }
        }
    }
}

/// Column quarters `q0 .. q0+Q` (4 columns each) of an `R`-row tile: per K group, each
/// 16-byte quarter of the weight group is sign-extended once (`vpmovsxbw`) and used for all
/// `R` rows, whose broadcast i16 activations `vpmaddwd` takes straight from memory. `R·Q ≤ 12`
/// accumulators, the widened quarter and a product fit the 16 ymm registers; with 6 rows × 2
/// quarters there is one `vpmovsxbw` per 6 `vpmaddwd` (3 rows × 4 quarters: one per 3).
///
/// # Safety
/// The CPU supports AVX2; `a` points to `R` rows of `kp*4` i16 (broadcast form), `w` to
/// `kp*16` bytes, `out` to `R*16` writable i32; `kp % 4 == 0`; `q0 + Q <= 4`.
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize, const Q: usize>(
    a: *const i16,
    kp: usize,
    w: *const i8,
    out: *mut i32,
    q0: usize,
) {
    // acc[r][q]: columns 4(q0+q) .. +3 of row r, as pairs (k0+k1, k2+k3) per column.
    let mut acc = [[_mm256_setzero_si256(); Q]; R];
    let row = kp * 4;
    for g in 0..kp / 4 {
        if Q == 4 {
            // up to 3 rows: one quarter at a time, activations re-read from L1 per quarter
            for q in 0..Q {
                let wq = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    w.add(g * 64 + (q0 + q) * 16) as *const _
                ));
                for r in 0..R {
                    let av = _mm256_loadu_si256(a.add(r * row + g * 16) as *const _);
                    acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(wq, av));
                }
            }
        } else {
            // 4-6 rows: both quarters widened first, each row's activations loaded once
            let mut wq = [_mm256_setzero_si256(); Q];
            for (q, v) in wq.iter_mut().enumerate() {
                *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    w.add(g * 64 + (q0 + q) * 16) as *const _
                ));
            }
            for r in 0..R {
                let av = _mm256_loadu_si256(a.add(r * row + g * 16) as *const _);
                for q in 0..Q {
                    acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(wq[q], av));
                }
            }
        }
    }
    for r in 0..R {
        for q in 0..Q {
            // add the (k0+k1, k2+k3) pairs of each column
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc[r][q]);
            for c in 0..4 {
                *out.add(r * NR + (q0 + q) * 4 + c) = lanes[2 * c].wrapping_add(lanes[2 * c + 1]);
            }
        }
    }
}

/// Rows per tile of the 7-bit kernel.
pub(crate) const MR7: usize = 6;

/// AVX2 micro-kernel for activations in 0..=127 (`PackedA::fits_7bit`): `vpmaddubsw` forms
/// i16 sums of two u8×s8 products, which cannot saturate there (|sum| ≤ 2·127·128 = 32512),
/// `vpmaddwd` with ones widens them to i32 per column and `vpaddd` accumulates: 32 exact MACs
/// per 3 instructions (the exact kernel above needs 2 instructions per 16). Activations are
/// read as plain bytes (one 4-byte broadcast per row and K group), weights as packed; one
/// ymm holds one K group of 8 columns, so a tile is 6 rows × 2 ymm (16 columns).
pub(crate) const KERNEL_7BIT: TileKernel = TileKernel::new(MR7, 1, AForm::Bytes, true, dot_7bit)
    .with_requant(dot_7bit_requant)
    .with_many_rows();

/// # Safety
/// The CPU supports AVX2; [`TileKernel::dot`] checked the lengths (`p.a` rows*kp bytes, `p.w`
/// one panel of kp*16 bytes, `out` rows*16 i32) and that every activation is at most 127.
unsafe fn dot_7bit(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, a, w) = (p.kp, p.rows, p.a, p.w);
    unsafe {
        match rows {
            1 => tile7::<1>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            2 => tile7::<2>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            3 => tile7::<3>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            4 => tile7::<4>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            5 => tile7::<5>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
            _ => tile7::<6>(a.as_ptr(), kp, w.as_ptr(), out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports AVX2; `a` points to `R` rows of `kp` bytes, each at most 127; `w` to
/// `kp*16` bytes; `out` to `R*16` writable i32; `kp % 4 == 0`.
#[target_feature(enable = "avx2")]
unsafe fn tile7<const R: usize>(a: *const u8, kp: usize, w: *const i8, out: *mut i32) {
    let acc = acc7!(R, a, kp, w);
    for r in 0..R {
        _mm256_storeu_si256(out.add(r * NR) as *mut _, acc[r][0]);
        _mm256_storeu_si256(out.add(r * NR + 8) as *mut _, acc[r][1]);
    }
}

/// [`tile7`] requantized by [`FusedOut`] into bytes, rows `f.ld` apart.
///
/// # Safety
/// As [`tile7`]; `f` and `out` as [`TileKernel::dot_requant`] checked them.
#[target_feature(enable = "avx2")]
unsafe fn tile7_rq<const R: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    f: &FusedOut<'_>,
    out: *mut u8,
) {
    if R == 6 {
        let acc = acc7_6(a, kp, w);
        for (r, row) in acc.iter().enumerate() {
            store_requant16!(row[0], row[1], f, out.add(r * f.ld));
        }
        return;
    }
    let acc = acc7!(R, a, kp, w);
    for (r, row) in acc.iter().enumerate() {
        store_requant16!(row[0], row[1], f, out.add(r * f.ld));
    }
}

/// The requantizing entry of [`KERNEL_7BIT`] (see [`FusedOut`]).
///
/// # Safety
/// As [`dot_7bit`], with [`TileKernel::dot_requant`]'s checks.
unsafe fn dot_7bit_requant(p: &Panels<'_>, f: &FusedOut<'_>, out: &mut [u8]) {
    // any number of rows (`with_many_rows`): tiles of MR7 rows, then the remainder
    let (kp, w) = (p.kp, p.w.as_ptr());
    let mut r0 = 0;
    while r0 < p.rows {
        let rows = MR7.min(p.rows - r0);
        // SAFETY: TileKernel::dot_requant checked `a` and `out` for all `p.rows` rows.
        let (a, o) = (p.a.as_ptr().add(r0 * kp), out.as_mut_ptr().add(r0 * f.ld));
        match rows {
            1 => tile7_rq::<1>(a, kp, w, f, o),
            2 => tile7_rq::<2>(a, kp, w, f, o),
            3 => tile7_rq::<3>(a, kp, w, f, o),
            4 => tile7_rq::<4>(a, kp, w, f, o),
            5 => tile7_rq::<5>(a, kp, w, f, o),
            _ => tile7_rq::<6>(a, kp, w, f, o),
        }
        r0 += rows;
    }
}
