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

use std::collections::BTreeMap;

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
    pub done: BTreeMap<TopicPartition, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoneRow {
    topic: String,
    partition: i32,
    offset: i64,
}

fn from_row(r: &tokio_postgres::Row) -> Handover {
    let done: serde_json::Value = r.get(4);
    let done: Vec<DoneRow> = serde_json::from_value(done).unwrap_or_default();
    Handover {
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

const COLUMNS: &str = "checkpoint_id, processor, target_checkpoint_id, requested_at, done";

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
/// now stands (an existing request is returned unchanged: the caller compares its target).
pub async fn request(pg: &Pg, source: &str, processor: &str, target: &str) -> Result<Handover> {
    let what = format!("requesting the hand-over of processor {processor} of {source} to {target}");
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            c.execute(
                "INSERT INTO pillowtop_rs_handover (checkpoint_id, processor, target_checkpoint_id, requested_at)
                 VALUES ($1, $2, $3, now()) ON CONFLICT DO NOTHING",
                &[&source, &processor, &target],
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
            let rows = c
                .query(
                    r#"SELECT checkpoint_id, topic, "partition", "offset" FROM pillowtop_kafkacheckpoint
                       WHERE checkpoint_id = $1 OR checkpoint_id = $2 FOR UPDATE"#,
                    &[&lane, &h.checkpoint_id],
                )
                .await
                .map_err(err(what.clone()))?;
            // The processor's own row, else the pillow's.
            let mut position: BTreeMap<TopicPartition, i64> = BTreeMap::new();
            for r in &rows {
                let id: String = r.get(0);
                let tp = TopicPartition::new(r.get::<_, String>(1), r.get(2));
                let offset: i64 = r.get(3);
                if id == lane {
                    position.insert(tp, offset);
                } else {
                    position.entry(tp).or_insert(offset);
                }
            }
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
    let topics: Vec<&str> = handed.keys().map(|tp| tp.topic.as_str()).collect();
    let parts: Vec<i32> = handed.keys().map(|tp| tp.partition).collect();
    let offsets: Vec<i64> = handed.values().copied().collect();
    c.execute(
                r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
                   SELECT $1, t, p, o, NULL, now() FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o)
                   ON CONFLICT (checkpoint_id, topic, "partition") DO UPDATE SET "offset" = EXCLUDED."offset", last_modified = now()"#,
                &[&h.target, &topics, &parts, &offsets],
            )
            .await
            .map_err(err(what.to_owned()))?;
    c.execute(
        r#"DELETE FROM pillowtop_kafkacheckpoint AS k USING unnest($2::text[], $3::int[]) AS u(t, p)
                   WHERE k.checkpoint_id = $1 AND k.topic = u.t AND k."partition" = u.p"#,
        &[&lane, &topics, &parts],
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
