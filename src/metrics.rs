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
/// Ours: an own partition started at the earliest offset because its checkpoint had expired
/// (non-strict mode), or because it had no checkpoint. Tags: `pillow_name`, `topic`, `reason`.
pub const OFFSET_RESET: &str = "pillowtop.offset_reset";
/// Ours: messages that were not valid changes. Tags: `pillow_name`, `topic`.
pub const INVALID_CHANGES: &str = "pillowtop.invalid_changes";
/// Ours: stall-watch probes that found the consumer stuck (tag `outcome`: `reconnected`,
/// `gave_up`), or the broker unreachable from a fresh client (`unreachable`).
pub const FEED_STALLS: &str = "pillowtop.feed_stalls";

/// Tags as sorted (name, value) pairs.
pub type Tags = Vec<(&'static str, String)>;

/// Where metrics go.
pub trait Recorder: Send + Sync {
    fn counter(&self, name: &'static str, tags: Tags, value: f64);
    fn gauge(&self, name: &'static str, tags: Tags, value: f64);
}

/// Drops every metric.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRecorder;

impl Recorder for NoopRecorder {
    fn counter(&self, _: &'static str, _: Tags, _: f64) {}
    fn gauge(&self, _: &'static str, _: Tags, _: f64) {}
}

/// Aggregates counters (sums) and gauges (last value) in memory.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    values: Mutex<BTreeMap<(&'static str, Tags), f64>>,
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
}
