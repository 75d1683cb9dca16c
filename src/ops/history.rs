//! Daily checkpoint history (CommCare's `HistoricalPillowCheckpoint` and its celery task
//! `create_historical_checkpoints`, docs/commcare-pillowtop.md §1.5): a snapshot of every row of
//! `pillowtop_kafkacheckpoint` per day in `pillowtop_rs_checkpoint_history`, records older than
//! the retention (30 days) pruned by the same step, and a restore of a checkpoint from the newest
//! snapshot on or before a date (`fix_checkpoints_from_date`).
//!
//! Taking a snapshot twice on one day replaces that day's snapshot. A restore writes the
//! snapshot's offsets in one transaction after checking the rows did not move since the plan;
//! rows the snapshot does not have are kept and listed.

use std::sync::Arc;

use chrono::NaiveDate;
use serde::Serialize;

use super::reset::apply_offsets;
use super::{check_not_running, transaction, OpsError, Result, Row};
use crate::checkpoint::CheckpointRow;
use crate::feed::TopicPartition;
use crate::pg::{err, Pg};
use crate::pillow::liveness::{Liveness, ProcessRow};

/// CommCare keeps 30 days of history.
pub const KEEP_DAYS: u32 = 30;

/// What a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    pub date: NaiveDate,
    pub rows: u64,
    pub pruned: u64,
}

/// Records every checkpoint row under `date` and deletes records older than `keep_days` days
/// before `date`, in one transaction.
pub async fn snapshot(pg: &Pg, date: NaiveDate, keep_days: u32) -> Result<SnapshotSummary> {
    let cutoff = date - chrono::Days::new(u64::from(keep_days));
    transaction(pg, "recording the checkpoint history", |c| async move {
        let rows = c
            .execute(
                r#"INSERT INTO pillowtop_rs_checkpoint_history (date_updated, checkpoint_id, topic, "partition", "offset", recorded_at)
                   SELECT $1, checkpoint_id, topic, "partition", "offset", now() FROM pillowtop_kafkacheckpoint
                   ON CONFLICT (date_updated, checkpoint_id, topic, "partition")
                   DO UPDATE SET "offset" = EXCLUDED."offset", recorded_at = EXCLUDED.recorded_at"#,
                &[&date],
            )
            .await
            .map_err(err("recording the checkpoint history"))?;
        let pruned = c
            .execute(
                "DELETE FROM pillowtop_rs_checkpoint_history WHERE date_updated < $1",
                &[&cutoff],
            )
            .await
            .map_err(err("pruning the checkpoint history"))?;
        Ok(SnapshotSummary {
            date,
            rows,
            pruned,
        })
    })
    .await
}

/// One day's record of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub date: NaiveDate,
    pub checkpoint_id: String,
    pub rows: i64,
    pub offsets_total: i64,
}

/// The recorded days, newest first (of one checkpoint, or all).
pub async fn list(pg: &Pg, checkpoint_id: Option<&str>) -> Result<Vec<HistoryEntry>> {
    let rows = pg
        .run("reading the checkpoint history", |c| async move {
            c.query(
                r#"SELECT date_updated, checkpoint_id, count(*), sum("offset")::bigint
                   FROM pillowtop_rs_checkpoint_history WHERE $1::text IS NULL OR checkpoint_id = $1
                   GROUP BY date_updated, checkpoint_id ORDER BY date_updated DESC, checkpoint_id"#,
                &[&checkpoint_id],
            )
            .await
            .map_err(err("reading the checkpoint history"))
        })
        .await?;
    Ok(rows
        .iter()
        .map(|r| HistoryEntry {
            date: r.get(0),
            checkpoint_id: r.get(1),
            rows: r.get(2),
            offsets_total: r.get(3),
        })
        .collect())
}

/// The newest snapshot of `checkpoint_id` on or before `date`.
pub async fn load_snapshot(
    pg: &Pg,
    checkpoint_id: &str,
    date: NaiveDate,
) -> Result<Option<(NaiveDate, Vec<(TopicPartition, i64)>)>> {
    let rows = pg
        .run("reading the checkpoint history", |c| async move {
            c.query(
                r#"SELECT date_updated, topic, "partition", "offset" FROM pillowtop_rs_checkpoint_history
                   WHERE checkpoint_id = $1 AND date_updated = (
                       SELECT max(date_updated) FROM pillowtop_rs_checkpoint_history
                       WHERE checkpoint_id = $1 AND date_updated <= $2)
                   ORDER BY topic, "partition""#,
                &[&checkpoint_id, &date],
            )
            .await
            .map_err(err(format!("reading the history of checkpoint {checkpoint_id}")))
        })
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let day: NaiveDate = first.get(0);
    Ok(Some((
        day,
        rows.iter()
            .map(|r| {
                (
                    TopicPartition::new(r.get::<_, String>(1), r.get(2)),
                    r.get(3),
                )
            })
            .collect(),
    )))
}

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
    let current = super::load_rows(pg, ids).await?;
    let mut plans = Vec::new();
    for id in ids {
        let (day, snap) =
            load_snapshot(pg, id, date)
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
    let processes = Liveness::new(Arc::clone(pg)).list(None).await?;
    let forced = check_not_running(&processes, ids, force)?;
    Ok((plans, forced))
}

/// Applies a restore (one transaction per checkpoint).
pub async fn apply_restore(pg: &Pg, plan: &RestorePlan) -> Result<u64> {
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
