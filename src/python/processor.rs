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
use std::sync::Arc;
use std::thread::ThreadId;

use async_trait::async_trait;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyList, PySequence, PyString};

use super::change::{from_python, has_class_named, is_not_found, to_python, PyChange};
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

/// The document store of each data source, as Python objects: what `change.document_store`
/// returns to a processor (`"*"` names match every name of their type).
#[derive(Default)]
pub(crate) struct PyStores {
    /// By data source type, then name (looked up per change without allocating).
    by_source: HashMap<String, HashMap<String, Py<PyAny>>>,
}

impl PyStores {
    pub(crate) fn new(stores: &[((String, String), Py<PyAny>)], py: Python<'_>) -> Self {
        let mut by_source: HashMap<String, HashMap<String, Py<PyAny>>> = HashMap::new();
        for ((t, n), store) in stores {
            by_source
                .entry(t.clone())
                .or_default()
                .insert(n.clone(), store.clone_ref(py));
        }
        Self { by_source }
    }

    pub(crate) fn for_change(&self, py: Python<'_>, change: &Change) -> Option<Py<PyAny>> {
        let names = self.by_source.get(&change.metadata.data_source_type)?;
        names
            .get(&change.metadata.data_source_name)
            .or_else(|| names.get("*"))
            .map(|s| s.clone_ref(py))
    }
}

/// Checks that `obj` has CommCare's processor interface (duck-typed: subclassing
/// `pillowtop_rs.PillowProcessor` is not needed): a callable `process_change`, and a callable
/// `process_changes_chunk` when `supports_batch_processing` is true.
pub(crate) fn check_processor(pillow: &str, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let callable = |name: &str| -> PyResult<bool> {
        Ok(obj.hasattr(name)? && obj.getattr(name)?.is_callable())
    };
    let batch = obj
        .getattr("supports_batch_processing")
        .and_then(|v| v.is_truthy())
        .unwrap_or(false);
    let what = obj.repr().map_or_else(|_| "?".into(), |r| r.to_string());
    if batch && !callable("process_changes_chunk")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "pillow {pillow}: processor {what} has supports_batch_processing = True but no process_changes_chunk(changes) method"
        )));
    }
    if !callable("process_change")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "pillow {pillow}: {what} is not a processor: it needs a process_change(change) method (CommCare's PillowProcessor interface), or use a RustProcessor"
        )));
    }
    Ok(())
}

/// `on_processor_error(pillow_name, change, exception)`: called on the Python lane for every
/// change a Python processor failed (CommCare's `notify_exception` / Sentry pattern). Its own
/// exceptions are logged and ignored: reporting never stops a pillow.
pub(crate) struct ErrorHook {
    pub(crate) f: Py<PyAny>,
    pub(crate) pillow: String,
}

impl ErrorHook {
    fn call(&self, py: Python<'_>, change: &Bound<'_, PyAny>, err: &PyErr) {
        if let Err(e) = self.f.call1(py, (&self.pillow, change, err.value(py))) {
            tracing::warn!(pillow = %self.pillow, error = %e, "the on_processor_error hook raised; ignored");
        }
    }
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
    // Ours, CommCare's (`pillowtop.exceptions.DocumentMissingError`) or a project's own.
    let document_missing = has_class_named(err.get_type(py).as_any(), "DocumentMissingError");
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

/// A Python processor: any object with CommCare's processor interface.
pub(crate) struct PyProcessor {
    obj: Py<PyAny>,
    name: String,
    batch: bool,
    lane: Lane,
    stores: Arc<PyStores>,
    hook: Option<Arc<ErrorHook>>,
}

impl PyProcessor {
    /// Wraps `obj` (already checked by [`check_processor`]) for the lane `lane`.
    pub(crate) fn new(
        obj: &Bound<'_, PyAny>,
        lane: Lane,
        stores: Arc<PyStores>,
        hook: Option<Arc<ErrorHook>>,
    ) -> PyResult<Self> {
        // Its class's qualified name, or its own `processor_name` (ours: two instances of one
        // class in a pillow with independent processors need names of their own).
        let name = match obj.getattr_opt("processor_name")? {
            Some(n) if !n.is_none() => n.extract::<String>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "{}: processor_name must be a str",
                    obj.repr().map_or_else(|_| "?".into(), |r| r.to_string())
                ))
            })?,
            _ => obj.get_type().qualname()?.to_string(),
        };
        let batch = obj
            .getattr("supports_batch_processing")
            .and_then(|v| v.is_truthy())
            .unwrap_or(false);
        Ok(Self {
            obj: obj.clone().unbind(),
            name,
            batch,
            lane,
            stores,
            hook,
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

    /// A processor's exception for `change`, reported to the hook and turned into the change's
    /// failure (a non-`Exception` is fatal and comes back as the outer error).
    fn fail(
        &self,
        py: Python<'_>,
        change: &Bound<'_, PyAny>,
        err: PyErr,
    ) -> Result<ProcessorFailure> {
        if !err.is_instance_of::<PyException>(py) {
            return Err(ProcessError::Callback(Box::new(err)).into());
        }
        if let Some(h) = &self.hook {
            h.call(py, change, &err);
        }
        Ok(exception_failure(py, &err))
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
        // CommCare's processors return `None` when every change succeeded (the retry set and
        // the error list both empty is the documented shape, but `None` is common).
        if returned.is_none() {
            return Ok(ChunkOutcome::default());
        }
        let pair = returned.cast::<PySequence>().map_err(|_| shape())?;
        if pair.len().map_err(|_| shape())? != 2 || returned.is_instance_of::<PyString>() {
            return Err(shape());
        }
        let retry = pair.get_item(0).map_err(|_| shape())?;
        let errors = pair.get_item(1).map_err(|_| shape())?;
        let mut outcome = ChunkOutcome::default();
        if !retry.is_none() {
            for c in retry.try_iter().map_err(|_| shape())? {
                outcome.retry.push(find(&c.map_err(|_| shape())?)?);
            }
        }
        if !errors.is_none() {
            for item in errors.try_iter().map_err(|_| shape())? {
                let item = item.map_err(|_| shape())?;
                let (change, exc): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                    item.extract().map_err(|_| shape())?;
                let i = find(&change)?;
                let err = PyErr::from_value(exc);
                if let Some(h) = &self.hook {
                    h.call(py, &change, &err);
                }
                outcome.errors.push((i, exception_failure(py, &err)));
            }
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
            let (list, objs) = to_python(py, std::slice::from_mut(change), &self.stores)
                .map_err(|e| ProcessError::Other(format!("cannot hand a change to Python: {e}")))?;
            let result = self
                .obj
                .bind(py)
                .call_method1("process_change", (&objs[0],));
            // The exception (and its traceback's frames) go before the change comes back, so
            // that only a reference the processor kept makes it a copy.
            let failed = match result {
                Ok(_) => None,
                Err(e) => Some(self.fail(py, objs[0].as_any(), e)),
            };
            let mut converted = from_python(py, list, objs, std::slice::from_mut(change));
            match failed {
                Some(f) => Ok(Err(f?)),
                None => Ok(converted.pop().map_or(Ok(()), |(_, f)| Err(f))),
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
            let (list, objs): (Bound<'_, PyList>, _) = to_python(py, changes, &self.stores)
                .map_err(|e| ProcessError::Other(format!("cannot hand a chunk to Python: {e}")))?;
            let result = self
                .obj
                .bind(py)
                .call_method1("process_changes_chunk", (&list,));
            let outcome = match result {
                Ok(returned) => Ok(self.outcome(py, &objs, &returned)),
                // CommCare: a chunk call that raises falls back to serial processing (a
                // non-`Exception` is fatal).
                Err(e) => Err(failure_of(py, e)),
            };
            let converted = from_python(py, list, objs, changes);
            let mut outcome = match outcome {
                Err(failure) => return Ok(Err(failure?)),
                Ok(Ok(outcome)) => outcome,
                // A wrong return shape is a programming error: every change of the chunk fails
                // with the TypeError, recorded like any processor exception.
                Ok(Err(message)) => ChunkOutcome {
                    retry: Vec::new(),
                    errors: (0..changes.len())
                        .map(|i| (i, type_error(message.clone())))
                        .collect(),
                },
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

/// How a Python document store is asked for a chunk's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreApi {
    /// Ours: `get_documents(ids) -> Mapping[id, doc]`, missing ids absent.
    GetDocuments,
    /// CommCare's `DocumentStore.iter_documents(ids)`: the documents that exist, each carrying
    /// its id as `_id` (or `id`).
    IterDocuments,
    /// Only `get_document(id)`, raising `DocumentNotFoundError` for a missing one.
    GetDocument,
}

/// A document store written in Python: ours (`get_documents`), CommCare's `DocumentStore`
/// (`iter_documents`, else `get_document`), or a Django model store; called once per chunk
/// and data source, on the Python lane.
pub(crate) struct PyDocumentStore {
    obj: Py<PyAny>,
    name: String,
    lane: Lane,
    api: StoreApi,
}

/// Whether `obj` can serve as a document store, and how.
fn store_api(obj: &Bound<'_, PyAny>) -> PyResult<Option<StoreApi>> {
    for (method, api) in [
        ("get_documents", StoreApi::GetDocuments),
        ("iter_documents", StoreApi::IterDocuments),
        ("get_document", StoreApi::GetDocument),
    ] {
        if obj.hasattr(method)? && obj.getattr(method)?.is_callable() {
            return Ok(Some(api));
        }
    }
    Ok(None)
}

/// Checks a document store given to `Pillow(document_stores=...)`.
pub(crate) fn is_document_store(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(store_api(obj)?.is_some())
}

impl PyDocumentStore {
    pub(crate) fn new(obj: &Bound<'_, PyAny>, lane: Lane) -> PyResult<Self> {
        let api = store_api(obj)?.ok_or_else(|| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "{} is not a document store: it needs get_documents(ids), iter_documents(ids) or get_document(id)",
                obj.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ))
        })?;
        Ok(Self {
            name: obj.get_type().qualname()?.to_string(),
            obj: obj.clone().unbind(),
            lane,
            api,
        })
    }

    fn fetch<'py>(
        &self,
        py: Python<'py>,
        ids: &[String],
    ) -> PyResult<HashMap<String, serde_json::Value>> {
        let obj = self.obj.bind(py);
        let mut out = HashMap::with_capacity(ids.len());
        let value = |doc: &Bound<'py, PyAny>| -> PyResult<serde_json::Value> {
            pythonize::depythonize::<serde_json::Value>(doc).map_err(|e| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "a document is not JSON-serialisable: {e}"
                ))
            })
        };
        match self.api {
            StoreApi::GetDocuments => {
                let docs = obj.call_method1("get_documents", (ids.to_vec(),))?;
                out = pythonize::depythonize::<HashMap<String, serde_json::Value>>(&docs).map_err(
                    |e| {
                        pyo3::exceptions::PyTypeError::new_err(format!(
                            "get_documents must return a mapping of id to JSON document: {e}"
                        ))
                    },
                )?;
            }
            StoreApi::IterDocuments => {
                for doc in obj
                    .call_method1("iter_documents", (ids.to_vec(),))?
                    .try_iter()?
                {
                    let doc = doc?;
                    let id = match doc.get_item("_id") {
                        Ok(id) => id,
                        Err(_) => doc.get_item("id").map_err(|_| {
                            pyo3::exceptions::PyTypeError::new_err(
                                "iter_documents yielded a document without an _id (or id) key"
                                    .to_owned(),
                            )
                        })?,
                    };
                    out.insert(id.str()?.to_string(), value(&doc)?);
                }
            }
            StoreApi::GetDocument => {
                for id in ids {
                    match obj.call_method1("get_document", (id,)) {
                        Ok(doc) if doc.is_none() => {}
                        Ok(doc) => {
                            out.insert(id.clone(), value(&doc)?);
                        }
                        Err(e) if is_not_found(py, &e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl DocumentStore for PyDocumentStore {
    async fn get_documents(&self, ids: &[String]) -> Result<HashMap<String, serde_json::Value>> {
        self.lane.check(&format!("{}.get_documents", self.name))?;
        Python::attach(|py| {
            self.fetch(py, ids).map_err(|e| {
                if e.is_instance_of::<PyException>(py) {
                    ProcessError::DocumentStore {
                        store: self.name.clone(),
                        message: e.to_string(),
                    }
                    .into()
                } else {
                    ProcessError::Callback(Box::new(e)).into()
                }
            })
        })
    }
}
