//! Checkpoints: per-partition "next offset to read" rows, stored in PostgreSQL in CommCare's
//! `pillowtop_kafkacheckpoint` table (or in memory for tests).
//!
//! Stores never create rows as a side effect of reading: rows appear when a pillow writes a
//! checkpoint or when an operator creates them explicitly ([`CheckpointStore::create_rows`]).

pub mod memory;
pub mod policy;
pub mod postgres;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::feed::TopicPartition;

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub tp: TopicPartition,
    pub offset: i64,
    pub last_modified: DateTime<Utc>,
}

/// One offset to write, with what the writer believes the row holds now (`None`: no row).
/// A row that holds something else was changed externally (reference §9 #10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointUpdate {
    pub tp: TopicPartition,
    pub offset: i64,
    pub expected: Option<i64>,
}

/// Where checkpoints live.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Every row of `checkpoint_id`.
    async fn load(&self, checkpoint_id: &str) -> Result<Vec<CheckpointRow>>;

    /// Writes `updates` in one transaction. Fails with `CheckpointError::Reset`, writing nothing,
    /// when a row does not hold the update's `expected` value.
    async fn write(&self, checkpoint_id: &str, updates: &[CheckpointUpdate]) -> Result<()>;

    /// Whether the pillow may write checkpoints in the background while it goes on processing
    /// (one write in flight at a time, each covering only handled changes). A store whose write
    /// commits other work with it (the exactly-once session) says no: its writes stay in line.
    fn background_writes(&self) -> bool {
        true
    }

    /// Creates rows at `offset` for the partitions that have none; returns how many it created.
    async fn create_rows(
        &self,
        checkpoint_id: &str,
        partitions: &[TopicPartition],
        offset: i64,
    ) -> Result<u64>;
}

/// CommCare's text form of a Kafka sequence: `{"topic,partition": offset, ...}`.
pub fn kafka_seq_to_str(offsets: &BTreeMap<TopicPartition, i64>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = offsets
        .iter()
        .map(|(tp, o)| (tp.to_string(), serde_json::Value::from(*o)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Parses CommCare's text form back; `None` if it is not one.
pub fn str_to_kafka_seq(s: &str) -> Option<BTreeMap<TopicPartition, i64>> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s).ok()?;
    map.into_iter()
        .map(|(k, v)| {
            let (topic, partition) = k.rsplit_once(',')?;
            Some((
                TopicPartition::new(topic, partition.trim().parse().ok()?),
                v.as_i64()?,
            ))
        })
        .collect()
}

/// Rejects topic names that would break the `"topic,partition"` text form (reference §9 #9).
pub fn validate_topic_name(topic: &str) -> Result<()> {
    if topic.is_empty() || topic.contains(',') {
        return Err(crate::error::ConfigError::Invalid(format!(
            "topic name {topic:?} is not allowed: it must be non-empty and contain no comma"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_seq_text_form_round_trips() {
        let mut m = BTreeMap::new();
        m.insert(TopicPartition::new("case-sql", 10), 1234);
        m.insert(TopicPartition::new("case-sql", 9), 7);
        let s = kafka_seq_to_str(&m);
        assert!(s.contains(r#""case-sql,10":1234"#), "{s}");
        assert_eq!(str_to_kafka_seq(&s).expect("parses"), m);
        assert!(str_to_kafka_seq("[1]").is_none());
        assert!(validate_topic_name("a,b").is_err());
        assert!(validate_topic_name("form-sql").is_ok());
    }
}
