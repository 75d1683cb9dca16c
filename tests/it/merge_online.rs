//! Online merge (issue 14 item 3, the reverse of the online split): `slow` is split out of a
//! running pillow into a pillow of its own, which runs it while changes keep coming; then, with
//! both pillows running and changes still coming, it is merged back. The pillow it runs in
//! hands it back at a chunk boundary after its final checkpoint (and, left with nothing to
//! run, stops); the pillow it came from takes it back at a chunk boundary and runs it from
//! there. In both `processor_checkpoints` modes, against the real broker and PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use pillowtop::assembly::PillowSpec;
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::ChangeProducer;
use pillowtop::feed::TopicPartition;
use pillowtop::pillow::{ProcessorCheckpoints, StopReason};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::handover;
use tokio_util::sync::CancellationToken;

use crate::lanes::{high_water_marks, rows};
use crate::support::{require, TestDb, TestTopic};

/// The offsets `p` handled from its `from`th record on, per partition, in the order handled.
fn offsets_from(p: &RecordingProcessor, from: usize) -> BTreeMap<TopicPartition, Vec<i64>> {
    let mut out: BTreeMap<TopicPartition, Vec<i64>> = BTreeMap::new();
    for (_, topic, partition, offset) in
        p.recorded.lock().expect("lock").processed.iter().skip(from)
    {
        out.entry(TopicPartition::new(topic.clone(), *partition))
            .or_default()
            .push(*offset);
    }
    out
}

/// How many offsets `v` holds, as an offset count.
fn count(v: &[i64]) -> i64 {
    i64::try_from(v.len()).expect("fits")
}

fn handled(p: &RecordingProcessor) -> usize {
    p.recorded.lock().expect("lock").processed.len()
}

fn spec(
    db: &TestDb,
    bootstrap: &str,
    topic: &str,
    id: &str,
    mode: ProcessorCheckpoints,
    processors: Vec<RecordingProcessor>,
    until_idle: bool,
) -> PillowSpec {
    let mut spec =
        crate::split_online_shared::spec(db, bootstrap, topic, id, processors, until_idle);
    spec.config.processor_checkpoints = mode;
    spec
}

async fn wait_for(what: &str, deadline: tokio::time::Instant, mut ok: impl FnMut() -> bool) {
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn split_then_merge_back_while_running(mode: ProcessorCheckpoints, name: &str) {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let topic = TestTopic::new(&bootstrap, name, 3).await;
    let main = db.id(&format!("{name}-main"));
    let own = db.id(&format!("{name}-own"));
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
    let publish_for_a_while = |from: usize| async move {
        for batch in 0..40 {
            publish(from + batch * 30, 30).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    publish(0, 600).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);

    // The pillow runs fast and slow.
    let (fast, slow) = (
        RecordingProcessor::new("fast", true),
        RecordingProcessor::new("slow", true),
    );
    let stop_main = CancellationToken::new();
    let running_main = {
        let spec = spec(
            &db,
            &bootstrap,
            &topic.name,
            &main,
            mode,
            vec![fast.clone(), slow.clone()],
            false,
        );
        let stop = stop_main.clone();
        tokio::spawn(async move { spec.run(&stop, |p| p).await })
    };
    wait_for("the pillow did not start", deadline, || {
        handled(&fast) >= 600
    })
    .await;

    // slow is split out online while changes come.
    let splitting = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let plan = pillowtop::ops::handover::prepare(&db.pg, &main, "slow", &own, true, false)
            .await
            .expect("split plan");
        pillowtop::ops::handover::apply(
            &db.pg,
            &plan,
            Duration::from_secs(30),
            &CancellationToken::new(),
            |_, _| {},
        )
        .await
        .expect("the running pillow hands slow over")
    };
    let ((), split) = tokio::join!(publish_for_a_while(600), splitting);
    let slow_in_main_before = handled(&slow);

    // Its own pillow runs it from there, while changes come.
    let slow_own = RecordingProcessor::new("slow", true);
    let stop_own = CancellationToken::new();
    let running_own = {
        let spec = spec(
            &db,
            &bootstrap,
            &topic.name,
            &own,
            ProcessorCheckpoints::Shared,
            vec![slow_own.clone()],
            false,
        );
        let stop = stop_own.clone();
        tokio::spawn(async move { spec.run(&stop, |p| p).await })
    };
    publish_for_a_while(1800).await;
    wait_for("slow did not run in its own pillow", deadline, || {
        handled(&slow_own) > 0
    })
    .await;
    assert_eq!(
        handled(&slow),
        slow_in_main_before,
        "the pillow no longer runs slow after the split"
    );

    // Merged back online while both run and changes come.
    let fast_before_merge = handled(&fast);
    let merging = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let plan =
            pillowtop::ops::handover::prepare_merge(&db.pg, &own, "slow", &main, true, false)
                .await
                .expect("merge plan");
        assert_eq!(
            (plan.source_live_processes, plan.target_live_processes),
            (1, 1)
        );
        assert_eq!(plan.independent, mode == ProcessorCheckpoints::Independent);
        pillowtop::ops::handover::apply_merge(
            &db.pg,
            &plan,
            Duration::from_secs(30),
            &CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("both pillows take part in the merge")
    };
    let ((), merged) = tokio::join!(publish_for_a_while(3000), merging);
    assert_eq!(merged.taken_back, merged.partitions);
    // Left with nothing to run, the processor's own pillow stops by itself.
    let own_summary = tokio::time::timeout(Duration::from_secs(30), running_own)
        .await
        .expect("the pillow left without processors stops")
        .expect("joins")
        .expect("runs");
    assert_eq!(own_summary.stop_reason, StopReason::NothingToRun);
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    assert_eq!(hwm.values().sum::<i64>(), 4200);
    wait_for("fast did not reach the end", deadline, || {
        handled(&fast) >= 4200
    })
    .await;
    let store = PostgresCheckpointStore::new(db.pg.clone());
    let main_rows = || async { rows(&store, &main).await };
    while main_rows().await != hwm {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pillow's rows did not reach the end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_main.cancel();
    running_main.await.expect("joins").expect("the pillow ran");

    // The records: the split's row is gone, the hand-back's stays (the processor's own pillow
    // never runs it again).
    assert!(handover::load(&db.pg, Some(&main))
        .await
        .expect("load")
        .is_empty());
    let back = handover::load(&db.pg, Some(&own)).await.expect("load");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].kind, handover::HandoverKind::Merge);

    // slow: before the split in the pillow, then in its own pillow, then in the pillow again.
    let before = offsets_from(&slow, 0);
    let in_own = offsets_from(&slow_own, 0);
    let after = offsets_from(&slow, slow_in_main_before);
    let fast_all = offsets_from(&fast, 0);
    let fast_after = offsets_from(&fast, fast_before_merge);
    for (tp, h) in &hwm {
        let at_split = split.done[tp];
        let handed_back = back[0].done[tp];
        let phase1: Vec<i64> = before[tp]
            .iter()
            .copied()
            .filter(|o| *o < at_split)
            .collect();
        assert_eq!(
            phase1,
            (0..at_split).collect::<Vec<_>>(),
            "slow in the pillow before the split, {tp}"
        );
        assert_eq!(
            in_own.get(tp).cloned().unwrap_or_default(),
            (at_split..handed_back).collect::<Vec<_>>(),
            "slow in its own pillow: from the split to the hand-back, each once ({tp})"
        );
        let resumed = after.get(tp).cloned().unwrap_or_default();
        let first = resumed.first().copied().unwrap_or(*h);
        assert!(
            first <= handed_back,
            "slow resumed at {first} past its hand-back at {handed_back} on {tp}: changes skipped"
        );
        let mut sorted = resumed.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted,
            (first..*h).collect::<Vec<_>>(),
            "slow after the merge covers the rest of {tp}"
        );
        // fast: every change at least once.
        let mut f = fast_all[tp].clone();
        f.sort_unstable();
        f.dedup();
        assert_eq!(f, (0..*h).collect::<Vec<_>>(), "fast on {tp}");
        match mode {
            ProcessorCheckpoints::Independent => {
                // Nothing seen twice by either processor: slow resumes exactly at its
                // hand-back, fast is never moved back.
                assert_eq!(
                    first, handed_back,
                    "slow resumed exactly at its hand-back on {tp}"
                );
                assert_eq!(count(&resumed), h - handed_back, "slow twice on {tp}");
                assert_eq!(count(&fast_all[tp]), *h, "fast twice on {tp}");
            }
            ProcessorCheckpoints::Shared => {
                // One shared checkpoint moves back to the lower of the two: fast sees again
                // what slow had not handled yet in its own pillow, nothing more.
                let again = count(&fast_all[tp]) - h;
                let fast_rewound = fast_after.get(tp).map_or(0, |v| count(v));
                assert!(
                    again >= 0 && again <= fast_rewound,
                    "fast on {tp}: {again} twice"
                );
            }
        }
    }
    assert!(
        hwm.iter().any(|(tp, h)| back[0].done[tp] < *h),
        "the merge landed while changes were still coming"
    );

    // Restarted, the processor's own pillow has nothing to run, and runs nothing.
    let slow_own2 = RecordingProcessor::new("slow", true);
    let again = spec(
        &db,
        &bootstrap,
        &topic.name,
        &own,
        ProcessorCheckpoints::Shared,
        vec![slow_own2.clone()],
        true,
    )
    .run(&CancellationToken::new(), |p| p)
    .await
    .expect("restart");
    assert_eq!(again.stop_reason, StopReason::NothingToRun);
    assert_eq!(handled(&slow_own2), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_processor_is_merged_back_online_into_a_shared_checkpoint_pillow() {
    split_then_merge_back_while_running(ProcessorCheckpoints::Shared, "merge-shared").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_processor_is_merged_back_online_into_an_independent_pillow() {
    split_then_merge_back_while_running(ProcessorCheckpoints::Independent, "merge-ind").await;
}
