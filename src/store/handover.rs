//! Hand-overs of a processor from one pillow to another (online split, issue 14 item 3), in
//! `pillowtop_rs_handover`: one row per (source checkpoint id, processor) naming the target
//! checkpoint id, and the partitions handed over so far.
//!
//! A hand-over of a partition is one transaction: the processor's own row of that partition
//! (`{source}/processor/{name}`; the pillow's row when it has none) is written under the target,
//! the processor's row is deleted and the partition is added to `done`. The processes of a
//! running source each hand over their own partitions once their lane of that processor has
//! stopped after its final checkpoint, so the target starts exactly where the processor stopped.
//! A processor with a hand-over row is not run by its source again.
//!
//! An online merge is the reverse (`kind` = merge): the split's target hands the processor over
//! to the source's processor checkpoint id (the same machinery, so its running processes stop
//! the processor at a chunk boundary after their final checkpoint), and the split's row is
//! marked (`merge_requested_at`). Once the target has handed back every partition of a source
//! process, that process takes the processor back ([`take_back`]): in one transaction the
//! pillow's rows become the lower of theirs and the processor's, and the partitions are added to
//! `returned`; the split's row is deleted with the last partition. The merge row stays, so the
//! target never runs the processor again (a later split of it into that target deletes it).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::checkpoints::processor_checkpoint_id;
use crate::error::Result;
use crate::partition::TopicPartition;
use crate::pg::{err, Pg};

/// One hand-over request and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handover {
    /// The source pillow's checkpoint id.
    pub checkpoint_id: String,
    pub processor: String,
    /// The target pillow's checkpoint id.
    pub target: String,
    pub requested_at: DateTime<Utc>,
    /// The partitions handed over so far and the offsets written under the target
    /// ([`NO_POSITION`]: none, the target starts that partition by its start policy).
    #[serde(serialize_with = "done_as_list")]
    pub done: BTreeMap<TopicPartition, i64>,
    /// A split, or the hand-back of a merge (its target is the source's processor id).
    pub kind: HandoverKind,
    /// On a split: when taking the processor back (an online merge) was asked for.
    pub merge_requested_at: Option<DateTime<Utc>>,
    /// On a split being merged back: the partitions the source has taken back.
    pub returned: BTreeSet<TopicPartition>,
}

/// What a hand-over row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoverKind {
    /// A processor split out of its pillow into another.
    Split,
    /// A split processor handed back by its target to the pillow it came from (online merge):
    /// even a pillow's only processor is handed over (the pillow then has nothing to run).
    Merge,
}

impl HandoverKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Merge => "merge",
        }
    }
}

impl Handover {
    /// Whether every one of `partitions` has been handed over.
    pub fn covers(&self, partitions: &[TopicPartition]) -> bool {
        partitions.iter().all(|tp| self.done.contains_key(tp))
    }

    /// Whether every one of `partitions` has been taken back (an online merge): the source
    /// runs the processor on them again.
    pub fn taken_back(&self, partitions: &[TopicPartition]) -> bool {
        !partitions.is_empty() && partitions.iter().all(|tp| self.returned.contains(tp))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoneRow {
    topic: String,
    partition: i32,
    offset: i64,
}

/// `done` in JSON: a list of `{topic, partition, offset}` (a map's keys must be strings).
fn done_as_list<S: serde::Serializer>(
    done: &BTreeMap<TopicPartition, i64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(done.iter().map(|(tp, o)| DoneRow {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset: *o,
    }))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionRow {
    topic: String,
    partition: i32,
}

fn from_row(r: &tokio_postgres::Row) -> Handover {
    let done: serde_json::Value = r.get(4);
    let done: Vec<DoneRow> = serde_json::from_value(done).unwrap_or_default();
    let returned: Vec<PartitionRow> =
        serde_json::from_value(r.get::<_, serde_json::Value>(7)).unwrap_or_default();
    Handover {
        kind: if r.get::<_, String>(5) == HandoverKind::Merge.as_str() {
            HandoverKind::Merge
        } else {
            HandoverKind::Split
        },
        merge_requested_at: r.get(6),
        returned: returned
            .into_iter()
            .map(|p| TopicPartition::new(p.topic, p.partition))
            .collect(),
        checkpoint_id: r.get(0),
        processor: r.get(1),
        target: r.get(2),
        requested_at: r.get(3),
        done: done
            .into_iter()
            .map(|d| (TopicPartition::new(d.topic, d.partition), d.offset))
            .collect(),
    }
}

const COLUMNS: &str = "checkpoint_id, processor, target_checkpoint_id, requested_at, done, kind, merge_requested_at, returned";

/// The hand-overs of `checkpoint_id` (every one when `None`).
pub async fn load(pg: &Pg, checkpoint_id: Option<&str>) -> Result<Vec<Handover>> {
    let what = format!(
        "reading the hand-overs of {}",
        checkpoint_id.unwrap_or("every pillow")
    );
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            let rows = c
                .query(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_handover WHERE $1::text IS NULL OR checkpoint_id = $1 ORDER BY checkpoint_id, processor"),
                    &[&checkpoint_id],
                )
                .await
                .map_err(err(what))?;
            Ok(rows.iter().map(from_row).collect())
        }
    })
    .await
}

/// Records a request to hand `processor` of `source` over to `target` and returns the row as it
/// now stands (an existing request is returned unchanged: the caller compares its target). The
/// record of an earlier merge of the processor from `target` back into `source` is deleted in
/// the same transaction, so that `target` runs it again.
pub async fn request(pg: &Pg, source: &str, processor: &str, target: &str) -> Result<Handover> {
    let what = format!("requesting the hand-over of processor {processor} of {source} to {target}");
    let lane = processor_checkpoint_id(source, processor);
    crate::store::transaction::transaction(pg, &what, |c| {
        let (what, lane) = (what.clone(), lane.clone());
        async move {
            c.execute(
                "INSERT INTO pillowtop_rs_handover (checkpoint_id, processor, target_checkpoint_id, requested_at)
                 VALUES ($1, $2, $3, now()) ON CONFLICT DO NOTHING",
                &[&source, &processor, &target],
            )
            .await
            .map_err(err(what.clone()))?;
            c.execute(
                "DELETE FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2
                 AND kind = 'merge' AND target_checkpoint_id = $3",
                &[&target, &processor, &lane],
            )
            .await
            .map_err(err(what.clone()))?;
            let row = c
                .query_one(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2"),
                    &[&source, &processor],
                )
                .await
                .map_err(err(what))?;
            Ok(from_row(&row))
        }
    })
    .await
}

/// Asks for `processor`, split out of `source` into `target`, back (online merge): the split's
/// row is marked and `target` is asked to hand the processor over to the source's processor
/// checkpoint id, in one transaction. Returns the split's row and the hand-back's, or `None`
/// when `processor` of `source` was not split into `target`.
pub async fn request_merge(
    pg: &Pg,
    source: &str,
    processor: &str,
    target: &str,
) -> Result<Option<(Handover, Handover)>> {
    let what = format!("asking for processor {processor} of {target} back into {source}");
    let lane = processor_checkpoint_id(source, processor);
    crate::store::transaction::transaction(pg, &what, |c| {
        let (what, lane) = (what.clone(), lane.clone());
        async move {
            let n = c
                .execute(
                    "UPDATE pillowtop_rs_handover SET merge_requested_at = COALESCE(merge_requested_at, now())
                     WHERE checkpoint_id = $1 AND processor = $2 AND target_checkpoint_id = $3 AND kind = 'split'",
                    &[&source, &processor, &target],
                )
                .await
                .map_err(err(what.clone()))?;
            if n == 0 {
                return Ok(None);
            }
            c.execute(
                "INSERT INTO pillowtop_rs_handover (checkpoint_id, processor, target_checkpoint_id, requested_at, kind)
                 VALUES ($1, $2, $3, now(), 'merge') ON CONFLICT DO NOTHING",
                &[&target, &processor, &lane],
            )
            .await
            .map_err(err(what.clone()))?;
            let rows = c
                .query(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_handover WHERE (checkpoint_id = $1 OR checkpoint_id = $2) AND processor = $3"),
                    &[&source, &target, &processor],
                )
                .await
                .map_err(err(what))?;
            let rows: Vec<Handover> = rows.iter().map(from_row).collect();
            let split = rows.iter().find(|h| h.checkpoint_id == source).cloned();
            let back = rows.iter().find(|h| h.checkpoint_id == target).cloned();
            Ok(split.zip(back))
        }
    })
    .await
}

/// What [`take_back`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenBack {
    /// The partitions taken back by this call and the pillow's offset on each afterwards.
    pub partitions: BTreeMap<TopicPartition, Option<i64>>,
    /// Every partition of the split has been taken back: its row is gone.
    pub complete: bool,
}

/// What a take-back writes, per partition ([`lowered`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Lowered {
    /// The pillow's offset afterwards (none: neither had a row).
    taken: BTreeMap<TopicPartition, Option<i64>>,
    /// The pillow's rows that move down (or are created).
    lower: BTreeMap<TopicPartition, i64>,
    /// Every partition's offset afterwards, for a processor row that is missing.
    seed: BTreeMap<TopicPartition, i64>,
}

/// A pillow's row after taking a processor back: the lower of its own offset and the
/// processor's (either may be missing: the other is kept).
pub fn lower_offset(pillow: Option<i64>, processor: Option<i64>) -> Option<i64> {
    match (pillow, processor) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    }
}

/// Locks and reads the rows of the pillow `pillow` and of its processor checkpoint `lane`,
/// as (the pillow's, the processor's).
async fn lock_rows(
    c: &tokio_postgres::Client,
    pillow: &str,
    lane: &str,
    what: &str,
) -> Result<(BTreeMap<TopicPartition, i64>, BTreeMap<TopicPartition, i64>)> {
    let rows = c
        .query(
            r#"SELECT checkpoint_id, topic, "partition", "offset" FROM pillowtop_kafkacheckpoint
               WHERE checkpoint_id = $1 OR checkpoint_id = $2 FOR UPDATE"#,
            &[&lane, &pillow],
        )
        .await
        .map_err(err(what.to_owned()))?;
    let (mut pillow_rows, mut lane_rows) = (BTreeMap::new(), BTreeMap::new());
    for r in &rows {
        let id: String = r.get(0);
        let tp = TopicPartition::new(r.get::<_, String>(1), r.get(2));
        if id == lane {
            lane_rows.insert(tp, r.get::<_, i64>(3));
        } else {
            pillow_rows.insert(tp, r.get::<_, i64>(3));
        }
    }
    Ok((pillow_rows, lane_rows))
}

/// The lower of the pillow's row and the processor's handed-back row of each of `todo`: no
/// processor of the pillow skips a change (a partition handed back without a row starts where
/// the pillow is).
fn lowered(
    todo: &[TopicPartition],
    pillow: &BTreeMap<TopicPartition, i64>,
    processor: &BTreeMap<TopicPartition, i64>,
) -> Lowered {
    let mut out = Lowered::default();
    for tp in todo {
        let (a, p) = (pillow.get(tp).copied(), processor.get(tp).copied());
        let new = lower_offset(a, p);
        if let Some(n) = new {
            if a != Some(n) {
                out.lower.insert(tp.clone(), n);
            }
            out.seed.insert(tp.clone(), n);
        }
        out.taken.insert(tp.clone(), new);
    }
    out
}

/// Takes `split.processor` back into `split.checkpoint_id` for `partitions` (every partition
/// of the split when `None`) once the split's target has handed it back for all of them; `None`
/// until then. In one transaction: each partition's pillow row becomes the lower of it and the
/// processor's handed-back row (so no processor of the pillow skips a change: the others see
/// `max − min` again when the processor was behind, as in an offline merge; a partition handed
/// back without a position starts where the pillow is), the partitions join `returned`, and the
/// split's row is deleted with the last one. `keep_lane_rows` (a pillow with independent
/// processor checkpoints): the handed-back row stays as the processor's own (written from the
/// pillow's when it has none), and the coordinator's record of the pillow's rows
/// (`{pillow}/processor/`) moves with them; otherwise the handed-back row is deleted. A split
/// row already gone means the take-back is complete.
pub async fn take_back(
    pg: &Pg,
    split: &Handover,
    partitions: Option<&[TopicPartition]>,
    keep_lane_rows: bool,
) -> Result<Option<TakenBack>> {
    let lane = processor_checkpoint_id(&split.checkpoint_id, &split.processor);
    let what = format!(
        "taking processor {} back from {} into {}",
        split.processor, split.target, split.checkpoint_id
    );
    let wanted: Vec<TopicPartition> =
        partitions.map_or_else(|| split.done.keys().cloned().collect(), <[_]>::to_vec);
    crate::store::transaction::transaction(pg, &what, |c| {
        let (what, lane, wanted) = (what.clone(), lane.clone(), wanted.clone());
        async move {
            let Some(current) = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2 FOR UPDATE"),
                    &[&split.checkpoint_id, &split.processor],
                )
                .await
                .map_err(err(what.clone()))?
            else {
                return Ok(Some(TakenBack { partitions: BTreeMap::new(), complete: true }));
            };
            let current = from_row(&current);
            let back = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2 AND kind = 'merge' FOR UPDATE"),
                    &[&current.target, &current.processor],
                )
                .await
                .map_err(err(what.clone()))?
                .map(|r| from_row(&r));
            let Some(back) = back else { return Ok(None) };
            if current.merge_requested_at.is_none() || !back.covers(&wanted) {
                return Ok(None);
            }
            let todo: Vec<TopicPartition> = wanted
                .iter()
                .filter(|tp| !current.returned.contains(*tp))
                .cloned()
                .collect();
            let (pillow_rows, lane_rows) =
                lock_rows(&c, &current.checkpoint_id, &lane, &what).await?;
            let Lowered { taken, lower, seed } = lowered(&todo, &pillow_rows, &lane_rows);
            upsert_rows(&c, &current.checkpoint_id, &lower, &what).await?;
            if keep_lane_rows {
                let seed: BTreeMap<TopicPartition, i64> = seed
                    .into_iter()
                    .filter(|(tp, _)| !lane_rows.contains_key(tp))
                    .collect();
                upsert_rows(&c, &lane, &seed, &what).await?;
                // The coordinator's record of the pillow's rows moves with them: the lower row
                // is not an operator's move (which would move every processor back to it).
                let marker = processor_checkpoint_id(&current.checkpoint_id, "");
                upsert_rows(&c, &marker, &lower, &what).await?;
            } else {
                delete_rows(&c, &lane, &todo, &what).await?;
            }
            let mut returned = current.returned.clone();
            returned.extend(todo.iter().cloned());
            let complete = current.done.keys().all(|tp| returned.contains(tp));
            if complete {
                c.execute(
                    "DELETE FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2",
                    &[&current.checkpoint_id, &current.processor],
                )
                .await
                .map_err(err(what.clone()))?;
            } else {
                let list: Vec<PartitionRow> = returned
                    .iter()
                    .map(|tp| PartitionRow { topic: tp.topic.clone(), partition: tp.partition })
                    .collect();
                c.execute(
                    "UPDATE pillowtop_rs_handover SET returned = $3::jsonb WHERE checkpoint_id = $1 AND processor = $2",
                    &[&current.checkpoint_id, &current.processor, &serde_json::to_value(list).unwrap_or_default()],
                )
                .await
                .map_err(err(what.clone()))?;
            }
            Ok(Some(TakenBack { partitions: taken, complete }))
        }
    })
    .await
}

/// Deletes the request of `processor` of `source`: only while nothing has been handed over
/// (`only_if_untouched`), or in any case. Returns whether a row was deleted.
pub async fn withdraw(
    pg: &Pg,
    source: &str,
    processor: &str,
    only_if_untouched: bool,
) -> Result<bool> {
    let what = format!("withdrawing the hand-over of processor {processor} of {source}");
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            let n = c
                .execute(
                    "DELETE FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2
                     AND (NOT $3 OR done = '[]'::jsonb)",
                    &[&source, &processor, &only_if_untouched],
                )
                .await
                .map_err(err(what))?;
            Ok(n > 0)
        }
    })
    .await
}

/// Withdraws an online merge nothing has happened to yet (`back` handed nothing over, `split`
/// took nothing back), in one transaction. Returns whether it was withdrawn.
pub async fn withdraw_merge(pg: &Pg, split: &Handover, back: &Handover) -> Result<bool> {
    let what = format!(
        "withdrawing the merge of processor {} of {} back into {}",
        split.processor, back.checkpoint_id, split.checkpoint_id
    );
    crate::store::transaction::transaction(pg, &what, |c| {
        let what = what.clone();
        async move {
            let n = c
                .execute(
                    "DELETE FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2
                     AND kind = 'merge' AND done = '[]'::jsonb",
                    &[&back.checkpoint_id, &back.processor],
                )
                .await
                .map_err(err(what.clone()))?;
            if n == 0 {
                return Ok(false);
            }
            c.execute(
                "UPDATE pillowtop_rs_handover SET merge_requested_at = NULL
                 WHERE checkpoint_id = $1 AND processor = $2 AND returned = '[]'::jsonb",
                &[&split.checkpoint_id, &split.processor],
            )
            .await
            .map_err(err(what))?;
            Ok(true)
        }
    })
    .await
}

/// Hands over `partitions` (every partition the processor or the pillow has a row for, when
/// `None`) of `h`, in one transaction (see the module docs). Partitions already handed over are
/// skipped; a partition of `partitions` neither the processor nor the pillow has a row for is
/// recorded as handed over at [`NO_POSITION`] (the target starts it by its start policy, as the
/// processor would have). Returns what this call recorded.
pub async fn hand_over(
    pg: &Pg,
    h: &Handover,
    partitions: Option<&[TopicPartition]>,
) -> Result<BTreeMap<TopicPartition, i64>> {
    let lane = processor_checkpoint_id(&h.checkpoint_id, &h.processor);
    let what = format!(
        "handing processor {} of {} over to {}",
        h.processor, h.checkpoint_id, h.target
    );
    let wanted: Option<Vec<TopicPartition>> = partitions.map(<[TopicPartition]>::to_vec);
    crate::store::transaction::transaction(pg, &what, |c| {
        let (what, lane, wanted) = (what.clone(), lane.clone(), wanted.clone());
        async move {
            let current = c
                .query_one(
                    "SELECT done FROM pillowtop_rs_handover WHERE checkpoint_id = $1 AND processor = $2 FOR UPDATE",
                    &[&h.checkpoint_id, &h.processor],
                )
                .await
                .map_err(err(what.clone()))?;
            let done: Vec<DoneRow> =
                serde_json::from_value(current.get::<_, serde_json::Value>(0)).unwrap_or_default();
            let already: std::collections::BTreeSet<TopicPartition> = done
                .iter()
                .map(|d| TopicPartition::new(d.topic.clone(), d.partition))
                .collect();
            // The processor's own row, else the pillow's.
            let (mut position, own_rows) = lock_rows(&c, &h.checkpoint_id, &lane, &what).await?;
            position.extend(own_rows);
            // A partition of this process that neither has a row for: the processor has no
            // position there (it starts it by its start policy), and neither will the target.
            // It is recorded as handed over without one (NO_POSITION), so that a later call
            // never hands it over from a row written after the processor stopped.
            let unpositioned: Vec<TopicPartition> = wanted
                .iter()
                .flatten()
                .filter(|tp| !already.contains(*tp) && !position.contains_key(*tp))
                .cloned()
                .collect();
            let handed: BTreeMap<TopicPartition, i64> = position
                .into_iter()
                .filter(|(tp, _)| !already.contains(tp))
                .filter(|(tp, _)| wanted.as_ref().is_none_or(|w| w.contains(tp)))
                .collect();
            if handed.is_empty() && unpositioned.is_empty() {
                return Ok(handed);
            }
            if !handed.is_empty() {
                write_target_rows(&c, h, &lane, &handed, &what).await?;
            }
            let mut recorded = handed;
            recorded.extend(unpositioned.into_iter().map(|tp| (tp, NO_POSITION)));
            record_done(&c, h, &recorded, &what).await?;
            Ok(recorded)
        }
    })
    .await
}

/// Writes `handed` under the target and deletes the processor's own rows of those partitions.
async fn write_target_rows(
    c: &tokio_postgres::Client,
    h: &Handover,
    lane: &str,
    handed: &BTreeMap<TopicPartition, i64>,
    what: &str,
) -> Result<()> {
    upsert_rows(c, &h.target, handed, what).await?;
    let parts: Vec<TopicPartition> = handed.keys().cloned().collect();
    delete_rows(c, lane, &parts, what).await
}

/// Writes `rows` under checkpoint id `id` (inserted, or their offsets replaced).
async fn upsert_rows(
    c: &tokio_postgres::Client,
    id: &str,
    rows: &BTreeMap<TopicPartition, i64>,
    what: &str,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = rows.keys().map(|tp| tp.topic.as_str()).collect();
    let parts: Vec<i32> = rows.keys().map(|tp| tp.partition).collect();
    let offsets: Vec<i64> = rows.values().copied().collect();
    c.execute(
        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
           SELECT $1, t, p, o, NULL, now() FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o)
           ON CONFLICT (checkpoint_id, topic, "partition") DO UPDATE SET "offset" = EXCLUDED."offset", last_modified = now()"#,
        &[&id, &topics, &parts, &offsets],
    )
    .await
    .map_err(err(what.to_owned()))?;
    Ok(())
}

/// Deletes the rows of `partitions` under checkpoint id `id`.
async fn delete_rows(
    c: &tokio_postgres::Client,
    id: &str,
    partitions: &[TopicPartition],
    what: &str,
) -> Result<()> {
    if partitions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = partitions.iter().map(|tp| tp.topic.as_str()).collect();
    let parts: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
    c.execute(
        r#"DELETE FROM pillowtop_kafkacheckpoint AS k USING unnest($2::text[], $3::int[]) AS u(t, p)
           WHERE k.checkpoint_id = $1 AND k.topic = u.t AND k."partition" = u.p"#,
        &[&id, &topics, &parts],
    )
    .await
    .map_err(err(what.to_owned()))?;
    Ok(())
}

/// The offset recorded in [`Handover::done`] for a partition handed over without a position
/// (no row for it at the hand-over: the target starts it by its start policy).
pub const NO_POSITION: i64 = -1;

/// Adds `recorded` to the request's `done`.
async fn record_done(
    c: &tokio_postgres::Client,
    h: &Handover,
    recorded: &BTreeMap<TopicPartition, i64>,
    what: &str,
) -> Result<()> {
    let added: Vec<DoneRow> = recorded
        .iter()
        .map(|(tp, o)| DoneRow {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: *o,
        })
        .collect();
    let added = serde_json::to_value(added).unwrap_or_default();
    c.execute(
        "UPDATE pillowtop_rs_handover SET done = done || $3::jsonb WHERE checkpoint_id = $1 AND processor = $2",
        &[&h.checkpoint_id, &h.processor, &added],
    )
    .await
    .map_err(err(what.to_owned()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_back_keeps_the_lower_row_and_starts_a_partition_without_one_where_the_pillow_is() {
        let tp = |p| TopicPartition::new("t", p);
        let pillow = BTreeMap::from([(tp(0), 30), (tp(1), 8), (tp(2), 5)]);
        let processor = BTreeMap::from([(tp(0), 20), (tp(1), 12), (tp(3), 7)]);
        let todo = [tp(0), tp(1), tp(2), tp(3), tp(4)];
        let l = lowered(&todo, &pillow, &processor);
        assert_eq!(
            l.taken,
            BTreeMap::from([
                (tp(0), Some(20)),
                (tp(1), Some(8)),
                (tp(2), Some(5)),
                (tp(3), Some(7)),
                (tp(4), None)
            ])
        );
        // Only rows that move down (or are new) are written.
        assert_eq!(l.lower, BTreeMap::from([(tp(0), 20), (tp(3), 7)]));
        assert_eq!(
            l.seed,
            BTreeMap::from([(tp(0), 20), (tp(1), 8), (tp(2), 5), (tp(3), 7)])
        );
    }
}
