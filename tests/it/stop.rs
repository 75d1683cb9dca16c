//! Stop means stop (reliability issue, item 8): every wait for a service ends on the first stop
//! request, and a stop during an outage loses nothing. Pillows are assembled through
//! `PillowSpec`, as `pillowtop run` and the Python front assemble theirs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pillowtop::assembly::{PillowSpec, ProcessorSpec};
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeedOptions};
use pillowtop::pillow::{PillowConfig, RunSummary, StopReason};
use pillowtop::processor::memory::RecordingProcessor;
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};
use crate::tcp_proxy::TcpProxy;

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

fn spec(
    name: &str,
    topic: &str,
    kafka: &str,
    postgres: &str,
    processor: &RecordingProcessor,
) -> PillowSpec {
    let mut config = PillowConfig::new(name, name);
    config.checkpoint_frequency = 10;
    let mut feed = KafkaFeedOptions::new(kafka, name);
    feed.idle_timeout = Duration::from_millis(300);
    PillowSpec {
        config,
        topics: vec![topic.to_owned()],
        feed,
        postgres_url: postgres.to_owned(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![ProcessorSpec::Ready(Box::new(processor.clone()))],
        document_stores: Vec::new(),
    }
}

/// Runs `spec`, cancels its token `after`, and returns the result and how long the run took
/// from the stop request on.
async fn stop_after(
    spec: PillowSpec,
    after: Duration,
) -> (pillowtop::Result<RunSummary>, Duration) {
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    let requested = tokio::spawn(async move {
        tokio::time::sleep(after).await;
        stopper.cancel();
        Instant::now()
    });
    let result = tokio::time::timeout(Duration::from_secs(60), spec.run(&stop, |p| p))
        .await
        .expect("the run did not end within 60 s of its start");
    let requested = requested.await.expect("stopper");
    (result, requested.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_ends_the_start_up_wait_for_an_unreachable_postgres() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "stop-nopg", 1).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        closed_port().await
    );
    let p = RecordingProcessor::new("rec", true);
    let s = spec(
        &pillowtop::testing::unique_name("stop-nopg"),
        &topic.name,
        &bootstrap,
        &url,
        &p,
    );
    // PostgreSQL is waited for (5 minutes by default) while the tables are created.
    let (result, after_stop) = stop_after(s, Duration::from_millis(1500)).await;
    let summary = result.expect("a requested stop is not a failure");
    assert_eq!(summary.stop_reason, StopReason::Shutdown);
    assert_eq!(summary.changes, 0);
    assert!(
        after_stop < Duration::from_secs(2),
        "took {after_stop:?} after the stop request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_ends_the_wait_for_an_unreachable_broker() {
    let pg_url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&pg_url).await;
    let name = db.id("stop-nokafka");
    let kafka = format!("127.0.0.1:{}", closed_port().await);
    let p = RecordingProcessor::new("rec", true);
    // Reading the topic's metadata waits up to 30 s for a broker.
    let (result, after_stop) = stop_after(
        spec(&name, "case-sql", &kafka, &pg_url, &p),
        Duration::from_millis(1500),
    )
    .await;
    let summary = result.expect("a requested stop is not a failure");
    assert_eq!(summary.stop_reason, StopReason::Shutdown);
    assert!(
        after_stop < Duration::from_secs(2),
        "took {after_stop:?} after the stop request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_postgres_outage_ends_the_wait_and_loses_nothing() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let pg_url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&pg_url).await;
    let topic = TestTopic::new(&bootstrap, "stop-outage", 2).await;
    const N: u32 = 300;
    ChangeProducer::new(&bootstrap)
        .expect("producer")
        .send_changes(
            &topic.name,
            (0..N).map(|i| ChangeMeta::new(format!("doc-{i}"), "sql", "form-sql")),
        )
        .await
        .expect("publish");
    let (proxy, proxied) = TcpProxy::for_url(&pg_url).await;
    let name = db.id("stop-outage");

    // The first run: PostgreSQL (checkpoints, error rows, liveness) goes away after 50 changes;
    // three seconds into the outage (the pillow is waiting for it) the stop is requested.
    let first = RecordingProcessor::new("rec", true);
    first.fail_ids.lock().expect("lock").insert("doc-7".into()); // an error row to record too
    let recorded = first.recorded.clone();
    let stop = CancellationToken::new();
    let run = spec(&name, &topic.name, &bootstrap, &proxied, &first).run(&stop, |p| p);
    let control = async {
        while recorded.lock().expect("lock").processed.len() < 50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        Instant::now()
    };
    let (result, requested) = tokio::join!(
        async { tokio::time::timeout(Duration::from_secs(60), run).await },
        control
    );
    let after_stop = requested.elapsed();
    let summary = result
        .expect("the run did not end within 60 s")
        .expect("a requested stop during an outage is not a failure");
    assert_eq!(summary.stop_reason, StopReason::Shutdown);
    assert!(
        after_stop < Duration::from_secs(3),
        "took {after_stop:?} after the stop request"
    );
    proxy.restore();

    // The second run, PostgreSQL back: from the last checkpoint that was written, to the end.
    let second = RecordingProcessor::new("rec", true);
    let mut s = spec(&name, &topic.name, &bootstrap, &pg_url, &second);
    s.config.until_idle = true;
    let summary2 = s
        .run(&CancellationToken::new(), |p| p)
        .await
        .expect("second run");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for r in [&first, &second] {
        seen.extend(
            r.recorded
                .lock()
                .expect("lock")
                .processed
                .iter()
                .map(|p| p.0.clone()),
        );
    }
    let failed_once = seen.contains("doc-7") || summary2.failed > 0 || summary.failed > 0;
    let expected: BTreeSet<String> = (0..N)
        .map(|i| format!("doc-{i}"))
        .filter(|d| d != "doc-7")
        .collect();
    let lost: Vec<_> = expected.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "lost {} changes: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(failed_once, "doc-7 failed in one of the runs");
    eprintln!(
        "stop during a postgres outage: first run {} changes, stopped {after_stop:?} after the request; second run {} changes",
        summary.changes, summary2.changes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_is_named_with_the_setting_it_came_from() {
    use pillowtop::feed::kafka::KafkaFeed;
    use pillowtop::feed::ChangeFeed;
    let port = closed_port().await;
    let mut options = KafkaFeedOptions::new(format!("127.0.0.1:{port}"), "it-unreachable");
    options.bootstrap_setting = Some("settings.KAFKA_BROKERS".into());
    let mut feed = KafkaFeed::new(&["case-sql".to_owned()], options).expect("feed");
    // librdkafka gives up on the metadata after 30 s.
    let e = feed.partitions().await.expect_err("no broker");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "kafka at 127.0.0.1:{port} (from settings.KAFKA_BROKERS)"
        )),
        "{text}"
    );
}
