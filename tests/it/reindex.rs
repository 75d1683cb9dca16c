//! `pillowtop reindex` against the real services (issue 15): a live pillow (a `pillowtop run`
//! child process) keeps writing while its index is rebuilt from the source table with changes
//! published all along; the reindex is SIGKILLed at random moments and resumed; the index
//! behind the alias ends equal to the source (every id, the latest version), the pillow never
//! stops, and a rollback gives the old index back. A mapping conflict in the new index stops
//! the run with a clear error and the old index serving; so does a full disk (a node of the
//! test's own with its flood-stage watermark lowered), and `resume` finishes once the node has
//! lifted its block.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::ChangeProducer;
use pillowtop::testing::unique_name;
use rand::Rng;
use serde_json::{json, Value};

use crate::support::{pillowtop, require, Running, TestDb, TestTopic};

async fn call(url: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let es = Elasticsearch::new(Transport::single_node(url).expect("transport"));
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let bytes = body.map(|b| serde_json::to_vec(&b).expect("json"));
    let r = es
        .transport()
        .send(method, path, headers, None::<&()>, bytes.as_deref(), None)
        .await
        .expect("elasticsearch request");
    let status = r.status_code().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every index whose name starts with `prefix` is deleted on drop.
struct Indices {
    url: String,
    prefix: String,
}

impl Drop for Indices {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ = call(&url, Method::Delete, &format!("/{prefix}*"), None).await;
            });
        })
        .join();
    }
}

struct Setup {
    db: TestDb,
    bootstrap: String,
    pillow: String,
    topic: TestTopic,
    es_url: String,
    config: std::path::PathBuf,
    alias: String,
    old: String,
    new: String,
    _indices: Indices,
}

impl Setup {
    /// A source table of `docs` documents, a topic, and a pillow config writing index `old`
    /// behind an alias, its documents fetched from the table. `mappings` of the processor.
    async fn new(name: &str, docs: usize, mappings: &Value, extra: &Value) -> Option<Self> {
        let es_url = crate::support::service("TEST_ELASTICSEARCH_URL")?;
        Self::new_on(&es_url, name, docs, mappings, extra).await
    }

    /// [`Setup::new`] on the search node at `es_url`.
    async fn new_on(
        es_url: &str,
        name: &str,
        docs: usize,
        mappings: &Value,
        extra: &Value,
    ) -> Option<Self> {
        let es_url = es_url.to_owned();
        let bootstrap = crate::support::service("TEST_KAFKA_BOOTSTRAP")?;
        let pg_url = crate::support::service("TEST_POSTGRES_URL")?;
        let db = TestDb::new(&pg_url).await;
        let pillow = db.id(name);
        let topic = TestTopic::new(&bootstrap, name, 2).await;
        let c = db.pg.fresh_client().await.expect("client");
        c.batch_execute(&format!(
            "CREATE TABLE {pillow} (doc_id text PRIMARY KEY, doc jsonb NOT NULL);
             INSERT INTO {pillow} SELECT 'doc-' || lpad(i::text, 6, '0'),
               jsonb_build_object('_id', 'doc-' || lpad(i::text, 6, '0'), 'doc_type', 'XFormInstance',
                                  'domain', 'd' || (i % 3), 'n', 0)
             FROM generate_series(1, {docs}) i;"
        ))
        .await
        .expect("source table");
        let prefix = unique_name(&format!("rx_{name}")).to_lowercase();
        let (alias, old, new) = (
            format!("{prefix}_alias"),
            format!("{prefix}_v1"),
            format!("{prefix}_v2"),
        );
        let mut es_config = json!({
            "type": "elasticsearch", "urls": [es_url], "index": old, "alias": alias,
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": mappings, "base_backoff_ms": 50, "max_backoff_ms": 500,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            es_config[k] = v.clone();
        }
        let toml = format!(
            r#"name = "{pillow}"
checkpoint_id = "{pillow}"
topics = ["{topic}"]
chunk_size = 100
start_policy = "earliest"

[kafka]
bootstrap = "{bootstrap}"
idle_timeout_ms = 500

[postgres]
url = "{pg_url}"

[[document_stores]]
data_source_type = "sql"
data_source_name = "*"
table = "{pillow}"
id_column = "doc_id"
doc_column = "doc"

[[processors]]
{processor}
"#,
            topic = topic.name,
            processor = toml_inline(&es_config),
        );
        let config = std::env::temp_dir().join(format!("{pillow}.toml"));
        std::fs::write(&config, toml).expect("config file");
        Some(Self {
            _indices: Indices {
                url: es_url.clone(),
                prefix: prefix.clone(),
            },
            db,
            bootstrap,
            pillow,
            topic,
            es_url,
            config,
            alias,
            old,
            new,
        })
    }

    fn log(&self, what: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("{}-{what}.log", self.pillow)))
            .expect("log file")
    }

    fn log_text(&self, what: &str) -> String {
        std::fs::read_to_string(std::env::temp_dir().join(format!("{}-{what}.log", self.pillow)))
            .unwrap_or_default()
    }

    fn start_pillow(&self) -> Running {
        let log = self.log("pillow");
        Running(
            pillowtop(&["run", "--config", self.config.to_str().expect("path")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn the pillow"),
        )
    }

    /// A `pillowtop reindex …` child, its output appended to the reindex log.
    fn reindex(&self, args: &[&str]) -> Child {
        let config = self.config.to_str().expect("path");
        let mut all = vec!["reindex"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config]);
        pillowtop(&all)
            .stdout(self.log("reindex"))
            .stderr(self.log("reindex"))
            .spawn()
            .expect("spawn pillowtop reindex")
    }

    /// `pillowtop reindex <args> --config <file>`, run to its end.
    fn reindex_output(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["reindex"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", self.config.to_str().expect("path")]);
        pillowtop(&all).output().expect("pillowtop reindex")
    }

    /// The status of `HEAD /index` (200 exists, 404 not).
    async fn index_status(&self, index: &str) -> u16 {
        call(&self.es_url, Method::Head, &format!("/{index}"), None)
            .await
            .0
    }

    async fn publish(&self, producer: &ChangeProducer, id: &str) {
        producer
            .send_change(&self.topic.name, &ChangeMeta::new(id, "sql", "forms"))
            .await
            .expect("publish");
    }

    /// The source's live documents, without `_id`.
    async fn source(&self) -> std::collections::BTreeMap<String, Value> {
        let c = self.db.pg.fresh_client().await.expect("client");
        c.query(
            &format!(
                "SELECT doc_id, doc::text FROM {} WHERE doc->>'doc_type' NOT LIKE '%-Deleted'",
                self.pillow
            ),
            &[],
        )
        .await
        .expect("source")
        .iter()
        .map(|r| {
            let mut d: Value = serde_json::from_str(r.get(1)).expect("doc");
            d.as_object_mut().expect("object").remove("_id");
            (r.get(0), d)
        })
        .collect()
    }

    /// Every document of `index` (an index or an alias).
    async fn index(&self, index: &str) -> std::collections::BTreeMap<String, Value> {
        let _ = call(
            &self.es_url,
            Method::Post,
            &format!("/{index}/_refresh"),
            None,
        )
        .await;
        let (status, r) = call(
            &self.es_url,
            Method::Post,
            &format!("/{index}/_search"),
            Some(json!({"size": 10000, "query": {"match_all": {}}})),
        )
        .await;
        if status == 404 || status == 503 {
            // Not created yet, or its shard not started yet: the caller's wait polls again.
            return std::collections::BTreeMap::new();
        }
        assert_eq!(status, 200, "searching {index}: {r}");
        r["hits"]["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| {
                (
                    h["_id"].as_str().expect("id").to_owned(),
                    h["_source"].clone(),
                )
            })
            .collect()
    }

    /// Waits until `index` holds exactly the source's documents; panics with the differences.
    async fn wait_equal(&self, index: &str, within: Duration) {
        self.wait_matches(index, None, within).await;
    }

    /// Waits until `index` holds exactly `expected` (the source's documents when `None`).
    async fn wait_matches(
        &self,
        index: &str,
        expected: Option<&std::sync::Mutex<std::collections::BTreeMap<String, Value>>>,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let src = match expected {
                Some(e) => e.lock().expect("lock").clone(),
                None => self.source().await,
            };
            let got = self.index(index).await;
            if src == got {
                return;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = src
                    .keys()
                    .filter(|k| !got.contains_key(*k))
                    .take(5)
                    .collect();
                let extra: Vec<_> = got
                    .keys()
                    .filter(|k| !src.contains_key(*k))
                    .take(5)
                    .collect();
                let differ: Vec<_> = src
                    .iter()
                    .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                    .take(5)
                    .map(|(k, v)| format!("{k}: source {v}, index {}", got[k]))
                    .collect();
                panic!(
                    "{index} never matched the source ({} vs {} documents): missing {missing:?}, extra {extra:?}, differing {differ:?}",
                    src.len(),
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn alias_points_at(&self) -> Vec<String> {
        let (_, r) = call(
            &self.es_url,
            Method::Get,
            &format!("/_alias/{}", self.alias),
            None,
        )
        .await;
        r.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn step(&self) -> String {
        let c = self.db.pg.fresh_client().await.expect("client");
        c.query_opt(
            "SELECT step FROM pillowtop_rs_reindex WHERE pillow = $1 ORDER BY id DESC LIMIT 1",
            &[&self.pillow],
        )
        .await
        .expect("step")
        .map(|r| r.get(0))
        .unwrap_or_default()
    }
}

/// A JSON object as a TOML table body (`key = value` lines, values as inline TOML).
fn toml_inline(v: &Value) -> String {
    fn value(v: &Value) -> String {
        match v {
            Value::Object(m) => format!(
                "{{ {} }}",
                m.iter()
                    .map(|(k, v)| format!("{k:?} = {}", value(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Array(a) => format!("[{}]", a.iter().map(value).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }
    v.as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| format!("{k} = {}", value(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn still_running(p: &mut Running, s: &Setup) {
    assert!(
        p.0.try_wait().expect("try_wait").is_none(),
        "the pillow stopped: {}",
        s.log_text("pillow")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reindex_killed_at_random_moments_and_resumed_ends_equal_to_the_source_with_the_pillow_running(
) {
    let _ = require!("TEST_ELASTICSEARCH_URL");
    let docs = 3000;
    let mappings = json!({"properties": {"domain": {"type": "keyword"}, "n": {"type": "integer"}}});
    let Some(s) = Setup::new("reindex_kill", docs, &mappings, &json!({})).await else {
        return;
    };
    let producer = ChangeProducer::new(&s.bootstrap).expect("producer");
    for i in 1..=docs {
        s.publish(&producer, &format!("doc-{i:06}")).await;
    }
    let mut pillow = s.start_pillow();
    s.wait_equal(&s.old, Duration::from_secs(90)).await;
    assert_eq!(s.alias_points_at().await, vec![s.old.clone()]);

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        let s = &s;
        let producer = &producer;
        async move {
            crate::support::write_during(&s.db, &s.pillow, producer, &s.topic.name, docs, &stop)
                .await
        }
    };
    let rebuild = async {
        let mut kills = 0;
        let mut child = s.reindex(&[
            "start",
            "--new-index",
            &s.new,
            "--chunk-size",
            "10",
            "--slices",
            "2",
            "--keep-old",
            "1h",
            "--sample-size",
            "300",
            "--noinput",
        ]);
        for _ in 0..3 {
            let wait = Duration::from_millis(rand::rng().random_range(200..2500));
            tokio::time::sleep(wait).await;
            if child.try_wait().expect("try_wait").is_none() {
                child.kill().expect("SIGKILL the reindex");
                kills += 1;
                eprintln!("reindex: SIGKILL at step {:?}", s.step().await);
            }
            let _ = child.wait();
            child = s.reindex(&["resume", "--noinput"]);
        }
        let status = child.wait().expect("the last resume");
        stop.cancel();
        (status, kills)
    };
    let (changes, (status, kills)) = tokio::join!(writer, rebuild);
    let log = s.log_text("reindex");
    assert!(status.success(), "the last resume failed ({status}): {log}");
    assert!(changes > 0, "no changes were published during the rebuild");
    eprintln!("reindex: {kills} SIGKILLs, {changes} changes published during the rebuild");
    assert_eq!(s.step().await, "swapped", "{log}");
    assert_eq!(s.alias_points_at().await, vec![s.new.clone()], "{log}");
    // The pillow writes both while the old index is kept: both equal the source.
    s.wait_equal(&s.alias, Duration::from_secs(90)).await;
    s.wait_equal(&s.old, Duration::from_secs(30)).await;
    still_running(&mut pillow, &s);
    // The pillow's deletions of documents the backfill had not copied yet answered 404 in the
    // new index: not an error (no error row, nothing logged as one).
    let c = s.db.pg.fresh_client().await.expect("client");
    let errors: i64 = c
        .query_one(
            "SELECT count(*) FROM pillow_retry_pillowerror WHERE pillow = $1",
            &[&s.pillow],
        )
        .await
        .expect("error rows")
        .get(0);
    let pillow_log = s.log_text("pillow");
    assert!(
        errors == 0 && !pillow_log.contains("ERROR"),
        "{errors} error rows; pillow log:\n{pillow_log}"
    );
    let (_, settings) = call(
        &s.es_url,
        Method::Get,
        &format!("/{}/_settings", s.new),
        None,
    )
    .await;
    assert_ne!(
        settings[&s.new]["settings"]["index"]["refresh_interval"],
        json!("-1"),
        "the swap restores the refresh interval: {settings}"
    );

    // Rollback: the alias is back on the old index, which has every change, and the new one goes.
    let out = s.reindex_output(&["rollback", "--noinput"]);
    assert!(
        out.status.success(),
        "rollback: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.alias_points_at().await, vec![s.old.clone()]);
    assert_eq!(s.step().await, "rolled_back");
    let status = s.index_status(&s.new).await;
    assert_eq!(status, 404, "the rolled-back index is deleted");
    let c = s.db.pg.fresh_client().await.expect("client");
    c.execute(
        &format!(
            "UPDATE {} SET doc = jsonb_set(doc, '{{n}}', '1000') WHERE doc_id = 'doc-000001'",
            s.pillow
        ),
        &[],
    )
    .await
    .expect("update");
    s.publish(&producer, "doc-000001").await;
    s.wait_equal(&s.alias, Duration::from_secs(60)).await;
    still_running(&mut pillow, &s);
    let status = s.index_status(&s.new).await;
    assert_eq!(
        status, 404,
        "the pillow no longer writes the rolled-back index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_conflict_in_the_new_index_stops_the_run_with_the_old_index_serving() {
    let _ = require!("TEST_ELASTICSEARCH_URL");
    let strict = json!({"dynamic": "strict", "properties": {"domain": {"type": "keyword"}}});
    let Some(s) = Setup::new("reindex_conflict", 200, &strict, &json!({})).await else {
        return;
    };
    // The old index, as a pillow with a lax mapping made it.
    let (status, r) = call(
        &s.es_url,
        Method::Put,
        &format!("/{}", s.old),
        Some(
            json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                    "aliases": {&s.alias: {}}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let out = s.reindex_output(&["start", "--new-index", &s.new, "--noinput"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit status 7 for differences: {stderr}"
    );
    assert!(
        stderr.contains("strict_dynamic_mapping_exception") && stderr.contains(&s.new),
        "the error names the index and the node's reason: {stderr}"
    );
    assert_eq!(s.step().await, "verify");
    assert_eq!(
        s.alias_points_at().await,
        vec![s.old.clone()],
        "the old index still serves"
    );
    // A second start is refused while this run has not ended; abort deletes the new index.
    let again = s.reindex_output(&["start", "--noinput"]);
    assert_eq!(again.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("unfinished reindex"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let abort = s.reindex_output(&["abort", "--noinput"]);
    assert!(
        abort.status.success(),
        "{}",
        String::from_utf8_lossy(&abort.stderr)
    );
    assert_eq!(s.step().await, "aborted");
    let status = s.index_status(&s.new).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preindex_fills_a_missing_index_before_the_pillow_starts_and_the_pillow_writes_there() {
    let _ = require!("TEST_ELASTICSEARCH_URL");
    let mappings = json!({"properties": {"domain": {"type": "keyword"}, "n": {"type": "integer"}}});
    let Some(s) = Setup::new("preindex", 500, &mappings, &json!({})).await else {
        return;
    };
    let out = s.reindex_output(&["preindex", "--noinput"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "preindex: {text}");
    assert_eq!(s.step().await, "done", "{text}");
    let serving = s.alias_points_at().await;
    assert_eq!(serving.len(), 1, "{serving:?}");
    assert_ne!(serving[0], s.old, "a new index behind the alias");
    s.wait_equal(&s.alias, Duration::from_secs(30)).await;
    let again = s.reindex_output(&["preindex", "--noinput"]);
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    // The pillow writes to the index the preindex made, and never creates its configured one.
    let mut pillow = s.start_pillow();
    let producer = ChangeProducer::new(&s.bootstrap).expect("producer");
    let c = s.db.pg.fresh_client().await.expect("client");
    c.execute(
        &format!(
            "UPDATE {} SET doc = jsonb_set(doc, '{{n}}', '77') WHERE doc_id = 'doc-000003'",
            s.pillow
        ),
        &[],
    )
    .await
    .expect("update");
    s.publish(&producer, "doc-000003").await;
    s.wait_equal(&s.alias, Duration::from_secs(60)).await;
    still_running(&mut pillow, &s);
    let status = s.index_status(&s.old).await;
    assert_eq!(
        status,
        404,
        "the pillow follows the preindex run: {}",
        s.log_text("pillow")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_backfill_with_the_nodes_reason_and_resume_finishes_once_it_is_freed()
{
    let _ = require!("TEST_ELASTICSEARCH_URL");
    // A node of this test's own: its flood-stage watermark is lowered below its free disk, which
    // blocks every index on it (the shared node's would be every other test's). Disk figures
    // every 10 s (the least the node takes), so the block comes and goes within that.
    let node =
        crate::support::OwnSearchNode::start("disk", &["cluster.info.update.interval=10s"]).await;
    let mappings = json!({"properties": {"domain": {"type": "keyword"}}});
    // A short outage budget: the blocked writes are given up after 3 s (300 s by default).
    let extra = json!({"outage_budget_secs": 3});
    let Some(s) = Setup::new_on(&node.url, "reindex_disk", 300, &mappings, &extra).await else {
        return;
    };
    let (status, r) = call(
        &s.es_url,
        Method::Put,
        &format!("/{}", s.old),
        Some(json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}, "aliases": {&s.alias: {}}})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    // The new index exists before the disk fills (a full node allocates no new shard).
    let (status, r) = call(
        &s.es_url,
        Method::Put,
        &format!("/{}", s.new),
        Some(json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let watermarks = |v: Value| {
        json!({"transient": {
            "cluster.routing.allocation.disk.threshold_enabled": true,
            "cluster.routing.allocation.disk.watermark.low": v,
            "cluster.routing.allocation.disk.watermark.high": v,
            "cluster.routing.allocation.disk.watermark.flood_stage": v,
        }})
    };
    // Free disk below 10,000 TB: the node is "full".
    let (status, r) = call(
        &s.es_url,
        Method::Put,
        "/_cluster/settings",
        Some(watermarks(json!("10000tb"))),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let blocked = |want: bool| {
        let s = &s;
        async move {
            let started = Instant::now();
            loop {
                let (_, r) = call(
                    &s.es_url,
                    Method::Get,
                    &format!("/{}/_settings/index.blocks.*", s.new),
                    None,
                )
                .await;
                let on = r[&s.new]["settings"]["index"]["blocks"]["read_only_allow_delete"]
                    == json!("true");
                if on == want {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "the node's flood-stage block is still {}: {r}",
                    if on { "on" } else { "off" }
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    blocked(true).await;
    let out = s.reindex_output(&["start", "--new-index", &s.new, "--noinput"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&s.new)
            && stderr.contains("flood-stage watermark")
            && stderr.contains("still unavailable"),
        "the error names the index and the node's reason: {stderr}"
    );
    assert_eq!(s.step().await, "backfill");
    assert_eq!(
        s.alias_points_at().await,
        vec![s.old.clone()],
        "the old index still serves"
    );
    let (status, _) = call(
        &s.es_url,
        Method::Get,
        &format!("/{}/_search", s.alias),
        None,
    )
    .await;
    assert_eq!(status, 200, "the old index is still read");
    // Space is freed: the node lifts the block by itself, and the run carries on.
    let (status, r) = call(
        &s.es_url,
        Method::Put,
        "/_cluster/settings",
        Some(watermarks(Value::Null)),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    blocked(false).await;
    let out = s.reindex_output(&["resume", "--noinput"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.step().await, "swapped");
    assert_eq!(s.alias_points_at().await, vec![s.new.clone()]);
    s.wait_equal(&s.alias, Duration::from_secs(30)).await;
}

/// Publishes a change of `id` embedding version `n` of its document (`None`: a deletion) and
/// records what the index must end with.
async fn publish_embedded(
    s: &Setup,
    producer: &ChangeProducer,
    expected: &std::sync::Mutex<std::collections::BTreeMap<String, Value>>,
    id: &str,
    n: Option<u64>,
) {
    let mut meta = ChangeMeta::new(id, "sql", "forms");
    if let Some(n) = n {
        let doc = json!({"_id": id, "doc_type": "XFormInstance", "domain": "d1", "n": n});
        meta.extra.insert("document".into(), doc);
        expected.lock().expect("lock").insert(
            id.to_owned(),
            json!({"doc_type": "XFormInstance", "domain": "d1", "n": n}),
        );
    } else {
        meta.is_deletion = true;
        expected.lock().expect("lock").remove(id);
    }
    producer
        .send_change(&s.topic.name, &meta)
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reindex_from_kafka_copies_the_newest_version_of_each_document_with_the_pillow_running() {
    let _ = require!("TEST_ELASTICSEARCH_URL");
    let mappings = json!({"properties": {"domain": {"type": "keyword"}, "n": {"type": "integer"}}});
    let Some(s) = Setup::new("reindex_kafka", 0, &mappings, &json!({})).await else {
        return;
    };
    let producer = ChangeProducer::new(&s.bootstrap).expect("producer");
    let expected = std::sync::Mutex::new(std::collections::BTreeMap::new());
    // Three versions of 800 documents; every seventh is deleted in the last round.
    for round in 0..3u64 {
        for i in 0..800 {
            let id = format!("k-{i:04}");
            let n = (round < 2 || i % 7 != 0).then_some(round);
            publish_embedded(&s, &producer, &expected, &id, n).await;
        }
    }
    let mut pillow = s.start_pillow();
    s.wait_matches(&s.old, Some(&expected), Duration::from_secs(90))
        .await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = async {
        let mut version = 10u64;
        while !stop.is_cancelled() {
            let (i, delete) = {
                let mut rng = rand::rng();
                (rng.random_range(0..900), rng.random_range(0..10) == 0)
            };
            version += 1;
            let id = format!("k-{i:04}");
            publish_embedded(&s, &producer, &expected, &id, (!delete).then_some(version)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let rebuild = async {
        let mut child = s.reindex(&[
            "start",
            "--from-kafka",
            "--new-index",
            &s.new,
            "--chunk-size",
            "100",
            "--keep-old",
            "1h",
            "--noinput",
        ]);
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..2000))).await;
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL the reindex");
            eprintln!("reindex from kafka: SIGKILL at step {:?}", s.step().await);
        }
        let _ = child.wait();
        let status = s.reindex(&["resume", "--noinput"]).wait().expect("resume");
        stop.cancel();
        status
    };
    let ((), status) = tokio::join!(writer, rebuild);
    let log = s.log_text("reindex");
    assert!(status.success(), "the resume failed ({status}): {log}");
    assert_eq!(s.step().await, "swapped", "{log}");
    assert_eq!(s.alias_points_at().await, vec![s.new.clone()], "{log}");
    s.wait_matches(&s.alias, Some(&expected), Duration::from_secs(90))
        .await;
    s.wait_matches(&s.old, Some(&expected), Duration::from_secs(30))
        .await;
    still_running(&mut pillow, &s);
}
