//! An in-memory checkpoint store for unit tests and benches.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use super::{CheckpointRow, CheckpointStore, CheckpointUpdate};
use crate::error::{CheckpointError, Result};
use crate::partition::TopicPartition;

/// Rows keyed by (checkpoint id, topic, partition).
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    rows: Mutex<Rows>,
    /// How many successful `write` calls were made (for tests of the checkpoint policy).
    writes: Mutex<Vec<Vec<(TopicPartition, i64)>>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every row of every checkpoint id, by id and partition.
    pub fn all(&self) -> Vec<(String, CheckpointRow)> {
        self.rows
            .lock()
            .map(|rows| {
                rows.iter()
                    .map(|((id, _), r)| (id.clone(), r.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The successful writes so far, each as the list of offsets written.
    pub fn writes(&self) -> Vec<Vec<(TopicPartition, i64)>> {
        self.writes.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Sets a row directly, as an operator editing the table would.
    pub fn set(&self, checkpoint_id: &str, tp: TopicPartition, offset: i64) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.insert(
                (checkpoint_id.to_owned(), tp.clone()),
                CheckpointRow {
                    tp,
                    offset,
                    last_modified: Utc::now(),
                },
            );
        }
    }
}

fn poisoned() -> crate::error::Error {
    crate::error::ProcessError::Other("memory checkpoint store lock poisoned".into()).into()
}

type Rows = BTreeMap<(String, TopicPartition), CheckpointRow>;

/// `CheckpointError::Reset` when a row of `checkpoint_id` does not hold an update's `expected`.
fn check_expected(rows: &Rows, checkpoint_id: &str, updates: &[CheckpointUpdate]) -> Result<()> {
    for u in updates {
        let found = rows
            .get(&(checkpoint_id.to_owned(), u.tp.clone()))
            .map(|r| r.offset);
        if found != u.expected {
            return Err(CheckpointError::Reset {
                checkpoint_id: checkpoint_id.to_owned(),
                tp: u.tp.clone(),
                expected: u.expected,
                found,
            }
            .into());
        }
    }
    Ok(())
}

impl MemoryCheckpointStore {
    /// Writes checked `updates` and counts the write.
    fn apply(
        &self,
        rows: &mut Rows,
        checkpoint_id: &str,
        updates: &[CheckpointUpdate],
    ) -> Result<()> {
        for u in updates {
            rows.insert(
                (checkpoint_id.to_owned(), u.tp.clone()),
                CheckpointRow {
                    tp: u.tp.clone(),
                    offset: u.offset,
                    last_modified: Utc::now(),
                },
            );
        }
        self.writes
            .lock()
            .map_err(|_| poisoned())?
            .push(updates.iter().map(|u| (u.tp.clone(), u.offset)).collect());
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, checkpoint_id: &str) -> Result<Vec<CheckpointRow>> {
        let rows = self.rows.lock().map_err(|_| poisoned())?;
        Ok(rows
            .iter()
            .filter(|((id, _), _)| id == checkpoint_id)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn write(&self, checkpoint_id: &str, updates: &[CheckpointUpdate]) -> Result<()> {
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        check_expected(&rows, checkpoint_id, updates)?;
        self.apply(&mut rows, checkpoint_id, updates)
    }

    async fn write_together(&self, writes: &[(String, Vec<CheckpointUpdate>)]) -> Result<()> {
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        for (id, updates) in writes {
            check_expected(&rows, id, updates)?;
        }
        for (id, updates) in writes.iter().filter(|(_, u)| !u.is_empty()) {
            self.apply(&mut rows, id, updates)?;
        }
        Ok(())
    }

    async fn create_rows(
        &self,
        checkpoint_id: &str,
        partitions: &[TopicPartition],
        offset: i64,
    ) -> Result<u64> {
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        let mut created = 0;
        for tp in partitions {
            rows.entry((checkpoint_id.to_owned(), tp.clone()))
                .or_insert_with(|| {
                    created += 1;
                    CheckpointRow {
                        tp: tp.clone(),
                        offset,
                        last_modified: Utc::now(),
                    }
                });
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_of_several_ids_are_all_or_nothing() {
        let store = MemoryCheckpointStore::new();
        let tp = TopicPartition::new("t", 0);
        let update = |offset, expected| CheckpointUpdate {
            tp: tp.clone(),
            offset,
            expected,
        };
        store
            .write_together(&[
                ("a".into(), vec![update(5, None)]),
                ("b".into(), vec![update(3, None)]),
            ])
            .await
            .expect("both");
        let err = store
            .write_together(&[
                ("a".into(), vec![update(9, Some(5))]),
                ("b".into(), vec![update(8, Some(4))]),
            ])
            .await
            .expect_err("b refuses");
        assert!(err.to_string().contains('b'), "{err}");
        let offsets: Vec<(String, i64)> = store
            .all()
            .into_iter()
            .map(|(id, r)| (id, r.offset))
            .collect();
        assert_eq!(offsets, [("a".to_owned(), 5), ("b".to_owned(), 3)]);
    }
}
