//! The Kafka change feed.
//!
//! Manual `assign()` of this process's partitions at explicit offsets; no consumer group, no
//! offset commits (offsets live in PostgreSQL). A reader task on the tokio runtime turns messages
//! into [`FeedItem`]s and sends them through a bounded channel, so a slow pillow stops the reader,
//! librdkafka's bounded prefetch queue fills, and fetching pauses: memory stays flat whatever the
//! backlog. `auto.offset.reset` is `error`, so a position lost to retention is reported, never
//! silently skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::change::Change;
use crate::error::{KafkaError, Result};
use crate::feed::{ChangeFeed, FeedItem, InvalidMessage, TopicPartition};

/// Settings of a [`KafkaFeed`].
#[derive(Debug, Clone)]
pub struct KafkaFeedOptions {
    pub bootstrap_servers: String,
    /// A label for the broker's logs (CommCare's `client_id`); no group is joined.
    pub client_id: String,
    /// CommCare's consumer timeout: a tick after this long without a message.
    pub idle_timeout: Duration,
    /// Messages larger than this become errors without being parsed.
    pub max_message_bytes: usize,
    /// Capacity of the channel between the reader task and the pillow, in messages.
    pub channel_capacity: usize,
    /// librdkafka's prefetch bound per consumer (`queued.max.messages.kbytes`).
    pub prefetch_kbytes: u32,
    /// Extra librdkafka settings (e.g. security), applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaFeedOptions {
    pub fn new(bootstrap_servers: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: client_id.into(),
            idle_timeout: Duration::from_secs(10),
            max_message_bytes: 1024 * 1024,
            channel_capacity: 2048,
            prefetch_kbytes: 16 * 1024,
            extra: Vec::new(),
        }
    }
}

/// A change feed over Kafka topics.
pub struct KafkaFeed {
    topics: Vec<String>,
    options: KafkaFeedOptions,
    consumer: Arc<StreamConsumer>,
    rx: Option<mpsc::Receiver<Result<Vec<FeedItem>>>>,
    /// Items of the last batch not yet handed out.
    pending: std::collections::VecDeque<FeedItem>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaFeed")
            .field("topics", &self.topics)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KafkaFeed {
    pub fn new(topics: &[String], options: KafkaFeedOptions) -> Result<Self> {
        for t in topics {
            crate::checkpoint::validate_topic_name(t)?;
        }
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &options.bootstrap_servers)
            .set("client.id", &options.client_id)
            // librdkafka requires a group id for a consumer handle; with assign() and no commits
            // no group is ever joined and nothing is stored under it.
            .set("group.id", format!("pillowtop-rs-{}", options.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            .set(
                "queued.max.messages.kbytes",
                options.prefetch_kbytes.to_string(),
            )
            .set("fetch.wait.max.ms", "100")
            // When our queue is full (the pillow is slower than fetching) librdkafka waits this
            // long before fetching again; its 1 s default idles the consumer (measured: 5% of
            // the raw rate at 1 s, ~3× faster at 10 ms, same memory).
            .set("fetch.queue.backoff.ms", "10")
            .set("socket.keepalive.enable", "true");
        for (k, v) in &options.extra {
            cfg.set(k, v);
        }
        let consumer: StreamConsumer = cfg.create().map_err(|e| {
            KafkaError::client(
                format!("creating a consumer for {}", options.bootstrap_servers),
                e,
            )
        })?;
        Ok(Self {
            topics: topics.to_vec(),
            options,
            consumer: Arc::new(consumer),
            rx: None,
            pending: std::collections::VecDeque::new(),
            reader: None,
        })
    }

    fn stop_reader(&mut self) {
        if let Some(h) = self.reader.take() {
            h.abort();
        }
        self.rx = None;
        self.pending.clear();
    }
}

impl Drop for KafkaFeed {
    fn drop(&mut self) {
        self.stop_reader();
    }
}

/// Runs a blocking librdkafka call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KafkaError::Other(format!("blocking kafka call panicked: {e}")))?
}

#[async_trait]
impl ChangeFeed for KafkaFeed {
    fn topics(&self) -> &[String] {
        &self.topics
    }

    async fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        let consumer = Arc::clone(&self.consumer);
        let topics = self.topics.clone();
        blocking(move || super::admin::partitions_of(consumer.client(), &topics)).await
    }

    async fn watermarks(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64, i64)>> {
        let consumer = Arc::clone(&self.consumer);
        let partitions = partitions.to_vec();
        blocking(move || {
            partitions
                .into_iter()
                .map(|tp| {
                    let (low, high) = consumer
                        .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(30))
                        .map_err(|e| {
                            KafkaError::client(format!("fetching the watermarks of {tp}"), e)
                        })?;
                    Ok((tp, low, high))
                })
                .collect()
        })
        .await
    }

    async fn assign(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        self.stop_reader();
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in positions {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                .map_err(|e| KafkaError::client(format!("assigning {tp} at {offset}"), e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| KafkaError::client("assigning partitions", e))?;
        if positions.is_empty() {
            return Ok(());
        }
        // The channel carries batches of up to READ_BATCH items: bound it in messages.
        let (tx, rx) = mpsc::channel((self.options.channel_capacity / READ_BATCH).max(1));
        let consumer = Arc::clone(&self.consumer);
        let (idle, max_bytes) = (self.options.idle_timeout, self.options.max_message_bytes);
        self.reader = Some(tokio::spawn(read_loop(consumer, tx, idle, max_bytes)));
        self.rx = Some(rx);
        Ok(())
    }

    fn try_next(&mut self) -> Option<FeedItem> {
        self.pending.pop_front()
    }

    async fn next(&mut self) -> Result<Option<FeedItem>> {
        if let Some(item) = self.pending.pop_front() {
            return Ok(Some(item));
        }
        match self.rx.as_mut() {
            // No partitions assigned (e.g. more processes than partitions): only ticks.
            None => {
                tokio::time::sleep(self.options.idle_timeout).await;
                Ok(Some(FeedItem::Tick))
            }
            Some(rx) => match rx.recv().await {
                Some(batch) => {
                    self.pending.extend(batch?);
                    Ok(self.pending.pop_front())
                }
                None => Err(KafkaError::Other("the kafka reader task stopped".into()).into()),
            },
        }
    }
}

/// Most messages the reader hands over at once: whatever librdkafka already has, up to this.
const READ_BATCH: usize = 256;

async fn read_loop(
    consumer: Arc<StreamConsumer>,
    tx: mpsc::Sender<Result<Vec<FeedItem>>>,
    idle: Duration,
    max_bytes: usize,
) {
    use futures::FutureExt;
    let mut last_warning: Option<std::time::Instant> = None;
    let mut warn = |e: &RdKafkaError| {
        // Broker outages and other transient client errors: librdkafka reconnects and retries
        // by itself; we say so in the log, at most every 10 s.
        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(error = %e, "kafka consumer error; librdkafka keeps retrying");
            last_warning = Some(std::time::Instant::now());
        }
    };
    loop {
        // Wait (up to the idle timeout) for the first message, then take what is ready without
        // waiting: one channel send and one wake-up per batch instead of per message.
        let mut batch = Vec::with_capacity(READ_BATCH);
        match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => batch.push(FeedItem::Tick),
            Ok(Ok(msg)) => batch.push(to_item(&msg, max_bytes)),
            Ok(Err(RdKafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                batch.push(FeedItem::OffsetOutOfRange);
            }
            Ok(Err(e)) => {
                warn(&e);
                continue;
            }
        }
        while batch.len() < READ_BATCH
            && !matches!(
                batch.last(),
                Some(FeedItem::Tick | FeedItem::OffsetOutOfRange)
            )
        {
            match consumer.recv().now_or_never() {
                None => break,
                Some(Ok(msg)) => batch.push(to_item(&msg, max_bytes)),
                Some(Err(RdKafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    batch.push(FeedItem::OffsetOutOfRange);
                }
                Some(Err(e)) => {
                    warn(&e);
                    break;
                }
            }
        }
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
    }
}

fn to_item<M: Message>(msg: &M, max_bytes: usize) -> FeedItem {
    let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
    let payload = msg.payload().unwrap_or_default();
    let invalid = |reason: String| {
        FeedItem::Invalid(Box::new(InvalidMessage {
            topic: topic.to_owned(),
            partition,
            offset,
            // Decoded only for an invalid message: a valid one takes its id from the body.
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            reason,
            excerpt: String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned(),
            size: payload.len(),
        }))
    };
    if payload.len() > max_bytes {
        return invalid(format!(
            "message of {} bytes exceeds the limit of {max_bytes} bytes",
            payload.len()
        ));
    }
    match Change::from_message(topic, partition, offset, payload) {
        Ok(c) => FeedItem::Change(Box::new(c)),
        Err(e) => invalid(e.to_string()),
    }
}
