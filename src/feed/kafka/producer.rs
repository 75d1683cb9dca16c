//! Publishing changes as CommCare's `ChangeProducer` does (docs/commcare-pillowtop.md §1.4):
//! JSON `ChangeMeta` bodies keyed by `str(document_id)`, `client.id=cchq-producer`, `acks=1`,
//! 3 retries, and murmur2 key hashing (`partitioner=murmur2_random`, the partitioner of the Java
//! client and of CommCare's kafka-python producer, so both put a document on the same partition;
//! librdkafka's own default, `consistent_random`, hashes with CRC32 and would not).
//!
//! Every delivery is bounded: `message.timeout.ms` is the producer's timeout, so a send to an
//! unreachable broker fails within it (plus librdkafka's one-second timer granularity), and a
//! topic the broker does not have within half of it (at most 2 s), with a
//! [`KafkaError::Publishing`] naming the topic, the document and librdkafka's error.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::{Map, Value};

use crate::change::{commcare_datetime, ChangeMeta, ChangeParseError};
use crate::error::{KafkaError, Result};

/// How long a send may take, by default (CommCare's kafka-python waits up to 30 s; a Django
/// request should not).
pub const DEFAULT_PRODUCER_TIMEOUT: Duration = Duration::from_secs(5);

/// The fields CommCare's `ChangeMeta` requires.
pub const REQUIRED_FIELDS: [&str; 3] = ["document_id", "data_source_type", "data_source_name"];

/// How a producer is built: the delivery bound and extra librdkafka properties (security
/// settings and the like), applied after ours.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// The longest a delivery may take (`message.timeout.ms`); at least 1 ms.
    pub timeout: Duration,
    /// Extra librdkafka properties, applied last (they may override ours).
    pub properties: Vec<(String, String)>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            properties: Vec::new(),
        }
    }
}

/// A change producer.
#[derive(Clone)]
pub struct ChangeProducer {
    producer: FutureProducer,
    bootstrap: String,
    timeout: Duration,
}

impl std::fmt::Debug for ChangeProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeProducer")
            .field("bootstrap", &self.bootstrap)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One change handed to librdkafka and not yet confirmed.
#[must_use = "a pending delivery must be awaited to learn whether it arrived"]
pub struct PendingDelivery {
    future: DeliveryFuture,
    topic: String,
    document_id: String,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("topic", &self.topic)
            .field("document_id", &self.document_id)
            .finish_non_exhaustive()
    }
}

impl PendingDelivery {
    /// Waits for the broker's answer: (partition, offset), or the publishing error.
    pub async fn wait(self) -> Result<(i32, i64)> {
        let Self {
            future,
            topic,
            document_id,
        } = self;
        match future.await {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((e, _))) => Err(publishing(&topic, &document_id, e.to_string())),
            Err(_) => Err(publishing(
                &topic,
                &document_id,
                "the producer was closed before the delivery was confirmed".to_owned(),
            )),
        }
    }

    /// The topic the change goes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The change's document id (the message key).
    pub fn document_id(&self) -> &str {
        &self.document_id
    }
}

fn publishing(topic: &str, document_id: &str, reason: String) -> crate::Error {
    KafkaError::Publishing {
        topic: topic.to_owned(),
        document_id: document_id.to_owned(),
        reason,
    }
    .into()
}

impl ChangeProducer {
    /// A producer with a 30 s delivery bound and no extra properties (tests, the demo).
    pub fn new(bootstrap_servers: &str) -> Result<Self> {
        Self::with_options(bootstrap_servers, &ProducerOptions::default())
    }

    /// A producer configured as CommCare's, with `options` (delivery bound, extra properties).
    pub fn with_options(bootstrap_servers: &str, options: &ProducerOptions) -> Result<Self> {
        let timeout_ms = options.timeout.as_millis().clamp(1, i32::MAX as u128);
        // A topic the broker does not have fails fast with "Unknown topic or partition" instead
        // of librdkafka's 30 s wait for it to appear ending in a timeout.
        let propagation_ms = (timeout_ms / 2).clamp(1, 2000);
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set("client.id", "cchq-producer")
            .set("acks", "1")
            .set("retries", "3")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set(
                "topic.metadata.propagation.max.ms",
                propagation_ms.to_string(),
            )
            .set("message.max.bytes", "10485760");
        for (k, v) in &options.properties {
            config.set(k, v);
        }
        let producer = config.create().map_err(|e| {
            KafkaError::client(format!("creating a producer for {bootstrap_servers}"), e)
        })?;
        Ok(Self {
            producer,
            bootstrap: bootstrap_servers.to_owned(),
            timeout: options.timeout,
        })
    }

    /// The bootstrap servers this producer was made for.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The delivery bound (`message.timeout.ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Hands one change to librdkafka without waiting (CommCare's `auto_flush=False`).
    /// Fails at once only when librdkafka refuses it (a full queue, an oversize message).
    pub fn enqueue(&self, topic: &str, meta: &ChangeMeta) -> Result<PendingDelivery> {
        let body = meta.to_json();
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .payload(body.as_str())
            .key(meta.document_id.as_str());
        let future = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| publishing(topic, &meta.document_id, e.to_string()))?;
        Ok(PendingDelivery {
            future,
            topic: topic.to_owned(),
            document_id: meta.document_id.clone(),
        })
    }

    /// Sends one change and waits for the broker; returns (partition, offset).
    pub async fn send_change(&self, topic: &str, meta: &ChangeMeta) -> Result<(i32, i64)> {
        self.enqueue(topic, meta)?.wait().await
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
        self.flush_within(Duration::from_secs(30))
    }

    /// Waits up to `timeout` until every queued message is delivered.
    pub fn flush_within(&self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| KafkaError::client("flushing the producer", e).into())
    }
}

/// A change to publish, from a JSON object as CommCare's `ChangeMeta.to_json()` gives it (or
/// any mapping of its fields): the required fields are checked (all missing ones named), and
/// `publish_timestamp` and `original_publication_datetime` default to `now` when absent or
/// null, as CommCare's `ChangeMeta` defaults them. Unknown fields are kept.
pub fn change_for_publishing(
    value: Value,
    now: DateTime<Utc>,
) -> std::result::Result<ChangeMeta, ChangeParseError> {
    let Value::Object(mut fields) = value else {
        return Err(ChangeParseError(format!(
            "a change to publish must be a JSON object of ChangeMeta's fields, not {}",
            kind(&value)
        )));
    };
    let missing: Vec<&str> = REQUIRED_FIELDS
        .iter()
        .copied()
        .filter(|f| match fields.get(*f) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        })
        .collect();
    if !missing.is_empty() {
        return Err(ChangeParseError(format!(
            "the change to publish lacks the required field(s) {} (CommCare's ChangeMeta \
             requires document_id, data_source_type such as \"sql\" or \"couch\", and \
             data_source_name such as \"form-sql\")",
            missing.join(", ")
        )));
    }
    for field in ["publish_timestamp", "original_publication_datetime"] {
        default_now(&mut fields, field, now);
    }
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| ChangeParseError(format!("the change to publish is not valid: {e}")))
}

fn default_now(fields: &mut Map<String, Value>, field: &str, now: DateTime<Utc>) {
    if matches!(fields.get(field), None | Some(Value::Null)) {
        fields.insert(
            field.to_owned(),
            Value::String(commcare_datetime::format(&now)),
        );
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2024-05-06T07:08:09.123456Z".parse().expect("datetime")
    }

    #[test]
    fn required_fields_are_named_all_at_once() {
        let err =
            change_for_publishing(json!({"document_id": "d1", "data_source_name": ""}), now())
                .expect_err("incomplete");
        assert!(
            err.0
                .contains("required field(s) data_source_type, data_source_name"),
            "{err}"
        );
        let err = change_for_publishing(json!(["d1"]), now()).expect_err("a list");
        assert!(err.0.contains("not a list"), "{err}");
    }

    #[test]
    fn timestamps_default_to_now_and_are_written_as_commcare_does() {
        let meta = change_for_publishing(
            json!({"document_id": 7, "data_source_type": "sql", "data_source_name": "form-sql",
                   "publish_timestamp": null, "custom": {"a": 1}}),
            now(),
        )
        .expect("valid");
        assert_eq!(meta.document_id, "7");
        assert_eq!(meta.publish_timestamp, Some(now()));
        assert_eq!(meta.original_publication_datetime, Some(now()));
        assert_eq!(meta.extra.get("custom"), Some(&json!({"a": 1})));
        let body: Value = serde_json::from_str(&meta.to_json()).expect("json");
        assert_eq!(body["publish_timestamp"], "2024-05-06T07:08:09.123456Z");
        assert_eq!(
            body["original_publication_datetime"],
            "2024-05-06T07:08:09.123456Z"
        );
    }

    #[test]
    fn given_timestamps_are_kept_and_normalised_to_utc() {
        let meta = change_for_publishing(
            json!({"document_id": "d", "data_source_type": "couch", "data_source_name": "db",
                   "publish_timestamp": "2020-01-01T01:00:00+01:00",
                   "original_publication_datetime": "2019-12-31T00:00:00.5Z", "attempts": 2}),
            now(),
        )
        .expect("valid");
        let body: Value = serde_json::from_str(&meta.to_json()).expect("json");
        assert_eq!(body["publish_timestamp"], "2020-01-01T00:00:00.000000Z");
        assert_eq!(
            body["original_publication_datetime"],
            "2019-12-31T00:00:00.500000Z"
        );
        assert_eq!(body["attempts"], 2);
    }

    #[test]
    fn a_mistyped_field_is_an_error_naming_it() {
        let err = change_for_publishing(
            json!({"document_id": "d", "data_source_type": "sql", "data_source_name": "x",
                   "is_deletion": "yes"}),
            now(),
        )
        .expect_err("mistyped");
        assert!(err.0.contains("not valid"), "{err}");
    }
}
