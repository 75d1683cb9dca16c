//! CommCare's `ChangeMeta` for Python: constructible from keywords as CommCare's jsonobject is,
//! attributes readable and assignable, unknown (newer) fields kept, and `to_json()` /
//! `ChangeMeta.wrap()` giving exactly the wire form the core reads and writes (ISO 8601 UTC
//! with microseconds and `Z`).
//!
//! Datetimes come out as aware UTC `datetime`s; they go in as aware `datetime`s (converted to
//! UTC), naive ones (taken as UTC, as CommCare's `datetime.utcnow()` values are) or strings.

use chrono::{DateTime, Utc};
use pyo3::exceptions::{PyAttributeError, PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDateTime, PyDict, PyString};
use serde_json::{Map, Value};

use crate::change::{commcare_datetime, ChangeMeta};

/// The fields CommCare's `ChangeMeta` declares, in its order.
pub(crate) const FIELDS: [&str; 12] = [
    "document_id",
    "document_rev",
    "data_source_type",
    "data_source_name",
    "document_type",
    "document_subtype",
    "domain",
    "is_deletion",
    "publish_timestamp",
    "attempts",
    "original_publication_datetime",
    "associated_document_id",
];

/// CommCare's `ChangeMeta`.
#[pyclass(name = "ChangeMeta", module = "pillowtop_rs._native")]
pub(crate) struct PyChangeMeta {
    pub(crate) inner: ChangeMeta,
}

impl PyChangeMeta {
    pub(crate) fn new(inner: ChangeMeta) -> Self {
        Self { inner }
    }
}

/// A Python value as JSON for the metadata reader: datetimes as CommCare's strings.
fn json_value(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Some(dt) = datetime(value)? {
        return Ok(Value::String(commcare_datetime::format(&dt)));
    }
    pythonize::depythonize::<Value>(value).map_err(|e| {
        PyTypeError::new_err(format!(
            "ChangeMeta: {} is not a JSON value: {e}",
            value
                .repr()
                .map_or_else(|_| "a value".into(), |r| r.to_string())
        ))
    })
}

/// A `datetime` as UTC (naive ones are UTC), or `None` when `value` is not a `datetime`.
fn datetime(value: &Bound<'_, PyAny>) -> PyResult<Option<DateTime<Utc>>> {
    if !value.is_instance_of::<PyDateTime>() {
        return Ok(None);
    }
    if value.getattr("tzinfo")?.is_none() {
        let naive: chrono::NaiveDateTime = value.extract()?;
        return Ok(Some(naive.and_utc()));
    }
    let aware: DateTime<chrono::FixedOffset> = value.extract()?;
    Ok(Some(aware.with_timezone(&Utc)))
}

/// Reads a whole `ChangeMeta` from JSON fields, as the feed does, with CommCare's defaults:
/// `publish_timestamp` and `original_publication_datetime` are "now" when absent.
fn from_fields(fields: Map<String, Value>) -> PyResult<ChangeMeta> {
    for required in ["document_id", "data_source_type", "data_source_name"] {
        if fields.get(required).is_none_or(Value::is_null) {
            return Err(PyTypeError::new_err(format!(
                "ChangeMeta: {required} is required (document_id, data_source_type and data_source_name always are)"
            )));
        }
    }
    let mut meta: ChangeMeta = serde_json::from_value(Value::Object(fields))
        .map_err(|e| PyTypeError::new_err(format!("ChangeMeta: {e}")))?;
    let now = Utc::now();
    meta.publish_timestamp.get_or_insert(now);
    meta.original_publication_datetime.get_or_insert(now);
    Ok(meta)
}

fn dict_fields(d: &Bound<'_, PyDict>) -> PyResult<Map<String, Value>> {
    let mut fields = Map::new();
    for (k, v) in d.iter() {
        let k: String = k.extract().map_err(|_| {
            PyTypeError::new_err("ChangeMeta: field names must be strings".to_owned())
        })?;
        fields.insert(k, json_value(&v)?);
    }
    Ok(fields)
}

fn to_value(meta: &ChangeMeta) -> PyResult<Value> {
    serde_json::to_value(meta)
        .map_err(|e| PyTypeError::new_err(format!("cannot serialise change metadata: {e}")))
}

#[pymethods]
impl PyChangeMeta {
    /// `ChangeMeta(document_id=..., data_source_type=..., data_source_name=..., **fields)`.
    #[new]
    #[pyo3(signature = (**fields))]
    fn py_new(fields: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let fields = match fields {
            Some(d) => dict_fields(d)?,
            None => Map::new(),
        };
        Ok(Self::new(from_fields(fields)?))
    }

    /// jsonobject's `wrap`: a `ChangeMeta` from its JSON form (a message body as a dict).
    #[staticmethod]
    fn wrap(data: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(Self::new(from_fields(dict_fields(data)?)?))
    }

    #[getter]
    fn document_id(&self) -> &str {
        &self.inner.document_id
    }
    #[getter]
    fn document_rev(&self) -> Option<&str> {
        self.inner.document_rev.as_deref()
    }
    #[getter]
    fn data_source_type(&self) -> &str {
        &self.inner.data_source_type
    }
    #[getter]
    fn data_source_name(&self) -> &str {
        &self.inner.data_source_name
    }
    #[getter]
    fn document_type(&self) -> Option<&str> {
        self.inner.document_type.as_deref()
    }
    #[getter]
    fn document_subtype(&self) -> Option<&str> {
        self.inner.document_subtype.as_deref()
    }
    #[getter]
    fn domain(&self) -> Option<&str> {
        self.inner.domain.as_deref()
    }
    #[getter]
    fn is_deletion(&self) -> bool {
        self.inner.is_deletion
    }
    #[getter]
    fn publish_timestamp(&self) -> Option<DateTime<Utc>> {
        self.inner.publish_timestamp
    }
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }
    #[getter]
    fn original_publication_datetime(&self) -> Option<DateTime<Utc>> {
        self.inner.original_publication_datetime
    }
    #[getter]
    fn associated_document_id(&self) -> Option<&str> {
        self.inner.associated_document_id.as_deref()
    }

    /// Unknown (newer) fields of the message, kept as they came.
    fn __getattr__(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.inner.extra.get(name) {
            Some(v) => Ok(pythonize::pythonize(py, v)?.unbind()),
            None => Err(PyAttributeError::new_err(format!(
                "'ChangeMeta' object has no attribute {name:?}"
            ))),
        }
    }

    /// Assigns a field as jsonobject does (`meta.attempts += 1`, `meta.domain = "x"`), with the
    /// reader's checks: a value the wire form cannot carry is refused.
    fn __setattr__(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut fields = match to_value(&self.inner)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        fields.insert(name.to_owned(), json_value(value)?);
        let meta: ChangeMeta = serde_json::from_value(Value::Object(fields))
            .map_err(|e| PyTypeError::new_err(format!("ChangeMeta.{name}: {e}")))?;
        self.inner = meta;
        Ok(())
    }

    fn __delattr__(&mut self, name: &str) -> PyResult<()> {
        if FIELDS.contains(&name) {
            return Err(PyAttributeError::new_err(format!(
                "ChangeMeta.{name} is a declared field and cannot be deleted"
            )));
        }
        self.inner
            .extra
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| PyAttributeError::new_err(name.to_owned()))
    }

    /// `meta["domain"]`: item access, as CommCare's jsonobject allows.
    fn __getitem__(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        match to_value(&self.inner)?.get(key) {
            Some(v) => Ok(pythonize::pythonize(py, v)?.unbind()),
            None => Err(PyKeyError::new_err(key.to_owned())),
        }
    }

    fn __contains__(&self, key: &str) -> bool {
        FIELDS.contains(&key) || self.inner.extra.contains_key(key)
    }

    /// The message body as a dict (CommCare's `to_json()`), datetimes as CommCare's strings,
    /// unknown fields included.
    fn to_json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize::pythonize(py, &to_value(&self.inner)?)?)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyChangeMeta>()
            .is_ok_and(|o| o.borrow().inner == self.inner)
    }

    fn __copy__(&self) -> Self {
        Self::new(self.inner.clone())
    }

    #[pyo3(signature = (_memo = None))]
    fn __deepcopy__(&self, _memo: Option<&Bound<'_, PyAny>>) -> Self {
        Self::new(self.inner.clone())
    }

    /// Pickling (Celery tasks, multiprocessing): rebuilt through `wrap` from the wire form.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyAny>,))> {
        let wrap = slf.get_type().getattr("wrap")?;
        let json = slf.borrow().to_json(slf.py())?;
        Ok((wrap, (json,)))
    }

    fn __repr__(&self) -> String {
        let opt = |v: &Option<String>| {
            v.as_ref()
                .map_or_else(|| "None".to_owned(), |s| format!("{s:?}"))
        };
        format!(
            "ChangeMeta(document_id={:?}, data_source_type={:?}, data_source_name={:?}, domain={}, is_deletion={}, attempts={})",
            self.inner.document_id,
            self.inner.data_source_type,
            self.inner.data_source_name,
            opt(&self.inner.domain),
            if self.inner.is_deletion { "True" } else { "False" },
            self.inner.attempts,
        )
    }
}

/// `metadata` given to `Change(...)`: a `ChangeMeta`, CommCare's own (anything with
/// `to_json()`), or a mapping.
pub(crate) fn extract_meta(value: &Bound<'_, PyAny>) -> PyResult<ChangeMeta> {
    if let Ok(m) = value.cast::<PyChangeMeta>() {
        return Ok(m.borrow().inner.clone());
    }
    let data = if value.hasattr("to_json")? && !value.is_instance_of::<PyString>() {
        value.call_method0("to_json")?
    } else {
        value.clone()
    };
    let d = data.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "metadata must be a ChangeMeta, an object with to_json() or a dict, not {}",
            value
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    from_fields(dict_fields(d)?)
}
