//! An in-memory feed with injectable ticks, for unit tests and benches.
//!
//! Entries form one ordered log; each message gets the next offset of its partition. `assign`
//! selects partitions and start offsets like a Kafka consumer; `next` yields matching entries in
//! log order, then `None` (the feed ends) or, with `tick_when_empty`, ticks forever.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{ChangeFeed, FeedItem, InvalidMessage, StallProbe, TopicPartition};
use crate::change::Change;
use crate::error::{KafkaError, Result};

#[derive(Debug, Clone)]
enum Entry {
    Message {
        tp: TopicPartition,
        offset: i64,
        key: Option<String>,
        payload: Vec<u8>,
    },
    /// A change built by the caller (the Python harness's `Change(...)` objects).
    Ready(Box<Change>),
    Tick,
}

/// A scripted feed.
#[derive(Debug, Clone)]
pub struct MemoryFeed {
    topics: Vec<String>,
    partitions: Vec<TopicPartition>,
    log: Vec<Entry>,
    next_offset: HashMap<TopicPartition, i64>,
    /// First available offset per partition (to simulate retention).
    low: HashMap<TopicPartition, i64>,
    assigned: BTreeMap<TopicPartition, i64>,
    cursor: usize,
    pub tick_when_empty: bool,
    /// A stuck client (the stall watch's tests): while this is above 0 the feed only ticks,
    /// [`probe`](ChangeFeed::probe) reports the backlog, and each
    /// [`reconnect`](ChangeFeed::reconnect) takes one off.
    pub stuck: Arc<AtomicU32>,
    /// How many times [`reconnect`](ChangeFeed::reconnect) was called.
    pub reconnects: Arc<AtomicU32>,
}

impl MemoryFeed {
    /// A feed over `topics`, each with `partitions` partitions.
    pub fn new(topics: &[&str], partitions: i32) -> Self {
        let parts: Vec<_> = topics
            .iter()
            .flat_map(|t| (0..partitions).map(|p| TopicPartition::new(*t, p)))
            .collect();
        Self {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            next_offset: parts.iter().map(|tp| (tp.clone(), 0)).collect(),
            low: HashMap::new(),
            partitions: parts,
            log: Vec::new(),
            assigned: BTreeMap::new(),
            cursor: 0,
            tick_when_empty: false,
            stuck: Arc::default(),
            reconnects: Arc::default(),
        }
    }

    /// Appends a message; returns its offset.
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        payload: impl Into<Vec<u8>>,
    ) -> i64 {
        let tp = TopicPartition::new(topic, partition);
        let offset = self.next_offset.get(&tp).copied().unwrap_or(0);
        self.next_offset.insert(tp.clone(), offset + 1);
        self.log.push(Entry::Message {
            tp,
            offset,
            key: key.map(str::to_owned),
            payload: payload.into(),
        });
        offset
    }

    /// Appends a change for `doc_id` (a minimal valid `ChangeMeta`); returns its offset.
    pub fn push_change(&mut self, topic: &str, partition: i32, doc_id: &str) -> i64 {
        let meta = crate::change::ChangeMeta::new(doc_id, "sql", topic);
        self.push(topic, partition, Some(doc_id), meta.to_json())
    }

    /// Appends a ready change at the next offset of its topic and partition (both must be
    /// among the feed's); returns that offset.
    pub fn push_ready(&mut self, mut change: Change) -> i64 {
        let tp = TopicPartition::new(change.topic.clone(), change.partition);
        let offset = self.next_offset.get(&tp).copied().unwrap_or(0);
        self.next_offset.insert(tp, offset + 1);
        change.offset = offset;
        self.log.push(Entry::Ready(Box::new(change)));
        offset
    }

    /// Appends an idle tick.
    pub fn push_tick(&mut self) {
        self.log.push(Entry::Tick);
    }

    /// Makes offsets below `first` unavailable on a partition.
    pub fn set_first_available(&mut self, topic: &str, partition: i32, first: i64) {
        self.low
            .insert(TopicPartition::new(topic, partition), first);
    }
}

#[async_trait]
impl ChangeFeed for MemoryFeed {
    fn topics(&self) -> &[String] {
        &self.topics
    }

    async fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        Ok(self.partitions.clone())
    }

    async fn watermarks(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64, i64)>> {
        partitions
            .iter()
            .map(|tp| {
                let high = *self
                    .next_offset
                    .get(tp)
                    .ok_or_else(|| KafkaError::UnknownTopic(tp.topic.clone()))?;
                Ok((
                    tp.clone(),
                    self.low.get(tp).copied().unwrap_or(0).min(high),
                    high,
                ))
            })
            .collect()
    }

    async fn assign(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        self.assigned = positions.iter().cloned().collect();
        self.cursor = 0;
        Ok(())
    }

    async fn probe(&mut self, positions: &[(TopicPartition, i64)]) -> Result<StallProbe> {
        let mut behind = 0;
        let mut partitions = Vec::new();
        for (tp, position) in positions {
            let high = self.next_offset.get(tp).copied().unwrap_or(0);
            if high > *position {
                behind += high - position;
                partitions.push(tp.clone());
            }
        }
        Ok(if partitions.is_empty() {
            StallProbe::Idle
        } else {
            StallProbe::Stuck { behind, partitions }
        })
    }

    async fn reconnect(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        self.reconnects.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .stuck
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.assign(positions).await
    }

    async fn next(&mut self) -> Result<Option<FeedItem>> {
        if self.stuck.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            return Ok(Some(FeedItem::Tick));
        }
        while let Some(entry) = self.log.get(self.cursor).cloned() {
            self.cursor += 1;
            match entry {
                Entry::Tick => return Ok(Some(FeedItem::Tick)),
                Entry::Ready(change) => {
                    let tp = TopicPartition::new(change.topic.clone(), change.partition);
                    if self
                        .assigned
                        .get(&tp)
                        .is_some_and(|start| change.offset >= *start)
                    {
                        return Ok(Some(FeedItem::Change(change)));
                    }
                }
                Entry::Message {
                    tp,
                    offset,
                    key,
                    payload,
                } => {
                    let Some(start) = self.assigned.get(&tp) else {
                        continue;
                    };
                    if offset < *start || offset < self.low.get(&tp).copied().unwrap_or(0) {
                        continue;
                    }
                    return Ok(Some(
                        match Change::from_message(&tp.topic, tp.partition, offset, &payload) {
                            Ok(c) => FeedItem::Change(Box::new(c)),
                            Err(e) => FeedItem::Invalid(Box::new(InvalidMessage {
                                topic: tp.topic.clone(),
                                partition: tp.partition,
                                offset,
                                key,
                                reason: e.to_string(),
                                excerpt: String::from_utf8_lossy(
                                    &payload[..payload.len().min(200)],
                                )
                                .into_owned(),
                                size: payload.len(),
                            })),
                        },
                    ));
                }
            }
        }
        if self.tick_when_empty {
            // Stand in for the consumer timeout; also lets other tasks run.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            return Ok(Some(FeedItem::Tick));
        }
        Ok(None)
    }
}
