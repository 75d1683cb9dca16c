//! The run loop: start-up, the `select!` over shutdown and the feed, one feed item at a time,
//! the idle tick (flush, checkpoint, heartbeat, stall watch, hook), and the graceful or fatal end.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, ProcessError, Result};
use crate::feed::FeedItem;
use crate::metrics;
use crate::partition::TopicPartition;
use crate::pillow::checkpoint_policy::CheckpointPolicy;

use super::{stall, HookPoint, Pillow, Run, RunSummary, StopReason};

/// Awaits a start-up step unless `shutdown` is cancelled first: a stop request ends every
/// start-up wait (metadata of an unreachable broker, a table bootstrap waiting for a service).
pub(super) async fn unless_stopped<T>(
    shutdown: &CancellationToken,
    what: &str,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        r = step => r,
        () = shutdown.cancelled() => Err(Error::ShutdownRequested(format!("stopped while {what}"))),
    }
}

impl Pillow {
    /// Runs until `shutdown` is cancelled (or `until_idle` / `max_changes` / the feed ends).
    ///
    /// A stop request that ends a wait for a service (start-up, an outage) stops the pillow
    /// without its final checkpoint: the summary says `Shutdown`, a warning names the wait,
    /// and the changes since the last checkpoint are handled again after a restart.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> Result<RunSummary> {
        match self.run_inner(shutdown).await {
            // Stopped during the start-up (the loop's own stops keep their counts, below).
            Err(e) if shutdown.is_cancelled() && e.is_stop_request() => {
                tracing::warn!(pillow = %self.config.name, error = %e, "stopped on request during the start-up");
                Ok(RunSummary::nothing(StopReason::Shutdown))
            }
            other => other,
        }
    }

    async fn run_inner(&mut self, shutdown: &CancellationToken) -> Result<RunSummary> {
        self.config.validate()?;
        if self.config.layout.is_migration_process() {
            return self.run_migration_process(shutdown).await;
        }
        let mut run = self.start(shutdown).await?;
        let result = if self.processors.is_empty() {
            tracing::warn!(pillow = %self.config.name,
                "every processor of this pillow has been handed over to another pillow: nothing to run here (remove the pillow from the deployment)");
            Ok(StopReason::NothingToRun)
        } else {
            self.main_loop(&mut run, shutdown).await
        };
        self.finish(run, result, shutdown).await
    }

    /// The start-up: bootstrap, partitions, start positions, the liveness row. Every wait in it
    /// ends on a stop request.
    async fn start(&mut self, shutdown: &CancellationToken) -> Result<Run> {
        if self.config.layout.process_num == 0 && !self.config.layout.dedicated_migration_process {
            for p in &mut self.processors {
                let what = format!("bootstrapping processor {}", p.name());
                unless_stopped(shutdown, &what, p.bootstrap_if_needed()).await?;
            }
        }
        let source = self.feed.source();
        let all = unless_stopped(
            shutdown,
            &format!(
                "reading the partitions of {} from {source}",
                self.feed.topics().join(",")
            ),
            self.feed.partitions(),
        )
        .await?;
        let own = self.config.layout.assign(&all)?;
        tracing::info!(
            pillow = %self.config.name, checkpoint_id = %self.config.checkpoint_id,
            process = self.config.layout.process_num, processes = self.config.layout.num_processes,
            dedicated = self.config.layout.dedicated_migration_process,
            partitions = %own.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            "pillow starting"
        );
        let since = self.config.since.clone();
        let tracker = unless_stopped(
            shutdown,
            "reading the checkpoint and the topic's offsets",
            self.start_positions(&own, since.as_deref()),
        )
        .await?;
        let mut run = Run {
            in_flight: None,
            tracker,
            seq: 0,
            unsettled: std::collections::VecDeque::new(),
            written_through: vec![0; self.processors.len()],
            policy: CheckpointPolicy::new(
                self.config.checkpoint_frequency,
                self.config.max_checkpoint_delay,
            ),
            buffer: Vec::with_capacity(self.config.chunk_size.max(1)),
            invalid: Vec::new(),
            summary: RunSummary {
                partitions: own.clone(),
                ..RunSummary::nothing(StopReason::Shutdown)
            },
            last_heartbeat: Instant::now(),
            snapshot_day: None,
            snapshot_tried: None,
            handovers_polled: None,
            stall: stall::StallWatch::new(
                self.config.stall_timeout,
                self.config.max_stall_reconnects,
                Instant::now(),
            ),
            stop: shutdown.clone(),
        };
        if let Some(l) = &self.liveness {
            unless_stopped(
                shutdown,
                "registering the process",
                l.register(
                    &self.config.name,
                    &self.config.checkpoint_id,
                    &self.config.layout,
                    &own,
                ),
            )
            .await?;
        }
        // After the liveness row: a processor split out while this process was stopped (or
        // killed before it handed over) is handed over from the rows and never run.
        unless_stopped(
            shutdown,
            "reading the hand-over requests",
            self.take_up_handovers(&mut run, true),
        )
        .await?;
        Ok(run)
    }

    /// The end: flush and checkpoint after a graceful stop, keep what completed chunks achieved
    /// after a failure, remove the liveness row, log the summary.
    async fn finish(
        &mut self,
        mut run: Run,
        result: Result<StopReason>,
        shutdown: &CancellationToken,
    ) -> Result<RunSummary> {
        let result = match result {
            Ok(reason) => {
                // Graceful stop: flush what is buffered, then checkpoint.
                match self.flush_all(&mut run).await {
                    Ok(()) => self.checkpoint(&mut run).await.map(|_| reason),
                    Err(e) => Err(e),
                }
            }
            Err(e) => {
                // Fatal: keep what completed chunks achieved, unless the failure was the
                // checkpoint or error store itself; never checkpoint the buffered changes.
                if !matches!(
                    e,
                    Error::Checkpoint(_) | Error::Process(ProcessError::ErrorStore { .. })
                ) {
                    if let Err(ce) = self.checkpoint(&mut run).await {
                        tracing::error!(pillow = %self.config.name, error = %ce, "could not write the final checkpoint");
                    }
                }
                Err(e)
            }
        };
        self.feed.close().await;
        if let Some(l) = &self.liveness {
            if let Err(e) = l
                .unregister(&self.config.name, self.config.layout.process_num)
                .await
            {
                tracing::warn!(pillow = %self.config.name, error = %e, "could not remove the liveness row");
            }
        }
        let reason = match result {
            Ok(reason) => reason,
            Err(e) if shutdown.is_cancelled() && e.is_stop_request() => {
                tracing::warn!(pillow = %self.config.name, error = %e,
                    "stopped on request while waiting for a service; the final checkpoint may not have been written (changes since the last one are handled again after a restart)");
                StopReason::Shutdown
            }
            Err(e) => return Err(e),
        };
        run.summary.stop_reason = reason;
        tracing::info!(pillow = %self.config.name, ?reason, changes = run.summary.changes, failed = run.summary.failed,
            invalid = run.summary.invalid, checkpoints = run.summary.checkpoints, "pillow stopped");
        Ok(run.summary)
    }

    pub(super) async fn main_loop(
        &mut self,
        run: &mut Run,
        shutdown: &CancellationToken,
    ) -> Result<StopReason> {
        let chunk = self.config.chunk_size.max(1);
        loop {
            let mut item = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(StopReason::Shutdown),
                item = self.feed.next() => item?,
            };
            // One await per batch the feed received, not per change: what is already at hand
            // is drained below (`try_next`), checking the shutdown token between items.
            loop {
                if let Some(stop) = self.handle_item(run, item, chunk).await? {
                    return Ok(stop);
                }
                if shutdown.is_cancelled() {
                    return Ok(StopReason::Shutdown);
                }
                match self.feed.try_next() {
                    Some(next) => item = Some(next),
                    None => break,
                }
            }
        }
    }

    /// Handles one feed item; `Some` stops the loop.
    pub(super) async fn handle_item(
        &mut self,
        run: &mut Run,
        item: Option<FeedItem>,
        chunk: usize,
    ) -> Result<Option<StopReason>> {
        match item {
            None => return Ok(Some(StopReason::FeedEnded)),
            Some(item @ (FeedItem::Change(_) | FeedItem::Invalid(_))) => {
                match item {
                    FeedItem::Change(c) => run.buffer.push(*c),
                    FeedItem::Invalid(m) => run.invalid.push(*m),
                    _ => {}
                }
                if run.buffer.len() + run.invalid.len() >= chunk {
                    self.flush(run).await?;
                    if self.take_up_handovers(run, false).await? {
                        return Ok(Some(StopReason::NothingToRun));
                    }
                    self.collect_checkpoint(run, false).await?;
                    if run.in_flight.is_none() && run.policy.is_due(Instant::now()) {
                        if self.config.background_checkpoints
                            && self.checkpoints.background_writes()
                        {
                            self.start_checkpoint(run);
                        } else {
                            self.checkpoint_or_reload(run).await?;
                        }
                    }
                }
            }
            Some(FeedItem::Tick) => {
                self.metrics
                    .counter(metrics::FEED_TIMEOUT, self.tags(), 1.0);
                self.flush_all(run).await?;
                for p in &mut self.processors {
                    p.idle().await?;
                }
                // The idle rule: write own partitions that moved, whatever the counters say.
                self.checkpoint_or_reload(run).await?;
                self.heartbeat(run, true).await;
                if self.take_up_handovers(run, false).await? {
                    return Ok(Some(StopReason::NothingToRun));
                }
                self.watch_stall(run).await?;
                self.call_hook(HookPoint::Tick)?;
                if self.config.until_idle {
                    return Ok(Some(StopReason::Idle));
                }
            }
            Some(FeedItem::OffsetOutOfRange) => {
                self.flush_all(run).await?;
                self.checkpoint_or_reload(run).await?;
                let own = run.summary.partitions.clone();
                let resume: Vec<(TopicPartition, i64)> = run
                    .tracker
                    .partitions()
                    .map(|(tp, p)| (tp.clone(), p.checkpoint_value()))
                    .collect();
                let committed = run.tracker.clone();
                let stop = run.stop.clone();
                let mut tracker = unless_stopped(
                    &stop,
                    "finding the partitions' positions again after a lost offset",
                    self.start_positions(&own, Some(&resume)),
                )
                .await?;
                for (tp, p) in committed.partitions() {
                    let seek = tracker.get(tp).map_or(p.seek_start, |n| n.seek_start);
                    tracker.insert(tp.clone(), seek, p.committed);
                }
                run.tracker = tracker;
            }
        }
        if let Some(max) = self.config.max_changes {
            if run.summary.changes + (run.buffer.len() + run.invalid.len()) as u64 >= max {
                return Ok(Some(StopReason::MaxChanges));
            }
        }
        Ok(None)
    }

    /// The stall watch on an idle tick (see [`stall`]): probes the source when no change has
    /// arrived for the stall timeout, re-creates a stuck feed client, gives up after the budget.
    pub(super) async fn watch_stall(&mut self, run: &mut Run) -> Result<()> {
        let now = Instant::now();
        if !run.stall.tick(run.summary.changes, now) {
            return Ok(());
        }
        // After the tick's flush every handed-out change is handled: these are the next
        // offsets to read.
        let positions: Vec<(TopicPartition, i64)> = run
            .tracker
            .partitions()
            .map(|(tp, p)| (tp.clone(), p.checkpoint_value()))
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        let source = self.feed.source();
        let idle_secs = run.stall.idle_for(now).as_secs();
        let stop = run.stop.clone();
        let probe = match unless_stopped(
            &stop,
            "probing the change feed",
            self.feed.probe(&positions),
        )
        .await
        {
            Err(e) if e.is_stop_request() => return Err(e),
            Ok(p) => p,
            Err(e) => crate::feed::StallProbe::Unreachable(e.to_string()),
        };
        let tags = |outcome: &str| {
            vec![
                ("pillow_name", self.config.name.clone()),
                ("outcome", outcome.to_owned()),
            ]
        };
        match run.stall.judge(probe) {
            stall::Verdict::Fine => {}
            stall::Verdict::Outage(why) => {
                self.metrics
                    .counter(metrics::FEED_STALLS, tags("unreachable"), 1.0);
                tracing::warn!(pillow = %self.config.name, source = %source, idle_secs, error = %why,
                    "no change for a while and the change feed's source cannot be reached; waiting for it (the client reconnects by itself)");
            }
            stall::Verdict::Reconnect { behind, partitions } => {
                self.metrics
                    .counter(metrics::FEED_STALLS, tags("reconnected"), 1.0);
                tracing::error!(pillow = %self.config.name, source = %source, idle_secs, behind, partitions = %partitions,
                    attempt = run.stall.reconnects(),
                    "change feed stalled: a fresh client reads changes this pillow's client does not deliver; re-creating the client at the pillow's positions");
                self.feed.reconnect(&positions).await?;
            }
            stall::Verdict::GiveUp { behind, partitions } => {
                self.metrics
                    .counter(metrics::FEED_STALLS, tags("gave_up"), 1.0);
                return Err(crate::error::KafkaError::Stalled {
                    pillow: self.config.name.clone(),
                    source_name: source,
                    behind,
                    partitions,
                    idle_secs,
                    reconnects: run.stall.reconnects(),
                }
                .into());
            }
        }
        Ok(())
    }

    pub(super) async fn heartbeat(&mut self, run: &mut Run, force: bool) {
        self.snapshot_if_due(run).await;
        if !force && run.last_heartbeat.elapsed() < self.config.heartbeat_interval {
            return;
        }
        run.last_heartbeat = Instant::now();
        if let Some(l) = &self.liveness {
            let stats = self.times.stats(self.processors.iter().map(|p| p.name()));
            if let Err(e) = l
                .heartbeat(&self.config.name, self.config.layout.process_num, &stats)
                .await
            {
                tracing::warn!(pillow = %self.config.name, error = %e, "could not refresh the heartbeat");
            }
        }
    }

    /// The daily history snapshot: one query a day per process (the first heartbeat of a UTC
    /// day), idempotent across processes (a day already recorded is left as it is). A failure
    /// is a warning; it, and a checkpoint without rows yet, are tried again a minute later.
    async fn snapshot_if_due(&mut self, run: &mut Run) {
        let Some(h) = &self.history else { return };
        let today = chrono::Utc::now().date_naive();
        if run.snapshot_day == Some(today)
            || run
                .snapshot_tried
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        run.snapshot_tried = Some(Instant::now());
        let id = &self.config.checkpoint_id;
        match h
            .snapshot_checkpoint(id, today, crate::store::history::KEEP_DAYS)
            .await
        {
            Ok(s) if s.rows > 0 => {
                run.snapshot_tried = None;
                tracing::info!(pillow = %self.config.name, checkpoint = %id, date = %today, rows = s.rows, pruned = s.pruned, "checkpoint history snapshot recorded");
                run.snapshot_day = Some(today);
            }
            // No rows yet: tried again a minute later.
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(pillow = %self.config.name, checkpoint = %id, error = %e, "could not record the checkpoint history snapshot");
            }
        }
    }
}
