//! `pillowtop split SOURCE TARGET --processor NAME [--online]`: moves one processor out of a
//! pillow with its own position (issue 14, item 3). Ours: CommCare copies the pillow's shared
//! checkpoint and needs the pillow stopped.
//!
//! * The source stopped: the processor's own rows (`{source}/processor/{name}`, else the
//!   pillow's) are written under the target in one transaction ([`handover::hand_over`]).
//! * The source running (`--online`, either mode): a request row is written; each live process
//!   stops running that processor at a chunk boundary after a checkpoint (an independent
//!   pillow's lane after its final one; [`crate::pillow::handover`] for one shared checkpoint)
//!   and hands its own partitions over; this waits until every partition is handed over. The
//!   other processors never stop.
//!
//! Either way the source no longer runs the processor (it skips it at its next start, too), and
//! the target starts exactly where the processor stopped: nothing is handled twice.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{check_ids, check_not_running, OpsError, Result, Row};
use crate::partition::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::processor_checkpoint_id;
use crate::store::handover::{self, Handover};
use crate::store::liveness::postgres::PostgresLivenessStore;
use crate::store::liveness::{LivenessStore, ProcessRow};

/// What a processor split will do.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorSplitPlan {
    pub source: String,
    pub processor: String,
    pub target: String,
    /// The live processes of the source (they hand over their partitions).
    #[serde(skip)]
    pub live: Vec<ProcessRow>,
    /// How many live processes of the source there are.
    pub live_processes: usize,
    /// The processor's position now, per partition (its own rows, else the pillow's): what is
    /// handed over when the source is stopped, a lower bound while it runs.
    pub position: Vec<Row>,
    /// The target's rows that are overwritten.
    pub existing: Vec<Row>,
    /// A request already recorded for this processor.
    pub pending: Option<Handover>,
}

impl ProcessorSplitPlan {
    /// The partitions to hand over.
    pub fn partitions(&self) -> BTreeSet<TopicPartition> {
        self.position.iter().map(Row::tp).collect()
    }
}

/// The arguments of a processor's split or merge: two valid checkpoint ids and a name.
fn check_request(source: &str, processor: &str, target: &str) -> Result<()> {
    check_ids(&[source.to_owned(), target.to_owned()])?;
    if processor.is_empty() {
        return Err(OpsError::InvalidArgument(
            "the processor name is empty".into(),
        ));
    }
    Ok(())
}

/// Reads the rows and live processes and plans the split of `processor` out of `source` into
/// `target`. A running source needs `online` (or `force`, which then hands over without the
/// pillow's cooperation: only safe when it is in fact stopped); a running target is refused
/// unless `force` (it must start after the hand-over, from the rows it writes).
pub async fn prepare(
    pg: &Arc<Pg>,
    source: &str,
    processor: &str,
    target: &str,
    online: bool,
    force: bool,
) -> Result<ProcessorSplitPlan> {
    check_request(source, processor, target)?;
    let lane = processor_checkpoint_id(source, processor);
    let ids = vec![source.to_owned(), lane.clone(), target.to_owned()];
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&ids)
        .await?;
    let mut position: std::collections::BTreeMap<TopicPartition, Row> =
        std::collections::BTreeMap::new();
    for r in rows.get(&lane).into_iter().flatten() {
        position.insert(r.tp.clone(), Row::new(&lane, r));
    }
    for r in rows.get(source).into_iter().flatten() {
        position
            .entry(r.tp.clone())
            .or_insert_with(|| Row::new(source, r));
    }
    let pending = handover::load(pg, Some(source))
        .await?
        .into_iter()
        .find(|h| h.processor == processor);
    if let Some(h) = &pending {
        if h.merge_requested_at.is_some() {
            return Err(OpsError::InvalidArgument(format!(
                "processor {processor} of {source} is being merged back from {} (asked for {}): wait for `merge --processor` to finish",
                h.target,
                h.merge_requested_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            )));
        }
        if h.target != target {
            return Err(OpsError::InvalidArgument(format!(
                "processor {processor} of {source} is already being handed over to {} (requested {})",
                h.target, h.requested_at
            )));
        }
    }
    if position.is_empty() && pending.is_none() {
        return Err(OpsError::NoSourceRows {
            ids: vec![lane, source.to_owned()],
            detail: String::new(),
        });
    }
    let processes = PostgresLivenessStore::new(Arc::clone(pg))
        .list(None)
        .await?;
    let live = check_not_running(&processes, &[source.to_owned()], true)?;
    if !live.is_empty() && !online && !force {
        // The offline refusal, naming the processes.
        check_not_running(&processes, &[source.to_owned()], false)?;
    }
    check_not_running(&processes, &[target.to_owned()], force)?;
    let existing = rows
        .get(target)
        .map(|v| v.iter().map(|r| Row::new(target, r)).collect())
        .unwrap_or_default();
    Ok(ProcessorSplitPlan {
        source: source.to_owned(),
        processor: processor.to_owned(),
        target: target.to_owned(),
        live_processes: live.len(),
        live,
        position: position.into_values().collect(),
        existing,
        pending,
    })
}

/// Applies `plan`: records the request, then hands over directly (no live process) or waits up
/// to `timeout` for the live processes to hand over their partitions, calling `progress` with
/// the request's state at each poll. Returns the completed hand-over. `stop` (Ctrl-C) ends the
/// wait as the timeout does: a request no process has taken up yet is withdrawn, so an
/// interrupted split changes nothing.
pub async fn apply(
    pg: &Arc<Pg>,
    plan: &ProcessorSplitPlan,
    timeout: Duration,
    stop: &CancellationToken,
    mut progress: impl FnMut(&Handover, usize),
) -> Result<Handover> {
    let h = handover::request(pg, &plan.source, &plan.processor, &plan.target).await?;
    if h.target != plan.target {
        return Err(OpsError::InvalidArgument(format!(
            "processor {} of {} is already being handed over to {}",
            plan.processor, plan.source, h.target
        )));
    }
    let wanted = plan.partitions();
    let started = Instant::now();
    loop {
        let h = handover::load(pg, Some(&plan.source))
            .await?
            .into_iter()
            .find(|x| x.processor == plan.processor)
            .ok_or_else(|| OpsError::NotHandedOver {
                source_id: plan.source.clone(),
                processor: plan.processor.clone(),
                target: plan.target.clone(),
                detail: "the request was withdrawn meanwhile".into(),
            })?;
        progress(&h, wanted.len());
        if wanted.iter().all(|tp| h.done.contains_key(tp)) {
            return Ok(h);
        }
        // No live process left (or none from the start): hand over what remains directly.
        let processes = PostgresLivenessStore::new(Arc::clone(pg))
            .list(None)
            .await?;
        let live = check_not_running(&processes, std::slice::from_ref(&plan.source), true)?;
        if live.is_empty() {
            handover::hand_over(pg, &h, None).await?;
            let done = handover::load(pg, Some(&plan.source))
                .await?
                .into_iter()
                .find(|x| x.processor == plan.processor)
                .unwrap_or(h);
            progress(&done, wanted.len());
            return Ok(done);
        }
        let interrupted = stop.is_cancelled();
        if interrupted || started.elapsed() >= timeout {
            let how_long = if interrupted {
                format!("interrupted after {} s", started.elapsed().as_secs())
            } else {
                format!("within {} s", timeout.as_secs())
            };
            let detail = if h.done.is_empty()
                && handover::withdraw(pg, &plan.source, &plan.processor, true).await?
            {
                if interrupted {
                    format!("{how_long}, before any process of {} took the request up; the request was withdrawn and nothing changed", plan.source)
                } else {
                    format!(
                        "no live process of {} took the request up {how_long} (is {} the pillow's only processor, or does the source run a version without online split?); the request was withdrawn and nothing changed",
                        plan.source, plan.processor
                    )
                }
            } else {
                format!(
                    "{} of {} partitions handed over ({how_long}); the request stays (those processes no longer run the processor): run the command again to wait for the rest",
                    h.done.len(),
                    wanted.len(),
                )
            };
            return Err(OpsError::NotHandedOver {
                source_id: plan.source.clone(),
                processor: plan.processor.clone(),
                target: plan.target.clone(),
                detail,
            });
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// One partition of an online merge: where the processor is in the pillow that runs it now,
/// where the pillow taking it back is, and what that pillow's row becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergeBackPartition {
    pub topic: String,
    pub partition: i32,
    /// The processor's position in the pillow that runs it now (a lower bound while it runs).
    pub processor_offset: Option<i64>,
    /// The row of the pillow taking it back.
    pub pillow_offset: Option<i64>,
    /// That row afterwards: the lower of the two.
    pub merged_offset: Option<i64>,
    /// Changes the pillow's other processors see again (one shared checkpoint only).
    pub reprocess: i64,
}

/// What an online merge (`merge SOURCE TARGET --processor NAME`) will do: processor `NAME`,
/// split out of `target` into `source` earlier, goes back into `target`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorMergePlan {
    /// The pillow that runs the processor now (the split's target).
    pub source: String,
    pub processor: String,
    /// The pillow that takes it back (the split's source).
    pub target: String,
    /// The split's record.
    pub split: Handover,
    /// A hand-back already asked for.
    pub pending: Option<Handover>,
    #[serde(skip)]
    pub source_live: Vec<ProcessRow>,
    pub source_live_processes: usize,
    #[serde(skip)]
    pub target_live: Vec<ProcessRow>,
    pub target_live_processes: usize,
    /// The target keeps a checkpoint per processor (`processor_checkpoints = "independent"`):
    /// nothing is seen again by its other processors.
    pub independent: bool,
    pub partitions: Vec<MergeBackPartition>,
}

impl ProcessorMergePlan {
    /// Every partition of the split.
    pub fn wanted(&self) -> Vec<TopicPartition> {
        self.partitions
            .iter()
            .map(|p| TopicPartition::new(p.topic.clone(), p.partition))
            .collect()
    }

    /// The most changes one partition's other processors see again.
    pub fn max_reprocess(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.reprocess)
            .max()
            .unwrap_or(0)
    }
}

/// Plans taking `processor` back from `source` into `target`, which split it out into `source`
/// (`split TARGET SOURCE --processor NAME`). Running pillows need `online` (or `force`: only
/// safe when they are in fact stopped).
pub async fn prepare_merge(
    pg: &Arc<Pg>,
    source: &str,
    processor: &str,
    target: &str,
    online: bool,
    force: bool,
) -> Result<ProcessorMergePlan> {
    check_request(source, processor, target)?;
    let split = handover::load(pg, Some(target))
        .await?
        .into_iter()
        .find(|h| h.processor == processor && h.kind == handover::HandoverKind::Split)
        .ok_or_else(|| {
            OpsError::InvalidArgument(format!(
                "processor {processor} was not split out of {target} (merge --processor takes back a processor moved with `split {target} {source} --processor {processor}`; to merge whole checkpoints, leave out --processor)"
            ))
        })?;
    if split.target != source {
        return Err(OpsError::InvalidArgument(format!(
            "processor {processor} of {target} was split into {}, not {source}",
            split.target
        )));
    }
    let pending = handover::load(pg, Some(source))
        .await?
        .into_iter()
        .find(|h| h.processor == processor && h.kind == handover::HandoverKind::Merge);
    let source_lane = processor_checkpoint_id(source, processor);
    let target_lane = processor_checkpoint_id(target, processor);
    let marker = processor_checkpoint_id(target, "");
    let ids = vec![
        source.to_owned(),
        source_lane.clone(),
        target.to_owned(),
        target_lane.clone(),
        marker.clone(),
    ];
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&ids)
        .await?;
    let offsets = |id: &str| -> std::collections::BTreeMap<TopicPartition, i64> {
        rows.get(id)
            .into_iter()
            .flatten()
            .map(|r| (r.tp.clone(), r.offset))
            .collect()
    };
    let mut position = offsets(source);
    position.extend(offsets(&source_lane));
    // Handed back already: the rows written for the target.
    if pending.is_some() {
        position.extend(offsets(&target_lane));
    }
    let pillow = offsets(target);
    let independent = rows.get(&marker).is_some_and(|r| !r.is_empty());
    let partitions = merge_back_partitions(&split, &position, &pillow, independent);
    let processes = PostgresLivenessStore::new(Arc::clone(pg))
        .list(None)
        .await?;
    let ids = [source.to_owned(), target.to_owned()];
    let live = check_not_running(&processes, &ids, true)?;
    if !live.is_empty() && !online && !force {
        check_not_running(&processes, &ids, false)?;
    }
    let (source_live, target_live): (Vec<ProcessRow>, Vec<ProcessRow>) =
        live.into_iter().partition(|p| p.checkpoint_id == source);
    Ok(ProcessorMergePlan {
        source: source.to_owned(),
        processor: processor.to_owned(),
        target: target.to_owned(),
        split,
        pending,
        source_live_processes: source_live.len(),
        source_live,
        target_live_processes: target_live.len(),
        target_live,
        independent,
        partitions,
    })
}

/// Where an online merge stands: partitions handed back by the source, taken back by the
/// target, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeProgress {
    pub handed_back: usize,
    pub taken_back: usize,
    pub partitions: usize,
}

/// Applies `plan`: asks for the processor back, then waits up to `timeout` while the source's
/// live processes hand it back (each after its final checkpoint of the processor) and the
/// target's take it back (each at a chunk boundary); a side with no live process is done here
/// directly. `stop` (Ctrl-C) ends the wait as the timeout does: a request nobody took up yet is
/// withdrawn, so an interrupted merge changes nothing.
pub async fn apply_merge(
    pg: &Arc<Pg>,
    plan: &ProcessorMergePlan,
    timeout: Duration,
    stop: &CancellationToken,
    mut progress: impl FnMut(MergeProgress),
) -> Result<MergeProgress> {
    let not_merged = |detail: String| OpsError::NotHandedOver {
        source_id: plan.source.clone(),
        processor: plan.processor.clone(),
        target: plan.target.clone(),
        detail,
    };
    if handover::request_merge(pg, &plan.target, &plan.processor, &plan.source)
        .await?
        .is_none()
    {
        return Err(not_merged(
            "the split's record is gone (merged back meanwhile?)".into(),
        ));
    }
    let wanted = plan.wanted();
    let started = Instant::now();
    loop {
        let split = handover::load(pg, Some(&plan.target))
            .await?
            .into_iter()
            .find(|h| h.processor == plan.processor && h.kind == handover::HandoverKind::Split);
        let back = handover::load(pg, Some(&plan.source))
            .await?
            .into_iter()
            .find(|h| h.processor == plan.processor && h.kind == handover::HandoverKind::Merge);
        let Some(back) = back else {
            return Err(not_merged("the request was withdrawn meanwhile".into()));
        };
        let now = MergeProgress {
            handed_back: wanted
                .iter()
                .filter(|tp| back.done.contains_key(*tp))
                .count(),
            taken_back: split.as_ref().map_or(wanted.len(), |s| {
                wanted.iter().filter(|tp| s.returned.contains(*tp)).count()
            }),
            partitions: wanted.len(),
        };
        progress(now);
        let Some(split) = split else {
            return Ok(now); // Every partition taken back: the split's row is gone.
        };
        let processes = PostgresLivenessStore::new(Arc::clone(pg))
            .list(None)
            .await?;
        let live = |id: &str| check_not_running(&processes, &[id.to_owned()], true);
        if !back.covers(&wanted) && live(&plan.source)?.is_empty() {
            handover::hand_over(pg, &back, Some(&wanted)).await?;
            continue;
        }
        if back.covers(&wanted) && live(&plan.target)?.is_empty() {
            handover::take_back(pg, &split, None, plan.independent).await?;
            continue;
        }
        let interrupted = stop.is_cancelled();
        if interrupted || started.elapsed() >= timeout {
            let how_long = if interrupted {
                format!("interrupted after {} s", started.elapsed().as_secs())
            } else {
                format!("within {} s", timeout.as_secs())
            };
            let detail = if now.handed_back == 0
                && now.taken_back == 0
                && handover::withdraw_merge(pg, &split, &back).await?
            {
                format!(
                    "no live process of {} handed it back {how_long} (does it run a version without online merge?); the request was withdrawn and nothing changed",
                    plan.source
                )
            } else {
                format!(
                    "{} of {} partitions handed back, {} taken back ({how_long}); the request stays: run the command again to wait for the rest",
                    now.handed_back, now.partitions, now.taken_back
                )
            };
            return Err(not_merged(detail));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Each partition of an online merge: the split's and the processor's, with the pillow's row
/// afterwards (the lower of the two).
fn merge_back_partitions(
    split: &Handover,
    position: &std::collections::BTreeMap<TopicPartition, i64>,
    pillow: &std::collections::BTreeMap<TopicPartition, i64>,
    independent: bool,
) -> Vec<MergeBackPartition> {
    let mut all: BTreeSet<TopicPartition> = split.done.keys().cloned().collect();
    all.extend(position.keys().cloned());
    all.into_iter()
        .map(|tp| {
            let (p, a) = (position.get(&tp).copied(), pillow.get(&tp).copied());
            let merged = handover::lower_offset(a, p);
            let reprocess = match (a, merged) {
                (Some(a), Some(m)) if !independent => a - m,
                _ => 0,
            };
            MergeBackPartition {
                topic: tp.topic,
                partition: tp.partition,
                processor_offset: p,
                pillow_offset: a,
                merged_offset: merged,
                reprocess,
            }
        })
        .collect()
}
