//! [`PgTableProcessor`]: changes into a reporting table, one transaction per chunk (or, in
//! exactly-once mode, one transaction per checkpoint).
//!
//! Per chunk: the encoder turns every change into an upsert, a delete or "document missing";
//! deletes run as one `DELETE … USING unnest(…)`, upserts by the configured [`WriteMethod`]
//! (by default `copy_first`: a binary `COPY` straight into the table, falling back to COPY into
//! a temporary table and a merge when a row already exists).
//! A value that does not convert fails its change only; a statement that fails as a whole (a
//! constraint the definition does not know about) fails the chunk, and the pillow then writes
//! the changes one by one, so the culprit fails alone. Connection failures are retried by
//! [`Pg`] and are fatal after its backoff.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{pin_mut, SinkExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::Client;

use super::config::{quote_ident, ColumnType, TableDefinition, WriteMethod};
use super::encoder::{Action, EncodedChunk, Encoder, SqlValue, POSTGRES_ERROR};
use super::exactly_once::{client, ExactlyOnceSession};
use super::pipeline::Pipeline;
use crate::change::Change;
use crate::error::{PostgresError, Result};
use crate::partition::TopicPartition;
use crate::pg::{err, is_retriable, Pg};
use crate::processor::reindex_watch::ReindexWatch;
use crate::processor::{ChunkOutcome, Processor, ProcessorFailure, Settled};

/// PostgreSQL's limit on bind parameters per statement.
pub const MAX_PARAMETERS: usize = 65_535;

/// `copy_first`: after this many conflicts in a row, COPY is tried every 64 chunks.
const MAX_COPY_SKIP: u32 = 64;

/// `copy_first`'s memory: how many chunks to write by merge before trying COPY again.
#[derive(Debug, Default)]
struct CopyFirstState {
    /// Chunks still to write by merge.
    skip: AtomicU32,
    /// The skip after the next conflict (doubles up to [`MAX_COPY_SKIP`]; 0 means 1).
    next_skip: AtomicU32,
}

impl CopyFirstState {
    /// True when this chunk should try COPY into the table (consumes one skipped chunk).
    fn try_copy(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1))
            .is_err()
    }

    fn copied(&self) {
        self.next_skip.store(1, Ordering::Relaxed);
    }

    fn conflicted(&self) {
        let n = self.next_skip.load(Ordering::Relaxed).max(1);
        self.skip.store(n, Ordering::Relaxed);
        self.next_skip
            .store((n * 2).min(MAX_COPY_SKIP), Ordering::Relaxed);
    }
}

/// The SQL of one table, built once from its definition.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    method: WriteMethod,
    label: String,
    /// The table's name, unquoted, without its schema.
    table_name: String,
    types: Vec<Type>,
    casts: Vec<&'static str>,
    /// `INSERT INTO tbl AS t ("a", "b"[, "count"])`
    insert_into: String,
    /// `1` for the apply-count column, when there is one.
    count_value: &'static str,
    /// `ON CONFLICT (…) DO UPDATE SET …`
    conflict: String,
    create_stage: String,
    /// `COPY` into the staging table (the table's columns, and the apply count).
    copy: String,
    /// `COPY` straight into the table (`copy_first`).
    copy_target: String,
    /// Wire types of a COPY row: the columns', then `int8` for the apply count.
    copy_types: Vec<Type>,
    has_counter: bool,
    merge: String,
    delete: String,
    max_rows_per_insert: usize,
    copy_first: Arc<CopyFirstState>,
    /// A reindex's backfill: rows are only added (`ON CONFLICT DO NOTHING`, a conflicting
    /// COPY merges), never updated or deleted, so a copy never overwrites the live pillow's
    /// newer write.
    create_only: bool,
}

impl Writer {
    fn new(def: &TableDefinition, pk: &[usize], create_only: bool) -> Self {
        let table = def.qualified_name();
        let cols: Vec<String> = def.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let col_list = cols.join(", ");
        let counter = def.apply_count_column.as_deref().map(quote_ident);
        let insert_into = match &counter {
            Some(a) => format!("INSERT INTO {table} AS t ({col_list}, {a})"),
            None => format!("INSERT INTO {table} AS t ({col_list})"),
        };
        let pk_cols: Vec<&str> = pk.iter().map(|&i| cols[i].as_str()).collect();
        let mut sets: Vec<String> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| !pk.contains(i))
            .map(|(_, c)| format!("{c} = EXCLUDED.{c}"))
            .collect();
        if let Some(a) = &counter {
            sets.push(format!("{a} = t.{a} + 1"));
        }
        let conflict = if sets.is_empty() || create_only {
            format!(" ON CONFLICT ({}) DO NOTHING", pk_cols.join(", "))
        } else {
            format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                pk_cols.join(", "),
                sets.join(", ")
            )
        };
        let count_value = if counter.is_some() { ", 1" } else { "" };
        // Named after the table *and* its columns: a connection may outlive a definition change.
        let shape = def.columns.iter().fold(def.label(), |acc, c| {
            format!("{acc}|{}:{}", c.name, c.column_type.sql())
        });
        let shape = match &counter {
            Some(a) => format!("{shape}|{a}:count"),
            None => shape,
        };
        let stage = quote_ident(&format!(
            "pillowtop_stage_{:016x}",
            crate::hash::fnv1a(shape.as_bytes())
        ));
        let mut stage_cols = def
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.column_type.sql()))
            .collect::<Vec<_>>()
            .join(", ");
        // The staging table has the apply count too (always 1): the same COPY rows serve the
        // table (`copy_first`) and the staging table.
        let copy_cols = match &counter {
            Some(a) => {
                let _ = write!(stage_cols, ", {a} bigint");
                format!("{col_list}, {a}")
            }
            None => col_list.clone(),
        };
        let key_types: Vec<&str> = pk
            .iter()
            .map(|&i| def.columns[i].column_type.sql())
            .collect();
        let delete = delete_sql(&table, &pk_cols, &key_types);
        let n = def.columns.len().max(1);
        let types: Vec<Type> = def
            .columns
            .iter()
            .map(|c| c.column_type.pg_type())
            .collect();
        let mut copy_types = types.clone();
        if counter.is_some() {
            copy_types.push(Type::INT8);
        }
        Self {
            method: def.write_method,
            label: def.label(),
            table_name: def.table.clone(),
            types,
            casts: def.columns.iter().map(|c| c.column_type.sql()).collect(),
            create_stage: format!("CREATE TEMP TABLE IF NOT EXISTS {stage} ({stage_cols})"),
            copy: format!("COPY {stage} ({copy_cols}) FROM STDIN (FORMAT binary)"),
            copy_target: format!("COPY {table} ({copy_cols}) FROM STDIN (FORMAT binary)"),
            copy_types,
            has_counter: counter.is_some(),
            merge: format!(
                "{insert_into} SELECT {copy_cols} FROM {stage}{conflict}; TRUNCATE {stage}"
            ),
            copy_first: Arc::default(),
            create_only,
            insert_into,
            count_value,
            conflict,
            delete,
            max_rows_per_insert: (MAX_PARAMETERS / n).max(1),
        }
    }

    /// How this chunk's upserts go: `copy_first` decides (and consumes a skipped chunk) here,
    /// once per chunk, outside the retried connection closure.
    fn plan(&self, chunk: &EncodedChunk) -> Plan {
        match self.method {
            _ if chunk.upserts.is_empty() => Plan::Other,
            WriteMethod::CopyFirst if self.copy_first.try_copy() => Plan::CopyFirst,
            WriteMethod::CopyFirst | WriteMethod::CopyMerge => Plan::CopyMerge,
            WriteMethod::Unnest | WriteMethod::InsertValues => Plan::Other,
        }
    }

    /// What to run before the rows: `prelude` plus, for a merge, the staging table.
    fn prelude(&self, prelude: &str, plan: Plan) -> String {
        if plan == Plan::CopyMerge {
            format!("{prelude}; {}", self.create_stage)
        } else {
            prelude.to_owned()
        }
    }

    /// The chunk's upserts in `COPY … (FORMAT binary)` form, with the apply count (1) when the
    /// table has one: encoded once, sent to the table or to the staging table.
    fn copy_payload(&self, rows: &[Vec<SqlValue>]) -> std::result::Result<Bytes, String> {
        let fields = i16::try_from(self.copy_types.len()).map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(19 + rows.len() * (2 + 64 * self.copy_types.len()));
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        for row in rows {
            buf.put_i16(fields);
            for (v, ty) in row.iter().zip(&self.types) {
                let at = buf.len();
                buf.put_i32(0);
                let len = match v.to_sql_checked(ty, &mut buf).map_err(|e| e.to_string())? {
                    IsNull::Yes => -1,
                    IsNull::No => i32::try_from(buf.len() - at - 4).map_err(|e| e.to_string())?,
                };
                buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            if self.has_counter {
                buf.put_i32(8);
                buf.put_i64(1);
            }
        }
        buf.put_i16(-1);
        Ok(buf.freeze())
    }

    /// Runs the chunk's deletes and upserts on `c`, inside the caller's transaction, which was
    /// opened just before (by [`Writer::prelude`] with the same `plan`), or none for a
    /// `copy_first` chunk of new rows alone (see [`TableSink::write_shared`]). `restart` undoes
    /// everything the chunk did and starts it again (`ROLLBACK; BEGIN`, back to the chunk's
    /// savepoint, or `BEGIN` without a transaction): `copy_first` runs it when COPY into the
    /// table fails. Returns whether it did (and merged).
    pub(crate) async fn write(
        &self,
        c: &Client,
        chunk: &EncodedChunk,
        plan: Plan,
        payload: Option<&Bytes>,
        restart: &str,
    ) -> std::result::Result<bool, tokio_postgres::Error> {
        let mut merge = plan == Plan::CopyMerge;
        if plan == Plan::CopyFirst {
            let payload = payload.expect("copy_first encodes its payload");
            match copy_bytes(c, &self.copy_target, payload).await {
                Ok(()) => self.copy_first.copied(),
                Err(e) if c.is_closed() || e.as_db_error().is_none() => return Err(e),
                Err(e) => {
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        self.copy_first.conflicted();
                    } else {
                        // Not a conflict: the merge meets the same data and says what is wrong.
                        tracing::debug!(table = %self.label, error = %describe(&e), "COPY into the table failed; merging instead");
                    }
                    c.batch_execute(&format!("{restart}; {}", self.create_stage))
                        .await?;
                    merge = true;
                }
            }
        }
        if !chunk.deletes.is_empty() && !self.create_only {
            let keys = transpose(&chunk.deletes);
            let params: Vec<&(dyn ToSql + Sync)> =
                keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
            c.execute(self.delete.as_str(), &params).await?;
        }
        let restarted = plan == Plan::CopyFirst && merge;
        if chunk.upserts.is_empty() || (plan == Plan::CopyFirst && !merge) {
            return Ok(restarted);
        }
        if merge {
            let payload = payload.expect("copy_merge encodes its payload");
            copy_bytes(c, &self.copy, payload).await?;
            return c.batch_execute(&self.merge).await.map(|()| restarted);
        }
        match self.method {
            WriteMethod::InsertValues => {
                for rows in chunk.upserts.chunks(self.max_rows_per_insert) {
                    let sql = self.insert_values_sql(rows.len());
                    let params: Vec<&(dyn ToSql + Sync)> = rows
                        .iter()
                        .flatten()
                        .map(|v| v as &(dyn ToSql + Sync))
                        .collect();
                    c.execute(sql.as_str(), &params).await?;
                }
            }
            WriteMethod::Unnest => {
                let columns = transpose(&chunk.upserts);
                let params: Vec<&(dyn ToSql + Sync)> =
                    columns.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
                c.execute(self.unnest_sql().as_str(), &params).await?;
            }
            WriteMethod::CopyFirst | WriteMethod::CopyMerge => {
                unreachable!("planned as a COPY")
            }
        }
        Ok(restarted)
    }

    fn insert_values_sql(&self, rows: usize) -> String {
        let n = self.casts.len();
        let mut sql = String::with_capacity(self.insert_into.len() + rows * n * 14 + 200);
        sql.push_str(&self.insert_into);
        sql.push_str(" VALUES ");
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (i, cast) in self.casts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let _ = write!(sql, "${}::{cast}", r * n + i + 1);
            }
            sql.push_str(self.count_value);
            sql.push(')');
        }
        sql.push_str(&self.conflict);
        sql
    }

    fn unnest_sql(&self) -> String {
        let arrays: Vec<String> = self
            .casts
            .iter()
            .enumerate()
            .map(|(i, cast)| format!("${}::{cast}[]", i + 1))
            .collect();
        format!(
            "{} SELECT *{} FROM unnest({}){}",
            self.insert_into,
            self.count_value,
            arrays.join(", "),
            self.conflict
        )
    }
}

/// `DELETE … USING unnest($1::type[], …)` by primary key.
fn delete_sql(table: &str, pk_cols: &[&str], key_types: &[&str]) -> String {
    format!(
        "DELETE FROM {table} AS t USING unnest({}) AS d({}) WHERE {}",
        key_types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::{ty}[]", i + 1))
            .collect::<Vec<_>>()
            .join(", "),
        (0..key_types.len())
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        pk_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("t.{c} = d.k{i}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    )
}

/// The statements before a chunk's rows: `begin`, and when merging each version's staging
/// table.
fn prelude(primary: &Writer, also: &[Writer], begin: &str, plan: Plan) -> String {
    let mut sql = primary.prelude(begin, plan);
    if plan == Plan::CopyMerge {
        for w in also {
            sql.push_str("; ");
            sql.push_str(&w.create_stage);
        }
    }
    sql
}

/// Writes a chunk to the table, then to its other versions (a reindex), in the caller's
/// transaction: every version has the chunk, or none.
async fn write_versions(
    primary: &Writer,
    also: &[Writer],
    c: &Client,
    chunk: &EncodedChunk,
    plan: Plan,
    payload: Option<&Bytes>,
    restart: &str,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let mut restarted = primary.write(c, chunk, plan, payload, restart).await?;
    for w in also {
        restarted |= w.write(c, chunk, plan, payload, restart).await?;
    }
    Ok(restarted)
}

/// How one chunk's upserts are written (decided by [`Writer::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// `copy_first`: COPY into the table; merge when that fails.
    CopyFirst,
    /// COPY into the staging table, then merge.
    CopyMerge,
    /// `unnest` or `insert_values` (or nothing to upsert).
    Other,
}

/// Sends a ready binary COPY payload.
async fn copy_bytes(
    c: &Client,
    statement: &str,
    payload: &Bytes,
) -> std::result::Result<(), tokio_postgres::Error> {
    let sink = c.copy_in::<_, Bytes>(statement).await?;
    pin_mut!(sink);
    sink.send(payload.clone()).await?;
    sink.finish().await?;
    Ok(())
}

/// Rows → columns (for `unnest` array parameters).
pub(crate) fn transpose(rows: &[Vec<SqlValue>]) -> Vec<Vec<SqlValue>> {
    let n = rows.first().map_or(0, Vec::len);
    let mut cols: Vec<Vec<SqlValue>> = (0..n).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (col, v) in cols.iter_mut().zip(row) {
            col.push(v.clone());
        }
    }
    cols
}

/// A database error in words: PostgreSQL's message, SQLSTATE and detail when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    crate::error::describe_postgres(e)
}

/// Where the rows go.
#[derive(Debug, Clone)]
enum Target {
    /// A transaction per chunk on a retrying shared connection.
    Shared(Arc<Pg>),
    /// The open transaction of an exactly-once session.
    ExactlyOnce(Arc<ExactlyOnceSession>),
}

/// One table's writes through one target: what the processor writes in line, and what each
/// pipelined connection writes (see [`super::pipeline`]).
#[derive(Debug)]
pub(crate) struct TableSink {
    writer: Writer,
    /// The quoted table name and its primary-key columns, sorted (for the unique-key check).
    table: String,
    keys: Vec<String>,
    target: Target,
    /// Whether the table has a unique index on exactly its primary-key columns, checked once
    /// before the first `copy_first` COPY (shared by the connections of one processor): without
    /// one a COPY would add duplicate rows where the merge's `ON CONFLICT` fails with
    /// PostgreSQL's message (a table made by hand).
    unique_key: Arc<tokio::sync::OnceCell<bool>>,
    /// The other versions of the table written in the same transaction, during a reindex (see
    /// [`crate::store::reindex::ReindexRun::table_targets`]); shared with the pipelined
    /// writers, replaced as a whole when the reindex moves on.
    also: Arc<std::sync::RwLock<Arc<Vec<Writer>>>>,
}

/// The PostgreSQL reporting-table processor.
#[derive(Debug)]
pub struct PgTableProcessor {
    name: String,
    def: TableDefinition,
    encoder: Encoder,
    sink: TableSink,
    /// Gathering and background writes (at-least-once with `flush_max_rows` > 0).
    pipeline: Option<Pipeline>,
    /// Follows the rebuilds of the table ([`crate::store::reindex`]), when attached.
    watch: Option<ReindexWatch>,
}

impl PgTableProcessor {
    /// An at-least-once processor writing through `pg` (a transaction per chunk, or per
    /// gathered batch on its own connections: see [`TableDefinition::flush_max_rows`]).
    pub fn new(def: TableDefinition, pg: Arc<Pg>) -> Result<Self> {
        Self::build(def, Target::Shared(pg))
    }

    /// An exactly-once processor writing inside `session`'s transaction; give the pillow a
    /// [`super::TransactionalCheckpointStore`] over the same session.
    pub fn exactly_once(def: TableDefinition, session: Arc<ExactlyOnceSession>) -> Result<Self> {
        Self::build(def, Target::ExactlyOnce(session))
    }

    fn build(def: TableDefinition, target: Target) -> Result<Self> {
        def.validate()?;
        let encoder = Encoder::new(&def);
        let writer = Writer::new(&def, encoder.primary_key(), false);
        let mut keys = def.primary_key.clone();
        keys.sort();
        let pipeline = match &target {
            Target::Shared(_) if def.flush_max_rows > 0 => Some(Pipeline::new(&def)),
            _ => None,
        };
        Ok(Self {
            name: format!("postgres-table:{}", def.label()),
            sink: TableSink {
                writer,
                table: def.qualified_name(),
                keys,
                target,
                unique_key: Arc::default(),
                also: Arc::default(),
            },
            encoder,
            def,
            pipeline,
            watch: None,
        })
    }

    /// Overrides how upserts are written (for benchmarks and operators).
    #[must_use]
    pub fn with_write_method(mut self, method: WriteMethod) -> Self {
        self.def.write_method = method;
        self.sink.writer = Writer::new(&self.def, self.encoder.primary_key(), false);
        if self.pipeline.is_some() {
            self.pipeline = Some(Pipeline::new(&self.def));
        }
        self
    }

    /// Only adds rows, never updates or deletes one (`ON CONFLICT DO NOTHING`; deletions are
    /// skipped): a reindex's backfill, whose copies must not overwrite the live pillow's newer
    /// writes.
    #[must_use]
    pub fn with_create_only(mut self) -> Self {
        self.sink.writer = Writer::new(&self.def, self.encoder.primary_key(), true);
        self
    }

    /// Follows the rebuilds of the table by `pillowtop reindex` (see
    /// [`crate::store::reindex::ReindexRun::table_targets`]): about once a second
    /// ([`REINDEX_POLL`](crate::processor::reindex_watch::REINDEX_POLL)), at idle ticks and
    /// before the table is created, the processor reads the newest reindex of processor
    /// `name()` of `pillow`, writes every version the step names in the same transaction, and
    /// acknowledges the step once nothing it wrote before is still in flight. `pg` should have
    /// no outage budget (the pillow never waits for the watch).
    #[must_use]
    pub fn with_reindex_watch(mut self, pg: Arc<Pg>, pillow: impl Into<String>) -> Self {
        self.watch = Some(ReindexWatch::new(pg, pillow));
        self
    }

    /// The tables written now: the configured one, then the other versions (a reindex).
    pub fn tables(&self) -> Vec<String> {
        std::iter::once(self.def.table.clone())
            .chain(self.sink.also().iter().map(|w| w.table_name.clone()))
            .collect()
    }

    /// Reads the newest reindex of the table (at most every `REINDEX_POLL` unless `force`),
    /// writes where it says from now on and acknowledges its step.
    async fn follow_reindex(&mut self, force: bool) -> Result<()> {
        let Some(w) = self.watch.as_mut() else {
            return Ok(());
        };
        let Some(run) = w.read(&self.name, force).await? else {
            return Ok(());
        };
        let wanted = run
            .as_ref()
            .map(crate::store::reindex::ReindexRun::table_targets)
            .map(|t| t.also)
            .unwrap_or_default();
        let now: Vec<String> = self
            .sink
            .also()
            .iter()
            .map(|w| w.table_name.clone())
            .collect();
        if now != wanted {
            // What is gathered and in flight goes where it was going: once acknowledged, no
            // write by the earlier targets is left.
            self.drain().await?;
            let writers: Vec<Writer> = wanted
                .iter()
                .map(|t| {
                    let mut d = self.def.clone();
                    d.table.clone_from(t);
                    Writer::new(&d, self.encoder.primary_key(), false)
                })
                .collect();
            tracing::info!(processor = %self.name, table = %self.def.label(), also = ?wanted,
                step = ?run.as_ref().map(|r| r.step.as_str()),
                "the table is being rebuilt: writing these versions too from now on");
            *self
                .sink
                .also
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(writers);
        }
        if let (Some(w), Some(run)) = (self.watch.as_mut(), &run) {
            w.acknowledge(&self.name, run).await?;
        }
        Ok(())
    }

    pub fn definition(&self) -> &TableDefinition {
        &self.def
    }

    /// Writes everything gathered and waits for every background write (before a write in line,
    /// so that a row's writes stay in order).
    async fn drain(&mut self) -> Result<()> {
        if let Some(p) = &mut self.pipeline {
            p.dispatch(&self.sink).await?;
            p.wait_idle().await?;
        }
        Ok(())
    }

    /// The newest offset of each partition in `changes`: what an exactly-once write stages
    /// with its rows (nothing for an at-least-once target, whose checkpoint the pillow writes).
    fn offsets(&self, changes: &[Change]) -> Vec<(TopicPartition, i64)> {
        if matches!(self.sink.target, Target::Shared(_)) {
            return Vec::new();
        }
        let mut out: Vec<(TopicPartition, i64)> = Vec::new();
        for c in changes {
            match out
                .iter_mut()
                .find(|(tp, _)| tp.partition == c.partition && tp.topic == c.topic)
            {
                Some((_, o)) => *o = (*o).max(c.offset),
                None => out.push((TopicPartition::new(c.topic.as_str(), c.partition), c.offset)),
            }
        }
        out
    }
}

impl TableSink {
    /// The same table through a connection of its own (a pipelined writer).
    pub(crate) fn sibling(&self) -> Option<Self> {
        match &self.target {
            Target::Shared(pg) => Some(Self {
                writer: self.writer.clone(),
                table: self.table.clone(),
                keys: self.keys.clone(),
                target: Target::Shared(Arc::new(pg.sibling())),
                unique_key: Arc::clone(&self.unique_key),
                also: Arc::clone(&self.also),
            }),
            Target::ExactlyOnce(_) => None,
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.writer.label
    }

    /// The other versions written now (a reindex).
    fn also(&self) -> Arc<Vec<Writer>> {
        Arc::clone(
            &self
                .also
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes an encoded chunk. `Ok(Err(message))`: the statement failed on the data (the
    /// chunk was rolled back); `Err`: fatal (connection lost beyond retries).
    pub(crate) async fn write(
        &self,
        chunk: &EncodedChunk,
        offsets: Vec<(TopicPartition, i64)>,
    ) -> Result<std::result::Result<(), String>> {
        if chunk.upserts.is_empty() && chunk.deletes.is_empty() {
            return Ok(Ok(()));
        }
        let what = format!("writing rows of table {}", self.writer.label);
        let also = self.also();
        let mut plan = self.writer.plan(chunk);
        // With other versions (a reindex), a failed COPY's restart would undo the versions
        // written before it: every version merges.
        if plan == Plan::CopyFirst && (!also.is_empty() || !self.has_unique_key().await?) {
            plan = Plan::CopyMerge;
        }
        let payload = match plan {
            Plan::CopyFirst | Plan::CopyMerge => match self.writer.copy_payload(&chunk.upserts) {
                Ok(p) => Some(p),
                Err(e) => return Ok(Err(format!("encoding the rows for COPY failed: {e}"))),
            },
            Plan::Other => None,
        };
        self.write_planned(chunk, offsets, &what, plan, payload.as_ref(), &also)
            .await
    }

    /// See [`PgTableProcessor::unique_key`].
    async fn has_unique_key(&self) -> Result<bool> {
        let found = self
            .unique_key
            .get_or_try_init(|| async {
                let pg = match &self.target {
                    Target::Shared(pg) => Arc::clone(pg),
                    Target::ExactlyOnce(s) => Arc::new(Pg::new(s.url())),
                };
                let (table, keys) = (&self.table, &self.keys);
                let what = format!("reading the unique indexes of table {}", self.writer.label);
                pg.run(&what, |c| {
                    let what = what.clone();
                    async move {
                        c.query_one(
                            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1::text::regclass \
                               AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
                               AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) \
                                    FROM pg_attribute a WHERE a.attrelid = i.indrelid \
                                    AND a.attnum = ANY (i.indkey)) = $2::text[])",
                            &[table, keys],
                        )
                        .await
                        .map(|r| r.get::<_, bool>(0))
                        .map_err(err(what))
                    }
                })
                .await
                .inspect(|found| {
                    if !found {
                        tracing::warn!(table = %self.writer.label, "the table has no unique index on its primary key: copy_first merges instead of copying (and the merge's ON CONFLICT will say what is wrong)");
                    }
                })
            })
            .await?;
        Ok(*found)
    }

    /// [`Self::write_planned`] on an at-least-once target: a transaction of its own.
    async fn write_shared(
        &self,
        pg: &Pg,
        chunk: &EncodedChunk,
        what: &str,
        plan: Plan,
        payload: Option<&Bytes>,
        also: &[Writer],
    ) -> Result<std::result::Result<(), String>> {
        // New rows alone into one table: the COPY is a transaction of its own (two
        // round trips fewer a chunk); should it fail, the merge opens one.
        let alone = plan == Plan::CopyFirst && chunk.deletes.is_empty() && also.is_empty();
        let (begin, restart) = if alone {
            (String::new(), "BEGIN")
        } else {
            (
                prelude(&self.writer, also, "BEGIN", plan),
                "ROLLBACK; BEGIN",
            )
        };
        pg.run(what, |c| {
            let (what, begin) = (what.to_owned(), &begin);
            async move {
                if !alone {
                    c.batch_execute(begin).await.map_err(err(what.clone()))?;
                }
                let result =
                    match write_versions(&self.writer, also, &c, chunk, plan, payload, restart)
                        .await
                    {
                        Ok(false) if alone => Ok(()),
                        Ok(_) => c.batch_execute("COMMIT").await,
                        Err(e) => Err(e),
                    };
                match result {
                    Ok(()) => Ok(Ok(())),
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        let message = describe(&e);
                        let e: crate::Error = PostgresError::query(what, e).into();
                        if is_retriable(&e) {
                            Err(e)
                        } else {
                            Ok(Err(message))
                        }
                    }
                }
            }
        })
        .await
    }

    /// [`Self::write`] once the chunk's plan is made and its COPY rows are encoded.
    async fn write_planned(
        &self,
        chunk: &EncodedChunk,
        offsets: Vec<(TopicPartition, i64)>,
        what: &str,
        plan: Plan,
        payload: Option<&Bytes>,
        also: &[Writer],
    ) -> Result<std::result::Result<(), String>> {
        match &self.target {
            Target::Shared(pg) => {
                self.write_shared(pg, chunk, what, plan, payload, also)
                    .await
            }
            Target::ExactlyOnce(session) => {
                let mut st = session.lock().await?;
                let prelude = if st.in_transaction {
                    prelude(&self.writer, also, "SAVEPOINT pillowtop_chunk", plan)
                } else {
                    prelude(&self.writer, also, "BEGIN; SAVEPOINT pillowtop_chunk", plan)
                };
                let c = client(&st)?;
                let result = async {
                    c.batch_execute(&prelude).await.map_err(|e| (true, e))?;
                    match write_versions(
                        &self.writer,
                        also,
                        c,
                        chunk,
                        plan,
                        payload,
                        "ROLLBACK TO SAVEPOINT pillowtop_chunk",
                    )
                    .await
                    {
                        Ok(_) => c
                            .batch_execute("RELEASE SAVEPOINT pillowtop_chunk")
                            .await
                            .map_err(|e| (true, e)),
                        Err(e) if c.is_closed() => Err((true, e)),
                        Err(e) => match c
                            .batch_execute("ROLLBACK TO SAVEPOINT pillowtop_chunk")
                            .await
                        {
                            Ok(()) => Err((false, e)),
                            Err(e2) => Err((true, e2)),
                        },
                    }
                }
                .await;
                st.in_transaction = true;
                match result {
                    Ok(()) => {
                        st.stage(offsets);
                        Ok(Ok(()))
                    }
                    Err((false, e)) => Ok(Err(describe(&e))),
                    Err((true, e)) => {
                        let msg = format!(
                            "{what} in the exactly-once transaction failed: {}",
                            describe(&e)
                        );
                        if let Ok(c) = client(&st) {
                            let _ = c.batch_execute("ROLLBACK").await;
                        }
                        ExactlyOnceSession::poison(&mut st, msg.clone());
                        Err(PostgresError::Other(msg).into())
                    }
                }
            }
        }
    }
}

impl PgTableProcessor {
    /// Creates the table when it is missing, then adds the columns the definition gained
    /// (`ALTER TABLE … ADD COLUMN`); never drops or retypes a column (a type that differs is
    /// logged). Serialised between processes by an advisory lock per table.
    async fn bootstrap(&self, pg: &Pg) -> Result<()> {
        let def = &self.def;
        let table = def.qualified_name();
        let label = def.label();
        let mut cols: Vec<String> = def
            .columns
            .iter()
            .map(|c| {
                let not_null = if def.primary_key.contains(&c.name) {
                    " NOT NULL"
                } else {
                    ""
                };
                format!("{} {}{not_null}", quote_ident(&c.name), c.column_type.sql())
            })
            .collect();
        if let Some(a) = &def.apply_count_column {
            cols.push(format!("{} bigint NOT NULL DEFAULT 1", quote_ident(a)));
        }
        let pk = def
            .primary_key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let schema = def
            .schema
            .as_deref()
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(s)))
            .unwrap_or_default();
        let lock = i64::from_ne_bytes(
            crate::hash::fnv1a(format!("pillowtop table {label}").as_bytes()).to_ne_bytes(),
        );
        let create = format!(
            "{schema} CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({pk}))",
            cols.join(", ")
        );
        let what = format!("creating table {label}");
        pg.run(&what, |c| {
            let (what, create, table, label) = (what.clone(), &create, &table, &label);
            async move {
                c.batch_execute("BEGIN").await.map_err(err(what.clone()))?;
                let result = async {
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await?;
                    c.batch_execute(create).await?;
                    let rows = c
                        .query(
                            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                            &[table],
                        )
                        .await?;
                    let existing: std::collections::HashMap<String, String> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    for col in &def.columns {
                        match existing.get(&col.name) {
                            None => {
                                tracing::info!(table = %label, column = %col.name, r#type = col.column_type.sql(), "adding a column to the reporting table");
                                c.batch_execute(&format!(
                                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}",
                                    quote_ident(&col.name),
                                    col.column_type.sql()
                                ))
                                .await?;
                            }
                            Some(t) if !same_type(t, col.column_type) => {
                                tracing::warn!(table = %label, column = %col.name, existing = %t, defined = col.column_type.sql(),
                                    "reporting table column has another type than its definition; leaving it as it is");
                            }
                            Some(_) => {}
                        }
                    }
                    if let Some(a) = &def.apply_count_column {
                        if !existing.contains_key(a) {
                            c.batch_execute(&format!(
                                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} bigint NOT NULL DEFAULT 0",
                                quote_ident(a)
                            ))
                            .await?;
                        }
                    }
                    c.batch_execute("COMMIT").await
                }
                .await;
                if let Err(e) = result {
                    let _ = c.batch_execute("ROLLBACK").await;
                    return Err(PostgresError::query(what, e).into());
                }
                Ok(())
            }
        })
        .await
    }
}

fn same_type(existing: &str, defined: ColumnType) -> bool {
    existing == defined.sql()
        || (defined == ColumnType::Numeric && existing.starts_with("numeric"))
        || (defined == ColumnType::Text
            && (existing.starts_with("character varying") || existing == "character"))
}

/// A row that failed alone: the error names the table, the document and PostgreSQL's cause.
pub(crate) fn row_failure(table: &str, doc_id: &str, why: &str) -> ProcessorFailure {
    ProcessorFailure::new(
        POSTGRES_ERROR,
        format!("table {table}, document {doc_id}: {why}"),
    )
}

#[async_trait]
impl Processor for PgTableProcessor {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports_batch_processing(&self) -> bool {
        true
    }

    fn needs_documents(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> Result<std::result::Result<(), ProcessorFailure>> {
        self.follow_reindex(false).await?;
        let mut chunk = EncodedChunk::default();
        match self.encoder.encode(change) {
            Err(f) => return Ok(Err(f)),
            Ok(Action::Missing) => return Ok(Err(ProcessorFailure::document_missing(&change.id))),
            Ok(Action::Upsert(row)) => chunk.upserts.push(row),
            Ok(Action::Delete(key)) => chunk.deletes.push(key),
        }
        // Gathered rows go first, so that a row's writes stay in order.
        self.drain().await?;
        let offsets = self.offsets(std::slice::from_ref(change));
        Ok(self
            .sink
            .write(&chunk, offsets)
            .await?
            .map_err(|why| row_failure(self.sink.label(), &change.id, &why)))
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<std::result::Result<ChunkOutcome, ProcessorFailure>> {
        self.follow_reindex(false).await?;
        if let Some(p) = &mut self.pipeline {
            return Ok(Ok(p.gather(&self.encoder, changes)));
        }
        let chunk = self.encoder.encode_chunk(changes);
        let rows = chunk.upserts.len() + chunk.deletes.len();
        match self.sink.write(&chunk, self.offsets(changes)).await? {
            Ok(()) => Ok(Ok(ChunkOutcome {
                retry: chunk.missing,
                errors: chunk.errors,
            })),
            Err(why) => Ok(Err(ProcessorFailure::new(
                POSTGRES_ERROR,
                format!(
                    "table {}: writing {rows} rows failed: {why}",
                    self.sink.label()
                ),
            ))),
        }
    }

    async fn settle(&mut self, seq: u64, flush: bool) -> Result<Settled> {
        self.follow_reindex(false).await?;
        match &mut self.pipeline {
            Some(p) => p.settle(&self.sink, seq, flush).await,
            None => Ok(Settled {
                written_through: seq,
                failures: Vec::new(),
            }),
        }
    }

    async fn idle(&mut self) -> Result<()> {
        self.follow_reindex(false).await
    }

    async fn bootstrap_if_needed(&mut self) -> Result<()> {
        self.follow_reindex(true).await?;
        match &self.sink.target {
            Target::Shared(pg) => {
                let pg = pg.clone();
                self.bootstrap(&pg).await
            }
            Target::ExactlyOnce(session) => {
                // DDL on its own connection, outside the exactly-once transaction.
                let pg = Pg::new(session.url());
                self.bootstrap(&pg).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDefinition {
        toml::from_str(
            r#"
            table = "xform"
            primary_key = ["doc_id"]
            apply_count_column = "applied"
            columns = [
              { name = "doc_id", type = "text", change = "id" },
              { name = "n", type = "integer", path = "form.n" },
            ]
            "#,
        )
        .expect("parses")
    }

    #[test]
    fn statements() {
        let d = def();
        let w = Writer::new(&d, &[0], false);
        assert_eq!(
            w.insert_values_sql(2),
            "INSERT INTO \"xform\" AS t (\"doc_id\", \"n\", \"applied\") VALUES ($1::text, $2::integer, 1), ($3::text, $4::integer, 1) \
             ON CONFLICT (\"doc_id\") DO UPDATE SET \"n\" = EXCLUDED.\"n\", \"applied\" = t.\"applied\" + 1"
        );
        assert_eq!(
            w.unnest_sql(),
            "INSERT INTO \"xform\" AS t (\"doc_id\", \"n\", \"applied\") SELECT *, 1 FROM unnest($1::text[], $2::integer[]) \
             ON CONFLICT (\"doc_id\") DO UPDATE SET \"n\" = EXCLUDED.\"n\", \"applied\" = t.\"applied\" + 1"
        );
        assert_eq!(
            w.delete,
            "DELETE FROM \"xform\" AS t USING unnest($1::text[]) AS d(k0) WHERE t.\"doc_id\" = d.k0"
        );
        assert!(
            w.merge
                .contains("SELECT \"doc_id\", \"n\", \"applied\" FROM \"pillowtop_stage_"),
            "{}",
            w.merge
        );
        assert_eq!(
            w.copy_target,
            "COPY \"xform\" (\"doc_id\", \"n\", \"applied\") FROM STDIN (FORMAT binary)"
        );
        assert!(w
            .create_stage
            .ends_with("(\"doc_id\" text, \"n\" integer, \"applied\" bigint)"));
        assert_eq!(w.max_rows_per_insert, 32_767);
    }

    #[test]
    fn copy_payload_is_binary_copy_with_the_apply_count() {
        let w = Writer::new(&def(), &[0], false);
        let rows = vec![
            vec![SqlValue::Text("ab".into()), SqlValue::Integer(7)],
            vec![SqlValue::Text("c".into()), SqlValue::Null],
        ];
        let b = w.copy_payload(&rows).expect("encodes");
        let mut want: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend([0, 3, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 4, 0, 0, 0, 7]);
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend([0, 3, 0, 0, 0, 1, b'c', 0xff, 0xff, 0xff, 0xff]);
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend([0xff, 0xff]);
        assert_eq!(b.as_ref(), want.as_slice());
    }

    #[test]
    fn copy_first_skips_exponentially_after_conflicts() {
        let s = CopyFirstState::default();
        let mut tried = Vec::new();
        for chunk in 0..40 {
            if s.try_copy() {
                tried.push(chunk);
                // Every COPY conflicts until chunk 30, then every COPY succeeds.
                if chunk < 30 {
                    s.conflicted();
                } else {
                    s.copied();
                }
            }
        }
        assert_eq!(tried, vec![0, 2, 5, 10, 19, 36, 37, 38, 39]);
        s.conflicted();
        assert!(!s.try_copy(), "a conflict after a success skips one chunk");
        assert!(s.try_copy());
    }
}
