//! The crate's error type.
//!
//! Each area has its own enum, rolled into [`Error`]. Messages are lowercase, have no trailing
//! period, and name the object and the cause. Retriability is decided next to the code that
//! retries (for example [`crate::store`] and the processors), never here.

use crate::partition::{InvalidTopicName, TopicPartition};

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the core can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Elasticsearch(#[from] ElasticsearchError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Reindex(#[from] ReindexError),
    /// The pillow was asked to stop (for example a second SIGTERM) before it could finish.
    #[error("shutdown requested: {0}")]
    ShutdownRequested(String),
}

impl Error {
    /// Whether this is a stop request ending a wait (directly, or beneath the error store's
    /// wrapper): the pillow stops as asked, without its final checkpoint.
    pub fn is_stop_request(&self) -> bool {
        match self {
            Self::ShutdownRequested(_) => true,
            Self::Process(ProcessError::ErrorStore { source, .. }) => source.is_stop_request(),
            _ => false,
        }
    }
}

impl From<InvalidTopicName> for Error {
    fn from(e: InvalidTopicName) -> Self {
        Self::Config(ConfigError::Invalid(e.to_string()))
    }
}

/// Invalid configuration, found before anything runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("pillow {0:?} not found")]
    PillowNotFound(String),
}

/// Kafka failures (broker unreachable, topic missing, client errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    #[error("kafka client error while {context}: {source}")]
    Client {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka topic {0:?} does not exist")]
    UnknownTopic(String),
    /// The consumer stopped receiving while a fresh client reads the backlog, and re-creating
    /// it did not help: the process exits so that its supervisor starts it afresh.
    #[error("kafka consumer of pillow {pillow} is stuck: no message for {idle_secs} s from {source_name} while a fresh client reads {behind} changes on {partitions}; re-created the consumer {reconnects} times without progress")]
    Stalled {
        pillow: String,
        source_name: String,
        behind: i64,
        partitions: String,
        idle_secs: u64,
        reconnects: u32,
    },
    /// A change could not be published (CommCare's `KafkaPublishingError`).
    #[error("kafka could not publish the change of document {document_id:?} to topic {topic:?}: {reason}")]
    Publishing {
        topic: String,
        document_id: String,
        /// librdkafka's error text.
        reason: String,
    },
    #[error("kafka {0}")]
    Other(String),
}

impl KafkaError {
    pub(crate) fn client(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Client {
            context: context.into(),
            source,
        }
    }
}

/// PostgreSQL failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    #[error("postgres error while {context}: {}", describe_postgres(source))]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("postgres {0}")]
    Other(String),
}

impl PostgresError {
    pub(crate) fn query(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Query {
            context: context.into(),
            source,
        }
    }
}

/// A tokio-postgres error as an operator needs it: the server's message, SQLSTATE, detail, hint
/// and the object it names, or the client-side cause (tokio-postgres's own `Display` says only
/// "db error" for everything the server reports).
pub fn describe_postgres(e: &tokio_postgres::Error) -> String {
    use std::fmt::Write as _;
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        for (label, value) in [
            ("detail", db.detail()),
            ("hint", db.hint()),
            ("table", db.table()),
            ("column", db.column()),
            ("constraint", db.constraint()),
            ("where", db.where_()),
        ] {
            if let Some(v) = value {
                let _ = write!(s, "; {label}: {v}");
            }
        }
        return s;
    }
    // Client-side: the top-level text and every cause beneath it (I/O errors, TLS, timeouts).
    with_causes(e)
}

/// An error's text followed by each cause's that it does not already contain (client errors
/// often say only "error sending request" or "error connecting" at the top level).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Search-engine failures that survive retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElasticsearchError {
    #[error("elasticsearch request failed while {context}: {source}")]
    Transport {
        context: String,
        #[source]
        source: elasticsearch::Error,
    },
    #[error("elasticsearch answered {status} while {context}: {body}")]
    Status {
        context: String,
        status: u16,
        body: String,
    },
    /// An outage outlasted the processor's budget (`outage_budget_secs`).
    #[error("elasticsearch at {url} still unavailable after {waited_secs} s ({attempts} attempts, outage budget {budget_secs} s) while {context}: {last_error}")]
    Unavailable {
        url: String,
        context: String,
        attempts: u32,
        waited_secs: u64,
        budget_secs: u64,
        /// The server's or the transport's own text of the last failure.
        last_error: String,
    },
}

/// Checkpoint problems that stop a pillow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// CommCare's `UnavailableKafkaOffset` (strict mode), with CommCare's message.
    #[error(
        "First available topic offset for {topic}:{partition} is {first} but needed {needed}."
    )]
    UnavailableOffset {
        topic: String,
        partition: i32,
        first: i64,
        needed: i64,
    },
    /// CommCare's `PillowtopCheckpointReset`: the stored row changed under a running pillow.
    #[error("checkpoint {checkpoint_id} was changed externally for {tp}: expected {expected:?}, found {found:?}")]
    Reset {
        checkpoint_id: String,
        tp: TopicPartition,
        expected: Option<i64>,
        found: Option<i64>,
    },
    /// An own partition has no checkpoint row and the start policy is `error`.
    #[error("checkpoint {checkpoint_id} has no offset for {tp} and the start policy is 'error'")]
    Missing {
        checkpoint_id: String,
        tp: TopicPartition,
    },
    /// A checkpoint offset lies beyond the partition's high-water mark (topic recreated?).
    #[error(
        "checkpoint {checkpoint_id} offset {offset} for {tp} is beyond the high-water mark {high}"
    )]
    BeyondHighWater {
        checkpoint_id: String,
        tp: TopicPartition,
        offset: i64,
        high: i64,
    },
}

/// A rebuild of an index that cannot go on (`pillowtop reindex`, [`crate::ops::reindex`]). The
/// run's row keeps its step: `resume`, `rollback` or `abort` it once the cause is dealt with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReindexError {
    /// The run cannot start or go on as asked (what and why in `message`).
    #[error("reindex of processor {processor} of pillow {pillow}: {message}")]
    Refused {
        pillow: String,
        processor: String,
        message: String,
    },
    /// Another process carries the run out now (it holds the run's advisory lock).
    #[error("reindex run {run} is being carried out by another process (it holds the run's advisory lock): wait for it to finish, or stop it first")]
    Busy { run: i64 },
    /// Verification found differences between the source and the new index that repairing
    /// them did not remove; the old index still serves.
    #[error("reindex run {run}: {count} differences remain between the source and index {index} after {rounds} repair rounds, e.g. {examples}; the alias still points at the old index")]
    Differences {
        run: i64,
        index: String,
        count: usize,
        rounds: usize,
        examples: String,
    },
}

/// Failures of the processing machinery itself (not a processor's failure on one change, which
/// is data: see [`crate::processor::ProcessorFailure`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Recording a failed change in `pillow_retry_pillowerror` failed: the pillow must stop
    /// without checkpointing past the change (crash-only).
    #[error("failed to record the error of change {doc_id} for pillow {pillow}: {source}")]
    ErrorStore {
        pillow: String,
        doc_id: String,
        #[source]
        source: Box<Error>,
    },
    /// An error raised by a callback (for example a Python processor) that must propagate as is.
    #[error("{0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
    /// A document store failed (not "not found", which is data).
    #[error("document store {store} failed: {message}")]
    DocumentStore { store: String, message: String },
    #[error("{0}")]
    Other(String),
}
