//! Publishing changes as CommCare's `ChangeProducer` does: JSON `ChangeMeta` bodies keyed by the
//! document id, `acks=1`, 3 retries, default (key-hash) partitioning.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::change::ChangeMeta;
use crate::error::{KafkaError, Result};

/// A change producer.
#[derive(Clone)]
pub struct ChangeProducer {
    producer: FutureProducer,
}

impl std::fmt::Debug for ChangeProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeProducer").finish_non_exhaustive()
    }
}

impl ChangeProducer {
    pub fn new(bootstrap_servers: &str) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("client.id", "cchq-producer")
            .set("acks", "1")
            .set("retries", "3")
            .set("linger.ms", "5")
            .set("message.max.bytes", "10485760")
            .create()
            .map_err(|e| {
                KafkaError::client(format!("creating a producer for {bootstrap_servers}"), e)
            })?;
        Ok(Self { producer })
    }

    /// Sends one change and waits for the broker; returns (partition, offset).
    pub async fn send_change(&self, topic: &str, meta: &ChangeMeta) -> Result<(i32, i64)> {
        self.send_raw(
            topic,
            None,
            Some(&meta.document_id),
            meta.to_json().as_bytes(),
        )
        .await
    }

    /// Sends a raw body (tests use it for malformed messages); `partition` `None` means key hashing.
    pub async fn send_raw(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        body: &[u8],
    ) -> Result<(i32, i64)> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(body);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| KafkaError::client(format!("publishing to {topic}"), e))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Sends many changes concurrently (bounded in flight) and waits for all of them.
    pub async fn send_changes(
        &self,
        topic: &str,
        metas: impl IntoIterator<Item = ChangeMeta>,
    ) -> Result<u64> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let sent = stream::iter(metas)
            .map(|m| async move { self.send_change(topic, &m).await })
            .buffer_unordered(10_000)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await?;
        Ok(sent)
    }

    /// Waits until every queued message is delivered.
    pub fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| KafkaError::client("flushing the producer", e).into())
    }
}
