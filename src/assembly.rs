//! The one way to build a pillow: a validated definition ([`PillowSpec`]) and its assembly
//! into a ready [`Pillow`] ([`PillowSpec::build`]).
//!
//! Both fronts describe a pillow here and nowhere else: the TOML runner
//! ([`crate::config::PillowFile::spec`]) and the Python `Pillow` (`src/python/pillow.rs`), so
//! every option (exactly-once tables, PostgreSQL document stores, background checkpoints, the
//! stall watch, message-size limits) exists in both and is validated once.
//!
//! A definition holds no client and no socket (fork safety); `build` connects: it creates the
//! pillowtop tables when missing, the Kafka feed, the processors, the checkpoint store (the
//! transactional one when a processor is exactly-once), the error store, the document stores
//! and the liveness rows. Every PostgreSQL client it makes waits out outages until the stop
//! token is cancelled; pass the same token to [`Pillow::run`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::docstore::{DocumentStore, DocumentStores, PostgresDocumentStore};
use crate::error::{ConfigError, Result};
use crate::feed::kafka::{KafkaFeed, KafkaFeedOptions};
use crate::feed::shared::{SharedRead, SharedReadOptions};
use crate::feed::ChangeFeed;
use crate::pg::Pg;
use crate::pillow::independent::IndependentPillow;
use crate::pillow::{Pillow, PillowConfig, ProcessorCheckpoints, RunSummary, StopReason};
use crate::processor::elasticsearch::{DocTransform, ElasticsearchConfig, ElasticsearchProcessor};
use crate::processor::memory::NoopProcessor;
use crate::processor::postgres::{
    ExactlyOnceSession, PgTableProcessor, TableDefinition, TransactionalCheckpointStore,
};
use crate::processor::Processor;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::CheckpointStore;
use crate::store::errors::postgres::PostgresErrorStore;
use crate::store::history::postgres::PostgresHistoryStore;
use crate::store::liveness::postgres::PostgresLivenessStore;

/// How long PostgreSQL is waited for by default: 5 minutes, then the pillow stops (its
/// supervisor restarts it).
pub const DEFAULT_POSTGRES_OUTAGE_BUDGET: Duration = Duration::from_secs(300);

/// One processor of a definition.
pub enum ProcessorSpec {
    /// A reporting table ([`crate::processor::postgres`]); at most one per pillow may be
    /// exactly-once (it commits with the checkpoint).
    PostgresTable(TableDefinition),
    /// An index ([`crate::processor::elasticsearch`]), with the front's own transform if any.
    Elasticsearch {
        config: ElasticsearchConfig,
        transform: Option<DocTransform>,
    },
    /// Does nothing (benchmarks, tests): `batch` chooses the chunk path.
    Noop { batch: bool },
    /// A processor the front built itself (a Python processor, bound to the thread that runs
    /// the pillow: the Python front makes a fresh definition for each run).
    Ready(Box<dyn Processor>),
}

impl std::fmt::Debug for ProcessorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PostgresTable(d) => write!(f, "PostgresTable({})", d.table),
            Self::Elasticsearch { config, transform } => write!(
                f,
                "Elasticsearch({}, transform: {})",
                config.index,
                if transform.is_some() {
                    "the front's"
                } else {
                    config.transform.as_str()
                }
            ),
            Self::Noop { batch } => write!(f, "Noop(batch: {batch})"),
            Self::Ready(p) => write!(f, "Ready({})", p.name()),
        }
    }
}

/// Where the documents of one `(data_source_type, data_source_name)` come from, for changes
/// that do not embed theirs.
#[derive(Clone)]
pub enum DocumentSource {
    /// A table with an id column and a JSON document column.
    Postgres {
        table: String,
        id_column: String,
        doc_column: String,
    },
    /// A store the front built (a Python document store).
    Ready(Arc<dyn DocumentStore>),
}

/// A document store of a definition; `data_source_name` `"*"` matches every name of the type.
#[derive(Clone)]
pub struct DocumentStoreSpec {
    pub data_source_type: String,
    pub data_source_name: String,
    pub source: DocumentSource,
}

/// A validated pillow definition: everything [`PillowSpec::build`] needs, and no connection.
pub struct PillowSpec {
    /// The loop's settings: names, chunk and checkpoint rules, layout, start policy, stall watch.
    pub config: PillowConfig,
    pub topics: Vec<String>,
    /// The Kafka feed's settings (bootstrap, client id, idle tick, message-size limit, extra
    /// librdkafka settings).
    pub feed: KafkaFeedOptions,
    /// Checkpoints, error rows, liveness rows and the reporting tables.
    pub postgres_url: String,
    /// How long PostgreSQL is waited for, without progress, before the pillow gives up
    /// ([`DEFAULT_POSTGRES_OUTAGE_BUDGET`]; TOML `[postgres] outage_budget_secs`, Python
    /// `Pillow.run(postgres_outage_budget=…)`).
    pub postgres_outage_budget: Duration,
    pub processors: Vec<ProcessorSpec>,
    pub document_stores: Vec<DocumentStoreSpec>,
}

fn invalid(message: String) -> crate::Error {
    ConfigError::Invalid(message).into()
}

/// The connection a processor's reindex watch reads on: its own (a short read about once a
/// second, never queued behind checkpoint writes), without outage budget (one attempt per poll:
/// the pillow never waits for it).
fn watch_pg(pg: &Pg) -> Arc<Pg> {
    Arc::new(pg.sibling().with_backoff(crate::backoff::Backoff {
        max_elapsed: Duration::ZERO,
        ..crate::backoff::Backoff::default()
    }))
}

impl PillowSpec {
    /// Everything that can be checked without connecting: the loop's settings, the topic
    /// names, each processor's definition, at most one exactly-once processor.
    pub fn validate(&self) -> Result<()> {
        let name = &self.config.name;
        self.config.validate()?;
        if self.topics.is_empty() {
            return Err(invalid(format!("pillow {name} reads no topics")));
        }
        for t in &self.topics {
            crate::partition::validate_topic_name(t)?;
        }
        if self.processors.is_empty() {
            return Err(invalid(format!("pillow {name} has no processors")));
        }
        let mut exactly_once = Vec::new();
        for p in &self.processors {
            match p {
                ProcessorSpec::PostgresTable(def) => {
                    def.validate()?;
                    if def.exactly_once {
                        exactly_once.push(def.table.as_str());
                    }
                }
                ProcessorSpec::Elasticsearch { config, .. } => config.validate()?,
                ProcessorSpec::Noop { .. } | ProcessorSpec::Ready(_) => {}
            }
        }
        if self.config.processor_checkpoints == ProcessorCheckpoints::Independent {
            // Names known before the build (the lanes check the rest when they are built).
            let mut seen = std::collections::BTreeSet::new();
            for p in &self.processors {
                if let ProcessorSpec::Ready(p) = p {
                    if !seen.insert(p.name()) {
                        return Err(invalid(format!(
                            "pillow {name}: two processors are named {}; with processor_checkpoints = \"independent\" each processor's name is its checkpoint's name and must be unique (a Python processor's name is its class's, or its processor_name attribute)",
                            p.name()
                        )));
                    }
                }
            }
        }
        if exactly_once.len() > 1 {
            return Err(invalid(format!(
                "pillow {name} has {} exactly-once processors ({}); at most one can commit with the checkpoint",
                exactly_once.len(),
                exactly_once.join(", ")
            )));
        }
        for d in &self.document_stores {
            if d.data_source_type.is_empty() || d.data_source_name.is_empty() {
                return Err(invalid(format!(
                    "pillow {name}: a document store needs a data_source_type and a data_source_name (\"*\" for every name)"
                )));
            }
            if let DocumentSource::Postgres {
                table,
                id_column,
                doc_column,
            } = &d.source
            {
                crate::docstore::check_identifiers(table, id_column, doc_column)?;
            }
        }
        Ok(())
    }

    /// Connects and assembles the pillow (see the module docs). `stop` ends every outage
    /// wait of the clients made here, from the creation of the tables on: pass the same token
    /// to [`Pillow::run`].
    pub async fn build(self, stop: &CancellationToken) -> Result<Pillow> {
        self.build_with_feed(stop, |f| Box::new(f)).await
    }

    /// [`build`](Self::build), with the pillow's Kafka feed wrapped by `wrap` (an independent
    /// pillow's lane reads the shared feed and keeps this one for when it detaches).
    async fn build_with_feed(
        self,
        stop: &CancellationToken,
        wrap: impl FnOnce(KafkaFeed) -> Box<dyn ChangeFeed>,
    ) -> Result<Pillow> {
        self.validate()?;
        let backoff = crate::backoff::Backoff {
            max_elapsed: self.postgres_outage_budget,
            ..crate::backoff::Backoff::default()
        };
        let pg = Arc::new(
            Pg::new(&self.postgres_url)
                .with_backoff(backoff)
                .with_stop(stop.clone()),
        );
        crate::store::schema::ensure_schema(&pg).await?;
        let mut feed_options = self.feed;
        // --until-idle: a feed already at its end ticks at once, not after a full idle timeout.
        feed_options.tick_at_end = self.config.until_idle;
        let feed = KafkaFeed::new(&self.topics, feed_options)?;
        let mut processors: Vec<Box<dyn Processor>> = Vec::with_capacity(self.processors.len());
        let mut session = None;
        for p in self.processors {
            processors.push(match p {
                ProcessorSpec::PostgresTable(def) if def.exactly_once => {
                    let s = ExactlyOnceSession::new(&self.postgres_url);
                    session = Some(s.clone());
                    Box::new(
                        PgTableProcessor::exactly_once(def, s)?
                            .with_reindex_watch(watch_pg(&pg), &self.config.name),
                    )
                }
                // Its own connection, so that it does not queue behind checkpoint writes.
                ProcessorSpec::PostgresTable(def) => Box::new(
                    PgTableProcessor::new(def, Arc::new(pg.sibling()))?
                        .with_reindex_watch(watch_pg(&pg), &self.config.name),
                ),
                ProcessorSpec::Elasticsearch { config, transform } => {
                    let mut p = ElasticsearchProcessor::new(config)?
                        .with_stop(stop.clone())
                        .with_reindex_watch(watch_pg(&pg), &self.config.name);
                    if let Some(t) = transform {
                        p = p.with_transform(t);
                    }
                    Box::new(p)
                }
                ProcessorSpec::Noop { batch } => Box::new(NoopProcessor { batch }),
                ProcessorSpec::Ready(p) => p,
            });
        }
        let checkpoints: Arc<dyn CheckpointStore> = match session {
            Some(s) => Arc::new(TransactionalCheckpointStore::new(s, pg.clone())),
            None => Arc::new(PostgresCheckpointStore::new(pg.clone())),
        };
        let mut stores = DocumentStores::new();
        for d in self.document_stores {
            let store: Arc<dyn DocumentStore> = match d.source {
                DocumentSource::Postgres {
                    table,
                    id_column,
                    doc_column,
                } => Arc::new(PostgresDocumentStore::new(
                    pg.clone(),
                    &table,
                    &id_column,
                    &doc_column,
                )?),
                DocumentSource::Ready(s) => s,
            };
            stores.register(&d.data_source_type, &d.data_source_name, store);
        }
        Ok(Pillow::new(
            self.config,
            wrap(feed),
            processors,
            checkpoints,
            Arc::new(PostgresErrorStore::new(pg.clone())),
        )
        .with_document_stores(stores)
        .with_liveness(Arc::new(PostgresLivenessStore::new(pg.clone())))
        .with_history(Arc::new(PostgresHistoryStore::new(pg.clone())))
        .with_handovers(pg))
    }
}

impl PillowSpec {
    /// The same pillow over `feed` and the given stores, connecting to nothing (the test
    /// harness's `Pillow.process_changes`): the loop, chunking, de-duplication, fallback,
    /// error recording and checkpoint rules are the real ones. Processors and document stores
    /// that need PostgreSQL or Elasticsearch are refused, by name.
    pub fn build_in_memory(
        self,
        feed: crate::feed::memory::MemoryFeed,
        checkpoints: Arc<dyn CheckpointStore>,
        errors: Arc<dyn crate::store::errors::ErrorStore>,
    ) -> Result<Pillow> {
        let name = self.config.name.clone();
        self.config.validate()?;
        let mut processors: Vec<Box<dyn Processor>> = Vec::with_capacity(self.processors.len());
        for p in self.processors {
            processors.push(match p {
                ProcessorSpec::Noop { batch } => Box::new(NoopProcessor { batch }),
                ProcessorSpec::Ready(p) => p,
                other => {
                    return Err(invalid(format!(
                        "pillow {name}: {other:?} needs its server; in-memory processing takes Python processors and no-op processors only (run the pillow against the real services with run())"
                    )))
                }
            });
        }
        let mut stores = DocumentStores::new();
        for d in self.document_stores {
            match d.source {
                DocumentSource::Ready(s) => {
                    stores.register(&d.data_source_type, &d.data_source_name, s);
                }
                DocumentSource::Postgres { table, .. } => {
                    return Err(invalid(format!(
                        "pillow {name}: the document store of ({}, {}) reads table {table} in PostgreSQL; in-memory processing takes Python document stores only",
                        d.data_source_type, d.data_source_name
                    )))
                }
            }
        }
        Ok(
            Pillow::new(self.config, Box::new(feed), processors, checkpoints, errors)
                .with_document_stores(stores),
        )
    }

    /// Builds the pillow, lets the front add what it brings (metrics, a hook) and runs it
    /// until it stops. A stop request that ends a start-up wait (PostgreSQL unreachable while
    /// the tables are created) is a stop, not a failure: an empty `Shutdown` summary.
    ///
    /// With `processor_checkpoints = "independent"` and several processors, each processor
    /// runs as its own lane ([`crate::pillow::independent`]); `customize` is applied to each
    /// lane and the summary combines theirs.
    pub async fn run(
        self,
        stop: &CancellationToken,
        mut customize: impl FnMut(Pillow) -> Pillow,
    ) -> Result<RunSummary> {
        let name = self.config.name.clone();
        if self.config.processor_checkpoints == ProcessorCheckpoints::Independent
            && self.processors.len() > 1
        {
            return match self.build_independent(stop, &mut customize).await {
                Ok(mut p) => p.run(stop).await.map(|s| s.combined()),
                Err(e) if stop.is_cancelled() && e.is_stop_request() => {
                    tracing::warn!(pillow = %name, error = %e, "stopped on request during the start-up");
                    Ok(RunSummary::nothing(StopReason::Shutdown))
                }
                Err(e) => Err(e),
            };
        }
        let pillow = match self.build(stop).await {
            Ok(p) => p,
            Err(e) if stop.is_cancelled() && e.is_stop_request() => {
                tracing::warn!(pillow = %name, error = %e, "stopped on request during the start-up");
                return Ok(RunSummary::nothing(StopReason::Shutdown));
            }
            Err(e) => return Err(e),
        };
        customize(pillow).run(stop).await
    }
}

impl PillowSpec {
    /// One definition per processor, with the pillow's settings: the lanes of an independent
    /// pillow.
    /// A lane's processor name (a lane spec has one processor).
    fn lane_name(&self) -> String {
        match self.processors.first() {
            Some(ProcessorSpec::Ready(p)) => p.name().to_owned(),
            Some(ProcessorSpec::PostgresTable(def)) => format!("postgres_table {}", def.table),
            Some(ProcessorSpec::Elasticsearch { .. }) => "elasticsearch".to_owned(),
            Some(ProcessorSpec::Noop { .. }) | None => "noop".to_owned(),
        }
    }

    fn into_lanes(self) -> Vec<PillowSpec> {
        let Self {
            config,
            topics,
            feed,
            postgres_url,
            postgres_outage_budget,
            processors,
            document_stores,
        } = self;
        processors
            .into_iter()
            .map(|p| PillowSpec {
                config: config.clone(),
                topics: topics.clone(),
                feed: feed.clone(),
                postgres_url: postgres_url.clone(),
                postgres_outage_budget,
                processors: vec![p],
                document_stores: document_stores.clone(),
            })
            .collect()
    }

    /// Connects and assembles an independent pillow: one lane per processor, each built as a
    /// pillow of its own (its own feed and connections), and the coordinator's checkpoint store.
    pub async fn build_independent(
        self,
        stop: &CancellationToken,
        customize: &mut impl FnMut(Pillow) -> Pillow,
    ) -> Result<IndependentPillow> {
        self.validate()?;
        let backoff = crate::backoff::Backoff {
            max_elapsed: self.postgres_outage_budget,
            ..crate::backoff::Backoff::default()
        };
        let pg = Arc::new(
            Pg::new(&self.postgres_url)
                .with_backoff(backoff)
                .with_stop(stop.clone()),
        );
        // One read of Kafka for every lane, with a bounded lead (0: each lane reads alone).
        let shared = (self.config.lane_max_lead_changes > 0 && self.processors.len() > 1)
            .then(|| -> Result<_> {
                let mut options = self.feed.clone();
                options.tick_at_end = self.config.until_idle;
                let reader = KafkaFeed::new(&self.topics, options)?;
                let read = SharedRead::new(
                    &self.config.name,
                    SharedReadOptions {
                        max_items: self.config.lane_max_lead_changes,
                        max_bytes: self.config.lane_max_lead_bytes.max(1),
                        idle_timeout: self.feed.idle_timeout,
                        tick_at_end: self.config.until_idle,
                    },
                );
                Ok((read, Box::new(reader) as Box<dyn ChangeFeed>))
            })
            .transpose()?;
        if shared.is_some() {
            tracing::info!(pillow = %self.config.name, processors = self.processors.len(),
                lane_max_lead_changes = self.config.lane_max_lead_changes,
                lane_max_lead_bytes = self.config.lane_max_lead_bytes,
                "independent processors read Kafka once, through a shared read with a bounded lead");
        } else {
            tracing::info!(pillow = %self.config.name, processors = self.processors.len(),
                "independent processors each read Kafka with a consumer of their own");
        }
        let on_tasks = self.config.lanes_on_own_tasks;
        let mut lanes = Vec::with_capacity(self.processors.len());
        for spec in self.into_lanes() {
            let lane = match &shared {
                Some((read, _)) => {
                    let name = spec.lane_name();
                    spec.build_with_feed(stop, |own| Box::new(read.lane(&name, Box::new(own))))
                        .await?
                }
                None => spec.build(stop).await?,
            };
            lanes.push(customize(lane));
        }
        let mut pillow =
            IndependentPillow::new(Arc::new(PostgresCheckpointStore::new(pg.clone())), lanes)?
                .with_handovers(pg)
                .with_lanes_on_tasks(on_tasks);
        if let Some((read, reader)) = shared {
            pillow = pillow.with_shared_read(read, reader);
        }
        Ok(pillow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::postgres::TableDefinition;

    fn table(name: &str, exactly_once: bool) -> TableDefinition {
        let mut def: TableDefinition = serde_json::from_value(serde_json::json!({
            "table": name,
            "primary_key": ["id"],
            "columns": [{"name": "id", "type": "text", "change": "id"}],
        }))
        .expect("table definition");
        def.exactly_once = exactly_once;
        def
    }

    fn spec(processors: Vec<ProcessorSpec>) -> PillowSpec {
        PillowSpec {
            config: PillowConfig::new("p", "p"),
            topics: vec!["case-sql".into()],
            feed: KafkaFeedOptions::new("127.0.0.1:1", "p"),
            postgres_url: "postgres://nowhere".into(),
            postgres_outage_budget: DEFAULT_POSTGRES_OUTAGE_BUDGET,
            processors,
            document_stores: Vec::new(),
        }
    }

    #[test]
    fn a_definition_is_checked_whole() {
        spec(vec![ProcessorSpec::Noop { batch: true }])
            .validate()
            .expect("minimal");
        let e = spec(vec![]).validate().expect_err("no processor");
        assert!(e.to_string().contains("no processors"), "{e}");
        let mut s = spec(vec![ProcessorSpec::Noop { batch: true }]);
        s.topics = vec!["form,sql".into()];
        assert!(s.validate().is_err(), "topic name");
        s.topics.clear();
        assert!(s
            .validate()
            .expect_err("no topic")
            .to_string()
            .contains("no topics"));
        let two = spec(vec![
            ProcessorSpec::PostgresTable(table("a", true)),
            ProcessorSpec::Noop { batch: false },
            ProcessorSpec::PostgresTable(table("b", true)),
        ]);
        let e = two.validate().expect_err("two exactly-once");
        assert!(e.to_string().contains("a, b"), "{e}");
        let mut s = spec(vec![ProcessorSpec::Noop { batch: true }]);
        s.config.checkpoint_id = String::new();
        assert!(s.validate().is_err(), "the loop's settings are checked too");
    }

    #[tokio::test]
    async fn in_memory_runs_the_real_loop_and_refuses_what_needs_a_server() {
        use crate::feed::memory::MemoryFeed;
        use crate::store::checkpoints::memory::MemoryCheckpointStore;
        use crate::store::errors::memory::MemoryErrorStore;
        let memory = || {
            let mut feed = MemoryFeed::new(&["case-sql"], 1);
            for i in 0..5 {
                feed.push_change("case-sql", 0, &format!("d{i}"));
            }
            feed
        };
        let checkpoints = Arc::new(MemoryCheckpointStore::new());
        let errors = Arc::new(MemoryErrorStore::new());
        let mut pillow = spec(vec![ProcessorSpec::Noop { batch: true }])
            .build_in_memory(memory(), checkpoints.clone(), errors.clone())
            .expect("in memory");
        let summary = pillow.run(&CancellationToken::new()).await.expect("runs");
        assert_eq!(
            (summary.changes, summary.stop_reason),
            (5, StopReason::FeedEnded)
        );
        assert_eq!(checkpoints.all()[0].1.offset, 5);
        let e = spec(vec![ProcessorSpec::PostgresTable(table("t", false))])
            .build_in_memory(memory(), checkpoints, errors)
            .expect_err("a table needs PostgreSQL");
        assert!(
            e.to_string().contains("PostgresTable(t) needs its server"),
            "{e}"
        );
    }
}
