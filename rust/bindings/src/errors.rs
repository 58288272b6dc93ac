//! Kernel errors → Python exceptions (ValueError / TypeError / RuntimeError).

use ferroquant_kernels::KernelError;
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

pub fn to_py(e: KernelError) -> PyErr {
    let msg = e.to_string();
    match e {
        KernelError::UnsupportedDtype(_) => PyTypeError::new_err(msg),
        KernelError::KernelUnavailable(_) => PyRuntimeError::new_err(msg),
        KernelError::ShapeMismatch { .. }
        | KernelError::InvalidQParams(_)
        | KernelError::Empty(_)
        | KernelError::NonFinite(_)
        | KernelError::TooLarge(_) => PyValueError::new_err(msg),
        KernelError::OutOfMemory(_) => PyMemoryError::new_err(msg),
    }
}

pub fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}
