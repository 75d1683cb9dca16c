//! Checkpoints: per-partition "next offset to read" rows, stored in PostgreSQL in CommCare's
//! `pillowtop_kafkacheckpoint` table (or in memory for tests).
//!
//! Stores never create rows as a side effect of reading: rows appear when a pillow writes a
//! checkpoint or when an operator creates them explicitly ([`CheckpointStore::create_rows`]).
//! The operator operations (`ops/`) read several checkpoints at once and rewrite rows in one
//! transaction through the PostgreSQL side ([`postgres::PostgresCheckpointStore::transaction`]).

pub mod memory;
pub mod postgres;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::partition::TopicPartition;

/// The longest checkpoint id CommCare's column takes.
pub const MAX_CHECKPOINT_ID_LEN: usize = 126;

/// The checkpoint id under which one processor of a pillow records its own progress:
/// `{pillow checkpoint id}/processor/{processor name}`. Stable (it depends only on the two
/// names) and at most [`MAX_CHECKPOINT_ID_LEN`] characters: a longer id keeps its start and ends
/// with a hash of the whole (FNV-1a, 16 hex digits) so two long names never collide.
pub fn processor_checkpoint_id(pillow_checkpoint_id: &str, processor: &str) -> String {
    let full = format!("{pillow_checkpoint_id}/processor/{processor}");
    if full.len() <= MAX_CHECKPOINT_ID_LEN {
        return full;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in full.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let suffix = format!("~{hash:016x}");
    let mut cut = MAX_CHECKPOINT_ID_LEN - suffix.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &full[..cut])
}

/// The pillow's checkpoint id and the processor's name of a [`processor_checkpoint_id`] (an id
/// that was shortened ends its name with the hash); `None` for a pillow's own id.
pub fn split_processor_checkpoint_id(id: &str) -> Option<(&str, &str)> {
    id.rsplit_once("/processor/")
        .filter(|(parent, name)| !parent.is_empty() && !name.is_empty())
}

/// Whether `id` is the marker an independent pillow's coordinator keeps of what it wrote into
/// the pillow's rows (`{checkpoint id}/processor/`, an internal row: not a checkpoint to show).
pub fn is_processor_marker_id(id: &str) -> bool {
    id.ends_with("/processor/")
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub tp: TopicPartition,
    pub offset: i64,
    pub last_modified: DateTime<Utc>,
}

/// Rows by checkpoint id.
pub type RowsById = BTreeMap<String, Vec<CheckpointRow>>;

/// A row's key and offset: (checkpoint id, partition, offset).
pub type KeyedOffset = (String, TopicPartition, i64);

/// One offset to write, with what the writer believes the row holds now (`None`: no row).
/// A row that holds something else was changed externally (docs/commcare-pillowtop.md §9 #10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointUpdate {
    pub tp: TopicPartition,
    pub offset: i64,
    pub expected: Option<i64>,
}

/// Where checkpoints live.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Every row of `checkpoint_id`.
    async fn load(&self, checkpoint_id: &str) -> Result<Vec<CheckpointRow>>;

    /// Writes `updates` in one transaction. Fails with `CheckpointError::Reset`, writing nothing,
    /// when a row does not hold the update's `expected` value.
    async fn write(&self, checkpoint_id: &str, updates: &[CheckpointUpdate]) -> Result<()>;

    /// Whether the pillow may write checkpoints in the background while it goes on processing
    /// (one write in flight at a time, each covering only handled changes). A store whose write
    /// commits other work with it (the exactly-once session) says no: its writes stay in line.
    fn background_writes(&self) -> bool {
        true
    }

    /// Writes the updates of several checkpoint ids in one transaction: all or none (a
    /// `CheckpointError::Reset` of any row writes nothing). The independent-processors
    /// coordinator writes the pillow's rows and its record of them together, so a crash between
    /// them cannot look like an operator's move at the next start. The default writes one id
    /// after the other (not atomic); the PostgreSQL and memory stores override it.
    async fn write_together(&self, writes: &[(String, Vec<CheckpointUpdate>)]) -> Result<()> {
        for (id, updates) in writes {
            self.write(id, updates).await?;
        }
        Ok(())
    }

    /// Creates rows at `offset` for the partitions that have none; returns how many it created.
    async fn create_rows(
        &self,
        checkpoint_id: &str,
        partitions: &[TopicPartition],
        offset: i64,
    ) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_ids_are_stable_unique_and_bounded() {
        assert_eq!(
            processor_checkpoint_id("xform-pillow", "FormMetaProcessor"),
            "xform-pillow/processor/FormMetaProcessor"
        );
        let long = "p".repeat(120);
        let a = processor_checkpoint_id(&long, "first-processor");
        let b = processor_checkpoint_id(&long, "second-processor");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_CHECKPOINT_ID_LEN && b.len() <= MAX_CHECKPOINT_ID_LEN);
        assert_eq!(a, processor_checkpoint_id(&long, "first-processor"));
        let wide = "é".repeat(70);
        assert!(processor_checkpoint_id(&wide, "x").len() <= MAX_CHECKPOINT_ID_LEN);
    }
}
