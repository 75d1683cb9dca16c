//! The PostgreSQL reporting-table processor (CommCare's configurable reports, for the hot path).
//!
//! * [`config`]: the declarative [`TableDefinition`] (table, columns with JSON paths or change
//!   fields and SQL types, primary key, filter, write method), strict serde;
//! * [`encoder`]: changes → typed rows (`Upsert`, `Delete`, or document missing), conversion
//!   failures per change, no I/O;
//! * [`processor`]: [`PgTableProcessor`], bulk upserts and deletes per chunk (by default
//!   `copy_first`: binary `COPY` straight into the table, merged through a temporary table
//!   when a row already exists), table creation and added columns in `bootstrap_if_needed`;
//! * [`exactly_once`]: rows and the pillow's checkpoint in one transaction;
//! * `pipeline`: at-least-once rows gathered across chunks and written in the background on
//!   `connections` connections (grouped by primary key), the checkpoint following what was
//!   committed.
//!
//! Semantics per change: a deletion, or a document that does not (or no longer) match the
//! filter, deletes its row; a missing document goes to the retry set (and becomes a
//! `DocumentMissingError` there, as in CommCare); a value that does not convert fails that
//! change only (`pillowtop_rs.exceptions.PostgresError`, naming table, column, document and
//! value) and the rest of the chunk is written.

pub mod config;
pub mod encoder;
pub mod exactly_once;
mod pipeline;
pub mod processor;

pub use config::{ChangeField, ColumnDefinition, ColumnType, Filter, TableDefinition, WriteMethod};
pub use exactly_once::{ExactlyOnceSession, TransactionalCheckpointStore};
pub use processor::PgTableProcessor;
