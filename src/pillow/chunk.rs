//! Running one chunk through the processors, with CommCare's semantics (docs/commcare-pillowtop.md §1.6):
//!
//! 1. de-duplicate: keep the last occurrence of each document id, in the order of those last
//!    occurrences (`1a 2a 3a 2b 4a 1b` → `3a 2b 4a 1b`);
//! 2. batch processors, in order, each with the whole de-duplicated chunk: if the call fails as a
//!    whole, every change goes through that processor's `process_change`; changes it returns for
//!    retry go through `process_change` too; changes it returns as errors are failures;
//! 3. then every change through the serial processors, in order; the first failure skips the
//!    remaining serial processors for that change.
//!
//! A change that fails anywhere in the pass is recorded once (one attempt per pass: the fix for
//! docs/commcare-pillowtop.md §9 #12), with its first failure. With chunk size 0 there are no batch processors:
//! every processor runs serially.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::change::Change;
use crate::docstore::DocumentStores;
use crate::error::Result;
use crate::metrics::{self, Recorder};
use crate::processor::{Processor, ProcessorFailure};

/// Keeps the last occurrence of each document id, in the order of those last occurrences.
pub fn deduplicate(changes: Vec<Change>) -> Vec<Change> {
    let keep: Vec<bool> = {
        // Document ids come from our own feed, a chunk at a time: a fast hash, not SipHash
        // (measured: SipHash was 3% of the no-op pillow).
        let mut last: FxHashMap<&str, usize> =
            FxHashMap::with_capacity_and_hasher(changes.len(), rustc_hash::FxBuildHasher);
        for (i, c) in changes.iter().enumerate() {
            last.insert(c.id.as_str(), i);
        }
        if last.len() == changes.len() {
            Vec::new()
        } else {
            changes
                .iter()
                .enumerate()
                .map(|(i, c)| last.get(c.id.as_str()) == Some(&i))
                .collect()
        }
    };
    if keep.is_empty() {
        return changes; // no duplicates: the common case, no copying
    }
    changes
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect()
}

/// What each processor of a pillow has cost so far (by index, as the pillow's processors):
/// seconds in its calls and changes given to it. The heartbeat publishes it
/// ([`crate::store::liveness::ProcessorStat`]).
#[derive(Debug, Clone, Default)]
pub struct ProcessorTimes {
    seconds: Vec<f64>,
    changes: Vec<u64>,
    /// Each processor's recent time per change: a mean weighted by changes over about the last
    /// [`metrics::TIME_PER_CHANGE_WINDOW`] changes (`None` before its first chunk).
    recent: Vec<Option<f64>>,
}

impl ProcessorTimes {
    /// Adds one chunk of `changes` changes that cost each processor `spent`.
    pub fn add(&mut self, spent: &[Duration], changes: usize) {
        self.add_seconds(spent);
        if self.changes.len() < spent.len() {
            self.changes.resize(spent.len(), 0);
        }
        for c in &mut self.changes[..spent.len()] {
            *c += changes as u64;
        }
        if changes == 0 {
            return;
        }
        if self.recent.len() < spent.len() {
            self.recent.resize(spent.len(), None);
        }
        #[allow(clippy::cast_precision_loss)]
        let n = changes as f64;
        let weight = (n / metrics::TIME_PER_CHANGE_WINDOW).min(1.0);
        for (r, d) in self.recent.iter_mut().zip(spent) {
            let sample = d.as_secs_f64() / n;
            *r = Some(r.map_or(sample, |old| old + (sample - old) * weight));
        }
    }

    /// Forgets processor `j` (left out of the rest of the run): the later ones move up.
    pub fn remove(&mut self, j: usize) {
        if j < self.seconds.len() {
            self.seconds.remove(j);
        }
        if j < self.changes.len() {
            self.changes.remove(j);
        }
        if j < self.recent.len() {
            self.recent.remove(j);
        }
    }

    /// Processor `j`'s recent time per change, seconds.
    pub fn recent_per_change(&self, j: usize) -> Option<f64> {
        self.recent.get(j).copied().flatten()
    }

    /// Adds time without changes (a sink's wait for its background writes).
    pub fn add_wait(&mut self, j: usize, d: Duration) {
        if self.seconds.len() <= j {
            self.seconds.resize(j + 1, 0.0);
        }
        self.seconds[j] += d.as_secs_f64();
    }

    fn add_seconds(&mut self, spent: &[Duration]) {
        if self.seconds.len() < spent.len() {
            self.seconds.resize(spent.len(), 0.0);
        }
        for (s, d) in self.seconds.iter_mut().zip(spent) {
            *s += d.as_secs_f64();
        }
    }

    /// By processor name (`names` in the pillow's order).
    pub fn stats<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
    ) -> crate::store::liveness::ProcessorStats {
        names
            .enumerate()
            .map(|(j, n)| {
                (
                    n.to_owned(),
                    crate::store::liveness::ProcessorStat {
                        seconds: self.seconds.get(j).copied().unwrap_or(0.0),
                        changes: self.changes.get(j).copied().unwrap_or(0),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }
}

/// The failures of one pass: index into the de-duplicated chunk → first failure.
pub type Failures = BTreeMap<usize, ProcessorFailure>;

fn fail(failures: &mut Failures, i: usize, f: ProcessorFailure) {
    failures.entry(i).or_insert(f);
}

/// Runs `changes` (already de-duplicated when `batch` is on) through `processors`.
/// `batch` is false for chunk size 0: then every processor is serial.
pub async fn process_chunk(
    processors: &mut [Box<dyn Processor>],
    changes: &mut [Change],
    batch: bool,
    docstores: &DocumentStores,
    pillow: &str,
    metrics: &dyn Recorder,
    times: &mut ProcessorTimes,
) -> Result<Failures> {
    let mut failures = Failures::new();
    if processors.iter().any(|p| p.needs_documents()) {
        docstores.fetch_missing(changes).await?;
    }
    // Each processor's time on this chunk (CommCare's processor timing, and the cost `pillowtop
    // doctor` reads from the liveness row): one clock read per processor call.
    let mut spent = vec![Duration::ZERO; processors.len()];
    if batch {
        for (j, p) in processors
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| p.supports_batch_processing())
        {
            let started = Instant::now();
            match p.process_changes_chunk(changes).await? {
                Ok(outcome) => {
                    for (i, f) in outcome.errors {
                        fail(&mut failures, i, f);
                    }
                    for i in outcome.retry {
                        let Some(change) = changes.get_mut(i) else {
                            continue;
                        };
                        if let Err(f) = p.process_change(change).await? {
                            fail(&mut failures, i, f);
                        }
                    }
                }
                Err(whole) => {
                    tracing::warn!(pillow, processor = p.name(), error = %whole, changes = changes.len(),
                        "batch processor failed on a whole chunk; processing its changes one by one");
                    metrics.counter(
                        metrics::BATCH_PROCESSOR_EXCEPTIONS,
                        vec![
                            ("processor", p.name().to_owned()),
                            ("pillow_name", pillow.to_owned()),
                        ],
                        1.0,
                    );
                    for (i, change) in changes.iter_mut().enumerate() {
                        if let Err(f) = p.process_change(change).await? {
                            fail(&mut failures, i, f);
                        }
                    }
                }
            }
            spent[j] += started.elapsed();
        }
    }
    let serial: Vec<usize> = (0..processors.len())
        .filter(|j| !(batch && processors[*j].supports_batch_processing()))
        .collect();
    if !serial.is_empty() {
        let mut clock = Instant::now();
        for (i, change) in changes.iter_mut().enumerate() {
            for &j in &serial {
                let outcome = processors[j].process_change(change).await?;
                let now = Instant::now();
                spent[j] += now - clock;
                clock = now;
                if let Err(f) = outcome {
                    fail(&mut failures, i, f);
                    break;
                }
            }
        }
    }
    times.add(&spent, changes.len());
    for (j, (p, d)) in processors
        .iter()
        .zip(&spent)
        .enumerate()
        .filter(|_| metrics.is_active())
    {
        metrics.histogram(
            metrics::PROCESSOR_TIMING,
            vec![
                ("action", "process_chunk".to_owned()),
                ("pillow_name", pillow.to_owned()),
                ("processor", p.name().to_owned()),
            ],
            d.as_secs_f64(),
        );
        if let Some(per_change) = times.recent_per_change(j) {
            metrics.gauge(
                metrics::PROCESSOR_TIME_PER_CHANGE,
                vec![
                    ("pillow_name", pillow.to_owned()),
                    ("processor", p.name().to_owned()),
                ],
                per_change,
            );
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeMeta;
    use crate::metrics::NoopRecorder;
    use crate::processor::memory::RecordingProcessor;

    fn change(id: &str, offset: i64) -> Change {
        let meta = ChangeMeta::new(id, "sql", "form-sql");
        Change::from_message("t", 0, offset, meta.to_json().as_bytes()).expect("valid")
    }

    fn ids(v: &[Change]) -> Vec<(String, i64)> {
        v.iter().map(|c| (c.id.clone(), c.offset)).collect()
    }

    #[test]
    fn dedup_keeps_last_occurrence_in_order() {
        let chunk = vec![
            change("1", 0),
            change("2", 1),
            change("3", 2),
            change("2", 3),
            change("4", 4),
            change("1", 5),
        ];
        let d = deduplicate(chunk);
        assert_eq!(
            ids(&d),
            [
                ("3".into(), 2),
                ("2".into(), 3),
                ("4".into(), 4),
                ("1".into(), 5)
            ]
        );
    }

    async fn run(
        procs: Vec<RecordingProcessor>,
        batch: bool,
        n: usize,
    ) -> (Failures, Vec<RecordingProcessor>) {
        let mut boxed: Vec<Box<dyn Processor>> = procs
            .iter()
            .map(|p| Box::new(p.clone()) as Box<dyn Processor>)
            .collect();
        let mut changes: Vec<Change> = (0..n)
            .map(|i| change(&format!("d{i}"), i64::try_from(i).expect("small")))
            .collect();
        let f = process_chunk(
            &mut boxed,
            &mut changes,
            batch,
            &DocumentStores::new(),
            "p",
            &NoopRecorder,
            &mut ProcessorTimes::default(),
        )
        .await
        .expect("ok");
        (f, procs)
    }

    #[tokio::test]
    async fn each_processor_is_timed_once_per_chunk_with_its_name() {
        let procs = [
            RecordingProcessor::new("bulk", true),
            RecordingProcessor::new("serial", false),
        ];
        let mut boxed: Vec<Box<dyn Processor>> = procs
            .iter()
            .map(|p| Box::new(p.clone()) as Box<dyn Processor>)
            .collect();
        let mut changes: Vec<Change> = (0..4).map(|i| change(&format!("d{i}"), i)).collect();
        let m = crate::metrics::MemoryRecorder::new();
        for _ in 0..2 {
            process_chunk(
                &mut boxed,
                &mut changes,
                true,
                &DocumentStores::new(),
                "p",
                &m,
                &mut ProcessorTimes::default(),
            )
            .await
            .expect("ok");
        }
        let h = m.histograms();
        let names: Vec<(&str, String, u64)> = h
            .iter()
            .map(|(n, t, h)| {
                let processor = t.iter().find(|(k, _)| *k == "processor").expect("tag");
                assert!(t.contains(&("pillow_name", "p".to_owned())), "{t:?}");
                (*n, processor.1.clone(), h.count)
            })
            .collect();
        assert_eq!(
            names,
            [
                (metrics::PROCESSOR_TIMING, "bulk".to_owned(), 2),
                (metrics::PROCESSOR_TIMING, "serial".to_owned(), 2)
            ]
        );
        let gauges: Vec<String> = m
            .snapshot()
            .into_iter()
            .filter(|(n, _, v)| *n == metrics::PROCESSOR_TIME_PER_CHANGE && *v >= 0.0)
            .map(|(_, t, _)| {
                t.iter()
                    .find(|(k, _)| *k == "processor")
                    .expect("tag")
                    .1
                    .clone()
            })
            .collect();
        assert_eq!(gauges, ["bulk", "serial"]);
    }

    #[test]
    fn time_per_change_is_a_recent_mean_weighted_by_changes() {
        let mut t = ProcessorTimes::default();
        assert_eq!(t.recent_per_change(0), None);
        // 100 changes at 1 ms each: the first sample is taken whole.
        t.add(&[Duration::from_millis(100)], 100);
        assert!((t.recent_per_change(0).expect("set") - 0.001).abs() < 1e-12);
        // A chunk of 100 at 11 ms each moves the mean a tenth of the way (100 of 1,000).
        t.add(&[Duration::from_millis(1100)], 100);
        assert!((t.recent_per_change(0).expect("set") - 0.002).abs() < 1e-9);
        // A chunk as large as the window replaces it; an empty chunk changes nothing.
        t.add(&[Duration::from_millis(5000)], 1000);
        assert!((t.recent_per_change(0).expect("set") - 0.005).abs() < 1e-9);
        t.add(&[Duration::from_millis(7)], 0);
        assert!((t.recent_per_change(0).expect("set") - 0.005).abs() < 1e-9);
        // The cumulative stats the heartbeat carries are unchanged by the mean.
        let s = t.stats(["p"].into_iter());
        assert_eq!(s["p"].changes, 1200);
    }

    #[tokio::test]
    async fn batch_then_serial_and_first_serial_failure_skips_the_rest() {
        let bulk = RecordingProcessor::new("bulk", true);
        let s1 = RecordingProcessor::new("s1", false);
        let s2 = RecordingProcessor::new("s2", false);
        s1.fail_ids.lock().expect("lock").insert("d1".into());
        let (f, procs) = run(vec![bulk, s1, s2], true, 3).await;
        let bulk_r = procs[0].recorded.lock().expect("lock");
        assert_eq!(bulk_r.chunks, [3]);
        assert_eq!(bulk_r.serial_calls, 0);
        let s2_ids: Vec<_> = procs[2]
            .recorded
            .lock()
            .expect("lock")
            .processed
            .iter()
            .map(|p| p.0.clone())
            .collect();
        assert_eq!(s2_ids, ["d0", "d2"], "s2 never sees d1, which failed in s1");
        assert_eq!(f.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(f[&1].message.contains("s1 fails on d1"));
    }

    #[tokio::test]
    async fn a_failed_chunk_falls_back_to_serial_on_that_processor_only() {
        let mut bulk = RecordingProcessor::new("bulk", true);
        bulk.fail_chunks = true;
        bulk.fail_ids.lock().expect("lock").insert("d2".into());
        let other = RecordingProcessor::new("other-bulk", true);
        let (f, procs) = run(vec![bulk, other], true, 4).await;
        let r = procs[0].recorded.lock().expect("lock");
        assert_eq!(r.serial_calls, 4, "every change retried serially");
        assert_eq!(r.processed.len(), 3);
        let o = procs[1].recorded.lock().expect("lock");
        assert_eq!(
            (o.chunks.clone(), o.serial_calls),
            (vec![4], 0),
            "the other processor keeps its bulk path"
        );
        assert_eq!(f.keys().copied().collect::<Vec<_>>(), [2]);
    }

    #[tokio::test]
    async fn retry_set_is_retried_serially_and_one_failure_per_change_per_pass() {
        let bulk = RecordingProcessor::new("bulk", true);
        bulk.retry_ids.lock().expect("lock").insert("d0".into());
        bulk.fail_ids
            .lock()
            .expect("lock")
            .extend(["d0".to_owned(), "d1".to_owned()]);
        let serial = RecordingProcessor::new("serial", false);
        serial.fail_ids.lock().expect("lock").insert("d1".into());
        let (f, procs) = run(vec![bulk, serial], true, 2).await;
        assert_eq!(
            procs[0].recorded.lock().expect("lock").serial_calls,
            1,
            "d0 retried once"
        );
        assert_eq!(f.len(), 2);
        assert!(
            f[&1].message.contains("bulk fails on d1"),
            "first failure kept: {:?}",
            f[&1]
        );
    }

    #[tokio::test]
    async fn chunk_size_zero_runs_batch_processors_serially() {
        let bulk = RecordingProcessor::new("bulk", true);
        let (_, procs) = run(vec![bulk], false, 3).await;
        let r = procs[0].recorded.lock().expect("lock");
        assert!(r.chunks.is_empty());
        assert_eq!(r.serial_calls, 3);
    }
}
