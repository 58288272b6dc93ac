//! The portable micro-kernel: plain Rust on the packed layout, always compiled.
//! It is the reference every SIMD kernel is tested against, bit for bit.

use super::{check_dot_args, TileKernel};
use crate::packed::{PackedA, PackedWeights, KR, NR};

pub(crate) const KERNEL: TileKernel = TileKernel { mr: 4, np: 1, dot };

fn dot(
    pa: &PackedA,
    r0: usize,
    rows: usize,
    pw: &PackedWeights,
    p0: usize,
    panels: usize,
    out: &mut [i32],
) {
    check_dot_args(&KERNEL, pa, r0, rows, pw, p0, panels, out);
    let (kp, a) = (pa.kp(), pa.rows(r0, rows));
    let w = pw.panel_data(p0, panels);
    let ld = KERNEL.np * NR;
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
