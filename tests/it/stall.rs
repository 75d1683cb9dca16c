//! The stall watch against a real broker: the probe's three answers, a stuck client re-created
//! by a running pillow, and a pillow that goes on across broker restarts (its own broker, so
//! the shared one stays up for the other tests).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pillowtop::change::Change;
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::KafkaAdmin;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::{ChangeFeed, StallProbe};
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::{ChunkOutcome, Processor, ProcessorFailure};
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};

async fn publish(bootstrap: &str, topic: &str, ids: std::ops::Range<u32>) {
    ChangeProducer::new(bootstrap)
        .expect("producer")
        .send_changes(
            topic,
            ids.map(|i| ChangeMeta::new(format!("doc-{i}"), "sql", "form-sql")),
        )
        .await
        .expect("publish");
}

fn feed(bootstrap: &str, topic: &str, name: &str) -> KafkaFeed {
    let mut opts = KafkaFeedOptions::new(bootstrap, name);
    opts.idle_timeout = Duration::from_millis(300);
    KafkaFeed::new(&[topic.to_owned()], opts).expect("feed")
}

/// How often each id was processed.
fn counts(p: &RecordingProcessor) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in &p.recorded.lock().expect("lock").processed {
        *m.entry(r.0.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_tells_a_backlog_from_an_idle_feed_and_an_unreachable_broker() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "probe", 2).await;
    publish(&bootstrap, &topic.name, 0..20).await;
    let mut f = feed(&bootstrap, &topic.name, "it-probe");
    let parts = f.partitions().await.expect("partitions");
    let marks = f.watermarks(&parts).await.expect("watermarks");
    let at_high: Vec<_> = marks.iter().map(|(tp, _, hi)| (tp.clone(), *hi)).collect();
    assert_eq!(f.probe(&at_high).await.expect("probe"), StallProbe::Idle);
    let at_zero: Vec<_> = parts.iter().map(|tp| (tp.clone(), 0)).collect();
    match f.probe(&at_zero).await.expect("probe") {
        StallProbe::Stuck { behind, partitions } => {
            assert_eq!(behind, 20);
            assert_eq!(partitions.len(), 2);
        }
        other => panic!("a readable backlog is reported: {other:?}"),
    }
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let mut away = feed(&addr, &topic.name, "it-probe-away");
    let started = Instant::now();
    assert!(matches!(
        away.probe(&at_zero).await.expect("probe"),
        StallProbe::Unreachable(_)
    ));
    assert!(started.elapsed() < Duration::from_secs(15), "bounded");
}

/// A client that delivers nothing while the broker has messages (paused partitions stand in
/// for librdkafka's "no usable brokers" state) is re-created by the running pillow; every
/// change arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_pillow_recreates_a_stuck_consumer_and_loses_nothing() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "stuck", 2).await;
    let id = db.id("stuck");
    publish(&bootstrap, &topic.name, 0..300).await;
    let mut f = feed(&bootstrap, &topic.name, "it-stuck");
    f.pause_on_next_assign();
    let mut c = PillowConfig::new(&id, &id);
    c.chunk_size = 50;
    c.max_changes = Some(300);
    c.stall_timeout = Some(Duration::from_secs(1));
    let p = RecordingProcessor::new("p", true);
    let started = Instant::now();
    let s = tokio::time::timeout(
        Duration::from_secs(60),
        Pillow::new(
            c,
            Box::new(f),
            vec![Box::new(p.clone())],
            Arc::new(PostgresCheckpointStore::new(db.pg.clone())),
            Arc::new(PostgresErrorStore::new(db.pg.clone())),
        )
        .run(&CancellationToken::new()),
    )
    .await
    .expect("the stall watch un-sticks the pillow")
    .expect("runs");
    assert_eq!(s.changes, 300);
    let seen = counts(&p);
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|n| *n == 1), "exactly once");
    eprintln!(
        "stuck consumer re-created; 300 changes in {:?}",
        started.elapsed()
    );
}

/// A broker of this test's own (tests/services/kafka.sh with its own ports and folder), stopped
/// and its folder removed on drop.
struct OwnBroker {
    home: std::path::PathBuf,
    kafka_port: u16,
    controller_port: u16,
}

impl OwnBroker {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    fn start() -> Self {
        let home = std::env::temp_dir().join(pillowtop::testing::unique_name("own_broker"));
        let b = Self {
            home,
            kafka_port: Self::free_port(),
            controller_port: Self::free_port(),
        };
        b.script("start");
        b
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn script(&self, cmd: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/kafka.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(cmd)
            .env("PILLOWTOP_SERVICES_HOME", &self.home)
            .env("PILLOWTOP_KAFKA_PORT", self.kafka_port.to_string())
            .env(
                "PILLOWTOP_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .output()
            .expect("kafka.sh");
        assert!(
            out.status.success(),
            "kafka.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.script("stop")));
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A processor that takes its time (so a broker restart falls in the middle of a backlog).
struct Slow {
    inner: RecordingProcessor,
    per_chunk: Duration,
}

#[async_trait]
impl Processor for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn supports_batch_processing(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        self.inner.process_change(change).await
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        tokio::time::sleep(self.per_chunk).await;
        self.inner.process_changes_chunk(changes).await
    }
}

/// The scenario, several times over: a pillow consuming a backlog while its broker is
/// stopped with SIGTERM and started again over the same data. After every restart it goes on;
/// at the end every change has been processed (none lost; none twice: nothing was killed).
/// `PILLOWTOP_BROKER_RESTARTS` sets the count (3 in CI; the long run uses more).
#[tokio::test(flavor = "multi_thread")]
async fn a_pillow_goes_on_across_repeated_broker_restarts() {
    let _ = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let restarts: u32 = std::env::var("PILLOWTOP_BROKER_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let broker = OwnBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = pillowtop::testing::unique_name("restarts");
    KafkaAdmin::new(&bootstrap)
        .expect("admin")
        .create_topic(&topic, 8, &[])
        .await
        .expect("topic");
    let per_round = 4_000_u32;
    publish(&bootstrap, &topic, 0..per_round).await;

    let id = db.id("restarts");
    let mut opts = KafkaFeedOptions::new(&bootstrap, "it-restarts");
    opts.idle_timeout = Duration::from_millis(500);
    opts.prefetch_kbytes = 64; // a backlog stays on the broker, not in the client
    let f = KafkaFeed::new(std::slice::from_ref(&topic), opts).expect("feed");
    let mut c = PillowConfig::new(&id, &id);
    c.chunk_size = 10;
    c.stall_timeout = Some(Duration::from_secs(5));
    let p = RecordingProcessor::new("p", true);
    let mut pillow = Pillow::new(
        c,
        Box::new(f),
        vec![Box::new(Slow {
            inner: p.clone(),
            per_chunk: Duration::from_millis(5),
        })],
        Arc::new(PostgresCheckpointStore::new(db.pg.clone())),
        Arc::new(PostgresErrorStore::new(db.pg.clone())),
    );
    let token = CancellationToken::new();
    let stop = token.clone();
    let running = tokio::spawn(async move { pillow.run(&stop).await });
    let processed = || p.recorded.lock().expect("lock").processed.len();
    let mut total = per_round;
    for round in 0..restarts {
        // Let it get into the backlog, then restart the broker under it.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = processed();
        broker.script("pause");
        tokio::time::sleep(Duration::from_secs(3)).await;
        broker.script("resume");
        eprintln!(
            "restart {}: {before} changes processed when the broker stopped",
            round + 1
        );
        publish(&bootstrap, &topic, total..total + per_round).await;
        total += per_round;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while processed() < total as usize {
        assert!(
            Instant::now() < deadline,
            "stalled: {} of {total} changes processed 120 s after the last restart",
            processed()
        );
        assert!(
            !running.is_finished(),
            "the pillow stopped: {:?}",
            running.await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    token.cancel();
    let summary = running.await.expect("task").expect("a clean stop");
    let seen = counts(&p);
    let lost = (0..total)
        .filter(|i| !seen.contains_key(&format!("doc-{i}")))
        .count();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{restarts} broker restarts, {total} changes: {lost} lost, {duplicates} duplicated, {} handled",
        summary.changes
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0, "nothing was killed: nothing runs twice");
}
