//! `Change` and `ChangeMeta` for Python processors, shaped like CommCare's.
//!
//! A [`PyChange`] owns its core [`Change`] while a Python processor runs: the chunk's changes
//! are moved in before the call and moved back after it (no copy of the document). The
//! document is converted to Python lazily, on the first `get_document()` / `change["doc"]`,
//! so a processor that reads only the metadata never pays for it; a document set with
//! `set_document()` is converted back to JSON when the change returns to Rust, so Rust
//! processors later in the chain see it.

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::change::{Change, ChangeMeta, Document};
use crate::processor::ProcessorFailure;

/// A change handed to a Python processor.
#[pyclass(name = "Change", module = "pillowtop_rs._native")]
pub(crate) struct PyChange {
    inner: Change,
    /// The document as a Python object, once converted or set.
    doc: Option<Py<PyAny>>,
    /// `set_document()` was called: convert `doc` back when the change returns to Rust.
    doc_set: bool,
}

impl PyChange {
    pub(crate) fn new(inner: Change) -> Self {
        Self {
            inner,
            doc: None,
            doc_set: false,
        }
    }

    /// Moves the change back out (after the processor returned), with any document it set.
    /// A set document that is not JSON-serialisable leaves the previous document in place and
    /// comes back as the change's failure.
    pub(crate) fn take_change(&mut self, py: Python<'_>) -> (Change, Option<ProcessorFailure>) {
        let mut failure = None;
        if self.doc_set {
            let doc = match &self.doc {
                Some(d) if !d.is_none(py) => {
                    pythonize::depythonize::<serde_json::Value>(d.bind(py)).map(Some)
                }
                _ => Ok(None),
            };
            match doc {
                Ok(doc) => self.inner.document = Document::Known(doc),
                Err(e) => {
                    failure = Some(ProcessorFailure::new(
                        "builtins.TypeError",
                        format!(
                            "the document set on change {} is not JSON-serialisable: {e}",
                            self.inner.id
                        ),
                    ));
                }
            }
        }
        self.doc = None;
        self.doc_set = false;
        (std::mem::replace(&mut self.inner, placeholder()), failure)
    }

    fn document(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(d) = &self.doc {
            return Ok(d.clone_ref(py));
        }
        let obj = match &self.inner.document {
            // The embedded JSON text goes straight to Python's C parser: no `Value` in between.
            Document::Embedded(e) => JSON_LOADS
                .import(py, "json", "loads")?
                .call1((e.raw(),))?
                .unbind(),
            Document::Known(Some(v)) => pythonize::pythonize(py, v)?.unbind(),
            Document::Known(None) | Document::Unfetched => py.None(),
        };
        self.doc = Some(obj.clone_ref(py));
        Ok(obj)
    }
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

#[pymethods]
impl PyChange {
    /// The document id (the Kafka message key).
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }

    /// CommCare's `sequence_id`: the Kafka offset.
    #[getter]
    fn seq(&self) -> i64 {
        self.inner.offset
    }

    #[getter]
    fn offset(&self) -> i64 {
        self.inner.offset
    }

    #[getter]
    fn deleted(&self) -> bool {
        self.inner.deleted
    }

    #[getter]
    fn topic(&self) -> &str {
        &self.inner.topic
    }

    #[getter]
    fn partition(&self) -> i32 {
        self.inner.partition
    }

    /// The change's `ChangeMeta`.
    #[getter]
    fn metadata(&self) -> PyChangeMeta {
        PyChangeMeta(self.inner.metadata.clone())
    }

    /// The document: embedded in the message, fetched in bulk from the data source's document
    /// store before the chunk reached the processors, or set by an earlier processor; `None`
    /// when there is none.
    fn get_document(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.document(py)
    }

    /// Replaces the document for the processors that follow.
    fn set_document(&mut self, document: Py<PyAny>) {
        self.doc = Some(document);
        self.doc_set = true;
    }

    fn increment_attempt_count(&mut self) {
        self.inner.increment_attempt_count();
    }

    fn __getitem__(&mut self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        Ok(match key {
            "id" => self.inner.id.clone().into_pyobject(py)?.into_any().unbind(),
            "seq" => self.inner.offset.into_pyobject(py)?.into_any().unbind(),
            "deleted" => pyo3::types::PyBool::new(py, self.inner.deleted)
                .to_owned()
                .into_any()
                .unbind(),
            "doc" => self.document(py)?,
            _ => return Err(PyKeyError::new_err(key.to_owned())),
        })
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
    fn __contains__(&self, key: &str) -> bool {
        KEYS.contains(&key)
    }

    #[allow(clippy::unused_self)]
    fn keys(&self) -> Vec<&'static str> {
        KEYS.to_vec()
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

    fn __repr__(&self) -> String {
        format!(
            "Change(id={:?}, topic={:?}, partition={}, seq={}, deleted={})",
            self.inner.id,
            self.inner.topic,
            self.inner.partition,
            self.inner.offset,
            if self.inner.deleted { "True" } else { "False" }
        )
    }
}

/// CommCare's `ChangeMeta`, read-only: every field as an attribute (datetimes as aware
/// `datetime`s), unknown fields through attribute access too, `to_json()` for the wire form.
#[pyclass(name = "ChangeMeta", module = "pillowtop_rs._native", frozen)]
pub(crate) struct PyChangeMeta(ChangeMeta);

#[pymethods]
impl PyChangeMeta {
    #[getter]
    fn document_id(&self) -> &str {
        &self.0.document_id
    }
    #[getter]
    fn document_rev(&self) -> Option<&str> {
        self.0.document_rev.as_deref()
    }
    #[getter]
    fn data_source_type(&self) -> &str {
        &self.0.data_source_type
    }
    #[getter]
    fn data_source_name(&self) -> &str {
        &self.0.data_source_name
    }
    #[getter]
    fn document_type(&self) -> Option<&str> {
        self.0.document_type.as_deref()
    }
    #[getter]
    fn document_subtype(&self) -> Option<&str> {
        self.0.document_subtype.as_deref()
    }
    #[getter]
    fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }
    #[getter]
    fn is_deletion(&self) -> bool {
        self.0.is_deletion
    }
    #[getter]
    fn publish_timestamp(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.publish_timestamp
    }
    #[getter]
    fn attempts(&self) -> u32 {
        self.0.attempts
    }
    #[getter]
    fn original_publication_datetime(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.original_publication_datetime
    }
    #[getter]
    fn associated_document_id(&self) -> Option<&str> {
        self.0.associated_document_id.as_deref()
    }

    /// Unknown (newer) fields of the message, kept as they came.
    fn __getattr__(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.0.extra.get(name) {
            Some(v) => Ok(pythonize::pythonize(py, v)?.unbind()),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "'ChangeMeta' object has no attribute {name:?}"
            ))),
        }
    }

    /// `meta["domain"]`: item access, as CommCare's jsonobject allows.
    fn __getitem__(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        let value = serde_json::to_value(&self.0)
            .map_err(|e| PyTypeError::new_err(format!("cannot serialise change metadata: {e}")))?;
        match value.get(key) {
            Some(v) => Ok(pythonize::pythonize(py, v)?.unbind()),
            None => Err(PyKeyError::new_err(key.to_owned())),
        }
    }

    /// The message body as a dict (CommCare's `to_json()`), unknown fields included.
    fn to_json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = serde_json::to_value(&self.0)
            .map_err(|e| PyTypeError::new_err(format!("cannot serialise change metadata: {e}")))?;
        Ok(pythonize::pythonize(py, &value)?)
    }

    fn __repr__(&self) -> String {
        format!(
            "ChangeMeta(document_id={:?}, data_source_type={:?}, data_source_name={:?}, domain={:?}, is_deletion={})",
            self.0.document_id,
            self.0.data_source_type,
            self.0.data_source_name,
            self.0.domain,
            if self.0.is_deletion { "True" } else { "False" }
        )
    }
}

/// A list of fresh `Change` objects owning the chunk's changes (moved out of `changes`).
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    changes: &mut [Change],
) -> PyResult<(Bound<'py, PyList>, Vec<Bound<'py, PyChange>>)> {
    let objs = changes
        .iter_mut()
        .map(|c| Bound::new(py, PyChange::new(std::mem::replace(c, placeholder()))))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((PyList::new(py, &objs)?, objs))
}

/// Moves the changes back into `changes` (the same order as [`to_python`] made them); returns
/// the failures of changes whose set document could not be converted, by index.
pub(crate) fn from_python(
    py: Python<'_>,
    objs: &[Bound<'_, PyChange>],
    changes: &mut [Change],
) -> Vec<(usize, ProcessorFailure)> {
    let mut failures = Vec::new();
    for (i, (obj, slot)) in objs.iter().zip(changes.iter_mut()).enumerate() {
        let (change, failure) = obj.borrow_mut().take_change(py);
        *slot = change;
        if let Some(f) = failure {
            failures.push((i, f));
        }
    }
    failures
}
