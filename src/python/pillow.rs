//! `Pillow`: a pillow definition from Python, and `run()`, the Python lane.
//!
//! `Pillow(...)` only validates (no sockets, no runtime: fork safety). `run()` builds a tokio
//! runtime, releases the GIL and drives the pillow loop with `block_on` **on the calling
//! thread**, so Python processors, Python document stores and the `on_chunk` hook run on that
//! thread, once per chunk, while Kafka, PostgreSQL and search I/O run on the tokio workers,
//! which never take the GIL. The runtime is dropped before `run()` returns.
//!
//! Signals: every [`SIGNAL_TICK`] the lane attaches and calls `check_signals`, so Python signal
//! handlers run (`run_ptop`'s SIGTERM handler calls `request_shutdown()`). A first
//! `KeyboardInterrupt` (or any exception from a handler) asks the pillow to stop: the current
//! chunk finishes, the buffer is flushed, the final checkpoint is written, and then the
//! exception is re-raised. A second one, or a `ShutdownRequested` (`run_ptop`'s second SIGTERM),
//! abandons the stop at once (nothing more is checkpointed; at-least-once delivery makes that
//! safe). `request_shutdown()` stops every
//! running pillow gracefully and `run()` returns normally with `stop_reason == "shutdown"`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio_util::sync::CancellationToken;

use super::change::PyChange;
use super::detach::{detached, runtime_from};
use super::errors::{ConfigurationError, ShutdownRequested};
use super::processor::{
    check_processor, is_document_store, ErrorHook, Lane, PyDocumentStore, PyProcessor, PyStores,
};
use super::rust_processors::PyRustProcessor;
use super::sql_store::PySqlDocumentStore;
use crate::assembly::{DocumentSource, DocumentStoreSpec, PillowSpec, ProcessorSpec};
use crate::error::ProcessError;
use crate::feed::assignment::Layout;
use crate::feed::kafka::KafkaFeedOptions;
use crate::feed::memory::MemoryFeed;
use crate::partition::TopicPartition;
use crate::pillow::{
    HookPoint, LoopHook, PillowConfig, ProcessorCheckpoints, RunSummary, StartPolicy, StopReason,
};
use crate::store::checkpoints::memory::MemoryCheckpointStore;
use crate::store::errors::memory::MemoryErrorStore;
use crate::store::errors::ErrorStore;

/// How long the lane stays detached before it checks for signals.
const SIGNAL_TICK: Duration = Duration::from_millis(100);

/// Shutdown tokens of the pillows running in this process, by registration number.
static RUNNING: Mutex<Vec<(u64, CancellationToken)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Asks every pillow running in this process to stop after its current chunk and a final
/// checkpoint. Returns how many were asked. Safe to call from a signal handler.
#[pyfunction]
pub(crate) fn request_shutdown() -> usize {
    let tokens = RUNNING.lock().map(|t| t.clone()).unwrap_or_default();
    for (_, t) in &tokens {
        t.cancel();
    }
    tokens.len()
}

/// Registers a running pillow's token; removes it on drop.
struct Registered(u64);

impl Registered {
    fn new(token: CancellationToken) -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = RUNNING.lock() {
            t.push((id, token));
        }
        Self(id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut t) = RUNNING.lock() {
            t.retain(|(id, _)| *id != self.0);
        }
    }
}

/// What `Pillow.run()` did.
#[pyclass(name = "RunSummary", module = "pillowtop_rs._native", frozen, get_all)]
pub(crate) struct PyRunSummary {
    /// "shutdown", "idle", "max_changes" or "feed_ended".
    stop_reason: &'static str,
    /// The (topic, partition) pairs this process owned.
    partitions: Vec<(String, i32)>,
    /// Changes handled, including failed changes and invalid messages.
    changes: u64,
    invalid: u64,
    failed: u64,
    checkpoints: u64,
}

#[pymethods]
impl PyRunSummary {
    fn __repr__(&self) -> String {
        format!(
            "RunSummary(stop_reason={:?}, changes={}, failed={}, invalid={}, checkpoints={}, partitions={})",
            self.stop_reason, self.changes, self.failed, self.invalid, self.checkpoints, self.partitions.len()
        )
    }
}

impl From<RunSummary> for PyRunSummary {
    fn from(s: RunSummary) -> Self {
        Self {
            stop_reason: match s.stop_reason {
                StopReason::Shutdown => "shutdown",
                StopReason::Idle => "idle",
                StopReason::MaxChanges => "max_changes",
                StopReason::FeedEnded => "feed_ended",
                StopReason::NothingToRun => "nothing_to_run",
            },
            partitions: s
                .partitions
                .into_iter()
                .map(|tp| (tp.topic, tp.partition))
                .collect(),
            changes: s.changes,
            invalid: s.invalid,
            failed: s.failed,
            checkpoints: s.checkpoints,
        }
    }
}

/// The defaults of `Pillow(lane_max_lead_changes=, lane_max_lead_bytes=)`: the core's.
const LANE_MAX_LEAD_CHANGES: i64 = 10_000;
const LANE_MAX_LEAD_BYTES: i64 = 64 << 20;
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const _: () = assert!(
    LANE_MAX_LEAD_CHANGES as usize == crate::feed::shared::DEFAULT_MAX_ITEMS
        && LANE_MAX_LEAD_BYTES as usize == crate::feed::shared::DEFAULT_MAX_BYTES
);

/// `processor_checkpoints` and the lead bound of independent processors, validated into `config`.
fn lane_settings(
    config: &mut PillowConfig,
    processor_checkpoints: &str,
    lane_max_lead_changes: i64,
    lane_max_lead_bytes: i64,
) -> PyResult<()> {
    let name = config.name.clone();
    config.processor_checkpoints = match processor_checkpoints {
        "shared" => ProcessorCheckpoints::Shared,
        "independent" => ProcessorCheckpoints::Independent,
        other => {
            return Err(config_error(format!(
                "pillow {name}: processor_checkpoints must be 'shared' (one checkpoint for all processors, CommCare's model) or 'independent' (each processor its own), not {other:?}"
            )))
        }
    };
    let bound = |value: i64, what: &str| {
        usize::try_from(value).map_err(|_| {
            config_error(format!(
                "pillow {name}: {what} must be >= 0 (0: a consumer per processor), not {value}"
            ))
        })
    };
    config.lane_max_lead_changes = bound(lane_max_lead_changes, "lane_max_lead_changes")?;
    config.lane_max_lead_bytes = bound(lane_max_lead_bytes, "lane_max_lead_bytes")?;
    Ok(())
}

/// A pillow: topics, processors and checkpoint settings. Building one connects to nothing.
#[pyclass(name = "Pillow", module = "pillowtop_rs._native", frozen)]
pub(crate) struct PyPillow {
    config: PillowConfig,
    topics: Vec<String>,
    processors: Vec<Py<PyAny>>,
    document_stores: Vec<((String, String), Py<PyAny>)>,
    on_processor_error: Option<Py<PyAny>>,
    /// The error rows of `process_changes` (in memory).
    memory_errors: Arc<MemoryErrorStore>,
}

fn config_error(message: String) -> PyErr {
    ConfigurationError::new_err(message)
}

#[pymethods]
impl PyPillow {
    #[new]
    #[pyo3(
        text_signature = "(name, topics, processors, *, checkpoint_id=None, chunk_size=10, checkpoint_frequency=100, max_checkpoint_delay=300.0, start_policy='earliest', strict=False, retry_errors=True, document_stores=None, background_checkpoints=True, on_processor_error=None, processor_checkpoints='shared', lane_max_lead_changes=10000, lane_max_lead_bytes=67108864)"
    )]
    #[pyo3(signature = (
        name, topics, processors, *, checkpoint_id = None, chunk_size = 10,
        checkpoint_frequency = 100, max_checkpoint_delay = Some(300.0),
        start_policy = "earliest", strict = false, retry_errors = true, document_stores = None,
        background_checkpoints = true, on_processor_error = None, processor_checkpoints = "shared",
        lane_max_lead_changes = LANE_MAX_LEAD_CHANGES,
        lane_max_lead_bytes = LANE_MAX_LEAD_BYTES,
    ))]
    #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)]
    fn new(
        py: Python<'_>,
        name: String,
        topics: Bound<'_, PyAny>,
        processors: Vec<Bound<'_, PyAny>>,
        checkpoint_id: Option<String>,
        chunk_size: i64,
        checkpoint_frequency: i64,
        max_checkpoint_delay: Option<f64>,
        start_policy: &str,
        strict: bool,
        retry_errors: bool,
        document_stores: Option<Bound<'_, PyDict>>,
        background_checkpoints: bool,
        on_processor_error: Option<Bound<'_, PyAny>>,
        processor_checkpoints: &str,
        lane_max_lead_changes: i64,
        lane_max_lead_bytes: i64,
    ) -> PyResult<Self> {
        let topics = super::topics::topic_names(&format!("Pillow {name:?}: topics"), &topics)?;
        let checkpoint_id = checkpoint_id.unwrap_or_else(|| name.clone());
        let mut config = PillowConfig::new(name.clone(), checkpoint_id);
        config.chunk_size = usize::try_from(chunk_size).map_err(|_| {
            config_error(format!(
                "pillow {name}: chunk_size must be >= 0, not {chunk_size}"
            ))
        })?;
        config.checkpoint_frequency = u64::try_from(checkpoint_frequency)
            .ok()
            .filter(|f| *f > 0)
            .ok_or_else(|| {
                config_error(format!(
                    "pillow {name}: checkpoint_frequency must be >= 1, not {checkpoint_frequency}"
                ))
            })?;
        config.max_checkpoint_delay = match max_checkpoint_delay {
            None => None,
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(config_error(format!(
                    "pillow {name}: max_checkpoint_delay must be a non-negative number of seconds or None, not {s}"
                )))
            }
        };
        config.start_policy = match start_policy {
            "earliest" => StartPolicy::Earliest,
            "latest" => StartPolicy::Latest,
            "error" => StartPolicy::Error,
            other => {
                return Err(config_error(format!(
                    "pillow {name}: start_policy must be 'earliest', 'latest' or 'error', not {other:?}"
                )))
            }
        };
        config.strict = strict;
        config.retry_errors = retry_errors;
        lane_settings(
            &mut config,
            processor_checkpoints,
            lane_max_lead_changes,
            lane_max_lead_bytes,
        )?;
        for p in &processors {
            if !p.is_instance_of::<PyRustProcessor>() {
                check_processor(&name, p)?;
            }
        }
        if let Some(h) = &on_processor_error {
            if !h.is_callable() {
                return Err(PyErr::new::<pyo3::exceptions::PyTypeError, _>(format!(
                    "pillow {name}: on_processor_error must be a callable (pillow_name, change, exception), not {}",
                    h.repr()?
                )));
            }
        }
        config.background_checkpoints = background_checkpoints;
        let mut stores = Vec::new();
        if let Some(d) = document_stores {
            for (k, v) in d.iter() {
                let (t, n): (String, String) = k.extract().map_err(|_| {
                    config_error(format!(
                        "pillow {name}: document_stores keys must be (data_source_type, data_source_name) tuples"
                    ))
                })?;
                if !v.is_instance_of::<PySqlDocumentStore>() && !is_document_store(&v)? {
                    return Err(PyErr::new::<pyo3::exceptions::PyTypeError, _>(format!(
                        "pillow {name}: the document store for ({t}, {n}) is neither a SqlDocumentStore nor an object with get_documents(ids), iter_documents(ids) or get_document(id)"
                    )));
                }
                stores.push(((t, n), v.unbind()));
            }
        }
        let pillow = Self {
            config,
            topics,
            processors: processors.into_iter().map(Bound::unbind).collect(),
            document_stores: stores,
            on_processor_error: on_processor_error.map(Bound::unbind),
            memory_errors: Arc::new(MemoryErrorStore::new()),
        };
        // The whole definition, validated as every front's is (exactly-once processors,
        // document stores, topics): a mistake fails here, not when the pillow runs.
        pillow
            .spec(
                py,
                Lane::current(),
                KafkaFeedOptions::new("", ""),
                String::new(),
            )?
            .validate()?;
        Ok(pillow)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.config.name
    }

    #[getter]
    fn checkpoint_id(&self) -> &str {
        &self.config.checkpoint_id
    }

    #[getter]
    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    /// `"shared"` (CommCare's model) or `"independent"` (each processor its own checkpoint).
    /// Independent processors: how many changes the fastest processor may lead the slowest on
    /// the one shared read of Kafka before the slowest detaches to a consumer of its own.
    #[getter]
    fn lane_max_lead_changes(&self) -> usize {
        self.config.lane_max_lead_changes
    }

    /// The same bound in bytes of message bodies held.
    #[getter]
    fn lane_max_lead_bytes(&self) -> usize {
        self.config.lane_max_lead_bytes
    }

    #[getter]
    fn processor_checkpoints(&self) -> &'static str {
        match self.config.processor_checkpoints {
            ProcessorCheckpoints::Shared => "shared",
            ProcessorCheckpoints::Independent => "independent",
        }
    }

    #[getter]
    fn chunk_size(&self) -> usize {
        self.config.chunk_size
    }

    #[getter]
    fn processors(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        self.processors.iter().map(|p| p.clone_ref(py)).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Pillow(name={:?}, checkpoint_id={:?}, topics={:?}, processors={}, chunk_size={})",
            self.config.name,
            self.config.checkpoint_id,
            self.topics,
            self.processors.len(),
            self.config.chunk_size
        )
    }

    /// Runs the pillow until stopped; see the module docs for threads and signals.
    #[pyo3(signature = (
        *, kafka, postgres, process_number = 0, num_processes = 1,
        dedicated_migration_process = false, until_idle = false, max_changes = None,
        on_chunk = None, idle_timeout = 10.0, stall_timeout = Some(60.0), max_message_bytes = None,
        postgres_outage_budget = 300.0, kafka_setting = None, since = None, kafka_config = None,
        metrics_port = None, metrics_sink = None, log_output = "logging",
        max_checkpoint_delay = None, background_checkpoints = None, shared_runtime = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        kafka: String,
        postgres: String,
        process_number: u32,
        num_processes: u32,
        dedicated_migration_process: bool,
        until_idle: bool,
        max_changes: Option<u64>,
        on_chunk: Option<Py<PyAny>>,
        idle_timeout: f64,
        stall_timeout: Option<f64>,
        max_message_bytes: Option<i64>,
        postgres_outage_budget: f64,
        kafka_setting: Option<String>,
        since: Option<HashMap<(String, i32), i64>>,
        kafka_config: Option<Bound<'_, PyDict>>,
        metrics_port: Option<u16>,
        metrics_sink: Option<Py<PyAny>>,
        log_output: &str,
        max_checkpoint_delay: Option<f64>,
        background_checkpoints: Option<bool>,
        shared_runtime: bool,
    ) -> PyResult<PyRunSummary> {
        crate::telemetry::init();
        warn_off_main_thread(py)?;
        let log_output = super::observe::log_output(log_output)?;
        let mut config = self.config.clone();
        config.layout = Layout {
            num_processes,
            process_num: process_number,
            dedicated_migration_process,
        };
        config.until_idle = until_idle;
        config.max_changes = max_changes;
        config.since = since.map(|s| {
            s.into_iter()
                .map(|((t, p), o)| (TopicPartition::new(t, p), o))
                .collect()
        });
        override_checkpoints(&mut config, max_checkpoint_delay, background_checkpoints)?;
        config.validate()?;
        if !(idle_timeout.is_finite() && idle_timeout > 0.0) {
            return Err(config_error(format!(
                "idle_timeout must be a positive number of seconds, not {idle_timeout}"
            )));
        }
        config.stall_timeout = match stall_timeout {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(config_error(format!(
                    "stall_timeout must be a positive number of seconds or None, not {s}"
                )))
            }
        };
        let mut feed = KafkaFeedOptions::new(kafka, config.name.clone());
        feed.idle_timeout = Duration::from_secs_f64(idle_timeout);
        feed.bootstrap_setting =
            Some(kafka_setting.unwrap_or_else(|| "Pillow.run(kafka=...)".to_owned()));
        feed.max_message_bytes = match max_message_bytes {
            None => None,
            Some(n) => Some(usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                config_error(format!(
                    "max_message_bytes must be a positive number of bytes or None (the topic's max.message.bytes), not {n}"
                ))
            })?),
        };
        if let Some(c) = kafka_config {
            feed.client_config = client_config(&c)?;
        }
        let mut spec = self.spec(py, Lane::current(), feed, postgres)?;
        spec.config = config;
        if !(postgres_outage_budget.is_finite() && postgres_outage_budget >= 0.0) {
            return Err(config_error(format!(
                "postgres_outage_budget must be a non-negative number of seconds, not {postgres_outage_budget}"
            )));
        }
        spec.postgres_outage_budget = Duration::from_secs_f64(postgres_outage_budget);
        spec.validate()?;
        let hook = on_chunk.map(|f| {
            Box::new(PyHook {
                f,
                lane: Lane::current(),
            }) as Box<dyn LoopHook>
        });
        let mut observer = Some(super::observe::Observer::new(
            py,
            log_output,
            metrics_port,
            metrics_sink,
        )?);
        let token = CancellationToken::new();
        let registered = Registered::new(token.clone());
        let sigint = SigintGuard::install(py)?;
        let lane_observer = &mut observer;
        let result = detached(py, move || -> PyResult<RunSummary> {
            if shared_runtime {
                // Virtual workers: every worker's I/O on the process's one runtime, each
                // worker's loop driven by its own thread (its lane).
                let runtime = shared()?;
                return runtime
                    .handle()
                    .block_on(drive(spec, hook, token, lane_observer));
            }
            let runtime = runtime_from(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("pillowtop-io"),
            )?;
            let outcome = runtime.block_on(drive(spec, hook, token, lane_observer));
            // Blocking librdkafka calls that a stop abandoned (metadata of an unreachable
            // broker) are not waited for long.
            runtime.shutdown_timeout(Duration::from_secs(1));
            outcome
        });
        drop(registered);
        if let Some(o) = observer {
            o.finish(py);
        }
        sigint.restore(py)?;
        result.map(PyRunSummary::from)
    }

    /// Runs `changes` through the pillow in memory, on this thread, with the real loop
    /// (chunking, de-duplication, the serial fallback, error recording, the checkpoint rules)
    /// over an in-memory feed, checkpoint store and error store: a processor's unit test needs
    /// neither Kafka nor PostgreSQL. Error rows persist across calls on this pillow
    /// (`error_rows()`), as the error table does.
    fn process_changes(
        &self,
        py: Python<'_>,
        changes: &Bound<'_, PyAny>,
    ) -> PyResult<PyProcessResult> {
        let topics = self.topics.clone();
        let default_topic = topics.first().cloned().unwrap_or_default();
        let mut core = Vec::new();
        for c in changes.try_iter().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(
                "process_changes takes an iterable of Change objects".to_owned(),
            )
        })? {
            let c = c?;
            let mut change = match c.cast::<PyChange>() {
                Ok(ours) => ours.borrow().snapshot(py)?,
                // CommCare's own `Change` (or any object with its attributes).
                Err(_) => PyChange::from_attributes(py, &c)?.snapshot(py)?,
            };
            if change.topic.is_empty() {
                change.topic.clone_from(&default_topic);
            }
            if change.partition < 0 {
                change.partition = 0;
            }
            if !topics.contains(&change.topic) {
                return Err(config_error(format!(
                    "pillow {}: change {} is on topic {:?}, which the pillow does not read ({})",
                    self.config.name,
                    change.id,
                    change.topic,
                    topics.join(", ")
                )));
            }
            core.push(change);
        }
        let partitions = core.iter().map(|c| c.partition + 1).max().unwrap_or(1);
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut feed = MemoryFeed::new(&topic_refs, partitions);
        for c in core {
            feed.push_ready(c);
        }
        let mut spec = self.spec(
            py,
            Lane::current(),
            KafkaFeedOptions::new("", ""),
            String::new(),
        )?;
        spec.config.since = Some(
            topics
                .iter()
                .flat_map(|t| (0..partitions).map(move |p| (TopicPartition::new(t.clone(), p), 0)))
                .collect(),
        );
        let checkpoints = Arc::new(MemoryCheckpointStore::new());
        let errors = self.memory_errors.clone();
        let pillow = spec.build_in_memory(feed, checkpoints.clone(), errors.clone())?;
        let summary = detached(py, move || -> PyResult<RunSummary> {
            let runtime = runtime_from(&mut tokio::runtime::Builder::new_current_thread())?;
            let mut pillow = pillow;
            Ok(runtime.block_on(pillow.run(&CancellationToken::new()))?)
        })?;
        let checkpoint = checkpoints
            .all()
            .into_iter()
            .map(|(_, row)| ((row.tp.topic, row.tp.partition), row.offset))
            .collect();
        Ok(PyProcessResult {
            summary: Py::new(py, PyRunSummary::from(summary))?,
            checkpoint,
        })
    }

    /// `process_changes([change])`: CommCare's `pillow.process_change(change)` in tests.
    fn process_change(
        &self,
        py: Python<'_>,
        change: &Bound<'_, PyAny>,
    ) -> PyResult<PyProcessResult> {
        let list = pyo3::types::PyList::new(py, [change])?;
        self.process_changes(py, list.as_any())
    }

    /// The error rows `process_changes` recorded on this pillow (CommCare's `PillowError`
    /// fields), oldest first.
    fn error_rows<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let errors = self.memory_errors.clone();
        let name = self.config.name.clone();
        let rows = detached(py, move || -> PyResult<_> {
            let runtime = runtime_from(&mut tokio::runtime::Builder::new_current_thread())?;
            Ok(runtime.block_on(errors.list(&name))?)
        })?;
        rows.iter()
            .map(|r| {
                let value = serde_json::to_value(r).map_err(|e| {
                    pyo3::exceptions::PyTypeError::new_err(format!("error row: {e}"))
                })?;
                Ok(pythonize::pythonize(py, &value)?)
            })
            .collect()
    }
}

/// The process's runtime shared by `run(shared_runtime=True)` callers (virtual workers), made
/// on first use and kept for the life of the process; a forked child makes its own (the
/// parent's threads do not exist there, so its runtime is forgotten, never dropped).
static SHARED: Mutex<Option<(u32, Arc<tokio::runtime::Runtime>)>> = Mutex::new(None);

fn shared() -> PyResult<Arc<tokio::runtime::Runtime>> {
    let pid = std::process::id();
    let mut slot = SHARED.lock().map_err(|_| {
        PyErr::from(crate::Error::from(ProcessError::Other(
            "the shared runtime's lock is poisoned".to_owned(),
        )))
    })?;
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
    }
    if let Some((_, inherited)) = slot.take() {
        std::mem::forget(inherited);
    }
    let rt = Arc::new(runtime_from(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pillowtop-io"),
    )?);
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// What `Pillow.process_changes()` did: the run's summary and the checkpoint it wrote.
#[pyclass(
    name = "ProcessResult",
    module = "pillowtop_rs._native",
    frozen,
    get_all
)]
pub(crate) struct PyProcessResult {
    summary: Py<PyRunSummary>,
    /// The checkpoint written, by (topic, partition): the next offset to read.
    checkpoint: HashMap<(String, i32), i64>,
}

#[pymethods]
impl PyProcessResult {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ProcessResult(summary={}, checkpoint={:?})",
            self.summary.borrow(py).__repr__(),
            self.checkpoint
        )
    }
}

impl PyPillow {
    /// The pillow's definition for a run on the lane `lane` (each run gets a fresh one: Python
    /// processors and stores are bound to the thread that runs the pillow).
    fn spec(
        &self,
        py: Python<'_>,
        lane: Lane,
        feed: KafkaFeedOptions,
        postgres_url: String,
    ) -> PyResult<PillowSpec> {
        let stores = Arc::new(PyStores::new(&self.document_stores, py));
        let hook = self.on_processor_error.as_ref().map(|f| {
            Arc::new(ErrorHook {
                f: f.clone_ref(py),
                pillow: self.config.name.clone(),
            })
        });
        let mut processors = Vec::with_capacity(self.processors.len());
        for p in &self.processors {
            let p = p.bind(py);
            processors.push(match p.cast::<PyRustProcessor>() {
                Ok(rust) => rust.get().spec(py, Some(lane)),
                Err(_) => ProcessorSpec::Ready(Box::new(PyProcessor::new(
                    p,
                    lane,
                    stores.clone(),
                    hook.clone(),
                )?)),
            });
        }
        let mut document_stores = Vec::with_capacity(self.document_stores.len());
        for ((t, n), store) in &self.document_stores {
            let store = store.bind(py);
            let source = match store.cast::<PySqlDocumentStore>() {
                Ok(sql) => sql.get().source(),
                Err(_) => DocumentSource::Ready(Arc::new(PyDocumentStore::new(store, lane)?)),
            };
            document_stores.push(DocumentStoreSpec {
                data_source_type: t.clone(),
                data_source_name: n.clone(),
                source,
            });
        }
        Ok(PillowSpec {
            config: self.config.clone(),
            topics: self.topics.clone(),
            feed,
            postgres_url,
            postgres_outage_budget: crate::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
            processors,
            document_stores,
        })
    }
}

/// Ctrl-C during `run()` is a graceful stop, exactly as SIGTERM through `request_shutdown()`:
/// while a pillow runs on the main thread with Python's default SIGINT handler, a handler of
/// ours takes its place. The first Ctrl-C asks every running pillow to stop after its chunk and
/// a final checkpoint (no `KeyboardInterrupt` lands inside a processor half-way through a
/// chunk); `run()` then re-raises `KeyboardInterrupt`, carrying the run's summary as
/// `.summary`. A second Ctrl-C raises `KeyboardInterrupt` at once.
struct SigintGuard {
    previous: Option<Py<PyAny>>,
}

/// Ctrl-Cs received since the current guard was installed.
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

#[pyfunction]
fn on_sigint(_signum: i32, _frame: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        tracing::warn!("interrupted (Ctrl-C): finishing the current chunk, then writing the final checkpoint; press Ctrl-C again to stop at once");
        request_shutdown();
        Ok(())
    } else {
        Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(
            "second interrupt: stopping at once",
        ))
    }
}

impl SigintGuard {
    fn install(py: Python<'_>) -> PyResult<Self> {
        let signal = py.import("signal")?;
        let current = signal.call_method1("getsignal", (signal.getattr("SIGINT")?,))?;
        if !on_main_thread(py)? || !current.is(&signal.getattr("default_int_handler")?) {
            // Another thread cannot set handlers; a project's own handler is left alone.
            return Ok(Self { previous: None });
        }
        INTERRUPTS.store(0, Ordering::SeqCst);
        let ours = wrap_pyfunction!(on_sigint, py)?;
        signal.call_method1("signal", (signal.getattr("SIGINT")?, ours))?;
        Ok(Self {
            previous: Some(current.unbind()),
        })
    }

    fn interrupted() -> bool {
        INTERRUPTS.load(Ordering::SeqCst) > 0
    }

    fn restore(self, py: Python<'_>) -> PyResult<()> {
        if let Some(previous) = self.previous {
            let signal = py.import("signal")?;
            signal.call_method1("signal", (signal.getattr("SIGINT")?, previous))?;
        }
        Ok(())
    }
}

/// Builds the pillow on the runtime and runs it, polling for signals on the lane meanwhile
/// (also during the start-up, so a stop request ends its waits).
async fn drive(
    spec: PillowSpec,
    hook: Option<Box<dyn LoopHook>>,
    token: CancellationToken,
    observer: &mut Option<super::observe::Observer>,
) -> PyResult<RunSummary> {
    let recorder = observer
        .as_ref()
        .and_then(super::observe::Observer::recorder);
    if let Some(o) = observer.as_mut() {
        o.serve(token.child_token())?;
    }
    // The endpoint lives as long as the run; `run` below ends on the same token otherwise.
    let _endpoint = EndpointGuard(token.clone());
    // With independent processors the closure is applied to each lane: each gets the metrics;
    // the hook (Django's connection cleanup, per thread: every lane runs on this one) goes to
    // the first.
    let mut hook = hook;
    let run = spec.run(&token, |p| {
        let p = match &recorder {
            Some(r) => p.with_metrics(r.clone()),
            None => p,
        };
        match hook.take() {
            Some(h) => p.with_hook(h),
            None => p,
        }
    });
    tokio::pin!(run);
    let mut interrupted: Option<PyErr> = None;
    let mut tick = tokio::time::interval(SIGNAL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Our Ctrl-C handler (run by `check_signals` below) has asked every pillow to stop:
        // remember to re-raise the interrupt once this one has.
        if interrupted.is_none() && SigintGuard::interrupted() {
            interrupted = Some(pyo3::exceptions::PyKeyboardInterrupt::new_err(
                "interrupted: stopped after the final checkpoint",
            ));
        }
        tokio::select! {
            result = &mut run => {
                return match (result, interrupted) {
                    // The interrupt is re-raised after the final checkpoint, with the summary.
                    (Ok(summary), Some(e)) => {
                        Python::attach(|py| {
                            let _ = e.value(py).setattr("summary", PyRunSummary::from(summary));
                        });
                        Err(e)
                    }
                    (Ok(summary), None) => Ok(summary),
                    (Err(e), _) => Err(e.into()),
                };
            }
            _ = tick.tick() => {
                // On the lane (this future is polled by `block_on` on the calling thread).
                if let Some(o) = observer.as_mut() {
                    Python::attach(|py| o.tick(py));
                }
                #[allow(clippy::redundant_closure_for_method_calls)] // the lifetime needs the closure
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    // `ShutdownRequested` (a second SIGTERM in `run_ptop`) means "at once".
                    let at_once = Python::attach(|py| e.is_instance_of::<ShutdownRequested>(py));
                    if interrupted.is_some() || at_once {
                        tracing::warn!(error = %e, "second interrupt: stopping without a final checkpoint");
                        return Err(e);
                    }
                    tracing::info!(error = %e, "interrupted: finishing the current chunk and writing the final checkpoint");
                    interrupted = Some(e);
                    token.cancel();
                }
            }
        }
    }
}

/// A run's overrides of the definition (Django: `PTOP_CHECKPOINT_DELAY_OVERRIDE`,
/// `PILLOWTOP_RS['BACKGROUND_CHECKPOINTS']`); a delay of `inf` turns the time rule off.
fn override_checkpoints(
    config: &mut PillowConfig,
    max_checkpoint_delay: Option<f64>,
    background_checkpoints: Option<bool>,
) -> PyResult<()> {
    match max_checkpoint_delay {
        None => {}
        Some(s) if s == f64::INFINITY => config.max_checkpoint_delay = None,
        Some(s) if s.is_finite() && s >= 0.0 => {
            config.max_checkpoint_delay = Some(Duration::from_secs_f64(s));
        }
        Some(s) => {
            return Err(config_error(format!(
                "max_checkpoint_delay must be a non-negative number of seconds (math.inf: no time rule), or None for the pillow's own, not {s}"
            )))
        }
    }
    if let Some(b) = background_checkpoints {
        config.background_checkpoints = b;
    }
    Ok(())
}

/// Stops the metrics endpoint when `drive` returns, however it returns.
struct EndpointGuard(CancellationToken);

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// `Pillow.run(kafka_config=…)`: librdkafka property names to values (str, int, float or bool).
fn client_config(d: &Bound<'_, PyDict>) -> PyResult<crate::feed::kafka::KafkaClientConfig> {
    let mut c = crate::feed::kafka::KafkaClientConfig::new();
    for (k, v) in d.iter() {
        let key: String = k.extract().map_err(|_| {
            config_error(format!(
                "kafka_config keys must be librdkafka property names (str), not {}",
                k.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
            ))
        })?;
        let value = if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
            if b.is_true() { "true" } else { "false" }.to_owned()
        } else if v.is_instance_of::<pyo3::types::PyString>()
            || v.is_instance_of::<pyo3::types::PyInt>()
            || v.is_instance_of::<pyo3::types::PyFloat>()
        {
            v.str()?.to_string()
        } else {
            return Err(config_error(format!(
                "kafka_config[{key:?}] must be a str, int, float or bool, not {}",
                v.get_type().name()?
            )));
        };
        c.set(key, value)?;
    }
    Ok(c)
}

/// `on_chunk`: a Python callable run around each chunk and on idle ticks.
struct PyHook {
    f: Py<PyAny>,
    lane: Lane,
}

impl LoopHook for PyHook {
    fn call(&mut self, _point: HookPoint) -> crate::Result<()> {
        self.lane.check("on_chunk")?;
        Python::attach(|py| {
            self.f
                .call0(py)
                .map(|_| ())
                .map_err(|e| ProcessError::Callback(Box::new(e)).into())
        })
    }
}

/// Whether this is Python's main thread (the only one signal handlers run on and can be set from).
fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    Ok(threading
        .call_method0("main_thread")?
        .is(&threading.call_method0("current_thread")?))
}

/// Signals reach only the main thread: warn when `run()` is called elsewhere.
fn warn_off_main_thread(py: Python<'_>) -> PyResult<()> {
    if !on_main_thread(py)? {
        let warnings = py.import("warnings")?;
        let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
        warnings.call_method1(
            "warn",
            (
                "Pillow.run() called off the main thread: Ctrl-C and SIGTERM handlers cannot reach it; stop it with request_shutdown()",
                category,
                2,
            ),
        )?;
    }
    Ok(())
}
