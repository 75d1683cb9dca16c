//! Kafka through rdkafka: topics with several partitions, produce and consume, the feed's
//! partition listing and watermarks.

use std::time::Duration;

use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::{ChangeFeed, FeedItem, TopicPartition};

use crate::support::{require, TestTopic};

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
