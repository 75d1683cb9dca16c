//! Change feeds: where changes come from.
//!
//! A feed yields [`FeedItem`]s: a change, an invalid message (which still occupies an offset and
//! becomes an error row), or an idle tick (CommCare's 10-second consumer timeout, which flushes a
//! partial chunk and lets the idle checkpoint rule run). Feeds never checkpoint; the pillow loop
//! decides what was handled and when to write it.

pub mod assignment;
pub mod kafka;
pub mod memory;
pub mod offsets;
pub mod shared;

use async_trait::async_trait;

use crate::change::Change;
use crate::error::Result;

pub use crate::partition::TopicPartition;

/// A message that is not a valid change. It is recorded as an error and its offset counts as
/// handled, so the pillow goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message key (the document id, when the producer set one).
    pub key: Option<String>,
    pub reason: String,
    /// The first bytes of the body, for the error row.
    pub excerpt: String,
    pub size: usize,
}

impl InvalidMessage {
    /// The id the error row is recorded under: the key, or `topic:partition:offset` without one.
    pub fn doc_id(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("{}:{}:{}", self.topic, self.partition, self.offset))
    }
}

/// The start of a message body as an operator can read it and any store can keep: valid UTF-8
/// text as it is, control characters and invalid bytes as `\xNN` (so a body of
/// `b"\xff\xfe\x00garbage"` reads `\xff\xfe\x00garbage`).
pub fn excerpt(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                c if c.is_control() && c != '\n' && c != '\t' => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// One step of a feed.
#[derive(Debug)]
pub enum FeedItem {
    Change(Box<Change>),
    Invalid(Box<InvalidMessage>),
    /// No message for the idle timeout (CommCare yields `None`).
    Tick,
    /// The broker reported that a position is no longer available (retention deleted messages
    /// not yet read). The pillow re-resolves its positions: strict mode fails, non-strict mode
    /// reports the gap and resumes at the earliest retained offset.
    OffsetOutOfRange,
}

/// What a fresh look at the source says about a feed that has handed out nothing for a while
/// (see [`ChangeFeed::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StallProbe {
    /// Nothing readable past the positions (or the feed cannot tell): the feed is not stuck.
    Idle,
    /// A fresh client reads changes past the positions that the feed did not hand out: the
    /// feed's own client is stuck. `behind` is the backlog on `partitions`.
    Stuck {
        behind: i64,
        partitions: Vec<TopicPartition>,
    },
    /// The source could not be reached by a fresh client either (an outage): its own words.
    Unreachable(String),
}

/// A source of changes for one pillow process.
#[async_trait]
pub trait ChangeFeed: Send {
    /// The feed's topics.
    fn topics(&self) -> &[String];

    /// Every partition of the feed's topics (an unknown topic is an error).
    async fn partitions(&mut self) -> Result<Vec<TopicPartition>>;

    /// The (first available, high-water mark) offsets of these partitions.
    async fn watermarks(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64, i64)>>;

    /// Starts, or restarts, reading exactly these partitions from these offsets.
    async fn assign(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()>;

    /// The next item. `None` means the feed ended (test feeds only: a Kafka feed never ends).
    async fn next(&mut self) -> Result<Option<FeedItem>>;

    /// The next item if one is already at hand (received with the last batch), without waiting.
    /// The pillow drains these between awaits of [`next`](Self::next): one wake-up per batch.
    fn try_next(&mut self) -> Option<FeedItem> {
        None
    }

    /// Looks at the source with a fresh client: is there anything to read past `positions`
    /// (the next offset of each own partition) that this feed has not handed out? Called by the
    /// pillow's stall watch on idle ticks only. Feeds that cannot tell say [`StallProbe::Idle`].
    async fn probe(&mut self, _positions: &[(TopicPartition, i64)]) -> Result<StallProbe> {
        Ok(StallProbe::Idle)
    }

    /// Replaces the feed's client with a new one reading `positions` (a stuck client).
    async fn reconnect(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        self.assign(positions).await
    }

    /// Where the feed reads from, for messages (e.g. `kafka at 127.0.0.1:9092`).
    fn source(&self) -> String {
        "the change feed".to_owned()
    }

    /// The pillow stopped reading: release what only this reader holds (a shared read's lane
    /// leaves the ring). The default does nothing.
    async fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn excerpts_show_bad_bytes_as_escapes_and_keep_text() {
        assert_eq!(
            super::excerpt(b"\xff\xfe\x00garbage"),
            "\\xff\\xfe\\x00garbage"
        );
        assert_eq!(
            super::excerpt("{\"id\": \"é\"}\n".as_bytes()),
            "{\"id\": \"é\"}\n"
        );
        assert_eq!(super::excerpt(b"a\x7fb\x1b"), "a\\x7fb\\x1b");
        assert!(!super::excerpt(b"\x00\x00").contains('\0'));
    }
}
