//! `run_cli`: the operator command line, in-process.
//!
//! The Django management commands (`split_pillow_checkpoints`, `merge_pillow_checkpoints`, ...)
//! translate CommCare's arguments and call this, so they share one implementation with the
//! `pillowtop` binary: the same plans, prompts, `--noinput`, `--dry-run` and exit statuses.
//! The binary's source is compiled into the extension as a module (`extern crate self as
//! pillowtop` in `lib.rs` lets its `pillowtop::` paths resolve); it prints to the process's
//! stdout/stderr and reads answers from its stdin.

use pyo3::prelude::*;

use super::detach::detached;

#[allow(dead_code, unreachable_pub)]
#[path = "../bin/pillowtop.rs"]
mod bin;

/// Runs `pillowtop <argv...>` in this process with the GIL released and returns its exit
/// status (0 success; 1 declined; 2 usage or inconsistent merge; 3 reprocessing declined;
/// 4 other failure; 5 validate found problems).
#[pyfunction]
pub(crate) fn run_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<u8> {
    // Flush Python's buffered stdout first so the output stays in order.
    if let Ok(sys) = py.import("sys") {
        for stream in ["stdout", "stderr"] {
            if let Ok(s) = sys.getattr(stream) {
                let _ = s.call_method0("flush");
            }
        }
    }
    let full: Vec<String> = std::iter::once("pillowtop".to_owned())
        .chain(argv)
        .collect();
    detached(py, move || Ok::<_, PyErr>(bin::run(full)))
}
