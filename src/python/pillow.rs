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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio_util::sync::CancellationToken;

use super::detach::detached;
use super::errors::{ConfigurationError, ShutdownRequested};
use super::processor::{is_processor, Lane, PyDocumentStore, PyProcessor};
use super::rust_processors::PyRustProcessor;
use crate::docstore::DocumentStores;
use crate::error::ProcessError;
use crate::feed::assignment::Layout;
use crate::feed::kafka::{KafkaFeed, KafkaFeedOptions};
use crate::pg::Pg;
use crate::pillow::{
    HookPoint, LoopHook, Pillow, PillowConfig, RunSummary, StartPolicy, StopReason,
};
use crate::processor::Processor;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::errors::postgres::PostgresErrorStore;
use crate::store::liveness::postgres::PostgresLivenessStore;

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

/// A pillow: topics, processors and checkpoint settings. Building one connects to nothing.
#[pyclass(name = "Pillow", module = "pillowtop_rs._native", frozen)]
pub(crate) struct PyPillow {
    config: PillowConfig,
    topics: Vec<String>,
    processors: Vec<Py<PyAny>>,
    document_stores: Vec<((String, String), Py<PyAny>)>,
}

fn config_error(message: String) -> PyErr {
    ConfigurationError::new_err(message)
}

#[pymethods]
impl PyPillow {
    #[new]
    #[pyo3(
        text_signature = "(name, topics, processors, *, checkpoint_id=None, chunk_size=10, checkpoint_frequency=100, max_checkpoint_delay=300.0, start_policy='earliest', strict=False, retry_errors=True, document_stores=None)"
    )]
    #[pyo3(signature = (
        name, topics, processors, *, checkpoint_id = None, chunk_size = 10,
        checkpoint_frequency = 100, max_checkpoint_delay = Some(300.0),
        start_policy = "earliest", strict = false, retry_errors = true, document_stores = None,
    ))]
    #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)]
    fn new(
        name: String,
        topics: Vec<String>,
        processors: Vec<Bound<'_, PyAny>>,
        checkpoint_id: Option<String>,
        chunk_size: i64,
        checkpoint_frequency: i64,
        max_checkpoint_delay: Option<f64>,
        start_policy: &str,
        strict: bool,
        retry_errors: bool,
        document_stores: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
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
        config.validate()?;
        if topics.is_empty() {
            return Err(config_error(format!("pillow {name} reads no topics")));
        }
        for t in &topics {
            crate::partition::validate_topic_name(t).map_err(crate::Error::from)?;
        }
        for p in &processors {
            if !is_processor(p)? && !p.is_instance_of::<PyRustProcessor>() {
                return Err(PyErr::new::<pyo3::exceptions::PyTypeError, _>(format!(
                    "pillow {name}: processors must be pillowtop_rs.PillowProcessor or RustProcessor instances, not {}",
                    p.repr()?
                )));
            }
        }
        let mut stores = Vec::new();
        if let Some(d) = document_stores {
            for (k, v) in d.iter() {
                let (t, n): (String, String) = k.extract().map_err(|_| {
                    config_error(format!(
                        "pillow {name}: document_stores keys must be (data_source_type, data_source_name) tuples"
                    ))
                })?;
                if !v.hasattr("get_documents")? {
                    return Err(PyErr::new::<pyo3::exceptions::PyTypeError, _>(format!(
                        "pillow {name}: the document store for ({t}, {n}) has no get_documents(ids) method"
                    )));
                }
                stores.push(((t, n), v.unbind()));
            }
        }
        Ok(Self {
            config,
            topics,
            processors: processors.into_iter().map(Bound::unbind).collect(),
            document_stores: stores,
        })
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
        on_chunk = None, idle_timeout = 10.0, stall_timeout = Some(60.0),
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
    ) -> PyResult<PyRunSummary> {
        crate::telemetry::init();
        warn_off_main_thread(py)?;
        let mut config = self.config.clone();
        config.layout = Layout {
            num_processes,
            process_num: process_number,
            dedicated_migration_process,
        };
        config.until_idle = until_idle;
        config.max_changes = max_changes;
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
        let lane = Lane::current();
        let mut processors: Vec<Box<dyn Processor>> = Vec::new();
        for p in &self.processors {
            let p = p.bind(py);
            match p.cast::<PyRustProcessor>() {
                Ok(rust) => processors.push(rust.get().build(py, lane, &postgres)?),
                Err(_) => processors.push(Box::new(PyProcessor::new(p, lane)?)),
            }
        }
        let mut stores = DocumentStores::new();
        for ((t, n), s) in &self.document_stores {
            stores.register(t, n, Arc::new(PyDocumentStore::new(s.bind(py), lane)?));
        }
        let hook = on_chunk.map(|f| Box::new(PyHook { f, lane }) as Box<dyn LoopHook>);
        let topics = self.topics.clone();
        let token = CancellationToken::new();
        let registered = Registered::new(token.clone());
        let result = detached(py, move || -> PyResult<RunSummary> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pillowtop-io")
                .enable_all()
                .build()
                .map_err(|e| {
                    PyErr::from(crate::Error::from(ProcessError::Other(format!(
                        "cannot start the async runtime: {e}"
                    ))))
                })?;
            let outcome = runtime.block_on(drive(
                config,
                topics,
                kafka,
                postgres,
                processors,
                stores,
                hook,
                token,
                Duration::from_secs_f64(idle_timeout),
            ));
            runtime.shutdown_timeout(Duration::from_secs(5));
            outcome
        });
        drop(registered);
        result.map(PyRunSummary::from)
    }
}

/// Builds the services' clients on the runtime and runs the loop with the signal poller.
#[allow(clippy::too_many_arguments)]
async fn drive(
    config: PillowConfig,
    topics: Vec<String>,
    kafka: String,
    postgres: String,
    processors: Vec<Box<dyn Processor>>,
    stores: DocumentStores,
    hook: Option<Box<dyn LoopHook>>,
    token: CancellationToken,
    idle_timeout: Duration,
) -> PyResult<RunSummary> {
    let pg = Arc::new(Pg::new(postgres));
    crate::store::schema::ensure_schema(&pg).await?;
    let mut options = KafkaFeedOptions::new(kafka, config.name.clone());
    options.idle_timeout = idle_timeout;
    let feed = KafkaFeed::new(&topics, options)?;
    let mut pillow = Pillow::new(
        config,
        Box::new(feed),
        processors,
        Arc::new(PostgresCheckpointStore::new(pg.clone())),
        Arc::new(PostgresErrorStore::new(pg.clone())),
    )
    .with_document_stores(stores)
    .with_liveness(Arc::new(PostgresLivenessStore::new(pg)));
    if let Some(h) = hook {
        pillow = pillow.with_hook(h);
    }
    let run = pillow.run(&token);
    tokio::pin!(run);
    let mut interrupted: Option<PyErr> = None;
    let mut tick = tokio::time::interval(SIGNAL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut run => {
                return match (result, interrupted) {
                    // The interrupt is re-raised after the final checkpoint.
                    (Ok(_), Some(e)) => Err(e),
                    (Ok(summary), None) => Ok(summary),
                    (Err(e), _) => Err(e.into()),
                };
            }
            _ = tick.tick() => {
                #[allow(clippy::redundant_closure_for_method_calls)] // the lifetime needs the closure
                // On the lane (this future is polled by `block_on` on the calling thread).
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

/// Signals reach only the main thread: warn when `run()` is called elsewhere.
fn warn_off_main_thread(py: Python<'_>) -> PyResult<()> {
    let threading = py.import("threading")?;
    let main = threading.call_method0("main_thread")?;
    let current = threading.call_method0("current_thread")?;
    if !main.is(&current) {
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
