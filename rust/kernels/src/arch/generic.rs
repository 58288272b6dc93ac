//! The portable micro-kernel: plain Rust on the packed layout, always compiled.
//! It is the reference every SIMD kernel is tested against, bit for bit.

use super::tile::{AForm, Panels, TileKernel, KR, NR};

pub(crate) const KERNEL: TileKernel = TileKernel::new(4, 1, AForm::Bytes, false, dot);

/// # Safety
/// None beyond [`TileKernel::dot`]'s length checks (plain Rust, bounds-checked).
unsafe fn dot(p: &Panels<'_>, out: &mut [i32]) {
    let (kp, rows, panels, a, w) = (p.kp, p.rows, p.panels, p.a, p.w);
    let ld = KERNEL.np() * NR;
    for r in 0..rows {
        let arow = &a[r * kp..(r + 1) * kp];
        for p in 0..panels {
            let panel = &w[p * kp * NR..(p + 1) * kp * NR];
            let mut acc = [0i32; NR];
            for (g, ag) in arow.chunks_exact(KR).enumerate() {
                let wg = &panel[g * NR * KR..(g + 1) * NR * KR];
                for (c, wc) in wg.chunks_exact(KR).enumerate() {
                    let mut s = 0i32;
                    for t in 0..KR {
                        s += ag[t] as i32 * wc[t] as i32;
                    }
                    acc[c] = acc[c].wrapping_add(s);
                }
            }
            out[r * ld + p * NR..r * ld + (p + 1) * NR].copy_from_slice(&acc);
        }
    }
}
