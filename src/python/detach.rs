//! The one place the GIL is released (modelled on polars' `enter_polars`).
//!
//! Every pyfunction or method that can block for more than about a millisecond (running a
//! pillow, the operator commands) goes through [`detached`]: it releases the GIL, runs `f`
//! under `catch_unwind`, and maps the error to a Python exception. A panic on our side becomes
//! a `PillowtopError` naming the panic instead of aborting the interpreter.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

use super::errors::PillowtopError;

/// Runs `f` with the GIL released; `f` may re-attach on this same thread (the Python lane).
pub(crate) fn detached<T, E, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> Result<T, E> + Send,
    T: Send,
    E: Into<PyErr> + Send,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(Into::into),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(PillowtopError::new_err(format!(
                "internal error (a bug in pillowtop, please report it): {what}"
            )))
        }
    }
}

/// A tokio runtime from `builder` (with its I/O and timers), or a `PillowtopError` naming what
/// failed: every runtime the Python front makes.
pub(crate) fn runtime_from(
    builder: &mut tokio::runtime::Builder,
) -> PyResult<tokio::runtime::Runtime> {
    builder.enable_all().build().map_err(|e| {
        PyErr::from(crate::Error::from(crate::error::ProcessError::Other(
            format!("cannot start the async runtime: {e}"),
        )))
    })
}
