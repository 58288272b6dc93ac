//! The engines' depthwise-convolution kernels (the driver is `conv::depthwise`).

use super::Engine;

#[cfg(target_arch = "aarch64")]
use super::aarch64;
#[cfg(target_arch = "x86_64")]
use super::x86_64;

/// An engine's depthwise kernel for runs of output pixels whose taps are all inside the input,
/// for channel counts `c` with `done(c) == c`: `run(x, offs, step, count, wp, init, c, acc)`
/// sets `acc[p·c + ch] = init[ch] + Σ_t x[offs[t] + p·step + ch]·w[t][ch]` for `p < count`, with
/// `wp = prepare(w, taps, c)` from the centered weights `w` (`[taps][c]`, i16). Exact integers:
/// the same as the portable loop.
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseKernel {
    pub done: fn(usize) -> usize,
    pub prepare: fn(&[i16], usize, usize) -> Vec<i16>,
    pub run: DepthwiseRunFn,
}

/// `run(x, offs, step, count, wp, init, c, acc)`, see [`DepthwiseKernel`].
pub(crate) type DepthwiseRunFn =
    fn(&[u8], &[usize], usize, usize, &[i16], &[i32], usize, &mut [i32]);

/// The depthwise kernel of `engine`, where it has one (else the portable loop runs).
pub(crate) fn depthwise_kernel(engine: Engine) -> Option<DepthwiseKernel> {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if x86_64::has_avx512vnni() => Some(DepthwiseKernel {
            done: x86_64::depthwise::channels_done,
            prepare: x86_64::depthwise::pair_weights_avx512,
            run: x86_64::depthwise::run_avx512,
        }),
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni | Engine::Avx2 if x86_64::has_avx2_fma() => Some(DepthwiseKernel {
            done: x86_64::depthwise::channels_done,
            prepare: x86_64::depthwise::pair_weights_avx2,
            run: x86_64::depthwise::run_avx2,
        }),
        #[cfg(target_arch = "aarch64")]
        Engine::Neon | Engine::NeonDotprod => Some(DepthwiseKernel {
            done: aarch64::depthwise::channels_done,
            prepare: aarch64::depthwise::prepare,
            run: aarch64::depthwise::run,
        }),
        _ => None,
    }
}

/// Where one line of output pixels reads an engine's column buffers (see
/// [`DepthwiseLineKernel`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LineGeometry {
    /// Channels, and kernel columns.
    pub c: usize,
    pub kw: usize,
    /// Column step between output pixels (stride) and between kernel columns (dilation).
    pub stride: usize,
    pub dilation: usize,
    /// Output pixels.
    pub count: usize,
}

/// The plain requantization rule as data for a line kernel: `rne(clamp((acc + bias[ch])·
/// mult[ch], lo, hi)) + zp` (the `Requantize` stage's plain rule; `bias` and `mult` padded to
/// the kernel's column stride).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlainRequant<'a> {
    pub bias: &'a [f32],
    pub mult: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub zp: i32,
}

/// An engine's depthwise kernel for whole lines of output pixels, borders included: the kernel
/// rows a line reads are interleaved four at a time into column buffers ("quads", zero points
/// where a column or row is outside the input), then every pixel accumulates from them.
///
/// - `column_stride(c)`: channels per buffer column;
/// - `weights(w, rows, kw, c)`: the kernel's weights from centered weights (`[rows·kw][c]`,
///   i16), `None` where this kernel cannot take them (then [`DepthwiseKernel`] runs);
/// - `build_quad(rows, c, lead, zx, buf)`: one quad from four input rows (`None`: all zero
///   point), buffer column `col` = input column `col − lead`; returns the OR of the bytes it
///   wrote (the AVX-512 kernel returns 0: its products are exact for any byte);
/// - `accumulate(quads, geometry, weights, init, wide, acc)`: `acc[p·cs + ch] = init[ch] + Σ`
///   over every tap, `cs = column_stride(c)`; `wide`: some quad byte is above 127 (the OR
///   `build_quad` returned). Exact integers, as the portable loop;
/// - `accumulate_requant(quads, geometry, weights, init, wide, rq, out)`: the same
///   accumulators requantized by `rq` straight from registers into bytes `out[p·c + ch]`.
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseLineKernel {
    pub column_stride: fn(usize) -> usize,
    pub weights: LineWeightsFn,
    pub build_quad: BuildQuadFn,
    pub accumulate: AccumulateLineFn,
    pub accumulate_requant: AccumulateRequantFn,
}

/// `weights(w, rows, kw, c)`, see [`DepthwiseLineKernel`].
pub(crate) type LineWeightsFn = fn(&[i16], usize, usize, usize) -> Option<Vec<i8>>;
/// `build_quad(rows, c, lead, zx, buf)`, see [`DepthwiseLineKernel`].
pub(crate) type BuildQuadFn = fn(&[Option<&[u8]>; 4], usize, usize, u8, &mut [u8]) -> u8;
/// `accumulate_requant(quads, geometry, weights, init, wide, rq, out)`, see
/// [`DepthwiseLineKernel`].
pub(crate) type AccumulateRequantFn =
    fn(&[&[u8]], &LineGeometry, &[i8], &[i32], bool, &PlainRequant<'_>, &mut [u8]);
/// `accumulate(quads, geometry, weights, init, wide, acc)`, see [`DepthwiseLineKernel`].
pub(crate) type AccumulateLineFn = fn(&[&[u8]], &LineGeometry, &[i8], &[i32], bool, &mut [i32]);

/// The line kernel of `engine`, where it has one.
pub(crate) fn depthwise_line_kernel(engine: Engine) -> Option<DepthwiseLineKernel> {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512Vnni if x86_64::has_avx512vnni() => Some(DepthwiseLineKernel {
            column_stride: x86_64::depthwise_vnni::column_stride,
            weights: x86_64::depthwise_vnni::line_weights,
            build_quad: x86_64::depthwise_vnni::build_quad,
            accumulate: x86_64::depthwise_vnni::accumulate,
            accumulate_requant: x86_64::depthwise_vnni::accumulate_requant,
        }),
        #[cfg(target_arch = "x86_64")]
        Engine::AvxVnni if x86_64::has_avxvnni() => Some(DepthwiseLineKernel {
            column_stride: x86_64::depthwise_ymm::column_stride,
            weights: x86_64::depthwise_ymm::line_weights,
            build_quad: x86_64::depthwise_ymm::build_quad,
            accumulate: x86_64::depthwise_ymm::accumulate_on::<true>,
            accumulate_requant: x86_64::depthwise_ymm::accumulate_requant_on::<true>,
        }),
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 if x86_64::has_avx2_fma() => Some(DepthwiseLineKernel {
            column_stride: x86_64::depthwise_ymm::column_stride,
            weights: x86_64::depthwise_ymm::line_weights,
            build_quad: x86_64::depthwise_ymm::build_quad,
            accumulate: x86_64::depthwise_ymm::accumulate_on::<false>,
            accumulate_requant: x86_64::depthwise_ymm::accumulate_requant_on::<false>,
        }),
        _ => None,
    }
}
