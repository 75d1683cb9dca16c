//! A pillow: a change feed, processors, a checkpoint store and the loop that ties them.
//!
//! The loop (CommCare's `process_changes`, docs/commcare-pillowtop.md §1.6, with the fixes of §9):
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
//! * a sink may hold changes after its calls return (gathering across chunks, requests in
//!   flight): after each chunk the loop asks every processor what it has written
//!   ([`Processor::settle`]) and the offset tracker only takes chunks every processor has
//!   settled; an idle tick, a stop, a lost offset and the stall probe first make every sink write
//!   what it holds. Held changes that fail later become error rows like any other;
//! * a change that fails is recorded in `pillow_retry_pillowerror` and the pillow goes on; if
//!   recording fails the pillow stops without checkpointing past it (crash-only: a restart
//!   resumes from the last checkpoint);
//! * a graceful stop (the cancellation token) lets the current chunk finish, flushes the buffer,
//!   writes the checkpoint, and returns.

pub mod checkpoint_policy;
mod checkpointing;
pub mod chunk;
mod flush;
pub mod handover;
pub mod independent;
mod migration;
mod run;
pub mod stall;
mod start;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::change::Change;
use crate::docstore::DocumentStores;
use crate::error::{ConfigError, Result};
use crate::feed::assignment::Layout;
use crate::feed::offsets::OffsetTracker;
use crate::feed::{ChangeFeed, InvalidMessage};
use crate::metrics::{self, Recorder};
use crate::partition::TopicPartition;
use crate::processor::Processor;
use crate::store::checkpoints::CheckpointStore;
use crate::store::errors::ErrorStore;
use crate::store::history::HistoryStore;
use crate::store::liveness::LivenessStore;

use self::checkpoint_policy::CheckpointPolicy;
use self::checkpointing::InFlight;

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

/// Where a pillow's processors record their progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessorCheckpoints {
    /// One checkpoint for all processors (CommCare's model): the slowest sets the pace.
    #[default]
    Shared,
    /// Each processor runs as its own lane with its own checkpoint rows; the pillow's rows are
    /// the minimum over them ([`independent`]).
    Independent,
}

/// At most how often a running pillow refreshes its liveness row
/// ([`PillowConfig::heartbeat_interval`]).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

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
    /// At most how often the liveness row's heartbeat (and each processor's stats with it) is
    /// refreshed while changes flow; idle ticks and the start refresh it regardless.
    pub heartbeat_interval: Duration,
    /// Independent processors: each lane on a tokio task of its own (parallel on the runtime's
    /// workers, so a processor that computes holds back no other). Set by the Rust front; lanes
    /// of Python processors stay on the thread that drives the pillow (the default, `false`).
    pub lanes_on_own_tasks: bool,
    /// CommCare's `process_changes(since=...)`: start own partitions at these offsets instead
    /// of the stored checkpoint (partitions not listed follow the start policy); the
    /// checkpoint is then written from them as usual. The test harness's
    /// `process_pillow_changes` uses it.
    pub since: Option<Vec<(TopicPartition, i64)>>,
    /// One checkpoint for all processors (default, CommCare's) or one per processor.
    pub processor_checkpoints: ProcessorCheckpoints,
    /// Independent processors: how far (changes) the fastest lane may lead the slowest on the
    /// one shared read before the slowest detaches to a consumer of its own
    /// ([`crate::feed::shared`]); 0 gives every lane its own consumer from the start.
    pub lane_max_lead_changes: usize,
    /// The same bound in bytes of message bodies held.
    pub lane_max_lead_bytes: usize,
}

impl PillowConfig {
    /// CommCare's defaults: chunk size 10, checkpoint every 100 changes or 300 s, earliest start.
    pub fn new(name: impl Into<String>, checkpoint_id: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            checkpoint_id: checkpoint_id.into(),
            chunk_size: 10,
            checkpoint_frequency: checkpoint_policy::DEFAULT_CHECKPOINT_FREQUENCY,
            max_checkpoint_delay: Some(checkpoint_policy::DEFAULT_MAX_CHECKPOINT_DELAY),
            layout: Layout::single(),
            start_policy: StartPolicy::Earliest,
            strict: false,
            retry_errors: true,
            until_idle: false,
            max_changes: None,
            bootstrap_interval: Duration::from_secs(10),
            background_checkpoints: true,
            stall_timeout: Some(stall::DEFAULT_STALL_TIMEOUT),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            lanes_on_own_tasks: false,
            max_stall_reconnects: stall::DEFAULT_MAX_RECONNECTS,
            since: None,
            processor_checkpoints: ProcessorCheckpoints::Shared,
            lane_max_lead_changes: crate::feed::shared::DEFAULT_MAX_ITEMS,
            lane_max_lead_bytes: crate::feed::shared::DEFAULT_MAX_BYTES,
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
    /// Every processor was handed over to another pillow (online split or merge): nothing is
    /// left to run here.
    NothingToRun,
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

impl RunSummary {
    /// A run that stopped before it handled anything.
    pub fn nothing(stop_reason: StopReason) -> Self {
        Self {
            stop_reason,
            partitions: Vec::new(),
            changes: 0,
            invalid: 0,
            failed: 0,
            checkpoints: 0,
        }
    }
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
    liveness: Option<Arc<dyn LivenessStore>>,
    history: Option<Arc<dyn HistoryStore>>,
    hook: Option<Box<dyn LoopHook>>,
    /// Each processor's cost so far, published with the heartbeat.
    times: chunk::ProcessorTimes,
    /// A lane of an independent pillow: its failures are recorded per processor and a retried
    /// change that failed only in other processors is skipped ([`crate::store::errors::FailedProcessor`]).
    independent_lane: bool,
    /// Where hand-over requests for this pillow's processors are read (online split of a
    /// pillow with one shared checkpoint, [`handover`]); never set on an independent lane.
    handovers: Option<Arc<crate::pg::Pg>>,
    /// Processors handed over to another pillow while this one runs: an online merge may take
    /// one back ([`handover`]).
    parked: Vec<Box<dyn Processor>>,
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

/// The loop's mutable state.
struct Run {
    /// The background checkpoint write, if one is running (at most one).
    in_flight: Option<InFlight>,
    tracker: OffsetTracker,
    /// The sequence number of the last chunk passed to the processors (chunks count from 1).
    seq: u64,
    /// Chunks passed to every processor that some processor still holds (see
    /// [`Processor::settle`]): their highest offset per partition, taken by the tracker once
    /// every processor's `written_through` reaches them.
    unsettled: std::collections::VecDeque<(u64, Vec<(TopicPartition, i64)>)>,
    /// Per processor (in order), the newest chunk it has fully handled.
    written_through: Vec<u64>,
    policy: CheckpointPolicy,
    buffer: Vec<Change>,
    invalid: Vec<InvalidMessage>,
    summary: RunSummary,
    last_heartbeat: Instant,
    /// The UTC day of the last checkpoint history snapshot this run recorded (or found).
    snapshot_day: Option<chrono::NaiveDate>,
    /// When a snapshot last failed (tried again a minute later).
    snapshot_tried: Option<Instant>,
    /// When the hand-over requests were last read ([`handover`]).
    handovers_polled: Option<Instant>,
    stall: stall::StallWatch,
    /// The run's stop token: ends the loop's own waits (the stall probe, a restart of the
    /// positions after a lost offset).
    stop: tokio_util::sync::CancellationToken,
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
            history: None,
            hook: None,
            times: chunk::ProcessorTimes::default(),
            independent_lane: false,
            handovers: None,
            parked: Vec::new(),
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

    /// Keeps a liveness row in `liveness` while the pillow runs: registered at start, its
    /// heartbeat refreshed on checkpoints and idle ticks, removed at the end.
    #[must_use]
    pub fn with_liveness(mut self, liveness: Arc<dyn LivenessStore>) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Records a daily snapshot of the pillow's checkpoint in `history` (CommCare's celery task
    /// `create_historical_checkpoints`, run by the pillow itself): on the first heartbeat of
    /// each UTC day that finds checkpoint rows, whichever process of the pillow comes first.
    #[must_use]
    pub fn with_history(mut self, history: Arc<dyn HistoryStore>) -> Self {
        self.history = Some(history);
        self
    }

    pub fn config(&self) -> &PillowConfig {
        &self.config
    }

    fn tags(&self) -> metrics::Tags {
        vec![("pillow_name", self.config.name.clone())]
    }
}
