//! Per-partition offsets of one process: where reading started, what was fully handled, and
//! what the checkpoint holds.
//!
//! This is the fix for CommCare's skip bug (docs/commcare-pillowtop.md §1.3, §9 #1): CommCare stores `since + 1`
//! for a partition that was sought but not yet consumed, so a crash after such a checkpoint skips
//! one message. Here the checkpoint value is `last_handled + 1` for a partition that handled
//! something, and the untouched seek start otherwise. The value is the **next offset to read**,
//! and since `last_handled` is an offset that was read, it never passes the high-water mark.

use std::collections::BTreeMap;

use crate::partition::TopicPartition;

/// One partition's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Where this run started reading.
    pub seek_start: i64,
    /// The highest offset whose change was fully handled (processed, or its error recorded).
    pub last_handled: Option<i64>,
    /// The value the checkpoint table holds for this partition, as last read or written.
    pub committed: Option<i64>,
}

impl PartitionOffsets {
    /// The next offset to read: what a checkpoint written now would store.
    pub fn checkpoint_value(&self) -> i64 {
        self.last_handled.map_or(self.seek_start, |o| o + 1)
    }
}

/// The offsets of every partition this process owns.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<TopicPartition, PartitionOffsets>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an own partition with where reading starts and what the table holds.
    pub fn insert(&mut self, tp: TopicPartition, seek_start: i64, committed: Option<i64>) {
        self.partitions.insert(
            tp,
            PartitionOffsets {
                seek_start,
                last_handled: None,
                committed,
            },
        );
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<&PartitionOffsets> {
        self.partitions.get(tp)
    }

    pub fn partitions(&self) -> impl Iterator<Item = (&TopicPartition, &PartitionOffsets)> {
        self.partitions.iter()
    }

    /// Records that the change at `offset` is fully handled. Offsets of other processes'
    /// partitions are ignored (a process writes only its own partitions).
    pub fn mark_handled(&mut self, tp: &TopicPartition, offset: i64) {
        if let Some(p) = self.partitions.get_mut(tp) {
            if p.last_handled.is_none_or(|o| offset > o) {
                p.last_handled = Some(offset);
            }
        }
    }

    /// Partitions whose checkpoint value moved past what the table holds: what a checkpoint
    /// written now must store. Partitions that handled nothing in this run are never included, so
    /// a caught-up or idle process writes nothing.
    pub fn pending(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.last_handled.is_some() && p.committed != Some(p.checkpoint_value()))
            .map(|(tp, p)| (tp.clone(), p.checkpoint_value()))
            .collect()
    }

    /// Records a successful checkpoint write.
    pub fn mark_committed(&mut self, written: &[(TopicPartition, i64)]) {
        for (tp, offset) in written {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.committed = Some(*offset);
            }
        }
    }

    /// What this process last read or wrote for each own partition (for external-change checks).
    pub fn committed(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|p| p.committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sought_but_unconsumed_partition_keeps_its_seek_offset() {
        // CommCare would store since + 1 = 11 here and skip offset 10 after a crash.
        let mut t = OffsetTracker::new();
        let a = TopicPartition::new("t", 0);
        let b = TopicPartition::new("t", 1);
        t.insert(a.clone(), 10, Some(10));
        t.insert(b.clone(), 5, Some(5));
        assert!(t.pending().is_empty(), "nothing handled, nothing to write");
        t.mark_handled(&b, 5);
        assert_eq!(t.pending(), vec![(b.clone(), 6)]);
        assert_eq!(t.get(&a).expect("a").checkpoint_value(), 10);
    }

    #[test]
    fn value_is_next_offset_and_moves_only_forward() {
        let mut t = OffsetTracker::new();
        let a = TopicPartition::new("t", 0);
        t.insert(a.clone(), 0, None);
        t.mark_handled(&a, 7);
        t.mark_handled(&a, 3);
        assert_eq!(t.pending(), vec![(a.clone(), 8)]);
        t.mark_committed(&[(a.clone(), 8)]);
        assert!(t.pending().is_empty());
        t.mark_handled(&TopicPartition::new("other", 0), 99);
        assert!(
            t.pending().is_empty(),
            "other processes' partitions are ignored"
        );
    }
}
