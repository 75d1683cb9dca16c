//! Metrics with CommCare's names and tags (docs/commcare-pillowtop.md §1.10), behind a small facade.
//!
//! The engine records through [`Recorder`]; [`MemoryRecorder`] aggregates in process (tests,
//! the CLI's Prometheus export later), [`NoopRecorder`] drops everything.

use std::collections::BTreeMap;
use std::sync::Mutex;

pub const CHANGES_COUNT: &str = "commcare.change_feed.changes.count";
pub const CHANGES_SUCCESS: &str = "commcare.change_feed.changes.success";
pub const CHANGES_EXCEPTIONS: &str = "commcare.change_feed.changes.exceptions";
pub const CHANGE_LAG: &str = "commcare.change_feed.change_lag";
pub const CHUNKED_MAX_CHANGE_LAG: &str = "commcare.change_feed.chunked.max_change_lag";
pub const PROCESSING_TIME_TOTAL: &str = "commcare.change_feed.processing_time.total";
pub const PROCESSING_TIME_COUNT: &str = "commcare.change_feed.processing_time.count";
pub const CHECKPOINT: &str = "commcare.change_feed.change_feed.checkpoint";
pub const CHECKPOINT_OFFSETS: &str = "commcare.change_feed.checkpoint_offsets";
pub const BATCH_PROCESSOR_EXCEPTIONS: &str = "commcare.change_feed.batch_processor_exceptions";
pub const FEED_TIMEOUT: &str = "commcare.change_feed.timeout";
/// A histogram (seconds) of each processor's time on each chunk. Tags: `pillow_name`,
/// `processor` (its name), `action` (`process_chunk`). CommCare times its Elasticsearch and UCR
/// processors' phases under this name (tags `action`, `index`); we time every processor,
/// whole, once per chunk.
pub const PROCESSOR_TIMING: &str = "commcare.change_feed.processor.timing";
/// CommCare's buckets for [`PROCESSOR_TIMING`] (seconds).
pub const TIMING_BUCKETS: [f64; 6] = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0];
/// Ours: each processor's time per change (seconds), a mean over about its last
/// [`TIME_PER_CHANGE_WINDOW`] changes, updated once per chunk. Tags: `pillow_name`,
/// `processor`. With `pillowtop.processor.need_processing` it says how long a backlog takes.
pub const PROCESSOR_TIME_PER_CHANGE: &str = "pillowtop.processor.time_per_change_seconds";
/// The number of recent changes [`PROCESSOR_TIME_PER_CHANGE`] averages over.
pub const TIME_PER_CHANGE_WINDOW: f64 = 1000.0;
/// Ours: an own partition started at the earliest offset because its checkpoint had expired
/// (non-strict mode), or because it had no checkpoint. Tags: `pillow_name`, `topic`, `reason`.
pub const OFFSET_RESET: &str = "pillowtop.offset_reset";
/// Ours: messages that were not valid changes. Tags: `pillow_name`, `topic`.
pub const INVALID_CHANGES: &str = "pillowtop.invalid_changes";
/// Retried changes a lane of an independent pillow skipped because only other processors had
/// failed on them (per pillow and processor).
pub const RETRIES_SKIPPED: &str = "pillowtop.processor.retries_skipped";
/// Ours: stall-watch probes that found the consumer stuck (tag `outcome`: `reconnected`,
/// `gave_up`), or the broker unreachable from a fresh client (`unreachable`).
pub const FEED_STALLS: &str = "pillowtop.feed_stalls";

/// Tags as sorted (name, value) pairs.
pub type Tags = Vec<(&'static str, String)>;

/// Where metrics go.
pub trait Recorder: Send + Sync {
    fn counter(&self, name: &'static str, tags: Tags, value: f64);
    fn gauge(&self, name: &'static str, tags: Tags, value: f64);
    /// One observation of a distribution (a timing, in seconds). Dropped unless overridden.
    fn histogram(&self, _name: &'static str, _tags: Tags, _value: f64) {}
    /// Whether anything is recorded: the loop skips measuring what nobody reads (the
    /// per-processor clock) when false.
    fn is_active(&self) -> bool {
        true
    }
}

/// Drops every metric.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRecorder;

impl Recorder for NoopRecorder {
    fn counter(&self, _: &'static str, _: Tags, _: f64) {}
    fn gauge(&self, _: &'static str, _: Tags, _: f64) {}
    fn is_active(&self) -> bool {
        false
    }
}

/// A histogram's state: observations per bucket of [`TIMING_BUCKETS`] (not cumulative), count
/// and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; TIMING_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        if let Some(i) = TIMING_BUCKETS.iter().position(|b| value <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += value;
    }

    /// Observations at or below each bucket bound, then the total (`+Inf`).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        TIMING_BUCKETS
            .iter()
            .zip(self.buckets)
            .map(|(b, n)| {
                total += n;
                (*b, total)
            })
            .chain(std::iter::once((f64::INFINITY, self.count)))
            .collect()
    }
}

/// Aggregates counters (sums) and gauges (last value) in memory.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    values: Mutex<BTreeMap<(&'static str, Tags), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Tags), Histogram>>,
}

impl MemoryRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `name` summed over every tag set containing all of `tags`.
    pub fn get(&self, name: &str, tags: &[(&str, &str)]) -> f64 {
        self.values.lock().map_or(0.0, |v| {
            v.iter()
                .filter(|((n, t), _)| {
                    *n == name
                        && tags
                            .iter()
                            .all(|(k, val)| t.iter().any(|(tk, tv)| tk == k && tv == val))
                })
                .map(|(_, v)| *v)
                .sum()
        })
    }

    /// Every histogram (name, tags, state), for export.
    pub fn histograms(&self) -> Vec<(&'static str, Tags, Histogram)> {
        self.histograms.lock().map_or_else(
            |_| Vec::new(),
            |h| {
                h.iter()
                    .map(|((n, t), h)| (*n, t.clone(), h.clone()))
                    .collect()
            },
        )
    }

    /// Every (name, tags, value), for export.
    pub fn snapshot(&self) -> Vec<(&'static str, Tags, f64)> {
        self.values.lock().map_or_else(
            |_| Vec::new(),
            |v| v.iter().map(|((n, t), v)| (*n, t.clone(), *v)).collect(),
        )
    }
}

fn sorted(mut tags: Tags) -> Tags {
    tags.sort();
    tags
}

impl Recorder for MemoryRecorder {
    fn counter(&self, name: &'static str, tags: Tags, value: f64) {
        if let Ok(mut v) = self.values.lock() {
            *v.entry((name, sorted(tags))).or_insert(0.0) += value;
        }
    }

    fn gauge(&self, name: &'static str, tags: Tags, value: f64) {
        if let Ok(mut v) = self.values.lock() {
            v.insert((name, sorted(tags)), value);
        }
    }

    fn histogram(&self, name: &'static str, tags: Tags, value: f64) {
        if let Ok(mut h) = self.histograms.lock() {
            h.entry((name, sorted(tags))).or_default().observe(value);
        }
    }
}

/// Sends every metric to each of several recorders (for example the progress line and the
/// Prometheus endpoint of `pillowtop run --metrics-port`).
pub struct Fanout(pub Vec<std::sync::Arc<dyn Recorder>>);

impl Recorder for Fanout {
    fn counter(&self, name: &'static str, tags: Tags, value: f64) {
        for r in &self.0 {
            r.counter(name, tags.clone(), value);
        }
    }

    fn gauge(&self, name: &'static str, tags: Tags, value: f64) {
        for r in &self.0 {
            r.gauge(name, tags.clone(), value);
        }
    }

    fn histogram(&self, name: &'static str, tags: Tags, value: f64) {
        for r in &self.0 {
            r.histogram(name, tags.clone(), value);
        }
    }

    fn is_active(&self) -> bool {
        self.0.iter().any(|r| r.is_active())
    }
}

/// What a [`Buffered`] recorder gathered since it was last taken.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// Counter increments summed per (name, tags).
    pub counters: Vec<(&'static str, Tags, f64)>,
    /// The last value of each gauge.
    pub gauges: Vec<(&'static str, Tags, f64)>,
    /// Every observation, in order.
    pub histograms: Vec<(&'static str, Tags, f64)>,
    /// Observations dropped because the buffer was full.
    pub dropped: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.gauges.is_empty() && self.histograms.is_empty()
    }
}

#[derive(Default)]
struct Pending {
    counters: BTreeMap<(&'static str, Tags), f64>,
    gauges: BTreeMap<(&'static str, Tags), f64>,
    histograms: Vec<(&'static str, Tags, f64)>,
    dropped: u64,
}

/// Gathers metrics from any thread for a consumer that takes them in batches on its own
/// thread (the Python sink, on the pillow's lane): counters are summed and gauges keep their last
/// value between two takes; histogram observations are kept one by one, at most `capacity`, and
/// the overflow is counted.
pub struct Buffered {
    pending: Mutex<Pending>,
    capacity: usize,
}

impl Buffered {
    pub fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            capacity,
        }
    }

    /// Everything gathered since the last call.
    pub fn take(&self) -> Batch {
        let p = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        Batch {
            counters: p
                .counters
                .into_iter()
                .map(|((n, t), v)| (n, t, v))
                .collect(),
            gauges: p.gauges.into_iter().map(|((n, t), v)| (n, t, v)).collect(),
            histograms: p.histograms,
            dropped: p.dropped,
        }
    }
}

impl Recorder for Buffered {
    fn counter(&self, name: &'static str, tags: Tags, value: f64) {
        if let Ok(mut p) = self.pending.lock() {
            *p.counters.entry((name, sorted(tags))).or_insert(0.0) += value;
        }
    }

    fn gauge(&self, name: &'static str, tags: Tags, value: f64) {
        if let Ok(mut p) = self.pending.lock() {
            p.gauges.insert((name, sorted(tags)), value);
        }
    }

    fn histogram(&self, name: &'static str, tags: Tags, value: f64) {
        if let Ok(mut p) = self.pending.lock() {
            if p.histograms.len() < self.capacity {
                p.histograms.push((name, sorted(tags), value));
            } else {
                p.dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(p: &str) -> Tags {
        vec![("processor", "x".into()), ("pillow_name", p.into())]
    }

    #[test]
    fn buffered_sums_counters_keeps_last_gauges_and_bounds_histograms() {
        let b = Buffered::new(2);
        b.counter(CHANGES_COUNT, tags("p"), 2.0);
        b.counter(CHANGES_COUNT, tags("p"), 3.0);
        b.counter(CHANGES_COUNT, tags("q"), 1.0);
        b.gauge(CHANGE_LAG, tags("p"), 1.0);
        b.gauge(CHANGE_LAG, tags("p"), 4.0);
        for v in [0.01, 0.2, 5.0] {
            b.histogram(PROCESSOR_TIMING, tags("p"), v);
        }
        let batch = b.take();
        let sorted_tags = sorted(tags("p"));
        assert_eq!(
            batch.counters,
            vec![
                (CHANGES_COUNT, sorted_tags.clone(), 5.0),
                (CHANGES_COUNT, sorted(tags("q")), 1.0)
            ]
        );
        assert_eq!(batch.gauges, vec![(CHANGE_LAG, sorted_tags.clone(), 4.0)]);
        assert_eq!(
            batch.histograms,
            vec![
                (PROCESSOR_TIMING, sorted_tags.clone(), 0.01),
                (PROCESSOR_TIMING, sorted_tags, 0.2)
            ]
        );
        assert_eq!(batch.dropped, 1);
        assert!(b.take().is_empty(), "taken");
    }

    #[test]
    fn histograms_count_by_commcare_buckets() {
        let m = MemoryRecorder::new();
        for v in [0.01, 0.03, 0.2, 2.0, 11.0] {
            m.histogram(PROCESSOR_TIMING, tags("p"), v);
        }
        let h = m.histograms();
        assert_eq!(h.len(), 1);
        let cumulative = h[0].2.cumulative();
        assert_eq!(
            cumulative,
            vec![
                (0.03, 2),
                (0.1, 2),
                (0.3, 3),
                (1.0, 3),
                (3.0, 4),
                (10.0, 4),
                (f64::INFINITY, 5)
            ]
        );
        assert!((h[0].2.sum - 13.24).abs() < 1e-9);
        assert!(!NoopRecorder.is_active() && m.is_active());
        assert!(!Fanout(vec![std::sync::Arc::new(NoopRecorder)]).is_active());
    }
}
