//! Rust processors configured from Python: `RustProcessor(kind, config, transform=None)`.
//!
//! Python holds only the validated configuration (no client, no socket: fork safety); the
//! processor itself is built by `Pillow.run()`. A Python `transform` callable for the
//! Elasticsearch processor is wrapped into the core's `DocTransform`; the processor calls it
//! inside its own future, which `run()` polls on the Python lane, and the wrapper refuses to
//! run anywhere else.

use std::sync::Arc;

use pyo3::prelude::*;

use super::errors::ConfigurationError;
use super::processor::Lane;
use crate::assembly::ProcessorSpec;
use crate::processor::elasticsearch::{DocTransform, ElasticsearchConfig};
use crate::processor::postgres::TableDefinition;

/// What a `RustProcessor` becomes.
#[derive(Clone)]
pub(crate) enum Kind {
    Noop { batch: bool },
    Elasticsearch(Box<ElasticsearchConfig>),
    PostgresTable(Box<TableDefinition>),
}

/// A processor implemented in Rust, configured from Python.
#[pyclass(name = "RustProcessor", module = "pillowtop_rs._native", frozen)]
pub(crate) struct PyRustProcessor {
    kind: Kind,
    kind_name: String,
    transform: Option<Py<PyAny>>,
}

impl PyRustProcessor {
    /// The configuration of an `"elasticsearch"` processor.
    pub(crate) fn elasticsearch_config(&self) -> Option<&ElasticsearchConfig> {
        match &self.kind {
            Kind::Elasticsearch(c) => Some(c),
            _ => None,
        }
    }

    /// The definition of a `"postgres_table"` processor.
    pub(crate) fn table_definition(&self) -> Option<&TableDefinition> {
        match &self.kind {
            Kind::PostgresTable(d) => Some(d),
            _ => None,
        }
    }

    /// The Python transform of an `"elasticsearch"` processor, for calls on `lane`.
    pub(crate) fn elasticsearch_transform(
        &self,
        py: Python<'_>,
        lane: Lane,
    ) -> Option<DocTransform> {
        self.transform
            .as_ref()
            .map(|t| python_transform(t.clone_ref(py), lane))
    }
}

#[pymethods]
impl PyRustProcessor {
    #[new]
    #[pyo3(signature = (kind, config = None, transform = None))]
    fn new(
        kind: &str,
        config: Option<&Bound<'_, PyAny>>,
        transform: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let json = match config {
            Some(c) => pythonize::depythonize::<serde_json::Value>(c).map_err(|e| {
                ConfigurationError::new_err(format!(
                    "the configuration of the {kind} processor is not JSON data: {e}"
                ))
            })?,
            None => serde_json::Value::Object(serde_json::Map::new()),
        };
        let built = match kind {
            "noop" => Kind::Noop {
                batch: json
                    .get("batch")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(true),
            },
            "elasticsearch" => {
                Kind::Elasticsearch(Box::new(ElasticsearchConfig::from_json(&json.to_string())?))
            }
            "postgres_table" => {
                let def: TableDefinition = serde_json::from_value(json).map_err(|e| {
                    ConfigurationError::new_err(format!(
                        "invalid postgres_table processor configuration: {e}"
                    ))
                })?;
                def.validate()?;
                Kind::PostgresTable(Box::new(def))
            }
            other => {
                return Err(ConfigurationError::new_err(format!(
                    "unknown Rust processor kind {other:?}: expected 'elasticsearch', 'postgres_table' or 'noop'"
                )))
            }
        };
        if transform.is_some() && !matches!(built, Kind::Elasticsearch(_)) {
            return Err(ConfigurationError::new_err(format!(
                "the {kind} processor takes no transform"
            )));
        }
        Ok(Self {
            kind: built,
            kind_name: kind.to_owned(),
            transform,
        })
    }

    #[getter]
    fn kind(&self) -> &str {
        &self.kind_name
    }

    /// The processor's configuration as validated (defaults filled in); `None` for `"noop"`.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let value = match &self.kind {
            Kind::Noop { .. } => return Ok(None),
            Kind::Elasticsearch(c) => serde_json::to_value(c.as_ref()),
            Kind::PostgresTable(d) => serde_json::to_value(d.as_ref()),
        }
        .map_err(|e| ConfigurationError::new_err(format!("cannot show the configuration: {e}")))?;
        pythonize::pythonize(py, &value)
            .map(Some)
            .map_err(|e| ConfigurationError::new_err(format!("cannot show the configuration: {e}")))
    }

    fn __repr__(&self) -> String {
        match &self.kind {
            Kind::Noop { batch } => format!("RustProcessor('noop', batch={batch})"),
            Kind::PostgresTable(d) => {
                format!("RustProcessor('postgres_table', table={:?})", d.table)
            }
            Kind::Elasticsearch(c) => format!(
                "RustProcessor('elasticsearch', index={:?}, transform={})",
                c.index,
                if self.transform.is_some() {
                    "python"
                } else {
                    c.transform.as_str()
                }
            ),
        }
    }
}

impl PyRustProcessor {
    /// The processor's part of the pillow definition; `lane` is the thread of the run (`None`
    /// while the definition is only validated: a Python transform is then left out).
    pub(crate) fn spec(&self, py: Python<'_>, lane: Option<Lane>) -> ProcessorSpec {
        match &self.kind {
            Kind::Noop { batch } => ProcessorSpec::Noop { batch: *batch },
            Kind::PostgresTable(def) => ProcessorSpec::PostgresTable((**def).clone()),
            Kind::Elasticsearch(config) => ProcessorSpec::Elasticsearch {
                config: (**config).clone(),
                transform: self
                    .transform
                    .as_ref()
                    .zip(lane)
                    .map(|(t, lane)| python_transform(t.clone_ref(py), lane)),
            },
        }
    }
}

/// Wraps a Python callable `transform(doc: dict) -> dict | None` (None skips the change).
fn python_transform(f: Py<PyAny>, lane: Lane) -> DocTransform {
    Arc::new(move |doc: &serde_json::Value| {
        lane.check("an elasticsearch transform")
            .map_err(|e| e.to_string())?;
        Python::attach(|py| {
            let arg = pythonize::pythonize(py, doc).map_err(|e| e.to_string())?;
            let out = f.call1(py, (arg,)).map_err(|e| {
                // The message names the exception; the traceback is printed for the operator.
                let message = format!("{}: {}", type_name(py, &e), e.value(py));
                e.print(py);
                message
            })?;
            if out.is_none(py) {
                return Ok(None);
            }
            pythonize::depythonize::<serde_json::Value>(out.bind(py))
                .map(Some)
                .map_err(|e| format!("the transform returned something that is not JSON data: {e}"))
        })
    })
}

fn type_name(py: Python<'_>, e: &PyErr) -> String {
    e.get_type(py)
        .qualname()
        .map_or_else(|_| "Exception".into(), |n| n.to_string())
}
