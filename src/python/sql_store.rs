//! `SqlDocumentStore(table, id_column="id", doc_column="doc")`: documents read in bulk from a
//! PostgreSQL table of the pillow's database, by the Rust core (no Python call per chunk), as
//! the TOML runner's `[[document_stores]]` do.

use pyo3::prelude::*;

use crate::assembly::DocumentSource;

/// A document store over a table with an id column and a JSON document column.
#[pyclass(
    name = "SqlDocumentStore",
    module = "pillowtop_rs._native",
    frozen,
    get_all
)]
pub(crate) struct PySqlDocumentStore {
    table: String,
    id_column: String,
    doc_column: String,
}

#[pymethods]
impl PySqlDocumentStore {
    #[new]
    #[pyo3(signature = (table, *, id_column = "id", doc_column = "doc"))]
    fn new(table: String, id_column: &str, doc_column: &str) -> PyResult<Self> {
        crate::docstore::check_identifiers(&table, id_column, doc_column)?;
        Ok(Self {
            table,
            id_column: id_column.to_owned(),
            doc_column: doc_column.to_owned(),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "SqlDocumentStore({:?}, id_column={:?}, doc_column={:?})",
            self.table, self.id_column, self.doc_column
        )
    }
}

impl PySqlDocumentStore {
    pub(crate) fn source(&self) -> DocumentSource {
        DocumentSource::Postgres {
            table: self.table.clone(),
            id_column: self.id_column.clone(),
            doc_column: self.doc_column.clone(),
        }
    }
}
