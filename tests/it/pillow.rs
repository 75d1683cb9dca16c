//! Pillows end to end: real Kafka feed, real PostgreSQL checkpoints and error rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::{ChangeFeed, TopicPartition};
use pillowtop::pg::Pg;
use pillowtop::pillow::{Pillow, PillowConfig, RunSummary, StopReason};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::{ChunkOutcome, Processor, ProcessorFailure};
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::checkpoints::CheckpointStore;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::store::errors::ErrorStore;
use pillowtop::store::liveness::postgres::PostgresLivenessStore;
use pillowtop::store::liveness::LivenessStore;
use tokio_util::sync::CancellationToken;

use crate::support::{processed_ids, require, ChildTest, TestDb, TestTopic};

fn feed(bootstrap: &str, topics: &[String], idle: Duration) -> Box<dyn ChangeFeed> {
    let mut opts = KafkaFeedOptions::new(bootstrap, "it-pillow");
    opts.idle_timeout = idle;
    Box::new(KafkaFeed::new(topics, opts).expect("feed"))
}

fn pillow(
    bootstrap: &str,
    pg: &Arc<Pg>,
    config: PillowConfig,
    topics: &[String],
    processors: Vec<Box<dyn Processor>>,
) -> Pillow {
    Pillow::new(
        config,
        feed(bootstrap, topics, Duration::from_millis(1500)),
        processors,
        Arc::new(PostgresCheckpointStore::new(pg.clone())),
        Arc::new(PostgresErrorStore::new(pg.clone())),
    )
    .with_liveness(Arc::new(PostgresLivenessStore::new(pg.clone())))
}

async fn publish(bootstrap: &str, topic: &str, ids: impl IntoIterator<Item = String>) {
    let producer = ChangeProducer::new(bootstrap).expect("producer");
    producer
        .send_changes(
            topic,
            ids.into_iter()
                .map(|id| ChangeMeta::new(id, "sql", "form-sql")),
        )
        .await
        .expect("publish");
}

fn config(name: &str, chunk: usize) -> PillowConfig {
    let mut c = PillowConfig::new(name, name);
    c.chunk_size = chunk;
    c.until_idle = true;
    c
}

async fn high_water_marks(bootstrap: &str, topic: &str) -> BTreeMap<TopicPartition, i64> {
    let mut f = feed(bootstrap, &[topic.to_owned()], Duration::from_secs(1));
    let parts = f.partitions().await.expect("partitions");
    f.watermarks(&parts)
        .await
        .expect("watermarks")
        .into_iter()
        .map(|(tp, _, hi)| (tp, hi))
        .collect()
}

async fn checkpoint(pg: &Arc<Pg>, id: &str) -> BTreeMap<TopicPartition, i64> {
    PostgresCheckpointStore::new(pg.clone())
        .load(id)
        .await
        .expect("load")
        .into_iter()
        .map(|r| (r.tp, r.offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn resumes_exactly_where_a_stopped_pillow_left_off_and_never_passes_the_high_water_mark() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "resume", 3).await;
    let id = db.id("resume");
    let topics = vec![topic.name.clone()];
    publish(
        &bootstrap,
        &topic.name,
        (0..500).map(|i| format!("first-{i}")),
    )
    .await;

    let p1 = RecordingProcessor::new("p", true);
    let s1 = pillow(
        &bootstrap,
        &db.pg,
        config(&id, 10),
        &topics,
        vec![Box::new(p1.clone())],
    )
    .run(&CancellationToken::new())
    .await
    .expect("run 1");
    assert_eq!((s1.changes, s1.stop_reason), (500, StopReason::Idle));
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    assert_eq!(
        checkpoint(&db.pg, &id).await,
        hwm,
        "caught up: the checkpoint equals the high-water mark, never beyond"
    );

    publish(
        &bootstrap,
        &topic.name,
        (0..300).map(|i| format!("second-{i}")),
    )
    .await;
    let p2 = RecordingProcessor::new("p", true);
    let s2 = pillow(
        &bootstrap,
        &db.pg,
        config(&id, 10),
        &topics,
        vec![Box::new(p2.clone())],
    )
    .run(&CancellationToken::new())
    .await
    .expect("run 2");
    assert_eq!(s2.changes, 300, "nothing replayed, nothing skipped");
    let mut want: Vec<String> = (0..300).map(|i| format!("second-{i}")).collect();
    want.sort();
    assert_eq!(processed_ids(&p2), want);
    assert_eq!(
        checkpoint(&db.pg, &id).await,
        high_water_marks(&bootstrap, &topic.name).await
    );
    let live = PostgresLivenessStore::new(db.pg.clone())
        .list(Some(&id))
        .await
        .expect("liveness");
    assert!(live.is_empty(), "a clean stop removes the liveness row");
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_split_partitions_and_write_only_their_own() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "split", 4).await;
    let id = db.id("procs");
    let topics = vec![topic.name.clone()];
    publish(&bootstrap, &topic.name, (0..200).map(|i| format!("d{i}"))).await;
    let mut summaries: Vec<RunSummary> = Vec::new();
    let mut all = Vec::new();
    for k in 0..2 {
        let mut c = config(&id, 10);
        c.layout.num_processes = 2;
        c.layout.process_num = k;
        let p = RecordingProcessor::new("p", true);
        summaries.push(
            pillow(&bootstrap, &db.pg, c, &topics, vec![Box::new(p.clone())])
                .run(&CancellationToken::new())
                .await
                .expect("run"),
        );
        all.extend(processed_ids(&p));
    }
    assert_eq!(
        summaries[0]
            .partitions
            .iter()
            .map(|tp| tp.partition)
            .collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(
        summaries[1]
            .partitions
            .iter()
            .map(|tp| tp.partition)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    all.sort();
    let mut want: Vec<String> = (0..200).map(|i| format!("d{i}")).collect();
    want.sort();
    assert_eq!(
        all, want,
        "together the two processes saw every change once"
    );
    assert_eq!(
        checkpoint(&db.pg, &id).await,
        high_water_marks(&bootstrap, &topic.name).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_become_error_rows_and_the_pillow_continues() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::with_config(
        &bootstrap,
        "malformed",
        1,
        &[("max.message.bytes", "4194304")],
    )
    .await;
    let id = db.id("malformed");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let good = |i: u32| ChangeMeta::new(format!("good-{i}"), "sql", "form-sql").to_json();
    let huge = format!(
        r#"{{"document_id": "huge", "data_source_type": "sql", "data_source_name": "x", "pad": "{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let messages: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("good-0"), good(0).into_bytes()),
        (Some("invalid-json"), b"{\"document_id\": ".to_vec()),
        (None, br#"{"data_source_type": "sql", "data_source_name": "form-sql"}"#.to_vec()),
        (Some("wrong-types"), br#"{"document_id": "wrong-types", "data_source_type": 5, "data_source_name": "form-sql"}"#.to_vec()),
        (Some("huge"), huge.into_bytes()),
        (Some("good-1"), good(1).into_bytes()),
    ];
    for (key, body) in &messages {
        producer
            .send_raw(&topic.name, Some(0), *key, body)
            .await
            .expect("send");
    }
    let p = RecordingProcessor::new("p", true);
    // The topic takes 4 MiB; the feed's setting is 1 MiB.
    let mut opts = KafkaFeedOptions::new(&bootstrap, "it-pillow");
    opts.idle_timeout = Duration::from_millis(1500);
    opts.max_message_bytes = Some(1024 * 1024);
    let s = Pillow::new(
        config(&id, 10),
        Box::new(KafkaFeed::new(std::slice::from_ref(&topic.name), opts).expect("feed")),
        vec![Box::new(p.clone())],
        Arc::new(PostgresCheckpointStore::new(db.pg.clone())),
        Arc::new(PostgresErrorStore::new(db.pg.clone())),
    )
    .run(&CancellationToken::new())
    .await
    .expect("runs");
    assert_eq!((s.changes, s.invalid), (6, 4));
    assert_eq!(processed_ids(&p), ["good-0", "good-1"]);
    let rows = PostgresErrorStore::new(db.pg.clone())
        .list(&id)
        .await
        .expect("rows");
    let mut by_id: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r.doc_id.clone(),
                r.error_traceback.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut want = vec![
        format!("{}:0:2", topic.name),
        "huge".into(),
        "invalid-json".into(),
        "wrong-types".into(),
    ];
    want.sort();
    assert_eq!(
        by_id.keys().cloned().collect::<Vec<_>>(),
        want,
        "one row per bad message; the keyless one under topic:partition:offset"
    );
    assert!(by_id
        .remove("huge")
        .unwrap_or_default()
        .contains("exceeds the limit of 1048576 bytes (setting `max_message_bytes`)"));
    assert!(by_id
        .remove("wrong-types")
        .unwrap_or_default()
        .contains("invalid type"));
    assert!(rows
        .iter()
        .all(|r| r.error_type.as_deref() == Some("pillowtop_rs.exceptions.InvalidChangeError")));
    assert_eq!(
        checkpoint(&db.pg, &id)
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [6]
    );
}

/// Bodies and ids PostgreSQL cannot store as they are (a raw NUL byte in invalid bytes, NUL in
/// a key, `\u0000` in a valid change's id, ids longer than the column) become error rows and the
/// pillow goes on, now and after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn poison_bytes_become_error_rows_and_never_stop_the_pillow() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "poison", 1).await;
    let id = db.id("poison");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let good = |i: u32| ChangeMeta::new(format!("good-{i}"), "sql", "form-sql").to_json();
    let long_key = "k".repeat(300);
    let long_id = "L".repeat(400);
    let long_body = ChangeMeta::new(long_id.clone(), "sql", "form-sql").to_json();
    let messages: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("good-0"), good(0).into_bytes()),
        (Some("doc-18"), b"\xff\xfe\x00garbage".to_vec()),
        (Some("nul\0key"), b"{\"document_id\": \x00".to_vec()),
        (None, br#"{"document_id": "a\u0000b", "data_source_type": "sql", "data_source_name": "form-sql"}"#.to_vec()),
        (Some(long_key.as_str()), b"not json".to_vec()),
        (None, long_body.into_bytes()),
        (Some("good-1"), good(1).into_bytes()),
    ];
    for (key, body) in &messages {
        producer
            .send_raw(&topic.name, Some(0), *key, body)
            .await
            .expect("send");
    }
    let p = RecordingProcessor::new("p", true);
    p.fail_ids
        .lock()
        .expect("lock")
        .extend(["a\0b".to_owned(), long_id.clone()]);
    let run = || async {
        pillow(
            &bootstrap,
            &db.pg,
            config(&id, 10),
            std::slice::from_ref(&topic.name),
            vec![Box::new(p.clone())],
        )
        .run(&CancellationToken::new())
        .await
    };
    let s = run().await.expect("no message stops the pillow");
    assert_eq!((s.changes, s.invalid, s.failed), (7, 3, 2));
    assert_eq!(processed_ids(&p), ["good-0", "good-1"]);
    assert_eq!(
        checkpoint(&db.pg, &id)
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [7],
        "the checkpoint passes every message"
    );
    let rows = PostgresErrorStore::new(db.pg.clone())
        .list(&id)
        .await
        .expect("rows");
    let by_id: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| {
            (
                r.doc_id.as_str(),
                r.error_traceback.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(by_id.len(), 5, "{by_id:#?}");
    assert!(
        by_id["doc-18"].contains("message starts: \\xff\\xfe\\x00garbage"),
        "the excerpt shows the bytes: {}",
        by_id["doc-18"]
    );
    assert!(by_id.contains_key("nul\\x00key"), "{by_id:#?}");
    assert!(
        by_id["a\\x00b"].contains("p fails on a\\x00b"),
        "{by_id:#?}"
    );
    assert_eq!(
        by_id.keys().filter(|k| k.chars().count() == 255).count(),
        2,
        "both long ids are cut to the column: {by_id:#?}"
    );
    // A restart resumes after them: nothing left to stop on.
    let again = run().await.expect("restart");
    assert_eq!(again.changes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_offsets_strict_fails_and_non_strict_reports_and_resumes_at_earliest() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "expired", 1).await;
    let id = db.id("expired");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for i in 0..10 {
        producer
            .send_raw(
                &topic.name,
                Some(0),
                Some(&format!("d{i}")),
                ChangeMeta::new(format!("d{i}"), "sql", "x")
                    .to_json()
                    .as_bytes(),
            )
            .await
            .expect("send");
    }
    let tp = TopicPartition::new(topic.name.clone(), 0);
    PostgresCheckpointStore::new(db.pg.clone())
        .create_rows(&id, std::slice::from_ref(&tp), 2)
        .await
        .expect("row at 2");
    KafkaAdmin::new(&bootstrap)
        .expect("admin")
        .delete_records(&tp, 6)
        .await
        .expect("delete records");

    let mut strict = config(&id, 10);
    strict.strict = true;
    let err = pillow(
        &bootstrap,
        &db.pg,
        strict,
        std::slice::from_ref(&topic.name),
        vec![],
    )
    .run(&CancellationToken::new())
    .await
    .expect_err("strict");
    assert_eq!(
        err.to_string(),
        format!(
            "First available topic offset for {}:0 is 6 but needed 2.",
            topic.name
        )
    );

    let metrics = Arc::new(pillowtop::metrics::MemoryRecorder::new());
    let p = RecordingProcessor::new("p", true);
    pillow(
        &bootstrap,
        &db.pg,
        config(&id, 10),
        std::slice::from_ref(&topic.name),
        vec![Box::new(p.clone())],
    )
    .with_metrics(metrics.clone())
    .run(&CancellationToken::new())
    .await
    .expect("non-strict");
    assert_eq!(processed_ids(&p), ["d6", "d7", "d8", "d9"]);
    assert!(
        (metrics.get(pillowtop::metrics::OFFSET_RESET, &[("reason", "expired")]) - 1.0).abs()
            < f64::EPSILON
    );
    assert_eq!(checkpoint(&db.pg, &id).await[&tp], 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_tick_flushes_a_partial_chunk_and_checkpoints_while_running() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "idle", 2).await;
    let id = db.id("idle");
    let mut c = config(&id, 100);
    c.until_idle = false;
    let p = RecordingProcessor::new("p", true);
    let mut pl = pillow(
        &bootstrap,
        &db.pg,
        c,
        std::slice::from_ref(&topic.name),
        vec![Box::new(p.clone())],
    );
    let token = CancellationToken::new();
    let t2 = token.clone();
    let handle = tokio::spawn(async move { pl.run(&t2).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&bootstrap, &topic.name, (0..3).map(|i| format!("d{i}"))).await;
    // Three changes never fill a chunk of 100: only the idle tick can flush and checkpoint them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ck = checkpoint(&db.pg, &id).await;
        if ck.values().sum::<i64>() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle flush did not checkpoint: {ck:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(processed_ids(&p), ["d0", "d1", "d2"]);
    let rows = PostgresLivenessStore::new(db.pg.clone())
        .list(Some(&id))
        .await
        .expect("liveness");
    assert!(
        rows.len() == 1 && rows[0].alive,
        "a running pillow has a live heartbeat row: {rows:?}"
    );
    token.cancel();
    let s = handle.await.expect("join").expect("run");
    assert_eq!(s.stop_reason, StopReason::Shutdown);
}

/// Appends every processed change to a PostgreSQL table, one multi-row insert per chunk: a
/// durable record that survives SIGKILL of the pillow process.
struct LogProcessor {
    pg: Arc<Pg>,
    table: String,
}

#[async_trait]
impl Processor for LogProcessor {
    fn name(&self) -> &str {
        "log"
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
        let parts: Vec<i32> = changes.iter().map(|c| c.partition).collect();
        let offsets: Vec<i64> = changes.iter().map(|c| c.offset).collect();
        let sql = format!(
            "INSERT INTO {} (p, o) SELECT * FROM unnest($1::int[], $2::bigint[])",
            self.table
        );
        self.pg
            .run("logging changes", |c| {
                let (sql, parts, offsets) = (sql.clone(), &parts, &offsets);
                async move {
                    c.execute(&sql, &[parts, offsets])
                        .await
                        .map_err(pillowtop::pg::err("logging changes"))
                }
            })
            .await?;
        Ok(Ok(ChunkOutcome::default()))
    }
}

const CHILD_ENV: &str = "PILLOWTOP_IT_CHILD";

/// Not a test on its own: the child process of the SIGKILL test runs this (see below).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run as a child process by at_least_once_under_sigkill"]
async fn sigkill_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let v: Vec<&str> = spec.split('|').collect();
    let (bootstrap, url, topic, id, table) = (v[0], v[1], v[2], v[3], v[4]);
    let pg = Arc::new(Pg::new(url));
    let mut c = PillowConfig::new(id, id);
    c.chunk_size = 100;
    c.checkpoint_frequency = 1000;
    c.until_idle = true;
    let processor = LogProcessor {
        pg: pg.clone(),
        table: table.to_owned(),
    };
    pillowtop::telemetry::init();
    let s = pillow(
        bootstrap,
        &pg,
        c,
        &[topic.to_owned()],
        vec![Box::new(processor)],
    )
    .run(&CancellationToken::new())
    .await
    .expect("child run");
    eprintln!("child finished: {s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_least_once_under_sigkill_at_random_moments() {
    use rand::Rng;
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "sigkill", 4).await;
    let id = db.id("sigkill");
    let table = db.id("sigkill_log");
    db.pg
        .fresh_client()
        .await
        .expect("client")
        .batch_execute(&format!("CREATE TABLE {table} (p int, o bigint)"))
        .await
        .expect("log table");
    const N: i64 = 100_000;
    publish(&bootstrap, &topic.name, (0..N).map(|i| format!("doc-{i}"))).await;
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    assert_eq!(hwm.values().sum::<i64>(), N);

    let spec = [
        bootstrap.as_str(),
        url.as_str(),
        topic.name.as_str(),
        id.as_str(),
        table.as_str(),
    ]
    .join("|");
    let runs = ChildTest::new("pillow::sigkill_child", CHILD_ENV, spec, &id);
    let mut kills = 0;
    let mut rng = rand::rng();
    // Kill at random moments until the checkpoint reaches the end (a caught-up child would wait
    // for its idle tick, longer than our kill window, so we stop killing once it is there).
    while checkpoint(&db.pg, &id).await != hwm {
        let mut child = runs.spawn();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        assert!(
            kills < 100,
            "the pillow never caught up; child log:\n{}",
            runs.log_tail()
        );
    }
    // One last clean run drains whatever the last kill left.
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
    let rows = c
        .query(
            &format!("SELECT p, o, count(*) FROM {table} GROUP BY p, o"),
            &[],
        )
        .await
        .expect("log");
    let mut seen: BTreeMap<i32, std::collections::BTreeSet<i64>> = BTreeMap::new();
    let mut duplicates: i64 = 0;
    for r in &rows {
        seen.entry(r.get(0)).or_default().insert(r.get(1));
        duplicates += r.get::<_, i64>(2) - 1;
    }
    for (tp, hi) in &hwm {
        let got = seen
            .get(&tp.partition)
            .map_or(0, std::collections::BTreeSet::len);
        assert_eq!(
            i64::try_from(got).expect("small"),
            *hi,
            "partition {} has a gap: {} of {} offsets processed",
            tp.partition,
            got,
            hi
        );
    }
    // Each kill can redo at most what was processed since the last checkpoint: the checkpoint
    // window (1000 changes) plus one chunk (100).
    let bound = i64::from(kills) * (1000 + 100);
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {kills} kills exceeds the window bound {bound}"
    );
    assert_eq!(checkpoint(&db.pg, &id).await, hwm);
    eprintln!(
        "sigkill: {kills} kills, {duplicates} duplicates (bound {bound}), {N} changes, no gap"
    );
}
