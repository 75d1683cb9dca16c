//! Rebuilding a processor's Elasticsearch index without stopping its pillow (issue 15): the
//! state machine of `pillowtop reindex`, one row per run in `pillowtop_rs_reindex`
//! ([`crate::store::reindex`]).
//!
//! The steps, each checking whether it is already done before acting, so that `resume` after a
//! crash (even a SIGKILL) carries on where the run stopped:
//! 1. **preflight**: the source's rows and bytes, the old index's documents and bytes, the
//!    node's free disk (`_cat/allocation`); refused when the free disk is below twice the old
//!    index (or the source), unless forced.
//! 2. **created**: the new index (`{alias}_{timestamp}`) with the processor's mappings and
//!    settings, refresh off and no replicas (the old values are restored at the swap).
//! 3. **dual_write**: the live pillow is asked to write to both indices; the run waits until
//!    every live process of the pillow has acknowledged it, then records the Kafka high-water
//!    marks of the pillow's topics. From then on nothing the pillow writes is missed by the new
//!    index.
//! 4. **backfill**: every document of the source table (a SQL table with an id and a JSON
//!    document column, chunked by id, `--slices` concurrent slices by ranges of the id (its quantiles), each
//!    resumable from its own progress in the row), written with `create` actions: a copy
//!    never overwrites the pillow's newer write of a document.
//! 5. **verify**: every id of the new index against the source's (missing and extra ids) and a
//!    sample of documents compared in full; each difference is repaired from the source and
//!    checked again (3 rounds); differences that remain stop the run with the old index
//!    serving.
//! 6. **swapped**: the settings restored, the new index refreshed, the alias moved in one
//!    `_aliases` request. The old index is kept (and still written) for `--keep-old`.
//! 7. **drop_old** / **done**: once the window has passed (`resume`), the pillow stops writing
//!    the old index (acknowledged by every process), then it is deleted.
//!
//! `rollback` (while the old index is kept) moves the alias back and deletes the new index;
//! `abort` (before the swap) deletes the new index. A run is carried out by one process at a
//! time (a PostgreSQL advisory lock per run) and a processor has at most one run that has not
//! ended (a unique index).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::change::{Change, ChangeMeta, Document, EmbeddedDocument};
use crate::error::{Error, ReindexError, Result};
use crate::ops::kafka::KafkaInfo;
use crate::pg::{err, Pg};
use crate::processor::elasticsearch::{DocTransform, ElasticsearchConfig};
use crate::processor::postgres::TableDefinition;
use crate::processor::Processor;
use crate::store::liveness::LivenessStore;
use crate::store::reindex::{self as store, NewRun, ReindexRun, Step, Update};

mod es;
mod kafka;
mod table;

/// What is rebuilt: an Elasticsearch processor's index, or a `postgres_table` processor's
/// table.
#[derive(Clone)]
pub enum ReindexSink {
    Elasticsearch {
        /// The processor's configuration (its `index` is the one configured, not necessarily
        /// the one serving after earlier reindexes).
        config: ElasticsearchConfig,
        /// The processor's own transform (a Python callable), when it has one: the backfill and
        /// the verification apply it as the pillow does.
        transform: Option<DocTransform>,
    },
    Table(TableDefinition),
}

/// One side of a rebuild: the versions of an index or of a table, and how to create, fill,
/// read, swap and delete them. The state machine ([`Reindexer`]) is the same for both.
#[async_trait]
trait Version: Send + Sync {
    /// `index` or `table`, for messages.
    fn noun(&self) -> &'static str;
    /// Why this processor cannot be rebuilt, when it cannot.
    fn check(&self, options: &ReindexOptions) -> std::result::Result<(), String>;
    /// The version serving now, given the processor's newest run.
    fn serving(&self, latest: Option<&ReindexRun>) -> String;
    /// A new run's (old, new, alias) names: `old_index`, `new_index` and `alias` of its row.
    fn names(
        &self,
        serving: &str,
        options: &ReindexOptions,
    ) -> std::result::Result<(String, String, String), String>;
    async fn exists(&self, name: &str) -> Result<bool>;
    /// Documents (rows) and bytes of `name`, when it exists.
    async fn size(&self, name: &str) -> Result<(Option<i64>, Option<i64>)>;
    /// The least free disk where the new version is written, when it can be known.
    async fn free_bytes(&self) -> Result<Option<i64>>;
    /// Where the free disk is measured, for messages.
    fn where_free(&self) -> &'static str;
    /// Makes the new version (kept as it is when it exists).
    async fn create(&self, run: &ReindexRun) -> Result<Update>;
    /// A processor writing to version `name` in line, `create_only` for the backfill.
    fn writer(&self, name: &str, create_only: bool) -> Result<Box<dyn Processor>>;
    /// Makes everything written to `name` readable.
    async fn refresh(&self, name: &str) -> Result<()>;
    /// Every document id in `name` (with `domain` when given and the version can tell).
    async fn all_ids(&self, name: &str, domain: Option<&str>) -> Result<HashSet<String>>;
    /// What `name` holds for `ids`, in the form [`Version::expected`] gives (absent ones are
    /// not returned).
    async fn fetch(&self, name: &str, ids: &[String]) -> Result<HashMap<String, Value>>;
    /// What the new version must hold for each source document (id → its text); a document
    /// that must have nothing is not returned.
    async fn expected(&self, docs: &HashMap<String, String>) -> Result<HashMap<String, Value>>;
    /// Whether a live source document may rightly have nothing in the version (a transform
    /// that skips documents, a table's filter).
    fn may_skip(&self) -> bool;
    /// The documents of `name` per domain, when the version can count them.
    async fn domain_counts(&self, name: &str) -> Result<Option<BTreeMap<String, u64>>>;
    /// Makes the new version the one serving; returns how long the switch itself took (ms).
    async fn swap(&self, run: &ReindexRun) -> Result<u64>;
    /// What the swap did, for the run's log.
    fn swapped(&self, run: &ReindexRun) -> String;
    /// Makes the old version serve again (a rollback); returns what it did, for the log.
    async fn unswap(&self, run: &ReindexRun) -> Result<String>;
    /// Deletes version `name` (and what the swap left for processes that had not seen it).
    async fn delete(&self, run: &ReindexRun, name: &str) -> Result<()>;
}

/// Where the documents come from: a table with an id column and a JSON document column (the
/// primary database, like a pillow's document store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlSource {
    pub table: String,
    pub id_column: String,
    /// `*`: the whole row is the document (`to_jsonb` of the row: a Django model's fields, as
    /// `ModelDocumentStore` reads them).
    pub doc_column: String,
}

/// The name the source table goes by in the backfill's queries.
const ROW: &str = "src_row";

impl SqlSource {
    /// The document as a `jsonb` expression.
    fn doc(&self) -> String {
        if self.doc_column == "*" {
            format!("to_jsonb({ROW})")
        } else {
            format!("({}::jsonb)", self.doc_column)
        }
    }

    /// The table, aliased [`ROW`].
    fn from(&self) -> String {
        format!("{} {ROW}", self.table)
    }
}

/// What a run is asked to do (kept in its row, so that `resume` needs nothing more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReindexOptions {
    pub source: SqlSource,
    /// Documents per backfill chunk (one `_bulk` request each, or a few).
    pub chunk_size: usize,
    /// Concurrent backfill slices (ranges of the id, by its quantiles).
    pub slices: usize,
    /// Only the documents whose `domain` is this.
    #[serde(default)]
    pub domain: Option<String>,
    /// A (dotted) document field holding a date or timestamp, for `start_date` / `end_date`.
    #[serde(default)]
    pub date_field: Option<String>,
    /// Documents with `date_field` at or after this (ISO 8601 text, compared as text).
    #[serde(default)]
    pub start_date: Option<String>,
    /// Documents with `date_field` before this.
    #[serde(default)]
    pub end_date: Option<String>,
    /// How long the old index is kept (and written) after the swap, for a rollback.
    pub keep_old_secs: u64,
    /// How long every live process of the pillow is waited for to acknowledge a step.
    pub ack_timeout_secs: u64,
    /// The new index's name; default `{alias}_{UTC timestamp}`.
    #[serde(default)]
    pub new_index: Option<String>,
    /// Documents compared in full by the verification.
    pub sample_size: usize,
    /// Copy from the pillow's topics instead of the table (changes that embed their
    /// documents; see [`kafka`]). `source` is then not read.
    #[serde(default)]
    pub from_kafka: Option<KafkaBackfill>,
}

/// A backfill from the pillow's topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaBackfill {
    /// From the first message at or after this time (ms since the epoch); `None`: the earliest
    /// retained.
    pub since_ms: Option<i64>,
}

impl ReindexOptions {
    pub fn new(source: SqlSource) -> Self {
        Self {
            source,
            chunk_size: 1000,
            slices: 1,
            domain: None,
            date_field: None,
            start_date: None,
            end_date: None,
            keep_old_secs: 48 * 3600,
            ack_timeout_secs: 120,
            new_index: None,
            sample_size: 200,
            from_kafka: None,
        }
    }

    /// A backfill from the pillow's topics (see [`KafkaBackfill`]).
    pub fn from_kafka(since_ms: Option<i64>) -> Self {
        let mut o = Self::new(SqlSource {
            table: String::new(),
            id_column: String::new(),
            doc_column: String::new(),
        });
        o.from_kafka = Some(KafkaBackfill { since_ms });
        o
    }

    fn validate(&self) -> Result<()> {
        if self.from_kafka.is_some() {
            if self.filtered() {
                return Err(crate::error::ConfigError::Invalid(
                    "reindex: --domain and the date filters select rows of a source table; a backfill from Kafka copies every document".into(),
                )
                .into());
            }
            return Ok(());
        }
        let s = &self.source;
        let doc = if s.doc_column == "*" {
            "doc"
        } else {
            &s.doc_column
        };
        crate::docstore::check_identifiers(&s.table, &s.id_column, doc)?;
        if let Some(f) = &self.date_field {
            if f.is_empty()
                || !f
                    .split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                return Err(crate::error::ConfigError::Invalid(format!(
                    "reindex: --date-field {f:?} must be a dotted path of field names"
                ))
                .into());
            }
        }
        if (self.start_date.is_some() || self.end_date.is_some()) && self.date_field.is_none() {
            return Err(crate::error::ConfigError::Invalid(
                "reindex: --start-date and --end-date need --date-field".into(),
            )
            .into());
        }
        Ok(())
    }

    /// Whether the source is restricted (then ids in the index but not in the source are not
    /// differences: the live pillow writes every document).
    fn filtered(&self) -> bool {
        self.domain.is_some() || self.date_field.is_some()
    }
}

/// The processor being rebuilt, and how to reach everything.
#[derive(Clone)]
pub struct Reindexer {
    pub pg: Arc<Pg>,
    /// The pillow's name (its processes' liveness rows).
    pub pillow: String,
    /// The processor's name (as the pillow reports it: `ElasticsearchProcessor(index)`,
    /// `postgres-table:table`).
    pub processor: String,
    pub sink: ReindexSink,
    pub topics: Vec<String>,
    pub kafka: Option<KafkaInfo>,
    pub stop: CancellationToken,
}

/// What preflight found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preflight {
    pub old_index: String,
    pub new_index: String,
    pub alias: String,
    pub source_rows: i64,
    pub source_bytes: i64,
    pub old_docs: Option<i64>,
    pub old_bytes: Option<i64>,
    /// The least free disk of the nodes holding data.
    pub free_bytes: Option<i64>,
    /// Why the run should not start (free disk); empty when it can.
    pub problems: Vec<String>,
}

/// Backfill progress, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub per_second: f64,
    pub eta_secs: Option<f64>,
}

/// Called about once a second during the backfill, and at its end.
pub type OnProgress<'a> = &'a dyn Fn(Progress);

/// What one verification round found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub source_count: u64,
    pub index_count: u64,
    /// Per domain: `[domain, source, index]`, where they differ (empty when the index has no
    /// keyword `domain` field to count by).
    pub domains: Vec<(String, u64, u64)>,
    pub sampled: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub mismatched: Vec<String>,
    /// Backfill failures (the index's own reasons).
    pub failed: Vec<String>,
}

impl Verification {
    fn differences(&self) -> usize {
        self.missing.len() + self.extra.len() + self.mismatched.len()
    }

    fn examples(&self) -> String {
        let mut e: Vec<String> = self
            .failed
            .iter()
            .take(3)
            .cloned()
            .chain(
                self.missing
                    .iter()
                    .take(3)
                    .map(|id| format!("{id} missing")),
            )
            .chain(self.extra.iter().take(3).map(|id| format!("{id} extra")))
            .chain(
                self.mismatched
                    .iter()
                    .take(3)
                    .map(|id| format!("{id} differs")),
            )
            .collect();
        e.truncate(6);
        e.join("; ")
    }
}

fn refused(r: &Reindexer, message: impl Into<String>) -> Error {
    ReindexError::Refused {
        pillow: r.pillow.clone(),
        processor: r.processor.clone(),
        message: message.into(),
    }
    .into()
}

impl Reindexer {
    fn version(&self) -> Result<Box<dyn Version>> {
        Ok(match &self.sink {
            ReindexSink::Elasticsearch { config, transform } => {
                Box::new(es::EsVersion::new(config, transform.clone(), &self.stop)?)
            }
            ReindexSink::Table(def) => Box::new(table::TableVersion::new(def, &self.pg)),
        })
    }

    /// The version serving now: the new one of the newest run that swapped, else the one
    /// configured.
    async fn serving_index(&self, v: &dyn Version) -> Result<String> {
        let latest = store::latest(&self.pg, &self.pillow, &self.processor).await?;
        Ok(v.serving(latest.as_ref()))
    }

    /// The messages the pillow's topics retain (a Kafka backfill's size).
    async fn topic_messages(&self) -> Result<i64> {
        let k = self.kafka.as_ref().ok_or_else(|| {
            refused(
                self,
                "a backfill from Kafka needs the pillow's Kafka servers",
            )
        })?;
        let partitions = k.partitions(&self.topics).await?;
        Ok(k.watermarks_of_existing(&partitions)
            .await?
            .values()
            .map(|w| w.high - w.low)
            .sum())
    }

    /// Whether the index serving now exists (`ptop_preindex` fills the processors whose index
    /// does not).
    pub async fn serving_index_exists(&self) -> Result<bool> {
        let v = self.version()?;
        let index = self.serving_index(v.as_ref()).await?;
        v.exists(&index).await
    }

    /// Sizes and free disk, and the names the run would use. Writes nothing.
    pub async fn preflight(&self, options: &ReindexOptions) -> Result<Preflight> {
        options.validate()?;
        let v = self.version()?;
        v.check(options).map_err(|m| refused(self, m))?;
        let serving = self.serving_index(v.as_ref()).await?;
        let (old_index, new_index, alias) =
            v.names(&serving, options).map_err(|m| refused(self, m))?;
        let (source_rows, source_bytes) = if options.from_kafka.is_some() {
            (self.topic_messages().await?, 0)
        } else {
            source_size(&self.pg, &options.source).await?
        };
        let (old_docs, old_bytes) = v.size(&serving).await?;
        let free_bytes = v.free_bytes().await?;
        let mut problems = Vec::new();
        let need = old_bytes.unwrap_or(0).max(source_bytes);
        if let Some(free) = free_bytes {
            if free < need.saturating_mul(2) {
                problems.push(format!(
                    "{} has {free} bytes free, less than twice the larger of the serving {} ({} bytes) and the source ({source_bytes} bytes)",
                    v.where_free(),
                    v.noun(),
                    old_bytes.unwrap_or(0)
                ));
            }
        }
        if serving == new_index || alias == new_index {
            problems.push(format!(
                "the new {} {new_index} is the one serving",
                v.noun()
            ));
        }
        Ok(Preflight {
            old_index,
            new_index,
            alias,
            source_rows,
            source_bytes,
            old_docs,
            old_bytes,
            free_bytes,
            problems,
        })
    }

    /// Records a new run (refused while the processor has one that has not ended, or when
    /// preflight found problems and `force` is off) and carries it out.
    pub async fn start(
        &self,
        options: &ReindexOptions,
        force: bool,
        progress: OnProgress<'_>,
    ) -> Result<ReindexRun> {
        let pre = self.preflight(options).await?;
        if !pre.problems.is_empty() && !force {
            return Err(refused(self, pre.problems.join("; ")));
        }
        let opts = serde_json::to_value(options).unwrap_or(Value::Null);
        let pre_json = serde_json::to_value(&pre).unwrap_or(Value::Null);
        let run = store::create(
            &self.pg,
            &NewRun {
                pillow: &self.pillow,
                processor: &self.processor,
                old_index: &pre.old_index,
                new_index: &pre.new_index,
                alias: &pre.alias,
                options: &opts,
                preflight: &pre_json,
            },
        )
        .await?;
        let Some(run) = run else {
            let active = store::latest(&self.pg, &self.pillow, &self.processor).await?;
            return Err(refused(
                self,
                format!(
                    "run {} has not ended (step {}): resume, roll back or abort it first",
                    active.as_ref().map_or(0, |r| r.id),
                    active.as_ref().map_or("?", |r| r.step.as_str())
                ),
            ));
        };
        tracing::info!(run = run.id, pillow = %self.pillow, processor = %self.processor,
            old = %run.old_index, new = %run.new_index, "reindex started");
        self.resume(run.id, progress).await
    }

    /// The run that has not ended, if any.
    pub async fn active(&self) -> Result<Option<ReindexRun>> {
        Ok(store::latest(&self.pg, &self.pillow, &self.processor)
            .await?
            .filter(|r| r.finished_at.is_none()))
    }

    /// Carries run `id` on from its step, until it ends or waits for its keep window.
    pub async fn resume(&self, id: i64, progress: OnProgress<'_>) -> Result<ReindexRun> {
        let _lock = self.lock(id).await?;
        self.drive(id, progress).await
    }

    /// [`Self::resume`], the run's lock held by the caller.
    async fn drive(&self, id: i64, progress: OnProgress<'_>) -> Result<ReindexRun> {
        let v = self.version()?;
        let v = v.as_ref();
        loop {
            let run = store::get(&self.pg, id)
                .await?
                .ok_or_else(|| refused(self, format!("run {id} does not exist")))?;
            if self.stop.is_cancelled() {
                return Err(Error::ShutdownRequested(format!(
                    "reindex run {id} stopped at step {}; `pillowtop reindex resume` carries it on",
                    run.step.as_str()
                )));
            }
            let next = match run.step {
                Step::Preflight => v.create(&run).await?,
                Step::Created => Update {
                    step: Some(Step::DualWrite),
                    log: Some(format!(
                        "asked every process of the pillow to write to both {} versions",
                        v.noun()
                    )),
                    ..Update::default()
                },
                Step::DualWrite => self.start_backfill(&run).await?,
                Step::Backfill => self.backfill(&run, progress).await?,
                Step::Verify => self.verify_and_swap(v, &run).await?,
                Step::Swapped => match run.keep_old_until {
                    Some(t) if t > Utc::now() => return Ok(run),
                    _ => Update {
                        step: Some(Step::DropOld),
                        log: Some(format!(
                            "the keep window has passed: {} is no longer written",
                            run.old_index
                        )),
                        ..Update::default()
                    },
                },
                Step::DropOld => {
                    self.delete_after_acks(v, &run, &run.old_index.clone(), Step::Done)
                        .await?
                }
                Step::RollingBack | Step::Aborting => {
                    let end = if run.step == Step::RollingBack {
                        Step::RolledBack
                    } else {
                        Step::Aborted
                    };
                    self.delete_after_acks(v, &run, &run.new_index.clone(), end)
                        .await?
                }
                Step::Done | Step::RolledBack | Step::Aborted => return Ok(run),
            };
            store::update(&self.pg, id, &next).await?;
        }
    }

    /// Moves the alias back to the old index and deletes the new one (while the old one is
    /// kept, after the swap).
    pub async fn rollback(&self, id: i64) -> Result<ReindexRun> {
        let (_lock, run) = self.locked_run(id).await?;
        if run.step != Step::Swapped {
            return Err(refused(
                self,
                format!(
                    "run {id} is at step {}: only a swapped run whose old index is kept can be rolled back{}",
                    run.step.as_str(),
                    if run.step < Step::Swapped { " (abort it instead)" } else { "" }
                ),
            ));
        }
        let log = self.version()?.unswap(&run).await?;
        store::update(
            &self.pg,
            id,
            &Update {
                step: Some(Step::RollingBack),
                log: Some(log),
                ..Update::default()
            },
        )
        .await?;
        self.drive(id, &|_| {}).await
    }

    /// Abandons a run before its swap: the new index is no longer written, then deleted.
    pub async fn abort(&self, id: i64) -> Result<ReindexRun> {
        let (_lock, run) = self.locked_run(id).await?;
        if run.step >= Step::Swapped && !matches!(run.step, Step::Aborting) {
            return Err(refused(
                self,
                format!(
                    "run {id} is at step {}: after the swap, roll back instead",
                    run.step.as_str()
                ),
            ));
        }
        store::update(
            &self.pg,
            id,
            &Update {
                step: Some(Step::Aborting),
                log: Some(format!("aborted: {} is no longer written", run.new_index)),
                ..Update::default()
            },
        )
        .await?;
        self.drive(id, &|_| {}).await
    }

    /// The run's lock (refused while another process carries the run out), and the run.
    async fn locked_run(&self, id: i64) -> Result<(tokio_postgres::Client, ReindexRun)> {
        let lock = self.lock(id).await?;
        let run = store::get(&self.pg, id)
            .await?
            .ok_or_else(|| refused(self, format!("run {id} does not exist")))?;
        Ok((lock, run))
    }

    /// The run's advisory lock, on a connection of its own held until the guard is dropped (a
    /// killed process's lock goes with its connection).
    async fn lock(&self, id: i64) -> Result<tokio_postgres::Client> {
        let c = self.pg.fresh_client().await?;
        let what = format!("taking the advisory lock of reindex run {id}");
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1)", &[&store::lock_key(id)])
            .await
            .map_err(err(what))?
            .get(0);
        if got {
            Ok(c)
        } else {
            Err(ReindexError::Busy { run: id }.into())
        }
    }

    /// Waits for every live process to write to both indices, then records the Kafka position.
    async fn start_backfill(&self, run: &ReindexRun) -> Result<Update> {
        self.wait_for_acks(run.id, Step::DualWrite).await?;
        let mut position = BTreeMap::new();
        if let Some(k) = &self.kafka {
            let partitions = k.partitions(&self.topics).await?;
            for (tp, w) in k.watermarks_of_existing(&partitions).await? {
                position.insert(tp.to_string(), w.high);
            }
        }
        Ok(Update {
            step: Some(Step::Backfill),
            kafka_position: Some(serde_json::to_value(&position).unwrap_or(Value::Null)),
            log: Some(format!(
                "every live process writes to both {} and {}; Kafka position recorded ({} partitions)",
                run.old_index,
                run.new_index,
                position.len()
            )),
            ..Update::default()
        })
    }

    /// Waits until every live process of the pillow has acknowledged `step` of run `id`.
    async fn wait_for_acks(&self, id: i64, step: Step) -> Result<()> {
        let liveness =
            crate::store::liveness::postgres::PostgresLivenessStore::new(self.pg.clone());
        let started = Instant::now();
        loop {
            let run = store::get(&self.pg, id)
                .await?
                .ok_or_else(|| refused(self, format!("run {id} does not exist")))?;
            let timeout = Duration::from_secs(
                run.options
                    .get("ack_timeout_secs")
                    .and_then(Value::as_u64)
                    .unwrap_or(120),
            );
            let waiting: Vec<String> = liveness
                .list(Some(&self.pillow))
                .await?
                .into_iter()
                .filter(|p| p.alive)
                .filter(|p| {
                    run.acks
                        .get(&format!("{}:{}", p.hostname, p.pid))
                        .map(String::as_str)
                        != Some(step.as_str())
                })
                .map(|p| format!("process {} ({}:{})", p.process_num, p.hostname, p.pid))
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(refused(
                    self,
                    format!(
                        "{} live processes have not acknowledged step {} of run {id} within {} s: {} (do they run processor {}? a stuck process acknowledges at its next chunk or idle tick); the run stays at this step: resume it",
                        waiting.len(),
                        step.as_str(),
                        timeout.as_secs(),
                        waiting.join(", "),
                        self.processor
                    ),
                ));
            }
            if !crate::backoff::sleep_unless_stopped(Duration::from_millis(200), &self.stop).await {
                return Err(Error::ShutdownRequested(format!(
                    "reindex run {id} stopped while waiting for the pillow's processes to acknowledge step {}",
                    step.as_str()
                )));
            }
        }
    }

    async fn delete_after_acks(
        &self,
        v: &dyn Version,
        run: &ReindexRun,
        index: &str,
        end: Step,
    ) -> Result<Update> {
        self.wait_for_acks(run.id, run.step).await?;
        v.delete(run, index).await?;
        Ok(Update {
            step: Some(end),
            log: Some(format!("no process writes to {index} any more; deleted it")),
            finished: true,
            ..Update::default()
        })
    }
}

/// The source's rows (an estimate for large tables) and bytes.
async fn source_size(pg: &Pg, s: &SqlSource) -> Result<(i64, i64)> {
    relation_size(pg, &s.table).await
}

/// A table's rows (counted below 100,000, else PostgreSQL's estimate) and bytes.
async fn relation_size(pg: &Pg, table: &str) -> Result<(i64, i64)> {
    let what = format!("measuring table {table}");
    let table = table.to_owned();
    pg.run(&what, |c| {
        let (what, table) = (what.clone(), table.clone());
        async move {
            let r = c
                .query_one(
                    "SELECT GREATEST(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid) FROM pg_class c WHERE c.oid = $1::text::regclass",
                    &[&table],
                )
                .await
                .map_err(err(what.clone()))?;
            let (estimate, bytes): (i64, i64) = (r.get(0), r.get(1));
            let rows = if estimate < 100_000 {
                c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .map_err(err(what))?
                    .get(0)
            } else {
                estimate
            };
            Ok((rows, bytes))
        }
    })
    .await
}

/// The source's filter (`WHERE …`, with `$2…` parameters after the caller's `$1`) and its
/// parameters.
fn source_filter(o: &ReindexOptions, first: usize) -> (String, Vec<String>) {
    let doc = o.source.doc();
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    let mut n = first;
    if let Some(d) = &o.domain {
        clauses.push(format!("{doc}->>'domain' = ${n}"));
        params.push(d.clone());
        n += 1;
    }
    if let Some(f) = &o.date_field {
        let path = format!("{{{}}}", f.replace('.', ","));
        if let Some(s) = &o.start_date {
            clauses.push(format!("{doc} #>> '{path}' >= ${n}"));
            params.push(s.clone());
            n += 1;
        }
        if let Some(e) = &o.end_date {
            clauses.push(format!("{doc} #>> '{path}' < ${n}"));
            params.push(e.clone());
        }
    }
    if clauses.is_empty() {
        (String::from("TRUE"), params)
    } else {
        (clauses.join(" AND "), params)
    }
}

/// Records a copied chunk's failures: a warning each, the first 20 kept in `failures` (the
/// run's progress, for the verification's report).
fn note_failures(
    run: &ReindexRun,
    changes: &[Change],
    outcome: std::result::Result<
        crate::processor::ChunkOutcome,
        crate::processor::ProcessorFailure,
    >,
    failures: &mut Vec<Value>,
) {
    let errors: Vec<(usize, String)> = match outcome {
        Ok(o) => o.errors.into_iter().map(|(i, f)| (i, f.message)).collect(),
        Err(whole) => (0..changes.len())
            .map(|i| (i, whole.message.clone()))
            .collect(),
    };
    for (i, message) in errors {
        tracing::warn!(run = run.id, index = %run.new_index, doc_id = %changes[i].id, error = %message, "reindex: a document could not be copied");
        if failures.len() < 20 {
            failures.push(json!({"id": changes[i].id, "error": message}));
        }
    }
}

/// A change carrying a source row's document (what the processor writes). With `meta`, its
/// metadata has the document's `domain` and `doc_type`, as the live change's would (a table's
/// columns may come from them).
fn source_row(id: String, doc: String, index: &str, meta: bool) -> Result<Change> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        doc_type: Option<String>,
    }
    let head = meta
        .then(|| serde_json::from_str::<Head>(&doc).ok())
        .flatten();
    let raw = serde_json::value::RawValue::from_string(doc).map_err(|e| {
        crate::error::ProcessError::Other(format!(
            "reindex into {index}: document {id} of the source is not JSON: {e}"
        ))
    })?;
    let size = raw.get().len();
    let mut c = source_change(id, Document::Embedded(EmbeddedDocument::new(raw)), size);
    if let Some(h) = head {
        c.metadata.domain = h.domain;
        c.metadata.document_type = h.doc_type;
    }
    Ok(c)
}

/// A change deleting `id`.
fn delete_change(id: String) -> Change {
    let mut c = source_change(id, Document::Known(None), 0);
    c.deleted = true;
    c
}

/// A change of `id` made from the source (no Kafka position).
fn source_change(id: String, document: Document, size: usize) -> Change {
    Change {
        metadata: ChangeMeta::new(id.clone(), "reindex", "reindex"),
        id,
        topic: String::new(),
        partition: 0,
        offset: 0,
        deleted: false,
        document,
        size,
    }
}

impl Reindexer {
    /// The changes of source rows (id, document text); a document that is not JSON is recorded
    /// in `failures`, and the backfill goes on.
    fn row_changes(
        &self,
        run: &ReindexRun,
        rows: &[tokio_postgres::Row],
        failures: &mut Vec<Value>,
    ) -> Vec<Change> {
        let mut changes = Vec::with_capacity(rows.len());
        for r in rows {
            match self.row_change(r.get(0), r.get(1), &run.new_index) {
                Ok(c) => changes.push(c),
                Err(e) => note_failures(
                    run,
                    &[source_change(r.get(0), Document::Known(None), 0)],
                    Err(crate::processor::ProcessorFailure::new(
                        "ValueError",
                        e.to_string(),
                    )),
                    failures,
                ),
            }
        }
        changes
    }

    fn row_change(&self, id: String, doc: String, index: &str) -> Result<Change> {
        // A table whose columns come from the change's domain or document type needs them in
        // the metadata (one more read of the document's text).
        let meta = match &self.sink {
            ReindexSink::Table(def) => def.columns.iter().any(|c| {
                matches!(
                    c.change,
                    Some(
                        crate::processor::postgres::ChangeField::Domain
                            | crate::processor::postgres::ChangeField::DocumentType
                    )
                )
            }),
            ReindexSink::Elasticsearch { .. } => false,
        };
        source_row(id, doc, index, meta)
    }

    fn options(run: &ReindexRun) -> Result<ReindexOptions> {
        serde_json::from_value(run.options.clone()).map_err(|e| {
            crate::error::ConfigError::Invalid(format!(
                "reindex run {}: unreadable options in its row: {e}",
                run.id
            ))
            .into()
        })
    }

    async fn backfill(&self, run: &ReindexRun, progress: OnProgress<'_>) -> Result<Update> {
        let o = Self::options(run)?;
        if o.from_kafka.is_some() {
            let read = self.backfill_kafka(run, &o, progress).await?;
            return Ok(Update {
                step: Some(Step::Verify),
                log: Some(format!(
                    "read {read} changes of topics {} and copied the newest document of each into {}",
                    self.topics.join(", "),
                    run.new_index
                )),
                ..Update::default()
            });
        }
        let total = u64::try_from(
            run.preflight
                .get("source_rows")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        )
        .unwrap_or(0);
        let slices = o.slices.max(1);
        let done = Arc::new(AtomicU64::new(
            (0..slices)
                .filter_map(|k| run.progress.get(k.to_string())?.get("done")?.as_u64())
                .sum(),
        ));
        let started = (Instant::now(), done.load(Ordering::Relaxed));
        let last_report = std::sync::Mutex::new(Instant::now());
        let report = |force: bool| {
            let mut last = last_report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && last.elapsed() < Duration::from_secs(1) {
                return;
            }
            *last = Instant::now();
            let d = done.load(Ordering::Relaxed);
            let secs = started.0.elapsed().as_secs_f64().max(1e-3);
            let per_second = (d - started.1) as f64 / secs;
            let eta_secs = (per_second > 0.0).then(|| total.saturating_sub(d) as f64 / per_second);
            progress(Progress {
                done: d,
                total: total.max(d),
                per_second,
                eta_secs,
            });
        };
        let bounds = self.slice_bounds(run, &o, slices).await?;
        let ranges: Vec<(Option<String>, Option<String>)> = (0..slices)
            .map(|k| {
                (
                    k.checked_sub(1).and_then(|b| bounds.get(b).cloned()),
                    bounds.get(k).cloned(),
                )
            })
            .collect();
        // A processor's Python transform runs where the run's future does (the calling
        // thread): its slices stay on this task. Otherwise each slice is a task of its own, so
        // their encoding runs on several cores (measured: on one task, 2 slices copied no faster
        // than 1 when the encoding was the limit).
        let on_this_task = matches!(
            &self.sink,
            ReindexSink::Elasticsearch {
                transform: Some(_),
                ..
            }
        );
        if on_this_task || slices == 1 {
            let results = futures::future::join_all(
                ranges
                    .into_iter()
                    .enumerate()
                    .map(|(k, range)| self.backfill_slice(run, &o, k, range, &done, &report)),
            )
            .await;
            for r in results {
                r?;
            }
        } else {
            self.backfill_in_tasks(run, &o, ranges, &done, &report)
                .await?;
        }
        report(true);
        Ok(Update {
            step: Some(Step::Verify),
            log: Some(format!(
                "copied {} documents from {} into {} ({slices} slices)",
                done.load(Ordering::Relaxed),
                o.source.table,
                run.new_index
            )),
            ..Update::default()
        })
    }

    /// The slices of a backfill, each a task of its own (aborted together when one fails);
    /// `report` is called about once a second.
    async fn backfill_in_tasks(
        &self,
        run: &ReindexRun,
        o: &ReindexOptions,
        ranges: Vec<(Option<String>, Option<String>)>,
        done: &Arc<AtomicU64>,
        report: &dyn Fn(bool),
    ) -> Result<()> {
        let this = Arc::new(self.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for (k, range) in ranges.into_iter().enumerate() {
            let (this, run, o, done) =
                (Arc::clone(&this), run.clone(), o.clone(), Arc::clone(done));
            tasks.spawn(async move {
                this.backfill_slice(&run, &o, k, range, &done, &|_: bool| {})
                    .await
            });
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                next = tasks.join_next() => match next {
                    None => break,
                    Some(Ok(r)) => r?,
                    // Dropping `tasks` on the way out aborts the other slices.
                    Some(Err(e)) => {
                        return Err(crate::error::ProcessError::Other(format!(
                            "reindex run {}: a backfill slice ended without an answer: {e}",
                            run.id
                        ))
                        .into())
                    }
                },
                _ = tick.tick() => report(false),
            }
        }
        Ok(())
    }

    /// The ids that end each slice but the last (ranges of the id, so that each slice reads its
    /// own part of the primary key's index): the quantiles of the source's ids, computed once
    /// and kept in the run's progress, so a resumed run slices alike.
    async fn slice_bounds(
        &self,
        run: &ReindexRun,
        o: &ReindexOptions,
        slices: usize,
    ) -> Result<Vec<String>> {
        if slices <= 1 {
            return Ok(Vec::new());
        }
        if let Some(b) = run.progress.get("bounds").and_then(Value::as_array) {
            return Ok(b
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect());
        }
        let s = &o.source;
        let fractions: Vec<f64> = (1..slices).map(|k| k as f64 / slices as f64).collect();
        let sql = format!(
            "SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY {id})::text[] FROM {table}",
            id = s.id_column,
            table = s.table
        );
        let bounds: Vec<String> = self
            .pg
            .run("slicing the source table by id", |c| {
                let (sql, fractions) = (sql.clone(), fractions.clone());
                async move {
                    let r = c
                        .query_one(&sql, &[&fractions])
                        .await
                        .map_err(err("slicing the source table by id"))?;
                    Ok(r.get::<_, Option<Vec<Option<String>>>>(0)
                        .unwrap_or_default()
                        .into_iter()
                        .flatten()
                        .collect())
                }
            })
            .await?;
        store::set_progress(&self.pg, run.id, "bounds", &json!(bounds)).await?;
        Ok(bounds)
    }

    /// Copies one slice: the ids above `range.0` (exclusive) up to `range.1` (inclusive).
    async fn backfill_slice<R: Fn(bool) + ?Sized>(
        &self,
        run: &ReindexRun,
        opts: &ReindexOptions,
        slice: usize,
        range: (Option<String>, Option<String>),
        done: &AtomicU64,
        report: &R,
    ) -> Result<()> {
        let mut writer = self.version()?.writer(&run.new_index, true)?;
        let mine = run.progress.get(slice.to_string());
        let mut last: Option<String> = mine
            .and_then(|p| p.get("last_id")?.as_str().map(str::to_owned))
            .or(range.0);
        let upper = range.1;
        let mut slice_done = mine.and_then(|p| p.get("done")?.as_u64()).unwrap_or(0);
        let mut failures: Vec<Value> = mine
            .and_then(|p| p.get("failures")?.as_array().cloned())
            .unwrap_or_default();
        let src = &opts.source;
        let id_type = column_type(&self.pg, &src.table, &src.id_column).await?;
        let (filter, params) = source_filter(opts, 3);
        let sql = format!(
            "SELECT {id}::text, {doc}::text FROM {from}
             WHERE ($1::text IS NULL OR {id} > CAST($1::text AS {id_type}))
               AND ($2::text IS NULL OR {id} <= CAST($2::text AS {id_type}))
               AND {filter}
             ORDER BY {id} LIMIT {limit}",
            id = src.id_column,
            doc = src.doc(),
            from = src.from(),
            limit = opts.chunk_size.max(1),
        );
        let what = format!("reading the source table {} for the backfill", src.table);
        // Each slice reads on a connection of its own (the slices' reads go on in parallel).
        let source = self.pg.sibling();
        let read = |after: Option<String>| {
            let (sql, upper, params, what, source) = (&sql, &upper, &params, &what, &source);
            async move {
                source
                    .run(what, |c| {
                        let (sql, after, upper, params) =
                            (sql.clone(), after.clone(), upper.clone(), params.clone());
                        async move {
                            let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                                vec![&after, &upper];
                            p.extend(
                                params
                                    .iter()
                                    .map(|x| x as &(dyn tokio_postgres::types::ToSql + Sync)),
                            );
                            c.query(&sql, &p)
                                .await
                                .map_err(err("reading the source table for the backfill"))
                        }
                    })
                    .await
            }
        };
        // The progress is recorded about once a second (and at the slice's end): a resumed
        // run copies again at most a second's chunks, which the create-only writes make
        // harmless.
        let key = slice.to_string();
        let save = |last: &str, slice_done: u64, failures: &[Value]| {
            let value = json!({"last_id": last, "done": slice_done, "failures": failures});
            let key = &key;
            async move { store::set_progress(&self.pg, run.id, key, &value).await }
        };
        let mut saved = (Instant::now(), true);
        let mut rows = read(last.clone()).await?;
        loop {
            if self.stop.is_cancelled() {
                if let (Some(l), false) = (&last, saved.1) {
                    save(l, slice_done, &failures).await?;
                }
                return Err(Error::ShutdownRequested(format!(
                    "reindex run {} stopped during the backfill (slice {slice} after {:?}); `pillowtop reindex resume` carries it on",
                    run.id, last
                )));
            }
            let Some(last_row) = rows.last() else {
                if let (Some(l), false) = (&last, saved.1) {
                    save(l, slice_done, &failures).await?;
                }
                return Ok(());
            };
            let next_last: String = last_row.get(0);
            let mut changes = self.row_changes(run, &rows, &mut failures);
            // The next chunk is read while this one is written.
            let (outcome, next) = tokio::join!(
                writer.process_changes_chunk(&mut changes),
                read(Some(next_last.clone()))
            );
            note_failures(run, &changes, outcome?, &mut failures);
            slice_done += rows.len() as u64;
            done.fetch_add(rows.len() as u64, Ordering::Relaxed);
            saved.1 = false;
            if saved.0.elapsed() >= Duration::from_secs(1) {
                save(&next_last, slice_done, &failures).await?;
                saved = (Instant::now(), true);
            }
            last = Some(next_last);
            rows = next?;
            report(false);
        }
    }
}

/// The SQL type of a column (to compare ids in their own order, with the index).
async fn column_type(pg: &Pg, table: &str, column: &str) -> Result<String> {
    let what = format!("reading the type of column {column} of {table}");
    let (t, col) = (table.to_owned(), column.to_owned());
    pg.run(&what, |c| {
        let (what, t, col) = (what.clone(), t.clone(), col.clone());
        async move {
            let r = c
                .query_opt(
                    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
                    &[&t, &col],
                )
                .await
                .map_err(err(what.clone()))?;
            r.map(|r| r.get(0)).ok_or_else(|| {
                crate::error::ConfigError::Invalid(format!("{what}: the table has no such column"))
                    .into()
            })
        }
    })
    .await
}

impl Reindexer {
    async fn verify_and_swap(&self, v: &dyn Version, run: &ReindexRun) -> Result<Update> {
        let o = Self::options(run)?;
        let (mut report, summary) = if o.from_kafka.is_some() {
            self.verified_from_kafka(v, run, &o).await?
        } else {
            self.verified_from_table(v, run, &o).await?
        };
        let swap_ms = v.swap(run).await?;
        report["swap_ms"] = json!(swap_ms);
        let keep = Duration::from_secs(o.keep_old_secs);
        let until = Utc::now() + chrono::Duration::from_std(keep).unwrap_or_default();
        Ok(Update {
            step: Some(Step::Swapped),
            verify: Some(report),
            keep_old_until: Some(until),
            error: Some(None),
            log: Some(format!(
                "{summary}; {} (the swap took {swap_ms} ms); {} is kept and written until {}",
                v.swapped(run),
                run.old_index,
                until.to_rfc3339()
            )),
            ..Update::default()
        })
    }

    /// Records a failed verification in the run's row and returns its error.
    async fn differences(
        &self,
        run: &ReindexRun,
        report: Value,
        count: usize,
        rounds: usize,
        examples: String,
    ) -> Error {
        let e = ReindexError::Differences {
            run: run.id,
            index: run.new_index.clone(),
            count,
            rounds,
            examples,
        };
        let recorded = store::update(
            &self.pg,
            run.id,
            &Update {
                verify: Some(report),
                error: Some(Some(e.to_string())),
                log: Some(format!("verification failed: {count} differences")),
                ..Update::default()
            },
        )
        .await;
        match recorded {
            Ok(_) => e.into(),
            Err(db) => db,
        }
    }

    /// A Kafka backfill's verification (see [`kafka`]): the report and its summary.
    async fn verified_from_kafka(
        &self,
        v: &dyn Version,
        run: &ReindexRun,
        o: &ReindexOptions,
    ) -> Result<(Value, String)> {
        let k = self.verify_kafka(v, run, o).await?;
        let report = json!({"source": "kafka", "expected": k.expected, "missing": k.missing,
                            "unexpected": k.unexpected, "repaired": k.repaired});
        let count = k.missing.len() + k.unexpected.len();
        if count > 0 {
            let examples = k
                .missing
                .iter()
                .map(|id| format!("{id} missing"))
                .chain(k.unexpected.iter().map(|id| {
                    format!("{id} present, though its newest change before the position deletes it")
                }))
                .take(5)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self.differences(run, report, count, 1, examples).await);
        }
        Ok((
            report,
            format!(
                "verified ({} documents expected from the topics, {} written again)",
                k.expected, k.repaired
            ),
        ))
    }

    /// A table backfill's verification: every id, per-domain counts and a sample, repaired from
    /// the source and checked again; the report and its summary.
    async fn verified_from_table(
        &self,
        ver: &dyn Version,
        run: &ReindexRun,
        o: &ReindexOptions,
    ) -> Result<(Value, String)> {
        const ROUNDS: usize = 3;
        let o = o.clone();
        let mut v = self.verify(ver, run, &o).await?;
        let mut rounds = 0;
        let mut repaired = 0;
        while v.differences() > 0 && rounds < ROUNDS {
            rounds += 1;
            let ids: Vec<String> = v
                .missing
                .iter()
                .chain(&v.mismatched)
                .chain(&v.extra)
                .cloned()
                .collect();
            repaired += self.repair(ver, run, &o, &ids).await?;
            let (missing, extra, mismatched) = self.compare_ids(ver, run, &o, &ids).await?;
            v.missing = missing;
            v.extra = extra;
            v.mismatched = mismatched;
        }
        let mut report = serde_json::to_value(&v).unwrap_or(Value::Null);
        report["repaired"] = json!(repaired);
        report["rounds"] = json!(rounds);
        if v.differences() > 0 {
            return Err(self
                .differences(run, report, v.differences(), rounds, v.examples())
                .await);
        }
        Ok((
            report,
            format!(
                "verified ({} documents, {} sampled, {repaired} repaired)",
                v.index_count, v.sampled
            ),
        ))
    }

    /// One verification: counts, per-domain counts, every id and a sample compared in full.
    async fn verify(
        &self,
        ver: &dyn Version,
        run: &ReindexRun,
        o: &ReindexOptions,
    ) -> Result<Verification> {
        let index = &run.new_index;
        ver.refresh(index).await?;
        // The index's ids first, then the source's: an id in the index but not in the source
        // was deleted from the source (never created after the source was read).
        let index_ids = ver.all_ids(index, o.domain.as_deref()).await?;
        let source = self.source_ids(o).await?;
        let mut v = Verification {
            source_count: source.len() as u64,
            index_count: index_ids.len() as u64,
            ..Verification::default()
        };
        v.missing = source
            .iter()
            .filter(|id| !index_ids.contains(*id))
            .cloned()
            .collect();
        if !o.filtered() {
            v.extra = index_ids
                .iter()
                .filter(|id| !source.contains(*id))
                .cloned()
                .collect();
        }
        if ver.may_skip() && !v.missing.is_empty() {
            // Documents the transform (the table's filter) skips are rightly absent.
            let docs = self.source_docs(o, &v.missing).await?;
            let expected = ver.expected(&docs).await?;
            v.missing.retain(|id| expected.contains_key(id));
        }
        v.missing.sort();
        v.extra.sort();
        v.domains = self.domain_counts(ver, index, o).await?;
        let sample = self.sample_ids(o).await?;
        v.sampled = sample.len();
        let (_, _, mismatched) = self.compare_ids(ver, run, o, &sample).await?;
        v.mismatched = mismatched;
        v.failed = run
            .progress
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|p| p.get("failures")?.as_array().cloned())
            .flatten()
            .map(|f| {
                format!(
                    "{}: {}",
                    f.get("id").and_then(Value::as_str).unwrap_or("?"),
                    f.get("error").and_then(Value::as_str).unwrap_or("?")
                )
            })
            .collect();
        Ok(v)
    }

    /// Runs a query of the source with its filter's text parameters.
    async fn query_source(
        &self,
        what: &str,
        sql: String,
        params: Vec<String>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.pg
            .run(what, |c| {
                let (sql, params) = (sql.clone(), params.clone());
                async move {
                    let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|x| x as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    c.query(&sql, &p).await.map_err(err(what))
                }
            })
            .await
    }

    /// The live (not deleted) ids of the source.
    async fn source_ids(&self, o: &ReindexOptions) -> Result<HashSet<String>> {
        let s = &o.source;
        let (filter, params) = source_filter(o, 1);
        let sql = format!(
            "SELECT {id}::text FROM {from} WHERE {filter} AND COALESCE({doc}->>'doc_type', '') NOT LIKE '%-Deleted'",
            id = s.id_column,
            doc = s.doc(),
            from = s.from()
        );
        let rows = self
            .query_source("reading the source's ids", sql, params)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn sample_ids(&self, o: &ReindexOptions) -> Result<Vec<String>> {
        let s = &o.source;
        let (filter, params) = source_filter(o, 1);
        let sql = format!(
            "SELECT {id}::text FROM {from} WHERE {filter} ORDER BY random() LIMIT {n}",
            id = s.id_column,
            from = s.from(),
            n = o.sample_size
        );
        let rows = self
            .query_source("sampling the source", sql, params)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The source's documents of `ids` (absent ones are not returned).
    async fn source_docs(
        &self,
        o: &ReindexOptions,
        ids: &[String],
    ) -> Result<HashMap<String, String>> {
        let s = &o.source;
        let sql = format!(
            "SELECT {id}::text, {doc}::text FROM {from} WHERE {id}::text = ANY($1)",
            id = s.id_column,
            doc = s.doc(),
            from = s.from()
        );
        let ids = ids.to_vec();
        let rows = self
            .pg
            .run("reading documents of the source", |c| {
                let (sql, ids) = (sql.clone(), ids.clone());
                async move {
                    c.query(&sql, &[&ids])
                        .await
                        .map_err(err("reading documents of the source"))
                }
            })
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// `ids` compared between the source and the new index: (missing, extra, mismatched).
    async fn compare_ids(
        &self,
        ver: &dyn Version,
        run: &ReindexRun,
        o: &ReindexOptions,
        ids: &[String],
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let (mut missing, mut extra, mut mismatched) = (Vec::new(), Vec::new(), Vec::new());
        if ids.is_empty() {
            return Ok((missing, extra, mismatched));
        }
        let indexed = ver.fetch(&run.new_index, ids).await?;
        let source = self.source_docs(o, ids).await?;
        let expected = ver.expected(&source).await?;
        for id in ids {
            match (expected.get(id), indexed.get(id)) {
                (Some(e), Some(got)) if e != got => mismatched.push(id.clone()),
                (Some(_), None) => missing.push(id.clone()),
                (None, Some(_)) if !o.filtered() => extra.push(id.clone()),
                _ => {}
            }
        }
        Ok((missing, extra, mismatched))
    }

    /// Writes `ids` again from the source (`index` actions; a document gone from the source is
    /// deleted). Returns how many were written.
    async fn repair(
        &self,
        ver: &dyn Version,
        run: &ReindexRun,
        o: &ReindexOptions,
        ids: &[String],
    ) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut writer = ver.writer(&run.new_index, false)?;
        let mut source = self.source_docs(o, ids).await?;
        let mut changes = Vec::with_capacity(ids.len());
        for id in ids {
            changes.push(match source.remove(id) {
                Some(doc) => self.row_change(id.clone(), doc, &run.new_index)?,
                None => delete_change(id.clone()),
            });
        }
        let n = changes.len();
        let _ = writer.process_changes_chunk(&mut changes).await?;
        tracing::info!(run = run.id, index = %run.new_index, documents = n, "reindex: repaired differences from the source");
        Ok(n)
    }

    async fn domain_counts(
        &self,
        ver: &dyn Version,
        index: &str,
        o: &ReindexOptions,
    ) -> Result<Vec<(String, u64, u64)>> {
        let Some(index_counts) = ver.domain_counts(index).await? else {
            return Ok(Vec::new());
        };
        let s = &o.source;
        let (filter, params) = source_filter(o, 1);
        let sql = format!(
            "SELECT {doc}->>'domain', count(*) FROM {from} WHERE {filter} AND COALESCE({doc}->>'doc_type', '') NOT LIKE '%-Deleted' GROUP BY 1",
            doc = s.doc(),
            from = s.from()
        );
        let rows = self
            .query_source("counting the source by domain", sql, params)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let (d, n): (Option<String>, i64) = (r.get(0), r.get(1));
            let Some(d) = d else { continue };
            let n = u64::try_from(n).unwrap_or(0);
            let got = index_counts.get(&d).copied().unwrap_or(0);
            if got != n {
                out.push((d, n, got));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_parameters() {
        let mut o = ReindexOptions::new(SqlSource {
            table: "docs".into(),
            id_column: "id".into(),
            doc_column: "doc".into(),
        });
        assert_eq!(source_filter(&o, 1), ("TRUE".into(), vec![]));
        o.domain = Some("d'1".into());
        o.date_field = Some("form.meta.time".into());
        o.start_date = Some("2024-01-01".into());
        let (sql, params) = source_filter(&o, 4);
        assert_eq!(
            sql,
            "(doc::jsonb)->>'domain' = $4 AND (doc::jsonb) #>> '{form,meta,time}' >= $5"
        );
        assert_eq!(params, vec!["d'1".to_owned(), "2024-01-01".to_owned()]);
        o.date_field = Some("a'; drop".into());
        assert!(o.validate().is_err());
    }
}
