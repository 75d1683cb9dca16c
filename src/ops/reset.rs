//! Reset a checkpoint, or one partition of it, to the earliest retained offset, the high-water
//! mark, an explicit offset, or the first offset at or after a timestamp (Kafka's
//! offsets-for-times). CommCare's `ptop_reset_checkpoint` deleted the rows, which replayed from
//! the earliest retained offset at the next start; here the new offsets are explicit, shown
//! first, and written in one transaction that checks the rows did not move since the plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::kafka::{KafkaInfo, Watermarks};
use super::{refuse_running, verify_unchanged, OpsError, Result, Row};
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::{CheckpointRow, KeyedOffset};
use crate::store::liveness::ProcessRow;

/// Where to move the offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    /// The first retained offset (a replay of the whole retention).
    Earliest,
    /// The high-water mark (skip everything published so far).
    Latest,
    /// This offset on every selected partition.
    Offset(i64),
    /// The first message at or after this time.
    Timestamp(DateTime<Utc>),
}

impl std::fmt::Display for ResetTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::Offset(o) => write!(f, "offset {o}"),
            Self::Timestamp(t) => write!(f, "time {}", t.to_rfc3339()),
        }
    }
}

/// Which partitions to reset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// The partitions the checkpoint has rows for.
    #[default]
    Existing,
    /// Every partition of these topics (rows are created where missing).
    Topics(Vec<String>),
    /// One partition.
    Partition(TopicPartition),
}

/// One partition of a reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResetRow {
    pub topic: String,
    pub partition: i32,
    /// The stored offset (`None`: no row yet).
    pub current: Option<i64>,
    pub new: i64,
    pub low: i64,
    pub high: i64,
}

/// What a reset will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResetPlan {
    pub checkpoint_id: String,
    pub to: String,
    pub rows: Vec<ResetRow>,
    /// The current rows of the selected partitions (checked again when applying).
    pub existing: Vec<Row>,
}

/// Plans a reset of `partitions` of `checkpoint_id`. `for_time` holds Kafka's answer for a
/// [`ResetTo::Timestamp`].
pub fn plan_reset(
    checkpoint_id: &str,
    current: &[CheckpointRow],
    partitions: &[TopicPartition],
    watermarks: &BTreeMap<TopicPartition, Watermarks>,
    to: &ResetTo,
    for_time: Option<&BTreeMap<TopicPartition, i64>>,
) -> Result<ResetPlan> {
    if partitions.is_empty() {
        return Err(OpsError::NoSourceRows {
            ids: vec![checkpoint_id.to_owned()],
            detail: String::new(),
        });
    }
    let mut rows = Vec::new();
    let mut existing = Vec::new();
    for tp in partitions {
        let w = watermarks.get(tp).ok_or_else(|| {
            OpsError::InvalidArgument(format!(
                "partition {tp} of checkpoint {checkpoint_id} does not exist in kafka"
            ))
        })?;
        let new = match to {
            ResetTo::Earliest => w.low,
            ResetTo::Latest => w.high,
            ResetTo::Offset(o) => {
                if *o < w.low || *o > w.high {
                    return Err(OpsError::OutOfRange {
                        checkpoint_id: checkpoint_id.to_owned(),
                        tp: tp.clone(),
                        offset: *o,
                        low: w.low,
                        high: w.high,
                    });
                }
                *o
            }
            ResetTo::Timestamp(_) => for_time
                .and_then(|m| m.get(tp).copied())
                .ok_or_else(|| {
                    OpsError::InvalidArgument(format!(
                        "kafka gave no offset for {tp} of checkpoint {checkpoint_id} at that time"
                    ))
                })?
                .max(w.low),
        };
        let row = current.iter().find(|r| r.tp == *tp);
        if let Some(r) = row {
            existing.push(Row::new(checkpoint_id, r));
        }
        rows.push(ResetRow {
            topic: tp.topic.clone(),
            partition: tp.partition,
            current: row.map(|r| r.offset),
            new,
            low: w.low,
            high: w.high,
        });
    }
    Ok(ResetPlan {
        checkpoint_id: checkpoint_id.to_owned(),
        to: to.to_string(),
        rows,
        existing,
    })
}

/// The partitions `selection` names, given the checkpoint's rows and Kafka.
pub async fn select(
    kafka: &KafkaInfo,
    current: &[CheckpointRow],
    selection: &Selection,
) -> Result<Vec<TopicPartition>> {
    Ok(match selection {
        Selection::Existing => current.iter().map(|r| r.tp.clone()).collect(),
        Selection::Topics(topics) => kafka.partitions(topics).await?,
        Selection::Partition(tp) => vec![tp.clone()],
    })
}

/// Reads what a reset needs (rows, watermarks, offsets for a time) and the liveness rows,
/// refuses while the checkpoint's pillow has a live process (unless `force`), and plans the
/// reset. Returns the plan and the live processes that `force` overrode.
pub async fn prepare_reset(
    pg: &Arc<Pg>,
    kafka: &KafkaInfo,
    checkpoint_id: &str,
    selection: &Selection,
    to: &ResetTo,
    force: bool,
) -> Result<(ResetPlan, Vec<ProcessRow>)> {
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&[checkpoint_id.to_owned()])
        .await?;
    let current = rows.get(checkpoint_id).cloned().unwrap_or_default();
    let partitions = select(kafka, &current, selection).await?;
    let watermarks = kafka.watermarks(&partitions).await?;
    let for_time = match to {
        ResetTo::Timestamp(t) => Some(
            kafka
                .offsets_for_time(&partitions, t.timestamp_millis())
                .await?,
        ),
        _ => None,
    };
    let plan = plan_reset(
        checkpoint_id,
        &current,
        &partitions,
        &watermarks,
        to,
        for_time.as_ref(),
    )?;
    let forced = refuse_running(pg, &[checkpoint_id.to_owned()], force).await?;
    Ok((plan, forced))
}

/// Applies `plan` in one transaction (checking the selected rows did not move since the plan).
pub async fn apply_reset(pg: &Arc<Pg>, plan: &ResetPlan) -> Result<u64> {
    let writes: Vec<(TopicPartition, i64)> = plan
        .rows
        .iter()
        .map(|r| (TopicPartition::new(r.topic.clone(), r.partition), r.new))
        .collect();
    apply_offsets(pg, &plan.checkpoint_id, &plan.existing, &writes).await
}

/// Writes `writes` to `checkpoint_id` in one transaction after checking that the stored rows of
/// those partitions are exactly `existing` (locked with `FOR UPDATE`).
pub(crate) async fn apply_offsets(
    pg: &Arc<Pg>,
    checkpoint_id: &str,
    existing: &[Row],
    writes: &[(TopicPartition, i64)],
) -> Result<u64> {
    let partitions: Vec<TopicPartition> = writes.iter().map(|w| w.0.clone()).collect();
    let writes: Vec<KeyedOffset> = writes
        .iter()
        .map(|(tp, o)| (checkpoint_id.to_owned(), tp.clone(), *o))
        .collect();
    let what = format!("writing checkpoint {checkpoint_id}");
    let (partitions, writes) = (&partitions, &writes);
    let store = PostgresCheckpointStore::new(Arc::clone(pg));
    store
        .transaction(&what, |tx| async move {
            let found = tx.lock(checkpoint_id, partitions).await?;
            verify_unchanged(existing, &found)?;
            Ok(tx.upsert(writes).await?)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::rows;
    use super::*;

    fn wm(v: &[(&str, i32, i64, i64)]) -> BTreeMap<TopicPartition, Watermarks> {
        v.iter()
            .map(|(t, p, low, high)| {
                (
                    TopicPartition::new(*t, *p),
                    Watermarks {
                        low: *low,
                        high: *high,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn resolves_each_target_kind() {
        let current = rows(&[("t", 0, 50), ("t", 1, 60)]);
        let parts: Vec<TopicPartition> = current.iter().map(|r| r.tp.clone()).collect();
        let w = wm(&[("t", 0, 10, 100), ("t", 1, 0, 80)]);
        let news = |to: &ResetTo, ft: Option<&BTreeMap<TopicPartition, i64>>| {
            plan_reset("c", &current, &parts, &w, to, ft)
                .map(|p| p.rows.iter().map(|r| r.new).collect::<Vec<_>>())
        };
        assert_eq!(news(&ResetTo::Earliest, None).expect("ok"), [10, 0]);
        assert_eq!(news(&ResetTo::Latest, None).expect("ok"), [100, 80]);
        assert_eq!(news(&ResetTo::Offset(20), None).expect("ok"), [20, 20]);
        let e = news(&ResetTo::Offset(5), None).expect_err("below the low watermark");
        assert_eq!(
            e.to_string(),
            "offset 5 for t,0 of checkpoint c is outside the retained range 10..=100"
        );
        let ft: BTreeMap<TopicPartition, i64> =
            [(parts[0].clone(), 3), (parts[1].clone(), 70)].into();
        let ts = ResetTo::Timestamp(DateTime::from_timestamp(0, 0).expect("ts"));
        assert_eq!(
            news(&ts, Some(&ft)).expect("ok"),
            [10, 70],
            "clamped to retention"
        );
        let plan = plan_reset("c", &current, &parts, &w, &ResetTo::Latest, None).expect("ok");
        assert_eq!(plan.existing.len(), 2);
        assert_eq!(plan.rows[0].current, Some(50));
    }

    #[test]
    fn new_partitions_and_unknown_partitions() {
        let parts = vec![TopicPartition::new("t", 0)];
        let plan = plan_reset(
            "c",
            &[],
            &parts,
            &wm(&[("t", 0, 0, 9)]),
            &ResetTo::Latest,
            None,
        )
        .expect("a partition without a row gets one");
        assert_eq!(plan.rows[0].current, None);
        assert!(plan.existing.is_empty());
        assert!(plan_reset("c", &[], &parts, &wm(&[]), &ResetTo::Latest, None).is_err());
        assert!(plan_reset("c", &[], &[], &wm(&[]), &ResetTo::Latest, None).is_err());
    }
}
