//! Kafka through rdkafka: topics with several partitions, produce and consume, the feed's
//! partition listing and watermarks, the message size limit.

use std::sync::Arc;
use std::time::Duration;

use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{
    resolve_message_limits, ChangeProducer, KafkaFeed, KafkaFeedOptions, LimitSource, MessageLimit,
    DEFAULT_MAX_MESSAGE_BYTES,
};
use pillowtop::feed::{ChangeFeed, FeedItem, TopicPartition};
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::store::checkpoints::memory::MemoryCheckpointStore;
use pillowtop::store::errors::memory::MemoryErrorStore;
use pillowtop::store::errors::ErrorStore;
use tokio_util::sync::CancellationToken;

use crate::support::{checkpointed, processed_ids, require, TestTopic};

#[tokio::test(flavor = "multi_thread")]
async fn produce_then_consume_every_partition_with_manual_assignment() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "smoke", 3).await;
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let mut sent = Vec::new();
    for i in 0..30 {
        let meta = ChangeMeta::new(format!("doc-{i}"), "sql", "form-sql");
        let (p, o) = producer
            .send_change(&topic.name, &meta)
            .await
            .expect("send");
        sent.push((format!("doc-{i}"), p, o));
    }
    let partitions_used: std::collections::BTreeSet<i32> = sent.iter().map(|s| s.1).collect();
    assert!(
        partitions_used.len() > 1,
        "key hashing spread 30 ids over several partitions: {partitions_used:?}"
    );

    let mut opts = KafkaFeedOptions::new(&bootstrap, "it-smoke");
    opts.idle_timeout = Duration::from_millis(1500);
    let mut feed = KafkaFeed::new(std::slice::from_ref(&topic.name), opts).expect("feed");
    let parts = feed.partitions().await.expect("partitions");
    assert_eq!(
        parts,
        (0..3)
            .map(|p| TopicPartition::new(topic.name.clone(), p))
            .collect::<Vec<_>>()
    );
    let wm = feed.watermarks(&parts).await.expect("watermarks");
    let total: i64 = wm.iter().map(|(_, lo, hi)| hi - lo).sum();
    assert_eq!(total, 30);
    feed.assign(&parts.iter().map(|tp| (tp.clone(), 0)).collect::<Vec<_>>())
        .await
        .expect("assign");
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("no hang")
            .expect("item")
        {
            Some(FeedItem::Change(c)) => got.push((c.id.clone(), c.partition, c.offset)),
            Some(FeedItem::Tick) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort();
    sent.sort();
    assert_eq!(
        got, sent,
        "every message, with its partition and offset, exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_topic_is_a_clear_error() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let name = pillowtop::testing::unique_name("missing");
    let mut feed = KafkaFeed::new(
        std::slice::from_ref(&name),
        KafkaFeedOptions::new(&bootstrap, "it-missing"),
    )
    .expect("feed");
    let err = feed.partitions().await.expect_err("missing topic");
    assert!(err.to_string().contains(&name), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pillow_behind_gets_every_message_parsed_in_order_whoever_parsed_it() {
    // The reader hands raw batches to the pillow's thread, or parses them itself while the
    // channel is full. A channel of one batch and a consumer that waits before reading make
    // both happen; every message must come out once, in offset order, judged the same way.
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "feed_order", 1).await;
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let n: usize = 2_000;
    let bad = |i: usize| i % 97 == 13;
    for i in 0..n {
        let key = format!("doc-{i}");
        let body = if bad(i) {
            format!("{{\"document_id\": \"{key}\", not json").into_bytes()
        } else {
            let mut meta = ChangeMeta::new(key.clone(), "sql", "form-sql");
            meta.domain = Some(format!("domain-{}", i % 7));
            meta.to_json().into_bytes()
        };
        producer
            .send_raw(&topic.name, Some(0), Some(&key), &body)
            .await
            .expect("send");
    }
    let mut opts = KafkaFeedOptions::new(&bootstrap, "it-feed-order");
    opts.idle_timeout = Duration::from_millis(1500);
    opts.channel_capacity = 1; // one batch in the channel
    let mut feed = KafkaFeed::new(std::slice::from_ref(&topic.name), opts).expect("feed");
    feed.assign(&[(TopicPartition::new(topic.name.clone(), 0), 0)])
        .await
        .expect("assign");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut next_offset = 0_i64;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("no hang")
            .expect("item");
        let i = usize::try_from(next_offset).expect("offset");
        match item {
            Some(FeedItem::Change(c)) => {
                assert!(!bad(i), "message {i} is invalid but came out as a change");
                assert_eq!(
                    (c.offset, c.id.as_str()),
                    (next_offset, format!("doc-{i}").as_str())
                );
                assert_eq!(c.metadata.domain, Some(format!("domain-{}", i % 7)));
            }
            Some(FeedItem::Invalid(m)) => {
                assert!(
                    bad(i),
                    "message {i} is valid but came out invalid: {}",
                    m.reason
                );
                assert_eq!(m.offset, next_offset);
                assert_eq!(m.key.as_deref(), Some(format!("doc-{i}").as_str()));
            }
            Some(FeedItem::Tick) => break,
            other => panic!("unexpected {other:?}"),
        }
        next_offset += 1;
    }
    assert_eq!(
        next_offset,
        i64::try_from(n).expect("count"),
        "every message once, then the idle tick"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_message_size_limit_is_the_topics_unless_set_and_an_oversize_message_is_an_error_row() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::with_config(
        &bootstrap,
        "size_limit",
        1,
        &[("max.message.bytes", "2000")],
    )
    .await;
    let missing = pillowtop::testing::unique_name("size_limit_missing");

    // The limit in force: the topic's own, Kafka's default when it cannot be read, or the
    // setting.
    let unset = KafkaFeedOptions::new(&bootstrap, "it-size-limit");
    let limits = resolve_message_limits(&unset, &[topic.name.clone(), missing.clone()]).await;
    assert_eq!(
        limits[0],
        MessageLimit {
            topic: topic.name.clone(),
            bytes: 2000,
            source: LimitSource::Topic
        }
    );
    assert_eq!(
        limits[0].origin(),
        format!("topic `{}` max.message.bytes", topic.name)
    );
    assert_eq!(limits[1].bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert!(
        matches!(&limits[1].source, LimitSource::Default(why) if why.contains(&missing)),
        "{:?}",
        limits[1]
    );
    let mut set = unset.clone();
    set.max_message_bytes = Some(500);
    set.idle_timeout = Duration::from_millis(1500);
    let limits = resolve_message_limits(&set, std::slice::from_ref(&topic.name)).await;
    assert_eq!(
        (limits[0].bytes, &limits[0].source),
        (500, &LimitSource::Setting)
    );

    // A message within the topic's limit but over the setting: an error row naming the
    // setting, and the pillow goes on.
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let mut big = ChangeMeta::new("big", "sql", "form-sql");
    big.extra.insert("pad".into(), "x".repeat(1000).into());
    let big = big.to_json();
    let bodies = [
        (
            "small-0",
            ChangeMeta::new("small-0", "sql", "form-sql").to_json(),
        ),
        ("big", big.clone()),
        (
            "small-1",
            ChangeMeta::new("small-1", "sql", "form-sql").to_json(),
        ),
    ];
    for (key, body) in &bodies {
        producer
            .send_raw(&topic.name, Some(0), Some(key), body.as_bytes())
            .await
            .expect("send");
    }
    let run = |options: KafkaFeedOptions| {
        let name = pillowtop::testing::unique_name("size_limit");
        let topic = topic.name.clone();
        async move {
            let mut c = PillowConfig::new(&name, &name);
            c.until_idle = true;
            let p = RecordingProcessor::new("p", true);
            let errors = Arc::new(MemoryErrorStore::new());
            let checkpoints = Arc::new(MemoryCheckpointStore::new());
            let summary = Pillow::new(
                c,
                Box::new(KafkaFeed::new(&[topic], options).expect("feed")),
                vec![Box::new(p.clone())],
                checkpoints.clone(),
                errors.clone(),
            )
            .run(&CancellationToken::new())
            .await
            .expect("runs");
            (
                summary,
                processed_ids(&p),
                errors.list(&name).await.expect("rows"),
                checkpointed(checkpoints.as_ref(), &name).await,
            )
        }
    };
    let (summary, ids, rows, offsets) = run(set).await;
    assert_eq!((summary.changes, summary.invalid), (3, 1));
    assert_eq!(ids, ["small-0", "small-1"]);
    assert_eq!(offsets, 3, "checkpointed past the oversize message");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].doc_id, "big");
    let tb = rows[0].error_traceback.as_deref().unwrap_or_default();
    let want = format!(
        "message of {} bytes exceeds the limit of 500 bytes (setting `max_message_bytes`)",
        big.len()
    );
    assert!(tb.contains(&want), "{want:?} in {tb}");

    // Without the setting the topic's limit is in force: the same message is a change.
    let mut unset = unset;
    unset.idle_timeout = Duration::from_millis(1500);
    let (summary, ids, rows, _) = run(unset).await;
    assert_eq!((summary.changes, summary.invalid), (3, 0));
    assert_eq!(ids, ["big", "small-0", "small-1"]);
    assert!(rows.is_empty(), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_config_reaches_every_kafka_client_as_librdkafka_sees_it() {
    use pillowtop::feed::kafka::{KafkaAdmin, KafkaClientConfig};
    use pillowtop::ops::kafka::KafkaInfo;
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "client_config", 1).await;
    let bogus =
        KafkaClientConfig::from_pairs([("security.protocol", "bogus")]).expect("not reserved");
    // librdkafka's own refusal, naming the property, from the feed's consumer, the admin
    // client and the operations' metadata client alike.
    let mut options = KafkaFeedOptions::new(&bootstrap, "client-config-test");
    options.client_config = bogus.clone();
    let feed = KafkaFeed::new(std::slice::from_ref(&topic.name), options).expect_err("feed");
    let admin = KafkaAdmin::with_config(&bootstrap, &bogus).expect_err("admin");
    let info = KafkaInfo::with_config(&bootstrap, &bogus).expect_err("ops");
    for e in [feed.to_string(), admin.to_string(), info.to_string()] {
        assert!(
            e.contains("security.protocol") && e.contains("bogus"),
            "{e}"
        );
    }
    // A valid one is applied and the clients work.
    let plain = KafkaClientConfig::from_pairs([("security.protocol", "PLAINTEXT")]).expect("ok");
    let info = KafkaInfo::with_config(&bootstrap, &plain).expect("ops client");
    let partitions = info
        .partitions(std::slice::from_ref(&topic.name))
        .await
        .expect("metadata through the configured client");
    assert_eq!(partitions.len(), 1);
}
