//! Per-processor retry (issue 14, item 1): with independent processors an error row names the
//! processor that failed, and the retry queue's re-published change runs only the processors
//! that failed on it; a pillow with one shared checkpoint keeps CommCare's retry (every
//! processor runs the change again). Against the real broker and PostgreSQL, with the retry
//! queue's own steps (re-publish the row's metadata with `publish_timestamp = now`, delete the
//! rows of the document).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use pillowtop::assembly::{PillowSpec, ProcessorSpec};
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeedOptions};
use pillowtop::pillow::{PillowConfig, ProcessorCheckpoints};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::store::errors::{ErrorStore, FailedProcessor};
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};

/// How many times each document reached `p` successfully.
fn counts(p: &RecordingProcessor) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (id, ..) in &p.recorded.lock().expect("lock").processed {
        *out.entry(id.clone()).or_default() += 1;
    }
    out
}

/// Runs a pillow of `good` and `flaky` over `topic` until it is idle.
async fn run_until_idle(
    db: &TestDb,
    bootstrap: &str,
    topic: &str,
    id: &str,
    mode: ProcessorCheckpoints,
    good: &RecordingProcessor,
    flaky: &RecordingProcessor,
) {
    let mut config = PillowConfig::new(id, id);
    config.chunk_size = 10;
    config.checkpoint_frequency = 10;
    config.until_idle = true;
    config.processor_checkpoints = mode;
    let mut feed = KafkaFeedOptions::new(bootstrap, id);
    feed.idle_timeout = Duration::from_millis(500);
    let spec = PillowSpec {
        config,
        topics: vec![topic.to_owned()],
        feed,
        postgres_url: db.url.clone(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![
            ProcessorSpec::Ready(Box::new(good.clone())),
            ProcessorSpec::Ready(Box::new(flaky.clone())),
        ],
        document_stores: Vec::new(),
    };
    let stop = CancellationToken::new();
    let run = async {
        match mode {
            ProcessorCheckpoints::Independent => {
                let mut p = spec.build_independent(&stop, &mut |p| p).await?;
                p.run(&stop).await.map(|s| s.combined())
            }
            ProcessorCheckpoints::Shared => spec.build(&stop).await?.run(&stop).await,
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the pillow reaches the end of the topic")
        .expect("pillow run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_runs_only_the_processors_that_failed_with_independent_processors() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "lanes-retry", 2).await;
    let independent = db.id("retry-ind");
    let shared = db.id("retry-shared");
    let doc = |i: usize| format!("{independent}-d{i}");
    let failing: Vec<String> = [3, 50, 120].iter().map(|i| doc(*i)).collect();
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    producer
        .send_changes(
            &topic.name,
            (0..200).map(|i| ChangeMeta::new(doc(i), "sql", "form-sql")),
        )
        .await
        .expect("publish");

    // Two pillows on the topic: `flaky` fails on three documents in both.
    let pair = || {
        let good = RecordingProcessor::new("good", true);
        let flaky = RecordingProcessor::new("flaky", true);
        flaky
            .fail_ids
            .lock()
            .expect("lock")
            .extend(failing.iter().cloned());
        (good, flaky)
    };
    let (ind_good, ind_flaky) = pair();
    let (sh_good, sh_flaky) = pair();
    use ProcessorCheckpoints::{Independent, Shared};
    // Both pillows, one after the other, to the end of the topic.
    let run_both = || async {
        run_until_idle(
            &db,
            &bootstrap,
            &topic.name,
            &independent,
            Independent,
            &ind_good,
            &ind_flaky,
        )
        .await;
        run_until_idle(
            &db,
            &bootstrap,
            &topic.name,
            &shared,
            Shared,
            &sh_good,
            &sh_flaky,
        )
        .await;
    };
    run_both().await;

    // The rows: CommCare's one row per (document, pillow) in both modes; with independent
    // processors the row names the processor and the failure is kept per processor.
    let errors = PostgresErrorStore::new(db.pg.clone());
    let ind_rows = errors.list(&independent).await.expect("rows");
    let sh_rows = errors.list(&shared).await.expect("rows");
    let ids = |rows: &[pillowtop::store::errors::PillowErrorRow]| {
        rows.iter().map(|r| r.doc_id.clone()).collect::<Vec<_>>()
    };
    let mut sorted = failing.clone();
    sorted.sort();
    assert_eq!(ids(&ind_rows), sorted);
    assert_eq!(ids(&sh_rows), sorted);
    for r in &ind_rows {
        let tb = r.error_traceback.as_deref().unwrap_or_default();
        assert!(
            tb.starts_with(&format!("in processor flaky of pillow {independent}")),
            "the row names the processor: {tb}"
        );
        assert!(
            tb.contains("flaky fails on"),
            "the processor's own error follows: {tb}"
        );
    }
    for r in &sh_rows {
        let tb = r.error_traceback.as_deref().unwrap_or_default();
        assert!(
            !tb.contains("in processor"),
            "shared mode keeps CommCare's row: {tb}"
        );
    }
    let failed = errors
        .failed_processors(&independent, None)
        .await
        .expect("failed processors");
    let expected: Vec<FailedProcessor> = sorted
        .iter()
        .map(|d| FailedProcessor {
            doc_id: d.clone(),
            processor: "flaky".into(),
            attempts: 1,
        })
        .collect();
    assert_eq!(failed, expected);
    assert!(errors
        .failed_processors(&shared, None)
        .await
        .expect("failed processors")
        .is_empty());

    // The retry queue: each document's metadata re-published once (from the independent
    // pillow's row), with publish_timestamp = now, and the rows of the document deleted, as
    // CommCare's `process_pillow_retry` does. `flaky` works now. A new change of one of the
    // documents goes just before its retry, into the same chunk: de-duplication keeps the
    // retry, so a retry skipped after it would hide the new change.
    ind_flaky.fail_ids.lock().expect("lock").clear();
    sh_flaky.fail_ids.lock().expect("lock").clear();
    let retries: Vec<ChangeMeta> = ind_rows
        .iter()
        .map(|r| {
            let mut m: ChangeMeta =
                serde_json::from_value(r.change_metadata.clone().expect("metadata"))
                    .expect("the row's metadata is a change");
            assert_eq!(
                m.attempts, 1,
                "the re-published metadata carries the attempt"
            );
            m.publish_timestamp = Some(Utc::now());
            m
        })
        .collect();
    producer
        .send_change(&topic.name, &ChangeMeta::new(doc(120), "sql", "form-sql"))
        .await
        .expect("publish");
    for m in &retries {
        producer
            .send_change(&topic.name, m)
            .await
            .expect("re-publish");
    }
    let deleted = db
        .pg
        .fresh_client()
        .await
        .expect("client")
        .execute(
            "DELETE FROM pillow_retry_pillowerror WHERE doc_id = ANY($1) AND pillow = ANY($2)",
            &[&failing, &vec![independent.clone(), shared.clone()]],
        )
        .await
        .expect("delete the rows");
    assert_eq!(deleted, 6);

    run_both().await;

    let (ig, ifl, sg, sf) = (
        counts(&ind_good),
        counts(&ind_flaky),
        counts(&sh_good),
        counts(&sh_flaky),
    );
    for i in 0..200 {
        let d = doc(i);
        assert!(ig.get(&d).copied().unwrap_or(0) >= 1, "{d} reached good");
        assert!(ifl.get(&d).copied().unwrap_or(0) >= 1, "{d} reached flaky");
    }
    // Independent: the retries ran on flaky only; good saw d3 and d50 once, d120 twice (the
    // original and the new change, for which the skipped retry did not stand in).
    assert_eq!(ig[&doc(3)], 1, "good did not run the retry of d3");
    assert_eq!(ig[&doc(50)], 1, "good did not run the retry of d50");
    assert_eq!(
        ig[&doc(120)],
        2,
        "good ran the new change of d120 before its retry"
    );
    assert_eq!(
        ifl[&doc(3)],
        1,
        "flaky ran the retry of d3 (its first pass failed)"
    );
    assert_eq!(ifl[&doc(50)], 1, "flaky ran the retry of d50");
    // Shared (CommCare's model): every processor runs the retry.
    assert_eq!(sg[&doc(3)], 2, "shared: good ran the retry of d3 too");
    assert_eq!(sg[&doc(50)], 2, "shared: good ran the retry of d50 too");
    assert_eq!(sf[&doc(3)], 1, "shared: flaky ran the retry of d3");
    // Nothing failed the second time; the old failures stay until they are old enough.
    assert!(errors.list(&independent).await.expect("rows").is_empty());
    assert_eq!(
        errors
            .forget_failed_processors(&independent, Duration::from_secs(3600))
            .await
            .expect("forget"),
        0,
        "recent failures are kept"
    );
    assert_eq!(
        errors
            .forget_failed_processors(&independent, Duration::ZERO)
            .await
            .expect("forget"),
        3,
        "failures whose error rows are gone are forgotten once old enough"
    );
}
