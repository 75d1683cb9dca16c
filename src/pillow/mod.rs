//! A pillow: a change feed, processors, a checkpoint store and the loop that ties them.
//!
//! The loop (CommCare's `process_changes`, reference §1.6, with the fixes of §9):
//!
//! * changes are buffered and flushed as a chunk when the buffer reaches the chunk size (chunk
//!   size 0: every change alone, all processors serial), on an idle tick, at a graceful stop, and
//!   when the feed ends;
//! * after each flush the checkpoint policy decides whether to write (every `checkpoint_frequency`
//!   changes, after `max_checkpoint_delay`, and always after the first change since start); an
//!   idle tick writes every own partition that moved, whatever the counters say;
//! * a due checkpoint is written in the background while the next chunks are processed (one
//!   write in flight at a time; the next due write, after it completes, covers everything handled
//!   meanwhile): on the engine bench, writing in line every 1,000 changes cost a third of the
//!   rate. The idle tick, the final checkpoint and exactly-once stores write in line;
//!   `background_checkpoints = false` restores CommCare's exact write points;
//! * the checkpoint stores, per own partition, `last handled + 1`, or the untouched start offset
//!   for a partition that handled nothing: it never passes a change that was not fully handled
//!   (processed, or its error recorded);
//! * a change that fails is recorded in `pillow_retry_pillowerror` and the pillow goes on; if
//!   recording fails the pillow stops without checkpointing past it (crash-only: a restart
//!   resumes from the last checkpoint);
//! * a graceful stop (the cancellation token) lets the current chunk finish, flushes the buffer,
//!   writes the checkpoint, and returns.

pub mod chunk;
pub mod liveness;
pub mod stall;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::change::Change;
use crate::checkpoint::policy::CheckpointPolicy;
use crate::checkpoint::{CheckpointStore, CheckpointUpdate};
use crate::docstore::DocumentStores;
use crate::error::{CheckpointError, ConfigError, Error, ProcessError, Result};
use crate::feed::assignment::Layout;
use crate::feed::offsets::OffsetTracker;
use crate::feed::{ChangeFeed, FeedItem, InvalidMessage, TopicPartition};
use crate::metrics::{self, Recorder};
use crate::processor::{Processor, ProcessorFailure};
use crate::retry::{ErrorRecord, ErrorStore, MAX_PROCESSING_ATTEMPTS};

use self::liveness::Liveness;

/// Where an own partition without a checkpoint row starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPolicy {
    /// The first retained offset (CommCare's behaviour for partitions missing from a checkpoint).
    Earliest,
    /// The high-water mark: only changes published from now on.
    Latest,
    /// Refuse to start, naming the partition.
    Error,
}

/// A pillow's settings.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent switches, most of them CommCare's flags
pub struct PillowConfig {
    pub name: String,
    pub checkpoint_id: String,
    /// CommCare's `processor_chunk_size`: 0 processes every change alone, serially.
    pub chunk_size: usize,
    pub checkpoint_frequency: u64,
    /// `None` disables the time rule.
    pub max_checkpoint_delay: Option<Duration>,
    pub layout: Layout,
    pub start_policy: StartPolicy,
    /// Fail when a checkpoint is older than the topic's retention (CommCare's `strict`).
    pub strict: bool,
    /// CommCare's `retry_errors`: record every failure (else only `DocumentMissingError`s).
    pub retry_errors: bool,
    /// Stop at the first idle tick (after flushing and checkpointing): CommCare's
    /// `process_changes(forever=False)`, `run_ptop --until-idle`.
    pub until_idle: bool,
    /// Stop after this many changes (tests, operations).
    pub max_changes: Option<u64>,
    /// How often the dedicated migration process calls `bootstrap_if_needed`.
    pub bootstrap_interval: Duration,
    /// Write due checkpoints in the background while the next chunks are processed (default;
    /// see [`Pillow`]'s module docs). Off, every due checkpoint is written before the loop goes
    /// on, exactly at the policy's points, as CommCare does. Stores that cannot write in the
    /// background (the exactly-once session) are always written in line.
    pub background_checkpoints: bool,
    /// The stall watch: when no change has arrived for this long, the feed is probed with a
    /// fresh client on each idle tick; a backlog the feed does not deliver re-creates its
    /// client (see [`stall`]). `None` turns the watch off.
    pub stall_timeout: Option<Duration>,
    /// Re-creations without progress before the pillow gives up with
    /// [`KafkaError::Stalled`](crate::error::KafkaError::Stalled) (its supervisor restarts it).
    pub max_stall_reconnects: u32,
}

impl PillowConfig {
    /// CommCare's defaults: chunk size 10, checkpoint every 100 changes or 300 s, earliest start.
    pub fn new(name: impl Into<String>, checkpoint_id: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            checkpoint_id: checkpoint_id.into(),
            chunk_size: 10,
            checkpoint_frequency: crate::checkpoint::policy::DEFAULT_CHECKPOINT_FREQUENCY,
            max_checkpoint_delay: Some(crate::checkpoint::policy::DEFAULT_MAX_CHECKPOINT_DELAY),
            layout: Layout::single(),
            start_policy: StartPolicy::Earliest,
            strict: false,
            retry_errors: true,
            until_idle: false,
            max_changes: None,
            bootstrap_interval: Duration::from_secs(10),
            background_checkpoints: true,
            stall_timeout: Some(stall::DEFAULT_STALL_TIMEOUT),
            max_stall_reconnects: stall::DEFAULT_MAX_RECONNECTS,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.layout.validate()?;
        if self.name.is_empty() || self.checkpoint_id.is_empty() {
            return Err(
                ConfigError::Invalid("a pillow needs a name and a checkpoint id".into()).into(),
            );
        }
        if self.checkpoint_id.len() > 126 {
            return Err(ConfigError::Invalid(format!(
                "checkpoint id {:?} is longer than 126 characters",
                self.checkpoint_id
            ))
            .into());
        }
        Ok(())
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The cancellation token was cancelled (SIGTERM, Ctrl-C, an operator).
    Shutdown,
    /// `until_idle` and the feed went idle.
    Idle,
    /// `max_changes` reached.
    MaxChanges,
    /// The feed ended (test feeds).
    FeedEnded,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub stop_reason: StopReason,
    pub partitions: Vec<TopicPartition>,
    /// Changes handled (including invalid messages and failed changes).
    pub changes: u64,
    pub invalid: u64,
    /// Changes that failed in at least one processor.
    pub failed: u64,
    pub checkpoints: u64,
}

/// A pillow, ready to run.
pub struct Pillow {
    config: PillowConfig,
    feed: Box<dyn ChangeFeed>,
    processors: Vec<Box<dyn Processor>>,
    checkpoints: Arc<dyn CheckpointStore>,
    errors: Arc<dyn ErrorStore>,
    docstores: DocumentStores,
    metrics: Arc<dyn Recorder>,
    liveness: Option<Liveness>,
    hook: Option<Box<dyn LoopHook>>,
}

/// Where the loop calls its [`LoopHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Before a chunk goes to the processors.
    BeforeChunk,
    /// After a chunk's processors finished and its failures were recorded.
    AfterChunk,
    /// On each idle tick of the feed (after the idle flush and checkpoint).
    Tick,
}

/// A callback the loop runs on the thread that drives it (the Python front closes stale Django
/// database connections here, as Django does around a request and CommCare does when idle).
/// An error stops the pillow like a fatal processor error.
pub trait LoopHook: Send {
    fn call(&mut self, point: HookPoint) -> Result<()>;
}

impl std::fmt::Debug for Pillow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pillow")
            .field("config", &self.config)
            .field(
                "processors",
                &self
                    .processors
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A checkpoint write running in the background: the offsets it writes, and the task.
struct InFlight {
    pending: Vec<(TopicPartition, i64)>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// The loop's mutable state.
struct Run {
    /// The background checkpoint write, if one is running (at most one).
    in_flight: Option<InFlight>,
    tracker: OffsetTracker,
    policy: CheckpointPolicy,
    buffer: Vec<Change>,
    invalid: Vec<InvalidMessage>,
    summary: RunSummary,
    last_heartbeat: Instant,
    stall: stall::StallWatch,
}

impl Pillow {
    pub fn new(
        config: PillowConfig,
        feed: Box<dyn ChangeFeed>,
        processors: Vec<Box<dyn Processor>>,
        checkpoints: Arc<dyn CheckpointStore>,
        errors: Arc<dyn ErrorStore>,
    ) -> Self {
        Self {
            config,
            feed,
            processors,
            checkpoints,
            errors,
            docstores: DocumentStores::new(),
            metrics: Arc::new(metrics::NoopRecorder),
            liveness: None,
            hook: None,
        }
    }

    /// Runs `hook` around each chunk and on each idle tick.
    #[must_use]
    pub fn with_hook(mut self, hook: Box<dyn LoopHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    fn call_hook(&mut self, point: HookPoint) -> Result<()> {
        match &mut self.hook {
            Some(h) => h.call(point),
            None => Ok(()),
        }
    }

    #[must_use]
    pub fn with_document_stores(mut self, docstores: DocumentStores) -> Self {
        self.docstores = docstores;
        self
    }

    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<dyn Recorder>) -> Self {
        self.metrics = metrics;
        self
    }

    #[must_use]
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    pub fn config(&self) -> &PillowConfig {
        &self.config
    }

    fn tags(&self) -> metrics::Tags {
        vec![("pillow_name", self.config.name.clone())]
    }

    /// Runs until `shutdown` is cancelled (or `until_idle` / `max_changes` / the feed ends).
    pub async fn run(&mut self, shutdown: &CancellationToken) -> Result<RunSummary> {
        self.config.validate()?;
        if self.config.layout.is_migration_process() {
            return self.run_migration_process(shutdown).await;
        }
        if self.config.layout.process_num == 0 && !self.config.layout.dedicated_migration_process {
            for p in &mut self.processors {
                p.bootstrap_if_needed().await?;
            }
        }
        let all = self.feed.partitions().await?;
        let own = self.config.layout.assign(&all)?;
        tracing::info!(
            pillow = %self.config.name, checkpoint_id = %self.config.checkpoint_id,
            process = self.config.layout.process_num, processes = self.config.layout.num_processes,
            dedicated = self.config.layout.dedicated_migration_process,
            partitions = %own.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            "pillow starting"
        );
        let tracker = self.start_positions(&own, None).await?;
        let mut run = Run {
            in_flight: None,
            tracker,
            policy: CheckpointPolicy::new(
                self.config.checkpoint_frequency,
                self.config.max_checkpoint_delay,
            ),
            buffer: Vec::with_capacity(self.config.chunk_size.max(1)),
            invalid: Vec::new(),
            summary: RunSummary {
                stop_reason: StopReason::Shutdown,
                partitions: own.clone(),
                changes: 0,
                invalid: 0,
                failed: 0,
                checkpoints: 0,
            },
            last_heartbeat: Instant::now(),
            stall: stall::StallWatch::new(
                self.config.stall_timeout,
                self.config.max_stall_reconnects,
                Instant::now(),
            ),
        };
        if let Some(l) = &self.liveness {
            l.register(
                &self.config.name,
                &self.config.checkpoint_id,
                &self.config.layout,
                &own,
            )
            .await?;
        }
        let result = self.main_loop(&mut run, shutdown).await;
        let result = match result {
            Ok(reason) => {
                // Graceful stop: flush what is buffered, then checkpoint.
                match self.flush(&mut run).await {
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
        if let Some(l) = &self.liveness {
            if let Err(e) = l
                .unregister(&self.config.name, self.config.layout.process_num)
                .await
            {
                tracing::warn!(pillow = %self.config.name, error = %e, "could not remove the liveness row");
            }
        }
        let reason = result?;
        run.summary.stop_reason = reason;
        tracing::info!(pillow = %self.config.name, ?reason, changes = run.summary.changes, failed = run.summary.failed,
            invalid = run.summary.invalid, checkpoints = run.summary.checkpoints, "pillow stopped");
        Ok(run.summary)
    }

    async fn main_loop(
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
    async fn handle_item(
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
                self.flush(run).await?;
                // The idle rule: write own partitions that moved, whatever the counters say.
                self.checkpoint_or_reload(run).await?;
                self.heartbeat(run, true).await;
                self.watch_stall(run).await?;
                self.call_hook(HookPoint::Tick)?;
                if self.config.until_idle {
                    return Ok(Some(StopReason::Idle));
                }
            }
            Some(FeedItem::OffsetOutOfRange) => {
                self.flush(run).await?;
                self.checkpoint_or_reload(run).await?;
                let own = run.summary.partitions.clone();
                let resume: Vec<(TopicPartition, i64)> = run
                    .tracker
                    .partitions()
                    .map(|(tp, p)| (tp.clone(), p.checkpoint_value()))
                    .collect();
                let committed = run.tracker.clone();
                let mut tracker = self.start_positions(&own, Some(&resume)).await?;
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
    async fn watch_stall(&mut self, run: &mut Run) -> Result<()> {
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
        let probe = match self.feed.probe(&positions).await {
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

    /// Resolves where each own partition starts, from the checkpoint rows (or `resume`), the
    /// partition's retained range and the start policy; assigns the feed; returns the tracker.
    async fn start_positions(
        &mut self,
        own: &[TopicPartition],
        resume: Option<&[(TopicPartition, i64)]>,
    ) -> Result<OffsetTracker> {
        let id = self.config.checkpoint_id.clone();
        let started = Instant::now();
        let stored: std::collections::HashMap<TopicPartition, i64> = match resume {
            Some(r) => r.iter().cloned().collect(),
            None => self
                .checkpoints
                .load(&id)
                .await?
                .into_iter()
                .map(|r| (r.tp, r.offset))
                .collect(),
        };
        let watermarks = self.feed.watermarks(own).await?;
        let mut tracker = OffsetTracker::new();
        let mut positions = Vec::with_capacity(own.len());
        for (tp, low, high) in watermarks {
            let committed = if resume.is_some() {
                None
            } else {
                stored.get(&tp).copied()
            };
            let seek = match stored.get(&tp).copied() {
                Some(o) if o < low => {
                    if self.config.strict {
                        return Err(CheckpointError::UnavailableOffset {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            first: low,
                            needed: o,
                        }
                        .into());
                    }
                    tracing::warn!(pillow = %self.config.name, checkpoint_id = %id, partition = %tp, needed = o, first_available = low,
                        skipped = low - o, "checkpoint is older than the topic's retention: changes were deleted before this pillow read them; resuming at the first available offset");
                    self.metrics.counter(
                        metrics::OFFSET_RESET,
                        vec![
                            ("pillow_name", self.config.name.clone()),
                            ("topic", format!("{}-{}", tp.topic, tp.partition)),
                            ("reason", "expired".into()),
                        ],
                        1.0,
                    );
                    low
                }
                Some(o) if o > high => {
                    return Err(CheckpointError::BeyondHighWater {
                        checkpoint_id: id,
                        tp,
                        offset: o,
                        high,
                    }
                    .into());
                }
                Some(o) => o,
                None => {
                    let start = match self.config.start_policy {
                        StartPolicy::Earliest => low,
                        StartPolicy::Latest => high,
                        StartPolicy::Error => {
                            return Err(CheckpointError::Missing {
                                checkpoint_id: id,
                                tp,
                            }
                            .into())
                        }
                    };
                    tracing::info!(pillow = %self.config.name, checkpoint_id = %id, partition = %tp, policy = ?self.config.start_policy, offset = start,
                        "no checkpoint for this partition; starting by the start policy");
                    self.metrics.counter(
                        metrics::OFFSET_RESET,
                        vec![
                            ("pillow_name", self.config.name.clone()),
                            ("topic", format!("{}-{}", tp.topic, tp.partition)),
                            ("reason", "no_checkpoint".into()),
                        ],
                        1.0,
                    );
                    start
                }
            };
            tracker.insert(tp.clone(), seek, committed);
            positions.push((tp, seek));
        }
        self.feed.assign(&positions).await?;
        tracing::info!(pillow = %self.config.name, partitions = positions.len(), elapsed_ms = started.elapsed().as_millis(), "positions resolved, consuming");
        Ok(tracker)
    }

    /// Processes the buffered changes as one chunk and records their failures; marks them handled.
    async fn flush(&mut self, run: &mut Run) -> Result<()> {
        if run.buffer.is_empty() && run.invalid.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let changes = std::mem::take(&mut run.buffer);
        let invalid = std::mem::take(&mut run.invalid);
        // The highest offset per partition in this chunk: what the chunk hands to the tracker.
        let mut handled: Vec<(TopicPartition, i64)> = Vec::new();
        for (topic, partition, offset) in changes
            .iter()
            .map(|c| (c.topic.as_str(), c.partition, c.offset))
            .chain(
                invalid
                    .iter()
                    .map(|m| (m.topic.as_str(), m.partition, m.offset)),
            )
        {
            match handled
                .iter_mut()
                .find(|(tp, _)| tp.partition == partition && tp.topic == topic)
            {
                Some((_, o)) => *o = (*o).max(offset),
                None => handled.push((TopicPartition::new(topic, partition), offset)),
            }
        }
        let n = (changes.len() + invalid.len()) as u64;
        let mut records = Vec::new();
        for m in &invalid {
            tracing::warn!(pillow = %self.config.name, topic = %m.topic, partition = m.partition, offset = m.offset, reason = %m.reason, "invalid change message recorded as an error");
            self.metrics.counter(
                metrics::INVALID_CHANGES,
                vec![
                    ("pillow_name", self.config.name.clone()),
                    ("topic", m.topic.clone()),
                ],
                1.0,
            );
            records.push(invalid_record(&self.config.name, m));
        }
        let batch = self.config.chunk_size > 0;
        let mut changes = if batch {
            chunk::deduplicate(changes)
        } else {
            changes
        };
        let lag = self.count_changes(&changes);
        self.call_hook(HookPoint::BeforeChunk)?;
        let failures = chunk::process_chunk(
            &mut self.processors,
            &mut changes,
            batch,
            &self.docstores,
            &self.config.name,
            self.metrics.as_ref(),
        )
        .await?;
        self.record_failures(&mut changes, &failures, records)
            .await?;
        self.call_hook(HookPoint::AfterChunk)?;
        let ok = changes.len() as u64 - failures.len() as u64;
        let tags = self.tags();
        self.metrics
            .counter(metrics::CHANGES_SUCCESS, tags.clone(), ok as f64);
        {
            self.metrics.counter(
                metrics::PROCESSING_TIME_TOTAL,
                tags.clone(),
                started.elapsed().as_secs_f64(),
            );
            self.metrics
                .counter(metrics::PROCESSING_TIME_COUNT, tags, n as f64);
        }
        self.record_lag(lag);
        for (tp, offset) in &handled {
            run.tracker.mark_handled(tp, *offset);
        }
        run.policy.saw(n);
        run.summary.changes += n;
        run.summary.invalid += invalid.len() as u64;
        run.summary.failed += failures.len() as u64;
        Ok(())
    }

    /// Counts the failures and records them (with the invalid messages' `records`) in the error
    /// store; a failure to record stops the pillow (crash-only).
    async fn record_failures(
        &mut self,
        changes: &mut [Change],
        failures: &std::collections::BTreeMap<usize, ProcessorFailure>,
        mut records: Vec<ErrorRecord>,
    ) -> Result<()> {
        for (i, f) in failures {
            let change = &mut changes[*i];
            change.increment_attempt_count();
            self.record_failure_metrics(change, f);
            if self.config.retry_errors || f.document_missing {
                records.push(ErrorRecord::for_change(&self.config.name, change, f));
            }
        }
        if !records.is_empty() {
            if let Err(e) = self.errors.record(&records).await {
                let doc_id = records
                    .first()
                    .map(|r| r.doc_id.clone())
                    .unwrap_or_default();
                return Err(ProcessError::ErrorStore {
                    pillow: self.config.name.clone(),
                    doc_id,
                    source: Box::new(e),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Counts the chunk's changes (`changes.count`) and returns the maximum lag per
    /// `topic-partition` (now − `publish_timestamp`), in seconds.
    fn count_changes(&self, changes: &[Change]) -> std::collections::BTreeMap<String, f64> {
        // Aggregated per chunk (not per change): a few map entries, formatted once.
        let mut per_source: rustc_hash::FxHashMap<&str, u64> = rustc_hash::FxHashMap::default();
        let mut lag: rustc_hash::FxHashMap<(&str, i32), f64> = rustc_hash::FxHashMap::default();
        let now = chrono::Utc::now();
        for c in changes {
            *per_source
                .entry(c.metadata.data_source_name.as_str())
                .or_default() += 1;
            if let Some(t) = c.metadata.publish_timestamp {
                let secs = (now - t).num_milliseconds() as f64 / 1000.0;
                let e = lag
                    .entry((c.topic.as_str(), c.partition))
                    .or_insert(f64::MIN);
                *e = e.max(secs);
            }
        }
        for (source, count) in per_source {
            self.metrics.counter(
                metrics::CHANGES_COUNT,
                vec![
                    ("pillow_name", self.config.name.clone()),
                    ("datasource", source.to_owned()),
                    ("case_type", "NA".into()),
                ],
                count as f64,
            );
        }
        lag.into_iter()
            .map(|((topic, partition), secs)| (format!("{topic}-{partition}"), secs))
            .collect()
    }

    /// `change_lag` per topic-partition and the chunk's `chunked.max_change_lag`.
    fn record_lag(&self, lag: std::collections::BTreeMap<String, f64>) {
        if let Some(max) = lag.values().copied().reduce(f64::max) {
            self.metrics
                .gauge(metrics::CHUNKED_MAX_CHANGE_LAG, self.tags(), max);
        }
        for (topic, secs) in lag {
            self.metrics.gauge(
                metrics::CHANGE_LAG,
                vec![("pillow_name", self.config.name.clone()), ("topic", topic)],
                secs,
            );
        }
    }

    fn record_failure_metrics(&self, change: &Change, f: &ProcessorFailure) {
        tracing::warn!(pillow = %self.config.name, doc_id = %change.id, topic = %change.topic, partition = change.partition,
            offset = change.offset, error_type = %f.error_type, error = %f.message, "change failed");
        self.metrics.counter(
            metrics::CHANGES_EXCEPTIONS,
            vec![
                ("pillow_name", self.config.name.clone()),
                ("exception_type", f.error_type.clone()),
            ],
            1.0,
        );
    }

    /// Writes the checkpoint; when the stored rows were changed by someone else (an operator's
    /// reset or split while this process ran), reloads them and resumes from there, as CommCare's
    /// `run()` does on `PillowtopCheckpointReset`. The buffer is empty here (always flushed first).
    async fn checkpoint_or_reload(&mut self, run: &mut Run) -> Result<()> {
        match self.checkpoint(run).await {
            Err(Error::Checkpoint(e @ CheckpointError::Reset { .. })) => {
                self.reload_after_reset(run, &e).await
            }
            other => other.map(|_| ()),
        }
    }

    async fn reload_after_reset(&mut self, run: &mut Run, e: &CheckpointError) -> Result<()> {
        tracing::error!(pillow = %self.config.name, error = %e, "checkpoint changed externally; reloading it and resuming from the stored offsets");
        // Changes buffered from the old positions are dropped with them: the feed restarts at
        // the stored offsets.
        run.buffer.clear();
        run.invalid.clear();
        let own = run.summary.partitions.clone();
        run.tracker = self.start_positions(&own, None).await?;
        run.policy = CheckpointPolicy::new(
            self.config.checkpoint_frequency,
            self.config.max_checkpoint_delay,
        );
        Ok(())
    }

    /// The updates that write every own partition whose checkpoint value moved.
    fn checkpoint_updates(run: &Run) -> (Vec<(TopicPartition, i64)>, Vec<CheckpointUpdate>) {
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
    fn start_checkpoint(&mut self, run: &mut Run) {
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
    async fn collect_checkpoint(&mut self, run: &mut Run, wait: bool) -> Result<()> {
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
    async fn checkpoint(&mut self, run: &mut Run) -> Result<bool> {
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
    async fn checkpoint_written(
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

    async fn heartbeat(&mut self, run: &mut Run, force: bool) {
        if !force && run.last_heartbeat.elapsed() < Duration::from_secs(5) {
            return;
        }
        run.last_heartbeat = Instant::now();
        if let Some(l) = &self.liveness {
            if let Err(e) = l
                .heartbeat(&self.config.name, self.config.layout.process_num)
                .await
            {
                tracing::warn!(pillow = %self.config.name, error = %e, "could not refresh the heartbeat");
            }
        }
    }

    /// The dedicated migration process: consumes nothing, calls `bootstrap_if_needed` on every
    /// processor about every `bootstrap_interval`, until stopped.
    async fn run_migration_process(&mut self, shutdown: &CancellationToken) -> Result<RunSummary> {
        tracing::info!(pillow = %self.config.name, "dedicated migration process: consuming nothing, bootstrapping processors");
        if let Some(l) = &self.liveness {
            l.register(
                &self.config.name,
                &self.config.checkpoint_id,
                &self.config.layout,
                &[],
            )
            .await?;
        }
        let result: Result<StopReason> = async {
            loop {
                for p in &mut self.processors {
                    p.bootstrap_if_needed().await?;
                }
                if let Some(l) = &self.liveness {
                    if let Err(e) = l.heartbeat(&self.config.name, 0).await {
                        tracing::warn!(error = %e, "could not refresh the heartbeat");
                    }
                }
                if self.config.until_idle {
                    return Ok(StopReason::Idle);
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(StopReason::Shutdown),
                    () = tokio::time::sleep(self.config.bootstrap_interval) => {}
                }
            }
        }
        .await;
        if let Some(l) = &self.liveness {
            let _ = l.unregister(&self.config.name, 0).await;
        }
        Ok(RunSummary {
            stop_reason: result?,
            partitions: Vec::new(),
            changes: 0,
            invalid: 0,
            failed: 0,
            checkpoints: 0,
        })
    }
}

/// The error record of an invalid message. It is parked at once (`current_attempt` past the
/// maximum): re-publishing a message that cannot be parsed cannot make it valid.
fn invalid_record(pillow: &str, m: &InvalidMessage) -> ErrorRecord {
    ErrorRecord {
        doc_id: m.doc_id(),
        pillow: pillow.to_owned(),
        error_type: "pillowtop_rs.exceptions.InvalidChangeError".into(),
        traceback: format!(
            "pillowtop_rs.exceptions.InvalidChangeError: {} (topic {}, partition {}, offset {}, {} bytes)\nmessage starts: {}",
            m.reason, m.topic, m.partition, m.offset, m.size, m.excerpt
        ),
        change: serde_json::json!({"id": m.doc_id(), "seq": m.offset, "deleted": false, "topic": m.topic, "partition": m.partition}),
        metadata: None,
        attempts: MAX_PROCESSING_ATTEMPTS + 1,
    }
}
