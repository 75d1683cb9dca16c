//! The declarative definition of a reporting table (CommCare's configurable reports, reduced to
//! what a pillow needs): the table, its columns with where each value comes from and its SQL
//! type, the primary key, and a filter on document fields.
//!
//! Everything is `deny_unknown_fields`, so a typo in a config file is an error, not a silently
//! ignored setting. [`TableDefinition::validate`] checks what serde cannot (identifiers, the
//! primary key); it runs before anything connects.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ConfigError, Result};

/// The SQL type of a column, and therefore how a document value is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Strings as they are; numbers and booleans as their JSON text.
    Text,
    /// `int4`: JSON integers, or strings holding one.
    Integer,
    /// `int8`: JSON integers, or strings holding one.
    Bigint,
    /// `numeric`: JSON numbers, or strings holding a decimal (`-12.50`, `1e3`).
    Numeric,
    /// JSON booleans; strings `true/false/t/f/yes/no/1/0` (any case); numbers 0 and 1.
    Boolean,
    /// `YYYY-MM-DD`, or a timestamp (its UTC date).
    Date,
    /// ISO 8601 / RFC 3339; naive values are UTC; a bare date is midnight UTC.
    Timestamptz,
    /// Any JSON value.
    Jsonb,
}

impl ColumnType {
    /// The SQL type name used in `CREATE TABLE`, casts and temporary tables.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Integer => "integer",
            Self::Bigint => "bigint",
            Self::Numeric => "numeric",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::Timestamptz => "timestamp with time zone",
            Self::Jsonb => "jsonb",
        }
    }

    /// The PostgreSQL wire type (for typed parameters and binary COPY).
    pub fn pg_type(self) -> tokio_postgres::types::Type {
        use tokio_postgres::types::Type;
        match self {
            Self::Text => Type::TEXT,
            Self::Integer => Type::INT4,
            Self::Bigint => Type::INT8,
            Self::Numeric => Type::NUMERIC,
            Self::Boolean => Type::BOOL,
            Self::Date => Type::DATE,
            Self::Timestamptz => Type::TIMESTAMPTZ,
            Self::Jsonb => Type::JSONB,
        }
    }

    /// `information_schema.columns.data_type` of this type (to report drift at bootstrap).
    pub fn information_schema_name(self) -> &'static str {
        self.sql()
    }
}

/// A field of the change itself (not of its document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeField {
    /// The document id (the Kafka message key): the usual primary key, `doc_id`.
    Id,
    Topic,
    Partition,
    /// The Kafka offset of the change.
    Offset,
    /// `metadata.domain`.
    Domain,
    /// `metadata.document_type`.
    DocumentType,
    /// `metadata.publish_timestamp`.
    PublishTimestamp,
}

/// One column: its name, its type, and where its value comes from (exactly one of `path` and
/// `change`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// A dotted path into the document: `form.meta.userID`, `$.domain` (a leading `$.` is
    /// optional), `form.items.0.name` (a number indexes an array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A field of the change instead of the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeField>,
}

impl ColumnDefinition {
    /// A column filled from a document path.
    pub fn path(name: &str, column_type: ColumnType, path: &str) -> Self {
        Self {
            name: name.to_owned(),
            column_type,
            path: Some(path.to_owned()),
            change: None,
        }
    }

    /// A column filled from a field of the change.
    pub fn change(name: &str, column_type: ColumnType, field: ChangeField) -> Self {
        Self {
            name: name.to_owned(),
            column_type,
            path: None,
            change: Some(field),
        }
    }
}

/// Which documents belong in the table. A change whose document does not match is a deletion
/// of its row (the document "stopped matching"). Both parts must hold; an empty filter matches
/// every document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `path = value` for every entry, e.g. `{ doc_type = "XFormInstance" }`.
    #[serde(default)]
    pub equals: std::collections::BTreeMap<String, Value>,
    /// `path` is one of the values, e.g. `{ domain = ["demo", "nutrition"] }`.
    #[serde(default)]
    pub one_of: std::collections::BTreeMap<String, Vec<Value>>,
}

/// How rows reach the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMethod {
    /// Adaptive (the default: measured fastest, see `benches/pg_table.rs`): the chunk's rows
    /// are first `COPY`'d (binary) straight into the table, as the first statement of the
    /// chunk, with the apply count at 1. When a row already exists (`unique_violation`) or the
    /// COPY fails otherwise, the chunk is rolled back to its start (the transaction, or in
    /// exactly-once mode the chunk's savepoint) and written by `copy_merge`, with the same
    /// encoded rows. After a conflict the next chunks go straight to `copy_merge`, skipping
    /// 1, 2, 4, … up to 64 chunks before COPY is tried again, so that an update-heavy feed does
    /// not pay a failed COPY per chunk; a successful COPY resets the skip.
    #[default]
    CopyFirst,
    /// `COPY … FROM STDIN (FORMAT binary)` into a temporary table, then one
    /// `INSERT … SELECT … ON CONFLICT DO UPDATE`.
    CopyMerge,
    /// Multi-row `INSERT … VALUES (…), (…) ON CONFLICT DO UPDATE` with typed parameters, split
    /// into statements of at most 65,535 parameters.
    InsertValues,
    /// `INSERT … SELECT * FROM unnest($1::type[], …) ON CONFLICT DO UPDATE`: one array
    /// parameter per column, whatever the number of rows.
    Unnest,
}

/// A reporting table: the `postgres_table` processor's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDefinition {
    /// The table name (quoted as an identifier; at most 63 bytes).
    pub table: String,
    /// The schema; `None` uses the connection's search path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub columns: Vec<ColumnDefinition>,
    /// Primary key column names. Each must be a column filled from the change (`change = …`),
    /// so that a deletion, whose document may be gone, still identifies its row.
    pub primary_key: Vec<String>,
    #[serde(default)]
    pub filter: Filter,
    #[serde(default)]
    pub write_method: WriteMethod,
    /// An audit column (`bigint`) set to 1 on insert and incremented on every update of the
    /// row: how many times a change was applied. Proves exactly-once delivery in tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_count_column: Option<String>,
    /// Rows and the pillow's checkpoint commit in one transaction (see
    /// [`super::exactly_once`]). The runner then uses this processor's session as the
    /// pillow's checkpoint store.
    #[serde(default)]
    pub exactly_once: bool,
    /// At-least-once mode: rows of successive chunks are gathered (the last change per primary
    /// key wins) and written together once this many are held, or [`Self::flush_max_bytes`],
    /// or [`Self::flush_max_delay_ms`] after the oldest; the writes go on in the background while
    /// the pillow reads on, and the checkpoint follows what was committed
    /// (`Processor::settle`). 0 writes each chunk before its call returns, as CommCare does.
    /// Exactly-once mode always writes in line (its offsets commit with the rows).
    #[serde(default = "default_flush_max_rows")]
    pub flush_max_rows: usize,
    /// See [`Self::flush_max_rows`]: the bound on the held changes' message bytes.
    #[serde(default = "default_flush_max_bytes")]
    pub flush_max_bytes: usize,
    /// See [`Self::flush_max_rows`]: the bound on the age of the oldest held row.
    #[serde(default = "default_flush_max_delay_ms")]
    pub flush_max_delay_ms: u64,
    /// At-least-once mode with gathering: how many connections write concurrently. Rows are
    /// grouped by a hash of their primary key, so one row's writes always go through one
    /// connection, in order.
    #[serde(default = "default_connections")]
    pub connections: usize,
}

fn default_flush_max_rows() -> usize {
    5000
}

fn default_flush_max_bytes() -> usize {
    8 << 20
}

fn default_flush_max_delay_ms() -> u64 {
    100
}

fn default_connections() -> usize {
    2
}

/// The most connections one table processor opens.
pub const MAX_CONNECTIONS: usize = 16;

/// PostgreSQL truncates longer identifiers silently; we refuse them instead.
const MAX_IDENTIFIER_BYTES: usize = 63;

fn invalid(msg: String) -> crate::Error {
    ConfigError::Invalid(msg).into()
}

fn check_identifier(what: &str, ident: &str) -> Result<()> {
    if ident.is_empty() || ident.len() > MAX_IDENTIFIER_BYTES || ident.contains('\0') {
        return Err(invalid(format!(
            "{what} {ident:?} is not a valid identifier: it must have 1 to {MAX_IDENTIFIER_BYTES} bytes and no NUL"
        )));
    }
    Ok(())
}

/// Quotes an SQL identifier: `"name"`, with inner quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Splits a document path into its segments (`$.form.meta.userID` → `form`, `meta`, `userID`).
pub fn path_segments(path: &str) -> Vec<String> {
    let p = path.strip_prefix("$.").unwrap_or(path);
    let p = p.strip_prefix('$').unwrap_or(p);
    p.split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl TableDefinition {
    /// The quoted, schema-qualified table name.
    pub fn qualified_name(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.table)),
            None => quote_ident(&self.table),
        }
    }

    /// A label for messages: `schema.table` or `table`, unquoted.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// Checks identifiers, sources, the primary key and the audit column.
    pub fn validate(&self) -> Result<()> {
        let t = self.label();
        check_identifier("table", &self.table)?;
        if let Some(s) = &self.schema {
            check_identifier("schema", s)?;
        }
        if self.columns.is_empty() {
            return Err(invalid(format!("table {t} has no columns")));
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.columns {
            check_identifier("column", &c.name)?;
            if !names.insert(c.name.as_str()) {
                return Err(invalid(format!(
                    "table {t} defines column {:?} twice",
                    c.name
                )));
            }
            match (&c.path, &c.change) {
                (Some(p), None) if !path_segments(p).is_empty() => {}
                (Some(p), None) => {
                    return Err(invalid(format!(
                        "column {:?} of table {t} has an empty path {p:?}",
                        c.name
                    )))
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(invalid(format!(
                        "column {:?} of table {t} needs exactly one of `path` and `change`",
                        c.name
                    )))
                }
            }
        }
        if self.primary_key.is_empty() {
            return Err(invalid(format!("table {t} has no primary key")));
        }
        for k in &self.primary_key {
            match self.columns.iter().find(|c| &c.name == k) {
                None => {
                    return Err(invalid(format!(
                        "primary key column {k:?} of table {t} is not a column"
                    )))
                }
                Some(c) if c.change.is_none() => {
                    return Err(invalid(format!(
                        "primary key column {k:?} of table {t} must come from the change (`change = \"id\"`), \
                         so that deletions can find their row without the document"
                    )))
                }
                Some(c) if c.column_type == ColumnType::Jsonb => {
                    return Err(invalid(format!(
                        "primary key column {k:?} of table {t} cannot be jsonb"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(a) = &self.apply_count_column {
            check_identifier("apply count column", a)?;
            if names.contains(a.as_str()) {
                return Err(invalid(format!(
                    "apply count column {a:?} of table {t} is also a defined column"
                )));
            }
        }
        for p in self.filter.equals.keys().chain(self.filter.one_of.keys()) {
            if path_segments(p).is_empty() {
                return Err(invalid(format!("filter path {p:?} of table {t} is empty")));
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(invalid(format!(
                "table {t}: `connections` is {}, it must be 1 to {MAX_CONNECTIONS}",
                self.connections
            )));
        }
        if self.flush_max_rows > 0 && (self.flush_max_bytes == 0 || self.flush_max_delay_ms == 0) {
            return Err(invalid(format!(
                "table {t}: `flush_max_bytes` and `flush_max_delay_ms` must be above 0 when rows are gathered \
                 (`flush_max_rows = 0` turns gathering off)"
            )));
        }
        Ok(())
    }

    /// True when the document matches the filter.
    pub fn matches(&self, doc: &Value) -> bool {
        self.filter
            .equals
            .iter()
            .all(|(p, v)| lookup(doc, p).is_some_and(|d| d == v))
            && self
                .filter
                .one_of
                .iter()
                .all(|(p, vs)| lookup(doc, p).is_some_and(|d| vs.contains(d)))
    }
}

pub use crate::path::lookup;

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDefinition {
        toml::from_str(
            r#"
            table = "xform_report"
            primary_key = ["doc_id"]
            columns = [
              { name = "doc_id", type = "text", change = "id" },
              { name = "user_id", type = "text", path = "form.meta.userID" },
              { name = "domain", type = "text", path = "$.domain" },
            ]
            [filter]
            equals = { doc_type = "XFormInstance" }
            one_of = { domain = ["a", "b"] }
            "#,
        )
        .expect("parses")
    }

    #[test]
    fn parses_validates_and_filters() {
        let d = def();
        d.validate().expect("valid");
        assert_eq!(d.write_method, WriteMethod::CopyFirst);
        let doc = serde_json::json!({"doc_type": "XFormInstance", "domain": "a", "form": {"meta": {"userID": "u"}}});
        assert!(d.matches(&doc));
        assert!(!d.matches(&serde_json::json!({"doc_type": "XFormInstance", "domain": "c"})));
        assert!(!d.matches(&serde_json::json!({"domain": "a"})));
        assert_eq!(
            lookup(&doc, "form.meta.userID"),
            Some(&serde_json::json!("u"))
        );
        assert_eq!(lookup(&doc, "$.domain"), Some(&serde_json::json!("a")));
        assert_eq!(
            lookup(&serde_json::json!({"a": [1, {"b": 2}]}), "a.1.b"),
            Some(&serde_json::json!(2))
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_keys() {
        let bad = r#"
            table = "t"
            primary_key = ["doc_id"]
            colums = []
            columns = [{ name = "doc_id", type = "text", change = "id" }]
        "#;
        assert!(toml::from_str::<TableDefinition>(bad).is_err());
        let mut d = def();
        d.primary_key = vec!["user_id".into()];
        assert!(d.validate().is_err(), "document-sourced primary key");
        let mut d = def();
        d.columns.push(ColumnDefinition {
            name: "x".into(),
            column_type: ColumnType::Text,
            path: Some("a".into()),
            change: Some(ChangeField::Id),
        });
        assert!(d.validate().is_err(), "two sources");
        let mut d = def();
        d.table = "x".repeat(64);
        assert!(d.validate().is_err(), "64-byte identifier");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let mut d = def();
        d.schema = Some("rep orts".into());
        assert_eq!(d.qualified_name(), "\"rep orts\".\"xform_report\"");
    }
}
