//! The shared vocabulary of partitions: [`TopicPartition`], the topic-name rule, and CommCare's
//! `"topic,partition"` text forms. A leaf: it imports nothing of the crate, so every layer
//! (errors, feeds, stores, operations) can use it without importing each other.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A Kafka (topic, partition) pair. Orders by topic name, then partition number, as CommCare's
/// `_filter_partitions` sorts them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    /// CommCare's text form of a Kafka sequence key: `"topic,partition"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.topic, self.partition)
    }
}

/// A topic name that would break the `"topic,partition"` text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic name {0:?} is not allowed: it must be non-empty and contain no comma")]
pub struct InvalidTopicName(pub String);

/// Rejects topic names that would break the `"topic,partition"` text form (CommCare splits the
/// key at its last comma, so a comma in a topic name would read back as another topic; fixed on
/// purpose, see the README's deviations).
pub fn validate_topic_name(topic: &str) -> Result<(), InvalidTopicName> {
    if topic.is_empty() || topic.contains(',') {
        return Err(InvalidTopicName(topic.to_owned()));
    }
    Ok(())
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
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("form-sql").is_ok());
    }

    #[test]
    fn orders_by_topic_then_partition_and_prints_commcares_key() {
        let mut v = [
            TopicPartition::new("b", 0),
            TopicPartition::new("a", 10),
            TopicPartition::new("a", 9),
        ];
        v.sort();
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a,9", "a,10", "b,0"]);
    }
}
