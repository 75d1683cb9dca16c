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
    check_ids(&[source.to_owned(), target.to_owned()])?;
    if processor.is_empty() {
        return Err(OpsError::InvalidArgument(
            "the processor name is empty".into(),
        ));
    }
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
