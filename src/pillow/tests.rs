//! The pillow loop against the in-memory feed, stores and processors: CommCare's loop table
#![allow(clippy::float_cmp, clippy::many_single_char_names)] // exact small counts in metrics; short names in tests
//! (docs/commcare-pillowtop.md §1.6), checkpoint values, resume, expiry, invalid messages and crash-only errors.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::error::Error;
use crate::feed::memory::MemoryFeed;
use crate::metrics::MemoryRecorder;
use crate::processor::memory::RecordingProcessor;
use crate::processor::ProcessorFailure;
use crate::store::checkpoints::memory::MemoryCheckpointStore;
use crate::store::errors::memory::MemoryErrorStore;
use crate::store::liveness::memory::{LivenessCall, MemoryLivenessStore};

struct Harness {
    checkpoints: Arc<MemoryCheckpointStore>,
    errors: Arc<MemoryErrorStore>,
    metrics: Arc<MemoryRecorder>,
    liveness: Arc<MemoryLivenessStore>,
}

impl Harness {
    fn new() -> Self {
        Self {
            checkpoints: Arc::default(),
            errors: Arc::default(),
            metrics: Arc::default(),
            liveness: Arc::default(),
        }
    }

    async fn run(
        &self,
        config: PillowConfig,
        feed: MemoryFeed,
        procs: &[RecordingProcessor],
    ) -> Result<RunSummary> {
        let processors = procs
            .iter()
            .map(|p| Box::new(p.clone()) as Box<dyn Processor>)
            .collect();
        let mut pillow = Pillow::new(
            config,
            Box::new(feed),
            processors,
            self.checkpoints.clone(),
            self.errors.clone(),
        )
        .with_metrics(self.metrics.clone())
        .with_liveness(self.liveness.clone());
        pillow.run(&CancellationToken::new()).await
    }

    fn writes(&self) -> Vec<Vec<(String, i64)>> {
        self.checkpoints
            .writes()
            .into_iter()
            .map(|w| w.into_iter().map(|(tp, o)| (tp.to_string(), o)).collect())
            .collect()
    }
}

fn config(chunk_size: usize) -> PillowConfig {
    let mut c = PillowConfig::new("test-pillow", "test-pillow-checkpoint");
    c.chunk_size = chunk_size;
    c.max_checkpoint_delay = None;
    c.checkpoint_frequency = 1;
    c
}

fn processed(p: &RecordingProcessor) -> Vec<String> {
    p.recorded
        .lock()
        .expect("lock")
        .processed
        .iter()
        .map(|r| r.0.clone())
        .collect()
}

fn chunks(p: &RecordingProcessor) -> Vec<usize> {
    p.recorded.lock().expect("lock").chunks.clone()
}

#[tokio::test]
async fn batch_chunk_of_one_checkpoints_after_the_change() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "1");
    let p = RecordingProcessor::new("bulk", true);
    let s = h
        .run(config(1), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(chunks(&p), [1]);
    assert_eq!(
        h.writes(),
        [vec![("t,0".to_owned(), 1)]],
        "next offset to read is 1"
    );
    assert_eq!((s.changes, s.stop_reason), (1, StopReason::FeedEnded));
}

#[tokio::test]
async fn batch_chunk_of_two_flushes_at_size() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "1");
    feed.push_change("t", 0, "2");
    let p = RecordingProcessor::new("bulk", true);
    h.run(config(2), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(chunks(&p), [2]);
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 2)]]);
    assert_eq!(
        p.recorded.lock().expect("lock").checkpoint_updates,
        1,
        "processors hear about each checkpoint"
    );
}

#[tokio::test]
async fn a_tick_flushes_the_partial_chunk_and_checkpoints() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "1");
    feed.push_tick();
    let p = RecordingProcessor::new("bulk", true);
    let mut c = config(2);
    c.until_idle = true;
    let s = h
        .run(c, feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(chunks(&p), [1], "the tick flushed a chunk of one");
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 1)]]);
    assert_eq!(
        (s.changes, s.stop_reason),
        (1, StopReason::Idle),
        "the tick is not counted as a change"
    );
}

#[tokio::test]
async fn idle_ticks_with_nothing_moved_write_nothing() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_tick();
    feed.push_tick();
    let p = RecordingProcessor::new("bulk", true);
    let s = h
        .run(config(2), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert!(h.writes().is_empty());
    assert!(chunks(&p).is_empty());
    assert_eq!(s.changes, 0);
    assert_eq!(h.metrics.get(metrics::FEED_TIMEOUT, &[]), 2.0);
}

#[tokio::test]
async fn an_empty_feed_does_nothing() {
    let h = Harness::new();
    let p = RecordingProcessor::new("bulk", true);
    let s = h
        .run(
            config(10),
            MemoryFeed::new(&["t"], 2),
            std::slice::from_ref(&p),
        )
        .await
        .expect("runs");
    assert!(h.writes().is_empty());
    assert!(p.recorded.lock().expect("lock").processed.is_empty());
    assert_eq!(s.checkpoints, 0);
}

#[tokio::test]
async fn a_partial_chunk_is_flushed_when_the_feed_ends() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "1");
    let p = RecordingProcessor::new("bulk", true);
    h.run(config(2), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(chunks(&p), [1]);
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 1)]]);
}

#[tokio::test]
async fn chunk_size_zero_is_serial_and_checkpoints_after_the_change() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "1");
    let p = RecordingProcessor::new("bulk", true);
    h.run(config(0), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert!(chunks(&p).is_empty());
    assert_eq!(processed(&p), ["1"]);
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 1)]]);
}

#[tokio::test]
async fn checkpoint_frequency_counts_changes() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..5 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    let mut c = config(1);
    c.checkpoint_frequency = 2;
    // CommCare's exact write points (the background writer coalesces them: tested below).
    c.background_checkpoints = false;
    h.run(c, feed, &[RecordingProcessor::new("p", false)])
        .await
        .expect("runs");
    let offsets: Vec<i64> = h.writes().into_iter().map(|w| w[0].1).collect();
    assert_eq!(
        offsets,
        [2, 4, 5],
        "every 2 changes, then the final checkpoint at stop"
    );
}

#[tokio::test]
async fn the_first_change_after_start_checkpoints_when_the_delay_rule_is_on() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..3 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    feed.push_tick();
    feed.push_change("t", 0, "late");
    let mut c = config(1);
    c.checkpoint_frequency = 1000;
    c.max_checkpoint_delay = Some(Duration::from_secs(300));
    c.max_changes = Some(3);
    let s = h
        .run(c, feed, &[RecordingProcessor::new("p", false)])
        .await
        .expect("runs");
    assert_eq!(s.stop_reason, StopReason::MaxChanges);
    let offsets: Vec<i64> = h.writes().into_iter().map(|w| w[0].1).collect();
    assert_eq!(offsets, [1, 3], "first change, then the final checkpoint");
}

#[tokio::test]
async fn dedup_is_what_processors_see_but_the_checkpoint_covers_the_whole_chunk() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for id in ["1", "2", "3", "2", "4", "1"] {
        feed.push_change("t", 0, id);
    }
    let bulk = RecordingProcessor::new("bulk", true);
    let serial = RecordingProcessor::new("serial", false);
    h.run(config(6), feed, &[bulk.clone(), serial.clone()])
        .await
        .expect("runs");
    let seen: Vec<(String, i64)> = bulk
        .recorded
        .lock()
        .expect("lock")
        .processed
        .iter()
        .map(|r| (r.0.clone(), r.3))
        .collect();
    assert_eq!(
        seen,
        [
            ("3".into(), 2),
            ("2".into(), 3),
            ("4".into(), 4),
            ("1".into(), 5)
        ]
    );
    assert_eq!(processed(&serial), ["3", "2", "4", "1"]);
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 6)]]);
}

#[tokio::test]
async fn resumes_from_the_checkpoint_for_own_partitions_only() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 4);
    for p in 0..4 {
        for i in 0..5 {
            feed.push_change("t", p, &format!("p{p}-{i}"));
        }
    }
    for p in 0..4 {
        h.checkpoints
            .set("test-pillow-checkpoint", TopicPartition::new("t", p), 3);
    }
    let mut c = config(10);
    c.layout = Layout {
        num_processes: 2,
        process_num: 1,
        dedicated_migration_process: false,
    };
    let proc_ = RecordingProcessor::new("p", true);
    let s = h
        .run(c, feed, std::slice::from_ref(&proc_))
        .await
        .expect("runs");
    assert_eq!(
        s.partitions,
        [TopicPartition::new("t", 1), TopicPartition::new("t", 3)]
    );
    let mut got = processed(&proc_);
    got.sort();
    assert_eq!(got, ["p1-3", "p1-4", "p3-3", "p3-4"]);
    let mut written = h.writes().concat();
    written.sort();
    assert_eq!(
        written,
        [("t,1".to_owned(), 5), ("t,3".to_owned(), 5)],
        "only own partitions are written"
    );
}

#[tokio::test]
async fn a_partition_without_checkpoint_follows_the_start_policy() {
    for (policy, expected) in [
        (StartPolicy::Earliest, vec!["a", "b"]),
        (StartPolicy::Latest, vec![]),
    ] {
        let h = Harness::new();
        let mut feed = MemoryFeed::new(&["t"], 1);
        feed.push_change("t", 0, "a");
        feed.push_change("t", 0, "b");
        let mut c = config(10);
        c.start_policy = policy;
        let p = RecordingProcessor::new("p", true);
        h.run(c, feed, std::slice::from_ref(&p))
            .await
            .expect("runs");
        assert_eq!(processed(&p), expected, "{policy:?}");
    }
    let h = Harness::new();
    let mut c = config(10);
    c.start_policy = StartPolicy::Error;
    let err = h
        .run(c, MemoryFeed::new(&["t"], 1), &[])
        .await
        .expect_err("refuses");
    assert!(err.to_string().contains("has no offset for t,0"), "{err}");
}

#[tokio::test]
async fn expired_checkpoint_strict_fails_with_commcares_message() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..10 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    feed.set_first_available("t", 0, 6);
    h.checkpoints
        .set("test-pillow-checkpoint", TopicPartition::new("t", 0), 2);
    let mut c = config(10);
    c.strict = true;
    let err = h.run(c, feed, &[]).await.expect_err("strict");
    assert_eq!(
        err.to_string(),
        "First available topic offset for t:0 is 6 but needed 2."
    );
}

#[tokio::test]
async fn expired_checkpoint_non_strict_resumes_at_earliest_and_says_so() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..10 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    feed.set_first_available("t", 0, 6);
    h.checkpoints
        .set("test-pillow-checkpoint", TopicPartition::new("t", 0), 2);
    let p = RecordingProcessor::new("p", true);
    h.run(config(10), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(processed(&p), ["d6", "d7", "d8", "d9"]);
    assert_eq!(
        h.metrics
            .get(metrics::OFFSET_RESET, &[("reason", "expired")]),
        1.0
    );
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 10)]]);
}

#[tokio::test]
async fn invalid_messages_become_parked_error_rows_and_the_pillow_goes_on() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "good-1");
    feed.push("t", 0, Some("bad-json"), "{not json");
    feed.push(
        "t",
        0,
        None,
        r#"{"data_source_type": "sql", "data_source_name": "x"}"#,
    );
    feed.push("t", 0, Some("bad-type"), r#"{"document_id": "bad-type", "data_source_type": "sql", "data_source_name": "x", "attempts": "many"}"#);
    feed.push_change("t", 0, "good-2");
    let p = RecordingProcessor::new("p", true);
    let s = h
        .run(config(10), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(processed(&p), ["good-1", "good-2"]);
    assert_eq!(s.invalid, 3);
    let rows = h.errors.list("test-pillow").await.expect("rows");
    let mut ids: Vec<_> = rows.iter().map(|r| r.doc_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["bad-json", "bad-type", "t:0:2"]);
    assert!(rows.iter().all(|r| r.error_type.as_deref()
        == Some("pillowtop_rs.exceptions.InvalidChangeError")
        && r.date_next_attempt.is_none()));
    assert!(rows
        .iter()
        .find(|r| r.doc_id == "t:0:2")
        .and_then(|r| r.error_traceback.clone())
        .unwrap_or_default()
        .contains("document_id"));
    assert_eq!(
        h.writes(),
        [vec![("t,0".to_owned(), 5)]],
        "the checkpoint passes the recorded bad messages"
    );
}

#[tokio::test]
async fn failed_changes_are_recorded_once_per_pass_and_the_pillow_goes_on() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for id in ["a", "b", "c"] {
        feed.push_change("t", 0, id);
    }
    let bulk = RecordingProcessor::new("bulk", true);
    bulk.fail_ids.lock().expect("lock").insert("b".into());
    let serial = RecordingProcessor::new("serial", false);
    serial.fail_ids.lock().expect("lock").insert("b".into());
    let s = h
        .run(config(10), feed, &[bulk, serial])
        .await
        .expect("runs");
    assert_eq!(s.failed, 1);
    let rows = h.errors.list("test-pillow").await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].doc_id.as_str(),
            rows[0].current_attempt,
            rows[0].total_attempts
        ),
        ("b", 1, 1)
    );
    assert!(rows[0].date_next_attempt.is_some());
    assert_eq!(
        h.metrics.get(
            metrics::CHANGES_EXCEPTIONS,
            &[("exception_type", "tests.TestError")]
        ),
        1.0
    );
    assert_eq!(h.metrics.get(metrics::CHANGES_SUCCESS, &[]), 2.0);
    assert_eq!(h.writes(), [vec![("t,0".to_owned(), 3)]]);
}

#[tokio::test]
async fn retry_errors_off_records_only_missing_documents() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "x");
    let p = RecordingProcessor::new("p", false);
    p.fail_ids.lock().expect("lock").insert("x".into());
    let mut c = config(10);
    c.retry_errors = false;
    let s = h.run(c, feed, &[p]).await.expect("runs");
    assert_eq!(s.failed, 1);
    assert!(h.errors.list("test-pillow").await.expect("rows").is_empty());
}

#[tokio::test]
async fn a_failing_error_store_stops_the_pillow_without_checkpointing_the_chunk() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "ok-1");
    feed.push_tick();
    feed.push_change("t", 0, "boom");
    feed.push_change("t", 0, "ok-2");
    let p = RecordingProcessor::new("p", true);
    p.fail_ids.lock().expect("lock").insert("boom".into());
    h.errors.fail.store(true, Ordering::SeqCst);
    let err = h.run(config(10), feed, &[p]).await.expect_err("crash-only");
    assert!(
        err.to_string()
            .contains("failed to record the error of change boom for pillow test-pillow"),
        "{err}"
    );
    assert_eq!(
        h.writes(),
        [vec![("t,0".to_owned(), 1)]],
        "the failed chunk is never checkpointed"
    );
}

/// Rewinds the stored checkpoint to 3 while processing `d0`, as an operator would.
struct Rewinder {
    store: Arc<MemoryCheckpointStore>,
    inner: RecordingProcessor,
    /// A change that takes 100 ms (long enough for a background write to complete).
    slow: Option<&'static str>,
}

#[async_trait::async_trait]
impl Processor for Rewinder {
    fn name(&self) -> &str {
        "rewinder"
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> Result<Result<(), ProcessorFailure>> {
        if change.id == "d0" {
            self.store
                .set("test-pillow-checkpoint", TopicPartition::new("t", 0), 3);
        }
        if self.slow == Some(change.id.as_str()) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.inner.process_change(change).await
    }
}

/// Runs `changes` changes `d0…` through a [`Rewinder`] (which moves the stored row of `t,0` to 3
/// while it processes d0) from a stored offset of 0. Returns the ids processed and the stored
/// offset at the end.
async fn run_rewound(
    changes: usize,
    slow: Option<&'static str>,
    background: bool,
) -> (Vec<String>, i64) {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..changes {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    h.checkpoints
        .set("test-pillow-checkpoint", TopicPartition::new("t", 0), 0);
    let inner = RecordingProcessor::new("p", false);
    let processors: Vec<Box<dyn Processor>> = vec![Box::new(Rewinder {
        store: h.checkpoints.clone(),
        inner: inner.clone(),
        slow,
    })];
    let mut c = config(1);
    c.background_checkpoints = background;
    let mut pillow = Pillow::new(
        c,
        Box::new(feed),
        processors,
        h.checkpoints.clone(),
        h.errors.clone(),
    );
    pillow.run(&CancellationToken::new()).await.expect("runs");
    let stored = h
        .checkpoints
        .load("test-pillow-checkpoint")
        .await
        .expect("rows")[0]
        .offset;
    (processed(&inner), stored)
}

#[tokio::test]
async fn an_external_checkpoint_change_is_detected_and_reloaded() {
    let (seen, stored) = run_rewound(4, None, false).await;
    assert_eq!(
        seen,
        ["d0", "d3"],
        "the write after d0 saw the rewind, reloaded, and resumed at 3"
    );
    assert_eq!(stored, 4);
}

#[tokio::test]
async fn dedicated_migration_process_consumes_nothing_and_bootstraps() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 2);
    feed.push_change("t", 0, "x");
    let mut c = config(10);
    c.layout = Layout {
        num_processes: 3,
        process_num: 0,
        dedicated_migration_process: true,
    };
    c.until_idle = true;
    let p = RecordingProcessor::new("p", true);
    let s = h
        .run(c, feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(s.changes, 0);
    let r = p.recorded.lock().expect("lock");
    assert_eq!((r.processed.len(), r.bootstraps), (0, 1));
}

#[tokio::test]
async fn a_graceful_stop_flushes_and_checkpoints() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "a");
    feed.push_change("t", 0, "b");
    feed.tick_when_empty = true;
    let p = RecordingProcessor::new("p", true);
    let processors: Vec<Box<dyn Processor>> = vec![Box::new(p.clone())];
    let mut pillow = Pillow::new(
        config(10),
        Box::new(feed),
        processors,
        h.checkpoints.clone(),
        h.errors.clone(),
    );
    let token = CancellationToken::new();
    let t2 = token.clone();
    let handle = tokio::spawn(async move { pillow.run(&t2).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    token.cancel();
    let s = handle.await.expect("joins").expect("runs");
    assert_eq!(s.stop_reason, StopReason::Shutdown);
    assert_eq!(processed(&p), ["a", "b"]);
    assert_eq!(
        h.writes().last().cloned(),
        Some(vec![("t,0".to_owned(), 2)])
    );
}

/// A checkpoint store that takes `delay` per write and checks, as each write starts, that it
/// passes no change the processor has not finished, and that no other write is in flight.
struct SlowStore {
    inner: MemoryCheckpointStore,
    delay: std::time::Duration,
    processor: RecordingProcessor,
    in_flight: std::sync::atomic::AtomicUsize,
    violations: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl CheckpointStore for SlowStore {
    async fn load(&self, id: &str) -> Result<Vec<crate::store::checkpoints::CheckpointRow>> {
        self.inner.load(id).await
    }

    async fn write(
        &self,
        id: &str,
        updates: &[crate::store::checkpoints::CheckpointUpdate],
    ) -> Result<()> {
        let handled = i64::try_from(processed(&self.processor).len()).expect("a small count");
        let concurrent = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut v = self.violations.lock().expect("lock");
            if concurrent > 1 {
                v.push(format!("{concurrent} writes in flight"));
            }
            for u in updates {
                if u.offset > handled {
                    v.push(format!("wrote {} with {handled} handled", u.offset));
                }
            }
        }
        tokio::time::sleep(self.delay).await;
        let r = self.inner.write(id, updates).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    async fn create_rows(&self, id: &str, tps: &[TopicPartition], offset: i64) -> Result<u64> {
        self.inner.create_rows(id, tps, offset).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoints_coalesce_and_never_pass_a_handled_change() {
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..300 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    let p = RecordingProcessor::new("p", true);
    let store = Arc::new(SlowStore {
        inner: MemoryCheckpointStore::new(),
        delay: std::time::Duration::from_millis(20),
        processor: p.clone(),
        in_flight: 0.into(),
        violations: std::sync::Mutex::default(),
    });
    // Chunks of 1 and a checkpoint due after every change: in line, that is 300 writes of 20 ms.
    let c = config(1);
    assert!(c.background_checkpoints, "the default");
    let mut pillow = Pillow::new(
        c,
        Box::new(feed),
        vec![Box::new(p.clone())],
        store.clone(),
        Arc::new(MemoryErrorStore::default()),
    );
    let started = std::time::Instant::now();
    let summary = pillow.run(&CancellationToken::new()).await.expect("runs");
    assert_eq!(summary.changes, 300);
    assert_eq!(processed(&p).len(), 300);
    assert_eq!(
        store.violations.lock().expect("lock").as_slice(),
        [] as [String; 0]
    );
    let offsets: Vec<i64> = store.inner.writes().iter().map(|w| w[0].1).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets only move forward: {offsets:?}"
    );
    assert_eq!(
        offsets.last(),
        Some(&300),
        "the final checkpoint covers every change"
    );
    assert!(
        offsets.len() < 100,
        "due writes were coalesced while one was in flight ({} writes)",
        offsets.len()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the loop did not wait for each write ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_seen_by_a_background_write_reloads_the_stored_offset() {
    let (seen, stored) = run_rewound(6, Some("d1"), true).await;
    // d0 moved the stored row to 3 under the pillow; d1 is slow, so the background write
    // after d0 has failed by the time d1 is done: the pillow reloads and resumes at 3.
    assert_eq!(seen, ["d0", "d1", "d3", "d4", "d5"]);
    assert_eq!(stored, 6);
}

/// A feed client that stops delivering while the source has changes (the broker-restart
/// stall): the stall watch re-creates it at the pillow's positions and every change arrives,
/// once.
#[tokio::test]
async fn a_stuck_feed_is_reconnected_and_every_change_arrives_once() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 2);
    for i in 0..6 {
        feed.push_change("t", i % 2, &format!("d{i}"));
    }
    feed.stuck.store(1, Ordering::SeqCst);
    let reconnects = feed.reconnects.clone();
    let mut c = config(2);
    c.stall_timeout = Some(std::time::Duration::from_millis(20));
    c.max_changes = Some(6);
    let p = RecordingProcessor::new("p", true);
    let s = h
        .run(c, feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(s.changes, 6);
    assert_eq!(reconnects.load(Ordering::SeqCst), 1);
    let mut seen = processed(&p);
    seen.sort();
    assert_eq!(seen, ["d0", "d1", "d2", "d3", "d4", "d5"]);
    assert_eq!(
        h.metrics.get(
            metrics::FEED_STALLS,
            &[("pillow_name", "test-pillow"), ("outcome", "reconnected")]
        ),
        1.0
    );
}

/// A client that stays stuck after every re-creation fails the run with a message naming the
/// source and the backlog (the supervisor restarts the process); nothing is checkpointed past
/// what was handled.
#[tokio::test]
async fn a_feed_stuck_for_good_fails_the_run_naming_the_source() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..3 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    feed.stuck.store(u32::MAX, Ordering::SeqCst);
    let reconnects = feed.reconnects.clone();
    let mut c = config(2);
    c.stall_timeout = Some(std::time::Duration::from_millis(10));
    c.max_stall_reconnects = 2;
    let e = h
        .run(c, feed, &[RecordingProcessor::new("p", true)])
        .await
        .expect_err("gives up");
    assert_eq!(reconnects.load(Ordering::SeqCst), 2);
    let text = e.to_string();
    assert!(
        text.contains("is stuck") && text.contains("3 changes on t,0") && text.contains("2 times"),
        "{text}"
    );
    assert!(matches!(
        e,
        Error::Kafka(crate::error::KafkaError::Stalled { .. })
    ));
    assert!(h.writes().iter().flatten().all(|(_, o)| *o == 0));
}

/// With the watch off, a stuck feed is never probed nor reconnected.
#[tokio::test]
async fn the_stall_watch_can_be_turned_off() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "d0");
    feed.stuck.store(1, Ordering::SeqCst);
    let reconnects = feed.reconnects.clone();
    let mut c = config(2);
    c.stall_timeout = None;
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.cancel();
    });
    let mut pillow = Pillow::new(
        c,
        Box::new(feed),
        vec![Box::new(RecordingProcessor::new("p", true))],
        h.checkpoints.clone(),
        h.errors.clone(),
    );
    let s = pillow.run(&token).await.expect("runs");
    assert_eq!((s.changes, reconnects.load(Ordering::SeqCst)), (0, 0));
}

/// A liveness store that notes, at each call, how many checkpoints had been written.
struct CheckpointsAtEachCall {
    inner: MemoryLivenessStore,
    checkpoints: Arc<MemoryCheckpointStore>,
    writes: std::sync::Mutex<Vec<usize>>,
}

impl CheckpointsAtEachCall {
    fn note(&self) {
        self.writes
            .lock()
            .expect("lock")
            .push(self.checkpoints.writes().len());
    }
}

#[async_trait::async_trait]
impl LivenessStore for CheckpointsAtEachCall {
    async fn register(
        &self,
        pillow: &str,
        checkpoint_id: &str,
        layout: &Layout,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        self.note();
        self.inner
            .register(pillow, checkpoint_id, layout, partitions)
            .await
    }

    async fn heartbeat(
        &self,
        pillow: &str,
        process_num: u32,
        stats: &crate::store::liveness::ProcessorStats,
    ) -> Result<()> {
        self.note();
        self.inner.heartbeat(pillow, process_num, stats).await
    }

    async fn unregister(&self, pillow: &str, process_num: u32) -> Result<()> {
        self.note();
        self.inner.unregister(pillow, process_num).await
    }

    async fn list(&self, pillow: Option<&str>) -> Result<Vec<crate::store::liveness::ProcessRow>> {
        self.inner.list(pillow).await
    }
}

fn register(partitions: &[(&str, i32)]) -> LivenessCall {
    LivenessCall::Register {
        pillow: "test-pillow".into(),
        process_num: 0,
        partitions: partitions
            .iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect(),
    }
}

fn heartbeat() -> LivenessCall {
    LivenessCall::Heartbeat {
        pillow: "test-pillow".into(),
        process_num: 0,
    }
}

fn unregister() -> LivenessCall {
    LivenessCall::Unregister {
        pillow: "test-pillow".into(),
        process_num: 0,
    }
}

#[tokio::test]
async fn liveness_registers_at_start_beats_on_ticks_and_unregisters_at_the_end() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 2);
    feed.push_change("t", 0, "a");
    feed.push_tick();
    feed.push_change("t", 1, "b");
    feed.push_tick();
    let p = RecordingProcessor::new("p", true);
    h.run(config(10), feed, std::slice::from_ref(&p))
        .await
        .expect("runs");
    assert_eq!(
        h.liveness.calls(),
        [
            register(&[("t", 0), ("t", 1)]),
            heartbeat(),
            heartbeat(),
            unregister()
        ],
        "checkpoints within 5 s of the last heartbeat do not beat again; every tick does"
    );
    assert!(
        h.liveness.list(None).await.expect("list").is_empty(),
        "a clean stop removes the row"
    );
}

#[tokio::test]
async fn liveness_brackets_every_checkpoint_of_the_run() {
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let liveness = Arc::new(CheckpointsAtEachCall {
        inner: MemoryLivenessStore::new(),
        checkpoints: checkpoints.clone(),
        writes: std::sync::Mutex::default(),
    });
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "a");
    feed.push_tick();
    feed.push_change("t", 0, "b");
    let processors: Vec<Box<dyn Processor>> = vec![Box::new(RecordingProcessor::new("p", true))];
    let mut pillow = Pillow::new(
        config(10),
        Box::new(feed),
        processors,
        checkpoints.clone(),
        Arc::new(MemoryErrorStore::new()),
    )
    .with_liveness(liveness.clone());
    pillow.run(&CancellationToken::new()).await.expect("runs");
    assert_eq!(
        checkpoints.writes().len(),
        2,
        "the tick's and the final one"
    );
    assert_eq!(
        *liveness.writes.lock().expect("lock"),
        [0, 1, 2],
        "registered before the first checkpoint, a heartbeat after the tick's, unregistered after the final one"
    );
}

#[tokio::test]
async fn liveness_is_removed_when_the_pillow_stops_on_an_error() {
    let h = Harness::new();
    h.errors.fail.store(true, Ordering::SeqCst);
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "a");
    let p = RecordingProcessor::new("p", true);
    p.fail_ids.lock().expect("lock").insert("a".into());
    let e = h
        .run(config(1), feed, std::slice::from_ref(&p))
        .await
        .expect_err("the error store is down");
    assert!(matches!(e, Error::Process(_)), "{e}");
    assert_eq!(h.liveness.calls(), [register(&[("t", 0)]), unregister()]);
}

#[tokio::test]
async fn the_migration_process_registers_without_partitions() {
    let h = Harness::new();
    let mut c = config(10);
    c.layout = Layout {
        num_processes: 2,
        process_num: 0,
        dedicated_migration_process: true,
    };
    c.until_idle = true;
    h.run(c, MemoryFeed::new(&["t"], 2), &[])
        .await
        .expect("runs");
    assert_eq!(
        h.liveness.calls(),
        [register(&[]), heartbeat(), unregister()]
    );
}

#[tokio::test]
async fn a_running_pillow_records_one_history_snapshot_a_day() {
    use crate::store::history::memory::MemoryHistoryStore;
    use crate::store::history::HistoryStore;
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let history = Arc::new(MemoryHistoryStore::new(checkpoints.clone()));
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "a");
    feed.push_tick();
    feed.push_change("t", 0, "b");
    feed.push_tick();
    let processors: Vec<Box<dyn Processor>> = vec![Box::new(RecordingProcessor::new("p", true))];
    Pillow::new(
        config(1),
        Box::new(feed),
        processors,
        checkpoints.clone(),
        Arc::new(MemoryErrorStore::default()),
    )
    .with_history(history.clone())
    .run(&CancellationToken::new())
    .await
    .expect("runs");
    let today = chrono::Utc::now().date_naive();
    let entries = history.list(None).await.expect("list");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            entries[0].date,
            entries[0].checkpoint_id.as_str(),
            entries[0].offsets_total
        ),
        (today, "test-pillow-checkpoint", 1),
        "the first checkpoint of the day (offset 1, after change a) is the day's snapshot; \
         the later checkpoint (offset 2) does not replace it"
    );
}

// --- Sinks that hold changes across chunks (`Processor::settle`) ---

use crate::processor::memory::HoldingProcessor;

impl Harness {
    async fn run_boxed(
        &self,
        config: PillowConfig,
        feed: MemoryFeed,
        processors: Vec<Box<dyn Processor>>,
    ) -> Result<RunSummary> {
        let mut pillow = Pillow::new(
            config,
            Box::new(feed),
            processors,
            self.checkpoints.clone(),
            self.errors.clone(),
        )
        .with_metrics(self.metrics.clone());
        pillow.run(&CancellationToken::new()).await
    }
}

fn written(p: &HoldingProcessor) -> Vec<i64> {
    p.written
        .lock()
        .expect("lock")
        .iter()
        .map(|w| w.1)
        .collect()
}

fn in_line(chunk_size: usize) -> PillowConfig {
    let mut c = config(chunk_size);
    c.background_checkpoints = false;
    c
}

#[tokio::test]
async fn the_checkpoint_follows_what_a_holding_sink_has_written() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..6 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    let sink = HoldingProcessor::new("sink", 2);
    let other = RecordingProcessor::new("fast", true);
    let s = h
        .run_boxed(
            in_line(2),
            feed,
            vec![Box::new(other.clone()), Box::new(sink.clone())],
        )
        .await
        .expect("runs");
    // Chunk 1 (offsets 0-1) is held; chunk 2 makes the sink write both: checkpoint 4. Chunk 3
    // is held until the feed ends, when the final flush writes it: checkpoint 6. A checkpoint
    // after chunk 1 or chunk 3 alone would have passed changes the sink had not written.
    assert_eq!(
        h.writes(),
        [vec![("t,0".to_owned(), 4)], vec![("t,0".to_owned(), 6)]]
    );
    assert_eq!(written(&sink), [0, 1, 2, 3, 4, 5]);
    assert_eq!(processed(&other).len(), 6);
    assert_eq!((s.changes, s.failed), (6, 0));
}

#[tokio::test]
async fn held_changes_that_fail_to_write_become_error_rows() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..4 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    let sink = HoldingProcessor::new("sink", 3);
    sink.fail_ids.lock().expect("lock").insert("d1".into());
    let s = h
        .run_boxed(in_line(1), feed, vec![Box::new(sink.clone())])
        .await
        .expect("runs");
    let rows = h.errors.list("test-pillow").await.expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].doc_id, "d1");
    assert_eq!(rows[0].error_type.as_deref(), Some("tests.WriteError"));
    assert!(rows[0]
        .error_traceback
        .as_deref()
        .is_some_and(|t| t.contains("sink could not write d1")));
    assert_eq!(s.failed, 1);
    assert_eq!(written(&sink), [0, 2, 3]);
    assert_eq!(
        h.writes().last().cloned(),
        Some(vec![("t,0".to_owned(), 4)]),
        "the failed change is handled (its error row recorded): the checkpoint passes it"
    );
}

#[tokio::test]
async fn an_idle_tick_makes_sinks_write_what_they_hold() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..3 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    feed.push_tick();
    feed.push_change("t", 0, "late");
    let sink = HoldingProcessor::new("sink", 100);
    let mut c = in_line(1);
    c.until_idle = true;
    let s = h
        .run_boxed(c, feed, vec![Box::new(sink.clone())])
        .await
        .expect("runs");
    assert_eq!(s.stop_reason, StopReason::Idle);
    assert_eq!(written(&sink), [0, 1, 2]);
    assert_eq!(
        h.writes().last().cloned(),
        Some(vec![("t,0".to_owned(), 3)])
    );
}

#[tokio::test]
async fn a_fatal_error_never_checkpoints_what_a_sink_still_holds() {
    let h = Harness::new();
    let mut feed = MemoryFeed::new(&["t"], 1);
    for i in 0..5 {
        feed.push_change("t", 0, &format!("d{i}"));
    }
    feed.push_change("t", 0, "boom");
    let sink = HoldingProcessor::new("sink", 2);
    let failing = RecordingProcessor::new("p", true);
    failing.fail_ids.lock().expect("lock").insert("boom".into());
    // The error store refuses: recording boom's failure is fatal (crash-only).
    h.errors.fail.store(true, Ordering::SeqCst);
    let err = h
        .run_boxed(
            in_line(1),
            feed,
            vec![Box::new(failing), Box::new(sink.clone())],
        )
        .await
        .expect_err("crash-only");
    assert!(err.to_string().contains("boom"), "{err}");
    // d0..d3 were written (two writes of two chunks); d4 was held when boom stopped the pillow.
    assert_eq!(written(&sink), [0, 1, 2, 3]);
    let last = h.writes().last().cloned();
    assert_eq!(
        last,
        Some(vec![("t,0".to_owned(), 4)]),
        "never past the held d4"
    );
}
