//! Grouped convolutions with few channels per group: the engines' kernel table, and the plan
//! every engine's kernel shares (which input dwords each block of 16 (zmm) or 8 (ymm) output
//! channels reads). The driver is `conv::grouped`.

use super::Engine;

#[cfg(target_arch = "x86_64")]
use super::x86_64;

/// Where a block of output channels (16 or 8 lanes) finds its inputs: the window's first input
/// byte in a pixel, its load mask (bytes of the window inside the pixel: the zmm kernel's masked
/// load; the ymm kernels read whole windows, whose bytes past the pixel are never selected), and
/// per K quad the dword each lane takes (the first `lanes` entries).
#[derive(Clone, Debug)]
pub(crate) struct GroupedBlock {
    pub window: usize,
    pub mask: u64,
    pub idx: Vec<[i32; 16]>,
}

/// The input dwords group `g`'s channels start in, and how many K quads every group needs: a
/// group's `cin_g` channels start at byte `g·cin_g` of the pixel and span the dwords
/// `⌊g·cin_g/4⌋ ..= ⌊(g·cin_g + cin_g − 1)/4⌋` (bytes of a neighbouring group in those dwords get
/// weight 0).
fn first_dword(g: usize, cin_g: usize) -> usize {
    g * cin_g / 4
}

/// The K quads of a grouped conv: the most dwords any of its `groups` groups spans.
pub(crate) fn quads(cin_g: usize, groups: usize) -> usize {
    (0..groups)
        .map(|g| (g * cin_g + cin_g - 1) / 4 - first_dword(g, cin_g) + 1)
        .max()
        .unwrap_or(0)
}

/// The blocks of `lanes` (16 or 8) output channels of a grouped conv with `c` input channels
/// per pixel, `cin_g` / `cout_g` channels per group and `cout` outputs (padded to a whole
/// block): lane `o` (group `g`) takes, for quad `q`, the input dword `⌊g·cin_g/4⌋ + q`. None when
/// a block's dwords do not fit one window of `4·lanes` bytes.
pub(crate) fn plan(
    c: usize,
    cin_g: usize,
    cout_g: usize,
    cout: usize,
    lanes: usize,
) -> Option<Vec<GroupedBlock>> {
    if lanes != 16 && lanes != 8 {
        return None;
    }
    if cin_g == 0 || cout_g == 0 || cout % cout_g != 0 || c < cin_g {
        return None;
    }
    let quads = quads(cin_g, cout / cout_g);
    let mut blocks = Vec::new();
    for o0 in (0..cout).step_by(lanes) {
        let d0 = first_dword(o0 / cout_g, cin_g);
        let window = d0 * 4;
        let mut idx = Vec::with_capacity(quads);
        for q in 0..quads {
            let mut idx_q = [0i32; 16];
            for (l, v) in idx_q.iter_mut().enumerate().take(lanes) {
                // padding lanes past cout read a dword of the window (their weights are 0)
                let o = (o0 + l).min(cout - 1);
                let dword = first_dword(o / cout_g, cin_g) + q - d0;
                if dword >= lanes {
                    return None;
                }
                *v = dword as i32;
            }
            idx.push(idx_q);
        }
        let inside = (c - window).min(4 * lanes);
        let mask = if inside >= 64 {
            !0u64
        } else {
            (1u64 << inside) - 1
        };
        blocks.push(GroupedBlock { window, mask, idx });
    }
    Some(blocks)
}

/// Weights for the kernels from `w` (torch's `[cout, cin_g, taps]` int8, zero points 0):
/// `[taps][quads][cout rounded up to 16][4]`, byte `b` of quad `q` of output `o` (group `g`)
/// holding input channel `(⌊g·cin_g/4⌋ + q)·4 + b − g·cin_g` of its group, 0 where that is not
/// one of the group's channels.
pub(crate) fn weights(w: &[i8], cout: usize, cout_g: usize, cin_g: usize, taps: usize) -> Vec<i8> {
    let (quads, coutp) = (quads(cin_g, cout / cout_g), cout.div_ceil(16) * 16);
    let mut out = vec![0i8; taps * quads * coutp * 4];
    for o in 0..cout {
        let g = o / cout_g;
        let skew = g * cin_g - first_dword(g, cin_g) * 4;
        for j in 0..cin_g {
            let (q, b) = ((skew + j) / 4, (skew + j) % 4);
            for t in 0..taps {
                out[((t * quads + q) * coutp + o) * 4 + b] = w[(o * cin_g + j) * taps + t];
            }
        }
    }
    out
}

/// [`weights`] for kernels without 4-way byte dot products (AVX2): per tap, quad and parity
/// (bytes 0, 2 / bytes 1, 3 of each output's dword), i16 pairs `[taps][quads][2][coutp][2]`,
/// so that `vpmaddwd` on the even and odd bytes of the permuted inputs adds all four products.
pub(crate) fn weights_split16(w8: &[i8], taps: usize, quads: usize, coutp: usize) -> Vec<i16> {
    let mut out = vec![0i16; taps * quads * 2 * coutp * 2];
    for t in 0..taps {
        for q in 0..quads {
            for o in 0..coutp {
                let src = &w8[((t * quads + q) * coutp + o) * 4..][..4];
                for parity in 0..2 {
                    let dst = (((t * quads + q) * 2 + parity) * coutp + o) * 2;
                    out[dst] = src[parity] as i16;
                    out[dst + 1] = src[parity + 2] as i16;
                }
            }
        }
    }
    out
}

/// A grouped kernel's weights: the bytes of [`weights`], or their [`weights_split16`] form.
#[derive(Clone, Copy)]
pub(crate) enum GroupedWeights<'a> {
    Bytes(&'a [i8]),
    Split16(&'a [i16]),
}

/// `accumulate(x, taps, step, count, blocks, w, n_taps, acc)`: the exact accumulators of a run
/// of `count` output pixels, `acc[p·coutp + o] = Σ_(t, off) Σ_j x[off + p·step + group(o)·cin_g +
/// j]·w[o][j][t]` (see the x86 kernel).
pub(crate) type GroupedAccumulateFn = fn(
    &[u8],
    &[(usize, usize)],
    usize,
    usize,
    &[GroupedBlock],
    GroupedWeights<'_>,
    usize,
    &mut [i32],
);

/// An engine's grouped kernel: its block width (16 or 8 output channels), the weight form it
/// reads, and its entry.
#[derive(Clone, Copy)]
pub(crate) struct GroupedKernel {
    pub lanes: usize,
    pub split16: bool,
    pub accumulate: GroupedAccumulateFn,
}

/// The grouped-convolution kernel of `engine`, where it has one (else im2col + GEMM runs).
pub(crate) fn grouped_kernel(engine: Engine) -> Option<GroupedKernel> {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if x86_64::has_avx512vnni() => Some(GroupedKernel {
            lanes: 16,
            split16: false,
            accumulate: x86_64::grouped_vnni::accumulate,
        }),
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni if x86_64::has_avxvnni() => Some(GroupedKernel {
            lanes: 8,
            split16: false,
            accumulate: x86_64::grouped_avx2::accumulate_avxvnni,
        }),
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 if x86_64::has_avx2_fma() => Some(GroupedKernel {
            lanes: 8,
            split16: true,
            accumulate: x86_64::grouped_avx2::accumulate_avx2,
        }),
        _ => None,
    }
}
