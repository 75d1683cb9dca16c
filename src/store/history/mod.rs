//! Daily checkpoint history in `pillowtop_rs_checkpoint_history` (CommCare's
//! `HistoricalPillowCheckpoint` and its celery task `create_historical_checkpoints`,
//! docs/commcare-pillowtop.md §1.5): a snapshot of every checkpoint row per day, records older
//! than the retention pruned by the same step. Taking a snapshot twice on one day replaces that
//! day's snapshot. The restore built on it (`fix_checkpoints_from_date`) is an operation:
//! `ops::history`.

pub mod memory;
pub mod postgres;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Serialize;

use crate::error::Result;
use crate::partition::TopicPartition;

/// CommCare keeps 30 days of history.
pub const KEEP_DAYS: u32 = 30;

/// What a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    pub date: NaiveDate,
    pub rows: u64,
    pub pruned: u64,
}

/// One day's record of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub date: NaiveDate,
    pub checkpoint_id: String,
    pub rows: i64,
    pub offsets_total: i64,
}

/// One checkpoint's snapshot: its date and the offsets, by partition.
pub type Snapshot = (NaiveDate, Vec<(TopicPartition, i64)>);

/// Where the checkpoint history lives.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Records every checkpoint row under `date` and deletes records older than `keep_days` days
    /// before `date`, in one transaction.
    async fn snapshot(&self, date: NaiveDate, keep_days: u32) -> Result<SnapshotSummary>;

    /// The recorded days, newest first (of one checkpoint, or all).
    async fn list(&self, checkpoint_id: Option<&str>) -> Result<Vec<HistoryEntry>>;

    /// The newest snapshot of `checkpoint_id` on or before `date`, partitions in order.
    async fn load_snapshot(&self, checkpoint_id: &str, date: NaiveDate)
        -> Result<Option<Snapshot>>;

    /// The newest `days` snapshots of `checkpoint_id`, newest first, partitions in order
    /// (CommCare's `get_historical_max` reads the last 10).
    async fn recent(&self, checkpoint_id: &str, days: u32) -> Result<Vec<Snapshot>>;

    /// Records today's snapshot of one checkpoint if this day has none yet (rows already
    /// recorded under `date` are left as they are, so every process of a pillow may call it:
    /// the first one of the day records), and prunes that checkpoint's records older than
    /// `keep_days`. `rows` is how many rows `date` holds for the checkpoint afterwards: 0 while
    /// the checkpoint has no rows. What a running pillow calls once a day.
    async fn snapshot_checkpoint(
        &self,
        checkpoint_id: &str,
        date: NaiveDate,
        keep_days: u32,
    ) -> Result<SnapshotSummary>;
}

/// The first day `keep_days` days before `date` keeps.
fn cutoff(date: NaiveDate, keep_days: u32) -> NaiveDate {
    date - chrono::Days::new(u64::from(keep_days))
}
