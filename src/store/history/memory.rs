//! An in-memory checkpoint history for unit tests, snapshotting a [`MemoryCheckpointStore`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::NaiveDate;

use super::{cutoff, HistoryEntry, HistoryStore, Snapshot, SnapshotSummary};
use crate::error::{ProcessError, Result};
use crate::partition::TopicPartition;
use crate::store::checkpoints::memory::MemoryCheckpointStore;

/// Offsets keyed by (date, checkpoint id, partition), as the table's primary key.
type Records = BTreeMap<(NaiveDate, String, TopicPartition), i64>;

/// The history of the checkpoints of one memory checkpoint store.
#[derive(Debug)]
pub struct MemoryHistoryStore {
    checkpoints: Arc<MemoryCheckpointStore>,
    records: Mutex<Records>,
}

impl MemoryHistoryStore {
    /// An empty history of `checkpoints`.
    pub fn new(checkpoints: Arc<MemoryCheckpointStore>) -> Self {
        Self {
            checkpoints,
            records: Mutex::new(BTreeMap::new()),
        }
    }
}

fn poisoned() -> crate::error::Error {
    ProcessError::Other("memory history store lock poisoned".into()).into()
}

#[async_trait]
impl HistoryStore for MemoryHistoryStore {
    async fn snapshot(&self, date: NaiveDate, keep_days: u32) -> Result<SnapshotSummary> {
        let rows = self.checkpoints.all();
        let mut records = self.records.lock().map_err(|_| poisoned())?;
        for (id, r) in &rows {
            records.insert((date, id.clone(), r.tp.clone()), r.offset);
        }
        let cutoff = cutoff(date, keep_days);
        let before = records.len();
        records.retain(|(day, _, _), _| *day >= cutoff);
        Ok(SnapshotSummary {
            date,
            rows: rows.len() as u64,
            pruned: (before - records.len()) as u64,
        })
    }

    async fn list(&self, checkpoint_id: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let records = self.records.lock().map_err(|_| poisoned())?;
        let mut days: BTreeMap<(NaiveDate, &str), (i64, i64)> = BTreeMap::new();
        for ((day, id, _), offset) in records.iter() {
            if checkpoint_id.is_none_or(|c| c == id) {
                let e = days.entry((*day, id.as_str())).or_default();
                e.0 += 1;
                e.1 += offset;
            }
        }
        let mut out: Vec<HistoryEntry> = days
            .into_iter()
            .map(|((date, id), (rows, offsets_total))| HistoryEntry {
                date,
                checkpoint_id: id.to_owned(),
                rows,
                offsets_total,
            })
            .collect();
        out.sort_by(|a, b| {
            b.date
                .cmp(&a.date)
                .then_with(|| a.checkpoint_id.cmp(&b.checkpoint_id))
        });
        Ok(out)
    }

    async fn load_snapshot(
        &self,
        checkpoint_id: &str,
        date: NaiveDate,
    ) -> Result<Option<Snapshot>> {
        let records = self.records.lock().map_err(|_| poisoned())?;
        let day = records
            .keys()
            .filter(|(d, id, _)| id == checkpoint_id && *d <= date)
            .map(|(d, _, _)| *d)
            .max();
        Ok(day.map(|day| {
            let offsets = records
                .iter()
                .filter(|((d, id, _), _)| *d == day && id == checkpoint_id)
                .map(|((_, _, tp), o)| (tp.clone(), *o))
                .collect();
            (day, offsets)
        }))
    }

    async fn recent(&self, checkpoint_id: &str, days: u32) -> Result<Vec<Snapshot>> {
        let records = self.records.lock().map_err(|_| poisoned())?;
        let mut by_day: BTreeMap<NaiveDate, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for ((d, id, tp), o) in records.iter() {
            if id == checkpoint_id {
                by_day.entry(*d).or_default().push((tp.clone(), *o));
            }
        }
        Ok(by_day.into_iter().rev().take(days as usize).collect())
    }

    async fn snapshot_checkpoint(
        &self,
        checkpoint_id: &str,
        date: NaiveDate,
        keep_days: u32,
    ) -> Result<SnapshotSummary> {
        let rows = self.checkpoints.all();
        let mut records = self.records.lock().map_err(|_| poisoned())?;
        for (id, r) in rows.iter().filter(|(id, _)| id == checkpoint_id) {
            records
                .entry((date, id.clone(), r.tp.clone()))
                .or_insert(r.offset);
        }
        let present = records
            .keys()
            .filter(|(d, id, _)| *d == date && id == checkpoint_id)
            .count();
        let cutoff = cutoff(date, keep_days);
        let before = records.len();
        records.retain(|(day, id, _), _| id != checkpoint_id || *day >= cutoff);
        Ok(SnapshotSummary {
            date,
            rows: present as u64,
            pruned: (before - records.len()) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 5, d).expect("date")
    }

    #[tokio::test]
    async fn snapshots_replace_the_day_prune_old_days_and_restore_the_newest() {
        let checkpoints = Arc::new(MemoryCheckpointStore::new());
        let history = MemoryHistoryStore::new(Arc::clone(&checkpoints));
        checkpoints.set("a", TopicPartition::new("t", 0), 5);
        checkpoints.set("b", TopicPartition::new("t", 0), 7);
        let s = history.snapshot(day(1), 30).await.expect("snapshot");
        assert_eq!((s.rows, s.pruned), (2, 0));
        checkpoints.set("a", TopicPartition::new("t", 0), 9);
        history.snapshot(day(3), 30).await.expect("snapshot");
        history
            .snapshot(day(3), 30)
            .await
            .expect("twice on one day");
        let entries = history.list(Some("a")).await.expect("list");
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.date, e.offsets_total))
                .collect::<Vec<_>>(),
            [(day(3), 9), (day(1), 5)],
            "newest first"
        );
        let (d, offsets) = history
            .load_snapshot("a", day(2))
            .await
            .expect("load")
            .expect("a snapshot on or before day 2");
        assert_eq!(
            (d, offsets),
            (day(1), vec![(TopicPartition::new("t", 0), 5)])
        );
        assert!(history
            .load_snapshot("a", day(1) - chrono::Days::new(1))
            .await
            .expect("load")
            .is_none());
        let s = history.snapshot(day(3), 1).await.expect("prune");
        assert_eq!(
            s.pruned, 2,
            "day 1's two records are older than a day before day 3"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_snapshot_keeps_the_first_of_the_day_and_recent_is_newest_first() {
        let checkpoints = Arc::new(MemoryCheckpointStore::new());
        let history = MemoryHistoryStore::new(Arc::clone(&checkpoints));
        let s = history
            .snapshot_checkpoint("a", day(1), 30)
            .await
            .expect("no rows");
        assert_eq!(s.rows, 0, "nothing to record before the first checkpoint");
        checkpoints.set("a", TopicPartition::new("t", 0), 5);
        checkpoints.set("b", TopicPartition::new("t", 0), 7);
        assert_eq!(
            history
                .snapshot_checkpoint("a", day(1), 30)
                .await
                .expect("ok")
                .rows,
            1
        );
        checkpoints.set("a", TopicPartition::new("t", 0), 9);
        history
            .snapshot_checkpoint("a", day(1), 30)
            .await
            .expect("again");
        let (_, offsets) = history
            .load_snapshot("a", day(1))
            .await
            .expect("load")
            .expect("day 1");
        assert_eq!(
            offsets,
            [(TopicPartition::new("t", 0), 5)],
            "the first of the day stays"
        );
        assert!(
            history
                .load_snapshot("b", day(9))
                .await
                .expect("load")
                .is_none(),
            "only a"
        );
        history
            .snapshot_checkpoint("a", day(2), 30)
            .await
            .expect("day 2");
        let recent = history.recent("a", 10).await.expect("recent");
        assert_eq!(
            recent.iter().map(|s| s.0).collect::<Vec<_>>(),
            [day(2), day(1)]
        );
        assert_eq!(history.recent("a", 1).await.expect("recent").len(), 1);
    }
}
