//! Independent processors (`processor_checkpoints = "independent"`): each processor of a pillow
//! runs as its own lane, a loop with its own feed and its own checkpoint rows
//! ([`processor_checkpoint_id`]), so a slow processor never holds the others back. The pillow's
//! own rows stay the minimum over its processors (written by a coordinator about every second and
//! at the end), so CommCare's tools (`split_pillow_checkpoints`, lag, reset) keep their meaning.
//!
//! * A lane without rows starts from the pillow's rows (switching an existing pillow to this
//!   mode replays nothing).
//! * An operator's change of the pillow's rows (a reset, `split`) is handed to every lane: the
//!   coordinator writes it into the lanes' rows, whose next write then reloads from them
//!   (the loop's reset rule), so the pillow moves as a whole, as in CommCare.
//! * The lanes run on the task that drives the pillow (Python processors stay on their thread),
//!   or each on a task of its own ([`IndependentPillow::with_lanes_on_tasks`], the Rust front),
//!   so a processor that computes holds back no other; a fatal error in one lane stops the
//!   others gracefully (final checkpoints) and is returned.
//! * A failure is recorded per processor too, and a retry runs only the processors that failed
//!   ([`crate::store::errors::FailedProcessor`]).
//!
//! The lanes read Kafka once, through a ring with a bounded lead ([`crate::feed::shared`]); a
//! lane that falls behind the bound detaches to a consumer of its own and rejoins later.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::{CheckpointError, ConfigError, Error, Result};
use crate::feed::assignment::Layout;
use crate::feed::shared::{LaneStats, SharedRead};
use crate::feed::ChangeFeed;
use crate::partition::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::{processor_checkpoint_id, CheckpointStore, CheckpointUpdate};
use crate::store::errors::ErrorStore;
use crate::store::handover::{self, Handover};
use crate::store::liveness::{LivenessStore, ProcessRow, ProcessorStats};

use super::{Pillow, RunSummary};

/// How often the coordinator brings the pillow's rows to the minimum of its lanes.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How long a processor's failure is kept after its document's error row is gone (its retry was
/// re-published): a retry read later than that runs every processor again, as in CommCare.
pub const FAILED_PROCESSOR_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the coordinator forgets the failures past [`FAILED_PROCESSOR_RETENTION`].
const FORGET_FAILED_PROCESSORS_EVERY: Duration = Duration::from_secs(3600);

/// Forgets the failures of `pillow`'s processors past [`FAILED_PROCESSOR_RETENTION`]; a failure
/// to do so is logged and tried again later (it only costs table space).
async fn forget_failed_processors(errors: &dyn ErrorStore, pillow: &str) {
    match errors
        .forget_failed_processors(pillow, FAILED_PROCESSOR_RETENTION)
        .await
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(pillow = %pillow, rows = n, "forgot processor failures whose retry was re-published over 7 days ago");
        }
        Err(e) => {
            tracing::warn!(pillow = %pillow, error = %e, "could not forget old processor failures; trying again in an hour");
        }
    }
}

/// Each lane's outcome, by processor: the lane itself when it ran on a task of its own.
type LaneResults = Vec<(Option<Pillow>, String, Result<RunSummary>)>;
/// The runs of all lanes, as one future.
type LaneRuns<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = LaneResults> + Send + 'a>>;

/// A pillow whose processors progress independently.
pub struct IndependentPillow {
    name: String,
    checkpoint_id: String,
    store: Arc<dyn CheckpointStore>,
    lanes: Vec<Pillow>,
    sync_interval: Duration,
    /// Where hand-over requests are read and recorded (online split); none: not watched.
    handovers: Option<Arc<Pg>>,
    /// The one read of Kafka the lanes share, and its reader until it runs.
    shared_read: Option<(SharedRead, Option<Box<dyn ChangeFeed>>)>,
    /// The shared read again, for the liveness row's heartbeats (each lane's read state).
    read_slot: Arc<std::sync::OnceLock<SharedRead>>,
    /// Each lane on a tokio task of its own ([`Self::with_lanes_on_tasks`]).
    lanes_on_tasks: bool,
}

/// What a run of an [`IndependentPillow`] did: each lane's summary, by processor name.
#[derive(Debug, Clone)]
pub struct LaneSummaries {
    pub lanes: Vec<(String, RunSummary)>,
    /// With a shared read: each lane's detaches, rejoins and items read.
    pub shared_read: Vec<LaneStats>,
    /// How many times the coordinator wrote the pillow's rows.
    pub pillow_checkpoints: u64,
}

impl LaneSummaries {
    /// One summary for the pillow: the first lane's stop reason and partitions, the largest
    /// lane's change count (every lane sees every change), all failures and checkpoints.
    pub fn combined(&self) -> RunSummary {
        let mut out = self.lanes.first().map_or_else(
            || RunSummary::nothing(super::StopReason::Shutdown),
            |l| l.1.clone(),
        );
        for (_, s) in self.lanes.iter().skip(1) {
            out.changes = out.changes.max(s.changes);
            out.invalid = out.invalid.max(s.invalid);
            out.failed += s.failed;
            out.checkpoints += s.checkpoints;
        }
        out.checkpoints += self.pillow_checkpoints;
        out
    }
}

impl IndependentPillow {
    /// `lanes` are pillows of one processor each, built with the pillow's settings; each is
    /// given its processor's checkpoint id here. Processor names must be unique.
    pub fn new(store: Arc<dyn CheckpointStore>, mut lanes: Vec<Pillow>) -> Result<Self> {
        let Some(first) = lanes.first() else {
            return Err(
                ConfigError::Invalid("an independent pillow needs processors".into()).into(),
            );
        };
        let name = first.config.name.clone();
        let checkpoint_id = first.config.checkpoint_id.clone();
        let mut seen = std::collections::BTreeSet::new();
        for lane in &mut lanes {
            let [p] = lane.processors.as_slice() else {
                return Err(ConfigError::Invalid(format!(
                    "pillow {name}: each lane of an independent pillow runs exactly one processor"
                ))
                .into());
            };
            let processor = p.name().to_owned();
            if !seen.insert(processor.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "pillow {name}: two processors are named {processor}; with processor_checkpoints = \"independent\" each processor's name is its checkpoint's name and must be unique (a Python processor's name is its class's, or its processor_name attribute)"
                ))
                .into());
            }
            lane.config.checkpoint_id = processor_checkpoint_id(&checkpoint_id, &processor);
            lane.independent_lane = true;
            // The coordinator takes hand-over requests up for its lanes.
            lane.handovers = None;
        }
        let read_slot: Arc<std::sync::OnceLock<SharedRead>> = Arc::default();
        // One liveness row per pillow process, shared by the lanes: registered by the first,
        // removed when the last stops (a lane handed over to another pillow stops early), and
        // each lane's heartbeat merges its processor's stats into it. The daily history
        // snapshot is of the pillow's own rows, which no lane writes.
        if let Some(l) = lanes[0].liveness.take() {
            let shared: Arc<dyn LivenessStore> = Arc::new(SharedLiveness {
                inner: l,
                users: std::sync::Mutex::new(0),
                read: read_slot.clone(),
                checkpoint_id: checkpoint_id.clone(),
                names: lanes
                    .iter()
                    .map(|l| l.processors[0].name().to_owned())
                    .collect(),
            });
            for lane in &mut lanes {
                lane.liveness = Some(shared.clone());
            }
        } else {
            for lane in &mut lanes {
                lane.liveness = None;
            }
        }
        for lane in &mut lanes {
            lane.history = None;
        }
        Ok(Self {
            name,
            checkpoint_id,
            store,
            lanes,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            handovers: None,
            shared_read: None,
            read_slot,
            lanes_on_tasks: false,
        })
    }

    /// The lanes read through `read` (each lane's feed is one of its [`LaneFeed`](
    /// crate::feed::shared::LaneFeed)s); `reader` is the one feed of Kafka read for all of them,
    /// run beside the lanes.
    #[must_use]
    pub fn with_shared_read(mut self, read: SharedRead, reader: Box<dyn ChangeFeed>) -> Self {
        let _ = self.read_slot.set(read.clone());
        self.shared_read = Some((read, Some(reader)));
        self
    }

    /// Watches `pillowtop_rs_handover` in `pg`: a processor handed over to another pillow is
    /// not run, and a request made while the pillow runs stops that processor's lane after its
    /// final checkpoint and hands its position over ([`crate::store::handover`]).
    #[must_use]
    pub fn with_handovers(mut self, pg: Arc<Pg>) -> Self {
        self.handovers = Some(pg);
        self
    }

    /// Runs each lane on a tokio task of its own, so lanes run in parallel on the runtime's
    /// worker threads and a processor that computes (or blocks) holds back no other. Only for
    /// lanes whose processors, document stores and hooks may run on any thread: never Python's.
    #[must_use]
    pub fn with_lanes_on_tasks(mut self, on_tasks: bool) -> Self {
        self.lanes_on_tasks = on_tasks;
        self
    }

    #[must_use]
    pub fn with_sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every;
        self
    }

    /// The checkpoint ids of the lanes, by processor name.
    pub fn lane_checkpoint_ids(&self) -> Vec<(String, String)> {
        self.lanes
            .iter()
            .map(|l| {
                (
                    l.processors[0].name().to_owned(),
                    l.config.checkpoint_id.clone(),
                )
            })
            .collect()
    }

    /// Runs every lane until it stops (see the module docs).
    pub async fn run(&mut self, stop: &CancellationToken) -> Result<LaneSummaries> {
        let own = self.own_partitions(stop).await?;
        // The process is registered before it reads the hand-over requests: an online split
        // that finds no live process hands over directly, and a process that registers after
        // that check reads the request after it (so it never runs a handed-over processor).
        let liveness = self.lanes[0].liveness.clone();
        let layout = self.lanes[0].config.layout;
        if let Some(l) = &liveness {
            l.register(&self.name, &self.checkpoint_id, &layout, &own)
                .await?;
        }
        let outcome = self.run_lanes(stop, own).await;
        if let Some(l) = &liveness {
            if let Err(e) = l.unregister(&self.name, layout.process_num).await {
                tracing::warn!(pillow = %self.name, error = %e, "could not remove the process's liveness row");
            }
        }
        outcome
    }

    async fn run_lanes(
        &mut self,
        stop: &CancellationToken,
        own: Vec<TopicPartition>,
    ) -> Result<LaneSummaries> {
        let parked = self.park_handed_over(&own).await?;
        let ids: Vec<String> = self
            .lanes
            .iter()
            .map(|l| l.config.checkpoint_id.clone())
            .collect();
        let (parked_ids, running): (Vec<String>, Vec<String>) = self
            .lanes
            .iter()
            .map(|l| l.config.checkpoint_id.clone())
            .partition(|id| {
                self.lanes.iter().any(|l| {
                    &l.config.checkpoint_id == id && parked.contains(l.processors[0].name())
                })
            });
        let parked_ids: BTreeSet<String> = parked_ids.into_iter().collect();
        seed_lanes(&*self.store, &self.name, &self.checkpoint_id, &running).await?;
        let lanes_stop = stop.child_token();
        let coordinator_stop = CancellationToken::new();
        let removed: Arc<std::sync::Mutex<BTreeSet<String>>> =
            Arc::new(std::sync::Mutex::new(parked_ids));
        let mut sync = Sync::new(
            self.store.clone(),
            &self.checkpoint_id,
            ids,
            removed.clone(),
            own.clone(),
        );
        sync.round().await?;
        // Each lane stops on the pillow's stop, or alone when it is handed over.
        let watch = lane_watches(&self.lanes, &parked, &lanes_stop);
        let handovers = self.handovers.clone();
        let errors = self.lanes[0].errors.clone();
        let lanes = lane_runs(
            &mut self.lanes,
            self.lanes_on_tasks,
            &watch,
            &lanes_stop,
            handovers.as_ref(),
            &removed,
            &own,
        );
        let lanes = async {
            let r = lanes.await;
            coordinator_stop.cancel();
            r
        };
        let every = self.sync_interval;
        let name = self.name.clone();
        let mut next_forget = tokio::time::Instant::now();
        let coordinator = async {
            loop {
                tokio::select! {
                    () = coordinator_stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = sync.round().await {
                    tracing::warn!(pillow = %name, error = %e, "could not bring the pillow's checkpoint to the minimum of its processors; trying again");
                }
                if let Some(pg) = &handovers {
                    watch_handovers(pg, &mut sync, &watch, &name).await;
                }
                if tokio::time::Instant::now() >= next_forget {
                    next_forget += FORGET_FAILED_PROCESSORS_EVERY;
                    forget_failed_processors(&*errors, &name).await;
                }
            }
        };
        let reading = shared_reader(self.shared_read.as_mut(), &coordinator_stop);
        let (results, (), ()) = tokio::join!(lanes, coordinator, reading);
        let results: Vec<(String, Result<RunSummary>)> = results
            .into_iter()
            .map(|(lane, name, r)| {
                if let Some(lane) = lane {
                    self.lanes.push(lane);
                }
                (name, r)
            })
            .collect();
        // The last round, after every lane's final checkpoint.
        let last = sync.round().await;
        let mut lanes = first_lane_error(&self.name, results)?;
        last?;
        if watch.iter().all(LaneWatch::is_parked) {
            tracing::warn!(pillow = %self.name,
                "every processor of this pillow has been handed over to another pillow: nothing to run here (remove the pillow from the deployment)");
            for (_, s) in &mut lanes {
                s.stop_reason = super::StopReason::NothingToRun;
            }
        }
        Ok(LaneSummaries {
            lanes,
            shared_read: self
                .shared_read
                .as_ref()
                .map(|(r, _)| r.stats())
                .unwrap_or_default(),
            pillow_checkpoints: sync.writes,
        })
    }

    /// A processor split out of this pillow is not run here (its lane is parked: an online
    /// merge may resume it): this process hands over its own partitions first (a request made
    /// while it was stopped, or before a crash). Returns the parked processors.
    async fn park_handed_over(&mut self, own: &[TopicPartition]) -> Result<BTreeSet<String>> {
        let mut parked = BTreeSet::new();
        if let Some(pg) = &self.handovers {
            for h in handover::load(pg, Some(&self.checkpoint_id)).await? {
                if h.taken_back(own)
                    || !self
                        .lanes
                        .iter()
                        .any(|l| l.processors[0].name() == h.processor)
                {
                    continue;
                }
                let handed = handover::hand_over(pg, &h, Some(own)).await?;
                tracing::warn!(pillow = %self.name, processor = %h.processor, target = %h.target,
                    handed_over = handed.len(), requested_at = %h.requested_at, merging_back = h.merge_requested_at.is_some(),
                    "this processor was handed over to another pillow: not running it here (remove it from the pillow's definition, or take it back with `pillowtop merge --online`)");
                parked.insert(h.processor.clone());
            }
        }
        Ok(parked)
    }

    async fn own_partitions(&mut self, stop: &CancellationToken) -> Result<Vec<TopicPartition>> {
        let lane = &mut self.lanes[0];
        let all = super::run::unless_stopped(
            stop,
            "reading the partitions of the pillow's topics",
            lane.feed.partitions(),
        )
        .await?;
        lane.config.layout.assign(&all)
    }
}

/// Each lane's stop, hand-over slot and park state (`parked`: the processors handed over).
fn lane_watches(
    lanes: &[Pillow],
    parked: &BTreeSet<String>,
    lanes_stop: &CancellationToken,
) -> Vec<LaneWatch> {
    // The lanes running (not parked): a parked lane ends when none is left.
    let running = Arc::new(tokio::sync::watch::Sender::new(
        lanes
            .iter()
            .filter(|l| !parked.contains(l.processors[0].name()))
            .count(),
    ));
    lanes
        .iter()
        .map(|l| {
            let processor = l.processors[0].name().to_owned();
            LaneWatch {
                parked: Arc::new(std::sync::atomic::AtomicBool::new(
                    parked.contains(&processor),
                )),
                processor,
                stop: Arc::new(std::sync::Mutex::new(lanes_stop.child_token())),
                handover: Arc::default(),
                resume: Arc::default(),
                running: running.clone(),
            }
        })
        .collect()
}

/// Every lane's run, in lane order.
#[allow(clippy::too_many_arguments)]
fn lane_runs<'a>(
    lanes: &'a mut Vec<Pillow>,
    on_tasks: bool,
    watch: &'a [LaneWatch],
    lanes_stop: &CancellationToken,
    handovers: Option<&Arc<Pg>>,
    removed: &Arc<std::sync::Mutex<BTreeSet<String>>>,
    own: &[TopicPartition],
) -> LaneRuns<'a> {
    // Lanes on tasks of their own (the Rust front) run in parallel on the runtime's workers:
    // a processor that computes or blocks holds back no other lane. Otherwise (Python
    // processors must stay on the thread that drives the pillow) all are polled by this task.
    if on_tasks {
        let handles: Vec<_> = std::mem::take(lanes)
            .into_iter()
            .zip(watch.iter().cloned())
            .map(|(mut lane, w)| {
                let (lanes_stop, handovers, removed, own) = (
                    lanes_stop.clone(),
                    handovers.cloned(),
                    removed.clone(),
                    own.to_vec(),
                );
                tokio::spawn(async move {
                    let (name, r) = run_lane(
                        &mut lane,
                        &w,
                        &lanes_stop,
                        handovers.as_ref(),
                        &removed,
                        &own,
                    )
                    .await;
                    (Some(lane), name, r)
                })
            })
            .collect();
        let processors: Vec<String> = watch.iter().map(|w| w.processor.clone()).collect();
        let lanes_stop = lanes_stop.clone();
        Box::pin(async move {
            let mut out = Vec::with_capacity(handles.len());
            for (h, processor) in futures::future::join_all(handles)
                .await
                .into_iter()
                .zip(processors)
            {
                out.push(h.unwrap_or_else(|e| {
                    lanes_stop.cancel();
                    let e = crate::error::ProcessError::Other(format!(
                        "the lane of processor {processor} ended abnormally: {e}"
                    ));
                    (None, processor, Err(e.into()))
                }));
            }
            out
        })
    } else {
        Box::pin(futures::future::join_all(lanes.iter_mut().zip(watch).map(
            |(lane, w)| {
                let (lanes_stop, handovers, removed, own) = (
                    lanes_stop.clone(),
                    handovers.cloned(),
                    removed.clone(),
                    own.to_vec(),
                );
                async move {
                    let (name, r) =
                        run_lane(lane, w, &lanes_stop, handovers.as_ref(), &removed, &own).await;
                    (None, name, r)
                }
            },
        )))
    }
}

/// Runs one lane until it stops; a lane that stopped on a hand-over request then hands its
/// partitions over and is parked until an online merge resumes it (or the pillow stops). A
/// lane's failure stops the others (gracefully, after their final checkpoints).
async fn run_lane(
    lane: &mut Pillow,
    w: &LaneWatch,
    lanes_stop: &CancellationToken,
    handovers: Option<&Arc<Pg>>,
    removed: &std::sync::Mutex<BTreeSet<String>>,
    own: &[TopicPartition],
) -> (String, Result<RunSummary>) {
    let name = lane.processors[0].name().to_owned();
    let mut total: Option<RunSummary> = None;
    let ended = |total: Option<RunSummary>| {
        Ok(total.unwrap_or_else(|| RunSummary::nothing(super::StopReason::Shutdown)))
    };
    loop {
        if w.is_parked() {
            // Until an online merge resumes it, the pillow stops, or no lane runs any more
            // (the others went idle or reached their maximum: the pillow's run is over).
            let mut count = w.running.subscribe();
            tokio::select! {
                () = w.resume.notified() => {}
                () = lanes_stop.cancelled() => return (name, ended(total)),
                _ = count.wait_for(|n| *n == 0) => return (name, ended(total)),
            }
            w.running.send_modify(|n| *n += 1);
        }
        let stop = w
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut r = lane.run(&stop).await;
        let mut handed = false;
        if r.is_ok() {
            if let Some(pg) = handovers {
                let ids = (lane.config.name.clone(), lane.config.checkpoint_id.clone());
                match finish_handover(pg, ids, w, removed, own).await {
                    Ok(h) => handed = h,
                    Err(e) => r = Err(e),
                }
            }
        }
        if !handed || r.is_err() || lanes_stop.is_cancelled() {
            w.running.send_modify(|n| *n = n.saturating_sub(1));
        }
        match r {
            Err(e) => {
                lanes_stop.cancel();
                return (name, Err(e));
            }
            Ok(s) => {
                total = Some(match total {
                    None => s,
                    Some(mut t) => {
                        t.changes += s.changes;
                        t.invalid += s.invalid;
                        t.failed += s.failed;
                        t.checkpoints += s.checkpoints;
                        t.stop_reason = s.stop_reason;
                        t
                    }
                });
            }
        }
        if !handed || lanes_stop.is_cancelled() {
            return (name, ended(total));
        }
        // Parked: no longer running; a fresh stop token for the next run, if an online merge
        // resumes it.
        w.running.send_modify(|n| *n = n.saturating_sub(1));
        if let Ok(mut t) = w.stop.lock() {
            *t = lanes_stop.child_token();
        }
    }
}

/// After a lane stopped on a hand-over request (after its final checkpoint, so its rows are
/// exactly what it handled): hands this process's partitions over and leaves the lane out of
/// the pillow's minimum.
async fn finish_handover(
    pg: &Pg,
    (pillow, lane_id): (String, String),
    w: &LaneWatch,
    removed: &std::sync::Mutex<BTreeSet<String>>,
    own: &[TopicPartition],
) -> Result<bool> {
    let requested = w.handover.lock().map(|mut h| h.take()).unwrap_or_default();
    let Some(h) = requested else {
        return Ok(false);
    };
    let handed = handover::hand_over(pg, &h, Some(own)).await?;
    if let Ok(mut set) = removed.lock() {
        set.insert(lane_id);
    }
    w.parked.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::warn!(pillow = %pillow, processor = %h.processor, target = %h.target, kind = ?h.kind,
        partitions = handed.len(), "processor handed over to another pillow: its lane has stopped here (parked: `pillowtop merge --online` takes it back)");
    Ok(true)
}

/// Stops the lane of each processor with a hand-over request (once), remembering the request;
/// resumes a parked lane whose processor is being merged back once its target has handed it
/// back for every partition of this process ([`handover::take_back`]).
async fn watch_handovers(pg: &Pg, sync: &mut Sync, watch: &[LaneWatch], name: &str) {
    let requests = match handover::load(pg, Some(&sync.checkpoint_id)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(pillow = %name, error = %e, "could not read the hand-over requests; trying again");
            return;
        }
    };
    for h in requests {
        for w in watch.iter().filter(|w| w.processor == h.processor) {
            if w.is_parked() {
                if h.merge_requested_at.is_some() {
                    if let Err(e) = take_back(pg, sync, w, &h, name).await {
                        tracing::warn!(pillow = %name, processor = %h.processor, error = %e,
                            "could not take the processor back (online merge); trying again");
                    }
                }
                continue;
            }
            let mut slot = w
                .handover
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() && !h.taken_back(&sync.own) {
                tracing::info!(pillow = %name, processor = %h.processor, target = %h.target,
                    "hand-over requested: stopping this processor's lane after its current chunk");
                *slot = Some(h.clone());
                if let Ok(t) = w.stop.lock() {
                    t.cancel();
                }
            }
        }
    }
}

/// Resumes the parked lane `w` once the split's target has handed its processor back for this
/// process's partitions: the lane's rows are the handed-back ones, the pillow's rows (and the
/// coordinator's record of them) the lower of theirs and the lane's, and the lane rejoins the
/// minimum before it runs again (from its own rows: behind the others, it starts detached).
async fn take_back(
    pg: &Pg,
    sync: &mut Sync,
    w: &LaneWatch,
    split: &Handover,
    name: &str,
) -> Result<()> {
    let Some(taken) = handover::take_back(pg, split, Some(&sync.own), true).await? else {
        return Ok(()); // Not handed back everywhere yet.
    };
    let lane = processor_checkpoint_id(&sync.checkpoint_id, &split.processor);
    if let Ok(mut set) = sync.removed.lock() {
        set.remove(&lane);
    }
    // Read the record again (the take-back moved it with the rows), then the minimum with the
    // lane in it.
    sync.last_written = None;
    sync.round().await?;
    w.parked.store(false, std::sync::atomic::Ordering::SeqCst);
    w.resume.notify_one();
    tracing::warn!(pillow = %name, processor = %split.processor, from = %split.target,
        partitions = taken.partitions.len(), complete = taken.complete,
        "processor merged back into the running pillow: its lane runs again from the position its other pillow handed back");
    Ok(())
}

/// A running lane's own stop and the hand-over that stopped it.
#[derive(Clone)]
struct LaneWatch {
    processor: String,
    /// The lane's current run's stop (a fresh one after each hand-over).
    stop: Arc<std::sync::Mutex<CancellationToken>>,
    handover: Arc<std::sync::Mutex<Option<Handover>>>,
    /// Handed over to another pillow: waits for `resume` (an online merge) or the pillow's stop.
    parked: Arc<std::sync::atomic::AtomicBool>,
    resume: Arc<tokio::sync::Notify>,
    /// How many lanes of the pillow run (are not parked and have not ended).
    running: Arc<tokio::sync::watch::Sender<usize>>,
}

impl LaneWatch {
    fn is_parked(&self) -> bool {
        self.parked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The process's liveness row shared by its lanes: registered by the first lane to register,
/// removed when the last one unregisters; heartbeats pass through (stats merge by processor).
struct SharedLiveness {
    inner: Arc<dyn LivenessStore>,
    users: std::sync::Mutex<usize>,
    /// With a shared read: each heartbeat records its lanes' read state (attached or detached,
    /// detaches, rejoins), which `pillowtop lag` shows per processor.
    read: Arc<std::sync::OnceLock<SharedRead>>,
    /// The lanes' processor names, in the order of the lanes and of the shared read's lanes
    /// (both built in the pillow's processor order).
    names: Vec<String>,
    /// The pillow's checkpoint id, which the row names (a lane's own id would hide the process
    /// from `lag`'s owner column and the running-pillow checks of the operations).
    checkpoint_id: String,
}

#[async_trait]
impl LivenessStore for SharedLiveness {
    async fn register(
        &self,
        pillow: &str,
        _lane_checkpoint_id: &str,
        layout: &Layout,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        let first = {
            let mut n = self
                .users
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *n += 1;
            *n == 1
        };
        if first {
            self.inner
                .register(pillow, &self.checkpoint_id, layout, partitions)
                .await?;
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        pillow: &str,
        process_num: u32,
        stats: &ProcessorStats,
    ) -> Result<()> {
        let Some(read) = self.read.get() else {
            return self.inner.heartbeat(pillow, process_num, stats).await;
        };
        let mut stats = stats.clone();
        for (name, lane) in self.names.iter().zip(read.stats()) {
            if let Some(s) = stats.get_mut(name) {
                s.attached = Some(lane.attached);
                s.detaches = lane.detaches;
                s.rejoins = lane.rejoins;
            }
        }
        self.inner.heartbeat(pillow, process_num, &stats).await
    }

    async fn unregister(&self, pillow: &str, process_num: u32) -> Result<()> {
        let last = {
            let mut n = self
                .users
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *n = n.saturating_sub(1);
            *n == 0
        };
        if last {
            self.inner.unregister(pillow, process_num).await?;
        }
        Ok(())
    }

    async fn list(&self, pillow: Option<&str>) -> Result<Vec<ProcessRow>> {
        self.inner.list(pillow).await
    }
}

/// A lane without rows starts from the pillow's rows.
async fn seed_lanes(
    store: &dyn CheckpointStore,
    name: &str,
    checkpoint_id: &str,
    ids: &[String],
) -> Result<()> {
    {
        let pillow_rows = store.load(checkpoint_id).await?;
        if pillow_rows.is_empty() {
            return Ok(());
        }
        for id in ids {
            let have: BTreeMap<TopicPartition, i64> = store
                .load(id)
                .await?
                .into_iter()
                .map(|r| (r.tp, r.offset))
                .collect();
            let updates: Vec<CheckpointUpdate> = pillow_rows
                .iter()
                .filter(|r| !have.contains_key(&r.tp))
                .map(|r| CheckpointUpdate {
                    tp: r.tp.clone(),
                    offset: r.offset,
                    expected: None,
                })
                .collect();
            if updates.is_empty() {
                continue;
            }
            match store.write(id, &updates).await {
                // Another process of the pillow seeded them first.
                Ok(()) | Err(Error::Checkpoint(CheckpointError::Reset { .. })) => {}
                Err(e) => return Err(e),
            }
            tracing::info!(pillow = %name, checkpoint_id = %id, partitions = updates.len(),
                "a processor's checkpoint starts from the pillow's");
        }
        Ok(())
    }
}

/// The coordinator's state: keeps the pillow's own rows at the minimum over its lanes, and
/// hands an operator's change of them to the lanes.
struct Sync {
    store: Arc<dyn CheckpointStore>,
    checkpoint_id: String,
    lane_ids: Vec<String>,
    /// Lanes handed over to another pillow: no longer part of the minimum.
    removed: Arc<std::sync::Mutex<BTreeSet<String>>>,
    own: Vec<TopicPartition>,
    /// What this coordinator last saw or wrote in the pillow's rows (own partitions).
    last_written: Option<BTreeMap<TopicPartition, i64>>,
    /// Where the coordinator records what it wrote into the pillow's rows
    /// (`{checkpoint id}/processor/`), so that a change made while the pillow was stopped (an
    /// operator's reset) is told apart from the coordinator's own writes at the next start.
    marker_id: String,
    marker: BTreeMap<TopicPartition, i64>,
    writes: u64,
}

impl Sync {
    fn new(
        store: Arc<dyn CheckpointStore>,
        checkpoint_id: &str,
        lane_ids: Vec<String>,
        removed: Arc<std::sync::Mutex<BTreeSet<String>>>,
        own: Vec<TopicPartition>,
    ) -> Self {
        Self {
            store,
            checkpoint_id: checkpoint_id.to_owned(),
            lane_ids,
            removed,
            own,
            last_written: None,
            marker_id: processor_checkpoint_id(checkpoint_id, ""),
            marker: BTreeMap::new(),
            writes: 0,
        }
    }

    async fn rows(&self, id: &str) -> Result<BTreeMap<TopicPartition, i64>> {
        Ok(self
            .store
            .load(id)
            .await?
            .into_iter()
            .filter(|r| self.own.contains(&r.tp))
            .map(|r| (r.tp, r.offset))
            .collect())
    }

    async fn round(&mut self) -> Result<()> {
        let pillow = self.rows(&self.checkpoint_id).await?;
        let removed = self.removed.lock().map(|r| r.clone()).unwrap_or_default();
        let active: Vec<String> = self
            .lane_ids
            .iter()
            .filter(|id| !removed.contains(*id))
            .cloned()
            .collect();
        let mut lanes = Vec::with_capacity(active.len());
        for id in &active {
            lanes.push(self.rows(id).await?);
        }
        if self.last_written.is_none() {
            // Before the lanes start: the pillow's rows should be what the coordinator last
            // wrote (both are written in one transaction). Where they differ, an operator moved
            // them while the pillow was stopped: the pillow's row wins, through the same rule
            // as a move while running (at worst changes are handled again). A first start in
            // this mode has no record: the rows are taken as they are.
            self.marker = self.rows(&self.marker_id).await?;
            self.last_written = Some(if self.marker.is_empty() {
                pillow.clone()
            } else {
                self.marker.clone()
            });
        }
        // An operator changed the pillow's rows since the last round: move every lane there.
        if let Some(last) = &self.last_written {
            let moved: Vec<(TopicPartition, i64)> = pillow
                .iter()
                .filter(|(tp, o)| last.get(*tp).is_some_and(|l| l != *o))
                .map(|(tp, o)| (tp.clone(), *o))
                .collect();
            if !moved.is_empty() {
                tracing::warn!(checkpoint_id = %self.checkpoint_id, partitions = moved.len(),
                    "the pillow's checkpoint was changed externally; moving every processor's checkpoint to it");
                let mut writes: Vec<(String, Vec<CheckpointUpdate>)> = active
                    .iter()
                    .zip(&lanes)
                    .map(|(id, rows)| {
                        let updates = moved
                            .iter()
                            .map(|(tp, o)| CheckpointUpdate {
                                tp: tp.clone(),
                                offset: *o,
                                expected: rows.get(tp).copied(),
                            })
                            .collect();
                        (id.clone(), updates)
                    })
                    .collect();
                writes.push((self.marker_id.clone(), self.marker_updates(&pillow)));
                self.store.write_together(&writes).await?;
                self.marker.extend(pillow.clone());
                self.last_written = Some(pillow);
                return Ok(());
            }
        }
        let updates: Vec<CheckpointUpdate> = minimum(&self.own, &lanes)
            .into_iter()
            .filter(|(tp, min)| pillow.get(tp) != Some(min))
            .map(|(tp, min)| CheckpointUpdate {
                expected: pillow.get(&tp).copied(),
                tp,
                offset: min,
            })
            .collect();
        let mut now = pillow;
        for u in &updates {
            now.insert(u.tp.clone(), u.offset);
        }
        // The pillow's rows and the record of them in one transaction: a crash between two
        // writes would look like an operator's move at the next start, and move every lane back
        // to the slowest one (the fast processors would redo the whole gap).
        let record = self.marker_updates(&now);
        let pillow_written = !updates.is_empty();
        let writes = [
            (self.checkpoint_id.clone(), updates),
            (self.marker_id.clone(), record),
        ];
        match self.store.write_together(&writes).await {
            Ok(()) => {
                if pillow_written {
                    self.writes += 1;
                }
                self.marker.extend(now.clone());
            }
            // Changed between our read and our write: the next round sees it.
            Err(Error::Checkpoint(CheckpointError::Reset { .. })) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.last_written = Some(now);
        Ok(())
    }

    /// The writes that make the marker record `rows` (the pillow's rows as the coordinator
    /// accepts them).
    fn marker_updates(&self, rows: &BTreeMap<TopicPartition, i64>) -> Vec<CheckpointUpdate> {
        rows.iter()
            .filter(|(tp, o)| self.marker.get(*tp) != Some(*o))
            .map(|(tp, o)| CheckpointUpdate {
                tp: tp.clone(),
                offset: *o,
                expected: self.marker.get(tp).copied(),
            })
            .collect()
    }
}

/// Per own partition that every lane has a row for, the smallest of their offsets.
fn minimum(
    own: &[TopicPartition],
    lanes: &[BTreeMap<TopicPartition, i64>],
) -> BTreeMap<TopicPartition, i64> {
    own.iter()
        .filter_map(|tp| {
            let mut min: Option<i64> = None;
            for rows in lanes {
                let o = *rows.get(tp)?;
                min = Some(min.map_or(o, |m| m.min(o)));
            }
            min.map(|m| (tp.clone(), m))
        })
        .collect()
}

/// Runs the shared read's reader (once) until `stop`; nothing without a shared read.
async fn shared_reader(
    shared: Option<&mut (SharedRead, Option<Box<dyn ChangeFeed>>)>,
    stop: &CancellationToken,
) {
    if let Some((read, Some(feed))) = shared.map(|(r, f)| (r.clone(), f.take())) {
        read.run_reader(feed, stop).await;
    }
}

/// The lanes' summaries, or the first lane's error (every lane's error is logged).
fn first_lane_error(
    pillow: &str,
    results: Vec<(String, Result<RunSummary>)>,
) -> Result<Vec<(String, RunSummary)>> {
    let mut summaries = Vec::with_capacity(results.len());
    let mut first_error = None;
    for (processor, r) in results {
        match r {
            Ok(s) => summaries.push((processor, s)),
            Err(e) => {
                tracing::error!(pillow = %pillow, processor = %processor, error = %e, "a processor's lane stopped the pillow");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(summaries), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;
    use crate::feed::memory::MemoryFeed;
    use crate::pillow::PillowConfig;
    use crate::processor::memory::RecordingProcessor;
    use crate::processor::{Processor, ProcessorFailure};
    use crate::store::checkpoints::memory::MemoryCheckpointStore;
    use crate::store::errors::memory::MemoryErrorStore;

    /// Waits for its gate before each change.
    struct Gated {
        gate: Arc<tokio::sync::Semaphore>,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl Processor for Gated {
        fn name(&self) -> &str {
            "slow"
        }
        async fn process_change(
            &mut self,
            _change: &mut Change,
        ) -> Result<std::result::Result<(), ProcessorFailure>> {
            self.gate.acquire().await.expect("gate").forget();
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Ok(()))
        }
    }

    fn lane(
        store: &Arc<MemoryCheckpointStore>,
        changes: usize,
        processor: Box<dyn Processor>,
    ) -> Pillow {
        let mut feed = MemoryFeed::new(&["t"], 1);
        for i in 0..changes {
            feed.push_change("t", 0, &format!("d{i}"));
        }
        let mut config = PillowConfig::new("two-speed", "two-speed-cp");
        config.chunk_size = 5;
        config.checkpoint_frequency = 1;
        config.background_checkpoints = false;
        Pillow::new(
            config,
            Box::new(feed),
            vec![processor],
            store.clone(),
            Arc::new(MemoryErrorStore::new()),
        )
    }

    async fn offset(store: &MemoryCheckpointStore, id: &str) -> Option<i64> {
        store
            .load(id)
            .await
            .expect("load")
            .first()
            .map(|r| r.offset)
    }

    #[tokio::test]
    async fn a_slow_processor_never_holds_the_fast_one_back_and_the_pillow_stays_at_the_minimum() {
        let store = Arc::new(MemoryCheckpointStore::default());
        let fast = RecordingProcessor::new("fast", true);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let slow = Gated {
            gate: gate.clone(),
            seen: seen.clone(),
        };
        let mut pillow = IndependentPillow::new(
            store.clone(),
            vec![
                lane(&store, 50, Box::new(fast.clone())),
                lane(&store, 50, Box::new(slow)),
            ],
        )
        .expect("lanes")
        .with_sync_interval(Duration::from_millis(10));
        let ids = pillow.lane_checkpoint_ids();
        assert_eq!(
            ids,
            [
                ("fast".to_owned(), "two-speed-cp/processor/fast".to_owned()),
                ("slow".to_owned(), "two-speed-cp/processor/slow".to_owned())
            ]
        );
        let run = tokio::spawn(async move {
            let s = pillow.run(&CancellationToken::new()).await;
            (pillow, s)
        });
        // Let the slow lane through its first chunk only.
        gate.add_permits(5);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while offset(&store, "two-speed-cp/processor/fast").await != Some(50)
            || offset(&store, "two-speed-cp").await != Some(5)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fast lane did not finish alone"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(fast.recorded.lock().expect("lock").processed.len(), 50);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(offset(&store, "two-speed-cp/processor/slow").await, Some(5));
        // The pillow's own row is the minimum: never past what the slow processor handled.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(offset(&store, "two-speed-cp").await, Some(5));
        gate.add_permits(1000);
        let (_, summary) = run.await.expect("joins");
        let summary = summary.expect("runs");
        assert_eq!(summary.lanes.len(), 2);
        assert_eq!(summary.combined().changes, 50);
        for id in [
            "two-speed-cp",
            "two-speed-cp/processor/fast",
            "two-speed-cp/processor/slow",
        ] {
            assert_eq!(offset(&store, id).await, Some(50), "{id}");
        }
    }

    #[tokio::test]
    async fn lanes_start_from_the_pillows_rows_and_an_operators_move_wins() {
        let store = Arc::new(MemoryCheckpointStore::default());
        // The pillow ran with one shared checkpoint up to 20.
        store.set("two-speed-cp", TopicPartition::new("t", 0), 20);
        // The slow lane has rows from an earlier run at 30 and the coordinator recorded writing
        // 30 into the pillow's row, which says 20: an operator reset it while the pillow was
        // stopped, and that wins.
        let t0 = || TopicPartition::new("t", 0);
        store.set("two-speed-cp/processor/slow", t0(), 30);
        store.set("two-speed-cp/processor/", t0(), 30);
        let fast = RecordingProcessor::new("fast", true);
        let slow = RecordingProcessor::new("slow", true);
        let mut pillow = IndependentPillow::new(
            store.clone(),
            vec![
                lane(&store, 40, Box::new(fast.clone())),
                lane(&store, 40, Box::new(slow.clone())),
            ],
        )
        .expect("lanes")
        .with_sync_interval(Duration::from_millis(1));
        pillow.run(&CancellationToken::new()).await.expect("runs");
        let offsets = |p: &RecordingProcessor| -> Vec<i64> {
            p.recorded
                .lock()
                .expect("lock")
                .processed
                .iter()
                .map(|r| r.3)
                .collect()
        };
        // The fast lane had no rows: it started at the pillow's 20 (nothing replayed before).
        assert_eq!(offsets(&fast).first(), Some(&20));
        assert_eq!(offsets(&fast).len(), 20);
        assert_eq!(
            offsets(&slow).first(),
            Some(&20),
            "moved back to the pillow's row"
        );
        assert_eq!(
            offset(&store, "two-speed-cp/processor/slow").await,
            Some(40)
        );
        assert_eq!(offset(&store, "two-speed-cp").await, Some(40));
    }

    #[tokio::test]
    async fn failures_are_kept_per_processor_and_a_retry_runs_only_the_processors_that_failed() {
        use crate::store::errors::{ErrorStore, FailedProcessor};
        let store = Arc::new(MemoryCheckpointStore::default());
        let errors = Arc::new(MemoryErrorStore::new());
        // An earlier pass: "slow" failed on d2 (the change's attempt count became 1).
        let meta = crate::change::ChangeMeta::new("d2", "sql", "t");
        let mut failed = Change::from_message("t", 0, 2, meta.to_json().as_bytes()).expect("valid");
        failed.increment_attempt_count();
        errors
            .record(&[crate::store::errors::ErrorRecord::for_change(
                "two-speed",
                &failed,
                "tests.TestError",
                "boom".into(),
            )
            .of_processor("slow")])
            .await
            .expect("record");
        let retry = |id: &str, attempts: u32| {
            let mut m = crate::change::ChangeMeta::new(id, "sql", "t");
            m.attempts = attempts;
            m.to_json()
        };
        let lane = |p: RecordingProcessor| {
            let mut feed = MemoryFeed::new(&["t"], 1);
            for i in 0..5 {
                feed.push_change("t", 0, &format!("d{i}"));
            }
            // Retries (chunks of two): d2 as the retry queue re-publishes it; d3 with no recorded
            // failure and d2 again at another attempt count, which run everywhere, as in CommCare.
            feed.push("t", 0, Some("d2"), retry("d2", 1));
            feed.push("t", 0, Some("d3"), retry("d3", 1));
            feed.push("t", 0, Some("d2"), retry("d2", 2));
            let mut config = PillowConfig::new("two-speed", "two-speed-cp");
            config.chunk_size = 2;
            config.until_idle = true;
            config.background_checkpoints = false;
            Pillow::new(
                config,
                Box::new(feed),
                vec![Box::new(p)],
                store.clone(),
                errors.clone(),
            )
        };
        let fast = RecordingProcessor::new("fast", true);
        let slow = RecordingProcessor::new("slow", true);
        slow.fail_ids.lock().expect("lock").insert("d4".into());
        let mut pillow =
            IndependentPillow::new(store.clone(), vec![lane(fast.clone()), lane(slow.clone())])
                .expect("lanes");
        pillow.run(&CancellationToken::new()).await.expect("runs");
        let seen = |p: &RecordingProcessor| -> Vec<String> {
            p.recorded
                .lock()
                .expect("lock")
                .processed
                .iter()
                .map(|(id, ..)| id.clone())
                .collect()
        };
        assert_eq!(seen(&fast), ["d0", "d1", "d2", "d3", "d4", "d3", "d2"]);
        assert_eq!(seen(&slow), ["d0", "d1", "d2", "d3", "d2", "d3", "d2"]);
        // slow's failure on d4 names it, in the row and per processor.
        let rows = errors.list("two-speed").await.expect("rows");
        let d4 = rows.iter().find(|r| r.doc_id == "d4").expect("d4's row");
        assert!(d4
            .error_traceback
            .as_deref()
            .is_some_and(|t| t.starts_with("in processor slow of pillow two-speed")));
        assert!(errors
            .failed_processors("two-speed", None)
            .await
            .expect("failed")
            .contains(&FailedProcessor {
                doc_id: "d4".into(),
                processor: "slow".into(),
                attempts: 1,
            }));
    }

    /// Blocks its thread until released (a processor that computes, or calls a blocking API).
    struct Blocking {
        release: std::sync::mpsc::Receiver<()>,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl Processor for Blocking {
        fn name(&self) -> &str {
            "slow"
        }
        async fn process_change(
            &mut self,
            _change: &mut Change,
        ) -> Result<std::result::Result<(), ProcessorFailure>> {
            let _ = self.release.recv();
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Ok(()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lanes_on_tasks_of_their_own_are_not_held_back_by_a_processor_that_blocks() {
        for on_tasks in [false, true] {
            let store = Arc::new(MemoryCheckpointStore::default());
            let fast = RecordingProcessor::new("fast", true);
            let (release, rx) = std::sync::mpsc::channel();
            let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let slow = Blocking {
                release: rx,
                seen: seen.clone(),
            };
            let mut pillow = IndependentPillow::new(
                store.clone(),
                // The blocking lane first: one task polls it first, and it blocks at once.
                vec![
                    lane(&store, 50, Box::new(slow)),
                    lane(&store, 50, Box::new(fast.clone())),
                ],
            )
            .expect("lanes")
            .with_sync_interval(Duration::from_millis(10))
            .with_lanes_on_tasks(on_tasks);
            let run = tokio::spawn(async move { pillow.run(&CancellationToken::new()).await });
            tokio::time::sleep(Duration::from_millis(500)).await;
            let fast_done = fast.recorded.lock().expect("lock").processed.len();
            if on_tasks {
                assert_eq!(
                    fast_done, 50,
                    "on tasks of their own the fast lane finishes alone"
                );
            } else {
                // The control: polled by one task, every lane waits while one blocks.
                assert!(
                    fast_done < 50,
                    "one task: the blocked lane holds the fast one ({fast_done})"
                );
            }
            for _ in 0..50 {
                release.send(()).expect("release");
            }
            let summary = run.await.expect("joins").expect("runs");
            assert_eq!(summary.combined().changes, 50);
            assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 50);
            assert_eq!(fast.recorded.lock().expect("lock").processed.len(), 50);
            assert_eq!(
                pillow_lanes_after(&store).await,
                [Some(50), Some(50), Some(50)]
            );
        }
    }

    async fn pillow_lanes_after(store: &MemoryCheckpointStore) -> [Option<i64>; 3] {
        [
            offset(store, "two-speed-cp").await,
            offset(store, "two-speed-cp/processor/fast").await,
            offset(store, "two-speed-cp/processor/slow").await,
        ]
    }
}
