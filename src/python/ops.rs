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
use crate::cli::{
    add_partitions, assignments, doctor, fix, kafka, lag, merge, reset, split, topics, validate,
};
use crate::ops::OpsError;
use tokio_util::sync::CancellationToken;

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
        | OpsError::NoSnapshot { .. }
        | OpsError::NoHistory { .. }
        | OpsError::NotHandedOver { .. } => OperationRefused::new_err(message),
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

/// The Kafka connection flags: the bootstrap servers and extra librdkafka properties
/// (`kafka_config`, as `--kafka-config KEY=VALUE`).
fn kafka(
    bootstrap: Option<String>,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
) -> KafkaConn {
    KafkaConn {
        kafka: bootstrap,
        kafka_config: kafka_config
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    }
}

/// `pillowtop split`: copies every checkpoint row of `source` to each of `targets`; with
/// `processor`, hands that processor's own position over to the one target (`online`: while
/// the source runs, waiting up to `timeout` seconds).
#[pyfunction]
#[pyo3(signature = (ui, source, targets, *, postgres_url, target_topics=Vec::new(), processor=None, online=false, timeout=60, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn split_checkpoints(
    py: Python<'_>,
    ui: Py<PyAny>,
    source: String,
    targets: Vec<String>,
    postgres_url: String,
    target_topics: Vec<String>,
    processor: Option<String>,
    online: bool,
    timeout: u64,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let args = split::Args {
        source,
        targets,
        target_topics,
        processor,
        online,
        timeout,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
    };
    // Ctrl-C ends an online split's wait: the request is withdrawn if no process took it up.
    let r = run_stoppable(py, ui, async |ui, stop| split::apply(&args, ui, stop).await)?;
    report(py, "split", r)
}

/// `pillowtop merge`: the minimum offset of each partition of `sources` into `target`; with
/// `processor`, takes that processor, split out of `target` into the one source, back
/// (`online`: while both run, waiting up to `timeout` seconds).
#[pyfunction]
#[pyo3(signature = (ui, sources, target, *, postgres_url, topics=None, processor=None, online=false, timeout=60, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn merge_checkpoints(
    py: Python<'_>,
    ui: Py<PyAny>,
    sources: Vec<String>,
    target: String,
    postgres_url: String,
    topics: Option<Vec<String>>,
    processor: Option<String>,
    online: bool,
    timeout: u64,
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
        processor,
        online,
        timeout,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
    };
    // Ctrl-C ends an online merge's wait: the request is withdrawn if nothing was handed back.
    let r = run_stoppable(py, ui, async |ui, stop| merge::apply(&args, ui, stop).await)?;
    report(py, "merge", r)
}

/// `pillowtop reset`: moves a checkpoint to `earliest`, `latest`, an offset or a time.
#[pyfunction]
#[pyo3(signature = (ui, checkpoint_id, *, postgres_url, kafka_bootstrap, kafka_config=None, earliest=false, latest=false, offset=None, timestamp=None, partition=None, topics=None, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn reset_checkpoint(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_id: String,
    postgres_url: String,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
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
        kafka: kafka(Some(kafka_bootstrap), kafka_config),
    };
    let r = run(py, ui, async |ui| reset::apply(&args, ui).await)?;
    report(py, "reset", r)
}

/// `pillowtop add-partitions`: offset-0 rows for the new partitions of `topic`.
#[pyfunction]
#[pyo3(name = "add_partitions", signature = (ui, topic, num_partitions, *, postgres_url, kafka_bootstrap=None, kafka_config=None, noinput=false, dry_run=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn py_add_partitions(
    py: Python<'_>,
    ui: Py<PyAny>,
    topic: String,
    num_partitions: i32,
    postgres_url: String,
    kafka_bootstrap: Option<String>,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    noinput: bool,
    dry_run: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let args = add_partitions::Args {
        topic,
        num_partitions,
        confirm: confirm(noinput, dry_run, false, json),
        conn: pg(postgres_url),
        kafka: kafka(kafka_bootstrap, kafka_config),
    };
    let r = run(py, ui, async |ui| add_partitions::apply(&args, ui).await)?;
    report(py, "add-partitions", r)
}

/// `pillowtop lag`: prints the lag table (or JSON) of `checkpoint_ids` (all when empty).
#[pyfunction]
#[pyo3(name = "lag", signature = (ui, checkpoint_ids, *, postgres_url, kafka_bootstrap, kafka_config=None, json=false, interval=None, metrics_port=None, rounds=None, topics=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn py_lag(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_ids: Vec<String>,
    postgres_url: String,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
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
        kafka: kafka(Some(kafka_bootstrap), kafka_config),
    };
    run(py, ui, async |ui| lag::exec(args, ui).await).map(drop)
}

/// `pillowtop assignments`: prints which process (and virtual worker) reads which partitions.
#[pyfunction]
#[pyo3(name = "assignments", signature = (ui, topics, num_processes, *, kafka_bootstrap=None, kafka_config=None, partitions=None, dedicated=false, workers=None, json=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn py_assignments(
    py: Python<'_>,
    ui: Py<PyAny>,
    topics: Vec<String>,
    num_processes: u32,
    kafka_bootstrap: Option<String>,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
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
        kafka: kafka(kafka_bootstrap, kafka_config),
    };
    run(py, ui, async |ui| assignments::exec(args, ui).await).map(drop)
}

/// `pillowtop validate`: prints (and returns, as dicts) the checkpoints Kafka can no longer serve.
#[pyfunction]
#[pyo3(name = "validate", signature = (ui, checkpoint_ids, *, postgres_url, kafka_bootstrap, kafka_config=None, skip_zero=false, json=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn py_validate(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_ids: Vec<String>,
    postgres_url: String,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    skip_zero: bool,
    json: bool,
) -> PyResult<Py<PyAny>> {
    let args = validate::Args {
        ids: checkpoint_ids,
        skip_zero,
        print_only: false,
        json,
        conn: pg(postgres_url),
        kafka: kafka(Some(kafka_bootstrap), kafka_config),
    };
    let problems = run(py, ui, async |ui| validate::check(args, ui).await)?;
    Ok(pythonize::pythonize(py, &problems)?.unbind())
}

/// `pillowtop doctor`: samples each pillow twice, `interval` seconds apart, prints (or prints as
/// JSON) which processor holds it back and the split's commands, and returns the diagnoses.
/// `names` maps a checkpoint id to its pillow's name; `django` spells the commands for Django.
#[pyfunction]
#[pyo3(name = "doctor", signature = (ui, checkpoint_ids, *, postgres_url, kafka_bootstrap, kafka_config=None, interval=15.0, max_time_lag=60, json=false, django=false, names=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn py_doctor(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_ids: Vec<String>,
    postgres_url: String,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    interval: f64,
    max_time_lag: u64,
    json: bool,
    django: bool,
    names: Option<std::collections::BTreeMap<String, String>>,
) -> PyResult<Py<PyAny>> {
    let args = doctor::Args {
        ids: checkpoint_ids,
        interval,
        max_time_lag,
        json,
        django,
        names: names.unwrap_or_default(),
        conn: pg(postgres_url),
        kafka: kafka(Some(kafka_bootstrap), kafka_config),
    };
    let found = run(py, ui, async |ui| doctor::examine(&args, ui).await)?;
    Ok(pythonize::pythonize(py, &found)?.unbind())
}

/// Runs a reading command that stops on Ctrl-C: every 100 ms the calling (main) thread runs
/// Python's signal handlers; a `KeyboardInterrupt` (or any exception a handler or the `ui`
/// raises) cancels the command's stop token, the command ends cleanly and its result is
/// returned (marked interrupted); an exception other than `KeyboardInterrupt` is raised after.
fn run_stoppable<T, F>(py: Python<'_>, ui: Py<PyAny>, command: F) -> PyResult<T>
where
    T: Send,
    F: AsyncFnOnce(&PyUi, &CancellationToken) -> anyhow::Result<T> + Send,
{
    let ui = PyUi::new(ui);
    let stop = CancellationToken::new();
    let signal: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = detached(py, || {
        crate::telemetry::init();
        let rt = crate::cli::runtime().map_err(|e| PillowtopError::new_err(e.to_string()))?;
        rt.block_on(async {
            let cmd = command(&ui, &stop);
            tokio::pin!(cmd);
            loop {
                tokio::select! {
                    r = &mut cmd => break r,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                        let failed = ui.failure.lock().is_ok_and(|f| f.is_some());
                        // A closure: the method path is not general over the attach lifetime.
                        #[allow(clippy::redundant_closure_for_method_calls)]
                        let signals = Python::attach(|py| py.check_signals());
                        if let Err(e) = signals {
                            if let Ok(mut s) = signal.lock() {
                                s.get_or_insert(e);
                            }
                            stop.cancel();
                        } else if failed {
                            stop.cancel();
                        }
                    }
                }
            }
        })
        .map_err(to_py)
    });
    let pending = signal
        .into_inner()
        .ok()
        .flatten()
        .or_else(|| ui.take_failure());
    match pending {
        Some(e)
            if Python::attach(|py| {
                e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
            }) =>
        {
            result
        }
        Some(e) => Err(e),
        None => result,
    }
}

/// `pillowtop fix-checkpoint-after-rewind`: the checkpoint's historical maximum.
#[pyfunction]
#[pyo3(signature = (ui, checkpoint_id, *, postgres_url, by_partition=false, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn fix_checkpoint_after_rewind(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_id: String,
    postgres_url: String,
    by_partition: bool,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let args = fix::AfterRewindArgs {
        checkpoint_id,
        by_partition,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
    };
    let r = run(py, ui, async |ui| fix::after_rewind(&args, ui).await)?;
    report(py, "fix-checkpoint-after-rewind", r)
}

/// `pillowtop fix-checkpoints-from-date`: each checkpoint's newest snapshot before `date`
/// (`YYYY-MM-DD`); every checkpoint with a history when `checkpoint_ids` is empty.
#[pyfunction]
#[pyo3(signature = (ui, date, checkpoint_ids, *, postgres_url, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn fix_checkpoints_from_date(
    py: Python<'_>,
    ui: Py<PyAny>,
    date: &str,
    checkpoint_ids: Vec<String>,
    postgres_url: String,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|e| {
        ConfigurationError::new_err(format!(
            "fix-checkpoints-from-date: date {date:?} is not YYYY-MM-DD: {e}"
        ))
    })?;
    let args = fix::FromDateArgs {
        date,
        ids: checkpoint_ids,
        confirm: confirm(noinput, dry_run, force, json),
        conn: pg(postgres_url),
    };
    let r = run(py, ui, async |ui| fix::from_date(&args, ui).await)?;
    report(py, "fix-checkpoints-from-date", r)
}

/// `pillowtop fix-checkpoints-from-file` with the file's JSON text
/// `{checkpoint_id: {"topic,partition": offset}}`.
#[pyfunction]
#[pyo3(signature = (ui, checkpoints_json, *, postgres_url, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn fix_checkpoints_from_json(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoints_json: &str,
    postgres_url: String,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let c = confirm(noinput, dry_run, force, json);
    let conn = pg(postgres_url);
    let r = run(py, ui, async |ui| {
        fix::from_json(checkpoints_json, &conn, &c, ui).await
    })?;
    report(py, "fix-checkpoints-from-file", r)
}

fn summary(py: Python<'_>, s: &crate::ops::inspect::InspectSummary) -> PyResult<Py<PyAny>> {
    Ok(pythonize::pythonize(py, s)?.unbind())
}

/// `pillowtop tail-kafka`: prints the changes published to `topics` from now on until Ctrl-C
/// or `limit`; returns the summary.
#[pyfunction]
#[pyo3(signature = (ui, topics, *, kafka_bootstrap, kafka_config=None, doc_type=None, doc_subtype=None, limit=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn tail_kafka(
    py: Python<'_>,
    ui: Py<PyAny>,
    topics: Vec<String>,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    doc_type: Option<String>,
    doc_subtype: Option<String>,
    limit: Option<u64>,
) -> PyResult<Py<PyAny>> {
    let args = kafka::TailArgs {
        topics,
        filter: kafka::FilterArgs {
            doc_type,
            doc_subtype,
            limit,
        },
        kafka: self::kafka(Some(kafka_bootstrap), kafka_config),
    };
    let s = run_stoppable(py, ui, async |ui, stop| kafka::tail(&args, ui, stop).await)?;
    summary(py, &s)
}

/// `pillowtop search-kafka-changes`: prints the matching changes of `topics`; returns the
/// summary.
#[pyfunction]
#[pyo3(signature = (ui, topics, *, kafka_bootstrap, kafka_config=None, doc_ids=None, doc_id_file=None, start_date=None, end_date=None, doc_type=None, doc_subtype=None, limit=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn search_kafka_changes(
    py: Python<'_>,
    ui: Py<PyAny>,
    topics: Vec<String>,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    doc_ids: Option<Vec<String>>,
    doc_id_file: Option<std::path::PathBuf>,
    start_date: Option<String>,
    end_date: Option<String>,
    doc_type: Option<String>,
    doc_subtype: Option<String>,
    limit: Option<u64>,
) -> PyResult<Py<PyAny>> {
    let args = kafka::SearchArgs {
        topics,
        doc_ids,
        doc_id_file,
        start_date,
        end_date,
        filter: kafka::FilterArgs {
            doc_type,
            doc_subtype,
            limit,
        },
        kafka: self::kafka(Some(kafka_bootstrap), kafka_config),
    };
    let s = run_stoppable(py, ui, async |ui, stop| {
        kafka::search(&args, ui, stop).await
    })?;
    summary(py, &s)
}

/// `pillowtop dump-remaining-changes`: writes what `checkpoint_id` has not processed to
/// `output` (gzipped for `.gz`, `-` for the ui); returns the summary.
#[pyfunction]
#[pyo3(signature = (ui, checkpoint_id, *, postgres_url, kafka_bootstrap, kafka_config=None, output=None, limit=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dump_remaining_changes(
    py: Python<'_>,
    ui: Py<PyAny>,
    checkpoint_id: String,
    postgres_url: String,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    output: Option<String>,
    limit: Option<u64>,
) -> PyResult<Py<PyAny>> {
    let args = kafka::DumpArgs {
        checkpoint_id,
        output,
        limit,
        conn: pg(postgres_url),
        kafka: self::kafka(Some(kafka_bootstrap), kafka_config),
    };
    let s = run_stoppable(py, ui, async |ui, stop| kafka::dump(&args, ui, stop).await)?;
    summary(py, &s)
}

/// `pillowtop create-kafka-topics`: creates the missing ones of `topics`.
#[pyfunction]
#[pyo3(signature = (ui, topics, *, kafka_bootstrap, kafka_config=None, partitions=1, replication_factor=1, noinput=false, dry_run=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn create_kafka_topics(
    py: Python<'_>,
    ui: Py<PyAny>,
    topics: Vec<String>,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    partitions: i32,
    replication_factor: i32,
    noinput: bool,
    dry_run: bool,
    json: bool,
) -> PyResult<Py<PyDict>> {
    let args = topics::CreateArgs {
        topics,
        partitions,
        replication_factor,
        confirm: confirm(noinput, dry_run, false, json),
        kafka: kafka(Some(kafka_bootstrap), kafka_config),
    };
    let r = run(py, ui, async |ui| topics::create(&args, ui).await)?;
    report(py, "create-kafka-topics", r)
}

/// `pillowtop list-kafka-topics`: prints `topics` (all of the cluster's when empty) with their
/// partition counts and returns them as dicts (`partitions` is `None` for a missing topic).
#[pyfunction]
#[pyo3(signature = (ui, topics, *, kafka_bootstrap, kafka_config=None, json=false))]
pub(crate) fn list_kafka_topics(
    py: Python<'_>,
    ui: Py<PyAny>,
    topics: Vec<String>,
    kafka_bootstrap: String,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    json: bool,
) -> PyResult<Py<PyAny>> {
    let args = topics::ListArgs {
        topics,
        json,
        kafka: kafka(Some(kafka_bootstrap), kafka_config),
    };
    let states = run(py, ui, async |ui| {
        let states = topics::list(&args).await?;
        topics::print(ui, &states, args.json)?;
        Ok(states)
    })?;
    Ok(pythonize::pythonize(py, &states)?.unbind())
}

/// `pillowtop reindex`: `action` `"start"` rebuilds the index of the Elasticsearch `processor`
/// of `pillow` from the `source` table (`(table, id_column, doc_column)`) while the pillow
/// runs; `"resume"`, `"rollback"` and `"abort"` act on its unfinished run; `"status"` prints
/// the pillow's runs. Returns the exit status (0 done, dry run or waiting for the keep window;
/// 1 declined; 7 verification found differences, the old index still serving).
#[pyfunction]
#[pyo3(signature = (ui, action, *, pillow, processor, topics, postgres_url, kafka_bootstrap=None, kafka_config=None, source=None, from_kafka=false, since_ms=None, chunk_size=1000, slices=1, domain=None, date_field=None, start_date=None, end_date=None, keep_old=172_800, ack_timeout=120, new_index=None, sample_size=200, noinput=false, dry_run=false, force=false, json=false))]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) fn reindex(
    py: Python<'_>,
    ui: Py<PyAny>,
    action: &str,
    pillow: String,
    processor: &Bound<'_, super::rust_processors::PyRustProcessor>,
    topics: Vec<String>,
    postgres_url: String,
    kafka_bootstrap: Option<String>,
    kafka_config: Option<std::collections::BTreeMap<String, String>>,
    source: Option<(String, String, String)>,
    from_kafka: bool,
    since_ms: Option<i64>,
    chunk_size: usize,
    slices: usize,
    domain: Option<String>,
    date_field: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    keep_old: u64,
    ack_timeout: u64,
    new_index: Option<String>,
    sample_size: usize,
    noinput: bool,
    dry_run: bool,
    force: bool,
    json: bool,
) -> PyResult<u8> {
    use crate::cli::reindex::{act, print_status, start_run, Action};
    use crate::ops::reindex::{ReindexOptions, ReindexSink, Reindexer, SqlSource};
    let p = processor.get();
    // The processor's name as the pillow reports it, and what is rebuilt (an Elasticsearch
    // processor's Python transform runs where the run's future does: on this thread).
    let (name, sink) = match (p.elasticsearch_config(), p.table_definition()) {
        (Some(c), _) => (
            format!("ElasticsearchProcessor({})", c.index),
            ReindexSink::Elasticsearch {
                config: c.clone(),
                transform: p.elasticsearch_transform(py, super::processor::Lane::current()),
            },
        ),
        (None, Some(d)) => (
            format!("postgres-table:{}", d.label()),
            ReindexSink::Table(d.clone()),
        ),
        (None, None) => {
            return Err(ConfigurationError::new_err(
                "reindex rebuilds an \"elasticsearch\" RustProcessor's index or a \"postgres_table\" one's table; this processor is neither",
            ))
        }
    };
    // `None`: print the pillow's runs.
    let (action, options) = match action {
        "status" => (None, None),
        "resume" => (Some(Action::Resume), None),
        "rollback" => (Some(Action::Rollback), None),
        "abort" => (Some(Action::Abort), None),
        "start" => {
            let mut o = match source {
                _ if from_kafka => ReindexOptions::from_kafka(since_ms),
                Some((table, id_column, doc_column)) => ReindexOptions::new(SqlSource {
                    table,
                    id_column,
                    doc_column,
                }),
                None => {
                    return Err(ConfigurationError::new_err(
                        "reindex start needs source=(table, id_column, doc_column), the table the documents are copied from, or from_kafka=True",
                    ))
                }
            };
            o.chunk_size = chunk_size.max(1);
            o.slices = slices.max(1);
            o.domain = domain;
            o.date_field = date_field;
            o.start_date = start_date;
            o.end_date = end_date;
            o.keep_old_secs = keep_old;
            o.ack_timeout_secs = ack_timeout;
            o.new_index = new_index;
            o.sample_size = sample_size;
            (None, Some(o))
        }
        other => {
            return Err(ConfigurationError::new_err(format!(
                "unknown reindex action {other:?}: start, resume, rollback, abort or status"
            )))
        }
    };
    let conn = kafka(kafka_bootstrap, kafka_config);
    run_stoppable(py, ui, async move |ui, stop| {
        let r = Reindexer {
            pg: std::sync::Arc::new(crate::pg::Pg::new(postgres_url).with_stop(stop.clone())),
            processor: name,
            pillow,
            sink,
            topics,
            kafka: conn.info().ok(),
            stop: stop.clone(),
        };
        match (action, options) {
            (Some(a), _) => act(&r, a, noinput, json, ui).await,
            (None, Some(o)) => start_run(&r, &o, &confirm(noinput, dry_run, force, json), ui).await,
            (None, None) => print_status(&r.pg, &r.pillow, json, ui).await,
        }
    })
}
