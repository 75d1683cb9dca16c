//! `pillowtop doctor` on a running pillow with CommCare's shared checkpoint: a processor 20×
//! slower than the other holds the pillow back; the doctor names it from the costs the
//! process's heartbeats report, and sizes the split.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use pillowtop::assembly::{PillowSpec, ProcessorSpec};
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeedOptions};
use pillowtop::ops::doctor::{self, Options, Verdict};
use pillowtop::pillow::PillowConfig;
use pillowtop::processor::memory::RecordingProcessor;
use tokio_util::sync::CancellationToken;

use crate::lanes::Slow;
use crate::support::{require, TestDb, TestTopic};

#[tokio::test(flavor = "multi_thread")]
async fn the_doctor_names_the_slow_processor_of_a_shared_pillow_from_its_heartbeats() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "doctor", 2).await;
    let id = db.id("doctor");
    // 20 ms per chunk of 10 for the slow processor: 5,000 changes take it about 10 s.
    let total = 5000;
    ChangeProducer::new(&bootstrap)
        .expect("producer")
        .send_changes(
            &topic.name,
            (0..total).map(|i| ChangeMeta::new(format!("d{i}"), "sql", "form-sql")),
        )
        .await
        .expect("publish");
    let mut config = PillowConfig::new(&id, &id);
    config.chunk_size = 10;
    config.checkpoint_frequency = 10;
    let feed = KafkaFeedOptions::new(&bootstrap, &id);
    let spec = PillowSpec {
        config,
        topics: vec![topic.name.clone()],
        feed,
        postgres_url: db.url.clone(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![
            ProcessorSpec::Ready(Box::new(RecordingProcessor::new("fast", true))),
            ProcessorSpec::Ready(Box::new(Slow {
                seen: Arc::new(AtomicUsize::new(0)),
            })),
        ],
        document_stores: Vec::new(),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let run = tokio::spawn(async move { spec.run(&token, |p| p).await });

    // Wait for the first checkpoint, then sample across a heartbeat (every 5 s).
    let kafka = pillowtop::ops::kafka::KafkaInfo::new(&bootstrap).expect("kafka");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pillowtop::ops::lag::collect(&db.pg, &kafka, Some(std::slice::from_ref(&id)))
        .await
        .expect("lag")
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let diag = doctor::examine(
        &db.pg,
        &kafka,
        &id,
        None,
        Duration::from_secs(6),
        // An operator who wants changes handled within a second.
        Options {
            max_time_lag: Duration::from_secs(1),
            ..Options::default()
        },
    )
    .await
    .expect("doctor");
    stop.cancel();
    run.await.expect("join").expect("the pillow stops cleanly");

    assert_eq!(diag.mode, "shared", "{diag:#?}");
    assert_eq!(diag.processes, 1, "{diag:#?}");
    assert_eq!(diag.verdict, Verdict::CatchingUp, "{diag:#?}");
    assert!(diag.backlog > 0 && diag.rate > 0.0, "{diag:#?}");
    assert_eq!(diag.holder.as_deref(), Some("slow"), "{diag:#?}");
    let slow = diag
        .processors
        .iter()
        .find(|p| p.processor == "slow")
        .expect("slow");
    // 2 ms per change against microseconds: nearly all the pillow's time.
    assert!(
        slow.seconds_per_change.is_some_and(|s| s > 0.0015) && slow.share.is_some_and(|s| s > 0.9),
        "{slow:#?}"
    );
    let split = diag.split.as_ref().expect("split advice");
    assert_eq!(split.processor, "slow");
    // Nothing is published during the sample: one process keeps up.
    assert_eq!(split.num_processes, 1, "{split:#?}");
    // Without the slow processor the other one catches up at once.
    assert!(
        split
            .others_catch_up_seconds
            .is_some_and(|t| t < diag.catch_up_seconds.unwrap_or(f64::MAX)),
        "{diag:#?}"
    );
    assert!(
        split
            .commands
            .iter()
            .any(|c| *c == format!("pillowtop split {id} {id}-slow")),
        "{split:#?}"
    );
    let text = doctor::render(&diag).join("\n");
    assert!(text.contains("holds the pillow back"), "{text}");
}
