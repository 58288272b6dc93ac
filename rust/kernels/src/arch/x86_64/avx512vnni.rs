//! AVX-512 VNNI micro-kernel: `vpdpbusd` on zmm, 8 rows × 32 columns per tile.
//! One zmm holds one K group (4 bytes) of a 16-column panel, which is exactly the packed layout.

use std::arch::x86_64::*;

use super::super::{check_dot_args, TileKernel};
use crate::packed::NR;

pub(crate) const MR: usize = 8;
pub(crate) const NP: usize = 2;
pub(crate) const KERNEL: TileKernel = TileKernel {
    mr: MR,
    np: NP,
    dot,
};

fn dot(a: &[u8], kp: usize, rows: usize, w: &[i8], _csum: &[i32], panels: usize, out: &mut [i32]) {
    check_dot_args(&KERNEL, a, kp, rows, w, panels, out);
    assert!(
        super::has_avx512vnni(),
        "avx512vnni kernel called on a CPU without AVX-512 VNNI"
    );
    // SAFETY: the CPU features were checked above; check_dot_args proved that `a` holds
    // `rows*kp` bytes, `w` holds `panels*kp*16` bytes and `out` holds `rows*NP*16` i32.
    unsafe {
        match rows {
            1 => tile::<1>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            2 => tile::<2>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            3 => tile::<3>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            4 => tile::<4>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            5 => tile::<5>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            6 => tile::<6>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            7 => tile::<7>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
            _ => tile::<8>(a.as_ptr(), kp, w.as_ptr(), panels, out.as_mut_ptr()),
        }
    }
}

/// # Safety
/// The CPU supports AVX-512F/BW/VNNI; `a` points to `R*kp` readable bytes, `w` to
/// `panels*kp*16` bytes (`panels` is 1 or 2), `out` to `R*NP*16` writable i32; `kp % 4 == 0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize>(
    a: *const u8,
    kp: usize,
    w: *const i8,
    panels: usize,
    out: *mut i32,
) {
    let groups = kp / 4;
    let stride = kp * NR;
    let mut acc0 = [_mm512_setzero_si512(); R];
    let mut acc1 = [_mm512_setzero_si512(); R];
    if panels == 2 {
        for g in 0..groups {
            let w0 = _mm512_loadu_si512(w.add(g * 64) as *const _);
            let w1 = _mm512_loadu_si512(w.add(stride + g * 64) as *const _);
            for r in 0..R {
                let av = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
                acc0[r] = _mm512_dpbusd_epi32(acc0[r], av, w0);
                acc1[r] = _mm512_dpbusd_epi32(acc1[r], av, w1);
            }
        }
    } else {
        for g in 0..groups {
            let w0 = _mm512_loadu_si512(w.add(g * 64) as *const _);
            for r in 0..R {
                let av = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
                acc0[r] = _mm512_dpbusd_epi32(acc0[r], av, w0);
            }
        }
    }
    for r in 0..R {
        _mm512_storeu_si512(out.add(r * NP * NR) as *mut _, acc0[r]);
        _mm512_storeu_si512(out.add(r * NP * NR + NR) as *mut _, acc1[r]);
    }
}

/// GEMV-shaped calls (1..=4 rows): memory-bound, so stream each weight byte once while keeping
/// enough independent `vpdpbusd` chains in flight — up to 8 panels (128 columns) per pass.
/// How many K groups (64 bytes each per panel) ahead the GEMV prefetches.
const PREFETCH_GROUPS: usize = 16;

pub(crate) const GEMV: TileKernel = TileKernel { mr: 4, np: 8, dot: gemv_dot };

fn gemv_dot(a: &[u8], kp: usize, rows: usize, w: &[i8], _csum: &[i32], panels: usize, out: &mut [i32]) {
    check_dot_args(&GEMV, a, kp, rows, w, panels, out);
    assert!(super::has_avx512vnni(), "avx512vnni kernel called on a CPU without AVX-512 VNNI");
    let ld = GEMV.np * NR;
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
        // SAFETY: features checked above; `a` holds rows*kp bytes, `wp` chunk*kp*16 bytes and
        // `o` holds (rows-1)*ld + chunk*16 i32 from its start (check_dot_args: rows*np*16 total).
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
unsafe fn gemv<const R: usize, const P: usize>(a: *const u8, kp: usize, w: *const i8, out: *mut i32, ld: usize) {
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
