//! Checkpoint operations against real PostgreSQL and Kafka: split, merge (each edge case of the
//! docs/commcare-pillowtop.md §2), reset to a timestamp, history, add-partitions, validate, lag, the mission's
//! split of a running pillow end to end, and the `pillowtop` binary's prompts and exit codes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::assignment::Layout;
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::TopicPartition;
use pillowtop::ops::kafka::KafkaInfo;
use pillowtop::ops::merge::{apply_merge, prepare_merge};
use pillowtop::ops::reset::{apply_reset, prepare_reset, ResetTo, Selection};
use pillowtop::ops::split::{apply_split, prepare_split, SplitTarget};
use pillowtop::ops::{self, OpsError};
use pillowtop::pg::Pg;
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::{ChunkOutcome, Processor, ProcessorFailure};
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::checkpoints::CheckpointStore;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::store::history::postgres::PostgresHistoryStore;
use pillowtop::store::history::HistoryStore;
use pillowtop::store::liveness::postgres::PostgresLivenessStore;
use pillowtop::store::liveness::LivenessStore;
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};

/// Writes rows `(topic, partition, offset)` of `id` directly.
async fn put(pg: &Pg, id: &str, rows: &[(&str, i32, i64)]) {
    let c = pg.fresh_client().await.expect("client");
    for (t, p, o) in rows {
        c.execute(
            r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", last_modified)
               VALUES ($1, $2, $3, $4, now())
               ON CONFLICT (checkpoint_id, topic, "partition") DO UPDATE SET "offset" = EXCLUDED."offset""#,
            &[&id, t, p, o],
        )
        .await
        .expect("insert row");
    }
}

/// The rows of `id` as `(topic, partition) → offset`.
async fn rows_of(pg: &Arc<Pg>, id: &str) -> BTreeMap<(String, i32), i64> {
    PostgresCheckpointStore::new(pg.clone())
        .load(id)
        .await
        .expect("load")
        .into_iter()
        .map(|r| ((r.tp.topic, r.tp.partition), r.offset))
        .collect()
}

fn m(v: &[(&str, i32, i64)]) -> BTreeMap<(String, i32), i64> {
    v.iter()
        .map(|(t, p, o)| (((*t).to_owned(), *p), *o))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// split

#[tokio::test(flavor = "multi_thread")]
async fn split_copies_every_row_replaces_targets_and_reports_topic_mismatches() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let (a, b, c) = (db.id("split_a"), db.id("split_b"), db.id("split_c"));
    put(
        &db.pg,
        &a,
        &[("form", 0, 10), ("form", 1, 20), ("case", 0, 5)],
    )
    .await;
    put(&db.pg, &b, &[("form", 0, 3), ("old-topic", 0, 99)]).await;
    let targets = vec![
        SplitTarget {
            checkpoint_id: b.clone(),
            topics: Some(strings(&["form", "form-meta"])),
        },
        SplitTarget::new(c.clone()),
    ];
    let (plan, forced) = prepare_split(&db.pg, &a, &targets, false)
        .await
        .expect("plan");
    assert!(forced.is_empty());
    assert_eq!(plan.rows.len(), 3);
    assert_eq!(plan.existing.len(), 2, "both rows of b are listed");
    assert_eq!(plan.source_only_topics[0].topics, ["case"]);
    assert_eq!(plan.target_only_topics[0].topics, ["form-meta"]);
    assert_eq!(apply_split(&db.pg, &plan).await.expect("apply"), 6);
    let want = m(&[("case", 0, 5), ("form", 0, 10), ("form", 1, 20)]);
    assert_eq!(
        rows_of(&db.pg, &b).await,
        want,
        "old-topic row deleted, form,0 overwritten"
    );
    assert_eq!(rows_of(&db.pg, &c).await, want);
    assert_eq!(rows_of(&db.pg, &a).await, want, "the source is untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn split_refuses_a_running_source_unless_forced() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let (a, b) = (db.id("running_a"), db.id("running_b"));
    put(&db.pg, &a, &[("form", 0, 10)]).await;
    let live = PostgresLivenessStore::new(db.pg.clone());
    live.register(&a, &a, &Layout::single(), &[TopicPartition::new("form", 0)])
        .await
        .expect("register");
    let e = prepare_split(&db.pg, &a, &[SplitTarget::new(b.clone())], false)
        .await
        .expect_err("running");
    assert!(matches!(e, OpsError::Running { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "pillow {a} is running (process 0 of pillow {a} on "
        )),
        "{e}"
    );
    let (plan, forced) = prepare_split(&db.pg, &a, &[SplitTarget::new(b.clone())], true)
        .await
        .expect("forced");
    assert_eq!(forced.len(), 1);
    apply_split(&db.pg, &plan).await.expect("apply");
    assert_eq!(rows_of(&db.pg, &b).await, m(&[("form", 0, 10)]));
    live.unregister(&a, 0).await.expect("unregister");
    assert!(
        prepare_split(&db.pg, &a, &[SplitTarget::new(b.clone())], false)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_restore_refuse_a_running_pillow_unless_forced() {
    use pillowtop::ops::history;
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let kafka = KafkaInfo::new(&bootstrap).expect("kafka");
    let topic = TestTopic::new(&bootstrap, "running_reset", 1).await;
    let a = db.id("running_reset");
    put(&db.pg, &a, &[(&topic.name, 0, 0)]).await;
    let tp = TopicPartition::new(topic.name.clone(), 0);
    let day = NaiveDate::from_ymd_opt(1990, 1, 1).expect("date");
    PostgresHistoryStore::new(db.pg.clone())
        .snapshot(day, 30)
        .await
        .expect("snapshot");
    let live = PostgresLivenessStore::new(db.pg.clone());
    live.register(&a, &a, &Layout::single(), std::slice::from_ref(&tp))
        .await
        .expect("register");

    let e = prepare_reset(
        &db.pg,
        &kafka,
        &a,
        &Selection::Existing,
        &ResetTo::Offset(0),
        false,
    )
    .await
    .expect_err("running");
    assert!(matches!(e, OpsError::Running { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!("pillow {a} is running")),
        "{e}"
    );
    let e = history::prepare_restore(&db.pg, std::slice::from_ref(&a), day, false)
        .await
        .expect_err("running");
    assert!(matches!(e, OpsError::Running { .. }), "{e}");

    let (_, forced) = history::prepare_restore(&db.pg, std::slice::from_ref(&a), day, true)
        .await
        .expect("forced restore");
    assert_eq!(forced.len(), 1);
    live.unregister(&a, 0).await.expect("unregister");
    let (_, forced) = prepare_reset(
        &db.pg,
        &kafka,
        &a,
        &Selection::Partition(tp),
        &ResetTo::Earliest,
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("not running any more: {e}"));
    assert!(forced.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn split_of_a_never_run_source_fails_and_writes_nothing() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let (a, b) = (db.id("never_a"), db.id("never_b"));
    put(&db.pg, &b, &[("form", 0, 3)]).await;
    let e = prepare_split(&db.pg, &a, &[SplitTarget::new(b.clone())], false)
        .await
        .expect_err("no source rows");
    assert!(matches!(e, OpsError::NoSourceRows { .. }), "{e}");
    assert_eq!(rows_of(&db.pg, &b).await, m(&[("form", 0, 3)]));
    assert!(
        rows_of(&db.pg, &a).await.is_empty(),
        "planning never creates rows"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_plan_writes_nothing() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let (a, b, c) = (db.id("stale_a"), db.id("stale_b"), db.id("stale_c"));
    put(&db.pg, &a, &[("form", 0, 10)]).await;
    put(&db.pg, &b, &[("form", 0, 3)]).await;
    let targets = [SplitTarget::new(b.clone()), SplitTarget::new(c.clone())];
    let (plan, _) = prepare_split(&db.pg, &a, &targets, false)
        .await
        .expect("plan");
    put(&db.pg, &b, &[("form", 0, 4)]).await;
    let e = apply_split(&db.pg, &plan).await.expect_err("stale");
    assert!(matches!(e, OpsError::Stale { .. }), "{e}");
    assert_eq!(
        rows_of(&db.pg, &b).await,
        m(&[("form", 0, 4)]),
        "rolled back"
    );
    assert!(
        rows_of(&db.pg, &c).await.is_empty(),
        "rolled back as a whole"
    );
}

// ---------------------------------------------------------------------------------------------
// merge

#[tokio::test(flavor = "multi_thread")]
async fn merge_round_trip_takes_the_minimum_and_replaces_the_target() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let (a, b, c, d) = (db.id("rt_a"), db.id("rt_b"), db.id("rt_c"), db.id("rt_d"));
    put(&db.pg, &a, &[("case", 0, 100), ("case", 1, 200)]).await;
    let (plan, _) = prepare_split(
        &db.pg,
        &a,
        &[SplitTarget::new(b.clone()), SplitTarget::new(c.clone())],
        false,
    )
    .await
    .expect("split");
    apply_split(&db.pg, &plan).await.expect("apply split");
    // The two halves move on at different speeds.
    put(&db.pg, &b, &[("case", 0, 150), ("case", 1, 210)]).await;
    put(&db.pg, &c, &[("case", 0, 120), ("case", 1, 260)]).await;
    put(&db.pg, &d, &[("case", 0, 1), ("stale-topic", 0, 1)]).await;
    let (plan, _) = prepare_merge(&db.pg, &[b.clone(), c.clone()], &d, None, false)
        .await
        .expect("merge plan");
    assert_eq!(plan.max_reprocess(), 50);
    assert!(plan.target_exists());
    assert_eq!(apply_merge(&db.pg, &plan).await.expect("apply"), 2);
    assert_eq!(
        rows_of(&db.pg, &d).await,
        m(&[("case", 0, 120), ("case", 1, 210)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_edge_cases_of_the_reference() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let (a, b, t) = (db.id("edge_a"), db.id("edge_b"), db.id("edge_t"));
    let pg = &db.pg;
    put(pg, &t, &[("keep", 0, 42)]).await;

    // (a) empty source list: an error before anything is deleted.
    let e = prepare_merge(pg, &[], &t, None, false)
        .await
        .expect_err("no sources");
    assert!(matches!(e, OpsError::NoSources), "{e}");
    // Never-run sources only: an error, nothing deleted.
    let e = prepare_merge(pg, &[a.clone(), b.clone()], &t, None, false)
        .await
        .expect_err("no rows");
    assert!(matches!(e, OpsError::NoSourceRows { .. }), "{e}");
    assert_eq!(rows_of(pg, &t).await, m(&[("keep", 0, 42)]));

    // (b) disjoint topics: the union.
    put(pg, &a, &[("case", 0, 5), ("case", 1, 6)]).await;
    put(pg, &b, &[("form", 0, 7)]).await;
    let (plan, _) = prepare_merge(pg, &[a.clone(), b.clone()], &t, None, false)
        .await
        .expect("disjoint");
    assert_eq!(plan.partitions.len(), 3);

    // (c) partial overlap (a reads case and form, b only form): passes now.
    put(pg, &a, &[("form", 0, 9)]).await;
    let (plan, _) = prepare_merge(pg, &[a.clone(), b.clone()], &t, None, false)
        .await
        .expect("partial overlap");
    let form: Vec<i64> = plan
        .partitions
        .iter()
        .filter(|p| p.topic == "form")
        .map(|p| p.offset)
        .collect();
    assert_eq!(form, [7]);

    // (d) missing partitions of a shared topic: named, exit status 2 in the CLI.
    put(pg, &b, &[("case", 0, 1)]).await;
    let e = prepare_merge(pg, &[a.clone(), b.clone()], &t, None, false)
        .await
        .expect_err("inconsistent");
    let OpsError::Inconsistent(missing) = &e else {
        panic!("{e}")
    };
    assert_eq!(missing.len(), 1);
    assert_eq!(
        (missing[0].checkpoint_id.as_str(), missing[0].topic.as_str()),
        (b.as_str(), "case")
    );
    assert_eq!(missing[0].partitions, [1]);
    // (e) restricted to the target's topics, the mismatch on `case` does not matter.
    let (plan, _) = prepare_merge(
        pg,
        &[a.clone(), b.clone()],
        &t,
        Some(&strings(&["form"])),
        false,
    )
    .await
    .expect("restricted");
    assert_eq!(plan.ignored_topics, ["case"]);

    // Never-run source next to a real one: listed, does not drag to 0.
    let never = db.id("edge_never");
    let (plan, _) = prepare_merge(pg, &[a.clone(), never.clone()], &t, None, false)
        .await
        .expect("never-run");
    assert_eq!(plan.sources_without_rows, std::slice::from_ref(&never));
    assert!(plan.partitions.iter().all(|p| p.offset > 0));

    // Existing target: replaced as a whole, in one transaction.
    apply_merge(pg, &plan).await.expect("apply");
    assert_eq!(
        rows_of(pg, &t).await,
        m(&[("case", 0, 5), ("case", 1, 6), ("form", 0, 9)])
    );

    // Running source: refused unless forced.
    let live = PostgresLivenessStore::new(pg.clone());
    live.register(&a, &a, &Layout::single(), &[])
        .await
        .expect("register");
    let e = prepare_merge(
        pg,
        &[a.clone(), b.clone()],
        &t,
        Some(&strings(&["form"])),
        false,
    )
    .await
    .expect_err("running");
    assert!(matches!(e, OpsError::Running { .. }), "{e}");
    live.unregister(&a, 0).await.expect("unregister");
}

// ---------------------------------------------------------------------------------------------
// reset, history, add-partitions, validate, lag

async fn send_at(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    ts_ms: i64,
    id: &str,
) {
    let body = ChangeMeta::new(id, "sql", "form-sql").to_json();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .partition(partition)
                .key(id)
                .payload(&body)
                .timestamp(ts_ms),
            Duration::from_secs(30),
        )
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_to_a_timestamp_lands_on_the_right_offsets() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "reset_ts", 2).await;
    let id = db.id("reset_ts");
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    let t0 = (Utc::now() - chrono::Duration::hours(1)).timestamp_millis();
    for i in 0..10 {
        send_at(&producer, &topic.name, 0, t0 + i * 1000, &format!("p0-{i}")).await;
        send_at(&producer, &topic.name, 1, t0 + i * 2000, &format!("p1-{i}")).await;
    }
    put(&db.pg, &id, &[(&topic.name, 0, 10), (&topic.name, 1, 10)]).await;
    let kafka = KafkaInfo::new(&bootstrap).expect("kafka");
    let at = |ms: i64| ResetTo::Timestamp(DateTime::from_timestamp_millis(ms).expect("ts"));

    let (plan, _) = prepare_reset(
        &db.pg,
        &kafka,
        &id,
        &Selection::Existing,
        &at(t0 + 5000),
        false,
    )
    .await
    .expect("plan");
    let news: Vec<(i32, Option<i64>, i64)> = plan
        .rows
        .iter()
        .map(|r| (r.partition, r.current, r.new))
        .collect();
    // p0 has a message at exactly t0+5s (offset 5); p1's first at or after it is t0+6s (offset 3).
    assert_eq!(news, [(0, Some(10), 5), (1, Some(10), 3)]);
    apply_reset(&db.pg, &plan).await.expect("apply");
    let (t, n) = (topic.name.as_str(), &id);
    assert_eq!(rows_of(&db.pg, n).await, m(&[(t, 0, 5), (t, 1, 3)]));

    // After the last message: the high-water mark. Before the first: offset 0.
    let (plan, _) = prepare_reset(
        &db.pg,
        &kafka,
        &id,
        &Selection::Existing,
        &at(t0 + 60_000),
        false,
    )
    .await
    .expect("plan");
    assert!(plan.rows.iter().all(|r| r.new == 10), "{plan:?}");
    let (plan, _) = prepare_reset(
        &db.pg,
        &kafka,
        &id,
        &Selection::Existing,
        &at(t0 - 60_000),
        false,
    )
    .await
    .expect("plan");
    assert!(plan.rows.iter().all(|r| r.new == 0), "{plan:?}");

    // One partition, an explicit offset; others untouched.
    let one = Selection::Partition(TopicPartition::new(topic.name.clone(), 1));
    let (plan, _) = prepare_reset(&db.pg, &kafka, &id, &one, &ResetTo::Offset(7), false)
        .await
        .expect("plan");
    apply_reset(&db.pg, &plan).await.expect("apply");
    assert_eq!(rows_of(&db.pg, n).await, m(&[(t, 0, 5), (t, 1, 7)]));
    let e = prepare_reset(&db.pg, &kafka, &id, &one, &ResetTo::Offset(11), false)
        .await
        .expect_err("beyond the high-water mark");
    assert!(matches!(e, OpsError::OutOfRange { .. }), "{e}");

    // A new checkpoint over a whole topic at latest.
    let fresh = db.id("reset_fresh");
    let (plan, _) = prepare_reset(
        &db.pg,
        &kafka,
        &fresh,
        &Selection::Topics(vec![topic.name.clone()]),
        &ResetTo::Latest,
        false,
    )
    .await
    .expect("plan");
    apply_reset(&db.pg, &plan).await.expect("apply");
    assert_eq!(rows_of(&db.pg, &fresh).await, m(&[(t, 0, 10), (t, 1, 10)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_snapshots_prune_after_30_days_and_restore_from_a_date() {
    use pillowtop::ops::history;
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let id = db.id("history");
    let pg = &db.pg;
    let day = |d: u32| {
        NaiveDate::from_ymd_opt(1990, 1, 1).expect("date") + chrono::Days::new(u64::from(d))
    };
    put(pg, &id, &[("case", 0, 10), ("case", 1, 20)]).await;
    PostgresHistoryStore::new(pg.clone())
        .snapshot(day(0), 30)
        .await
        .expect("snapshot day 0");
    put(pg, &id, &[("case", 0, 15), ("case", 1, 25)]).await;
    PostgresHistoryStore::new(pg.clone())
        .snapshot(day(20), 30)
        .await
        .expect("snapshot day 20");
    put(pg, &id, &[("case", 0, 90), ("case", 1, 95), ("case", 2, 1)]).await;

    let (plans, _) = history::prepare_restore(pg, std::slice::from_ref(&id), day(25), false)
        .await
        .expect("plan");
    assert_eq!(
        plans[0].date,
        day(20),
        "the newest snapshot on or before the date"
    );
    assert_eq!(plans[0].kept.len(), 1, "case,2 is not in the snapshot");
    history::apply_restore(pg, &plans[0])
        .await
        .expect("restore");
    assert_eq!(
        rows_of(pg, &id).await,
        m(&[("case", 0, 15), ("case", 1, 25), ("case", 2, 1)])
    );
    let (plans, _) = history::prepare_restore(pg, std::slice::from_ref(&id), day(5), false)
        .await
        .expect("plan");
    assert_eq!(plans[0].rows[0].new, 10);

    // A snapshot 40 days later prunes the day-0 record (older than 30 days), keeps day 20.
    let s = PostgresHistoryStore::new(pg.clone())
        .snapshot(day(40), 30)
        .await
        .expect("snapshot day 40");
    assert!(s.pruned >= 2, "{s:?}");
    let days: BTreeSet<NaiveDate> = PostgresHistoryStore::new(pg.clone())
        .list(Some(&id))
        .await
        .expect("list")
        .iter()
        .map(|e| e.date)
        .collect();
    assert_eq!(days, [day(20), day(40)].into());
    let e = history::prepare_restore(pg, std::slice::from_ref(&id), day(5), false)
        .await
        .expect_err("pruned");
    assert!(matches!(e, OpsError::NoSnapshot { .. }), "{e}");
    // Our synthetic 1990 records go; real records are far newer.
    pg.fresh_client()
        .await
        .expect("client")
        .execute(
            "DELETE FROM pillowtop_rs_checkpoint_history WHERE date_updated < '1991-01-01'",
            &[],
        )
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread")]
async fn add_partitions_creates_rows_for_every_reader_of_the_topic() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "addparts", 4).await;
    let (a, b, other) = (db.id("addp_a"), db.id("addp_b"), db.id("addp_other"));
    let t = topic.name.as_str();
    put(&db.pg, &a, &[(t, 0, 5), (t, 1, 6)]).await;
    put(&db.pg, &b, &[(t, 0, 5)]).await;
    put(&db.pg, &other, &[("unrelated", 0, 5)]).await;
    let kafka = KafkaInfo::new(&bootstrap).expect("kafka");
    let count = kafka.partition_count(t).await.expect("count");
    assert_eq!(count, Some(4));
    let rows = PostgresCheckpointStore::new(db.pg.clone())
        .load_on_topic(Some(t))
        .await
        .expect("rows");
    let too_many = ops::add_partitions::plan_add_partitions(t, 8, &rows, Some(count));
    assert!(too_many.is_err(), "kafka has only 4 partitions");
    let plan = ops::add_partitions::plan_add_partitions(t, 4, &rows, Some(count)).expect("plan");
    assert_eq!(plan.create.len(), 2 + 3);
    assert_eq!(
        ops::add_partitions::apply_add_partitions(&db.pg, &plan)
            .await
            .expect("apply"),
        5
    );
    assert_eq!(
        rows_of(&db.pg, &a).await,
        m(&[(t, 0, 5), (t, 1, 6), (t, 2, 0), (t, 3, 0)])
    );
    assert_eq!(rows_of(&db.pg, &b).await.len(), 4);
    assert_eq!(rows_of(&db.pg, &other).await.len(), 1);
    let e = ops::add_partitions::apply_add_partitions(&db.pg, &plan)
        .await
        .expect_err("stale");
    assert!(matches!(e, OpsError::Stale { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_and_lag_name_partitions_offsets_and_owners() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "validate", 2).await;
    let id = db.id("validate");
    let t = topic.name.as_str();
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for i in 0..10 {
        let body = ChangeMeta::new(format!("d{i}"), "sql", "x").to_json();
        producer
            .send_raw(t, Some(0), Some("k"), body.as_bytes())
            .await
            .expect("send");
    }
    KafkaAdmin::new(&bootstrap)
        .expect("admin")
        .delete_records(&TopicPartition::new(t, 0), 6)
        .await
        .expect("delete records");
    put(&db.pg, &id, &[(t, 0, 2), (t, 1, 0), (t, 5, 3)]).await;
    let kafka = KafkaInfo::new(&bootstrap).expect("kafka");
    let problems = ops::validate::collect(&db.pg, &kafka, Some(std::slice::from_ref(&id)), false)
        .await
        .expect("validate");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            format!("checkpoint {id}: First available topic offset for {t}:0 is 6 but needed 2."),
            format!("checkpoint {id}: kafka has no partition {t}:5 (checkpoint offset 3)"),
        ]
    );

    let live = PostgresLivenessStore::new(db.pg.clone());
    live.register(&id, &id, &Layout::single(), &[TopicPartition::new(t, 0)])
        .await
        .expect("register");
    let lag = ops::lag::collect(&db.pg, &kafka, Some(std::slice::from_ref(&id)))
        .await
        .expect("lag");
    let got: Vec<(i32, Option<i64>, Option<i64>, bool)> = lag
        .iter()
        .map(|r| (r.partition, r.high, r.lag, r.owner.is_some()))
        .collect();
    assert_eq!(
        got,
        [
            (0, Some(10), Some(8), true),
            (1, Some(0), Some(0), false),
            (5, None, None, false)
        ]
    );
    let time_lag: Vec<Option<i64>> = lag.iter().map(|r| r.time_lag_seconds).collect();
    assert!(
        matches!(time_lag[..], [Some(0..=60), Some(0), None]),
        "the oldest unprocessed change was just published: {time_lag:?}"
    );
    let rec = pillowtop::metrics::MemoryRecorder::new();
    ops::lag::record(&lag, &rec);
    let text = ops::prometheus::render(&rec.snapshot());
    assert!(
        text.contains(&format!(
            "commcare_change_feed_need_processing{{feed_type=\"kafka\",pillow_name=\"{id}\",topic=\"{t}-0\"}} 8"
        )),
        "{text}"
    );
    live.unregister(&id, 0).await.expect("unregister");
}

// ---------------------------------------------------------------------------------------------
// The mission: split a running pillow's processors into two pillows without losing a change.

/// Delegates to a recording processor after a pause per call: the slow processor P2.
struct Slow(RecordingProcessor, Duration);

#[async_trait]
impl Processor for Slow {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn supports_batch_processing(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        tokio::time::sleep(self.1).await;
        self.0.process_change(change).await
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        tokio::time::sleep(self.1).await;
        self.0.process_changes_chunk(changes).await
    }
}

const CHUNK: usize = 10;
const CHECKPOINT_EVERY: u64 = 50;

fn mission_pillow(
    bootstrap: &str,
    pg: &Arc<Pg>,
    id: &str,
    topic: &str,
    processors: Vec<Box<dyn Processor>>,
) -> Pillow {
    let mut c = PillowConfig::new(id, id);
    c.chunk_size = CHUNK;
    c.checkpoint_frequency = CHECKPOINT_EVERY;
    let mut o = KafkaFeedOptions::new(bootstrap, id);
    o.idle_timeout = Duration::from_millis(500);
    Pillow::new(
        c,
        Box::new(KafkaFeed::new(&[topic.to_owned()], o).expect("feed")),
        processors,
        Arc::new(PostgresCheckpointStore::new(pg.clone())),
        Arc::new(PostgresErrorStore::new(pg.clone())),
    )
    .with_liveness(Arc::new(PostgresLivenessStore::new(pg.clone())))
}

fn spawn(
    mut p: Pillow,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<pillowtop::Result<pillowtop::pillow::RunSummary>>,
) {
    let token = CancellationToken::new();
    let t = token.clone();
    (token, tokio::spawn(async move { p.run(&t).await }))
}

/// `(partition, offset)` → how many times the processor saw it.
fn seen(p: &RecordingProcessor) -> BTreeMap<(i32, i64), u32> {
    let mut out = BTreeMap::new();
    for (_, _, part, off) in &p.recorded.lock().expect("lock").processed {
        *out.entry((*part, *off)).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::similar_names, clippy::many_single_char_names)] // the mission's names: A, B, P1, P2
async fn the_mission_split_a_running_pillow_while_changes_keep_coming() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "mission", 4).await;
    let (a, b) = (db.id("mission_a"), db.id("mission_b"));

    // A producer that keeps producing until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, produced) = (stop.clone(), produced.clone());
        let (bootstrap, t) = (bootstrap.clone(), topic.name.clone());
        tokio::spawn(async move {
            let p = ChangeProducer::new(&bootstrap).expect("producer");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch =
                    (i..i + 25).map(|n| ChangeMeta::new(format!("doc-{n:07}"), "sql", "form-sql"));
                i += p.send_changes(&t, batch).await.expect("produce");
                produced.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Phase 1: pillow A with the fast P1 and the slow P2.
    let p1 = RecordingProcessor::new("p1", true);
    let p2 = RecordingProcessor::new("p2", true);
    let (token_a, run_a) = spawn(mission_pillow(
        &bootstrap,
        &db.pg,
        &a,
        &topic.name,
        vec![
            Box::new(p1.clone()),
            Box::new(Slow(p2.clone(), Duration::from_millis(5))),
        ],
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Stop A, split A → B while the producer goes on.
    token_a.cancel();
    let s = run_a.await.expect("join").expect("run A");
    assert!(
        s.changes > 0,
        "A processed something before the split: {s:?}"
    );
    let (plan, forced) = prepare_split(&db.pg, &a, &[SplitTarget::new(b.as_str())], false)
        .await
        .expect("A stopped cleanly, so the split is allowed");
    assert!(forced.is_empty());
    apply_split(&db.pg, &plan).await.expect("split");
    assert_eq!(rows_of(&db.pg, &b).await, rows_of(&db.pg, &a).await);

    // Phase 2: A with only P1, B with only P2.
    let (token_a, run_a) = spawn(mission_pillow(
        &bootstrap,
        &db.pg,
        &a,
        &topic.name,
        vec![Box::new(p1.clone())],
    ));
    let (token_b, run_b) = spawn(mission_pillow(
        &bootstrap,
        &db.pg,
        &b,
        &topic.name,
        vec![Box::new(Slow(p2.clone(), Duration::from_millis(5)))],
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.expect("producer");
    let total = produced.load(Ordering::Relaxed);

    // Wait until both checkpoints reach the high-water marks, then stop both.
    let kafka = KafkaInfo::new(&bootstrap).expect("kafka");
    let parts = kafka
        .partitions(std::slice::from_ref(&topic.name))
        .await
        .expect("partitions");
    let hwm: BTreeMap<(String, i32), i64> = kafka
        .watermarks(&parts)
        .await
        .expect("watermarks")
        .into_iter()
        .map(|(tp, w)| ((tp.topic, tp.partition), w.high))
        .collect();
    assert_eq!(
        u64::try_from(hwm.values().sum::<i64>()).expect("positive"),
        total
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_of(&db.pg, &a).await != hwm || rows_of(&db.pg, &b).await != hwm {
        assert!(Instant::now() < deadline, "A and B did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    token_a.cancel();
    token_b.cancel();
    run_a.await.expect("join").expect("run A again");
    run_b.await.expect("join").expect("run B");

    // Every change reached P1 and P2 at least once; none was skipped; duplicates stay within
    // the checkpoint window (one window per restart of each processor).
    let window = u64::try_from(CHUNK).expect("small") + CHECKPOINT_EVERY;
    for (name, p) in [("P1", &p1), ("P2", &p2)] {
        let seen = seen(p);
        for ((_, part), high) in &hwm {
            for off in 0..*high {
                assert!(
                    seen.contains_key(&(*part, off)),
                    "{name} skipped partition {part} offset {off}"
                );
            }
        }
        let dups: u64 = seen.values().map(|n| u64::from(n - 1)).sum();
        assert!(
            dups <= window,
            "{name}: {dups} duplicates exceed the checkpoint window {window}"
        );
        eprintln!("mission: {name} saw all {total} changes, {dups} duplicates (bound {window})");
    }
}

// ---------------------------------------------------------------------------------------------
// The `pillowtop` binary: prompts, exit codes, printed plans.

/// Runs the CLI with `args`, feeding `stdin`; returns (exit code, stdout, stderr).
fn cli(url: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args(args)
        .env("PILLOWTOP_POSTGRES_URL", url)
        .env("PILLOWTOP_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pillowtop");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_reads_only_its_own_flags_and_environment_never_the_test_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args(["split", "a", "b", "--noinput"])
        .env_remove("PILLOWTOP_POSTGRES_URL")
        .env("TEST_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
        .output()
        .expect("run pillowtop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("no PostgreSQL URL: pass --postgres-url or set PILLOWTOP_POSTGRES_URL"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_split_prompts_and_exit_codes() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let (a, b) = (db.id("cli_a"), db.id("cli_b"));
    put(&db.pg, &a, &[("form", 0, 10), ("form", 1, 20)]).await;
    put(&db.pg, &b, &[("form", 0, 3)]).await;

    let (code, out, _) = cli(&url, &["split", &a, &b], "n\n");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("Some of ['{b}'] already exist:")),
        "{out}"
    );
    assert!(out.contains("Do you want to continue and overwrite existing checkpoints? [y/n]"));
    assert!(!out.contains("Are you sure"));
    let (code, out, _) = cli(&url, &["split", &a, &b], "y\nno\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Are you sure you want to DELETE existing checkpoints? [y/n]"));
    assert_eq!(
        rows_of(&db.pg, &b).await,
        m(&[("form", 0, 3)]),
        "declined: nothing written"
    );

    let (code, out, _) = cli(&url, &["split", &a, &b, "--dry-run"], "");
    assert_eq!(code, 0);
    assert!(out.contains("dry run: nothing was written"), "{out}");
    assert!(
        out.contains("form   0          10"),
        "the plan lists each partition:\n{out}"
    );
    assert_eq!(rows_of(&db.pg, &b).await, m(&[("form", 0, 3)]));

    let (code, out, err) = cli(
        &url,
        &[
            "split",
            &a,
            &b,
            "--json",
            "--dry-run",
            "--target-topics",
            "form,form-meta",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON plan");
    assert_eq!(plan["rows"].as_array().map(Vec::len), Some(2));
    assert_eq!(plan["target_only_topics"][0]["topics"][0], "form-meta");
    assert!(err.contains("warning:"), "{err}");

    let (code, out, _) = cli(&url, &["split", &a, &b], "y\ny\n");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        rows_of(&db.pg, &b).await,
        m(&[("form", 0, 10), ("form", 1, 20)])
    );

    // A running source: refused (4) unless --force.
    PostgresLivenessStore::new(db.pg.clone())
        .register(&a, &a, &Layout::single(), &[])
        .await
        .expect("register");
    let (code, _, err) = cli(&url, &["split", &a, &b, "--noinput"], "");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("is running"), "{err}");
    assert!(err.contains("last heartbeat 0 s ago"), "{err}");
    // A dry run changes nothing: allowed while the source runs, with a note.
    put(&db.pg, &a, &[("form", 0, 11)]).await;
    let (code, out, err) = cli(&url, &["split", &a, &b, "--dry-run"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        format!("{out}{err}").contains("applying this would be refused"),
        "{out}{err}"
    );
    assert_eq!(
        rows_of(&db.pg, &b).await,
        m(&[("form", 0, 10), ("form", 1, 20)]),
        "the dry run wrote nothing"
    );
    let (code, out, _) = cli(&url, &["split", &a, &b, "--noinput", "--force"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("proceeding because of --force"), "{out}");
    PostgresLivenessStore::new(db.pg.clone())
        .unregister(&a, 0)
        .await
        .expect("unregister");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_split_of_one_processor_hands_its_own_position_over() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let (a, b) = (db.id("clip_a"), db.id("clip_b"));
    let lane = pillowtop::store::checkpoints::processor_checkpoint_id(&a, "slow");
    // The pillow's rows are the minimum of its processors'; "slow" has its own row for
    // partition 0 only (its partition 1 comes from the pillow's).
    put(&db.pg, &a, &[("form", 0, 5), ("form", 1, 9)]).await;
    put(&db.pg, &lane, &[("form", 0, 6)]).await;

    let (code, _, err) = cli(&url, &["split", &a, &b, "--online"], "");
    assert_eq!(code, 2, "--online needs --processor: {err}");
    assert!(err.contains("--processor"), "{err}");

    let (code, out, err) = cli(
        &url,
        &["split", &a, &b, "--processor", "slow", "--dry-run"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "split processor slow out of {a} into {b}: {a} is stopped"
        )),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was written"), "{out}");
    assert!(
        rows_of(&db.pg, &b).await.is_empty(),
        "the dry run wrote nothing"
    );

    // A live process that never takes the request up (not a pillow): --online times out,
    // withdraws its request and changes nothing.
    let live = PostgresLivenessStore::new(db.pg.clone());
    live.register(&a, &a, &Layout::single(), &[])
        .await
        .expect("register");
    let (code, _, err) = cli(
        &url,
        &["split", &a, &b, "--processor", "slow", "--noinput"],
        "",
    );
    assert_eq!(code, 4, "offline with a live source: refused: {err}");
    assert!(err.contains("is running"), "{err}");
    let (code, _, err) = cli(
        &url,
        &[
            "split",
            &a,
            &b,
            "--processor",
            "slow",
            "--online",
            "--timeout",
            "1",
            "--noinput",
        ],
        "",
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!(
            "processor slow of {a} was not handed over to {b}: no live process of {a} took the request up within 1 s"
        )),
        "{err}"
    );
    assert!(rows_of(&db.pg, &b).await.is_empty());
    assert!(
        pillowtop::store::handover::load(&db.pg, Some(&a))
            .await
            .expect("load")
            .is_empty(),
        "the request was withdrawn"
    );
    // Ctrl-C ends the wait long before the timeout, and withdraws the request the same way.
    let child = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args([
            "split",
            &a,
            &b,
            "--processor",
            "slow",
            "--online",
            "--timeout",
            "120",
            "--noinput",
        ])
        .env("PILLOWTOP_POSTGRES_URL", &url)
        .env("PILLOWTOP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pillowtop");
    let started = std::time::Instant::now();
    // Once the request is recorded, the command is waiting.
    while pillowtop::store::handover::load(&db.pg, Some(&a))
        .await
        .expect("load")
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no request recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sigint = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sigint.success());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "Ctrl-C did not end the wait"
    );
    assert!(
        err.contains("interrupted after")
            && err.contains("the request was withdrawn and nothing changed"),
        "{err}"
    );
    assert!(pillowtop::store::handover::load(&db.pg, Some(&a))
        .await
        .expect("load")
        .is_empty());
    assert!(rows_of(&db.pg, &b).await.is_empty());
    live.unregister(&a, 0).await.expect("unregister");

    // Stopped: handed over directly, the processor's own row winning over the pillow's.
    let (code, out, err) = cli(
        &url,
        &[
            "split",
            &a,
            &b,
            "--processor",
            "slow",
            "--noinput",
            "--json",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON plan");
    assert_eq!(plan["processor"], "slow", "{out}");
    assert_eq!(plan["position"].as_array().map(Vec::len), Some(2), "{out}");
    assert!(
        err.contains(&format!(
            "processor slow of {a} now belongs to {b}: 2 partitions handed over"
        )),
        "{err}"
    );
    assert_eq!(
        rows_of(&db.pg, &b).await,
        m(&[("form", 0, 6), ("form", 1, 9)])
    );
    assert!(
        rows_of(&db.pg, &lane).await.is_empty(),
        "the lane's rows moved"
    );
    assert_eq!(
        rows_of(&db.pg, &a).await,
        m(&[("form", 0, 5), ("form", 1, 9)]),
        "the pillow's rows are untouched"
    );
    let h = pillowtop::store::handover::load(&db.pg, Some(&a))
        .await
        .expect("load");
    assert_eq!(h.len(), 1, "the source remembers to skip the processor");
    assert_eq!(
        (h[0].processor.as_str(), h[0].target.as_str()),
        ("slow", b.as_str())
    );
    assert_eq!(h[0].done.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_merge_of_a_split_processor_takes_it_back_with_the_lower_position() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let (a, b) = (db.id("clipm_a"), db.id("clipm_b"));
    let lane = pillowtop::store::checkpoints::processor_checkpoint_id(&a, "slow");
    put(&db.pg, &a, &[("form", 0, 5), ("form", 1, 9)]).await;
    let (code, _, err) = cli(
        &url,
        &["split", &a, &b, "--processor", "slow", "--noinput"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    // Both ran on: the pillow is ahead on partition 0, behind on partition 1.
    put(&db.pg, &a, &[("form", 0, 30), ("form", 1, 8)]).await;
    put(&db.pg, &b, &[("form", 0, 20), ("form", 1, 12)]).await;

    let (code, _, err) = cli(
        &url,
        &["merge", &b, &a, "--processor", "fast", "--noinput"],
        "",
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!("processor fast was not split out of {a}")),
        "{err}"
    );
    let (code, _, err) = cli(
        &url,
        &["merge", &a, &b, "--processor", "slow", "--noinput"],
        "",
    );
    assert_eq!(code, 4, "the wrong way round: {err}");
    let (code, _, err) = cli(&url, &["merge", &b, &a, "--online"], "");
    assert_eq!(code, 2, "--online needs --processor: {err}");

    let (code, out, err) = cli(
        &url,
        &["merge", &b, &a, "--processor", "slow", "--dry-run"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "merge processor slow of {b} back into {a}, which it was split out of:"
        )),
        "{out}"
    );
    assert!(out.contains("one shared checkpoint"), "{out}");
    // The partition table: processor, pillow, merged, reprocess.
    let table_row = |p: &str| {
        out.lines()
            .find(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["form", p])
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(table_row("0").as_deref(), Some("20 30 20 10"), "{out}");
    assert_eq!(table_row("1").as_deref(), Some("12 8 8 0"), "{out}");

    // The reprocessing question declined: exit 3, nothing changed.
    let (code, _, err) = cli(&url, &["merge", &b, &a, "--processor", "slow"], "n\n");
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        rows_of(&db.pg, &a).await,
        m(&[("form", 0, 30), ("form", 1, 8)])
    );
    assert!(pillowtop::store::handover::load(&db.pg, Some(&b))
        .await
        .expect("load")
        .is_empty());

    // Applied with both stopped: handed back and taken back directly.
    let (code, out, err) = cli(
        &url,
        &["merge", &b, &a, "--processor", "slow", "--noinput"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "processor slow runs in {a} again: 2 partitions taken back from {b}"
        )),
        "{out}"
    );
    assert_eq!(
        rows_of(&db.pg, &a).await,
        m(&[("form", 0, 20), ("form", 1, 8)]),
        "the lower of the pillow's rows and the processor's"
    );
    assert!(
        rows_of(&db.pg, &lane).await.is_empty(),
        "one shared checkpoint: no lane rows left"
    );
    assert!(
        pillowtop::store::handover::load(&db.pg, Some(&a))
            .await
            .expect("load")
            .is_empty(),
        "the split's record is gone: the pillow runs slow again"
    );
    let back = pillowtop::store::handover::load(&db.pg, Some(&b))
        .await
        .expect("load");
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(
        back[0].kind,
        pillowtop::store::handover::HandoverKind::Merge
    );
    assert_eq!(
        (back[0].processor.as_str(), back[0].target.as_str()),
        ("slow", lane.as_str())
    );

    // Split again into the same pillow: the record of the merge goes, so it runs slow again.
    let (code, _, err) = cli(
        &url,
        &[
            "split",
            &a,
            &b,
            "--processor",
            "slow",
            "--noinput",
            "--force",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(pillowtop::store::handover::load(&db.pg, Some(&b))
        .await
        .expect("load")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_merge_prompts_and_exit_codes() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let (a, b, t) = (db.id("clim_a"), db.id("clim_b"), db.id("clim_t"));
    put(&db.pg, &a, &[("case", 0, 100), ("case", 1, 50)]).await;
    put(&db.pg, &b, &[("case", 0, 80)]).await;

    // Inconsistent sources: 2, naming the partitions, nothing written.
    let (code, _, err) = cli(&url, &["merge", &a, &b, &t, "--noinput"], "");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "checkpoint {b} lacks partitions [1] of topic case"
        )),
        "{err}"
    );
    assert!(rows_of(&db.pg, &t).await.is_empty());

    // Empty source list: an error (4) before anything is deleted.
    put(&db.pg, &t, &[("case", 0, 1)]).await;
    let (code, _, err) = cli(&url, &["merge", &t], "");
    assert_eq!(code, 4, "{err}");
    assert_eq!(rows_of(&db.pg, &t).await, m(&[("case", 0, 1)]));

    put(&db.pg, &b, &[("case", 1, 70)]).await;
    // Existing target, declined: 1.
    let (code, out, _) = cli(&url, &["merge", &a, &b, &t], "n\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{t} already exists:")), "{out}");
    // Reprocessing declined (anything but y): 3.
    let (code, out, _) = cli(&url, &["merge", &a, &b, &t], "y\ny\nN\n");
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("At least one checkpoint will need to reprocess 20 changes"),
        "{out}"
    );
    assert!(out.contains("Is this amount of reprocessing acceptable y/N?"));
    assert_eq!(rows_of(&db.pg, &t).await, m(&[("case", 0, 1)]));
    // y proceeds (CommCare's inverted answer fixed).
    let (code, out, _) = cli(&url, &["merge", &a, &b, &t], "y\ny\ny\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{t} checkpoints created")), "{out}");
    assert_eq!(
        rows_of(&db.pg, &t).await,
        m(&[("case", 0, 80), ("case", 1, 50)])
    );
    let (code, _, _) = cli(&url, &["merge", "--help"], "");
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_reset_validate_add_partitions_and_assignments() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "cli_misc", 2).await;
    let t = topic.name.as_str();
    let id = db.id("cli_misc");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for i in 0..6 {
        let body = ChangeMeta::new(format!("d{i}"), "sql", "x").to_json();
        producer
            .send_raw(t, Some(0), Some("k"), body.as_bytes())
            .await
            .expect("send");
    }
    put(&db.pg, &id, &[(t, 0, 1)]).await;
    let with_kafka = |args: &[&str], stdin: &str| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--kafka", bootstrap.as_str()]);
        cli(&url, &v, stdin)
    };

    let (code, out, _) = with_kafka(&["reset", &id, "--latest"], "no\n");
    assert_eq!(code, 1, "{out}");
    let (code, out, err) = with_kafka(&["reset", &id, "--latest", "--noinput"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rows_of(&db.pg, &id).await, m(&[(t, 0, 6)]));

    KafkaAdmin::new(&bootstrap)
        .expect("admin")
        .delete_records(&TopicPartition::new(t, 0), 4)
        .await
        .expect("delete");
    put(&db.pg, &id, &[(t, 0, 2)]).await;
    let (code, out, _) = with_kafka(&["validate", &id], "");
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains(&format!(
            "checkpoint {id}: First available topic offset for {t}:0 is 4 but needed 2."
        )),
        "{out}"
    );
    assert_eq!(with_kafka(&["validate", &id, "--print-only"], "").0, 0);
    let (code, out, _) = with_kafka(&["status", &id], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(no live process)"), "{out}");
    assert!(out.contains("since checkpoint  time lag  owner"), "{out}");

    // add-partitions aborts unless answered y / yes.
    put(&db.pg, &id, &[(t, 0, 4)]).await;
    let (code, out, _) = with_kafka(&["add-partitions", t, "2"], "y\nn\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("aborted"), "{out}");
    assert_eq!(rows_of(&db.pg, &id).await.len(), 1);
    let (code, out, _) = with_kafka(&["add-partitions", t, "2"], "yes\ny\n");
    assert_eq!(code, 0, "{out}");
    assert_eq!(rows_of(&db.pg, &id).await, m(&[(t, 0, 4), (t, 1, 0)]));

    let (code, out, _) = cli(
        &url,
        &[
            "assignments",
            "3",
            "--dedicated",
            "--topics",
            "case-sql",
            "--partitions",
            "4",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("(dedicated migration process: no partitions)"),
        "{out}"
    );
    assert!(out.contains("case-sql,0 case-sql,2"), "{out}");
    let (code, _, err) = cli(
        &url,
        &[
            "assignments",
            "1",
            "--dedicated",
            "--topics",
            "t",
            "--partitions",
            "2",
        ],
        "",
    );
    assert_eq!(code, 4, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_lag_serves_commcare_gauges_in_prometheus_format() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "cli_lag", 1).await;
    let id = db.id("cli_lag");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for i in 0..5 {
        let body = ChangeMeta::new(format!("d{i}"), "sql", "x").to_json();
        producer
            .send_raw(&topic.name, Some(0), Some("k"), body.as_bytes())
            .await
            .expect("send");
    }
    put(&db.pg, &id, &[(&topic.name, 0, 2)]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args(["lag", &id, "--interval", "1", "--rounds", "30"])
        .args(["--metrics-port", &port.to_string(), "--kafka", &bootstrap])
        .env("PILLOWTOP_POSTGRES_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).await.ok()?;
            body.contains("need_processing").then_some(body)
        };
        if let Some(b) = attempt.await {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics served on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let series = format!(
        "commcare_change_feed_need_processing{{feed_type=\"kafka\",pillow_name=\"{id}\",topic=\"{}-0\"}} 3",
        topic.name
    );
    assert!(body.contains(&series), "{body}");
    assert!(
        body.contains("commcare_change_feed_seconds_since_last_update{"),
        "{body}"
    );
}
