//! Writing checkpoints: in line or in the background (one write in flight, coalesced, only ever
//! covering handled changes), and reloading the positions after an operator reset.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{CheckpointError, Error, Result};
use crate::metrics;
use crate::partition::TopicPartition;
use crate::pillow::checkpoint_policy::CheckpointPolicy;
use crate::store::checkpoints::CheckpointUpdate;

use super::{Pillow, Run};

/// A checkpoint write running in the background: the offsets it writes, and the task.
pub(super) struct InFlight {
    pending: Vec<(TopicPartition, i64)>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Pillow {
    /// Writes the checkpoint; when the stored rows were changed by someone else (an operator's
    /// reset or split while this process ran), reloads them and resumes from there, as CommCare's
    /// `run()` does on `PillowtopCheckpointReset`. The buffer is empty here (always flushed first).
    pub(super) async fn checkpoint_or_reload(&mut self, run: &mut Run) -> Result<()> {
        match self.checkpoint(run).await {
            Err(Error::Checkpoint(e @ CheckpointError::Reset { .. })) => {
                self.reload_after_reset(run, &e).await
            }
            other => other.map(|_| ()),
        }
    }

    pub(super) async fn reload_after_reset(
        &mut self,
        run: &mut Run,
        e: &CheckpointError,
    ) -> Result<()> {
        tracing::error!(pillow = %self.config.name, error = %e, "checkpoint changed externally; reloading it and resuming from the stored offsets");
        // Changes buffered from the old positions are dropped with them: the feed restarts at
        // the stored offsets.
        run.buffer.clear();
        run.invalid.clear();
        run.unsettled.clear();
        let own = run.summary.partitions.clone();
        run.tracker = self.start_positions(&own, None).await?;
        run.policy = CheckpointPolicy::new(
            self.config.checkpoint_frequency,
            self.config.max_checkpoint_delay,
        );
        Ok(())
    }

    /// The updates that write every own partition whose checkpoint value moved.
    pub(super) fn checkpoint_updates(
        run: &Run,
    ) -> (Vec<(TopicPartition, i64)>, Vec<CheckpointUpdate>) {
        let pending = run.tracker.pending();
        let updates = pending
            .iter()
            .map(|(tp, offset)| CheckpointUpdate {
                tp: tp.clone(),
                offset: *offset,
                expected: run.tracker.committed(tp),
            })
            .collect();
        (pending, updates)
    }

    /// Starts writing the checkpoint in the background: the loop goes on with the next chunks
    /// while PostgreSQL commits (measured: a synchronous write per 100 changes halved the
    /// engine's rate). The write covers only changes already handled, so it never passes one
    /// that was not; while it runs no other write starts, and the next one, started after it
    /// completes, covers everything handled meanwhile.
    pub(super) fn start_checkpoint(&mut self, run: &mut Run) {
        let (pending, updates) = Self::checkpoint_updates(run);
        run.policy.checkpointed(Instant::now());
        if pending.is_empty() {
            return;
        }
        let store = Arc::clone(&self.checkpoints);
        let id = self.config.checkpoint_id.clone();
        let task = tokio::spawn(async move { store.write(&id, &updates).await });
        run.in_flight = Some(InFlight { pending, task });
    }

    /// Completes the background checkpoint write: waits for it when `wait`, otherwise only if it
    /// already finished. A write refused because the stored rows changed (an operator's reset)
    /// reloads the positions, as [`checkpoint_or_reload`](Self::checkpoint_or_reload) does.
    pub(super) async fn collect_checkpoint(&mut self, run: &mut Run, wait: bool) -> Result<()> {
        let Some(in_flight) = run.in_flight.take_if(|f| wait || f.task.is_finished()) else {
            return Ok(());
        };
        let result = match in_flight.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime itself shuts down.
            Err(e) => Err(Error::ShutdownRequested(format!(
                "the background checkpoint write of {} was cancelled: {e}",
                self.config.checkpoint_id
            ))),
        };
        match result {
            Ok(()) => self.checkpoint_written(run, &in_flight.pending).await,
            Err(Error::Checkpoint(e @ CheckpointError::Reset { .. })) => {
                self.reload_after_reset(run, &e).await
            }
            Err(e) => Err(e),
        }
    }

    /// Writes every own partition whose checkpoint value moved, waiting for it (after any
    /// background write). Returns whether it wrote.
    pub(super) async fn checkpoint(&mut self, run: &mut Run) -> Result<bool> {
        self.collect_checkpoint(run, true).await?;
        let (pending, updates) = Self::checkpoint_updates(run);
        if pending.is_empty() {
            run.policy.checkpointed(Instant::now());
            return Ok(false);
        }
        self.checkpoints
            .write(&self.config.checkpoint_id, &updates)
            .await?;
        run.policy.checkpointed(Instant::now());
        self.checkpoint_written(run, &pending).await?;
        Ok(true)
    }

    /// Books a completed checkpoint write: the tracker, the metrics, the processors' callbacks.
    pub(super) async fn checkpoint_written(
        &mut self,
        run: &mut Run,
        pending: &[(TopicPartition, i64)],
    ) -> Result<()> {
        run.tracker.mark_committed(pending);
        run.summary.checkpoints += 1;
        self.metrics.counter(metrics::CHECKPOINT, self.tags(), 1.0);
        for (tp, offset) in pending {
            #[allow(clippy::cast_precision_loss)]
            self.metrics.gauge(
                metrics::CHECKPOINT_OFFSETS,
                vec![
                    ("pillow_name", self.config.name.clone()),
                    ("topic", format!("{}-{}", tp.topic, tp.partition)),
                ],
                *offset as f64,
            );
        }
        tracing::debug!(pillow = %self.config.name, partitions = pending.len(), "checkpoint written");
        for p in &mut self.processors {
            p.checkpoint_updated().await?;
        }
        self.heartbeat(run, false).await;
        Ok(())
    }
}
