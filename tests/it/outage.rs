//! The fault suite's PostgreSQL outage (reliability issue, item 9): PostgreSQL, the checkpoint
//! store, the error store and the reporting table alike, goes away under a running pillow and
//! comes back. The pillow keeps running (a warning per attempt), nothing is lost: every change
//! is in the table or, when its chunk failed during the outage, an error row for the retry
//! queue, as CommCare does; the checkpoint reaches the high-water mark. CI size: 5 s;
//! `PILLOWTOP_PG_OUTAGE_SECS=30` for the issue's size.

use std::collections::BTreeMap;
use std::time::Duration;

use pillowtop::assembly::{PillowSpec, ProcessorSpec, DEFAULT_POSTGRES_OUTAGE_BUDGET};
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeedOptions};
use pillowtop::pillow::{PillowConfig, StopReason};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::postgres::TableDefinition;
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};
use crate::tcp_proxy::TcpProxy;

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_under_a_running_pillow_is_waited_out_and_loses_nothing() {
    pillowtop::telemetry::init();
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let pg_url = require!("TEST_POSTGRES_URL");
    let outage = Duration::from_secs(
        std::env::var("PILLOWTOP_PG_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let db = TestDb::new(&pg_url).await;
    let topic = TestTopic::new(&bootstrap, "pg-outage", 4).await;
    const N: usize = 3000;
    ChangeProducer::new(&bootstrap)
        .expect("producer")
        .send_changes(
            &topic.name,
            (0..N).map(|i| {
                let mut m = ChangeMeta::new(format!("doc-{i}"), "sql", "form-sql");
                m.extra
                    .insert("document".into(), serde_json::json!({"n": i}));
                m
            }),
        )
        .await
        .expect("publish");
    let name = db.id("pg-outage");
    let table = name.to_lowercase();
    let def: TableDefinition = serde_json::from_value(serde_json::json!({
        "table": table,
        "primary_key": ["doc_id"],
        "columns": [
            {"name": "doc_id", "type": "text", "change": "id"},
            {"name": "n", "type": "bigint", "path": "n"},
        ],
    }))
    .expect("table");

    // Everything the pillow writes goes through the proxy.
    let (proxy, proxied) = TcpProxy::for_url(&pg_url).await;
    let audit = RecordingProcessor::new("audit", true);
    let mut config = PillowConfig::new(&name, &name);
    config.checkpoint_frequency = 100;
    config.until_idle = true;
    let mut feed = KafkaFeedOptions::new(&bootstrap, &name);
    feed.idle_timeout = Duration::from_millis(500);
    let spec = PillowSpec {
        config,
        topics: vec![topic.name.clone()],
        feed,
        postgres_url: proxied.clone(),
        postgres_outage_budget: DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![
            ProcessorSpec::PostgresTable(def),
            ProcessorSpec::Ready(Box::new(audit.clone())),
        ],
        document_stores: Vec::new(),
    };
    let recorded = audit.recorded.clone();
    let control = async {
        while recorded.lock().expect("lock").processed.len() < 300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.cut();
        tokio::time::sleep(outage).await;
        proxy.restore();
    };
    let stop = CancellationToken::new();
    let (summary, ()) = tokio::join!(
        async {
            tokio::time::timeout(outage + Duration::from_secs(120), spec.run(&stop, |p| p)).await
        },
        control
    );
    let summary = summary
        .expect("the pillow did not finish within 2 minutes of the outage's end")
        .expect("the pillow waits out an outage of PostgreSQL");
    assert_eq!(summary.stop_reason, StopReason::Idle);

    let c = db.pg.fresh_client().await.expect("client");
    let in_table: Vec<String> = c
        .query(&format!("SELECT doc_id FROM \"{table}\""), &[])
        .await
        .expect("table")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let error_rows: Vec<String> = c
        .query(
            "SELECT doc_id FROM pillow_retry_pillowerror WHERE pillow = $1",
            &[&name],
        )
        .await
        .expect("error rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let checkpoint: i64 = c
        .query_one(
            r#"SELECT coalesce(sum("offset"), 0)::bigint FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1"#,
            &[&name],
        )
        .await
        .expect("checkpoint")
        .get(0);
    c.execute(&format!("DROP TABLE IF EXISTS \"{table}\""), &[])
        .await
        .expect("drop");
    c.execute(
        "DELETE FROM pillow_retry_pillowerror WHERE pillow = $1",
        &[&name],
    )
    .await
    .expect("cleanup");
    let mut handled: BTreeMap<String, usize> = BTreeMap::new();
    for id in in_table.iter().chain(&error_rows) {
        *handled.entry(id.clone()).or_default() += 1;
    }
    let lost: Vec<String> = (0..N)
        .map(|i| format!("doc-{i}"))
        .filter(|d| !handled.contains_key(d))
        .collect();
    let seen = recorded.lock().expect("lock").processed.len();
    eprintln!(
        "postgres outage of {outage:?}: {} rows, {} error rows, audit saw {seen}, checkpoint {checkpoint}, summary {summary:?}",
        in_table.len(),
        error_rows.len()
    );
    assert!(
        lost.is_empty(),
        "lost {}: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(
        checkpoint,
        i64::try_from(N).expect("n"),
        "checkpoint at the high-water mark"
    );
    assert_eq!(
        seen, N,
        "one run, one pass: every change seen once by the audit"
    );
}
