//! Freshness: has a pillow (or one of its processors) handled the change at a Kafka position?
//!
//! Web code that just published a change (`send_change` answers its topic, partition and
//! offset) can wait for "this form is in the case-search index" instead of writing to
//! Elasticsearch synchronously or sleeping. The answer comes from the checkpoint rows: a row
//! holds the **next offset to read**, so the change at `offset` is handled once the row is
//! greater than `offset`. A processor has handled it when its own row
//! ([`processor_checkpoint_id`], independent processors) or the pillow's row (the minimum over
//! its processors, so every processor has) is past it. "Handled" includes a change that failed
//! and has an error row: the pillow went past it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::partition::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::{processor_checkpoint_id, RowsById};

/// A Kafka position and whose progress is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The pillow's checkpoint id.
    pub checkpoint_id: String,
    pub tp: TopicPartition,
    /// The change's offset (as `send_change` answers it).
    pub offset: i64,
    /// One processor of the pillow (its stable name); `None`: the whole pillow.
    pub processor: Option<String>,
}

impl Position {
    /// The checkpoint ids whose rows answer: the pillow's, and the processor's own.
    fn ids(&self) -> Vec<String> {
        let mut ids = vec![self.checkpoint_id.clone()];
        if let Some(p) = &self.processor {
            ids.push(processor_checkpoint_id(&self.checkpoint_id, p));
        }
        ids
    }

    /// Whether `rows` (of [`Position::ids`]) are past the position.
    pub fn covered_by(&self, rows: &RowsById) -> bool {
        self.ids().iter().any(|id| {
            rows.get(id).is_some_and(|rows| {
                rows.iter()
                    .any(|r| r.tp == self.tp && r.offset > self.offset)
            })
        })
    }
}

/// Whether the change at `position` has been handled (see the module's text). One query.
pub async fn processed(pg: &Arc<Pg>, position: &Position) -> Result<bool> {
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&position.ids())
        .await?;
    Ok(position.covered_by(&rows))
}

/// Waits until the change at `position` has been handled, polling every `poll` (at most 1 s),
/// for at most `timeout`: `true` once it has, `false` when the time is up. An unreachable
/// database is waited out by the store's own retries and then an error.
pub async fn wait_processed(
    pg: &Arc<Pg>,
    position: &Position,
    timeout: Duration,
    poll: Duration,
) -> Result<bool> {
    // A timeout too large for the clock waits without a deadline.
    let deadline = Instant::now().checked_add(timeout);
    let poll = poll.clamp(Duration::from_millis(1), Duration::from_secs(1));
    loop {
        if processed(pg, position).await? {
            return Ok(true);
        }
        let left = deadline.map_or(poll, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return Ok(false);
        }
        tokio::time::sleep(poll.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::checkpoints::CheckpointRow;

    fn rows(entries: &[(&str, i32, i64)]) -> RowsById {
        let mut out = RowsById::new();
        for (id, partition, offset) in entries {
            out.entry((*id).to_owned())
                .or_default()
                .push(CheckpointRow {
                    tp: TopicPartition::new("form", *partition),
                    offset: *offset,
                    last_modified: chrono::Utc::now(),
                });
        }
        out
    }

    fn at(offset: i64, processor: Option<&str>) -> Position {
        Position {
            checkpoint_id: "p".into(),
            tp: TopicPartition::new("form", 1),
            offset,
            processor: processor.map(str::to_owned),
        }
    }

    #[test]
    fn a_row_holds_the_next_offset_to_read() {
        let r = rows(&[("p", 0, 100), ("p", 1, 10)]);
        assert!(at(9, None).covered_by(&r));
        assert!(
            !at(10, None).covered_by(&r),
            "offset 10 is the next to read"
        );
        assert!(!at(10, Some("es")).covered_by(&r));
    }

    #[test]
    fn a_processor_is_done_by_its_own_row_or_the_pillows() {
        let own = processor_checkpoint_id("p", "es");
        let r = rows(&[("p", 1, 10), (own.as_str(), 1, 50)]);
        assert!(at(40, Some("es")).covered_by(&r), "its own row is ahead");
        assert!(!at(40, None).covered_by(&r), "the pillow's row is not");
        assert!(!at(40, Some("sql")).covered_by(&r), "another processor");
        assert!(
            at(5, Some("sql")).covered_by(&r),
            "the pillow's row covers every processor"
        );
        assert!(
            !at(0, None).covered_by(&RowsById::new()),
            "no rows: never ran"
        );
    }
}
