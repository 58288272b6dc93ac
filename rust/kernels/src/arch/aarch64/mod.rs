//! aarch64 engines. NEON is part of the aarch64 baseline; dot-product (`sdot`) is detected
//! at run time. Must compile with rustc 1.85 (Debian trixie), so `sdot` is written with `asm!`.

use super::Engine;

pub(crate) mod depthwise;
pub(crate) mod neon;
pub(crate) mod neon_dotprod;

pub(crate) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

pub(crate) fn detect() -> Vec<Engine> {
    let mut v = Vec::new();
    if has_dotprod() {
        v.push(Engine::NeonDotprod);
    }
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.push(Engine::Neon);
    }
    v
}
