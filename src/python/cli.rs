//! `run_cli`: the operator command line, in-process, on the process's own stdout, stderr and
//! stdin (what the binary does). The Django commands that only print (`pillow_lag`,
//! `pillow_topic_assignments`, `validate_kafka_pillow_checkpoints`) use it; the changing
//! operations have typed functions in [`super::ops`].

use pyo3::prelude::*;

use super::detach::detached;
use crate::cli::ui::StdUi;

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
    detached(py, move || Ok::<_, PyErr>(crate::cli::run(full, &StdUi)))
}
