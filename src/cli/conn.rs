//! The flags every checkpoint command shares: where PostgreSQL and Kafka are (`--postgres-url`,
//! `--kafka`, or the `PILLOWTOP_*` environment variables; never the test suite's `TEST_*` ones),
//! and how a changing command asks before writing (`--noinput`, `--dry-run`, `--force`,
//! `--json`).

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::ops::kafka::KafkaInfo;
use crate::pg::Pg;

/// The environment variable read when `--postgres-url` is not given.
pub const POSTGRES_URL_ENV: &str = "PILLOWTOP_POSTGRES_URL";
/// The environment variable read when `--kafka` is not given.
pub const KAFKA_BOOTSTRAP_ENV: &str = "PILLOWTOP_KAFKA_BOOTSTRAP";

#[derive(Args, Debug, Clone, Default)]
pub struct Conn {
    /// PostgreSQL URL [env: PILLOWTOP_POSTGRES_URL].
    #[arg(long)]
    pub postgres_url: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct KafkaConn {
    /// Kafka bootstrap servers [env: PILLOWTOP_KAFKA_BOOTSTRAP].
    #[arg(long)]
    pub kafka: Option<String>,
    /// An extra librdkafka property for the Kafka clients (repeatable), e.g.
    /// `--kafka-config security.protocol=SSL`.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE")]
    pub kafka_config: Vec<String>,
}

/// The flag's value, else the non-empty value of `var`.
fn from_env(flag: Option<&String>, var: &str) -> Option<String> {
    flag.cloned()
        .or_else(|| std::env::var(var).ok().filter(|s| !s.is_empty()))
}

impl Conn {
    /// A connection to the given server (`Pg` connects on first use).
    pub fn pg(&self) -> anyhow::Result<Arc<Pg>> {
        let url = from_env(self.postgres_url.as_ref(), POSTGRES_URL_ENV)
            .context("no PostgreSQL URL: pass --postgres-url or set PILLOWTOP_POSTGRES_URL")?;
        Ok(Arc::new(Pg::new(url)))
    }
}

impl KafkaConn {
    /// The bootstrap servers, when given.
    pub fn bootstrap(&self) -> Option<String> {
        from_env(self.kafka.as_ref(), KAFKA_BOOTSTRAP_ENV)
    }

    /// A metadata client for the given servers.
    pub fn info(&self) -> anyhow::Result<KafkaInfo> {
        let b = self
            .bootstrap()
            .context("no Kafka address: pass --kafka or set PILLOWTOP_KAFKA_BOOTSTRAP")?;
        let config = crate::feed::kafka::KafkaClientConfig::from_args(&self.kafka_config)?;
        Ok(KafkaInfo::with_config(&b, &config)?)
    }
}

/// How a changing command asks before writing.
// Independent switches; the lint's "use an enum" advice does not fit a command line.
#[allow(clippy::struct_excessive_bools)]
#[derive(Args, Debug, Clone, Default)]
pub struct Confirm {
    /// Do not ask: answer every question with yes.
    #[arg(long)]
    pub noinput: bool,
    /// Show the plan and stop without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Proceed even though a pillow involved has a live process.
    #[arg(long)]
    pub force: bool,
    /// Print the plan as JSON on stdout (questions and messages go to stderr).
    #[arg(long)]
    pub json: bool,
}
