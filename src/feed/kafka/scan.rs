//! Reading topics for a person rather than a pillow (`tail_kafka`, `search_kafka_changes`,
//! `ptop_dump_remaining_changes`): from explicit offsets, either up to fixed end offsets or
//! following new messages, until a stop token is cancelled or the caller has seen enough.
//! Manual assignment, no group, nothing committed; the pillows' checkpoints are never touched.
//!
//! librdkafka blocks, so the consumer polls on a blocking thread (waking every 200 ms to look
//! at the stop token) and hands messages over a bounded channel to the caller's task.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::context::LoggingContext;
use crate::error::{KafkaError, Result};
use crate::partition::TopicPartition;

/// The feed's logging context, quiet about the end-of-partition events a scan asks for.
struct ScanContext(LoggingContext);

impl rdkafka::client::ClientContext for ScanContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        if !matches!(error, RdKafkaError::PartitionEOF(_)) {
            self.0.error(error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ScanContext {}

type Scanner = BaseConsumer<ScanContext>;

/// Where a scan reads.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub bootstrap_servers: String,
    /// The first offset to read of each partition.
    pub start: Vec<(TopicPartition, i64)>,
    /// `None`: follow new messages until stopped. `Some(end)`: stop each partition before
    /// `end[tp]` (exclusive; a partition missing from `end` is not read), and the scan when
    /// every partition is done.
    pub end: Option<BTreeMap<TopicPartition, i64>>,
}

/// One message as read.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub tp: TopicPartition,
    pub offset: i64,
    /// The message's timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub body: Option<Vec<u8>>,
}

/// Why a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanEnd {
    /// Every partition reached its end offset.
    Done,
    /// The caller said it had enough (a limit).
    Enough,
    /// The stop token was cancelled (Ctrl-C).
    Stopped,
}

/// Reads `req`, calling `each` for every message on the calling task (`false` ends the scan).
pub async fn scan<F>(req: ScanRequest, stop: &CancellationToken, mut each: F) -> Result<ScanEnd>
where
    F: FnMut(RawMessage) -> bool,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RawMessage>(256);
    let inner = stop.child_token();
    let reader_stop = inner.clone();
    let reader = tokio::task::spawn_blocking(move || read(&req, &reader_stop, &tx));
    let mut end = None;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    if !each(m) {
                        end = Some(ScanEnd::Enough);
                        break;
                    }
                }
                None => break,
            },
            () = stop.cancelled() => {
                end = Some(ScanEnd::Stopped);
                break;
            }
        }
    }
    inner.cancel();
    drop(rx);
    let read = reader
        .await
        .map_err(|e| KafkaError::Other(format!("the kafka scan thread panicked: {e}")))?;
    read?;
    Ok(end.unwrap_or(if stop.is_cancelled() {
        ScanEnd::Stopped
    } else {
        ScanEnd::Done
    }))
}

/// The blocking reader: returns when done, stopped, or the receiver is gone.
fn read(
    req: &ScanRequest,
    stop: &CancellationToken,
    tx: &tokio::sync::mpsc::Sender<RawMessage>,
) -> Result<()> {
    let mut pending: BTreeSet<TopicPartition> = req
        .start
        .iter()
        .filter(|(tp, start)| {
            req.end
                .as_ref()
                .is_none_or(|e| e.get(tp).is_some_and(|end| start < end))
        })
        .map(|(tp, _)| tp.clone())
        .collect();
    if pending.is_empty() && req.end.is_some() {
        return Ok(());
    }
    let mut cfg = ClientConfig::new();
    super::context::set_log_level(&mut cfg);
    let consumer: Scanner = cfg
        .set("bootstrap.servers", &req.bootstrap_servers)
        .set("client.id", "pillowtop-scan")
        .set("group.id", "pillowtop-rs-scan")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(ScanContext(LoggingContext {
            bootstrap: req.bootstrap_servers.clone(),
        }))
        .map_err(|e| {
            KafkaError::client(
                format!("creating a kafka consumer for {}", req.bootstrap_servers),
                e,
            )
        })?;
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in &req.start {
        if pending.contains(tp) {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                .map_err(|e| KafkaError::client(format!("assigning {tp} at {offset}"), e))?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| KafkaError::client("assigning partitions to read", e))?;
    while !stop.is_cancelled() && (req.end.is_none() || !pending.is_empty()) {
        match consumer.poll(Duration::from_millis(200)) {
            // Reached the partition's current end: a fixed-end scan is done with it (its end
            // offset was at most the high-water mark when the scan was planned).
            Some(Err(RdKafkaError::PartitionEOF(p))) if req.end.is_some() => {
                pending.retain(|tp| tp.partition != p || !is_eof_of(&consumer, tp));
            }
            // Nothing yet, or the end of a partition a following scan goes on waiting at.
            None | Some(Err(RdKafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => {
                let tp = TopicPartition::new(m.topic(), m.partition());
                if let Some(end) = &req.end {
                    let stop_at = end.get(&tp).copied().unwrap_or(0);
                    if m.offset() + 1 >= stop_at {
                        pending.remove(&tp);
                    }
                    if m.offset() >= stop_at {
                        continue;
                    }
                }
                let raw = RawMessage {
                    tp,
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    body: m.payload().map(<[u8]>::to_vec),
                };
                if tx.blocking_send(raw).is_err() {
                    return Ok(());
                }
            }
            Some(Err(e)) => {
                return Err(KafkaError::client("reading messages", e).into());
            }
        }
    }
    Ok(())
}

/// Whether `tp` is at its high-water mark (the EOF event names only the partition number).
fn is_eof_of(consumer: &Scanner, tp: &TopicPartition) -> bool {
    let Ok(pos) = consumer.position() else {
        return false;
    };
    let Some(el) = pos.find_partition(&tp.topic, tp.partition) else {
        return false;
    };
    let Offset::Offset(at) = el.offset() else {
        return false;
    };
    consumer
        .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5))
        .is_ok_and(|(_, high)| at >= high)
}
