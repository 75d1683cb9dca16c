//! The operator operations as typed Python functions (`pillowtop_rs._native.split_checkpoints`
//! and so on), over the same `crate::cli` code the `pillowtop` binary runs: the same plan,
//! messages, questions and `--noinput`/`--dry-run`/`--force` rules.
//!
//! Lines and questions go through a Python object (the [`PyUi`] adapter): `out(line)`,
//! `err(line)` and `read_answer() -> str`. The command runs on the calling thread with the GIL
//! released (`block_on`), re-attaching only to call that object; tokio's workers never take the
//! GIL. Results are dicts (`outcome`, the `plan` as `--json` prints it, and what was written);
//! a declined question raises `OperationAborted` with CommCare's exit status, and every other
//! failure its typed `pillowtop_rs.exceptions` class.

use std::sync::Mutex;

use pyo3::exceptions::PyEOFError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::Serialize;

use super::detach::detached;
use super::errors::{ConfigurationError, OperationAborted, OperationRefused, PillowtopError};
use crate::cli::conn::{Confirm, Conn, KafkaConn};
use crate::cli::ui::{Outcome, Report, Ui};
use crate::cli::{add_partitions, assignments, lag, merge, reset, split, validate};
use crate::ops::OpsError;

/// A Python object as the commands' [`Ui`]. The first exception its methods raise (other than
/// `EOFError` from `read_answer`, which is the end of input) is kept and raised when the command
/// returns; meanwhile a failed `read_answer` reads as an empty answer, which declines.
struct PyUi {
    obj: Py<PyAny>,
    failure: Mutex<Option<PyErr>>,
}

impl PyUi {
    fn new(obj: Py<PyAny>) -> Self {
        Self {
            obj,
            failure: Mutex::new(None),
        }
    }

    fn keep(&self, e: PyErr) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(e);
        }
    }

    fn line(&self, method: &str, line: &str) {
        if let Err(e) = Python::attach(|py| self.obj.call_method1(py, method, (line,)).map(drop)) {
            self.keep(e);
        }
    }

    fn take_failure(&self) -> Option<PyErr> {
        self.failure.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl Ui for PyUi {
    fn out(&self, line: &str) {
        self.line("out", line);
    }

    fn err(&self, line: &str) {
        self.line("err", line);
    }

    fn read_answer(&self) -> String {
        Python::attach(|py| {
            match self
                .obj
                .call_method0(py, "read_answer")
                .and_then(|a| a.extract::<String>(py))
            {
                Ok(answer) => answer.trim().to_owned(),
                Err(e) if e.is_instance_of::<PyEOFError>(py) => String::new(),
                Err(e) => {
                    self.keep(e);
                    String::new()
                }
            }
        })
    }
}

/// A command's error as its Python exception.
fn to_py(e: anyhow::Error) -> PyErr {
    let e = match e.downcast::<OpsError>() {
        Ok(ops) => return ops_to_py(ops),
        Err(e) => e,
    };
    match e.downcast::<crate::Error>() {
        Ok(core) => PyErr::from(core),
        // The command line's own checks: a missing address, a malformed argument.
        Err(other) => ConfigurationError::new_err(format!("{other:#}")),
    }
}

/// Every [`OpsError`] variant by name (no wildcard: a new variant needs a Python type).
fn ops_to_py(e: OpsError) -> PyErr {
    let message = e.to_string();
    match e {
        OpsError::Inconsistent(_) => OperationAborted::new_err((message, crate::cli::INCONSISTENT)),
        OpsError::NoSources | OpsError::NoTargets | OpsError::InvalidArgument(_) => {
            ConfigurationError::new_err(message)
        }
        OpsError::Running { .. }
        | OpsError::NoSourceRows { .. }
        | OpsError::Stale { .. }
        | OpsError::OutOfRange { .. }
        | OpsError::NoSnapshot { .. } => OperationRefused::new_err(message),
        OpsError::Core(core) => PyErr::from(core),
    }
}

/// Runs `command` on the calling thread with the GIL released; `ui`'s own failure comes first.
fn run<T, F>(py: Python<'_>, ui: Py<PyAny>, command: F) -> PyResult<T>
where
    T: Send,
    F: AsyncFnOnce(&PyUi) -> anyhow::Result<T> + Send,
{
    let ui = PyUi::new(ui);
    let result = detached(py, || {
        crate::telemetry::init();
        let rt = crate::cli::runtime().map_err(|e| PillowtopError::new_err(e.to_string()))?;
        rt.block_on(command(&ui)).map_err(to_py)
    });
    match ui.take_failure() {
        Some(e) => Err(e),
        None => result,
    }
}

/// A report as a dict; a declined question raises `OperationAborted`.
fn report<T: Serialize>(py: Python<'_>, what: &str, r: Report<T>) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    let outcome = match r.outcome {
        Outcome::Declined { status, question } => {
            return Err(OperationAborted::new_err((
                format!("{what}: the answer to {question:?} declined it: nothing was written"),
                status,
            )));
        }
        Outcome::Applied(done) => {
            let done = pythonize::pythonize(py, &done)?;
            d.set_item("result", done)?;
            "applied"
        }
        Outcome::DryRun => "dry_run",
        Outcome::NothingToDo => "nothing_to_do",
    };
    d.set_item("outcome", outcome)?;
    d.set_item("plan", pythonize::pythonize(py, &r.plan)?)?;
    Ok(d.unbind())
}

// The four switches of `Confirm`, as the Python keywords give them.
#[allow(clippy::fn_params_excessive_bools)]
fn confirm(noinput: bool, dry_run: bool, force: bool, json: bool) -> Confirm {
    Confirm {
        noinput,
        dry_run,
        force,
        json,
    }
}

fn pg(postgres_url: String) -> Conn {
    Conn {
        postgres_url: Some(postgres_url),
    }
}

fn kafka(bootstrap: Option<String>) -> KafkaConn {
    KafkaConn { kafka: bootstrap }
}

/// `pillowtop split`: copies every checkpoint row of `source` to each of `targets`.
#[pyfunction]
#[pyo3(signature = (ui, source, targets, *, postgres_url, target_topics=Vec::new(), noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn split_checkpoints(
    py: Python<'_>,
    ui: Py<PyAny>,
    source: String,
    targets: Vec<String>,
    postgres_url: String,
    target_topics: Vec<String>,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let args = split::Args {
        source,
        targets,
        target_topics,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
    };
    let r = run(py, ui, async |ui| split::apply(&args, ui).await)?;
    report(py, "split", r)
}

/// `pillowtop merge`: the minimum offset of each partition of `sources` into `target`.
#[pyfunction]
#[pyo3(signature = (ui, sources, target, *, postgres_url, topics=None, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn merge_checkpoints(
    py: Python<'_>,
    ui: Py<PyAny>,
    sources: Vec<String>,
    target: String,
    postgres_url: String,
    topics: Option<Vec<String>>,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let mut ids = sources;
    ids.push(target);
    let args = merge::Args {
        ids,
        topics,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
    };
    let r = run(py, ui, async |ui| merge::apply(&args, ui).await)?;
    report(py, "merge", r)
}

/// `pillowtop reset`: moves a checkpoint to `earliest`, `latest`, an offset or a time.
#[pyfunction]
#[pyo3(signature = (ui, checkpoint_id, *, postgres_url, kafka_bootstrap, earliest=false, latest=false, offset=None, timestamp=None, partition=None, topics=None, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn reset_checkpoint(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_id: String,
    postgres_url: String,
    kafka_bootstrap: String,
    earliest: bool,
    latest: bool,
    offset: Option<i64>,
    timestamp: Option<String>,
    partition: Option<(String, i32)>,
    topics: Option<Vec<String>>,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let chosen = [earliest, latest, offset.is_some(), timestamp.is_some()];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(ConfigurationError::new_err(format!(
            "reset of checkpoint {checkpoint_id}: give exactly one of earliest, latest, offset, timestamp"
        )));
    }
    let args = reset::Args {
        checkpoint_id,
        to: reset::ToArgs {
            earliest,
            latest,
            offset,
            timestamp,
        },
        partition: partition.map(|(t, p)| format!("{t},{p}")),
        topics,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
        kafka: kafka(Some(kafka_bootstrap)),
    };
    let r = run(py, ui, async |ui| reset::apply(&args, ui).await)?;
    report(py, "reset", r)
}

/// `pillowtop add-partitions`: offset-0 rows for the new partitions of `topic`.
#[pyfunction]
#[pyo3(name = "add_partitions", signature = (ui, topic, num_partitions, *, postgres_url, kafka_bootstrap=None, noinput=false, dry_run=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn py_add_partitions(
    py: Python<'_>,
    ui: Py<PyAny>,
    topic: String,
    num_partitions: i32,
    postgres_url: String,
    kafka_bootstrap: Option<String>,
    noinput: bool,
    dry_run: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let args = add_partitions::Args {
        topic,
        num_partitions,
        confirm: confirm(noinput, dry_run, false, json),
        conn: pg(postgres_url),
        kafka: kafka(kafka_bootstrap),
    };
    let r = run(py, ui, async |ui| add_partitions::apply(&args, ui).await)?;
    report(py, "add-partitions", r)
}

/// `pillowtop lag`: prints the lag table (or JSON) of `checkpoint_ids` (all when empty).
#[pyfunction]
#[pyo3(name = "lag", signature = (ui, checkpoint_ids, *, postgres_url, kafka_bootstrap, json=false, interval=None, metrics_port=None, rounds=None, topics=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn py_lag(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_ids: Vec<String>,
    postgres_url: String,
    kafka_bootstrap: String,
    json: bool,
    interval: Option<u64>,
    metrics_port: Option<u16>,
    rounds: Option<u64>,
    topics: Option<std::collections::BTreeMap<String, Vec<String>>>,
) -> PyResult<()> {
    let args = lag::Args {
        ids: checkpoint_ids,
        json,
        interval,
        metrics_port,
        rounds,
        topics: Vec::new(),
        topics_by_id: topics.unwrap_or_default(),
        conn: pg(postgres_url),
        kafka: kafka(Some(kafka_bootstrap)),
    };
    run(py, ui, async |ui| lag::exec(args, ui).await).map(drop)
}

/// `pillowtop assignments`: prints which process (and virtual worker) reads which partitions.
#[pyfunction]
#[pyo3(name = "assignments", signature = (ui, topics, num_processes, *, kafka_bootstrap=None, partitions=None, dedicated=false, workers=None, json=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn py_assignments(
    py: Python<'_>,
    ui: Py<PyAny>,
    topics: Vec<String>,
    num_processes: u32,
    kafka_bootstrap: Option<String>,
    partitions: Option<i32>,
    dedicated: bool,
    workers: Option<u32>,
    json: bool,
) -> PyResult<()> {
    let args = assignments::Args {
        num_processes,
        dedicated,
        workers,
        topics,
        partitions,
        json,
        kafka: kafka(kafka_bootstrap),
    };
    run(py, ui, async |ui| assignments::exec(args, ui).await).map(drop)
}

/// `pillowtop validate`: prints (and returns, as dicts) the checkpoints Kafka can no longer serve.
#[pyfunction]
#[pyo3(name = "validate", signature = (ui, checkpoint_ids, *, postgres_url, kafka_bootstrap, skip_zero=false, json=false))]
pub(crate) fn py_validate(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_ids: Vec<String>,
    postgres_url: String,
    kafka_bootstrap: String,
    skip_zero: bool,
    json: bool,
) -> PyResult<Py<PyAny>> {
    let args = validate::Args {
        ids: checkpoint_ids,
        skip_zero,
        print_only: false,
        json,
        conn: pg(postgres_url),
        kafka: kafka(Some(kafka_bootstrap)),
    };
    let problems = run(py, ui, async |ui| validate::check(args, ui).await)?;
    Ok(pythonize::pythonize(py, &problems)?.unbind())
}
