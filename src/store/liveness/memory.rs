//! An in-memory liveness store for unit tests and benches. It keeps the rows as PostgreSQL does
//! and the calls in order, so a test can check when the loop registers, beats and unregisters.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use super::{column_int, hostname, pid, LivenessStore, ProcessRow, STALE_AFTER};
use crate::error::{ProcessError, Result};
use crate::feed::assignment::Layout;
use crate::partition::TopicPartition;

/// One call the store received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessCall {
    /// `register` of (pillow, process number) with the partitions it owns.
    Register {
        pillow: String,
        process_num: u32,
        partitions: Vec<TopicPartition>,
    },
    /// `heartbeat` of (pillow, process number).
    Heartbeat { pillow: String, process_num: u32 },
    /// `unregister` of (pillow, process number).
    Unregister { pillow: String, process_num: u32 },
}

/// Rows keyed by (pillow, process number), and every call received.
#[derive(Debug, Default)]
pub struct MemoryLivenessStore {
    rows: Mutex<BTreeMap<(String, i32), ProcessRow>>,
    calls: Mutex<Vec<LivenessCall>>,
}

impl MemoryLivenessStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<LivenessCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Sets a row directly, as another process registering would (`alive` is recomputed from
    /// `heartbeat_at` when listed).
    pub fn set(&self, row: ProcessRow) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.insert((row.pillow_name.clone(), row.process_num), row);
        }
    }

    fn log(&self, call: LivenessCall) -> Result<()> {
        self.calls.lock().map_err(|_| poisoned())?.push(call);
        Ok(())
    }
}

fn poisoned() -> crate::error::Error {
    ProcessError::Other("memory liveness store lock poisoned".into()).into()
}

#[async_trait]
impl LivenessStore for MemoryLivenessStore {
    async fn register(
        &self,
        pillow: &str,
        checkpoint_id: &str,
        layout: &Layout,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        let now = Utc::now();
        let row = ProcessRow {
            pillow_name: pillow.to_owned(),
            process_num: column_int(layout.process_num),
            num_processes: column_int(layout.num_processes),
            dedicated_migration_process: layout.dedicated_migration_process,
            checkpoint_id: checkpoint_id.to_owned(),
            hostname: hostname(),
            pid: pid(),
            partitions: partitions.to_vec(),
            started_at: now,
            heartbeat_at: now,
            processor_stats: super::ProcessorStats::new(),
            alive: true,
        };
        self.rows
            .lock()
            .map_err(|_| poisoned())?
            .insert((pillow.to_owned(), row.process_num), row);
        self.log(LivenessCall::Register {
            pillow: pillow.to_owned(),
            process_num: layout.process_num,
            partitions: partitions.to_vec(),
        })
    }

    async fn heartbeat(
        &self,
        pillow: &str,
        process_num: u32,
        stats: &super::ProcessorStats,
    ) -> Result<()> {
        let key = (pillow.to_owned(), column_int(process_num));
        if let Some(row) = self.rows.lock().map_err(|_| poisoned())?.get_mut(&key) {
            row.heartbeat_at = Utc::now();
            row.processor_stats
                .extend(stats.iter().map(|(k, v)| (k.clone(), *v)));
        }
        self.log(LivenessCall::Heartbeat {
            pillow: pillow.to_owned(),
            process_num,
        })
    }

    async fn unregister(&self, pillow: &str, process_num: u32) -> Result<()> {
        let key = (pillow.to_owned(), column_int(process_num));
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        if rows.get(&key).is_some_and(|r| r.pid == pid()) {
            rows.remove(&key);
        }
        drop(rows);
        self.log(LivenessCall::Unregister {
            pillow: pillow.to_owned(),
            process_num,
        })
    }

    async fn list(&self, pillow: Option<&str>) -> Result<Vec<ProcessRow>> {
        let stale = chrono::Duration::from_std(STALE_AFTER).unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        let rows = self.rows.lock().map_err(|_| poisoned())?;
        Ok(rows
            .values()
            .filter(|r| pillow.is_none_or(|p| r.pillow_name == p))
            .map(|r| ProcessRow {
                alive: r.heartbeat_at > now - stale,
                ..r.clone()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(process_num: u32) -> Layout {
        Layout {
            process_num,
            num_processes: 2,
            dedicated_migration_process: false,
        }
    }

    #[tokio::test]
    async fn rows_follow_register_heartbeat_and_unregister() {
        let store = MemoryLivenessStore::new();
        let tp = TopicPartition::new("case", 1);
        store
            .register("p", "p-id", &layout(1), std::slice::from_ref(&tp))
            .await
            .expect("register");
        let stats: super::super::ProcessorStats = [(
            "es".to_owned(),
            super::super::ProcessorStat {
                seconds: 1.5,
                changes: 10,
                ..Default::default()
            },
        )]
        .into();
        store.heartbeat("p", 1, &stats).await.expect("heartbeat");
        let rows = store.list(Some("p")).await.expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].process_num, rows[0].num_processes),
            (1, 2),
            "the layout is recorded"
        );
        assert!(rows[0].alive);
        assert_eq!(rows[0].partitions, [tp]);
        assert_eq!(
            rows[0].processor_stats, stats,
            "the heartbeat records the costs"
        );
        assert!(store.list(Some("other")).await.expect("list").is_empty());
        let mut old = rows[0].clone();
        old.process_num = 0;
        old.heartbeat_at = Utc::now() - chrono::Duration::minutes(5);
        store.set(old);
        let rows = store.list(None).await.expect("list");
        assert_eq!(
            rows.iter().map(|r| r.alive).collect::<Vec<_>>(),
            [false, true],
            "a stale heartbeat is not alive"
        );
        store.unregister("p", 1).await.expect("unregister");
        assert_eq!(store.list(None).await.expect("list").len(), 1);
        assert_eq!(store.calls().len(), 3);
    }
}
