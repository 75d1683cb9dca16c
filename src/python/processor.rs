//! Python processors and document stores, seen from the core as [`Processor`] and
//! [`DocumentStore`].
//!
//! They are called only on the **Python lane**: the thread that called `Pillow.run()`, which
//! drives the pillow loop with `block_on`, so `Python::attach` here never runs on a tokio
//! worker. Each wrapper remembers that thread and refuses, with a clear error, to be called from
//! any other (a guard against a future refactor that would spawn the loop on a worker).
//!
//! A Python exception (a subclass of `Exception`) raised by a processor is data: it becomes a
//! [`ProcessorFailure`] with CommCare's `module.Class` error type and the formatted traceback,
//! recorded in `pillow_retry_pillowerror`, and the pillow goes on. A `BaseException` that is not
//! an `Exception` (`KeyboardInterrupt`, `SystemExit`, `ShutdownRequested`) is fatal: it stops
//! the pillow after the checkpoint of the completed chunks and is re-raised unchanged.

use std::collections::HashMap;
use std::thread::ThreadId;

use async_trait::async_trait;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PySequence, PyString, PyType};

use super::change::{from_python, to_python, PyChange};
use crate::change::Change;
use crate::docstore::DocumentStore;
use crate::error::{ProcessError, Result};
use crate::processor::{ChunkOutcome, Processor, ProcessorFailure};

/// The thread Python may be called on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lane(ThreadId);

impl Lane {
    pub(crate) fn current() -> Self {
        Self(std::thread::current().id())
    }

    pub(crate) fn check(self, what: &str) -> Result<()> {
        if std::thread::current().id() == self.0 {
            Ok(())
        } else {
            Err(ProcessError::Other(format!(
                "{what} was called off the thread that called Pillow.run(): Python code must run on the Python lane"
            ))
            .into())
        }
    }
}

static DOCUMENT_MISSING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static PILLOW_PROCESSOR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn class<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    module: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, module, name)
}

/// Whether `obj` is a `pillowtop_rs.processors.PillowProcessor`.
pub(crate) fn is_processor(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let cls = class(
        obj.py(),
        &PILLOW_PROCESSOR,
        "pillowtop_rs.processors",
        "PillowProcessor",
    )?;
    obj.is_instance(cls)
}

/// `module.QualName` of an exception's class, as CommCare writes `error_type`.
fn type_path(err: &PyErr, py: Python<'_>) -> String {
    let ty = err.get_type(py);
    let module = ty
        .module()
        .map_or_else(|_| "builtins".into(), |m| m.to_string());
    let name = ty
        .qualname()
        .map_or_else(|_| "Exception".into(), |n| n.to_string());
    format!("{module}.{name}")
}

fn format_traceback(err: &PyErr, py: Python<'_>) -> Option<String> {
    let tb = py.import("traceback").ok()?;
    let lines = tb
        .call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )
        .ok()?;
    let joined = PyString::new(py, "").call_method1("join", (lines,)).ok()?;
    joined.extract().ok()
}

/// A processor's exception as a failure of the change; a non-`Exception` `BaseException` is
/// fatal and comes back as the outer error, unchanged.
pub(crate) fn failure_of(py: Python<'_>, err: PyErr) -> Result<ProcessorFailure> {
    if !err.is_instance_of::<PyException>(py) {
        return Err(ProcessError::Callback(Box::new(err)).into());
    }
    Ok(exception_failure(py, &err))
}

fn exception_failure(py: Python<'_>, err: &PyErr) -> ProcessorFailure {
    let document_missing = class(
        py,
        &DOCUMENT_MISSING,
        "pillowtop_rs.exceptions",
        "DocumentMissingError",
    )
    .is_ok_and(|cls| err.value(py).is_instance(cls).unwrap_or(false));
    ProcessorFailure {
        error_type: type_path(err, py),
        message: err.value(py).to_string(),
        traceback: format_traceback(err, py),
        document_missing,
    }
}

fn type_error(message: String) -> ProcessorFailure {
    ProcessorFailure::new("builtins.TypeError", message)
}

/// A `pillowtop_rs.processors.PillowProcessor` instance.
pub(crate) struct PyProcessor {
    obj: Py<PyAny>,
    name: String,
    batch: bool,
    lane: Lane,
}

impl PyProcessor {
    /// Wraps `obj` (already checked to be a `PillowProcessor`) for the lane `lane`.
    pub(crate) fn new(obj: &Bound<'_, PyAny>, lane: Lane) -> PyResult<Self> {
        let name = obj.get_type().qualname()?.to_string();
        let batch = obj
            .getattr("supports_batch_processing")
            .and_then(|v| v.is_truthy())
            .unwrap_or(false);
        Ok(Self {
            obj: obj.clone().unbind(),
            name,
            batch,
            lane,
        })
    }

    fn call_hook(&self, method: &str) -> Result<()> {
        self.lane.check(&format!("{}.{method}", self.name))?;
        Python::attach(|py| {
            let obj = self.obj.bind(py);
            if !obj.hasattr(method).unwrap_or(false) {
                return Ok(());
            }
            obj.call_method0(method)
                .map(|_| ())
                .map_err(|e| ProcessError::Callback(Box::new(e)).into())
        })
    }

    /// Maps what `process_changes_chunk` returned to indices into `objs`.
    fn outcome(
        &self,
        py: Python<'_>,
        objs: &[Bound<'_, PyChange>],
        returned: &Bound<'_, PyAny>,
    ) -> std::result::Result<ChunkOutcome, String> {
        let shape = || {
            format!(
                "{}.process_changes_chunk must return (changes to retry, [(change, exception), ...]), not {}",
                self.name,
                returned
                    .repr()
                    .map_or_else(|_| "an unprintable object".into(), |r| r.to_string())
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        };
        let index: HashMap<usize, usize> = objs
            .iter()
            .enumerate()
            .map(|(i, o)| (o.as_ptr() as usize, i))
            .collect();
        let find = |c: &Bound<'_, PyAny>| -> std::result::Result<usize, String> {
            index.get(&(c.as_ptr() as usize)).copied().ok_or_else(|| {
                format!(
                    "{}.process_changes_chunk returned {} which is not a change of the chunk it was given",
                    self.name,
                    c.repr().map(|r| r.to_string()).unwrap_or_default()
                )
            })
        };
        let pair = returned.cast::<PySequence>().map_err(|_| shape())?;
        if pair.len().map_err(|_| shape())? != 2 || returned.is_instance_of::<PyString>() {
            return Err(shape());
        }
        let retry = pair.get_item(0).map_err(|_| shape())?;
        let errors = pair.get_item(1).map_err(|_| shape())?;
        let mut outcome = ChunkOutcome::default();
        for c in retry.try_iter().map_err(|_| shape())? {
            outcome.retry.push(find(&c.map_err(|_| shape())?)?);
        }
        for item in errors.try_iter().map_err(|_| shape())? {
            let item = item.map_err(|_| shape())?;
            let (change, exc): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                item.extract().map_err(|_| shape())?;
            let i = find(&change)?;
            let err = PyErr::from_value(exc);
            outcome.errors.push((i, exception_failure(py, &err)));
        }
        Ok(outcome)
    }
}

#[async_trait]
impl Processor for PyProcessor {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports_batch_processing(&self) -> bool {
        self.batch
    }

    fn needs_documents(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> Result<std::result::Result<(), ProcessorFailure>> {
        self.lane.check(&format!("{}.process_change", self.name))?;
        Python::attach(|py| {
            let (list, objs) = to_python(py, std::slice::from_mut(change))
                .map_err(|e| ProcessError::Other(format!("cannot hand a change to Python: {e}")))?;
            let result = self.obj.bind(py).call_method1(
                "process_change",
                (list
                    .get_item(0)
                    .map_err(|e| ProcessError::Other(e.to_string()))?,),
            );
            let mut converted = from_python(py, &objs, std::slice::from_mut(change));
            match result {
                Err(e) => Ok(Err(failure_of(py, e)?)),
                Ok(_) => Ok(converted.pop().map_or(Ok(()), |(_, f)| Err(f))),
            }
        })
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<std::result::Result<ChunkOutcome, ProcessorFailure>> {
        self.lane
            .check(&format!("{}.process_changes_chunk", self.name))?;
        Python::attach(|py| {
            let (list, objs): (Bound<'_, PyList>, _) = to_python(py, changes)
                .map_err(|e| ProcessError::Other(format!("cannot hand a chunk to Python: {e}")))?;
            let result = self
                .obj
                .bind(py)
                .call_method1("process_changes_chunk", (list,));
            let outcome = match &result {
                Ok(returned) => Some(self.outcome(py, &objs, returned)),
                Err(_) => None,
            };
            let converted = from_python(py, &objs, changes);
            let mut outcome = match (result, outcome) {
                // CommCare: a chunk call that raises falls back to serial processing.
                (Err(e), _) => return Ok(Err(failure_of(py, e)?)),
                (Ok(_), Some(Ok(outcome))) => outcome,
                // A wrong return shape is a programming error: every change of the chunk fails
                // with the TypeError, recorded like any processor exception.
                (Ok(_), Some(Err(message))) => ChunkOutcome {
                    retry: Vec::new(),
                    errors: (0..changes.len())
                        .map(|i| (i, type_error(message.clone())))
                        .collect(),
                },
                (Ok(_), None) => ChunkOutcome::default(),
            };
            for (i, f) in converted {
                if !outcome.errors.iter().any(|(j, _)| *j == i) {
                    outcome.retry.retain(|j| *j != i);
                    outcome.errors.push((i, f));
                }
            }
            Ok(Ok(outcome))
        })
    }

    async fn checkpoint_updated(&mut self) -> Result<()> {
        self.call_hook("checkpoint_updated")
    }

    async fn bootstrap_if_needed(&mut self) -> Result<()> {
        self.call_hook("bootstrap_if_needed")
    }
}

/// A document store written in Python: an object with `get_documents(ids: list[str]) ->
/// Mapping[str, dict]` (missing ids are simply absent), called once per chunk and data source.
pub(crate) struct PyDocumentStore {
    obj: Py<PyAny>,
    name: String,
    lane: Lane,
}

impl PyDocumentStore {
    pub(crate) fn new(obj: &Bound<'_, PyAny>, lane: Lane) -> PyResult<Self> {
        Ok(Self {
            name: obj.get_type().qualname()?.to_string(),
            obj: obj.clone().unbind(),
            lane,
        })
    }
}

#[async_trait]
impl DocumentStore for PyDocumentStore {
    async fn get_documents(&self, ids: &[String]) -> Result<HashMap<String, serde_json::Value>> {
        self.lane.check(&format!("{}.get_documents", self.name))?;
        Python::attach(|py| {
            let fail = |e: PyErr| -> crate::Error {
                if e.is_instance_of::<PyException>(py) {
                    ProcessError::DocumentStore {
                        store: self.name.clone(),
                        message: e.to_string(),
                    }
                    .into()
                } else {
                    ProcessError::Callback(Box::new(e)).into()
                }
            };
            let docs = self
                .obj
                .bind(py)
                .call_method1("get_documents", (ids.to_vec(),))
                .map_err(fail)?;
            pythonize::depythonize::<HashMap<String, serde_json::Value>>(&docs).map_err(|e| {
                ProcessError::DocumentStore {
                    store: self.name.clone(),
                    message: format!(
                        "get_documents must return a mapping of id to JSON document: {e}"
                    ),
                }
                .into()
            })
        })
    }
}
