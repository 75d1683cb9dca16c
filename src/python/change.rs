//! `Change` for Python processors, shaped like CommCare's (`pillowtop/feed/interface.py`).
//!
//! A [`PyChange`] owns its core [`Change`] while a Python processor runs: the chunk's changes
//! are moved in before the call and moved back after it (no copy of the document). A change the
//! processor kept a reference to (a test processor that records what it saw, a list kept for
//! later) is copied back instead, so the Python object stays whole. The document is converted
//! to Python lazily, on the first `get_document()` / `change.document` / `change["doc"]`, so a
//! processor that reads only the metadata never pays for it; a document set with
//! `set_document()` is converted back to JSON when the change returns to Rust, so Rust
//! processors later in the chain see it.
//!
//! `Change(...)` is constructible as CommCare's is (tests, the in-memory harness). Its
//! `get_document()` then asks its `document_store` once (`get_document(id)`), and a
//! `DocumentNotFoundError` (ours or CommCare's: matched by class name) is remembered as `None`
//! with the error in `error_raised`.

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::change_meta::{extract_meta, PyChangeMeta};
use super::errors::{DocumentError, DocumentMissingError};
use crate::change::{Change, ChangeMeta, Document};
use crate::processor::ProcessorFailure;

/// Where a change came from, which decides what `get_document()` does when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Read from the feed by a pillow: documents were fetched in bulk before the processors,
    /// so "no document" means the data source has no store, and asking is an error.
    Feed,
    /// Built with `Change(...)`: the change's own `document_store` is asked, once.
    Constructed,
}

/// A change handed to (or built by) Python.
#[pyclass(name = "Change", module = "pillowtop_rs._native")]
pub(crate) struct PyChange {
    inner: Change,
    /// The document as a Python object, once converted or set.
    doc: Option<Py<PyAny>>,
    /// `set_document()` was called: convert `doc` back when the change returns to Rust.
    doc_set: bool,
    /// The metadata as a Python object, once asked for (then the authority: processors may
    /// assign its fields).
    meta: Option<Py<PyChangeMeta>>,
    /// `Change(..., metadata=None)`: the change has no metadata.
    no_meta: bool,
    /// The store of the change's data source (`change.document_store`).
    store: Option<Py<PyAny>>,
    /// A non-integer `sequence_id` given to `Change(...)` (a Couch sequence).
    sequence: Option<Py<PyAny>>,
    /// The store was asked (constructed changes): never again.
    checked: bool,
    /// What the store raised when it had no such document.
    error_raised: Option<Py<PyAny>>,
    origin: Origin,
}

impl PyChange {
    /// A change from the feed, with the store of its data source, if any.
    pub(crate) fn new(inner: Change, store: Option<Py<PyAny>>) -> Self {
        Self {
            inner,
            doc: None,
            doc_set: false,
            meta: None,
            no_meta: false,
            store,
            sequence: None,
            checked: false,
            error_raised: None,
            origin: Origin::Feed,
        }
    }

    /// A change read outside any pillow (captured by the test harness): no store is known,
    /// so `get_document()` gives the embedded document or `None`.
    pub(crate) fn captured(inner: Change) -> Self {
        Self {
            origin: Origin::Constructed,
            ..Self::new(inner, None)
        }
    }

    /// The core change as it stands now (a copy), with any document set from Python.
    pub(crate) fn snapshot(&self, py: Python<'_>) -> PyResult<Change> {
        let mut change = self.inner.clone();
        self.overlay(py, &mut change)?;
        Ok(change)
    }

    /// Puts what Python changed (the metadata object's fields, a set document) onto `change`.
    /// A set document that is not JSON-serialisable is an error, and `change` keeps its own.
    fn overlay(&self, py: Python<'_>, change: &mut Change) -> PyResult<()> {
        if let Some(m) = &self.meta {
            change.metadata = m.borrow(py).inner.clone();
            change.deleted = change.deleted || change.metadata.is_deletion;
        }
        if self.doc_set {
            change.document = Document::Known(self.doc_value(py)?);
        }
        Ok(())
    }

    /// A change from any object with CommCare's `Change` attributes (`id`, `sequence_id`,
    /// `document`, `deleted`, `metadata`, `document_store`, `topic`, `partition`): CommCare's
    /// own class, or a project's stand-in.
    pub(crate) fn from_attributes(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let attr = |name: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
            match obj.getattr(name) {
                Ok(v) if v.is_none() => Ok(None),
                Ok(v) => Ok(Some(v)),
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let id = attr("id")?.ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{} is not a change: it has no id",
                obj.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ))
        })?;
        let seq = match attr("sequence_id")? {
            Some(s) => s,
            None => 0i64.into_pyobject(py)?.into_any(),
        };
        let deleted = attr("deleted")?
            .map(|d| d.is_truthy())
            .transpose()?
            .unwrap_or(false);
        Self::py_new(
            py,
            &id,
            &seq,
            attr("document")?.map(Bound::unbind),
            deleted,
            attr("metadata")?.as_ref(),
            attr("document_store")?.map(Bound::unbind),
            attr("topic")?.map(|t| t.extract()).transpose()?,
            attr("partition")?.map(|p| p.extract()).transpose()?,
        )
    }

    fn doc_value(&self, py: Python<'_>) -> PyResult<Option<serde_json::Value>> {
        match &self.doc {
            Some(d) if !d.is_none(py) => Ok(Some(
                pythonize::depythonize::<serde_json::Value>(d.bind(py)).map_err(|e| {
                    PyTypeError::new_err(format!(
                        "the document set on change {} is not JSON-serialisable: {e}",
                        self.inner.id
                    ))
                })?,
            )),
            _ => Ok(None),
        }
    }

    /// Moves the change back out (after the processor returned), with any document and
    /// metadata it set. `keep`: Python still holds this object, so leave it whole and hand back
    /// a copy. A set document that is not JSON-serialisable leaves the previous document in
    /// place and comes back as the change's failure.
    pub(crate) fn take_change(
        &mut self,
        py: Python<'_>,
        keep: bool,
    ) -> (Change, Option<ProcessorFailure>) {
        let mut change = if keep {
            self.inner.clone()
        } else {
            std::mem::replace(&mut self.inner, placeholder())
        };
        let failure = self
            .overlay(py, &mut change)
            .err()
            .map(|e| ProcessorFailure::new("builtins.TypeError", e.to_string()));
        if !keep {
            self.doc = None;
            self.doc_set = false;
            self.meta = None;
        }
        (change, failure)
    }

    fn convert(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if let Some(d) = &self.doc {
            return Ok(Some(d.clone_ref(py)));
        }
        let obj = match &self.inner.document {
            // The embedded JSON text goes straight to Python's C parser: no `Value` in between.
            Document::Embedded(e) => JSON_LOADS
                .import(py, "json", "loads")?
                .call1((e.raw(),))?
                .unbind(),
            Document::Known(Some(v)) => pythonize::pythonize(py, v)?.unbind(),
            Document::Known(None) => py.None(),
            Document::Unfetched => return Ok(None),
        };
        self.doc = Some(obj.clone_ref(py));
        Ok(Some(obj))
    }

    fn document(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(doc) = self.convert(py)? {
            return Ok(doc);
        }
        match self.origin {
            Origin::Feed => Err(DocumentMissingError::new_err(format!(
                "change {} (data source {}/{}) has no document in its message and the pillow has no document store for that data source: pass document_stores={{({:?}, {:?}): ...}} to Pillow()",
                self.inner.id,
                self.inner.metadata.data_source_type,
                self.inner.metadata.data_source_name,
                self.inner.metadata.data_source_type,
                self.inner.metadata.data_source_name,
            ))),
            Origin::Constructed => self.fetch(py),
        }
    }

    /// CommCare's lazy fetch of a constructed change: once, "not found" remembered.
    fn fetch(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let Some(store) = self.store.as_ref().map(|s| s.clone_ref(py)) else {
            return Ok(py.None());
        };
        if self.checked {
            return Ok(py.None());
        }
        match store
            .bind(py)
            .call_method1("get_document", (&self.inner.id,))
        {
            Ok(doc) => {
                let doc = doc.unbind();
                self.doc = Some(doc.clone_ref(py));
                self.doc_set = true;
                Ok(doc)
            }
            Err(e) if is_not_found(py, &e) => {
                self.checked = true;
                self.error_raised = Some(e.value(py).clone().into_any().unbind());
                self.doc = Some(py.None());
                Ok(py.None())
            }
            Err(e) => {
                let err = DocumentError::new_err(format!(
                    "fetching document {} from {}: {}",
                    self.inner.id,
                    store
                        .bind(py)
                        .repr()
                        .map_or_else(|_| "its document store".into(), |r| r.to_string()),
                    e.value(py)
                ));
                err.set_cause(py, Some(e));
                Err(err)
            }
        }
    }

    fn metadata_obj(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyChangeMeta>>> {
        if self.no_meta {
            return Ok(None);
        }
        if let Some(m) = &self.meta {
            return Ok(Some(m.clone_ref(py)));
        }
        let m = Py::new(py, PyChangeMeta::new(self.inner.metadata.clone()))?;
        self.meta = Some(m.clone_ref(py));
        Ok(Some(m))
    }

    fn sequence_id(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &self.sequence {
            Some(s) => s.clone_ref(py),
            None => self.inner.offset.into_pyobject(py)?.into_any().unbind(),
        })
    }
}

/// Whether `err` is a `DocumentNotFoundError` (ours, CommCare's `pillowtop.dao.exceptions`
/// one, or a project's): matched by class name along the MRO, so code written against
/// CommCare works unchanged.
pub(crate) fn is_not_found(py: Python<'_>, err: &PyErr) -> bool {
    has_class_named(err.get_type(py).as_any(), "DocumentNotFoundError")
}

/// Whether `cls` or one of its bases is named `name`.
pub(crate) fn has_class_named(cls: &Bound<'_, PyAny>, name: &str) -> bool {
    cls.getattr("__mro__")
        .and_then(|mro| {
            for c in mro.try_iter()? {
                if c?.getattr("__name__")?.extract::<String>()? == name {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .unwrap_or(false)
}

/// What a moved-out change leaves behind (never seen by processors during their call).
fn placeholder() -> Change {
    Change {
        id: String::new(),
        topic: String::new(),
        partition: -1,
        offset: -1,
        deleted: false,
        metadata: ChangeMeta::new("", "", ""),
        document: Document::Unfetched,
        size: 0,
    }
}

static JSON_LOADS: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

const KEYS: [&str; 4] = ["id", "seq", "doc", "deleted"];

fn read_only(what: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "Change is a read-only mapping: {what} is not supported (set attributes or use set_document())"
    ))
}

#[pymethods]
impl PyChange {
    /// CommCare's constructor: `Change(id, sequence_id, document=None, deleted=False,
    /// metadata=None, document_store=None, topic=None, partition=None)`.
    #[new]
    #[pyo3(signature = (
        id, sequence_id, document = None, deleted = false, metadata = None,
        document_store = None, topic = None, partition = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
        sequence_id: &Bound<'_, PyAny>,
        document: Option<Py<PyAny>>,
        deleted: bool,
        metadata: Option<&Bound<'_, PyAny>>,
        document_store: Option<Py<PyAny>>,
        topic: Option<String>,
        partition: Option<i32>,
    ) -> PyResult<Self> {
        let id: String = id.str()?.extract()?;
        let (meta, no_meta) = match metadata {
            Some(m) if !m.is_none() => (extract_meta(m)?, false),
            _ => (ChangeMeta::new(id.clone(), "", ""), true),
        };
        let (offset, sequence) = match sequence_id.extract::<i64>() {
            Ok(o) => (o, None),
            Err(_) => (-1, Some(sequence_id.clone().unbind())),
        };
        let has_doc = document.as_ref().is_some_and(|d| !d.is_none(py));
        let inner = Change {
            id,
            topic: topic.unwrap_or_default(),
            partition: partition.unwrap_or(-1),
            offset,
            deleted: deleted || (!no_meta && meta.is_deletion),
            metadata: meta,
            document: Document::Unfetched,
            size: 0,
        };
        Ok(Self {
            inner,
            doc: if has_doc { document } else { None },
            doc_set: has_doc,
            meta: None,
            no_meta,
            store: document_store.filter(|s| !s.is_none(py)),
            sequence,
            checked: false,
            error_raised: None,
            origin: Origin::Constructed,
        })
    }

    /// The document id (the Kafka message key).
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }

    /// The Kafka offset (or the Couch sequence a constructed change was given).
    #[getter(sequence_id)]
    fn get_sequence_id(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.sequence_id(py)
    }

    /// `sequence_id`, under its mapping name.
    #[getter]
    fn seq(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.sequence_id(py)
    }

    #[getter]
    fn offset(&self) -> i64 {
        self.inner.offset
    }

    /// For Kafka feeds, `metadata.is_deletion` (a soft deletion).
    #[getter]
    fn deleted(&self) -> bool {
        self.inner.deleted
    }

    #[setter]
    fn set_deleted(&mut self, deleted: bool) {
        self.inner.deleted = deleted;
    }

    #[getter]
    fn topic(&self) -> Option<&str> {
        Some(self.inner.topic.as_str()).filter(|t| !t.is_empty())
    }

    #[getter]
    fn partition(&self) -> Option<i32> {
        Some(self.inner.partition).filter(|p| *p >= 0)
    }

    /// The change's `ChangeMeta` (the same object each time; its fields are assignable).
    #[getter]
    fn metadata(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyChangeMeta>>> {
        self.metadata_obj(py)
    }

    #[setter]
    fn set_metadata(
        &mut self,
        py: Python<'_>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        match metadata {
            Some(m) if !m.is_none() => {
                self.inner.metadata = extract_meta(m)?;
                self.meta = match m.cast::<PyChangeMeta>() {
                    Ok(obj) => Some(obj.clone().unbind()),
                    Err(_) => Some(Py::new(py, PyChangeMeta::new(self.inner.metadata.clone()))?),
                };
                self.no_meta = false;
            }
            _ => {
                self.meta = None;
                self.no_meta = true;
            }
        }
        Ok(())
    }

    /// The document store of the change's data source, or `None`.
    #[getter]
    fn document_store(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.store.as_ref().map(|s| s.clone_ref(py))
    }

    #[setter(document_store)]
    fn set_document_store(&mut self, py: Python<'_>, store: Option<Py<PyAny>>) {
        self.store = store.filter(|s| !s.is_none(py));
        self.checked = false;
    }

    /// The document as it stands (embedded, fetched in bulk, or set), without fetching; `None`
    /// when there is none yet.
    #[getter(document)]
    fn get_document_attr(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.convert(py)?.unwrap_or_else(|| py.None()))
    }

    #[setter(document)]
    fn set_document_attr(&mut self, document: Py<PyAny>) {
        self.set_document(document);
    }

    /// What the document store raised when it had no such document (else `None`).
    #[getter]
    fn error_raised(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.error_raised.as_ref().map(|e| e.clone_ref(py))
    }

    /// The document: embedded in the message, fetched in bulk from the data source's document
    /// store before the chunk reached the processors, or set by an earlier processor; `None`
    /// when the store has no such document. A change read by a pillow whose data source has no
    /// store raises `DocumentMissingError` (recorded and retried like CommCare's), never a silent
    /// `None`.
    fn get_document(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.document(py)
    }

    /// Replaces the document for the processors that follow.
    fn set_document(&mut self, document: Py<PyAny>) {
        self.doc = Some(document);
        self.doc_set = true;
    }

    /// Whether `get_document()` would still have to ask a store.
    fn should_fetch_document(&self) -> bool {
        self.doc.is_none()
            && matches!(self.inner.document, Document::Unfetched)
            && self.store.is_some()
            && !self.checked
    }

    /// Adds one to `metadata.attempts`.
    fn increment_attempt_count(&mut self, py: Python<'_>) {
        match &self.meta {
            Some(m) => m.borrow_mut(py).inner.attempts += 1,
            None => self.inner.increment_attempt_count(),
        }
    }

    fn __getitem__(&mut self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        Ok(match key {
            "id" => self.inner.id.clone().into_pyobject(py)?.into_any().unbind(),
            "seq" => self.sequence_id(py)?,
            "deleted" => pyo3::types::PyBool::new(py, self.inner.deleted)
                .to_owned()
                .into_any()
                .unbind(),
            "doc" => self.convert(py)?.unwrap_or_else(|| py.None()),
            _ => return Err(PyKeyError::new_err(key.to_owned())),
        })
    }

    #[allow(clippy::unused_self)]
    fn __setitem__(&self, _key: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(read_only("item assignment"))
    }

    #[allow(clippy::unused_self)]
    fn __delitem__(&self, _key: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(read_only("item deletion"))
    }

    #[allow(clippy::unused_self)]
    #[pyo3(signature = (*_args))]
    fn pop(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        Err(read_only("pop()"))
    }

    #[pyo3(signature = (key, default = None))]
    fn get(
        &mut self,
        py: Python<'_>,
        key: &str,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if KEYS.contains(&key) {
            self.__getitem__(py, key)
        } else {
            Ok(default.unwrap_or_else(|| py.None()))
        }
    }

    #[allow(clippy::unused_self)]
    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key.extract::<String>()
            .is_ok_and(|k| KEYS.contains(&k.as_str()))
    }

    #[allow(clippy::unused_self)]
    fn keys(&self) -> Vec<&'static str> {
        KEYS.to_vec()
    }

    #[allow(clippy::unused_self)]
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, KEYS)?
            .as_any()
            .try_iter()
            .map(Bound::into_any)
    }

    #[allow(clippy::unused_self)]
    fn __len__(&self) -> usize {
        KEYS.len()
    }

    /// CommCare's `to_dict()`: id, seq, doc, deleted.
    #[allow(clippy::wrong_self_convention)] // CommCare's name; converting the document caches it
    fn to_dict<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for key in KEYS {
            d.set_item(key, self.__getitem__(py, key)?)?;
        }
        Ok(d)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let seq = self
            .sequence_id(py)
            .and_then(|s| s.bind(py).repr().map(|r| r.to_string()))
            .unwrap_or_default();
        format!(
            "Change(id={:?}, topic={:?}, partition={}, seq={seq}, deleted={})",
            self.inner.id,
            self.inner.topic,
            self.inner.partition,
            if self.inner.deleted { "True" } else { "False" }
        )
    }
}

/// A list of fresh `Change` objects owning the chunk's changes (moved out of `changes`), each
/// with the store of its data source (`stores`).
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    changes: &mut [Change],
    stores: &super::processor::PyStores,
) -> PyResult<(Bound<'py, PyList>, Vec<Bound<'py, PyChange>>)> {
    let objs = changes
        .iter_mut()
        .map(|c| {
            let store = stores.for_change(py, c);
            Bound::new(
                py,
                PyChange::new(std::mem::replace(c, placeholder()), store),
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((PyList::new(py, &objs)?, objs))
}

/// Moves the changes back into `changes` (the same order as [`to_python`] made them); returns
/// the failures of changes whose set document could not be converted, by index. `list` is the
/// list the processor was given: when it kept it, every change is copied back instead of moved.
pub(crate) fn from_python(
    py: Python<'_>,
    list: Bound<'_, PyList>,
    objs: Vec<Bound<'_, PyChange>>,
    changes: &mut [Change],
) -> Vec<(usize, ProcessorFailure)> {
    // The processor kept the list itself if anything but us refers to it.
    let list_kept = refcount(list.as_any()) > 1;
    drop(list);
    let mut failures = Vec::new();
    for (i, (obj, slot)) in objs.into_iter().zip(changes.iter_mut()).enumerate() {
        // Ours is the one reference left unless the processor kept the change.
        let keep = list_kept || refcount(obj.as_any()) > 1;
        let (change, failure) = obj.borrow_mut().take_change(py, keep);
        *slot = change;
        if let Some(f) = failure {
            failures.push((i, f));
        }
    }
    failures
}

/// The object's reference count.
#[allow(deprecated)] // its replacement is `unsafe`, which this crate forbids
fn refcount(obj: &Bound<'_, PyAny>) -> isize {
    obj.get_refcnt()
}
