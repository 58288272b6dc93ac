//! The engines' depthwise-convolution kernels (the driver is `conv::depthwise`).

use super::Engine;

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
        _ => None,
    }
}
