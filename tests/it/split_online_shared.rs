//! Online split of a pillow with one shared checkpoint (CommCare's model, the default; issue 14
//! item 3): while the pillow runs and changes are being published, `slow` is split out to a new
//! pillow. The source stops running it at a chunk boundary after a checkpoint, writes the
//! target's rows from its own and goes on with `fast`; the target runs `slow` from exactly there.
//! Against the real broker and PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pillowtop::assembly::{PillowSpec, ProcessorSpec};
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeedOptions};
use pillowtop::feed::TopicPartition;
use pillowtop::pillow::PillowConfig;
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use tokio_util::sync::CancellationToken;

use crate::lanes::{high_water_marks, rows};
use crate::support::{require, TestDb, TestTopic};

/// The offsets `p` handled, per partition.
fn offsets(p: &RecordingProcessor) -> BTreeMap<TopicPartition, Vec<i64>> {
    let mut out: BTreeMap<TopicPartition, Vec<i64>> = BTreeMap::new();
    for (_, topic, partition, offset) in &p.recorded.lock().expect("lock").processed {
        out.entry(TopicPartition::new(topic.clone(), *partition))
            .or_default()
            .push(*offset);
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

pub(crate) fn spec(
    db: &TestDb,
    bootstrap: &str,
    topic: &str,
    id: &str,
    processors: Vec<RecordingProcessor>,
    until_idle: bool,
) -> PillowSpec {
    let mut config = PillowConfig::new(id, id);
    config.chunk_size = 10;
    config.checkpoint_frequency = 50;
    config.until_idle = until_idle;
    let mut feed = KafkaFeedOptions::new(bootstrap, id);
    feed.idle_timeout = Duration::from_millis(300);
    PillowSpec {
        config,
        topics: vec![topic.to_owned()],
        feed,
        postgres_url: db.url.clone(),
        postgres_outage_budget: pillowtop::assembly::DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: processors
            .into_iter()
            .map(|p| ProcessorSpec::Ready(Box::new(p)))
            .collect(),
        document_stores: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_checkpoint_pillow_hands_a_processor_over_while_it_runs() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, "split-shared", 3).await;
    let source = db.id("split-shared-src");
    let target = db.id("split-shared-dst");
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let publish = |from: usize, n: usize| {
        let producer = &producer;
        let topic = topic.name.clone();
        async move {
            producer
                .send_changes(
                    &topic,
                    (from..from + n).map(|i| ChangeMeta::new(format!("d{i}"), "sql", "form-sql")),
                )
                .await
                .expect("publish");
        }
    };
    publish(0, 600).await;

    let (fast, slow) = (
        RecordingProcessor::new("fast", true),
        RecordingProcessor::new("slow", true),
    );
    let stop = CancellationToken::new();
    let running = {
        let spec = spec(
            &db,
            &bootstrap,
            &topic.name,
            &source,
            vec![fast.clone(), slow.clone()],
            false,
        );
        let stop = stop.clone();
        tokio::spawn(async move { spec.run(&stop, |p| p).await })
    };
    // The source is running (it has handled the first batch) and changes keep coming while the
    // split is asked for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fast.recorded.lock().expect("lock").processed.len() < 600 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publishing = async {
        for batch in 0..60 {
            publish(600 + batch * 50, 50).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let splitting = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let plan = pillowtop::ops::handover::prepare(&db.pg, &source, "slow", &target, true, false)
            .await
            .expect("plan");
        assert_eq!(plan.live_processes, 1, "the source is live");
        pillowtop::ops::handover::apply(
            &db.pg,
            &plan,
            Duration::from_secs(30),
            &CancellationToken::new(),
            |_, _| {},
        )
        .await
        .expect("the running source hands slow over")
    };
    let ((), handed) = tokio::join!(publishing, splitting);
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    let total: i64 = hwm.values().sum();
    assert_eq!(total, 3600);
    // The source goes on with fast alone to the end of the topic.
    while fast.recorded.lock().expect("lock").processed.len() < 3600 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fast did not reach the end after the split"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.expect("joins").expect("the source ran");

    // slow ran in the source exactly up to the handed-over position of each partition, every
    // offset once, and never after it; the target's rows are that position.
    let store = PostgresCheckpointStore::new(db.pg.clone());
    let at = handed.done.clone();
    assert_eq!(
        at.keys().cloned().collect::<BTreeSet<_>>(),
        hwm.keys().cloned().collect()
    );
    assert_eq!(rows(&store, &target).await, at);
    let before = offsets(&slow);
    for (tp, end) in &at {
        let seen = before.get(tp).cloned().unwrap_or_default();
        assert_eq!(
            seen,
            (0..*end).collect::<Vec<_>>(),
            "slow in the source on {tp}"
        );
    }
    assert!(
        at.iter().zip(hwm.values()).any(|((_, a), h)| a < h),
        "the split landed while changes were still coming: {at:?} vs {hwm:?}"
    );
    assert_eq!(
        rows(&store, &source).await,
        hwm,
        "the source's own rows reach the end"
    );
    let fast_seen = offsets(&fast);
    for (tp, h) in &hwm {
        assert_eq!(fast_seen[tp], (0..*h).collect::<Vec<_>>(), "fast on {tp}");
    }

    // The target runs slow from there: every remaining offset once, nothing twice.
    let slow_in_target = RecordingProcessor::new("slow", true);
    spec(
        &db,
        &bootstrap,
        &topic.name,
        &target,
        vec![slow_in_target.clone()],
        true,
    )
    .run(&CancellationToken::new(), |p| p)
    .await
    .expect("target run");
    let after = offsets(&slow_in_target);
    for (tp, h) in &hwm {
        assert_eq!(
            after.get(tp).cloned().unwrap_or_default(),
            (at[tp]..*h).collect::<Vec<_>>(),
            "slow in the target on {tp}"
        );
    }

    // Restarted, the source hands nothing over again and never runs slow.
    publish(3600, 30).await;
    let (fast2, slow2) = (
        RecordingProcessor::new("fast", true),
        RecordingProcessor::new("slow", true),
    );
    spec(
        &db,
        &bootstrap,
        &topic.name,
        &source,
        vec![fast2.clone(), slow2.clone()],
        true,
    )
    .run(&CancellationToken::new(), |p| p)
    .await
    .expect("source restart");
    assert_eq!(fast2.recorded.lock().expect("lock").processed.len(), 30);
    assert!(slow2.recorded.lock().expect("lock").processed.is_empty());
    assert_eq!(
        rows(&store, &target).await,
        hwm,
        "the target's rows are where its own run left them: the restart handed nothing over again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_without_a_position_is_handed_over_as_such_and_never_from_a_later_row() {
    use pillowtop::store::checkpoints::{CheckpointStore, CheckpointUpdate};
    use pillowtop::store::handover::{self, NO_POSITION};
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let source = db.id("handover-nopos-src");
    let target = db.id("handover-nopos-dst");
    let store = PostgresCheckpointStore::new(db.pg.clone());
    let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
    let write = |tp: &TopicPartition, offset: i64| CheckpointUpdate {
        tp: tp.clone(),
        offset,
        expected: None,
    };
    // The processor has a position on partition 0 only (nothing of partition 1 handled yet).
    store.write(&source, &[write(&p0, 40)]).await.expect("rows");
    let h = handover::request(&db.pg, &source, "slow", &target)
        .await
        .expect("request");
    let own = [p0.clone(), p1.clone()];
    let first = handover::hand_over(&db.pg, &h, Some(&own))
        .await
        .expect("hand over");
    assert_eq!(
        first,
        BTreeMap::from([(p0.clone(), 40), (p1.clone(), NO_POSITION)])
    );
    assert_eq!(
        rows(&store, &target).await,
        BTreeMap::from([(p0.clone(), 40)])
    );
    // The pillow's other processors go on and give partition 1 a row; a later call (a restart
    // of the source) hands nothing over from it: the processor never handled it.
    store
        .write(&source, &[write(&p1, 900)])
        .await
        .expect("rows");
    let again = handover::hand_over(&db.pg, &h, Some(&own))
        .await
        .expect("hand over again");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(rows(&store, &target).await, BTreeMap::from([(p0, 40)]));
    let recorded = handover::load(&db.pg, Some(&source)).await.expect("load");
    assert_eq!(recorded[0].done.get(&p1), Some(&NO_POSITION));
}
