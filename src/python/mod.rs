//! The extension module `pillowtop_rs._native`: the only place `pyo3` and `pythonize` appear.
//!
//! It exports `__version__`, the pillow API ([`pillow`], [`processor`], [`change`]), the
//! operator operations ([`ops`], and [`cli`]'s `run_cli`), and the parity hooks: small wrappers
//! of pure core functions (partition layout, change parsing, retry backoff) that let the Python
//! tests check the core against CommCare's vectors. Errors cross the boundary through
//! [`errors`].

mod change;
mod change_meta;
mod cli;
mod detach;
mod errors;
mod freshness;
mod observe;
mod ops;
mod pillow;
mod processor;
mod producer;
mod rust_processors;
mod sql_store;
mod status;
mod testing;
mod topics;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::change::ChangeMeta;
use crate::error::ConfigError;
use crate::feed::assignment::Layout;
use crate::feed::TopicPartition;

#[pymodule(name = "_native", gil_used = true)]
mod native {
    #[pymodule_export]
    use super::change::PyChange;
    #[pymodule_export]
    use super::change_meta::PyChangeMeta;
    #[pymodule_export]
    use super::cli::run_cli;
    #[pymodule_export]
    use super::freshness::{processed, wait_processed};
    #[pymodule_export]
    use super::ops::{
        create_kafka_topics, dump_remaining_changes, fix_checkpoint_after_rewind,
        fix_checkpoints_from_date, fix_checkpoints_from_json, list_kafka_topics,
        search_kafka_changes, tail_kafka,
    };
    #[pymodule_export]
    use super::ops::{
        merge_checkpoints, py_add_partitions, py_assignments, py_doctor, py_lag, py_validate,
        reindex, reset_checkpoint, split_checkpoints,
    };
    #[pymodule_export]
    use super::pillow::{request_shutdown, PyPillow, PyProcessResult, PyRunSummary};
    #[pymodule_export]
    use super::producer::PyProducer;
    #[pymodule_export]
    use super::rust_processors::PyRustProcessor;
    #[pymodule_export]
    use super::sql_store::PySqlDocumentStore;
    #[pymodule_export]
    use super::status::{status_json, status_page};
    #[pymodule_export]
    use super::testing::{kafka_offsets, read_kafka_changes};
    #[pymodule_export]
    use super::topics::topic_partitions;
    #[pymodule_export]
    use super::{
        next_attempt_delay_minutes, parse_change_meta, partition_assignment, virtual_worker_layouts,
    };
    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", crate::VERSION)
    }
}

/// A process count or number from Python; a negative or huge value is an invalid layout.
fn layout_number(what: &str, value: i64) -> crate::Result<u32> {
    u32::try_from(value).map_err(|_| {
        ConfigError::Invalid(format!(
            "{what} must be a small non-negative integer, not {value}"
        ))
        .into()
    })
}

fn layout(num_processes: i64, process_num: i64, dedicated: bool) -> crate::Result<Layout> {
    Ok(Layout {
        num_processes: layout_number("num_processes", num_processes)?,
        process_num: layout_number("process_num", process_num)?,
        dedicated_migration_process: dedicated,
    })
}

/// The (topic, partition) pairs that process `process_num` of `num_processes` reads.
///
/// CommCare's `_filter_partitions`: sort all pairs and take every N-th from index k. With
/// `dedicated`, process 0 is the migration process and reads nothing, and process k >= 1 takes
/// every (N-1)-th from index k-1. An impossible layout raises `ConfigurationError`.
#[pyfunction]
#[pyo3(signature = (partitions, num_processes, process_num, dedicated = false))]
fn partition_assignment(
    partitions: Vec<(String, i32)>,
    num_processes: i64,
    process_num: i64,
    dedicated: bool,
) -> PyResult<Vec<(String, i32)>> {
    let all: Vec<TopicPartition> = partitions
        .into_iter()
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
        .collect();
    let mine = layout(num_processes, process_num, dedicated)?.assign(&all)?;
    Ok(mine
        .into_iter()
        .map(|tp| (tp.topic, tp.partition))
        .collect())
}

/// The layouts of `workers` virtual workers inside process `process_num` of `num_processes`
/// (`run_ptop --gevent-workers`), as (process_num, num_processes) pairs, or `None` for the
/// dedicated migration process. Raises `ConfigurationError` for an impossible layout or fewer
/// than two workers.
#[pyfunction]
#[pyo3(signature = (num_processes, process_num, workers, dedicated = false))]
fn virtual_worker_layouts(
    num_processes: i64,
    process_num: i64,
    workers: i64,
    dedicated: bool,
) -> PyResult<Option<Vec<(u32, u32)>>> {
    let workers = layout_number("workers", workers)?;
    let layouts = layout(num_processes, process_num, dedicated)?.virtual_workers(workers)?;
    Ok(layouts.map(|all| {
        all.iter()
            .map(|l| (l.process_num, l.num_processes))
            .collect()
    }))
}

/// Parses a Kafka message body as CommCare's `ChangeMeta` and returns it as a dict.
///
/// Unknown fields are kept; an embedded document is returned under the key `"document"`.
/// Raises `InvalidChangeError` when the body is not a valid change.
#[pyfunction]
fn parse_change_meta<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let (meta, document) = ChangeMeta::parse(body)?;
    let dict = pythonize::pythonize(py, &meta)?.cast_into::<PyDict>()?;
    if let Some(document) = document {
        dict.set_item("document", pythonize::pythonize(py, &document)?)?;
    }
    Ok(dict)
}

/// Minutes from the last attempt until the next retry of a failed change after
/// `current_attempt` attempts (5, 20, 45), or `None` once the change is parked.
#[pyfunction]
fn next_attempt_delay_minutes(current_attempt: i64) -> Option<i64> {
    let attempt = i32::try_from(current_attempt).ok()?;
    let start = chrono::DateTime::UNIX_EPOCH;
    crate::retry::next_attempt(start, attempt).map(|due| (due - start).num_minutes())
}
