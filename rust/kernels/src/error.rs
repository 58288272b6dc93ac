//! One error type for every safe entry point of the kernels crate.

use std::fmt;

/// Everything that can go wrong in a kernel call because of its inputs.
///
/// Messages are written for the person calling ferroquant from Python: they say what
/// was wrong and, where possible, how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// Two lengths or shapes that must agree do not.
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// A scale, zero point or range is unusable (non-finite, non-positive, out of range).
    InvalidQParams(String),
    /// A dtype or scheme the operation does not support.
    UnsupportedDtype(String),
    /// A buffer is empty where data is required (e.g. empty weights).
    Empty(String),
    /// Non-finite input where finite values are required (NaN/Inf in dynamic quantization).
    NonFinite(String),
    /// The requested engine is unknown or this CPU lacks its instructions.
    KernelUnavailable(String),
    /// A size does not fit the arithmetic (element counts overflow `usize`, or int32
    /// accumulation could overflow for these weights).
    TooLarge(String),
    /// A buffer could not be allocated.
    OutOfMemory(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::ShapeMismatch {
                what,
                expected,
                got,
            } => {
                write!(f, "{what}: expected {expected}, got {got}")
            }
            KernelError::InvalidQParams(m)
            | KernelError::UnsupportedDtype(m)
            | KernelError::Empty(m)
            | KernelError::NonFinite(m)
            | KernelError::KernelUnavailable(m)
            | KernelError::TooLarge(m)
            | KernelError::OutOfMemory(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KernelError {}

pub type Result<T> = std::result::Result<T, KernelError>;

/// Shorthand for a length check that returns `ShapeMismatch`.
pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(KernelError::ShapeMismatch {
            what: what.to_string(),
            expected: format!("length {expected}"),
            got: format!("length {got}"),
        });
    }
    Ok(())
}

/// The product of `dims` (element count of a shape), or `TooLarge` when it overflows.
pub fn checked_numel(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            KernelError::TooLarge(format!(
                "{what} of shape {dims:?} has more elements than this machine can address"
            ))
        })
}

/// A vector of `len` copies of `value`, or `OutOfMemory` (never an abort) when the allocation
/// fails.
pub fn try_vec<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        KernelError::OutOfMemory(format!(
            "cannot allocate {what}: {len} elements of {} bytes ({:.1} GiB)",
            std::mem::size_of::<T>(),
            len as f64 * std::mem::size_of::<T>() as f64 / (1u64 << 30) as f64
        ))
    })?;
    v.resize(len, value);
    Ok(v)
}

/// `buf` made `len` long for a kernel that writes every element: a buffer at least that long is
/// truncated (nothing filled), a shorter one grown with `value` (only the new part); a failed
/// allocation is `OutOfMemory` (never an abort).
pub fn reuse_vec<T: Clone>(mut buf: Vec<T>, len: usize, value: T, what: &str) -> Result<Vec<T>> {
    if buf.len() >= len {
        buf.truncate(len);
        return Ok(buf);
    }
    if buf.capacity() < len {
        buf.try_reserve_exact(len - buf.len()).map_err(|_| {
            KernelError::OutOfMemory(format!(
                "cannot allocate {what}: {len} elements of {} bytes",
                std::mem::size_of::<T>()
            ))
        })?;
    }
    buf.resize(len, value);
    Ok(buf)
}
