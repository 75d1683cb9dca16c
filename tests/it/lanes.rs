//! Independent processors against the real services (issue 14, item 1): a slow processor never
//! holds a fast one back; the pillow's rows stay the minimum of its processors'.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pillowtop::assembly::{PillowSpec, ProcessorSpec};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::{ChangeFeed, TopicPartition};
use pillowtop::ops::freshness::{self, Position};
use pillowtop::pillow::{PillowConfig, ProcessorCheckpoints};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::{ChunkOutcome, Processor, ProcessorFailure};
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::checkpoints::{processor_checkpoint_id, CheckpointStore};
use tokio_util::sync::CancellationToken;

use crate::support::{require, ChildTest, TestDb, TestTopic};

/// Takes 20 ms per chunk of 10 (a fast processor takes well under 1 ms).
pub(crate) struct Slow {
    pub(crate) seen: Arc<AtomicUsize>,
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
        _c: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(Ok(()))
    }
    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.seen.fetch_add(changes.len(), Ordering::SeqCst);
        Ok(Ok(ChunkOutcome::default()))
    }
}

pub(crate) async fn rows(
    store: &PostgresCheckpointStore,
    id: &str,
) -> BTreeMap<TopicPartition, i64> {
    store
        .load(id)
        .await
        .expect("load")
        .into_iter()
        .map(|r| (r.tp, r.offset))
        .collect()
}

/// The high-water mark of each partition of `topic`.
pub(crate) async fn high_water_marks(
    bootstrap: &str,
    topic: &str,
) -> BTreeMap<TopicPartition, i64> {
    let mut f = KafkaFeed::new(
        &[topic.to_owned()],
        KafkaFeedOptions::new(bootstrap, "lanes-hwm"),
    )
    .expect("feed");
    let parts = f.partitions().await.expect("partitions");
    f.watermarks(&parts)
        .await
        .expect("watermarks")
        .into_iter()
        .map(|(tp, _, hi)| (tp, hi))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_processor_falls_behind_alone_and_the_pillow_checkpoint_is_the_minimum() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "lanes", 2).await;
    let id = db.id("lanes");
    let total = 1500;
    ChangeProducer::new(&bootstrap)
        .expect("producer")
        .send_changes(
            &topic.name,
            (0..total).map(|i| ChangeMeta::new(format!("d{i}"), "sql", "form-sql")),
        )
        .await
        .expect("publish");
    let hwm = high_water_marks(&bootstrap, &topic.name).await;

    let fast = RecordingProcessor::new("fast", true);
    let seen = Arc::new(AtomicUsize::new(0));
    let mut config = PillowConfig::new(&id, &id);
    config.chunk_size = 10;
    config.checkpoint_frequency = 10;
    config.until_idle = true;
    config.processor_checkpoints = ProcessorCheckpoints::Independent;
    // One read of Kafka for both; the slow one detaches once it is 200 changes behind.
    config.lane_max_lead_changes = 200;
    // Heartbeats (which carry each lane's read state to `lag`) several times a second.
    config.heartbeat_interval = Duration::from_millis(100);
    let mut feed = KafkaFeedOptions::new(&bootstrap, &id);
    feed.idle_timeout = Duration::from_millis(500);
    let spec = PillowSpec {
        config,
        topics: vec![topic.name.clone()],
        feed,
        postgres_url: db.url.clone(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![
            ProcessorSpec::Ready(Box::new(fast.clone())),
            ProcessorSpec::Ready(Box::new(Slow { seen: seen.clone() })),
        ],
        document_stores: Vec::new(),
    };
    let run = tokio::spawn(async move {
        let stop = CancellationToken::new();
        let mut pillow = spec.build_independent(&stop, &mut |p| p).await?;
        pillow.run(&stop).await
    });

    let store = PostgresCheckpointStore::new(db.pg.clone());
    let fast_id = processor_checkpoint_id(&id, "fast");
    let slow_id = processor_checkpoint_id(&id, "slow");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The fast processor reaches the end of the topic on its own (1,500 changes at 20 ms per
    // chunk of 10 take the slow one about 3 s).
    while rows(&store, &fast_id).await != hwm {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast processor never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow_seen = seen.load(Ordering::SeqCst);
    // `lag` shows the read state of each processor from the live process's heartbeat: the fast
    // one reads the shared ring, the slow one (far more than 200 behind) its own consumer.
    let kafka = pillowtop::ops::kafka::KafkaInfo::new(&bootstrap).expect("kafka");
    let read_of = |lag: &[pillowtop::ops::lag::LagRow], p: &str| -> Vec<Option<&'static str>> {
        lag.iter()
            .filter(|r| r.processor.as_deref() == Some(p))
            .map(|r| r.read)
            .collect()
    };
    loop {
        let lag = pillowtop::ops::lag::collect(&db.pg, &kafka, Some(std::slice::from_ref(&id)))
            .await
            .expect("lag");
        let slow_read = read_of(&lag, "slow");
        if !slow_read.is_empty() && slow_read.iter().all(|r| *r == Some("detached")) {
            assert!(
                read_of(&lag, "fast").iter().all(|r| *r == Some("shared")),
                "{lag:#?}"
            );
            assert!(lag.iter().all(|r| !r.stalled), "{lag:#?}");
            break;
        }
        assert!(
            seen.load(Ordering::SeqCst) < total,
            "the slow processor finished before lag showed it detached: {lag:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The freshness API answers per processor: the last change is in the fast one, not yet in
    // the slow one nor (so) in the pillow.
    let (last_tp, last_hwm) = hwm
        .iter()
        .next()
        .map(|(tp, o)| (tp.clone(), *o))
        .expect("a partition");
    let last = |processor: Option<&str>| Position {
        checkpoint_id: id.clone(),
        tp: last_tp.clone(),
        offset: last_hwm - 1,
        processor: processor.map(str::to_owned),
    };
    assert!(freshness::processed(&db.pg, &last(Some("fast")))
        .await
        .expect("processed"));
    assert!(!freshness::processed(&db.pg, &last(Some("slow")))
        .await
        .expect("processed"));
    assert!(!freshness::processed(&db.pg, &last(None))
        .await
        .expect("processed"));
    // `pillowtop lag ID` shows each processor's own lag beside the pillow's: the fast one is
    // caught up, the slow one is behind, and the pillow (their minimum) at least as far.
    let lag = pillowtop::ops::lag::collect(&db.pg, &kafka, Some(std::slice::from_ref(&id)))
        .await
        .expect("lag");
    let lag_of = |p: Option<&str>| -> i64 {
        lag.iter()
            .filter(|r| r.processor.as_deref() == p)
            .map(|r| r.lag.expect("a partition Kafka has"))
            .sum()
    };
    assert!(
        lag.iter().all(|r| r.pillow_name == lag[0].pillow_name),
        "one pillow: {lag:#?}"
    );
    let rows_of = |p: Option<&str>| -> BTreeMap<i32, i64> {
        lag.iter()
            .filter(|r| r.processor.as_deref() == p)
            .map(|r| (r.partition, r.offset))
            .collect()
    };
    assert_eq!(lag_of(Some("fast")), 0, "{lag:#?}");
    assert_eq!(rows_of(Some("fast")).len(), hwm.len(), "{lag:#?}");
    // The slow one is behind: some lag on the partitions it has rows for, or partitions it has
    // not reached yet (no row: neither has the pillow).
    assert!(
        lag_of(Some("slow")) > 0 || rows_of(Some("slow")).len() < hwm.len(),
        "{lag:#?}"
    );
    let slow_rows = rows_of(Some("slow"));
    for (partition, offset) in rows_of(None) {
        let slow = slow_rows.get(&partition).copied();
        assert!(
            slow.is_some_and(|s| offset <= s),
            "partition {partition}: the pillow's row {offset} passes the slow processor's {slow:?}"
        );
    }
    // The doctor names the slow processor (its own backlog is the largest) while it catches up.
    let (first, second, dt) =
        pillowtop::ops::doctor::sample_twice(&db.pg, &kafka, &id, Duration::from_millis(300))
            .await
            .expect("doctor's samples");
    let options = pillowtop::ops::doctor::Options {
        max_time_lag: Duration::ZERO,
        ..Default::default()
    };
    let diag = pillowtop::ops::doctor::diagnose(&id, &first, &second, dt, options, None);
    let seen_rows =
        |s: &pillowtop::ops::doctor::Sample| -> Vec<(Option<String>, i32, i64, Option<i64>)> {
            s.rows
                .iter()
                .map(|r| (r.processor.clone(), r.partition, r.offset, r.high))
                .collect()
        };
    let ctx = format!(
        "{diag:#?}\nfirst {:?}\nsecond {:?}",
        seen_rows(&first),
        seen_rows(&second)
    );
    assert_eq!(diag.mode, "independent", "{ctx}");
    assert!(diag.verdict.is_finding(), "{ctx}");
    assert_eq!(diag.holder.as_deref(), Some("slow"), "{ctx}");
    let split = diag.split.as_ref().expect("split advice");
    assert!(
        split
            .commands
            .iter()
            .any(|c| *c == format!("pillowtop split {id} {id}-slow")),
        "{split:#?}"
    );
    assert!(
        slow_seen < total / 2,
        "the slow processor had seen {slow_seen} of {total} when the fast one was done: it was not held back alone"
    );
    // The pillow's own rows never pass the slow processor's.
    let (pillow, slow) = (rows(&store, &id).await, rows(&store, &slow_id).await);
    for (tp, o) in &pillow {
        assert!(
            slow.get(tp).is_some_and(|s| o <= s),
            "pillow {tp} at {o} passed the slow processor's {slow:?}"
        );
    }
    // The slow processor gets there: waiting for it returns once it has.
    assert!(freshness::wait_processed(
        &db.pg,
        &last(Some("slow")),
        Duration::from_secs(60),
        Duration::from_millis(50)
    )
    .await
    .expect("waits"));
    let lanes = run.await.expect("joins").expect("runs");
    // The slow processor detached from the shared read (more than 200 behind), read on its
    // own, and rejoined once caught up; the fast one read the shared feed throughout.
    let stats = &lanes.shared_read;
    assert_eq!(stats.len(), 2, "{stats:?}");
    let (f, sl) = (&stats[0], &stats[1]);
    assert_eq!((f.name.as_str(), sl.name.as_str()), ("fast", "slow"));
    assert!(sl.detaches >= 1 && sl.rejoins >= 1, "{stats:?}");
    assert!(sl.from_own > 0, "{stats:?}");
    assert!(f.from_ring > f.from_own, "{stats:?}");
    assert_eq!(f.from_ring + f.from_own, total as u64, "{stats:?}");
    let summary = lanes.combined();
    assert!(freshness::processed(&db.pg, &last(None))
        .await
        .expect("processed"));
    // A change not yet published: the wait ends with false when the time is up.
    let mut beyond = last(None);
    beyond.offset = last_hwm;
    let started = std::time::Instant::now();
    assert!(!freshness::wait_processed(
        &db.pg,
        &beyond,
        Duration::from_millis(300),
        Duration::from_millis(50)
    )
    .await
    .expect("waits"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(summary.changes, total as u64);
    assert_eq!(seen.load(Ordering::SeqCst), total);
    assert_eq!(fast.recorded.lock().expect("lock").processed.len(), total);
    for cp in [&id, &fast_id, &slow_id] {
        assert_eq!(rows(&store, cp).await, hwm, "{cp}");
    }
}

/// Records the ids it handles, 5 ms per chunk.
struct SlowRecorder {
    ids: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl Processor for SlowRecorder {
    fn name(&self) -> &str {
        "slow"
    }
    fn supports_batch_processing(&self) -> bool {
        true
    }
    async fn process_change(
        &mut self,
        c: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        self.ids.lock().expect("ids").push(c.id.clone());
        Ok(Ok(()))
    }
    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.ids
            .lock()
            .expect("ids")
            .extend(changes.iter().map(|c| c.id.clone()));
        Ok(Ok(ChunkOutcome::default()))
    }
}

fn spec(
    db: &TestDb,
    bootstrap: &str,
    topic: &str,
    id: &str,
    processors: Vec<ProcessorSpec>,
    until_idle: bool,
) -> PillowSpec {
    let mut config = PillowConfig::new(id, id);
    config.chunk_size = 10;
    config.checkpoint_frequency = 10;
    config.until_idle = until_idle;
    config.processor_checkpoints = ProcessorCheckpoints::Independent;
    let mut feed = KafkaFeedOptions::new(bootstrap, id);
    feed.idle_timeout = Duration::from_millis(500);
    PillowSpec {
        config,
        topics: vec![topic.to_owned()],
        feed,
        postgres_url: db.url.clone(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors,
        document_stores: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn online_split_hands_a_processor_over_while_producing_with_nothing_lost_or_repeated() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "handover", 2).await;
    let id = db.id("handover");
    let target = db.id("handover-target");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let (batches, per_batch) = (40, 50);
    let publishing = {
        let (producer, topic) = (producer.clone(), topic.name.clone());
        tokio::spawn(async move {
            for b in 0..batches {
                producer
                    .send_changes(
                        &topic,
                        (0..per_batch)
                            .map(|i| ChangeMeta::new(format!("d{b}-{i}"), "sql", "form-sql")),
                    )
                    .await
                    .expect("publish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let fast = RecordingProcessor::new("fast", true);
    let source_slow = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let source = spec(
        &db,
        &bootstrap,
        &topic.name,
        &id,
        vec![
            ProcessorSpec::Ready(Box::new(fast.clone())),
            ProcessorSpec::Ready(Box::new(SlowRecorder {
                ids: source_slow.clone(),
            })),
        ],
        false,
    );
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { source.run(&stop, |p| p).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while source_slow.lock().expect("ids").len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow processor never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Split it out while the source runs and the producer publishes.
    let plan = pillowtop::ops::handover::prepare(&db.pg, &id, "slow", &target, true, false)
        .await
        .expect("plan");
    assert_eq!(plan.live_processes, 1, "{plan:#?}");
    // Without --online a running source is refused, naming it.
    let refused = pillowtop::ops::handover::prepare(&db.pg, &id, "slow", &target, false, false)
        .await
        .expect_err("a running source needs --online");
    assert!(refused.to_string().contains(&id), "{refused}");
    let done = pillowtop::ops::handover::apply(
        &db.pg,
        &plan,
        Duration::from_secs(30),
        &CancellationToken::new(),
        |_, _| {},
    )
    .await
    .expect("handed over");
    assert_eq!(done.target, target);
    let handed_at = source_slow.lock().expect("ids").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        source_slow.lock().expect("ids").len(),
        handed_at,
        "the source went on running the processor after handing it over"
    );
    // The target's rows are the handed-over positions; the processor's own rows are gone.
    let store = PostgresCheckpointStore::new(db.pg.clone());
    let target_rows = rows(&store, &target).await;
    assert_eq!(target_rows, done.done, "{done:#?}");
    assert!(rows(&store, &processor_checkpoint_id(&id, "slow"))
        .await
        .is_empty());

    // The source's other processor never stopped: it reaches the end of the topic.
    publishing.await.expect("publisher");
    let total = batches * per_batch;
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    assert_eq!(hwm.values().sum::<i64>(), i64::from(total));
    let fast_id = processor_checkpoint_id(&id, "fast");
    while rows(&store, &fast_id).await != hwm {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast processor stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pillow's rows follow the remaining processor once the slow one is gone.
    while rows(&store, &id).await != hwm {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pillow's rows stay behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.await.expect("joins").expect("the source ran");

    // The target runs the processor from the handed-over position.
    let target_slow = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut target_spec = spec(
        &db,
        &bootstrap,
        &topic.name,
        &target,
        vec![ProcessorSpec::Ready(Box::new(SlowRecorder {
            ids: target_slow.clone(),
        }))],
        true,
    );
    target_spec.config.processor_checkpoints = ProcessorCheckpoints::Shared;
    target_spec
        .run(&CancellationToken::new(), |p| p)
        .await
        .expect("the target ran");
    let before: Vec<String> = source_slow.lock().expect("ids").clone();
    let after: Vec<String> = target_slow.lock().expect("ids").clone();
    let mut all: Vec<String> = before.iter().chain(&after).cloned().collect();
    all.sort();
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        usize::try_from(total).expect("size"),
        "every change reached the processor"
    );
    assert_eq!(
        all.len(),
        unique.len(),
        "{} changes were handled twice across the hand-over",
        all.len() - unique.len()
    );

    // Restarted with the processor still in its definition, the source skips it.
    let skipped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let again = spec(
        &db,
        &bootstrap,
        &topic.name,
        &id,
        vec![
            ProcessorSpec::Ready(Box::new(RecordingProcessor::new("fast", true))),
            ProcessorSpec::Ready(Box::new(SlowRecorder {
                ids: skipped.clone(),
            })),
        ],
        true,
    );
    again
        .run(&CancellationToken::new(), |p| p)
        .await
        .expect("the source restarts");
    assert!(skipped.lock().expect("ids").is_empty());
    assert!(rows(&store, &processor_checkpoint_id(&id, "slow"))
        .await
        .is_empty());
}

/// Appends every change it handles as `(processor, partition, offset)` to a PostgreSQL table, one
/// insert per chunk: a record that survives SIGKILL of the pillow's process.
pub(crate) struct Logger {
    pub(crate) name: &'static str,
    pub(crate) pg: Arc<pillowtop::pg::Pg>,
    pub(crate) table: String,
    pub(crate) per_chunk: Duration,
}

#[async_trait]
impl Processor for Logger {
    fn name(&self) -> &str {
        self.name
    }
    fn supports_batch_processing(&self) -> bool {
        true
    }
    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        let mut one = [change.clone()];
        self.process_changes_chunk(&mut one)
            .await
            .map(|r| r.map(|_| ()))
    }
    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        tokio::time::sleep(self.per_chunk).await;
        let parts: Vec<i32> = changes.iter().map(|c| c.partition).collect();
        let offsets: Vec<i64> = changes.iter().map(|c| c.offset).collect();
        let sql = format!(
            "INSERT INTO {} (processor, p, o) SELECT $1, * FROM unnest($2::int[], $3::bigint[])",
            self.table
        );
        let name = self.name;
        self.pg
            .run("logging changes", |c| {
                let (sql, parts, offsets) = (sql.clone(), &parts, &offsets);
                async move {
                    c.execute(&sql, &[&name, parts, offsets])
                        .await
                        .map_err(pillowtop::pg::err("logging changes"))
                }
            })
            .await?;
        Ok(Ok(ChunkOutcome::default()))
    }
}

pub(crate) const LANES_CHILD_ENV: &str = "PILLOWTOP_IT_LANES_CHILD";
/// The child's chunk size and checkpoint frequency: a kill redoes at most their sum per processor.
pub(crate) const KILL_CHUNK: usize = 50;
pub(crate) const KILL_CHECKPOINT_EVERY: u64 = 200;

/// Not a test on its own: the child process of the lanes SIGKILL test runs this.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run as a child process by independent_processors_lose_nothing_under_sigkill"]
async fn lanes_sigkill_child() {
    let Ok(spec_text) = std::env::var(LANES_CHILD_ENV) else {
        return;
    };
    let v: Vec<&str> = spec_text.split('|').collect();
    let (bootstrap, url, topic, id, table) = (v[0], v[1], v[2], v[3], v[4]);
    // An optional sixth field "shared": one checkpoint for both (CommCare's model).
    let mode = if v.get(5) == Some(&"shared") {
        ProcessorCheckpoints::Shared
    } else {
        ProcessorCheckpoints::Independent
    };
    let pg = Arc::new(pillowtop::pg::Pg::new(url));
    let mut config = PillowConfig::new(id, id);
    config.chunk_size = KILL_CHUNK;
    config.checkpoint_frequency = KILL_CHECKPOINT_EVERY;
    config.until_idle = true;
    config.processor_checkpoints = mode;
    let mut feed = KafkaFeedOptions::new(bootstrap, id);
    feed.idle_timeout = Duration::from_millis(500);
    let logger = |name, per_chunk| {
        ProcessorSpec::Ready(Box::new(Logger {
            name,
            pg: pg.clone(),
            table: table.to_owned(),
            per_chunk,
        }))
    };
    pillowtop::telemetry::init();
    let s = PillowSpec {
        config,
        topics: vec![topic.to_owned()],
        feed,
        postgres_url: url.to_owned(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![
            logger("fast", Duration::ZERO),
            // About 8× slower than the fast one's insert alone.
            logger("slow", Duration::from_millis(8)),
        ],
        document_stores: Vec::new(),
    }
    .run(&CancellationToken::new(), |p| p)
    .await
    .expect("child run");
    eprintln!("child finished: {s:?}");
}

/// SIGKILL at random moments of a pillow with a fast and a slow independent processor: each
/// processor handles every change, redoes at most one checkpoint window plus a chunk per kill,
/// and the pillow's rows never pass either processor's.
#[tokio::test(flavor = "multi_thread")]
async fn independent_processors_lose_nothing_under_sigkill() {
    use rand::Rng;
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "lanes_kill", 2).await;
    let id = db.id("lanes_kill");
    let table = db.id("lanes_kill_log");
    db.pg
        .fresh_client()
        .await
        .expect("client")
        .batch_execute(&format!(
            "CREATE TABLE {table} (processor text, p int, o bigint)"
        ))
        .await
        .expect("log table");
    let total: i64 = 30_000;
    ChangeProducer::new(&bootstrap)
        .expect("producer")
        .send_changes(
            &topic.name,
            (0..total).map(|i| ChangeMeta::new(format!("d{i}"), "sql", "form-sql")),
        )
        .await
        .expect("publish");
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    assert_eq!(hwm.values().sum::<i64>(), total);

    let child_spec = [
        bootstrap.as_str(),
        db.url.as_str(),
        topic.name.as_str(),
        id.as_str(),
        table.as_str(),
    ]
    .join("|");
    let runs = ChildTest::new(
        "lanes::lanes_sigkill_child",
        LANES_CHILD_ENV,
        child_spec,
        &id,
    );
    let store = PostgresCheckpointStore::new(db.pg.clone());
    let lane_ids = [
        processor_checkpoint_id(&id, "fast"),
        processor_checkpoint_id(&id, "slow"),
    ];
    let mut kills = 0;
    let mut rng = rand::rng();
    while rows(&store, &id).await != hwm {
        let mut child = runs.spawn();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        // Whatever moment the kill hit, the pillow's rows are at or below each processor's.
        let pillow = rows(&store, &id).await;
        for lane in &lane_ids {
            let own = rows(&store, lane).await;
            for (tp, offset) in &pillow {
                if let Some(o) = own.get(tp) {
                    assert!(
                        offset <= o,
                        "after kill {kills}: the pillow's row {tp} = {offset} passed {lane}'s {o}"
                    );
                }
            }
        }
        assert!(
            kills < 100,
            "the pillow never caught up; child log:\n{}",
            runs.log_tail()
        );
    }
    let status = runs.spawn().wait().expect("final run");
    assert!(
        status.success(),
        "final run failed; child log:\n{}",
        runs.log_tail()
    );
    let _ = std::fs::remove_file(&runs.log);
    assert!(
        kills >= 1,
        "the test must kill at least once to mean anything"
    );

    let c = db.pg.fresh_client().await.expect("client");
    let logged = c
        .query(
            &format!("SELECT processor, p, o, count(*) FROM {table} GROUP BY processor, p, o"),
            &[],
        )
        .await
        .expect("log");
    let bound =
        i64::from(kills) * i64::try_from(KILL_CHECKPOINT_EVERY + KILL_CHUNK as u64).expect("small");
    for name in ["fast", "slow"] {
        let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
        let mut duplicates: i64 = 0;
        for r in logged.iter().filter(|r| r.get::<_, &str>(0) == name) {
            *seen.entry(r.get(1)).or_default() += 1;
            duplicates += r.get::<_, i64>(3) - 1;
        }
        for (tp, hi) in &hwm {
            let got = seen.get(&tp.partition).copied().unwrap_or(0);
            assert_eq!(
                i64::try_from(got).expect("small"),
                *hi,
                "{name}: partition {} has a gap",
                tp.partition
            );
        }
        assert!(
            duplicates <= bound,
            "{name}: {duplicates} duplicates after {kills} kills exceeds the bound {bound}"
        );
        eprintln!("lanes sigkill: {name}: {kills} kills, {duplicates} duplicates (bound {bound})");
    }
    for lane in &lane_ids {
        assert_eq!(rows(&store, lane).await, hwm, "{lane}");
    }
    assert_eq!(rows(&store, &id).await, hwm);
}
