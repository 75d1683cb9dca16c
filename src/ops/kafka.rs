//! What the operations read from Kafka: partitions, watermarks and offsets for a timestamp. Every
//! librdkafka call blocks, so each runs in `spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KafkaError, Result};
use crate::feed::kafka::consumer::blocking;
use crate::feed::kafka::KafkaClientConfig;
use crate::feed::TopicPartition;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A read-only view of the brokers (no group is joined, nothing is committed).
#[derive(Clone)]
pub struct KafkaInfo {
    consumer: Arc<BaseConsumer>,
    bootstrap: String,
    client_config: KafkaClientConfig,
}

impl std::fmt::Debug for KafkaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaInfo").finish_non_exhaustive()
    }
}

/// The retained range of a partition: first available offset and high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

impl KafkaInfo {
    pub fn new(bootstrap_servers: &str) -> Result<Self> {
        Self::with_config(bootstrap_servers, &KafkaClientConfig::new())
    }

    /// A view through clients with extra librdkafka properties (security), applied last.
    pub fn with_config(bootstrap_servers: &str, client_config: &KafkaClientConfig) -> Result<Self> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", bootstrap_servers)
            .set("client.id", "pillowtop-ops")
            .set("group.id", "pillowtop-rs-ops")
            .set("enable.auto.commit", "false");
        client_config.apply(&mut cfg);
        let consumer: BaseConsumer = cfg.create().map_err(|e| {
            KafkaError::client(
                format!("creating a kafka client for {bootstrap_servers}"),
                e,
            )
        })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            bootstrap: bootstrap_servers.to_owned(),
            client_config: client_config.clone(),
        })
    }

    /// The bootstrap servers this view talks to.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Every partition of `topics`, sorted (an unknown topic is an error).
    pub async fn partitions(&self, topics: &[String]) -> Result<Vec<TopicPartition>> {
        let (c, topics) = (Arc::clone(&self.consumer), topics.to_vec());
        blocking(move || crate::feed::kafka::admin::partitions_of(c.client(), &topics)).await
    }

    /// The partition count of `topic`, or `None` when the topic does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<i32>> {
        match self.partitions(&[topic.to_owned()]).await {
            Ok(p) => Ok(Some(i32::try_from(p.len()).unwrap_or(i32::MAX))),
            Err(crate::Error::Kafka(KafkaError::UnknownTopic(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The watermarks of `partitions`.
    pub async fn watermarks(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Watermarks>> {
        let (c, partitions) = (Arc::clone(&self.consumer), partitions.to_vec());
        blocking(move || {
            partitions
                .into_iter()
                .map(|tp| {
                    let (low, high) = c
                        .fetch_watermarks(&tp.topic, tp.partition, TIMEOUT)
                        .map_err(|e| {
                            KafkaError::client(format!("fetching the watermarks of {tp}"), e)
                        })?;
                    Ok((tp, Watermarks { low, high }))
                })
                .collect()
        })
        .await
    }

    /// The watermarks of those of `partitions` that Kafka has (partitions of deleted topics, or
    /// beyond a topic's partition count, are left out).
    pub async fn watermarks_of_existing(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Watermarks>> {
        let topics: std::collections::BTreeSet<&str> =
            partitions.iter().map(|tp| tp.topic.as_str()).collect();
        let mut counts = BTreeMap::new();
        for t in topics {
            counts.insert(t, self.partition_count(t).await?.unwrap_or(0));
        }
        let known: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| tp.partition >= 0 && tp.partition < counts[tp.topic.as_str()])
            .cloned()
            .collect();
        self.watermarks(&known).await
    }

    /// The timestamp (milliseconds since the epoch) of the message at each `(partition, offset)`:
    /// for a checkpoint, the oldest change not yet processed. Partitions whose message does not
    /// arrive within `wait` are left out.
    pub async fn timestamps_at(
        &self,
        positions: &[(TopicPartition, i64)],
        wait: Duration,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        if positions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (bootstrap, positions) = (self.bootstrap.clone(), positions.to_vec());
        let client_config = self.client_config.clone();
        blocking(move || {
            use rdkafka::message::Message;
            let mut cfg = ClientConfig::new();
            cfg.set("bootstrap.servers", &bootstrap)
                .set("client.id", "pillowtop-ops")
                .set("group.id", "pillowtop-rs-ops")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "error");
            client_config.apply(&mut cfg);
            let consumer: BaseConsumer = cfg
                .create()
                .map_err(|e| KafkaError::client("creating a kafka consumer for timestamps", e))?;
            let mut tpl = TopicPartitionList::new();
            for (tp, offset) in &positions {
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                    .map_err(|e| KafkaError::client(format!("assigning {tp} at {offset}"), e))?;
            }
            consumer
                .assign(&tpl)
                .map_err(|e| KafkaError::client("assigning partitions for timestamps", e))?;
            let mut out = BTreeMap::new();
            let deadline = std::time::Instant::now() + wait;
            while out.len() < positions.len() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                if let Some(Ok(m)) = consumer.poll(left.min(Duration::from_millis(200))) {
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    if let Some(ts) = m.timestamp().to_millis() {
                        out.entry(tp).or_insert(ts);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The first offset of each partition whose message timestamp is at or after `timestamp_ms`
    /// (Kafka's offsets-for-times); the high-water mark where no such message exists yet.
    pub async fn offsets_for_time(
        &self,
        partitions: &[TopicPartition],
        timestamp_ms: i64,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let watermarks = self.watermarks(partitions).await?;
        let (c, partitions) = (Arc::clone(&self.consumer), partitions.to_vec());
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for tp in &partitions {
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(timestamp_ms))
                    .map_err(|e| KafkaError::client(format!("looking up {tp} by time"), e))?;
            }
            let found = c
                .offsets_for_times(tpl, TIMEOUT)
                .map_err(|e| KafkaError::client("looking up offsets for a timestamp", e))?;
            let mut out = BTreeMap::new();
            for el in found.elements() {
                let tp = TopicPartition::new(el.topic(), el.partition());
                if let Err(e) = el.error() {
                    return Err(KafkaError::client(format!("looking up {tp} by time"), e).into());
                }
                let high = watermarks.get(&tp).map_or(0, |w| w.high);
                let offset = match el.offset() {
                    Offset::Offset(o) => o,
                    // No message at or after the timestamp: the next message to be written.
                    _ => high,
                };
                out.insert(tp, offset);
            }
            Ok(out)
        })
        .await
    }
}
