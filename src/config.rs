//! Pillow configuration files (TOML) for pure-Rust pillows, run by `pillowtop run --config`.
//!
//! One file describes one pillow: its name and checkpoint id, topics, connections, the
//! processors (a list of tagged variants), the chunk and checkpoint settings, the start policy
//! and the process layout. Every table is `deny_unknown_fields`: a misspelt key is an error.
//! Defaults are CommCare's (`run_ptop`): chunk size 10, checkpoint every 100 changes or 300 s.
//!
//! ```toml
//! name = "xform-pillow"
//! checkpoint_id = "xform-pillow"
//! topics = ["form-sql"]
//! chunk_size = 100
//!
//! [kafka]
//! bootstrap = "127.0.0.1:19092"
//!
//! [postgres]
//! url = "postgres://postgres@127.0.0.1:15432/postgres"
//!
//! [[processors]]
//! type = "postgres_table"
//! table = "xform_report"
//! primary_key = ["doc_id"]
//! columns = [
//!   { name = "doc_id", type = "text", change = "id" },
//!   { name = "user_id", type = "text", path = "form.meta.userID" },
//! ]
//! ```
//!
//! [`PillowFile::spec`] turns a file into the one pillow definition of [`crate::assembly`], whose
//! `build` connects and assembles it. Nothing here installs signal handlers: that is the
//! binary's job.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::assembly::{DocumentSource, DocumentStoreSpec, PillowSpec, ProcessorSpec};
use crate::error::{ConfigError, Result};
use crate::feed::assignment::Layout;
use crate::feed::kafka::{KafkaClientConfig, KafkaFeedOptions};
use crate::pillow::{PillowConfig, StartPolicy};
use crate::processor::postgres::TableDefinition;

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub bootstrap: String,
    /// A label for the broker's logs; defaults to the pillow name.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The feed's idle tick (CommCare's consumer timeout), in milliseconds. Default 10,000.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Larger messages become error rows; default: each topic's `max.message.bytes`.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Extra librdkafka properties (security, tuning), applied last to every Kafka client of
    /// the pillow (`[kafka] config = { "security.protocol" = "SSL" }`; `settings` is the older
    /// name). See [`crate::feed::kafka::KafkaClientConfig`].
    #[serde(default, alias = "config")]
    pub settings: BTreeMap<String, String>,
}

/// PostgreSQL connection settings (checkpoints, error rows, liveness, reporting tables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: String,
    /// Seconds PostgreSQL is waited for (retried with backoff, a warning per attempt) before
    /// the pillow stops. Default 300.
    #[serde(default)]
    pub outage_budget_secs: Option<u64>,
}

/// Elasticsearch connection settings (used by the Elasticsearch processor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    pub url: String,
}

/// A PostgreSQL document store for changes whose documents are not embedded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentStoreConfig {
    pub data_source_type: String,
    /// `"*"` matches every name of the type.
    pub data_source_name: String,
    pub table: String,
    pub id_column: String,
    pub doc_column: String,
}

/// One processor, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProcessorConfig {
    /// A reporting table ([`crate::processor::postgres`]).
    PostgresTable(TableDefinition),
    /// An index ([`crate::processor::elasticsearch`]), with a built-in transform by name.
    Elasticsearch(crate::processor::elasticsearch::ElasticsearchConfig),
}

fn default_chunk_size() -> usize {
    10
}
fn default_checkpoint_frequency() -> u64 {
    crate::pillow::checkpoint_policy::DEFAULT_CHECKPOINT_FREQUENCY
}
fn default_max_checkpoint_delay_secs() -> u64 {
    crate::pillow::checkpoint_policy::DEFAULT_MAX_CHECKPOINT_DELAY.as_secs()
}
fn default_start_policy() -> StartPolicy {
    StartPolicy::Earliest
}
fn default_true() -> bool {
    true
}
fn default_num_processes() -> u32 {
    1
}
fn default_stall_timeout_secs() -> u64 {
    crate::pillow::stall::DEFAULT_STALL_TIMEOUT.as_secs()
}

/// A pillow configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(clippy::struct_excessive_bools)] // independent switches, most of them CommCare's flags
pub struct PillowFile {
    pub name: String,
    pub checkpoint_id: String,
    pub topics: Vec<String>,
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub elasticsearch: Option<ElasticsearchConfig>,
    #[serde(default)]
    pub document_stores: Vec<DocumentStoreConfig>,
    pub processors: Vec<ProcessorConfig>,
    /// CommCare's `processor_chunk_size`; 0 processes every change alone.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    #[serde(default = "default_checkpoint_frequency")]
    pub checkpoint_frequency: u64,
    /// Seconds; 0 disables the time rule.
    #[serde(default = "default_max_checkpoint_delay_secs")]
    pub max_checkpoint_delay_secs: u64,
    /// `earliest`, `latest` or `error`, for partitions without a checkpoint row.
    #[serde(default = "default_start_policy")]
    pub start_policy: StartPolicy,
    /// Fail when a checkpoint is older than the topic's retention.
    #[serde(default)]
    pub strict: bool,
    /// Record every failure as an error row (else only missing documents).
    #[serde(default = "default_true")]
    pub retry_errors: bool,
    #[serde(default)]
    pub process_number: u32,
    #[serde(default = "default_num_processes")]
    pub num_processes: u32,
    #[serde(default)]
    pub dedicated_migration_process: bool,
    /// Seconds without a change (while the topic has some for this process) before the stall
    /// watch probes the broker and re-creates a stuck client; 0 turns the watch off.
    #[serde(default = "default_stall_timeout_secs")]
    pub stall_timeout_secs: u64,
    /// Write due checkpoints in the background while the next chunks run (default); `false`
    /// writes each at CommCare's exact points. Exactly-once pillows always write in line.
    #[serde(default = "default_true")]
    pub background_checkpoints: bool,
    /// `shared` (default, CommCare's: one checkpoint, the slowest processor sets the pace) or
    /// `independent` (each processor runs as its own lane with its own checkpoint rows; the
    /// pillow's rows are the minimum over them).
    #[serde(default)]
    pub processor_checkpoints: crate::pillow::ProcessorCheckpoints,
    /// Independent processors read Kafka once; a lane more than this many changes behind the
    /// fastest detaches to its own consumer until it has caught up (0: each lane reads alone).
    #[serde(default = "default_lane_max_lead_changes")]
    pub lane_max_lead_changes: usize,
    /// The same bound in bytes held (default 64 MiB).
    #[serde(default = "default_lane_max_lead_bytes")]
    pub lane_max_lead_bytes: usize,
}

fn default_lane_max_lead_changes() -> usize {
    crate::feed::shared::DEFAULT_MAX_ITEMS
}

fn default_lane_max_lead_bytes() -> usize {
    crate::feed::shared::DEFAULT_MAX_BYTES
}

/// Command-line overrides of a file's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub process_number: Option<u32>,
    pub num_processes: Option<u32>,
    pub until_idle: bool,
    pub max_changes: Option<u64>,
    /// `--kafka-config` properties, over the file's `[kafka] config`.
    pub kafka_config: KafkaClientConfig,
}

fn invalid(msg: String) -> crate::Error {
    ConfigError::Invalid(msg).into()
}

impl PillowFile {
    /// Parses and validates a TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        let file: Self =
            toml::from_str(text).map_err(|e| invalid(format!("pillow config: {e}")))?;
        file.validate()?;
        Ok(file)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read pillow config {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// What serde cannot check (the definition is validated whole, as for every front).
    pub fn validate(&self) -> Result<()> {
        self.spec(&RunOptions::default()).map(drop)
    }

    /// The pillow settings, with `options` applied.
    pub fn pillow_config(&self, options: &RunOptions) -> PillowConfig {
        let mut c = PillowConfig::new(&self.name, &self.checkpoint_id);
        c.chunk_size = self.chunk_size;
        c.checkpoint_frequency = self.checkpoint_frequency;
        c.max_checkpoint_delay = (self.max_checkpoint_delay_secs > 0)
            .then(|| Duration::from_secs(self.max_checkpoint_delay_secs));
        c.layout = Layout {
            num_processes: options.num_processes.unwrap_or(self.num_processes),
            process_num: options.process_number.unwrap_or(self.process_number),
            dedicated_migration_process: self.dedicated_migration_process,
        };
        c.start_policy = self.start_policy;
        c.strict = self.strict;
        c.retry_errors = self.retry_errors;
        c.until_idle = options.until_idle;
        c.max_changes = options.max_changes;
        c.stall_timeout =
            (self.stall_timeout_secs > 0).then(|| Duration::from_secs(self.stall_timeout_secs));
        c.background_checkpoints = self.background_checkpoints;
        c.processor_checkpoints = self.processor_checkpoints;
        c.lane_max_lead_changes = self.lane_max_lead_changes;
        c.lane_max_lead_bytes = self.lane_max_lead_bytes;
        c
    }

    /// The Kafka feed options (the file's client config, with `overrides` over it).
    pub fn feed_options(&self, overrides: &KafkaClientConfig) -> Result<KafkaFeedOptions> {
        let mut o = KafkaFeedOptions::new(
            &self.kafka.bootstrap,
            self.kafka
                .client_id
                .clone()
                .unwrap_or_else(|| self.name.clone()),
        );
        o.bootstrap_setting = Some(format!("the `[kafka] bootstrap` of pillow {}", self.name));
        if let Some(ms) = self.kafka.idle_timeout_ms {
            o.idle_timeout = Duration::from_millis(ms);
        }
        o.max_message_bytes = self.kafka.max_message_bytes;
        o.client_config = KafkaClientConfig::from_pairs(
            self.kafka
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        )
        .map_err(|e| invalid(format!("pillow {}: [kafka] config: {e}", self.name)))?
        .merged(overrides);
        Ok(o)
    }
}

impl PillowFile {
    /// The pillow this file describes, with `options` applied: the one definition
    /// [`PillowSpec::build`] assembles (as it does for the Python front).
    pub fn spec(&self, options: &RunOptions) -> Result<PillowSpec> {
        let processors = self
            .processors
            .iter()
            .map(|p| match p {
                ProcessorConfig::PostgresTable(def) => ProcessorSpec::PostgresTable(def.clone()),
                ProcessorConfig::Elasticsearch(config) => ProcessorSpec::Elasticsearch {
                    config: config.clone(),
                    transform: None,
                },
            })
            .collect();
        let document_stores = self
            .document_stores
            .iter()
            .map(|d| DocumentStoreSpec {
                data_source_type: d.data_source_type.clone(),
                data_source_name: d.data_source_name.clone(),
                source: DocumentSource::Postgres {
                    table: d.table.clone(),
                    id_column: d.id_column.clone(),
                    doc_column: d.doc_column.clone(),
                },
            })
            .collect();
        let spec = PillowSpec {
            config: self.pillow_config(options),
            topics: self.topics.clone(),
            feed: self.feed_options(&options.kafka_config)?,
            postgres_url: self.postgres.url.clone(),
            postgres_outage_budget: self.postgres.outage_budget_secs.map_or(
                crate::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
                Duration::from_secs,
            ),
            processors,
            document_stores,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/xform-pillow.toml");

    #[test]
    fn the_example_parses_and_validates() {
        let f = PillowFile::from_toml(EXAMPLE).expect("example");
        assert_eq!(f.name, "xform-pillow");
        assert!(
            matches!(&f.processors[0], ProcessorConfig::PostgresTable(d) if d.table == "xform_report")
        );
        let c = f.pillow_config(&RunOptions {
            process_number: Some(1),
            num_processes: Some(2),
            until_idle: true,
            max_changes: None,
            kafka_config: KafkaClientConfig::new(),
        });
        assert_eq!((c.layout.process_num, c.layout.num_processes), (1, 2));
        assert!(c.until_idle);
    }

    #[test]
    fn the_message_size_limit_is_a_kafka_setting() {
        let f = PillowFile::from_toml(EXAMPLE).expect("example");
        assert_eq!(
            f.feed_options(&KafkaClientConfig::new())
                .expect("valid")
                .max_message_bytes,
            None,
            "the topic's own"
        );
        let text = EXAMPLE.replace("[kafka]\n", "[kafka]\nmax_message_bytes = 2000000\n");
        let f = PillowFile::from_toml(&text).expect("with the setting");
        assert_eq!(
            f.feed_options(&KafkaClientConfig::new())
                .expect("valid")
                .max_message_bytes,
            Some(2_000_000)
        );
    }

    #[test]
    fn kafka_client_properties_come_from_the_file_and_the_command_line() {
        let text = EXAMPLE.replace(
            "[kafka]\n",
            "[kafka]\nconfig = { \"security.protocol\" = \"SSL\", \"ssl.ca.location\" = \"/ca\" }\n",
        );
        let f = PillowFile::from_toml(&text).expect("with a client config");
        let cli = KafkaClientConfig::from_args(&["ssl.ca.location=/other"]).expect("valid");
        let o = f.feed_options(&cli).expect("valid");
        assert_eq!(
            o.client_config.properties(),
            &[
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("ssl.ca.location".to_owned(), "/other".to_owned())
            ],
            "the command line wins"
        );
        let bad = EXAMPLE.replace("[kafka]\n", "[kafka]\nconfig = { \"group.id\" = \"x\" }\n");
        let e = PillowFile::from_toml(&bad).expect_err("reserved");
        assert!(
            e.to_string().contains("[kafka] config") && e.to_string().contains("group.id"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_fail_everywhere() {
        let base = "name = \"p\"\ncheckpoint_id = \"p\"\ntopics = [\"t\"]\n[kafka]\nbootstrap = \"k\"\n[postgres]\nurl = \"u\"\n";
        let proc = "[[processors]]\ntype = \"postgres_table\"\ntable = \"x\"\nprimary_key = [\"id\"]\ncolumns = [{ name = \"id\", type = \"text\", change = \"id\" }]\n";
        PillowFile::from_toml(&format!("{base}{proc}")).expect("minimal file");
        let e =
            PillowFile::from_toml(&format!("chunk_sise = 3\n{base}{proc}")).expect_err("top level");
        assert!(e.to_string().contains("chunk_sise"), "{e}");
        let e =
            PillowFile::from_toml(&format!("{base}{proc}tabel = \"y\"\n")).expect_err("processor");
        assert!(e.to_string().contains("tabel"), "{e}");
        let e = PillowFile::from_toml(&format!("{base}[[processors]]\ntype = \"elastic\"\n"))
            .expect_err("type");
        assert!(e.to_string().contains("elastic"), "{e}");
        let two = format!("{base}{proc}exactly_once = true\n{proc}exactly_once = true\n");
        assert!(
            PillowFile::from_toml(&two).is_err(),
            "two exactly-once processors"
        );
    }
}
