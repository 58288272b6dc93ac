//! Loops written once in plain Rust and compiled per ISA: [`with_features`] runs a
//! [`Vectorized`] body inside a function compiled with the engine's vector features.

use super::Engine;

#[cfg(target_arch = "x86_64")]
use super::x86_64;

/// Work whose loops vectorise per ISA: [`with_features`] runs [`Vectorized::run`] inside a
/// function compiled with the engine's vector features. Implementations mark `run`
/// `#[inline(always)]` and call `#[inline(always)]` loops, so all of it is compiled there.
///
/// The slice the work writes is passed to [`Vectorized::run`] apart from `self`: as an
/// argument of the compiled function it is known to alias nothing else (a `&mut` inside a
/// struct is not), which the store loops need to vectorise.
pub(crate) trait Vectorized {
    type Elem;
    type Out;
    fn run(self, out: &mut [Self::Elem]) -> Self::Out;
}

/// Runs `v` compiled with the vector features of `engine` where the architecture has optional
/// ones (x86: AVX2 / AVX-512). Integer loops give the same results on every engine; aarch64's
/// NEON is always on.
#[inline(always)]
pub(crate) fn with_features<V: Vectorized>(engine: Engine, v: V, out: &mut [V::Elem]) -> V::Out {
    #[cfg(target_arch = "x86_64")]
    return x86_64::with_features(engine, v, out);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = engine;
        v.run(out)
    }
}
