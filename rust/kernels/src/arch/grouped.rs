//! Grouped convolutions with few channels per group: the engines' kernel table, and the plan
//! every engine's kernel shares (which input dwords each block of 16 output channels reads).
//! The driver is `conv::grouped`.

use super::Engine;

#[cfg(target_arch = "x86_64")]
use super::x86_64;

/// Where 16 output channels find their inputs: the window's first input byte in a pixel, its
/// load mask (bytes inside the pixel), and per K quad the dword each lane takes.
#[derive(Clone, Debug)]
pub(crate) struct GroupedBlock {
    pub window: usize,
    pub mask: u64,
    pub idx: Vec<[i32; 16]>,
}

/// The blocks of a grouped conv with `c` input channels per pixel, `cin_g` / `cout_g` channels
/// per group (`cin_g` a multiple of 4) and `cout` outputs (padded to 16): None when a block's
/// inputs do not fit one 64-byte window.
pub(crate) fn plan(
    c: usize,
    cin_g: usize,
    cout_g: usize,
    cout: usize,
) -> Option<Vec<GroupedBlock>> {
    if cin_g == 0 || cin_g % 4 != 0 || cout_g == 0 || cout % cout_g != 0 || c < cin_g {
        return None;
    }
    let quads = cin_g / 4;
    let mut blocks = Vec::new();
    for o0 in (0..cout).step_by(16) {
        let g0 = o0 / cout_g;
        let window = g0 * cin_g;
        let mut idx = Vec::with_capacity(quads);
        for q in 0..quads {
            let mut lanes = [0i32; 16];
            for (l, v) in lanes.iter_mut().enumerate() {
                // padding lanes past cout read the window's first dword (their weights are 0)
                let o = (o0 + l).min(cout - 1);
                let dword = (o / cout_g) * quads + q - g0 * quads;
                if dword >= 16 {
                    return None;
                }
                *v = dword as i32;
            }
            idx.push(lanes);
        }
        let inside = c - window;
        let mask = if inside >= 64 {
            !0u64
        } else {
            (1u64 << inside) - 1
        };
        blocks.push(GroupedBlock { window, mask, idx });
    }
    Some(blocks)
}

/// Weights for [`accumulate`] from `w` (torch's `[cout, cin_g, taps]` int8, zero points 0):
/// `[taps][quads][cout rounded up to 16][4]`.
pub(crate) fn weights(w: &[i8], cout: usize, cin_g: usize, taps: usize) -> Vec<i8> {
    let (quads, coutp) = (cin_g / 4, cout.div_ceil(16) * 16);
    let mut out = vec![0i8; taps * quads * coutp * 4];
    for o in 0..cout {
        for j in 0..cin_g {
            for t in 0..taps {
                out[((t * quads + j / 4) * coutp + o) * 4 + j % 4] = w[(o * cin_g + j) * taps + t];
            }
        }
    }
    out
}

/// `accumulate(x, taps, step, count, blocks, w, n_taps, acc)`: the exact accumulators of a run
/// of `count` output pixels, `acc[p·coutp + o] = Σ_(t, off) Σ_j x[off + p·step + group(o)·cin_g +
/// j]·w[o][j][t]` (see the x86 kernel).
pub(crate) type GroupedAccumulateFn =
    fn(&[u8], &[(usize, usize)], usize, usize, &[GroupedBlock], &[i8], usize, &mut [i32]);

/// The grouped-convolution kernel of `engine`, where it has one (else im2col + GEMM runs).
pub(crate) fn grouped_kernel(engine: Engine) -> Option<GroupedAccumulateFn> {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if x86_64::has_avx512vnni() => Some(x86_64::grouped_vnni::accumulate),
        _ => None,
    }
}
