//! SIGKILL of a pillow's process around an online split of one of its processors (issue 14): the
//! source runs in a child process that is killed at random moments before, during and after the
//! hand-over; the target then runs the processor from the handed-over position. Nothing is lost
//! for either processor, duplicates stay within the kill bound, and once the hand-over is done
//! the source never runs the processor again (restarts included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pillowtop::assembly::{PillowSpec, ProcessorSpec};
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeedOptions};
use pillowtop::pillow::{PillowConfig, ProcessorCheckpoints};
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::checkpoints::processor_checkpoint_id;
use tokio_util::sync::CancellationToken;

use crate::lanes::{
    high_water_marks, rows, Logger, KILL_CHECKPOINT_EVERY, KILL_CHUNK, LANES_CHILD_ENV,
};
use crate::support::{require, ChildTest, TestDb, TestTopic};

/// `(processor, partition) → offset → times logged`.
type Logged = BTreeMap<(String, i32), BTreeMap<i64, i64>>;

async fn logged(db: &TestDb, table: &str) -> Logged {
    let c = db.pg.fresh_client().await.expect("client");
    let mut out = Logged::new();
    for r in c
        .query(
            &format!("SELECT processor, p, o, count(*) FROM {table} GROUP BY processor, p, o"),
            &[],
        )
        .await
        .expect("log")
    {
        out.entry((r.get(0), r.get(1)))
            .or_default()
            .insert(r.get(2), r.get(3));
    }
    out
}

fn count_of(log: &Logged, processor: &str) -> i64 {
    log.iter()
        .filter(|((p, _), _)| p == processor)
        .flat_map(|(_, m)| m.values())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_around_an_online_split_loses_nothing_and_the_source_stops_running_it() {
    scenario(ProcessorCheckpoints::Independent, 60_000).await;
}

/// The same with one shared checkpoint (CommCare's model): the source stops running the
/// processor at a chunk boundary after a checkpoint and hands over from the pillow's rows.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_around_an_online_split_of_a_shared_checkpoint_pillow_loses_nothing() {
    scenario(ProcessorCheckpoints::Shared, 20_000).await;
}

async fn scenario(mode: ProcessorCheckpoints, total: i64) {
    use rand::Rng;
    let shared = mode == ProcessorCheckpoints::Shared;
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "split_kill", 2).await;
    let id = db.id("split_kill");
    let target = db.id("split_kill_target");
    let table = db.id("split_kill_log");
    db.pg
        .fresh_client()
        .await
        .expect("client")
        .batch_execute(&format!(
            "CREATE TABLE {table} (processor text, p int, o bigint)"
        ))
        .await
        .expect("log table");
    ChangeProducer::new(&bootstrap)
        .expect("producer")
        .send_changes(
            &topic.name,
            (0..total).map(|i| ChangeMeta::new(format!("d{i}"), "sql", "form-sql")),
        )
        .await
        .expect("publish");
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    let spec = [
        bootstrap.as_str(),
        db.url.as_str(),
        topic.name.as_str(),
        id.as_str(),
        table.as_str(),
        if shared { "shared" } else { "independent" },
    ]
    .join("|");
    let runs = ChildTest::new("lanes::lanes_sigkill_child", LANES_CHILD_ENV, spec, &id);
    let store = PostgresCheckpointStore::new(db.pg.clone());
    // Where the fast processor's progress is: its own rows, or the pillow's (one checkpoint).
    let fast_id = if shared {
        id.clone()
    } else {
        processor_checkpoint_id(&id, "fast")
    };
    let mut rng = rand::rng();
    let mut kills: i64 = 0;
    let mut attempts = 0;
    // (the handed-over positions, the source's count of "slow" changes logged at that moment)
    let mut handed: Option<(BTreeMap<pillowtop::feed::TopicPartition, i64>, i64)> = None;
    while rows(&store, &fast_id).await != hwm {
        let mut child = runs.spawn();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        // Two runs killed before any split, then the split requested in each run until it lands.
        if handed.is_none() && kills >= 2 {
            // Ask for the split while the source runs, and kill it a random moment later: before
            // it took the request up, while it hands over, or after.
            let pg = db.pg.clone();
            let (source, to) = (id.clone(), target.clone());
            let split = tokio::spawn(async move {
                let plan =
                    pillowtop::ops::handover::prepare(&pg, &source, "slow", &to, true, false)
                        .await?;
                pillowtop::ops::handover::apply(
                    &pg,
                    &plan,
                    Duration::from_secs(3),
                    &CancellationToken::new(),
                    |_, _| {},
                )
                .await
            });
            // The source takes a request up within a second (its coordinator's round).
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            attempts += 1;
            let exited = child.try_wait().expect("try_wait").is_some();
            // After a few kills that came too early, let one split through.
            if !exited && attempts < 4 {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            let split = split.await.expect("joins");
            if !exited && attempts >= 4 {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            child.wait().expect("reap");
            match split {
                Ok(done) => {
                    let at = logged(&db, &table).await;
                    handed = Some((done.done.clone(), count_of(&at, "slow")));
                    eprintln!(
                        "split kill: handed over after {kills} kills: {:?}",
                        done.done
                    );
                }
                // The process died before it handed over: the request is withdrawn after the
                // timeout (a killed process's row looks alive until its heartbeat is stale).
                Err(e) => eprintln!("split kill: not handed over ({e}); trying again"),
            }
            continue;
        }
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        assert!(
            kills < 100,
            "the source never caught up:\n{}",
            runs.log_tail()
        );
    }
    let status = runs.spawn().wait().expect("final run");
    assert!(status.success(), "final run failed:\n{}", runs.log_tail());
    let (positions, slow_at_handover) = if let Some(h) = handed {
        h
    } else {
        // The source finished before a split landed: split it now (offline, stopped).
        let plan = pillowtop::ops::handover::prepare(&db.pg, &id, "slow", &target, false, false)
            .await
            .expect("plan");
        let done = pillowtop::ops::handover::apply(
            &db.pg,
            &plan,
            Duration::from_secs(10),
            &CancellationToken::new(),
            |_, _| {},
        )
        .await
        .expect("offline split");
        let at = logged(&db, &table).await;
        (done.done, count_of(&at, "slow"))
    };
    let _ = std::fs::remove_file(&runs.log);
    assert!(
        kills >= 1,
        "the test must kill at least once to mean anything"
    );

    // The target runs the processor from the handed-over position (logged under its own name);
    // a partition handed over without a position (the processor had no row for it yet) has no
    // target row: the target starts it by its start policy, as the processor would have.
    let positioned: BTreeMap<_, _> = positions
        .iter()
        .filter(|(_, o)| **o != pillowtop::store::handover::NO_POSITION)
        .map(|(tp, o)| (tp.clone(), *o))
        .collect();
    assert_eq!(rows(&store, &target).await, positioned);
    let mut config = PillowConfig::new(&target, &target);
    config.chunk_size = KILL_CHUNK;
    config.until_idle = true;
    config.processor_checkpoints = ProcessorCheckpoints::Shared;
    let mut feed = KafkaFeedOptions::new(&bootstrap, &target);
    feed.idle_timeout = Duration::from_millis(500);
    PillowSpec {
        config,
        topics: vec![topic.name.clone()],
        feed,
        postgres_url: db.url.clone(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![ProcessorSpec::Ready(Box::new(Logger {
            name: "slow-target",
            pg: Arc::new(pillowtop::pg::Pg::new(&db.url)),
            table: table.clone(),
            per_chunk: Duration::ZERO,
        }))],
        document_stores: Vec::new(),
    }
    .run(&CancellationToken::new(), |p| p)
    .await
    .expect("the target ran");

    let log = logged(&db, &table).await;
    assert_eq!(
        count_of(&log, "slow"),
        slow_at_handover,
        "the source ran the processor after handing it over"
    );
    let bound = kills * i64::try_from(KILL_CHECKPOINT_EVERY + KILL_CHUNK as u64).expect("small");
    for (tp, high) in &hwm {
        let p = tp.partition;
        let empty = BTreeMap::new();
        let of = |name: &str| log.get(&(name.to_owned(), p)).unwrap_or(&empty);
        // Fast: every offset, duplicates within the kill bound.
        let fast = of("fast");
        assert_eq!(
            fast.len(),
            usize::try_from(*high).expect("size"),
            "fast {tp}: a gap"
        );
        // Slow: the source's and the target's together cover every offset; the target starts at
        // the handed-over position exactly.
        let (source, target) = (of("slow"), of("slow-target"));
        let from = positioned.get(tp).copied().unwrap_or(0);
        for o in 0..*high {
            assert!(
                source.contains_key(&o) || target.contains_key(&o),
                "slow {tp}: offset {o} reached neither the source nor the target (handed over at {from})"
            );
        }
        assert_eq!(
            target.keys().next().copied(),
            (from < *high).then_some(from),
            "the target starts where the source stopped"
        );
        let duplicates = |m: &BTreeMap<i64, i64>| m.values().map(|n| n - 1).sum::<i64>();
        let across = source.keys().filter(|o| target.contains_key(o)).count();
        let slow_dups =
            duplicates(source) + duplicates(target) + i64::try_from(across).expect("size");
        assert!(
            duplicates(fast) <= bound && slow_dups <= bound,
            "{tp}: duplicates fast {} slow {slow_dups} after {kills} kills exceed {bound}",
            duplicates(fast)
        );
        eprintln!(
            "split kill {tp}: {kills} kills, handed over at {from}, duplicates fast {} slow {slow_dups} (bound {bound}), slow handled twice across the hand-over {across}",
            duplicates(fast)
        );
    }
}
