//! A restore of checkpoints from the daily history (CommCare's `fix_checkpoints_from_date`,
//! docs/commcare-pillowtop.md §1.5): each checkpoint from its newest snapshot on or before a
//! date. The snapshots themselves are kept by [`crate::store::history`].
//!
//! A restore writes the snapshot's offsets in one transaction after checking the rows did not
//! move since the plan; rows the snapshot does not have are kept and listed.

use std::sync::Arc;

use chrono::NaiveDate;
use serde::Serialize;

use super::reset::apply_offsets;
use super::{refuse_running, OpsError, Result, Row};
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::CheckpointRow;
use crate::store::history::postgres::PostgresHistoryStore;
use crate::store::history::HistoryStore;
use crate::store::liveness::ProcessRow;

/// One partition of a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreRow {
    pub topic: String,
    pub partition: i32,
    pub current: Option<i64>,
    pub new: i64,
}

/// What a restore of one checkpoint will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePlan {
    pub checkpoint_id: String,
    /// The snapshot's date (the newest on or before the requested date).
    pub date: NaiveDate,
    pub rows: Vec<RestoreRow>,
    /// Current rows of the restored partitions (checked again when applying).
    pub existing: Vec<Row>,
    /// Current rows the snapshot does not have: left as they are.
    pub kept: Vec<Row>,
}

/// Plans restoring `checkpoint_id` from a snapshot.
pub fn plan_restore(
    checkpoint_id: &str,
    current: &[CheckpointRow],
    date: NaiveDate,
    snapshot: &[(TopicPartition, i64)],
) -> RestorePlan {
    let mut rows = Vec::new();
    let mut existing = Vec::new();
    for (tp, offset) in snapshot {
        let cur = current.iter().find(|r| r.tp == *tp);
        if let Some(r) = cur {
            existing.push(Row::new(checkpoint_id, r));
        }
        rows.push(RestoreRow {
            topic: tp.topic.clone(),
            partition: tp.partition,
            current: cur.map(|r| r.offset),
            new: *offset,
        });
    }
    let kept = current
        .iter()
        .filter(|r| !snapshot.iter().any(|(tp, _)| *tp == r.tp))
        .map(|r| Row::new(checkpoint_id, r))
        .collect();
    RestorePlan {
        checkpoint_id: checkpoint_id.to_owned(),
        date,
        rows,
        existing,
        kept,
    }
}

/// Plans restoring each of `ids` from its newest snapshot on or before `date`, and refuses while
/// one of them has a live process (unless `force`). Returns the plans and the live processes that
/// `force` overrode.
pub async fn prepare_restore(
    pg: &Arc<Pg>,
    ids: &[String],
    date: NaiveDate,
    force: bool,
) -> Result<(Vec<RestorePlan>, Vec<ProcessRow>)> {
    super::check_ids(ids)?;
    let current = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(ids)
        .await?;
    let history = PostgresHistoryStore::new(Arc::clone(pg));
    let mut plans = Vec::new();
    for id in ids {
        let (day, snap) =
            history
                .load_snapshot(id, date)
                .await?
                .ok_or_else(|| OpsError::NoSnapshot {
                    checkpoint_id: id.clone(),
                    date,
                })?;
        plans.push(plan_restore(
            id,
            current.get(id).map(Vec::as_slice).unwrap_or_default(),
            day,
            &snap,
        ));
    }
    let forced = refuse_running(pg, ids, force).await?;
    Ok((plans, forced))
}

/// Applies a restore (one transaction per checkpoint).
pub async fn apply_restore(pg: &Arc<Pg>, plan: &RestorePlan) -> Result<u64> {
    let writes: Vec<(TopicPartition, i64)> = plan
        .rows
        .iter()
        .map(|r| (TopicPartition::new(r.topic.clone(), r.partition), r.new))
        .collect();
    apply_offsets(pg, &plan.checkpoint_id, &plan.existing, &writes).await
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::rows;
    use super::*;

    #[test]
    fn restore_rewrites_snapshot_partitions_and_keeps_the_others() {
        let current = rows(&[("t", 0, 50), ("t", 1, 60), ("u", 0, 1)]);
        let day = NaiveDate::from_ymd_opt(2024, 5, 1).expect("date");
        let snap = vec![
            (TopicPartition::new("t", 0), 40),
            (TopicPartition::new("t", 1), 45),
            (TopicPartition::new("t", 2), 5),
        ];
        let plan = plan_restore("c", &current, day, &snap);
        let got: Vec<(i32, Option<i64>, i64)> = plan
            .rows
            .iter()
            .map(|r| (r.partition, r.current, r.new))
            .collect();
        assert_eq!(got, [(0, Some(50), 40), (1, Some(60), 45), (2, None, 5)]);
        assert_eq!(plan.existing.len(), 2);
        assert_eq!(plan.kept.len(), 1);
        assert_eq!(plan.kept[0].topic, "u");
    }
}
