//! Engines: the ISA paths, detected once per process and selectable by name.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::error::{KernelError, Result};

#[cfg(target_arch = "aarch64")]
use super::aarch64;
#[cfg(target_arch = "x86_64")]
use super::x86_64;

/// An ISA path. The names are those of `ferroquant.backends.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Avx512Vnni,
    AvxVnni,
    Avx2,
    NeonDotprod,
    Neon,
    Scalar,
}

/// Every engine, best first (the order `auto` tries them in).
pub const ALL_ENGINES: [Engine; 6] = [
    Engine::Avx512Vnni,
    Engine::AvxVnni,
    Engine::Avx2,
    Engine::NeonDotprod,
    Engine::Neon,
    Engine::Scalar,
];

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Avx512Vnni => "avx512vnni",
            Engine::AvxVnni => "avxvnni",
            Engine::Avx2 => "avx2",
            Engine::NeonDotprod => "neon_dotprod",
            Engine::Neon => "neon",
            Engine::Scalar => "scalar",
        }
    }

    /// Parses an engine name (exactly as [`Engine::name`] prints it).
    pub fn from_name(name: &str) -> Result<Engine> {
        ALL_ENGINES
            .iter()
            .copied()
            .find(|e| e.name() == name)
            .ok_or_else(|| {
                KernelError::KernelUnavailable(format!(
                    "unknown engine {name:?}; choose \"auto\" or one of {}",
                    ALL_ENGINES.map(|e| format!("{:?}", e.name())).join(", ")
                ))
            })
    }

    /// Whether this CPU can run the engine (detected once, then cached).
    pub fn is_available(self) -> bool {
        detected().contains(&self)
    }

    /// Index into [`ALL_ENGINES`].
    fn index(self) -> u8 {
        ALL_ENGINES.iter().position(|&e| e == self).unwrap_or(5) as u8
    }
}

fn detect() -> Vec<Engine> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::detect());
    #[cfg(target_arch = "aarch64")]
    v.extend(aarch64::detect());
    v.push(Engine::Scalar);
    v
}

fn detected() -> &'static [Engine] {
    static DETECTED: OnceLock<Vec<Engine>> = OnceLock::new();
    DETECTED.get_or_init(detect)
}

/// The engines this CPU supports, best first; `scalar` is always last.
pub fn available_engines() -> Vec<Engine> {
    detected().to_vec()
}

/// The engine `auto` resolves to.
pub fn best_engine() -> Engine {
    detected()[0]
}

/// 255 = auto; otherwise the index of the forced engine.
static SELECTED: AtomicU8 = AtomicU8::new(AUTO);
const AUTO: u8 = 255;

/// Selects the engine used by later calls: `"auto"` or an engine name this CPU supports.
pub fn set_engine(name: &str) -> Result<()> {
    if name == "auto" {
        SELECTED.store(AUTO, Ordering::Relaxed);
        return Ok(());
    }
    let e = Engine::from_name(name)?;
    if !e.is_available() {
        return Err(KernelError::KernelUnavailable(format!(
            "engine {:?} is not available on this CPU; available: {}",
            name,
            detected()
                .iter()
                .map(|e| format!("{:?}", e.name()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    SELECTED.store(e.index(), Ordering::Relaxed);
    Ok(())
}

/// `"auto"` or the forced engine's name.
pub fn engine_setting() -> &'static str {
    match SELECTED.load(Ordering::Relaxed) {
        AUTO => "auto",
        i => ALL_ENGINES[i as usize].name(),
    }
}

/// The engine calls run on now.
pub fn current_engine() -> Engine {
    match SELECTED.load(Ordering::Relaxed) {
        AUTO => best_engine(),
        i => ALL_ENGINES[i as usize],
    }
}
