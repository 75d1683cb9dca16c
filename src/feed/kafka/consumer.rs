//! The Kafka change feed.
//!
//! Manual `assign()` of this process's partitions at explicit offsets; no consumer group, no
//! offset commits (offsets live in PostgreSQL). A reader task on the tokio runtime copies what
//! librdkafka has ready into one buffer per batch (bodies and keys back to back: one allocation
//! per batch, not per message) and sends the batch through a bounded channel, so a slow pillow
//! stops the reader, librdkafka's bounded prefetch queue fills, and fetching pauses: memory stays
//! flat whatever the backlog. The messages are parsed by [`KafkaFeed::next`], on the pillow's own
//! thread, so that reading and parsing run at once on two threads — unless the pillow is behind
//! (the channel is full): then the reader, which would only wait, parses the batch before
//! sending it. Measured: parsing always on the reader made it the bottleneck of a light pillow;
//! parsing always on the pillow's thread slowed a busy one (Python processors); spreading the
//! partitions over several readers cost more CPU than it saved on two cores.
//! `auto.offset.reset` is `error`, so a position lost to retention is reported, never silently
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::context::{self, LoggingContext};
use crate::change::Change;
use crate::error::{KafkaError, Result};
use crate::feed::{ChangeFeed, FeedItem, InvalidMessage, StallProbe};
use crate::partition::TopicPartition;

type Client = StreamConsumer<LoggingContext>;

/// Settings of a [`KafkaFeed`].
#[derive(Debug, Clone)]
pub struct KafkaFeedOptions {
    pub bootstrap_servers: String,
    /// Where `bootstrap_servers` came from (`"[kafka] bootstrap"`, `"settings.KAFKA_BROKERS"`),
    /// named with the address in connection errors and log lines.
    pub bootstrap_setting: Option<String>,
    /// A label for the broker's logs (CommCare's `client_id`); no group is joined.
    pub client_id: String,
    /// CommCare's consumer timeout: a tick after this long without a message.
    pub idle_timeout: Duration,
    /// Messages larger than this become error rows without being parsed. `None` (the
    /// default): each topic's own `max.message.bytes`, read from the broker when the feed
    /// starts (Kafka's default, [`DEFAULT_MAX_MESSAGE_BYTES`], if it cannot be read); see
    /// [`KafkaFeed::message_limits`].
    pub max_message_bytes: Option<usize>,
    /// Capacity of the channel between the reader task and the pillow, in messages.
    pub channel_capacity: usize,
    /// librdkafka's prefetch bound per consumer (`queued.max.messages.kbytes`).
    pub prefetch_kbytes: u32,
    /// Extra librdkafka properties (security, tuning), applied last to the consumer, its stall
    /// probe and the admin client that reads the topics' limits.
    pub client_config: super::KafkaClientConfig,
    /// Tick as soon as every assigned partition is read up to its high-water mark (as
    /// librdkafka last saw it), instead of after `idle_timeout` without a message: what a
    /// pillow run `--until-idle` wants. Off by default (a running pillow ticks every
    /// `idle_timeout`, CommCare's rhythm).
    pub tick_at_end: bool,
}

impl KafkaFeedOptions {
    /// `kafka at <address>`, and the setting it came from when known.
    pub fn describe_bootstrap(&self) -> String {
        match &self.bootstrap_setting {
            Some(setting) => format!("kafka at {} (from {setting})", self.bootstrap_servers),
            None => format!("kafka at {}", self.bootstrap_servers),
        }
    }

    pub fn new(bootstrap_servers: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            bootstrap_setting: None,
            client_id: client_id.into(),
            idle_timeout: Duration::from_secs(10),
            max_message_bytes: None,
            channel_capacity: 2048,
            prefetch_kbytes: 16 * 1024,
            client_config: super::KafkaClientConfig::new(),
            tick_at_end: false,
        }
    }
}

/// Kafka's (and CommCare's) default `max.message.bytes`: 1 MiB plus the record-batch overhead.
/// The limit of a topic whose own setting cannot be read.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The size limit of one topic's messages, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageLimit {
    pub topic: String,
    pub bytes: usize,
    pub source: LimitSource,
}

/// Where a [`MessageLimit`] comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// The feed's `max_message_bytes` setting.
    Setting,
    /// The topic's `max.message.bytes`, read from the broker.
    Topic,
    /// [`DEFAULT_MAX_MESSAGE_BYTES`]: the topic's setting could not be read (the reason).
    Default(String),
}

impl MessageLimit {
    /// Where the limit comes from, as the error row of an oversize message says it.
    pub fn origin(&self) -> String {
        match &self.source {
            LimitSource::Setting => "setting `max_message_bytes`".to_owned(),
            LimitSource::Topic => format!("topic `{}` max.message.bytes", self.topic),
            LimitSource::Default(_) => format!(
                "Kafka's default, topic `{}` max.message.bytes could not be read",
                self.topic
            ),
        }
    }
}

/// The message size limit of each of `topics` (in order): the `max_message_bytes` setting if
/// there is one, else the topic's `max.message.bytes` from the broker, else
/// [`DEFAULT_MAX_MESSAGE_BYTES`]. Logs the limit in force and where it comes from.
pub async fn resolve_message_limits(
    options: &KafkaFeedOptions,
    topics: &[String],
) -> Vec<MessageLimit> {
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        let (bytes, source) = match options.max_message_bytes {
            Some(n) => (n, LimitSource::Setting),
            None => match topic_max_message_bytes(options, topic).await {
                Ok(n) => (n, LimitSource::Topic),
                Err(e) => (
                    DEFAULT_MAX_MESSAGE_BYTES,
                    LimitSource::Default(e.to_string()),
                ),
            },
        };
        let limit = MessageLimit {
            topic: topic.clone(),
            bytes,
            source,
        };
        if let LimitSource::Default(why) = &limit.source {
            tracing::warn!(topic = %topic, limit_bytes = bytes, error = %why,
                "cannot read the topic's max.message.bytes; larger messages become error rows at Kafka's default limit");
        } else {
            tracing::info!(topic = %topic, limit_bytes = bytes, from = %limit.origin(),
                "messages larger than the limit become error rows");
        }
        out.push(limit);
    }
    out
}

async fn topic_max_message_bytes(options: &KafkaFeedOptions, topic: &str) -> Result<usize> {
    super::admin::KafkaAdmin::with_config(&options.bootstrap_servers, &options.client_config)?
        .topic_max_message_bytes(topic)
        .await
}

/// A change feed over Kafka topics.
pub struct KafkaFeed {
    topics: Vec<String>,
    options: KafkaFeedOptions,
    /// Per topic (same order), once resolved at the first `assign`.
    limits: Option<Arc<[MessageLimit]>>,
    consumer: Arc<Client>,
    rx: Option<mpsc::Receiver<Result<RawBatch>>>,
    /// The last batch received, and where the pillow is in it.
    current: Option<Cursor>,
    reader: Option<JoinHandle<()>>,
    /// Tests only: pause the partitions of the next `assign` (a client that delivers nothing
    /// while the broker has messages, as a stuck one does).
    pause_next_assign: bool,
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
            crate::partition::validate_topic_name(t)?;
        }
        let consumer = create_consumer(&options)?;
        Ok(Self {
            topics: topics.to_vec(),
            options,
            limits: None,
            consumer: Arc::new(consumer),
            rx: None,
            current: None,
            reader: None,
            pause_next_assign: false,
        })
    }

    /// Tests only: the next [`assign`](ChangeFeed::assign) pauses what it assigns, so this
    /// client delivers nothing while the broker has messages (a stand-in for the stuck client
    /// of the stall watch); a [`reconnect`](ChangeFeed::reconnect)'s new client is not paused.
    #[cfg(feature = "testing")]
    pub fn pause_on_next_assign(&mut self) {
        self.pause_next_assign = true;
    }

    /// The message size limit of each topic, resolved once (see
    /// [`resolve_message_limits`]); the first `assign` resolves it if this was not called.
    pub async fn message_limits(&mut self) -> Arc<[MessageLimit]> {
        if let Some(l) = &self.limits {
            return Arc::clone(l);
        }
        let limits: Arc<[MessageLimit]> = resolve_message_limits(&self.options, &self.topics)
            .await
            .into();
        self.limits = Some(Arc::clone(&limits));
        limits
    }

    fn stop_reader(&mut self) {
        if let Some(h) = self.reader.take() {
            h.abort();
        }
        self.rx = None;
        self.current = None;
    }

    /// The next item of the current batch, parsed now.
    fn next_at_hand(&mut self) -> Option<FeedItem> {
        let cursor = self.current.as_mut()?;
        if let Some(entry) = cursor.entries.next() {
            Some(cursor.batch_item(entry, self.limits.as_deref().unwrap_or_default()))
        } else {
            self.current = None;
            None
        }
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

/// How long a leader election (a topic just created, a broker restarting) is waited out when a
/// partition's watermarks are read.
const LEADER_ELECTION_WAIT: Duration = Duration::from_secs(15);

/// The watermarks of `tp`. "Not leader" / "leader not available" mean an election is in
/// progress: retried every 200 ms for up to [`LEADER_ELECTION_WAIT`], then an error naming the
/// partition, the broker and librdkafka's own text.
fn watermarks_of<C: rdkafka::consumer::Consumer<LoggingContext>>(
    consumer: &C,
    tp: &TopicPartition,
    broker: &str,
) -> Result<(i64, i64)> {
    use rdkafka::types::RDKafkaErrorCode;
    let deadline = std::time::Instant::now() + LEADER_ELECTION_WAIT;
    loop {
        match consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(30)) {
            Ok(w) => return Ok(w),
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::NotLeaderForPartition
                            | RDKafkaErrorCode::LeaderNotAvailable
                    )
                ) && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(partition = %tp, error = %e, "leader election in progress; reading the watermarks again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(KafkaError::client(
                    format!("fetching the watermarks of {tp} from {broker}"),
                    e,
                )
                .into())
            }
        }
    }
}

/// The feed's librdkafka settings (shared by its consumer and its stall probe).
fn client_config(options: &KafkaFeedOptions, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &options.bootstrap_servers)
        .set("client.id", client_id)
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
    context::set_log_level(&mut cfg);
    options.client_config.apply(&mut cfg);
    cfg
}

fn create_consumer(options: &KafkaFeedOptions) -> Result<Client> {
    client_config(options, &options.client_id)
        .create_with_context(LoggingContext {
            bootstrap: options.bootstrap_servers.clone(),
        })
        .map_err(|e| {
            KafkaError::client(
                format!("creating a consumer for {}", options.bootstrap_servers),
                e,
            )
            .into()
        })
}

/// A client error with the broker's address in its context (librdkafka's own text, such as
/// "Meta data fetch error: BrokerTransportFailure", does not name it).
fn naming_broker(e: crate::Error, broker: &str) -> crate::Error {
    match e {
        crate::Error::Kafka(KafkaError::Client { context, source }) => KafkaError::Client {
            context: format!("{context} from {broker}"),
            source,
        }
        .into(),
        other => other,
    }
}

/// How long the probe waits for the broker's answers and for a message.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The stall probe: a fresh client reads the watermarks of `positions` and, where the
/// high-water mark is past the position, tries to read a message there. Only a message read
/// means stuck: a backlog of transaction markers or aborted records has nothing to read.
fn probe_with_fresh_client(
    options: &KafkaFeedOptions,
    positions: &[(TopicPartition, i64)],
) -> Result<StallProbe> {
    let probe: BaseConsumer<LoggingContext> =
        match client_config(options, &format!("{}-probe", options.client_id)).create_with_context(
            LoggingContext {
                bootstrap: options.bootstrap_servers.clone(),
            },
        ) {
            Ok(c) => c,
            Err(e) => return Ok(StallProbe::Unreachable(e.to_string())),
        };
    let mut behind = 0;
    let mut tpl = TopicPartitionList::new();
    let mut partitions = Vec::new();
    for (tp, position) in positions {
        match probe.fetch_watermarks(&tp.topic, tp.partition, PROBE_TIMEOUT) {
            Ok((_, high)) if high > *position => {
                behind += high - position;
                partitions.push(tp.clone());
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*position))
                    .map_err(|e| KafkaError::client(format!("probing {tp} at {position}"), e))?;
            }
            Ok(_) => {}
            Err(e) => {
                return Ok(StallProbe::Unreachable(format!(
                    "fetching the watermarks of {tp}: {e}"
                )))
            }
        }
    }
    if partitions.is_empty() {
        return Ok(StallProbe::Idle);
    }
    probe
        .assign(&tpl)
        .map_err(|e| KafkaError::client("assigning the probe's partitions", e))?;
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match probe.poll(left) {
            Some(
                Ok(_) | Err(RdKafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)),
            ) => {
                return Ok(StallProbe::Stuck { behind, partitions });
            }
            Some(Err(_)) => {}
            None => break,
        }
    }
    Ok(StallProbe::Idle)
}

#[async_trait]
impl ChangeFeed for KafkaFeed {
    fn topics(&self) -> &[String] {
        &self.topics
    }

    async fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        let consumer = Arc::clone(&self.consumer);
        let topics = self.topics.clone();
        blocking(move || super::admin::partitions_of(consumer.client(), &topics))
            .await
            .map_err(|e| naming_broker(e, &self.options.describe_bootstrap()))
    }

    async fn watermarks(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64, i64)>> {
        let consumer = Arc::clone(&self.consumer);
        let partitions = partitions.to_vec();
        let broker = self.options.describe_bootstrap();
        blocking(move || {
            partitions
                .into_iter()
                .map(|tp| {
                    let (low, high) = watermarks_of(consumer.as_ref(), &tp, &broker)?;
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
        if std::mem::take(&mut self.pause_next_assign) {
            self.consumer
                .pause(&tpl)
                .map_err(|e| KafkaError::client("pausing partitions (test)", e))?;
        }
        if positions.is_empty() {
            return Ok(());
        }
        let limits = self.message_limits().await;
        // The channel carries batches of up to READ_BATCH items: bound it in messages.
        let (tx, rx) = mpsc::channel((self.options.channel_capacity / READ_BATCH).max(1));
        let consumer = Arc::clone(&self.consumer);
        let idle = self.options.idle_timeout;
        let ends = self.options.tick_at_end.then(|| EndWatch::new(positions));
        self.reader = Some(tokio::spawn(read_loop(consumer, tx, idle, limits, ends)));
        self.rx = Some(rx);
        Ok(())
    }

    fn try_next(&mut self) -> Option<FeedItem> {
        self.next_at_hand()
    }

    async fn probe(&mut self, positions: &[(TopicPartition, i64)]) -> Result<StallProbe> {
        let options = self.options.clone();
        let positions = positions.to_vec();
        blocking(move || probe_with_fresh_client(&options, &positions)).await
    }

    async fn reconnect(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        self.stop_reader();
        let fresh = Arc::new(create_consumer(&self.options)?);
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Closing a client may wait on librdkafka's threads: not on an async worker.
        tokio::task::spawn_blocking(move || drop(old));
        self.assign(positions).await
    }

    fn source(&self) -> String {
        self.options.describe_bootstrap()
    }

    async fn next(&mut self) -> Result<Option<FeedItem>> {
        if let Some(item) = self.next_at_hand() {
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
                    let RawBatch { buf, entries } = batch?;
                    self.current = Some(Cursor {
                        buf,
                        entries: entries.into_iter(),
                    });
                    Ok(self.next_at_hand())
                }
                None => Err(KafkaError::Other("the kafka reader task stopped".into()).into()),
            },
        }
    }
}

/// Most messages the reader hands over at once: whatever librdkafka already has, up to this.
const READ_BATCH: usize = 256;

/// What the reader hands over: message bodies and keys copied back to back into one buffer.
struct RawBatch {
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

enum Entry {
    /// A message, parsed by the pillow's thread. `topic` indexes the feed's topics.
    Message {
        topic: usize,
        partition: i32,
        offset: i64,
        body: std::ops::Range<usize>,
        key: Option<std::ops::Range<usize>>,
    },
    /// Anything else: a tick, a lost position, a message the reader already judged.
    Item(FeedItem),
}

/// A batch being handed out.
struct Cursor {
    buf: Vec<u8>,
    entries: std::vec::IntoIter<Entry>,
}

impl Cursor {
    fn batch_item(&self, entry: Entry, limits: &[MessageLimit]) -> FeedItem {
        match entry {
            Entry::Item(item) => item,
            Entry::Message {
                topic,
                partition,
                offset,
                body,
                key,
            } => to_item(
                &limits[topic],
                partition,
                offset,
                &self.buf[body],
                key.map(|k| &self.buf[k]),
            ),
        }
    }
}

impl RawBatch {
    /// A batch whose buffer starts at `bytes` (the last batch's size: no regrowth).
    fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(READ_BATCH),
        }
    }

    fn push_message<M: Message>(&mut self, msg: &M, limits: &[MessageLimit]) {
        let payload = msg.payload().unwrap_or_default();
        // Only assigned partitions are read, and they are all of the feed's topics (whose
        // limits are resolved before reading).
        let Some(topic) = limits.iter().position(|l| l.topic == msg.topic()) else {
            let item = invalid_item(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                payload,
                msg.key(),
                "message of a topic the feed does not read".into(),
            );
            self.entries.push(Entry::Item(item));
            return;
        };
        // An oversized message is judged here, without copying its body.
        if payload.len() > limits[topic].bytes {
            let item = to_item(
                &limits[topic],
                msg.partition(),
                msg.offset(),
                payload,
                msg.key(),
            );
            self.entries.push(Entry::Item(item));
            return;
        }
        let mut copy = |bytes: &[u8]| {
            let start = self.buf.len();
            self.buf.extend_from_slice(bytes);
            start..self.buf.len()
        };
        let body = copy(payload);
        let key = msg.key().map(&mut copy);
        self.entries.push(Entry::Message {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            body,
            key,
        });
    }

    /// Parses every message of the batch here, on the reader.
    fn parse_all(&mut self, limits: &[MessageLimit]) {
        for entry in &mut self.entries {
            if let Entry::Message {
                topic,
                partition,
                offset,
                body,
                key,
            } = entry
            {
                let item = to_item(
                    &limits[*topic],
                    *partition,
                    *offset,
                    &self.buf[body.clone()],
                    key.clone().map(|k| &self.buf[k]),
                );
                *entry = Entry::Item(item);
            }
        }
        // Every entry is parsed: the copies are not needed any more.
        self.buf = Vec::new();
    }

    fn push(&mut self, item: FeedItem) {
        self.entries.push(Entry::Item(item));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch ends with a tick or a lost position (nothing may follow those).
    fn closed(&self) -> bool {
        matches!(
            self.entries.last(),
            Some(Entry::Item(FeedItem::Tick | FeedItem::OffsetOutOfRange))
        )
    }
}

/// The next offset of every assigned partition, to tell when the feed is at its end
/// ([`KafkaFeedOptions::tick_at_end`]).
struct EndWatch {
    next: std::collections::HashMap<String, std::collections::HashMap<i32, i64>>,
}

impl EndWatch {
    /// How often the end is checked while no message comes.
    const EVERY: Duration = Duration::from_millis(200);

    fn new(positions: &[(TopicPartition, i64)]) -> Self {
        let mut next: std::collections::HashMap<String, std::collections::HashMap<i32, i64>> =
            std::collections::HashMap::new();
        for (tp, offset) in positions {
            next.entry(tp.topic.clone())
                .or_default()
                .insert(tp.partition, *offset);
        }
        Self { next }
    }

    fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.next.get_mut(topic).and_then(|t| t.get_mut(&partition)) {
            *p = offset + 1;
        }
    }

    /// Every partition read up to its high-water mark (asked of the broker: one small request
    /// per partition, only while no message comes). A logical start offset is not at the end.
    async fn at_end(&self, consumer: &Arc<Client>) -> bool {
        let wanted: Vec<(String, i32, i64)> = self
            .next
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(|(p, n)| (t.clone(), *p, *n)))
            .collect();
        let c = Arc::clone(consumer);
        tokio::task::spawn_blocking(move || {
            wanted.iter().all(|(topic, partition, next)| {
                matches!(c.fetch_watermarks(topic, *partition, Duration::from_secs(1)),
                    Ok((_, high)) if *next >= 0 && *next >= high)
            })
        })
        .await
        .unwrap_or(false)
    }
}

async fn read_loop(
    consumer: Arc<Client>,
    tx: mpsc::Sender<Result<RawBatch>>,
    idle: Duration,
    limits: Arc<[MessageLimit]>,
    mut ends: Option<EndWatch>,
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
    let mut bytes = 0;
    loop {
        // Wait (up to the idle timeout) for the first message, then take what is ready without
        // waiting: one channel send and one wake-up per batch instead of per message.
        let mut batch = RawBatch::with_capacity(bytes);
        let first = match &ends {
            None => tokio::time::timeout(idle, consumer.recv()).await.ok(),
            Some(watch) => {
                let deadline = tokio::time::Instant::now() + idle;
                loop {
                    let slice = EndWatch::EVERY.min(deadline - tokio::time::Instant::now());
                    match tokio::time::timeout(slice, consumer.recv()).await {
                        Ok(r) => break Some(r),
                        Err(_) if tokio::time::Instant::now() >= deadline => break None,
                        Err(_) => {
                            if watch.at_end(&consumer).await {
                                break None;
                            }
                        }
                    }
                }
            }
        };
        match first {
            None => batch.push(FeedItem::Tick),
            Some(Ok(msg)) => {
                if let Some(watch) = &mut ends {
                    watch.consumed(msg.topic(), msg.partition(), msg.offset());
                }
                batch.push_message(&msg, &limits);
            }
            Some(Err(RdKafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                batch.push(FeedItem::OffsetOutOfRange);
            }
            Some(Err(e)) => {
                warn(&e);
                continue;
            }
        }
        while batch.len() < READ_BATCH && !batch.closed() {
            match consumer.recv().now_or_never() {
                None => break,
                Some(Ok(msg)) => {
                    if let Some(watch) = &mut ends {
                        watch.consumed(msg.topic(), msg.partition(), msg.offset());
                    }
                    batch.push_message(&msg, &limits);
                }
                Some(Err(RdKafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    batch.push(FeedItem::OffsetOutOfRange);
                }
                Some(Err(e)) => {
                    warn(&e);
                    break;
                }
            }
        }
        bytes = batch.buf.len();
        // Who parses: the pillow's thread, unless the pillow is behind (the channel is full)
        // and the reader would only wait; then the reader parses the batch while it waits. A
        // light pillow gets reading and parsing on two threads, a busy one (Python processors,
        // sinks) gets its changes parsed.
        let item = match tx.try_send(Ok(batch)) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(mut item)) => {
                if let Ok(batch) = &mut item {
                    batch.parse_all(&limits);
                }
                item
            }
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
}

fn invalid_item(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    key: Option<&[u8]>,
    reason: String,
) -> FeedItem {
    FeedItem::Invalid(Box::new(InvalidMessage {
        topic: topic.to_owned(),
        partition,
        offset,
        // Decoded only for an invalid message: a valid one takes its id from the body.
        key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
        reason,
        excerpt: crate::feed::excerpt(&payload[..payload.len().min(200)]),
        size: payload.len(),
    }))
}

fn to_item(
    limit: &MessageLimit,
    partition: i32,
    offset: i64,
    payload: &[u8],
    key: Option<&[u8]>,
) -> FeedItem {
    let invalid =
        |reason: String| invalid_item(&limit.topic, partition, offset, payload, key, reason);
    if payload.len() > limit.bytes {
        return invalid(format!(
            "message of {} bytes exceeds the limit of {} bytes ({})",
            payload.len(),
            limit.bytes,
            limit.origin()
        ));
    }
    match Change::from_message(&limit.topic, partition, offset, payload) {
        Ok(c) => FeedItem::Change(Box::new(c)),
        Err(e) => invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversize_message_names_the_limit_it_hit() {
        let body = br#"{"document_id": "a", "data_source_type": "sql", "data_source_name": "x"}"#;
        let limit = |bytes, source| MessageLimit {
            topic: "form-sql".into(),
            bytes,
            source,
        };
        let reason = |l: &MessageLimit| match to_item(l, 0, 7, body, Some(b"a")) {
            FeedItem::Invalid(m) => {
                assert_eq!(
                    (m.size, m.offset, m.key.as_deref()),
                    (body.len(), 7, Some("a"))
                );
                m.reason
            }
            other => panic!("{other:?}"),
        };
        let n = body.len();
        assert_eq!(
            reason(&limit(10, LimitSource::Topic)),
            format!(
                "message of {n} bytes exceeds the limit of 10 bytes (topic `form-sql` max.message.bytes)"
            )
        );
        assert_eq!(
            reason(&limit(10, LimitSource::Setting)),
            format!(
                "message of {n} bytes exceeds the limit of 10 bytes (setting `max_message_bytes`)"
            )
        );
        assert!(
            reason(&limit(10, LimitSource::Default("unreachable".into()))).ends_with(
                "(Kafka's default, topic `form-sql` max.message.bytes could not be read)"
            )
        );
        assert!(matches!(
            to_item(&limit(n, LimitSource::Topic), 0, 7, body, None),
            FeedItem::Change(_)
        ));
    }
}
