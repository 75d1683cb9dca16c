//! Kafka: the change feed (manual partition assignment, no consumer group, nothing committed to
//! Kafka), the change producer and the admin helpers.

pub mod admin;
pub mod client_config;
pub mod consumer;
pub mod context;
pub mod producer;
pub mod scan;

pub use admin::KafkaAdmin;
pub use client_config::KafkaClientConfig;
pub use consumer::{
    resolve_message_limits, KafkaFeed, KafkaFeedOptions, LimitSource, MessageLimit,
    DEFAULT_MAX_MESSAGE_BYTES,
};
pub use producer::ChangeProducer;
