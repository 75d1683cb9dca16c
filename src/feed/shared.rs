//! One read of the change feed shared by the lanes of an independent pillow, with a bounded lead
//! (issue 14, item 2).
//!
//! A reader task reads the pillow's partitions once and appends each item to a ring. Every lane
//! (one per processor) reads the ring at its own cursor through a [`LaneFeed`], which is a
//! [`ChangeFeed`] like any other: the pillow loop does not know it shares its read.
//!
//! * **Bounded lead.** The ring holds at most `max_items` items and `max_bytes` bytes: what lies
//!   between the slowest attached lane and the reader. When it is full and the slowest lane is
//!   behind another one, that lane **detaches**: it goes on from its own position with its own
//!   consumer (the lane's own feed, idle until then), and the ring drops what only it still
//!   needed. When it is full and no lane can be detached (one lane, or all at the same place),
//!   the reader waits. Memory stays bounded whatever the gap.
//! * **Rejoin.** A detached lane checks, as it reads, whether the ring still holds everything
//!   from its position on (per partition, the ring holds every offset from `covered_from`). Once
//!   it does, the lane closes its own consumer and reads the ring again, skipping what it has
//!   already handled.
//! * **Start.** The first lane to assign its positions starts the reader there; a lane whose
//!   positions the ring does not cover (a processor behind the others at start) starts detached.
//!
//! Detaches and rejoins are logged and counted ([`SharedRead::stats`]). Each lane's changes are
//! clones of the ring's (a clone is cheaper than parsing a message again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ChangeFeed, FeedItem, InvalidMessage, StallProbe, TopicPartition};
use crate::change::Change;
use crate::error::Result;

/// The default bound in items: [`SharedReadOptions::max_items`].
pub const DEFAULT_MAX_ITEMS: usize = 10_000;
/// The default bound in bytes: [`SharedReadOptions::max_bytes`].
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// The bounds of the shared read.
#[derive(Debug, Clone)]
pub struct SharedReadOptions {
    /// The most items the ring holds (the lead of the fastest attached lane over the slowest).
    pub max_items: usize,
    /// The most bytes (message bodies) the ring holds.
    pub max_bytes: usize,
    /// How long a lane waits for an item before it ticks.
    pub idle_timeout: Duration,
    /// Tick as soon as the reader is at the end of its partitions (`--until-idle`).
    pub tick_at_end: bool,
}

impl Default for SharedReadOptions {
    fn default() -> Self {
        Self {
            max_items: DEFAULT_MAX_ITEMS,
            max_bytes: DEFAULT_MAX_BYTES,
            idle_timeout: Duration::from_secs(1),
            tick_at_end: false,
        }
    }
}

/// What happened to one lane, for logs, tests and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub name: String,
    pub attached: bool,
    pub detaches: u64,
    pub rejoins: u64,
    /// Items taken from the ring.
    pub from_ring: u64,
    /// Items read with the lane's own consumer while detached.
    pub from_own: u64,
}

/// The partition and offset of a change or an invalid message.
fn position(item: &FeedItem) -> Option<(TopicPartition, i64)> {
    match item {
        FeedItem::Change(c) => Some((TopicPartition::new(&c.topic, c.partition), c.offset)),
        FeedItem::Invalid(m) => Some((TopicPartition::new(&m.topic, m.partition), m.offset)),
        FeedItem::Tick | FeedItem::OffsetOutOfRange => None,
    }
}

#[derive(Debug, Clone)]
enum Item {
    Change(Box<Change>),
    Invalid(Box<InvalidMessage>),
    /// The reader's position was lost (an offset past retention): every attached lane is told.
    Lost,
}

#[derive(Debug)]
struct Slot {
    tp: Option<TopicPartition>,
    offset: i64,
    bytes: usize,
    item: Item,
}

#[derive(Debug)]
struct Lane {
    stats: LaneStats,
    active: bool,
    cursor: u64,
}

#[derive(Debug, Default)]
struct State {
    ring: VecDeque<Slot>,
    /// The sequence number of `ring[0]`.
    first_seq: u64,
    bytes: usize,
    /// Per partition, the ring holds every offset from this one on.
    covered_from: HashMap<TopicPartition, i64>,
    /// Where the reader starts, once a lane has assigned its positions.
    seed: Option<Vec<(TopicPartition, i64)>>,
    /// The reader has read everything there is (its feed ticked) and nothing since.
    at_end: bool,
    /// The reader's feed ended, or failed (its error text).
    ended: bool,
    failed: Option<String>,
    lanes: Vec<Lane>,
}

impl State {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.ring.len() as u64
    }

    fn full(&self, max_items: usize, max_bytes: usize) -> bool {
        self.ring.len() >= max_items || self.bytes >= max_bytes
    }

    fn covers(&self, positions: &BTreeMap<TopicPartition, i64>) -> bool {
        self.seed.is_some()
            && positions
                .iter()
                .all(|(tp, o)| self.covered_from.get(tp).is_some_and(|c| c <= o))
    }

    /// Drops what no attached lane still needs; `true` when something was dropped.
    fn trim(&mut self) -> bool {
        let Some(min) = self
            .lanes
            .iter()
            .filter(|l| l.active && l.stats.attached)
            .map(|l| l.cursor)
            .min()
        else {
            return false; // nobody attached: keep the ring for the lanes that will rejoin
        };
        let mut dropped = false;
        while self.first_seq < min {
            let Some(s) = self.ring.pop_front() else {
                break;
            };
            self.first_seq += 1;
            self.bytes -= s.bytes;
            if let Some(tp) = s.tp {
                self.covered_from.insert(tp, s.offset + 1);
            }
            dropped = true;
        }
        dropped
    }
}

struct Shared {
    name: String,
    options: SharedReadOptions,
    state: Mutex<State>,
    /// Bumped by the reader when it appends (or ends); lanes wait on it.
    data: watch::Sender<u64>,
    /// Bumped by the lanes when the ring has room, and by the first assign; the reader waits on it.
    space: watch::Sender<u64>,
    /// Bumped by a lane whose stall watch asks for a fresh reader client.
    reconnect: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The shared read of one pillow: make a [`LaneFeed`] per lane with [`SharedRead::lane`], then
/// run [`SharedRead::run_reader`] beside the lanes.
#[derive(Clone)]
pub struct SharedRead {
    shared: Arc<Shared>,
}

impl SharedRead {
    /// A shared read for pillow `name` (for the logs).
    pub fn new(name: &str, options: SharedReadOptions) -> Self {
        let (data, _) = watch::channel(0);
        let (space, _) = watch::channel(0);
        let (reconnect, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                options,
                state: Mutex::new(State::default()),
                data,
                space,
                reconnect,
            }),
        }
    }

    /// The feed of one lane: the ring, and `own` for when it detaches (and for the partitions'
    /// metadata).
    pub fn lane(&self, name: &str, own: Box<dyn ChangeFeed>) -> LaneFeed {
        let mut st = self.shared.lock();
        let id = st.lanes.len();
        let cursor = st.next_seq();
        st.lanes.push(Lane {
            stats: LaneStats {
                name: name.to_owned(),
                ..LaneStats::default()
            },
            active: false,
            cursor,
        });
        LaneFeed {
            shared: Arc::clone(&self.shared),
            id,
            own,
            own_assigned: false,
            data: self.shared.data.subscribe(),
            local: VecDeque::new(),
            next: BTreeMap::new(),
            skip_below: HashMap::new(),
            since_check: 0,
        }
    }

    /// Each lane's counters.
    pub fn stats(&self) -> Vec<LaneStats> {
        self.shared
            .lock()
            .lanes
            .iter()
            .map(|l| l.stats.clone())
            .collect()
    }

    /// How many items and bytes the ring holds now.
    pub fn held(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.ring.len(), st.bytes)
    }

    /// Reads `feed` into the ring until `stop` (or the feed ends or fails: the lanes are told).
    /// Waits for the first lane's positions before reading.
    pub async fn run_reader(&self, mut feed: Box<dyn ChangeFeed>, stop: &CancellationToken) {
        let sh = &self.shared;
        let mut space = sh.space.subscribe();
        let mut reconnect = sh.reconnect.subscribe();
        reconnect.mark_unchanged();
        // The first assign starts the reader.
        let seed = loop {
            if let Some(seed) = sh.lock().seed.clone() {
                break seed;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                r = space.changed() => if r.is_err() { return },
            }
        };
        if let Err(e) = feed.assign(&seed).await {
            self.fail(&e.to_string());
            return;
        }
        let mut next: BTreeMap<TopicPartition, i64> = seed.into_iter().collect();
        loop {
            let item = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                r = reconnect.changed() => {
                    if r.is_err() { return }
                    let at: Vec<_> = next.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
                    tracing::warn!(pillow = %sh.name, source = %feed.source(), "re-creating the shared reader's consumer (a lane's stall watch asked)");
                    if let Err(e) = feed.reconnect(&at).await {
                        self.fail(&e.to_string());
                        return;
                    }
                    continue;
                }
                item = feed.next() => item,
            };
            let at = item
                .as_ref()
                .ok()
                .and_then(|i| i.as_ref().and_then(position));
            if let Some((tp, offset)) = &at {
                next.insert(tp.clone(), offset + 1);
            }
            let (tp, offset) = at.map_or((None, -1), |(tp, o)| (Some(tp), o));
            let slot = match item {
                Ok(Some(FeedItem::Change(c))) => Slot {
                    tp,
                    offset,
                    bytes: c.size + 64,
                    item: Item::Change(c),
                },
                Ok(Some(FeedItem::Invalid(m))) => Slot {
                    tp,
                    offset,
                    bytes: m.size.min(m.excerpt.len()) + 64,
                    item: Item::Invalid(m),
                },
                Ok(Some(FeedItem::OffsetOutOfRange)) => Slot {
                    tp: None,
                    offset: -1,
                    bytes: 0,
                    item: Item::Lost,
                },
                Ok(Some(FeedItem::Tick)) => {
                    sh.lock().at_end = true;
                    sh.data.send_modify(|v| *v += 1);
                    continue;
                }
                Ok(None) => {
                    sh.lock().ended = true;
                    sh.data.send_modify(|v| *v += 1);
                    return;
                }
                Err(e) => {
                    self.fail(&e.to_string());
                    return;
                }
            };
            if !self.push(slot, &mut space, stop).await {
                return;
            }
        }
    }

    fn fail(&self, error: &str) {
        let sh = &self.shared;
        tracing::error!(pillow = %sh.name, error = %error, "the shared reader failed; the lanes stop");
        sh.lock().failed = Some(error.to_owned());
        sh.data.send_modify(|v| *v += 1);
    }

    /// Appends `slot`, detaching the slowest lane or waiting while the ring is full.
    async fn push(
        &self,
        slot: Slot,
        space: &mut watch::Receiver<u64>,
        stop: &CancellationToken,
    ) -> bool {
        let sh = &self.shared;
        let (max_items, max_bytes) = (sh.options.max_items, sh.options.max_bytes);
        loop {
            {
                let mut st = sh.lock();
                if !st.full(max_items, max_bytes) {
                    st.bytes += slot.bytes;
                    st.ring.push_back(slot);
                    st.at_end = false;
                    drop(st);
                    sh.data.send_modify(|v| *v += 1);
                    return true;
                }
                if detach_slowest(&mut st, &sh.name, max_items) {
                    st.trim();
                    continue;
                }
                space.mark_unchanged();
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                r = space.changed() => if r.is_err() { return false },
            }
        }
    }
}

/// Detaches the attached lane furthest behind when another attached lane is more than half the
/// bound ahead of it.
fn detach_slowest(st: &mut State, pillow: &str, max_items: usize) -> bool {
    let attached = st.lanes.iter().filter(|l| l.active && l.stats.attached);
    let (Some(min), Some(max)) = (
        attached.clone().map(|l| l.cursor).min(),
        attached.map(|l| l.cursor).max(),
    ) else {
        return false;
    };
    // Lanes close together are all slow: the reader waits for them instead.
    if max - min <= (max_items / 2) as u64 {
        return false;
    }
    let (items, bytes) = (st.ring.len(), st.bytes);
    let Some(lane) = st
        .lanes
        .iter_mut()
        .find(|l| l.active && l.stats.attached && l.cursor == min)
    else {
        return false;
    };
    lane.stats.attached = false;
    lane.stats.detaches += 1;
    tracing::warn!(pillow = %pillow, processor = %lane.stats.name, behind = max - min, held_items = items, held_bytes = bytes,
        "a processor fell more than the shared read's bound behind the others: it detaches and reads on its own until it has caught up");
    true
}

/// A lane's [`ChangeFeed`]: the shared ring while attached, its own feed while detached.
pub struct LaneFeed {
    shared: Arc<Shared>,
    id: usize,
    own: Box<dyn ChangeFeed>,
    own_assigned: bool,
    data: watch::Receiver<u64>,
    /// Items taken from the ring under one lock, handed out one by one.
    local: VecDeque<FeedItem>,
    /// The next offset of each partition this lane has been given.
    next: BTreeMap<TopicPartition, i64>,
    /// After an attach: items below these offsets were handled already.
    skip_below: HashMap<TopicPartition, i64>,
    since_check: u32,
}

/// How many items a lane takes from the ring under one lock.
const TAKE: usize = 256;
/// How often (items) a detached lane checks whether it can rejoin.
const REJOIN_CHECK_EVERY: u32 = 64;

impl LaneFeed {
    fn name(&self) -> String {
        self.shared.lock().lanes[self.id].stats.name.clone()
    }

    fn attached(&self) -> bool {
        self.shared.lock().lanes[self.id].stats.attached
    }

    /// Takes what the ring has for this lane into `local`; `false` when detached.
    fn take(&mut self) -> bool {
        let sh = Arc::clone(&self.shared);
        let mut st = sh.lock();
        let st = &mut *st;
        let lane = &mut st.lanes[self.id];
        if !lane.stats.attached {
            return false;
        }
        let mut i = usize::try_from(lane.cursor.saturating_sub(st.first_seq)).unwrap_or(usize::MAX);
        let mut taken = 0u64;
        // A lane's local batch counts against the lead: an eighth of the bound at most.
        let batch = (self.shared.options.max_items / 8).clamp(1, TAKE);
        while i < st.ring.len() && self.local.len() < batch {
            let s = &st.ring[i];
            i += 1;
            taken += 1;
            if let Some(tp) = &s.tp {
                if let Some(below) = self.skip_below.get(tp) {
                    if s.offset < *below {
                        continue;
                    }
                    self.skip_below.remove(tp);
                }
                self.next.insert(tp.clone(), s.offset + 1);
            }
            self.local.push_back(match &s.item {
                Item::Change(c) => FeedItem::Change(c.clone()),
                Item::Invalid(m) => FeedItem::Invalid(m.clone()),
                Item::Lost => {
                    self.skip_below.clear();
                    FeedItem::OffsetOutOfRange
                }
            });
        }
        lane.cursor += taken;
        lane.stats.from_ring += self.local.len() as u64;
        if taken > 0 && st.trim() {
            sh.space.send_modify(|v| *v += 1);
        }
        true
    }

    /// Attaches when the ring covers this lane's positions (closing its own consumer).
    async fn try_rejoin(&mut self, rejoin: bool) -> Result<bool> {
        let joined = {
            let mut st = self.shared.lock();
            if st.covers(&self.next) {
                let first = st.first_seq;
                let lane = &mut st.lanes[self.id];
                lane.stats.attached = true;
                lane.cursor = first;
                if rejoin {
                    lane.stats.rejoins += 1;
                }
                true
            } else {
                false
            }
        };
        if joined {
            self.skip_below = self.next.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
            if self.own_assigned {
                self.own.assign(&[]).await?;
                self.own_assigned = false;
            }
            if rejoin {
                tracing::info!(pillow = %self.shared.name, processor = %self.name(),
                    "a detached processor has caught up: it reads the shared feed again");
            }
        }
        Ok(joined)
    }

    async fn next_own(&mut self) -> Result<Option<FeedItem>> {
        if !self.own_assigned {
            let at: Vec<_> = self.next.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
            self.own.assign(&at).await?;
            self.own_assigned = true;
        }
        let item = self.own.next().await?;
        let check = match &item {
            Some(FeedItem::Tick) => {
                self.since_check = REJOIN_CHECK_EVERY;
                true
            }
            Some(i) => self.note_own(i),
            None => false,
        };
        if check && self.since_check >= REJOIN_CHECK_EVERY {
            self.since_check = 0;
            self.try_rejoin(true).await?;
        }
        Ok(item)
    }

    /// Records a change or invalid message read by the own consumer; `true` when it was one.
    fn note_own(&mut self, item: &FeedItem) -> bool {
        let Some((tp, offset)) = position(item) else {
            return false;
        };
        self.next.insert(tp, offset + 1);
        self.shared.lock().lanes[self.id].stats.from_own += 1;
        self.since_check += 1;
        true
    }

    /// Leaves the ring: a stopped lane no longer holds it back.
    fn leave(&self) {
        {
            let mut st = self.shared.lock();
            st.lanes[self.id].active = false;
            st.trim();
        }
        self.shared.space.send_modify(|v| *v += 1);
    }
}

#[async_trait]
impl ChangeFeed for LaneFeed {
    fn topics(&self) -> &[String] {
        self.own.topics()
    }

    async fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        self.own.partitions().await
    }

    async fn watermarks(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64, i64)>> {
        self.own.watermarks(partitions).await
    }

    async fn assign(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        self.local.clear();
        self.next = positions.iter().cloned().collect();
        let seeded = {
            let mut st = self.shared.lock();
            st.lanes[self.id].active = true;
            if st.seed.is_none() {
                st.seed = Some(positions.to_vec());
                st.covered_from = positions.iter().cloned().collect();
                let next = st.next_seq();
                let lane = &mut st.lanes[self.id];
                lane.stats.attached = true;
                lane.cursor = next;
                true
            } else {
                st.lanes[self.id].stats.attached = false;
                false
            }
        };
        if seeded {
            self.skip_below.clear();
            self.shared.space.send_modify(|v| *v += 1);
            if self.own_assigned {
                self.own.assign(&[]).await?;
                self.own_assigned = false;
            }
            return Ok(());
        }
        if !self.try_rejoin(false).await? {
            let name = self.name();
            let mut st = self.shared.lock();
            st.lanes[self.id].stats.detaches += 1;
            drop(st);
            tracing::info!(pillow = %self.shared.name, processor = %name,
                "this processor starts behind what the shared read holds: it reads on its own until it has caught up");
            // A fresh assign of the own consumer at the new positions.
            self.own_assigned = false;
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<Option<FeedItem>> {
        // A tick after `idle_timeout` without an item, however often the reader wakes us.
        let mut deadline = None;
        loop {
            if let Some(item) = self.local.pop_front() {
                return Ok(Some(item));
            }
            if !self.take() {
                return self.next_own().await;
            }
            if !self.local.is_empty() {
                continue;
            }
            {
                let st = self.shared.lock();
                if let Some(e) = &st.failed {
                    return Err(crate::error::KafkaError::Other(format!(
                        "shared read of pillow {} failed: {e}",
                        self.shared.name
                    ))
                    .into());
                }
                if st.ended {
                    return Ok(None);
                }
                if st.at_end && self.shared.options.tick_at_end {
                    return Ok(Some(FeedItem::Tick));
                }
            }
            self.data.mark_unchanged();
            // Re-check after marking: an append between `take` and here must not be missed.
            if self.take() && !self.local.is_empty() {
                continue;
            }
            let until = *deadline.get_or_insert_with(|| {
                tokio::time::Instant::now() + self.shared.options.idle_timeout
            });
            tokio::select! {
                r = self.data.changed() => if r.is_err() { return Ok(None) },
                () = tokio::time::sleep_until(until) => return Ok(Some(FeedItem::Tick)),
            }
        }
    }

    fn try_next(&mut self) -> Option<FeedItem> {
        if let Some(item) = self.local.pop_front() {
            return Some(item);
        }
        if self.attached() {
            return None;
        }
        // Detached: what the own consumer has at hand (the rejoin check runs in `next`).
        let item = self.own.try_next()?;
        self.note_own(&item);
        Some(item)
    }

    async fn probe(&mut self, positions: &[(TopicPartition, i64)]) -> Result<StallProbe> {
        self.own.probe(positions).await
    }

    async fn reconnect(&mut self, positions: &[(TopicPartition, i64)]) -> Result<()> {
        if self.attached() {
            self.shared.reconnect.send_modify(|v| *v += 1);
            Ok(())
        } else {
            self.own.reconnect(positions).await?;
            self.own_assigned = true;
            Ok(())
        }
    }

    fn source(&self) -> String {
        self.own.source()
    }

    async fn close(&mut self) {
        self.leave();
        if self.own_assigned {
            let _ = self.own.assign(&[]).await;
            self.own_assigned = false;
        }
    }
}

impl Drop for LaneFeed {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::memory::MemoryFeed;

    const N: i64 = 2000;

    fn feed() -> MemoryFeed {
        let mut f = MemoryFeed::new(&["t"], 2);
        for i in 0..N {
            f.push_change("t", i32::from(i % 2 == 0), &format!("d{i}"));
        }
        f.tick_when_empty = true;
        f
    }

    fn at(offset: i64) -> Vec<(TopicPartition, i64)> {
        (0..2)
            .map(|p| (TopicPartition::new("t", p), offset))
            .collect()
    }

    fn read(max_items: usize) -> SharedRead {
        SharedRead::new(
            "p",
            SharedReadOptions {
                max_items,
                max_bytes: usize::MAX,
                idle_timeout: Duration::from_millis(50),
                tick_at_end: true,
            },
        )
    }

    /// Reads `lane` until it ticks; `pause` sleeps 1 ms every 10 items for the first `pause`
    /// items. Checks the ring's bound at every item.
    async fn drain(
        mut lane: LaneFeed,
        read: SharedRead,
        pause: usize,
        max: usize,
    ) -> Vec<(i32, i64)> {
        let mut seen = Vec::new();
        while let Some(item) = lane.next().await.expect("next") {
            match item {
                FeedItem::Change(c) => seen.push((c.partition, c.offset)),
                FeedItem::Tick => break,
                other => panic!("unexpected {other:?}"),
            }
            assert!(read.held().0 <= max, "the ring holds more than its bound");
            if seen.len() < pause && seen.len() % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        lane.close().await;
        seen.sort_unstable();
        seen
    }

    fn every(from: i64) -> Vec<(i32, i64)> {
        let mut v: Vec<(i32, i64)> = (0..2)
            .flat_map(|p| (from..N / 2).map(move |o| (p, o)))
            .collect();
        v.sort_unstable();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_lane_detaches_rejoins_and_each_lane_sees_every_change_once() {
        let read = read(100);
        let stop = CancellationToken::new();
        let reader = {
            let (read, stop, f) = (read.clone(), stop.clone(), feed());
            tokio::spawn(async move { read.run_reader(Box::new(f), &stop).await })
        };
        let mut fast = read.lane("fast", Box::new(feed()));
        let mut slow = read.lane("slow", Box::new(feed()));
        fast.assign(&at(0)).await.expect("assign");
        slow.assign(&at(0)).await.expect("assign");
        let f = tokio::spawn(drain(fast, read.clone(), 0, 100));
        let s = tokio::spawn(drain(slow, read.clone(), 1000, 100));
        let (f, s) = (f.await.expect("fast"), s.await.expect("slow"));
        stop.cancel();
        reader.await.expect("reader");
        assert_eq!(f, every(0), "the fast lane saw every change once");
        assert_eq!(s, every(0), "the slow lane saw every change once");
        let stats = read.stats();
        assert_eq!(stats[0].detaches, 0, "{stats:?}");
        assert!(stats[1].detaches >= 1 && stats[1].rejoins >= 1, "{stats:?}");
        assert!(stats[1].from_own > 0 && stats[1].from_ring > 0, "{stats:?}");
        assert_eq!(
            stats[0].from_ring, 2000,
            "the fast lane read the ring only: {stats:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_that_starts_behind_reads_alone_from_its_position() {
        let read = read(100);
        let stop = CancellationToken::new();
        let reader = {
            let (read, stop, f) = (read.clone(), stop.clone(), feed());
            tokio::spawn(async move { read.run_reader(Box::new(f), &stop).await })
        };
        let mut ahead = read.lane("ahead", Box::new(feed()));
        let mut behind = read.lane("behind", Box::new(feed()));
        ahead.assign(&at(500)).await.expect("assign");
        behind.assign(&at(100)).await.expect("assign");
        assert!(
            !read.stats()[1].attached,
            "not covered by the ring: detached"
        );
        let a = tokio::spawn(drain(ahead, read.clone(), 0, 100));
        let b = tokio::spawn(drain(behind, read.clone(), 0, 100));
        let (a, b) = (a.await.expect("a"), b.await.expect("b"));
        stop.cancel();
        reader.await.expect("reader");
        assert_eq!(a, every(500));
        assert_eq!(b, every(100));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_lane_is_never_detached_the_reader_waits_for_it() {
        let read = read(50);
        let stop = CancellationToken::new();
        let reader = {
            let (read, stop, f) = (read.clone(), stop.clone(), feed());
            tokio::spawn(async move { read.run_reader(Box::new(f), &stop).await })
        };
        let mut lane = read.lane("only", Box::new(feed()));
        lane.assign(&at(0)).await.expect("assign");
        let seen = drain(lane, read.clone(), 2000, 50).await;
        stop.cancel();
        reader.await.expect("reader");
        assert_eq!(seen, every(0));
        let stats = read.stats();
        assert_eq!((stats[0].detaches, stats[0].from_own), (0, 0), "{stats:?}");
    }
}
