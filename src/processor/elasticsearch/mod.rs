//! The Elasticsearch processor: CommCare's `BulkElasticProcessor` in Rust.
//!
//! * [`config`]: [`ElasticsearchConfig`], strict serde;
//! * [`bulk`]: bulk bodies (split by count and bytes) and bulk responses, pure;
//! * [`retry`]: the one place that decides what is an outage, retried, done, or a failure;
//! * `outage`: how long and how often: outages waited out for `outage_budget_secs`, transient
//!   failures retried `max_retries` times, a log line per attempt, stop requests honoured;
//! * [`processor`]: [`ElasticsearchProcessor`], the [`crate::processor::Processor`], and
//!   document transforms ([`DocTransform`], [`Transforms`]).
//!
//! It owns the HTTP client of one index and writes nothing else; it never reads the Kafka
//! offset (external versions come from a document field).

pub mod bulk;
pub mod config;
mod outage;
pub mod processor;
pub mod retry;

pub use config::ElasticsearchConfig;
pub use processor::{
    identity, DocTransform, ElasticsearchProcessor, Transforms, ERROR_TYPE, TRANSFORM_ERROR_TYPE,
};
