//! The Elasticsearch processor against the real search node: round trips through real pillows
//! (memory and Kafka feeds), deletes, error rows, external versions, index creation, and faults
//! injected by [`crate::fault_proxy::FaultProxy`] in front of the node.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{IndicesDeleteParts, IndicesGetParts, IndicesRefreshParts};
use elasticsearch::{Elasticsearch, GetParts, SearchParts};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::error::ElasticsearchError;
use pillowtop::feed::kafka::{ChangeProducer, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::memory::MemoryFeed;
use pillowtop::feed::ChangeFeed;
use pillowtop::pillow::{Pillow, PillowConfig, RunSummary};
use pillowtop::processor::elasticsearch::{
    ElasticsearchConfig, ElasticsearchProcessor, ERROR_TYPE,
};
use pillowtop::processor::Processor;
use pillowtop::store::checkpoints::memory::MemoryCheckpointStore;
use pillowtop::store::errors::memory::MemoryErrorStore;
use pillowtop::store::errors::{ErrorStore, PillowErrorRow};
use pillowtop::testing::unique_name;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::fault_proxy::FaultProxy;
use crate::support::{checkpointed, require, Logs, TestTopic};

const TOPIC: &str = "form-sql";

/// An index `test_<name>_<random>`, deleted on drop.
struct TestIndex {
    name: String,
    url: String,
}

impl TestIndex {
    fn new(url: &str, name: &str) -> Self {
        Self {
            name: unique_name(name),
            url: url.to_owned(),
        }
    }
}

impl Drop for TestIndex {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ = es(&url)
                    .indices()
                    .delete(IndicesDeleteParts::Index(&[&name]))
                    .send()
                    .await;
            });
        })
        .join();
    }
}

fn es(url: &str) -> Elasticsearch {
    Elasticsearch::new(Transport::single_node(url).expect("transport"))
}

/// Fast retries, one shard, a small mapping.
fn config(url: &str, index: &str) -> ElasticsearchConfig {
    let mut c = ElasticsearchConfig::new(url, index);
    c.settings = Some(json!({"number_of_shards": 1, "number_of_replicas": 0}));
    c.mappings = Some(json!({"properties": {
        "domain": {"type": "keyword"}, "count": {"type": "integer"}, "version": {"type": "long"}}}));
    c.base_backoff_ms = 20;
    c.max_backoff_ms = 200;
    c.max_retries = 5;
    c.request_timeout_ms = 10_000;
    // These tests look at the requests of each chunk (and some call the processor directly,
    // outside a pillow): every chunk is written before its call returns. Gathering across
    // chunks, the default, has its own tests below.
    c.flush_max_changes = 0;
    c
}

fn message(id: &str, deleted: bool, doc: Option<Value>) -> String {
    let mut meta = ChangeMeta::new(id, "sql", TOPIC);
    meta.is_deletion = deleted;
    if let Some(d) = doc {
        meta.extra.insert("document".into(), d);
    }
    meta.to_json()
}

fn form(id: &str, version: u64) -> Value {
    json!({"_id": id, "doc_type": "XFormInstance", "domain": "dimagi", "count": 1, "version": version})
}

/// Runs a pillow over `feed` until it ends; returns the summary and the error rows.
async fn run_memory(
    feed: MemoryFeed,
    processor: ElasticsearchProcessor,
    chunk: usize,
) -> (pillowtop::Result<RunSummary>, Vec<PillowErrorRow>) {
    let (r, rows, _) = run_checkpointed(feed, processor, chunk).await;
    (r, rows)
}

/// [`run_memory`], and the sum of the checkpointed offsets.
async fn run_checkpointed(
    feed: MemoryFeed,
    processor: ElasticsearchProcessor,
    chunk: usize,
) -> (pillowtop::Result<RunSummary>, Vec<PillowErrorRow>, i64) {
    let name = unique_name("es_pillow");
    let mut c = PillowConfig::new(&name, &name);
    c.chunk_size = chunk;
    let errors = Arc::new(MemoryErrorStore::new());
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let mut pillow = Pillow::new(
        c,
        Box::new(feed),
        vec![Box::new(processor)],
        checkpoints.clone(),
        errors.clone(),
    );
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        pillow.run(&CancellationToken::new()),
    )
    .await
    .expect("the pillow finishes in time");
    let offsets = checkpointed(checkpoints.as_ref(), &name).await;
    (r, errors.list(&name).await.expect("rows"), offsets)
}

async fn refresh(client: &Elasticsearch, index: &str) {
    client
        .indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await
        .expect("refresh");
}

/// `(_version, _source)` of a document, or `None`.
async fn get(client: &Elasticsearch, index: &str, id: &str) -> Option<(u64, Value)> {
    let r: Value = client
        .get(GetParts::IndexId(index, id))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    (r["found"] == true).then(|| {
        (
            r["_version"].as_u64().expect("version"),
            r["_source"].clone(),
        )
    })
}

/// Every id in the index (with repeats, if there were any).
async fn ids(client: &Elasticsearch, index: &str) -> Vec<String> {
    refresh(client, index).await;
    let r: Value = client
        .search(SearchParts::Index(&[index]))
        .body(json!({"size": 10000, "_source": false, "query": {"match_all": {}}}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert!(r["hits"]["total"]["value"].as_u64().is_some(), "{r}");
    r["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["_id"].as_str().expect("id").to_owned())
        .collect()
}

/// Asserts the index holds exactly `expected` (id → version field), once each.
async fn assert_exactly(client: &Elasticsearch, index: &str, expected: &[(String, u64)]) {
    let found = ids(client, index).await;
    let distinct: BTreeSet<&String> = found.iter().collect();
    assert_eq!(found.len(), distinct.len(), "no duplicates");
    assert_eq!(
        distinct,
        expected.iter().map(|(id, _)| id).collect::<BTreeSet<_>>(),
        "nothing lost, nothing extra"
    );
    for (id, version) in expected {
        let (_, source) = get(client, index, id).await.expect("present");
        assert_eq!(source["version"], *version, "{id} has the latest version");
        assert!(source.get("_id").is_none(), "_id is not sent in the source");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn index_update_and_delete_round_trip_through_a_pillow() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_round_trip");
    let client = es(&url);
    let mut feed = MemoryFeed::new(&[TOPIC], 2);
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        feed.push(
            TOPIC,
            i32::try_from(i % 2).expect("small"),
            Some(id),
            message(id, false, Some(form(id, 1))),
        );
    }
    // Second chunk: an update, a deletion, a `-Deleted` doc type, a deletion of a document the
    // index never had (404: fine).
    feed.push(TOPIC, 0, Some("a"), message("a", false, Some(form("a", 2))));
    feed.push(TOPIC, 0, Some("c"), message("c", true, None));
    let mut d = form("d", 2);
    d["doc_type"] = "XFormInstance-Deleted".into();
    feed.push(TOPIC, 1, Some("d"), message("d", false, Some(d)));
    feed.push(TOPIC, 1, Some("e"), message("e", true, None));

    let p = ElasticsearchProcessor::new(config(&url, &index.name)).expect("processor");
    let (summary, rows) = run_memory(feed, p, 4).await;
    let summary = summary.expect("run");
    assert_eq!((summary.changes, summary.failed), (8, 0));
    assert!(rows.is_empty(), "{rows:?}");
    assert_exactly(&client, &index.name, &[("a".into(), 2), ("b".into(), 1)]).await;
    let (es_version, source) = get(&client, &index.name, "a").await.expect("a");
    assert_eq!(es_version, 2, "indexed twice");
    assert_eq!(
        source,
        json!({"doc_type": "XFormInstance", "domain": "dimagi", "count": 1, "version": 2})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_error_and_a_missing_document_become_error_rows_and_the_pillow_goes_on() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_mapping_error");
    let client = es(&url);
    let mut feed = MemoryFeed::new(&[TOPIC], 1);
    let mut bad = form("bad", 1);
    bad["count"] = "abc".into();
    feed.push(
        TOPIC,
        0,
        Some("ok1"),
        message("ok1", false, Some(form("ok1", 1))),
    );
    feed.push(TOPIC, 0, Some("bad"), message("bad", false, Some(bad)));
    feed.push(TOPIC, 0, Some("ghost"), message("ghost", false, None));
    feed.push(
        TOPIC,
        0,
        Some("ok2"),
        message("ok2", false, Some(form("ok2", 1))),
    );
    feed.push(
        TOPIC,
        0,
        Some("ok3"),
        message("ok3", false, Some(form("ok3", 1))),
    );

    let p = ElasticsearchProcessor::new(config(&url, &index.name)).expect("processor");
    let (summary, rows) = run_memory(feed, p, 3).await;
    let summary = summary.expect("the pillow goes on");
    assert_eq!((summary.changes, summary.failed), (5, 2));
    assert_exactly(
        &client,
        &index.name,
        &[("ok1".into(), 1), ("ok2".into(), 1), ("ok3".into(), 1)],
    )
    .await;
    let by_id: std::collections::BTreeMap<&str, &PillowErrorRow> =
        rows.iter().map(|r| (r.doc_id.as_str(), r)).collect();
    assert_eq!(by_id.keys().copied().collect::<Vec<_>>(), ["bad", "ghost"]);
    let bad = by_id["bad"];
    assert_eq!(bad.error_type.as_deref(), Some(ERROR_TYPE));
    let tb = bad.error_traceback.as_deref().expect("traceback");
    for needle in [
        index.name.as_str(),
        "document bad",
        "mapper_parsing_exception",
        "status 400",
    ] {
        assert!(tb.contains(needle), "{needle:?} in {tb}");
    }
    assert_eq!(
        by_id["ghost"].error_type.as_deref(),
        Some("pillowtop_rs.exceptions.DocumentMissingError")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn external_versions_from_the_document_never_go_back() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_versions");
    let client = es(&url);
    let mut feed = MemoryFeed::new(&[TOPIC], 1);
    feed.push(TOPIC, 0, Some("x"), message("x", false, Some(form("x", 5))));
    feed.push(TOPIC, 0, Some("y"), message("y", false, Some(form("y", 1))));
    // Later offsets, older or equal versions: 409, done, and the index keeps version 5.
    feed.push(TOPIC, 0, Some("x"), message("x", false, Some(form("x", 3))));
    feed.push(TOPIC, 0, Some("y"), message("y", false, Some(form("y", 2))));
    feed.push(TOPIC, 0, Some("x"), message("x", false, Some(form("x", 5))));
    let mut c = config(&url, &index.name);
    c.external_version_field = Some("version".into());
    let p = ElasticsearchProcessor::new(c).expect("processor");
    let (summary, rows) = run_memory(feed, p, 2).await;
    assert_eq!(summary.expect("run").failed, 0);
    assert!(rows.is_empty(), "{rows:?}");
    assert_exactly(&client, &index.name, &[("x".into(), 5), ("y".into(), 2)]).await;
    assert_eq!(
        get(&client, &index.name, "x").await.expect("x").0,
        5,
        "_version is the external version"
    );
    assert_eq!(get(&client, &index.name, "y").await.expect("y").0, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_creates_the_index_with_settings_mappings_and_alias_once() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_bootstrap");
    let client = es(&url);
    let mut c = config(&url, &index.name);
    let alias = format!("{}_alias", index.name);
    c.alias = Some(alias.clone());
    let mut p = ElasticsearchProcessor::new(c).expect("processor");
    p.bootstrap_if_needed().await.expect("create");
    p.bootstrap_if_needed().await.expect("idempotent");
    let r: Value = client
        .indices()
        .get(IndicesGetParts::Index(&[&alias]))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let i = &r[&index.name];
    assert_eq!(
        i["mappings"]["properties"]["domain"]["type"], "keyword",
        "{r}"
    );
    assert_eq!(i["settings"]["index"]["number_of_shards"], "1", "{r}");
    assert!(i["aliases"].get(&alias).is_some(), "{r}");
    // Writes go to the index; readers can use the alias.
    let mut change = Change::from_message(
        TOPIC,
        0,
        0,
        message("z", false, Some(form("z", 1))).as_bytes(),
    )
    .expect("change");
    p.process_change(&mut change)
        .await
        .expect("fatal")
        .expect("indexed");
    assert_eq!(ids(&client, &alias).await, ["z"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_kafka_feed_into_the_index() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let index = TestIndex::new(&url, "es_kafka");
    let topic = TestTopic::new(&bootstrap, "es_kafka", 3).await;
    let client = es(&url);
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for version in 1..=2 {
        producer
            .send_changes(
                &topic.name,
                (0..100).map(|i| {
                    let id = format!("form-{i}");
                    let mut meta = ChangeMeta::new(&id, "sql", TOPIC);
                    meta.extra.insert("document".into(), form(&id, version));
                    meta
                }),
            )
            .await
            .expect("publish");
    }
    let mut opts = KafkaFeedOptions::new(&bootstrap, "it-es");
    opts.idle_timeout = Duration::from_millis(1500);
    let feed: Box<dyn ChangeFeed> =
        Box::new(KafkaFeed::new(std::slice::from_ref(&topic.name), opts).expect("feed"));
    let name = unique_name("es_kafka");
    let mut c = PillowConfig::new(&name, &name);
    c.chunk_size = 50;
    c.until_idle = true;
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let errors = Arc::new(MemoryErrorStore::new());
    let mut pillow = Pillow::new(
        c,
        feed,
        vec![Box::new(
            ElasticsearchProcessor::new(config(&url, &index.name)).expect("processor"),
        )],
        checkpoints.clone(),
        errors.clone(),
    );
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        pillow.run(&CancellationToken::new()),
    )
    .await
    .expect("in time")
    .expect("run");
    assert_eq!((summary.changes, summary.failed), (200, 0));
    let expected: Vec<(String, u64)> = (0..100).map(|i| (format!("form-{i}"), 2)).collect();
    assert_exactly(&client, &index.name, &expected).await;
    assert_eq!(
        checkpointed(checkpoints.as_ref(), &name).await,
        200,
        "checkpointed past every change"
    );
}

/// Pushes `n` documents in `versions` rounds; returns the expected final state.
fn versioned_feed(n: usize, versions: u64) -> (MemoryFeed, Vec<(String, u64)>) {
    let mut feed = MemoryFeed::new(&[TOPIC], 1);
    for v in 1..=versions {
        for i in 0..n {
            let id = format!("doc-{i:03}");
            feed.push(TOPIC, 0, Some(&id), message(&id, false, Some(form(&id, v))));
        }
    }
    let expected = (0..n).map(|i| (format!("doc-{i:03}"), versions)).collect();
    (feed, expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_429_items_are_retried_alone_nothing_lost_nothing_duplicated() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_429");
    let client = es(&url);
    let proxy = FaultProxy::start(&url).await;
    proxy.faults.rewrite_bulk.store(2, Ordering::SeqCst);
    proxy.faults.rewrite_every.store(3, Ordering::SeqCst);
    let (feed, expected) = versioned_feed(30, 2);
    let p = ElasticsearchProcessor::new(config(&proxy.url, &index.name)).expect("processor");
    let (summary, rows) = run_memory(feed, p, 30).await;
    assert_eq!(summary.expect("run").failed, 0);
    assert!(rows.is_empty(), "{rows:?}");
    // 30 actions; 10 rejected (every 3rd) and re-sent alone; 4 of those rejected again and
    // re-sent; then the second chunk in one request.
    assert_eq!(proxy.bulk_actions(), [30, 10, 4, 30]);
    assert_eq!(proxy.seen.rewritten_items.load(Ordering::SeqCst), 14);
    assert_exactly(&client, &index.name, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_dropped_connections_and_slow_responses_are_retried_with_external_versions() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_drops");
    let client = es(&url);
    let proxy = FaultProxy::start(&url).await;
    // The index creation is dropped twice unanswered, then applied but unanswered (its retry
    // meets `resource_already_exists_exception`); the first bulk request is answered after the
    // request timeout; later 429s hit items the node already applied (409 on re-send: done).
    proxy.faults.drop_before.store(2, Ordering::SeqCst);
    proxy.faults.drop_after.store(1, Ordering::SeqCst);
    proxy.faults.delay_bulk.store(1, Ordering::SeqCst);
    proxy.faults.delay_ms.store(6000, Ordering::SeqCst);
    proxy.faults.rewrite_bulk.store(3, Ordering::SeqCst);
    proxy.faults.rewrite_every.store(2, Ordering::SeqCst);
    let (feed, expected) = versioned_feed(50, 3);
    let mut c = config(&proxy.url, &index.name);
    c.external_version_field = Some("version".into());
    // Well above an answer's time on a loaded machine (700 ms once timed out a request that was
    // not delayed, and the sequence below had one re-send more), well below the delay.
    c.request_timeout_ms = 3000;
    c.max_actions_per_request = 20;
    let p = ElasticsearchProcessor::new(c).expect("processor");
    let (summary, rows) = run_memory(feed, p, 50).await;
    assert_eq!(summary.expect("run").failed, 0);
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(proxy.seen.dropped.load(Ordering::SeqCst), 3);
    assert_eq!(proxy.seen.delayed.load(Ordering::SeqCst), 1);
    let bulk = proxy.bulk_actions();
    assert!(bulk.iter().all(|n| *n <= 20), "count bound: {bulk:?}");
    // Three chunks of 50 in requests of 20, 20 and 10 (9), the timed-out request again (its
    // rewritten answer was lost to the timeout), then two partial retries of 429 items.
    assert_eq!(bulk, [20, 20, 10, 5, 20, 10, 20, 20, 10, 20, 20, 10]);
    assert_exactly(&client, &index.name, &expected).await;
    for (id, _) in &expected {
        assert_eq!(get(&client, &index.name, id).await.expect("doc").0, 3);
    }
}

/// `n` index changes `d0..d{n-1}` at offsets `0..n`.
fn chunk_of(n: i64) -> Vec<Change> {
    (0..n)
        .map(|i| {
            let id = format!("d{i}");
            Change::from_message(
                TOPIC,
                0,
                i,
                message(&id, false, Some(form(&id, 1))).as_bytes(),
            )
            .expect("change")
        })
        .collect()
}

/// The address of a port nobody listens on (bound, then closed): connection refused.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_outlasting_the_budget_is_a_typed_error_naming_the_url_and_the_last_error() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_down");
    // Connections accepted and closed unanswered, for ever.
    let proxy = FaultProxy::start(&url).await;
    proxy.faults.drop_before.store(usize::MAX, Ordering::SeqCst);
    let mut c = config(&proxy.url, &index.name);
    c.outage_budget_secs = 1;
    c.max_retries = 0; // outages do not spend the transient retries
    let mut p = ElasticsearchProcessor::new(c).expect("processor");
    let started = std::time::Instant::now();
    let err = p
        .process_changes_chunk(&mut chunk_of(3))
        .await
        .expect_err("fatal once the budget is spent");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let pillowtop::Error::Elasticsearch(ElasticsearchError::Unavailable {
        url: named,
        attempts,
        budget_secs,
        last_error,
        ..
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((named.as_str(), *budget_secs), (proxy.url.as_str(), 1));
    assert!(*attempts > 3, "{attempts}");
    assert!(
        last_error.contains("error sending request"),
        "the transport's own text: {last_error}"
    );
    let msg = err.to_string();
    for needle in [
        proxy.url.as_str(),
        index.name.as_str(),
        "still unavailable after 1 s",
        "outage budget 1 s",
    ] {
        assert!(msg.contains(needle), "{needle:?} in {msg}");
    }
    assert!(proxy.bulk_actions().iter().all(|n| *n == 3));

    // A closed port at start-up: the index creation gives up the same way.
    let closed = format!("http://{}", closed_port().await);
    let mut c = config(&closed, &index.name);
    c.outage_budget_secs = 1;
    let err = ElasticsearchProcessor::new(c)
        .expect("processor")
        .bootstrap_if_needed()
        .await
        .expect_err("unavailable");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            pillowtop::Error::Elasticsearch(ElasticsearchError::Unavailable { .. })
        ) && msg.contains(&format!("elasticsearch at {closed} still unavailable"))
            && msg.contains(&format!("creating index {}", index.name))
            && msg.to_lowercase().contains("connection refused"),
        "{msg}"
    );

    // Through a pillow: the run fails, no error row, nothing checkpointed.
    let mut feed = MemoryFeed::new(&[TOPIC], 1);
    feed.push(
        TOPIC,
        0,
        Some("d0"),
        message("d0", false, Some(form("d0", 1))),
    );
    let mut c = config(&proxy.url, &index.name);
    c.outage_budget_secs = 1;
    let p = ElasticsearchProcessor::new(c).expect("processor");
    let (summary, rows) = run_memory(feed, p, 10).await;
    assert!(
        matches!(
            summary,
            Err(pillowtop::Error::Elasticsearch(
                ElasticsearchError::Unavailable { .. }
            ))
        ),
        "{summary:?}"
    );
    assert!(rows.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_at_start_and_during_the_run_is_waited_out_nothing_lost() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_outage");
    let client = es(&url);
    let (logs, _guard) = Logs::capture();
    // The node is unreachable at first (connection refused), comes back after 2 s, goes away
    // again (port and connections closed) once a few bulk requests went through, and comes
    // back 2 s later.
    let addr = closed_port().await;
    let proxy_url = format!("http://{addr}");
    let outage = {
        let (url, addr) = (url.clone(), addr.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let first = FaultProxy::start_at(&url, &addr).await;
            first.faults.delay_bulk.store(usize::MAX, Ordering::SeqCst);
            first.faults.delay_ms.store(100, Ordering::SeqCst);
            while first.bulk_actions().len() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(first);
            tokio::time::sleep(Duration::from_secs(2)).await;
            FaultProxy::start_at(&url, &addr).await
        })
    };
    let (feed, expected) = versioned_feed(60, 2);
    let mut c = config(&proxy_url, &index.name);
    c.outage_budget_secs = 60;
    c.base_backoff_ms = 100;
    c.max_backoff_ms = 400;
    let started = std::time::Instant::now();
    let (summary, rows, offsets) =
        run_checkpointed(feed, ElasticsearchProcessor::new(c).expect("processor"), 20).await;
    let summary = summary.expect("the outages are waited out");
    let took = started.elapsed();
    let _second = outage.await.expect("proxy task");
    assert!(
        took >= Duration::from_secs(4),
        "two outages of 2 s: {took:?}"
    );
    assert_eq!((summary.changes, summary.failed), (120, 0));
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(
        offsets, 120,
        "checkpointed past every change, once all were written"
    );
    assert_exactly(&client, &index.name, &expected).await;

    let waits = logs.lines("elasticsearch unavailable, waiting");
    assert!(waits.len() >= 6, "a warning per attempt: {waits:#?}");
    for w in &waits {
        for needle in [
            "WARN",
            "service=\"elasticsearch\"",
            &format!("url={proxy_url}"),
            "attempt=",
            "retry_in_ms=",
            "error=",
        ] {
            assert!(w.contains(needle), "{needle:?} in {w}");
        }
    }
    assert!(
        waits.iter().any(|w| w.contains("creating index")),
        "the index creation waited: {waits:#?}"
    );
    assert!(
        waits
            .iter()
            .any(|w| w.contains("bulk actions") && w.to_lowercase().contains("connection refused")),
        "a bulk request waited, with the transport's own text: {waits:#?}"
    );
    let recovered = logs.lines("elasticsearch recovered");
    assert!(recovered.len() >= 2, "{recovered:#?}");
    eprintln!(
        "outages waited out in {took:?}: {} warnings, {} recoveries; e.g.\n{}\n{}",
        waits.len(),
        recovered.len(),
        waits[waits.len() - 1],
        recovered[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_request_ends_the_wait_for_the_node_at_once() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_stop");
    let closed = format!("http://{}", closed_port().await);
    for bootstrap in [true, false] {
        let stop = CancellationToken::new();
        let mut c = config(&closed, &index.name);
        c.base_backoff_ms = 500;
        c.max_backoff_ms = 30_000;
        let mut p = ElasticsearchProcessor::new(c)
            .expect("processor")
            .with_stop(stop.clone());
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            stop.cancel();
            std::time::Instant::now()
        });
        let err = if bootstrap {
            p.bootstrap_if_needed().await.expect_err("stopped")
        } else {
            p.process_changes_chunk(&mut chunk_of(2))
                .await
                .expect_err("stopped")
        };
        let stopped_after = canceller.await.expect("canceller").elapsed();
        assert!(
            stopped_after < Duration::from_secs(1),
            "returned {stopped_after:?} after the stop request"
        );
        let msg = err.to_string();
        assert!(
            matches!(err, pillowtop::Error::ShutdownRequested(_))
                && msg.contains(&format!(
                    "stopped while waiting for elasticsearch at {closed}"
                ))
                && msg.to_lowercase().contains("connection refused"),
            "{msg}"
        );
        let what = if bootstrap {
            format!("(creating index {})", index.name)
        } else {
            format!("(sending 2 bulk actions to index {})", index.name)
        };
        assert!(msg.contains(&what), "{what:?} in {msg}");
    }
}

/// `max_in_flight`: a chunk of 1200 actions goes out as 4 concurrent groups split by document
/// id, and the writes of one document never overtake each other: every document is written
/// three times in the chunk without external versions (index v1, delete, index v3, or index v1,
/// v2, then delete), so any reordering leaves a wrong version or a wrong presence. (The pillow
/// keeps only a document's last change of a chunk, so the processor is driven directly.)
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_bulk_groups_keep_each_documents_writes_in_order() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_in_flight");
    let client = es(&url);
    let proxy = FaultProxy::start(&url).await;
    let docs = 400;
    let mut changes = Vec::new();
    for round in 1..=3u64 {
        for n in 0..docs {
            let id = format!("doc{n}");
            let deleted = (n % 2 == 0 && round == 2) || (n % 2 == 1 && round == 3);
            let doc = (!deleted).then(|| form(&id, round));
            let m = message(&id, deleted, doc);
            changes.push(Change::from_message(TOPIC, 0, 0, m.as_bytes()).expect("change"));
        }
    }
    let expected: Vec<(String, u64)> = (0..docs)
        .step_by(2)
        .map(|n| (format!("doc{n}"), 3))
        .collect();
    let mut c = config(&proxy.url, &index.name);
    c.max_in_flight = 4;
    let mut p = ElasticsearchProcessor::new(c).expect("processor");
    p.bootstrap_if_needed().await.expect("index");
    let outcome = p
        .process_changes_chunk(&mut changes)
        .await
        .expect("written")
        .expect("no whole-chunk failure");
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert!(outcome.retry.is_empty());
    let mut sizes = proxy.bulk_actions();
    sizes.sort_unstable();
    assert_eq!(sizes.len(), 4, "one request per group: {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 1200);
    assert!(sizes[0] >= 200, "the groups are balanced: {sizes:?}");
    assert_exactly(&client, &index.name, &expected).await;
}

/// Gathering across chunks (`flush_max_changes`): a chunk-10 pillow writes 300 changes in a few
/// large bulk requests, loses nothing and checkpoints the end.
#[tokio::test(flavor = "multi_thread")]
async fn gathering_across_chunk_10_writes_large_bulks_and_checkpoints_the_end() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_gather");
    let client = es(&url);
    let proxy = FaultProxy::start(&url).await;
    let (feed, expected) = versioned_feed(300, 1);
    let mut c = config(&proxy.url, &index.name);
    c.flush_max_changes = 100;
    c.flush_max_delay_ms = 60_000;
    let p = ElasticsearchProcessor::new(c).expect("processor");
    let (summary, rows, offsets) = run_checkpointed(feed, p, 10).await;
    assert_eq!(summary.expect("run").failed, 0);
    assert!(rows.is_empty(), "{rows:?}");
    let sizes = proxy.bulk_actions();
    assert!(
        sizes.len() <= 4 && sizes.iter().sum::<usize>() == 300,
        "{sizes:?}"
    );
    assert_exactly(&client, &index.name, &expected).await;
    assert_eq!(
        offsets, 300,
        "the checkpoint is at the end (next offset 300)"
    );
}

/// A checkpoint store that checks, at every write, that every change below the offset written
/// is in the index (one partition: offset `o` ↔ `doc-{o:03}`).
struct CheckingStore {
    inner: MemoryCheckpointStore,
    client: Elasticsearch,
    index: String,
    violations: std::sync::Mutex<Vec<String>>,
    checked: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl pillowtop::store::checkpoints::CheckpointStore for CheckingStore {
    async fn load(
        &self,
        id: &str,
    ) -> pillowtop::Result<Vec<pillowtop::store::checkpoints::CheckpointRow>> {
        self.inner.load(id).await
    }
    async fn write(
        &self,
        id: &str,
        updates: &[pillowtop::store::checkpoints::CheckpointUpdate],
    ) -> pillowtop::Result<()> {
        for u in updates {
            for o in 0..u.offset {
                let doc = format!("doc-{o:03}");
                if get(&self.client, &self.index, &doc).await.is_none() {
                    self.violations.lock().expect("lock").push(format!(
                        "checkpoint {} written while {doc} was not in the index",
                        u.offset
                    ));
                }
            }
            self.checked.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write(id, updates).await
    }
    async fn create_rows(
        &self,
        id: &str,
        partitions: &[pillowtop::feed::TopicPartition],
        offset: i64,
    ) -> pillowtop::Result<u64> {
        self.inner.create_rows(id, partitions, offset).await
    }
}

/// Gathering across chunks (the default) with CommCare's chunk size 10 and slow bulk responses:
/// every checkpoint the pillow writes covers only changes already in the index, and at the end
/// every change is there once.
#[tokio::test(flavor = "multi_thread")]
async fn gathering_never_checkpoints_a_change_that_is_not_in_the_index() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_gather_cp");
    let client = es(&url);
    let proxy = FaultProxy::start(&url).await;
    proxy.faults.delay_bulk.store(usize::MAX, Ordering::SeqCst);
    proxy.faults.delay_ms.store(150, Ordering::SeqCst);
    let (feed, expected) = versioned_feed(200, 1);
    let mut c = config(&proxy.url, &index.name);
    c.flush_max_changes = 45;
    let name = unique_name("es_gather_cp");
    let mut pc = PillowConfig::new(&name, &name);
    pc.chunk_size = 10;
    pc.checkpoint_frequency = 10;
    let store = Arc::new(CheckingStore {
        inner: MemoryCheckpointStore::new(),
        client: es(&url),
        index: index.name.clone(),
        violations: std::sync::Mutex::default(),
        checked: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut pillow = Pillow::new(
        pc,
        Box::new(feed),
        vec![Box::new(ElasticsearchProcessor::new(c).expect("processor"))],
        store.clone(),
        Arc::new(MemoryErrorStore::new()),
    );
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        pillow.run(&CancellationToken::new()),
    )
    .await
    .expect("in time")
    .expect("runs");
    assert_eq!((summary.changes, summary.failed), (200, 0));
    let violations = store.violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "{violations:#?}");
    // At least one checkpoint before the final one (chunk 10 × frequency 10 makes one due
    // after 100 changes; how many more depends on how the slow bulks and the chunks interleave
    // on a loaded machine).
    let checked = store.checked.load(Ordering::SeqCst);
    assert!(
        checked >= 2,
        "several checkpoints were written and checked: {checked}"
    );
    let bulks = proxy.bulk_actions();
    assert!(
        bulks.len() <= 12 && bulks.iter().any(|n| *n >= 40),
        "chunks of 10 gathered into large bulks: {bulks:?}"
    );
    assert_eq!(checkpointed(&store.inner, &name).await, 200);
    assert_exactly(&client, &index.name, &expected).await;
}

/// A 429 from the node halves the actions per bulk request; answers without one grow it back
/// to `max_actions_per_request`.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_halves_the_bulk_size_and_answers_without_one_grow_it_back() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_429_adapt");
    let client = es(&url);
    let proxy = FaultProxy::start(&url).await;
    // The first bulk answer: every item rejected with 429.
    proxy.faults.rewrite_bulk.store(1, Ordering::SeqCst);
    proxy.faults.rewrite_every.store(1, Ordering::SeqCst);
    let (feed, expected) = versioned_feed(600, 1);
    let mut c = config(&proxy.url, &index.name);
    c.max_actions_per_request = 100;
    c.max_in_flight = 1;
    let p = ElasticsearchProcessor::new(c).expect("processor");
    let (summary, rows) = run_memory(feed, p, 100).await;
    assert_eq!(summary.expect("run").failed, 0);
    assert!(rows.is_empty(), "{rows:?}");
    let bulks = proxy.bulk_actions();
    // Chunk 1: 100 actions, all 429 (limit 100 → 50), re-sent whole and accepted (→ 63);
    // chunk 2 goes out as 63 + 37 (→ 79 → 99), then 99 + 1 (→ 100), then whole requests.
    assert_eq!(&bulks[..6], &[100, 100, 63, 37, 99, 1], "{bulks:?}");
    assert!(
        bulks[6..].iter().all(|n| *n == 100),
        "grown back: {bulks:?}"
    );
    assert_exactly(&client, &index.name, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_ceiling_holds_the_processor_below_max_docs_per_second() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let index = TestIndex::new(&url, "es_rate_ceiling");
    let client = es(&url);
    // 3,000 changes at a ceiling of 2,000/s: the first second's credit plus one request go at
    // once, the rest at the ceiling: at least (3000 - 2000 - 100) / 2000 s after the first.
    let (feed, expected) = versioned_feed(3000, 1);
    let mut c = config(&url, &index.name);
    c.max_actions_per_request = 100;
    c.max_docs_per_second = 2000;
    let p = ElasticsearchProcessor::new(c).expect("processor");
    let started = std::time::Instant::now();
    let (summary, rows) = run_memory(feed, p, 100).await;
    let took = started.elapsed();
    assert_eq!(summary.expect("run").failed, 0);
    assert!(rows.is_empty(), "{rows:?}");
    assert!(
        took >= Duration::from_millis(450),
        "3,000 changes at 2,000/s took only {took:?}"
    );
    assert_exactly(&client, &index.name, &expected).await;
}
