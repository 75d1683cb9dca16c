//! What a Python pillow's run tells the outside: log lines into Python `logging` and metrics
//! (a Prometheus endpoint, a Python sink), all delivered on the Python lane.
//!
//! Logging: the core queues its `tracing` events ([`crate::telemetry::LOG_QUEUE`], bounded,
//! never waiting) from whatever thread emits them; [`Observer::tick`] (every `SIGNAL_TICK` of
//! `drive()`) and [`Observer::finish`] (when `run()` returns, also on errors) emit them into
//! logger `pillowtop_rs.<module>` (`pillowtop::pillow::run` → `pillowtop_rs.pillow`,
//! `librdkafka` → `pillowtop_rs.librdkafka`) with the event's level (TRACE → DEBUG), file, line
//! and time, its fields as `extra` (a field named like a `LogRecord` attribute gets a trailing
//! `_`) and in the message (`message name=value …`). Only levels some `pillowtop_rs` logger
//! wants are queued (read when `run()` starts), and each record is checked with `isEnabledFor`.
//!
//! Metrics: with `metrics_port`, a `MemoryRecorder` rendered by the same Prometheus endpoint as
//! `pillowtop run --metrics-port`; with `metrics_sink`, a [`Buffered`] recorder whose batch
//! (counters summed, gauges last, histogram observations one by one) is handed to
//! `sink.counter(name, value, tags)`, `sink.gauge(…)`, `sink.histogram(…)` every second and
//! at the end of the run, on the lane.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tracing::Level;

use super::errors::ConfigurationError;
use crate::metrics::{Buffered, Fanout, MemoryRecorder, Recorder, Tags};
use crate::telemetry::{EmbeddedRun, FieldValue, LogOutput, LogRecord, LOG_QUEUE};

/// How often the sink gets a batch.
const SINK_INTERVAL: Duration = Duration::from_secs(1);
/// Histogram observations kept between two batches.
const SINK_CAPACITY: usize = 10_000;

/// `LogRecord` attributes an `extra` key may not overwrite (`logging` raises `KeyError`).
const RESERVED: &[&str] = &[
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "taskName",
    "message",
    "asctime",
];

/// The Python logger of a `tracing` target.
fn logger_name(target: &str) -> String {
    let mut parts = target.split("::");
    let first = parts.next().unwrap_or_default();
    match (first, parts.next()) {
        ("pillowtop", None) | ("", _) => "pillowtop_rs".to_owned(),
        ("pillowtop", Some(module)) => format!("pillowtop_rs.{module}"),
        (other, _) => format!("pillowtop_rs.{other}"),
    }
}

fn python_level(level: Level) -> i32 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG | Level::TRACE => 10,
    }
}

/// The most verbose `tracing` level that some `pillowtop_rs` logger emits.
fn wanted_level(logging: &Bound<'_, PyModule>) -> PyResult<Option<Level>> {
    let mut lowest: i64 = logging
        .call_method1("getLogger", ("pillowtop_rs",))?
        .call_method0("getEffectiveLevel")?
        .extract()?;
    let manager = logging.getattr("Logger")?.getattr("manager")?;
    let existing = manager.getattr("loggerDict")?.cast_into::<PyDict>()?;
    for (name, logger) in existing.iter() {
        let name: String = name.extract().unwrap_or_default();
        if name.starts_with("pillowtop_rs.") && logger.hasattr("getEffectiveLevel")? {
            lowest = lowest.min(logger.call_method0("getEffectiveLevel")?.extract()?);
        }
    }
    if logging
        .getattr("root")?
        .getattr("manager")?
        .getattr("disable")?
        .extract::<i64>()?
        >= 50
    {
        return Ok(None);
    }
    Ok(match lowest {
        i64::MIN..=5 => Some(Level::TRACE),
        6..=10 => Some(Level::DEBUG),
        11..=20 => Some(Level::INFO),
        21..=30 => Some(Level::WARN),
        31..=50 => Some(Level::ERROR),
        _ => None,
    })
}

fn field_value<'py>(py: Python<'py>, v: &FieldValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        FieldValue::Str(s) => s.into_pyobject(py)?.into_any(),
        FieldValue::I64(n) => n.into_pyobject(py)?.into_any(),
        FieldValue::U64(n) => n.into_pyobject(py)?.into_any(),
        FieldValue::F64(n) => n.into_pyobject(py)?.into_any(),
        FieldValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
    })
}

/// Emits queued records into Python `logging`.
struct LogBridge {
    logging: Py<PyModule>,
    loggers: HashMap<&'static str, Py<PyAny>>,
    start_time: f64,
}

impl LogBridge {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let logging = py.import("logging")?;
        let start_time: f64 = logging.getattr("_startTime")?.extract().unwrap_or(0.0);
        Ok(Self {
            logging: logging.unbind(),
            loggers: HashMap::new(),
            start_time,
        })
    }

    fn logger<'py>(
        &mut self,
        py: Python<'py>,
        target: &'static str,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Some(l) = self.loggers.get(target) {
            return Ok(l.bind(py).clone());
        }
        let l = self
            .logging
            .bind(py)
            .call_method1("getLogger", (logger_name(target),))?;
        self.loggers.insert(target, l.clone().unbind());
        Ok(l)
    }

    fn emit(&mut self, py: Python<'_>, r: &LogRecord) -> PyResult<()> {
        let logger = self.logger(py, r.target)?;
        let level = python_level(r.level);
        if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            return Ok(());
        }
        let extra = PyDict::new(py);
        for (k, v) in &r.fields {
            let value = field_value(py, v)?;
            if RESERVED.contains(k) {
                extra.set_item(format!("{k}_"), value)?;
            } else {
                extra.set_item(*k, value)?;
            }
        }
        extra.set_item("rust_target", r.target)?;
        let name = logger.getattr("name")?;
        let record = logger.call_method1(
            "makeRecord",
            (
                name,
                level,
                r.file.unwrap_or("<rust>"),
                r.line.unwrap_or(0),
                r.text.as_str(),
                PyTuple::empty(py),
                py.None(),
                py.None(),
                extra,
            ),
        )?;
        let created = r
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        record.setattr("created", created)?;
        record.setattr("msecs", (created.fract() * 1000.0).floor())?;
        record.setattr("relativeCreated", (created - self.start_time) * 1000.0)?;
        logger.call_method1("handle", (record,))?;
        Ok(())
    }

    /// Emits every queued record, then a warning if some were dropped.
    fn drain(&mut self, py: Python<'_>) {
        for r in LOG_QUEUE.drain() {
            // A broken handler is logging's to report (`handleError`); a record we cannot
            // build is skipped rather than stopping the pillow.
            if let Err(e) = self.emit(py, &r) {
                e.print(py);
            }
        }
        let dropped = LOG_QUEUE.take_dropped();
        if dropped > 0 {
            if let Ok(l) = self.logger(py, "pillowtop") {
                let _ = l.call_method1(
                    "warning",
                    (format!(
                        "{dropped} log record(s) of the Rust core were dropped: the queue of {} records was full (the thread running the pillow did not drain it in time)",
                        crate::telemetry::LOG_QUEUE_CAPACITY
                    ),),
                );
            }
        }
    }
}

/// Hands batches of metrics to a Python object.
struct Sink {
    object: Py<PyAny>,
    buffer: Arc<Buffered>,
    last: Instant,
    failures: u64,
}

fn tags_dict<'py>(py: Python<'py>, tags: &Tags) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in tags {
        d.set_item(*k, v)?;
    }
    Ok(d)
}

impl Sink {
    fn deliver(&mut self, py: Python<'_>) -> PyResult<()> {
        let batch = self.buffer.take();
        let sink = self.object.bind(py);
        for (method, samples) in [
            ("counter", &batch.counters),
            ("gauge", &batch.gauges),
            ("histogram", &batch.histograms),
        ] {
            for (name, tags, value) in samples {
                sink.call_method1(method, (*name, *value, tags_dict(py, tags)?))?;
            }
        }
        if batch.dropped > 0 {
            tracing::warn!(
                dropped = batch.dropped,
                "metrics sink: histogram observations dropped (more than {SINK_CAPACITY} in one second)"
            );
        }
        Ok(())
    }

    fn flush(&mut self, py: Python<'_>) {
        self.last = Instant::now();
        if let Err(e) = self.deliver(py) {
            self.failures += 1;
            if self.failures == 1 {
                // Once per run, with the traceback; the count comes at the end.
                let logging = py.import("logging");
                if let Ok(l) =
                    logging.and_then(|m| m.call_method1("getLogger", ("pillowtop_rs.metrics",)))
                {
                    let kw = PyDict::new(py);
                    let _ = kw.set_item("exc_info", e.clone_ref(py).into_value(py));
                    let _ = l.call_method(
                        "error",
                        ("metrics sink %r failed; its batches are dropped until it works again (reported once per run)", self.object.bind(py)),
                        Some(&kw),
                    );
                }
            }
        }
    }
}

/// A run's observers; see the module docs.
pub(crate) struct Observer {
    _logging: EmbeddedRun,
    bridge: Option<LogBridge>,
    memory: Option<Arc<MemoryRecorder>>,
    sink: Option<Sink>,
    listener: Option<std::net::TcpListener>,
}

/// Where a run's logs go, from `Pillow.run(log_output=…)`.
pub(crate) fn log_output(value: &str) -> PyResult<LogOutput> {
    match value {
        "logging" => Ok(LogOutput::Forward),
        "stderr" => Ok(LogOutput::Stderr),
        "both" => Ok(LogOutput::Both),
        other => Err(ConfigurationError::new_err(format!(
            "log_output must be 'logging' (Python logging, the default), 'stderr' (the CLI's output) or 'both', not {other:?}"
        ))),
    }
}

impl Observer {
    /// Sets up logging and metrics for a run (binding the metrics port now, so that a port in
    /// use fails before anything connects).
    pub(crate) fn new(
        py: Python<'_>,
        output: LogOutput,
        metrics_port: Option<u16>,
        metrics_sink: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let logging = py.import("logging")?;
        let level = match output {
            LogOutput::Stderr => None,
            LogOutput::Forward | LogOutput::Both => wanted_level(&logging)?,
        };
        let guard = EmbeddedRun::begin(output, level);
        let listener = match metrics_port {
            None => None,
            Some(port) => {
                let l = std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                    ConfigurationError::new_err(format!(
                        "cannot listen on port {port} for metrics_port: {e}"
                    ))
                })?;
                l.set_nonblocking(true).map_err(|e| {
                    ConfigurationError::new_err(format!("metrics_port {port}: {e}"))
                })?;
                Some(l)
            }
        };
        let sink = match metrics_sink {
            None => None,
            Some(object) => {
                let o = object.bind(py);
                for method in ["counter", "gauge", "histogram"] {
                    if !o.hasattr(method)? {
                        return Err(PyErr::new::<pyo3::exceptions::PyTypeError, _>(format!(
                            "metrics_sink {} has no {method}(name, value, tags) method",
                            o.repr()?
                        )));
                    }
                }
                Some(Sink {
                    object,
                    buffer: Arc::new(Buffered::new(SINK_CAPACITY)),
                    last: Instant::now(),
                    failures: 0,
                })
            }
        };
        Ok(Self {
            _logging: guard,
            bridge: level.map(|_| LogBridge::new(py)).transpose()?,
            memory: listener.as_ref().map(|_| Arc::new(MemoryRecorder::new())),
            sink,
            listener,
        })
    }

    /// The recorder the pillow records into, if anything reads its metrics.
    pub(crate) fn recorder(&self) -> Option<Arc<dyn Recorder>> {
        let mut all: Vec<Arc<dyn Recorder>> = Vec::new();
        if let Some(m) = &self.memory {
            all.push(m.clone());
        }
        if let Some(s) = &self.sink {
            all.push(s.buffer.clone());
        }
        match all.len() {
            0 => None,
            1 => all.pop(),
            _ => Some(Arc::new(Fanout(all))),
        }
    }

    /// Starts the Prometheus endpoint on the current runtime, until `stop` is cancelled.
    pub(crate) fn serve(&mut self, stop: tokio_util::sync::CancellationToken) -> PyResult<()> {
        let (Some(listener), Some(memory)) = (self.listener.take(), self.memory.clone()) else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| ConfigurationError::new_err(format!("metrics_port: cannot serve: {e}")))?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(address = %addr, "serving metrics at http://{addr}/metrics");
        }
        tokio::spawn(crate::ops::prometheus::serve(
            listener,
            move || crate::ops::prometheus::render_recorder(&memory),
            stop,
        ));
        Ok(())
    }

    /// On the lane, every tick: emit the queued log records; hand the sink its batch when due.
    pub(crate) fn tick(&mut self, py: Python<'_>) {
        if let Some(b) = self.bridge.as_mut() {
            b.drain(py);
        }
        if let Some(s) = self.sink.as_mut() {
            if s.last.elapsed() >= SINK_INTERVAL {
                s.flush(py);
            }
        }
    }

    /// When the run ends (also on errors): the last batch and the last records.
    pub(crate) fn finish(mut self, py: Python<'_>) {
        if let Some(s) = self.sink.as_mut() {
            s.flush(py);
            if s.failures > 1 {
                tracing::warn!(
                    failures = s.failures,
                    "metrics sink failed on several batches during the run"
                );
            }
        }
        if let Some(b) = self.bridge.as_mut() {
            b.drain(py);
        }
    }
}
