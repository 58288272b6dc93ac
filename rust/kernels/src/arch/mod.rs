//! Engines (ISA paths) and their kernels — the crate's leaf layer: it depends on nothing above
//! it (packing, the GEMM driver, output stages), only on `error`.
//!
//! - [`engine`]: detection once per process, selection by name.
//! - [`tile`]: the GEMM micro-kernel interface (raw packed panels) and the kernel table.
//! - [`vectorize`]: plain-Rust loops compiled per ISA.
//! - [`depthwise`]: the depthwise-convolution kernel table.
//! - [`grouped`]: the grouped-convolution kernel table (few channels per group).
//! - `generic` (portable reference), `x86_64/*`, `aarch64/*`: the ISA code.
//!
//! `#[cfg(target_arch)]` only decides which files compile; the engine that runs is chosen at
//! run time, so one wheel serves every CPU of an architecture.

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
pub(crate) mod depthwise;
pub mod engine;
pub(crate) mod generic;
pub(crate) mod grouped;
pub(crate) mod tile;
pub(crate) mod vectorize;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub(crate) use depthwise::{
    depthwise_kernel, depthwise_line_kernel, DepthwiseKernel, DepthwiseLineKernel, LineGeometry,
    PlainRequant,
};
pub use engine::{
    available_engines, best_engine, current_engine, engine_setting, set_engine, Engine, ALL_ENGINES,
};
pub(crate) use grouped::{
    grouped_kernel, plan as grouped_plan, quads as grouped_quads, weights as grouped_weights,
    weights_split16 as grouped_weights_split16, GroupedBlock, GroupedKernel, GroupedWeights,
};
pub(crate) use tile::{tile_kernel, AForm, FusedOut, Panels, TileKernel};
pub use tile::{KR, NR};
pub(crate) use vectorize::{with_features, Vectorized};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in ALL_ENGINES {
            assert_eq!(Engine::from_name(e.name()).unwrap(), e);
        }
        assert!(Engine::from_name("avx3").is_err());
    }

    #[test]
    fn scalar_is_always_available_and_last() {
        let v = available_engines();
        assert_eq!(*v.last().unwrap(), Engine::Scalar);
        assert!(Engine::Scalar.is_available());
    }
}
