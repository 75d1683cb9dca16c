//! CommCare's checkpoint fixes (docs/commcare-pillowtop.md §2.4), over the daily history of
//! [`crate::store::history`]:
//!
//! * `fix_checkpoint_after_rewind`: the historical maximum, i.e. the snapshot with the largest
//!   sum of offsets (CommCare's `seq_int`), or with `by_partition` the per-partition maximum of
//!   the newest [`REWIND_DAYS`] snapshots (CommCare's `get_historical_max`);
//! * `fix_checkpoints_from_date`: the newest snapshot strictly before a date (CommCare's "first
//!   historical record before that date", records ordered newest first);
//! * `fix_checkpoints_from_file`: offsets given in a JSON file
//!   `{checkpoint_id: {"topic,partition": offset}}` (CommCare's `{pillow: checkpoint}`, a Kafka
//!   checkpoint's sequence being that JSON object).
//!
//! Each is a [`FixPlan`] per checkpoint (pure, shown before anything is written) and an apply in
//! one transaction that checks the rows did not move since the plan (`reset::apply_offsets`).
//! Rows the source does not have are kept and listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Serialize;

use super::history::RestoreRow;
use super::reset::apply_offsets;
use super::{refuse_running, OpsError, Result, Row};
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::CheckpointRow;
use crate::store::history::postgres::PostgresHistoryStore;
use crate::store::history::{HistoryStore, Snapshot};
use crate::store::liveness::ProcessRow;

/// How many snapshots `by_partition` looks at (CommCare's "last 10").
pub const REWIND_DAYS: u32 = 10;

/// What a fix writes to one checkpoint, and where the offsets come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixPlan {
    pub checkpoint_id: String,
    /// Where the offsets come from, as the plan prints it.
    pub source: String,
    pub rows: Vec<RestoreRow>,
    /// Current rows of the written partitions (checked again when applying).
    pub existing: Vec<Row>,
    /// Current rows the source does not name: left as they are.
    pub kept: Vec<Row>,
}

impl FixPlan {
    /// Whether applying would change nothing.
    pub fn is_noop(&self) -> bool {
        self.rows.iter().all(|r| r.current == Some(r.new))
    }
}

/// Plans writing `offsets` to `checkpoint_id` (pure).
pub fn plan_fix(
    checkpoint_id: &str,
    source: String,
    current: &[CheckpointRow],
    offsets: &[(TopicPartition, i64)],
) -> FixPlan {
    let mut rows = Vec::new();
    let mut existing = Vec::new();
    for (tp, offset) in offsets {
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
        .filter(|r| !offsets.iter().any(|(tp, _)| *tp == r.tp))
        .map(|r| Row::new(checkpoint_id, r))
        .collect();
    FixPlan {
        checkpoint_id: checkpoint_id.to_owned(),
        source,
        rows,
        existing,
        kept,
    }
}

/// CommCare's historical maximum of `snapshots`: the one with the largest sum of offsets (the
/// newest among equals), or with `by_partition` the maximum of each partition over all of them.
/// Returns the source's description and the offsets; `None` without snapshots.
pub fn historical_max(
    snapshots: &[Snapshot],
    by_partition: bool,
) -> Option<(String, Vec<(TopicPartition, i64)>)> {
    if snapshots.is_empty() {
        return None;
    }
    if by_partition {
        let mut max: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for (_, offsets) in snapshots {
            for (tp, o) in offsets {
                let e = max.entry(tp.clone()).or_insert(*o);
                *e = (*e).max(*o);
            }
        }
        let (newest, oldest) = (snapshots[0].0, snapshots[snapshots.len() - 1].0);
        return Some((
            format!(
                "the per-partition maximum of {} snapshots ({oldest} to {newest})",
                snapshots.len()
            ),
            max.into_iter().collect(),
        ));
    }
    // Newest first: `max_by_key` keeps the last maximum, so iterate oldest first.
    let best = snapshots
        .iter()
        .rev()
        .max_by_key(|(_, offsets)| offsets.iter().map(|(_, o)| *o).sum::<i64>())?;
    Some((
        format!("the historical maximum: the snapshot of {}", best.0),
        best.1.clone(),
    ))
}

/// Parses a fix file: `{checkpoint_id: {"topic,partition": offset}}` (a checkpoint may also be
/// given as a JSON string holding that object, as CommCare stores Kafka sequences).
pub fn parse_fix_file(text: &str) -> Result<BTreeMap<String, Vec<(TopicPartition, i64)>>> {
    let bad = |m: String| OpsError::InvalidArgument(format!("checkpoint file: {m}"));
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        bad("expected an object {checkpoint_id: {\"topic,partition\": offset}}".into())
    })?;
    let mut out = BTreeMap::new();
    for (id, seq) in obj {
        let parsed;
        let seq = match seq {
            serde_json::Value::String(s) => {
                parsed = serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|e| bad(format!("checkpoint {id}: the sequence is not JSON: {e}")))?;
                &parsed
            }
            other => other,
        };
        let seq = seq.as_object().ok_or_else(|| {
            bad(format!(
                "checkpoint {id}: expected {{\"topic,partition\": offset}}"
            ))
        })?;
        let mut offsets = Vec::new();
        for (k, o) in seq {
            let tp = k
                .rsplit_once(',')
                .and_then(|(t, p)| Some(TopicPartition::new(t, p.trim().parse().ok()?)))
                .filter(|tp| !tp.topic.is_empty() && tp.partition >= 0)
                .ok_or_else(|| {
                    bad(format!(
                        "checkpoint {id}: partition {k:?} is not \"topic,partition\""
                    ))
                })?;
            let o = o.as_i64().filter(|o| *o >= 0).ok_or_else(|| {
                bad(format!(
                    "checkpoint {id}: offset of {k} is not a non-negative integer: {o}"
                ))
            })?;
            offsets.push((tp, o));
        }
        if offsets.is_empty() {
            return Err(bad(format!("checkpoint {id}: no partitions")));
        }
        offsets.sort();
        out.insert(id.clone(), offsets);
    }
    if out.is_empty() {
        return Err(bad("no checkpoints".into()));
    }
    Ok(out)
}

/// Where a fix takes its offsets from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixSource {
    /// `fix_checkpoint_after_rewind [--by-partition]`.
    AfterRewind { by_partition: bool },
    /// `fix_checkpoints_from_date DATE`: the newest snapshot before `DATE`.
    BeforeDate(NaiveDate),
    /// `fix_checkpoints_from_file`: the offsets of each checkpoint, as read from the file.
    Given(BTreeMap<String, Vec<(TopicPartition, i64)>>),
}

/// Plans the fix of each of `ids` from `source`, and refuses while one of them has a live
/// process (unless `force`). A checkpoint without a history to fix from is an error naming it.
/// Returns the plans and the live processes that `force` overrode.
pub async fn prepare_fix(
    pg: &Arc<Pg>,
    ids: &[String],
    source: &FixSource,
    force: bool,
) -> Result<(Vec<FixPlan>, Vec<ProcessRow>)> {
    super::check_ids(ids)?;
    let current = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(ids)
        .await?;
    let history = PostgresHistoryStore::new(Arc::clone(pg));
    let mut plans = Vec::new();
    for id in ids {
        let (what, offsets) = match source {
            FixSource::AfterRewind { by_partition } => {
                let days = if *by_partition { REWIND_DAYS } else { u32::MAX };
                let snaps = history.recent(id, days).await?;
                historical_max(&snaps, *by_partition).ok_or_else(|| OpsError::NoHistory {
                    checkpoint_id: id.clone(),
                    detail: "it has no history snapshot".into(),
                })?
            }
            FixSource::BeforeDate(date) => {
                let before = date.pred_opt().unwrap_or(*date);
                let (day, snap) = history.load_snapshot(id, before).await?.ok_or_else(|| {
                    OpsError::NoHistory {
                        checkpoint_id: id.clone(),
                        detail: format!("it has no history snapshot before {date}"),
                    }
                })?;
                (format!("the snapshot of {day}"), snap)
            }
            FixSource::Given(map) => {
                let offsets = map.get(id).cloned().ok_or_else(|| {
                    OpsError::InvalidArgument(format!("checkpoint {id} is not in the file"))
                })?;
                ("the given offsets".to_owned(), offsets)
            }
        };
        plans.push(plan_fix(
            id,
            what,
            current.get(id).map(Vec::as_slice).unwrap_or_default(),
            &offsets,
        ));
    }
    let forced = refuse_running(pg, ids, force).await?;
    Ok((plans, forced))
}

/// The checkpoint ids that have a history snapshot before `before` (for
/// `fix_checkpoints_from_date` without ids: the others could not be fixed from that date).
pub async fn ids_with_history(pg: &Arc<Pg>, before: NaiveDate) -> Result<Vec<String>> {
    let entries = PostgresHistoryStore::new(Arc::clone(pg)).list(None).await?;
    let mut ids: Vec<String> = entries
        .into_iter()
        .filter(|e| e.date < before)
        .map(|e| e.checkpoint_id)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Applies one checkpoint's fix (one transaction, re-verified).
pub async fn apply_fix(pg: &Arc<Pg>, plan: &FixPlan) -> Result<u64> {
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

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 5, d).expect("date")
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn the_historical_maximum_is_the_largest_sum_or_the_maximum_of_each_partition() {
        // Newest first, as the store returns them: day 3 was rewound.
        let snaps: Vec<Snapshot> = vec![
            (day(3), vec![(tp(0), 10), (tp(1), 90)]),
            (day(2), vec![(tp(0), 50), (tp(1), 60)]),
            (day(1), vec![(tp(0), 40), (tp(1), 70)]),
        ];
        let (what, offsets) = historical_max(&snaps, false).expect("max");
        assert_eq!(what, "the historical maximum: the snapshot of 2024-05-02");
        assert_eq!(offsets, [(tp(0), 50), (tp(1), 60)]);
        let (what, offsets) = historical_max(&snaps, true).expect("max");
        assert_eq!(offsets, [(tp(0), 50), (tp(1), 90)]);
        assert!(
            what.contains("3 snapshots (2024-05-01 to 2024-05-03)"),
            "{what}"
        );
        assert!(historical_max(&[], false).is_none());
        let tie: Vec<Snapshot> = vec![(day(2), vec![(tp(0), 5)]), (day(1), vec![(tp(0), 5)])];
        assert!(
            historical_max(&tie, false)
                .expect("max")
                .0
                .ends_with("2024-05-02"),
            "newest of equals"
        );
    }

    #[test]
    fn a_fix_plan_shows_current_new_and_kept_rows() {
        let current = rows(&[("t", 0, 50), ("u", 0, 1)]);
        let plan = plan_fix("c", "x".into(), &current, &[(tp(0), 40), (tp(1), 7)]);
        let got: Vec<(i32, Option<i64>, i64)> = plan
            .rows
            .iter()
            .map(|r| (r.partition, r.current, r.new))
            .collect();
        assert_eq!(got, [(0, Some(50), 40), (1, None, 7)]);
        assert_eq!(plan.existing.len(), 1);
        assert_eq!(plan.kept[0].topic, "u");
        assert!(!plan.is_noop());
        assert!(plan_fix("c", "x".into(), &current, &[(tp(0), 50)]).is_noop());
    }

    #[test]
    fn fix_files_take_objects_or_commcare_sequence_strings() {
        let m = parse_fix_file(r#"{"a": {"t,1": 5, "t,0": 3}, "b": "{\"t,0\": 9}"}"#).expect("ok");
        assert_eq!(m["a"], [(tp(0), 3), (tp(1), 5)]);
        assert_eq!(m["b"], [(tp(0), 9)]);
        for bad in [
            "[]",
            "{}",
            r#"{"a": {}}"#,
            r#"{"a": {"t": 1}}"#,
            r#"{"a": {"t,0": -1}}"#,
            r#"{"a": {"t,0": "x"}}"#,
            "nope",
        ] {
            let e = parse_fix_file(bad).expect_err(bad);
            assert!(
                e.to_string()
                    .starts_with("invalid arguments: checkpoint file:"),
                "{e}"
            );
        }
    }
}
