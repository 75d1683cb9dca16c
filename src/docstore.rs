//! Document stores: where a change's document comes from when the message does not embed it.
//!
//! Stores fetch in bulk: the pillow groups a chunk's changes by data source and makes one call
//! per store. A document the store lacks is remembered as `None` and never fetched again.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::change::{Change, Document};
use crate::error::Result;
use crate::pg::{err, Pg};

/// A source of documents for one or more data sources.
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Fetches the documents with these ids; missing ones are simply absent from the result.
    async fn get_documents(&self, ids: &[String]) -> Result<HashMap<String, Value>>;
}

/// Stores by (`data_source_type`, `data_source_name`); a `*` name matches any name of that type.
#[derive(Clone, Default)]
pub struct DocumentStores {
    stores: HashMap<(String, String), Arc<dyn DocumentStore>>,
}

impl std::fmt::Debug for DocumentStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentStores")
            .field("sources", &self.stores.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DocumentStores {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(
        &mut self,
        data_source_type: &str,
        data_source_name: &str,
        store: Arc<dyn DocumentStore>,
    ) {
        self.stores.insert(
            (data_source_type.to_owned(), data_source_name.to_owned()),
            store,
        );
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    fn store_for(&self, t: &str, n: &str) -> Option<&Arc<dyn DocumentStore>> {
        self.stores
            .get(&(t.to_owned(), n.to_owned()))
            .or_else(|| self.stores.get(&(t.to_owned(), "*".to_owned())))
    }

    /// Fetches the unfetched documents of `changes`, one call per store. Changes whose data
    /// source has no store keep `Document::Unfetched` (a processor may still fetch them itself).
    pub async fn fetch_missing(&self, changes: &mut [Change]) -> Result<()> {
        if self.stores.is_empty() {
            return Ok(());
        }
        let mut groups: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            if matches!(c.document, Document::Unfetched) {
                groups
                    .entry((
                        c.metadata.data_source_type.clone(),
                        c.metadata.data_source_name.clone(),
                    ))
                    .or_default()
                    .push(i);
            }
        }
        for ((t, n), idx) in groups {
            let Some(store) = self.store_for(&t, &n) else {
                continue;
            };
            let ids: Vec<String> = idx.iter().map(|&i| changes[i].id.clone()).collect();
            let docs = store.get_documents(&ids).await?;
            for i in idx {
                // `get`, not `remove`: the same id may appear twice in a chunk.
                changes[i].document = Document::Known(docs.get(&changes[i].id).cloned());
            }
        }
        Ok(())
    }
}

/// Documents in a PostgreSQL table with an id column and a JSON(B) document column: one query
/// per chunk and data source.
#[derive(Debug)]
pub struct PostgresDocumentStore {
    pg: Arc<Pg>,
    sql: String,
    table: String,
}

/// Checks the identifiers of a [`PostgresDocumentStore`]: letters, digits, underscores and
/// dots only.
pub fn check_identifiers(table: &str, id_column: &str, doc_column: &str) -> Result<()> {
    for ident in [table, id_column, doc_column] {
        if ident.is_empty()
            || !ident
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(crate::error::ConfigError::Invalid(format!(
                "document store of table {table:?}: {ident:?} is not a valid SQL identifier"
            ))
            .into());
        }
    }
    Ok(())
}

impl PostgresDocumentStore {
    /// `table`, `id_column` and `doc_column` are SQL identifiers (see [`check_identifiers`]).
    pub fn new(pg: Arc<Pg>, table: &str, id_column: &str, doc_column: &str) -> Result<Self> {
        check_identifiers(table, id_column, doc_column)?;
        Ok(Self {
            pg,
            sql: format!("SELECT {id_column}::text, {doc_column}::text FROM {table} WHERE {id_column}::text = ANY($1)"),
            table: table.to_owned(),
        })
    }
}

#[async_trait]
impl DocumentStore for PostgresDocumentStore {
    async fn get_documents(&self, ids: &[String]) -> Result<HashMap<String, Value>> {
        let what = format!("fetching documents from {}", self.table);
        self.pg
            .run(&what, |c| {
                let what = what.clone();
                async move {
                    let rows = c.query(&self.sql, &[&ids]).await.map_err(err(what))?;
                    Ok(rows
                        .iter()
                        .filter_map(|r| {
                            let doc: Option<String> = r.get(1);
                            Some((r.get::<_, String>(0), serde_json::from_str(&doc?).ok()?))
                        })
                        .collect())
                }
            })
            .await
    }
}

/// Documents in memory (tests, benches).
#[derive(Debug, Default)]
pub struct MemoryDocumentStore {
    pub docs: std::sync::Mutex<HashMap<String, Value>>,
    pub calls: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl DocumentStore for MemoryDocumentStore {
    async fn get_documents(&self, ids: &[String]) -> Result<HashMap<String, Value>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let docs = self
            .docs
            .lock()
            .map_err(|_| crate::error::ProcessError::Other("lock poisoned".into()))?;
        Ok(ids
            .iter()
            .filter_map(|id| docs.get(id).map(|d| (id.clone(), d.clone())))
            .collect())
    }
}
