//! The shipped monitoring files (deploy/prometheus/alerts.yml, deploy/grafana/pillowtop.json)
//! use only metric names that pillowtop exports: the names a pillow run records (rendered as the
//! `--metrics-port` endpoint renders them) and the names a real `pillowtop lag --metrics-port`
//! process serves against the real services (a lagging checkpoint, an error row). The rules
//! themselves are tested by promtool (tests/prometheus/check).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::ChangeProducer;
use pillowtop::feed::memory::MemoryFeed;
use pillowtop::metrics::{self, MemoryRecorder};
use pillowtop::ops::prometheus;
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::Processor;
use pillowtop::store::checkpoints::memory::MemoryCheckpointStore;
use pillowtop::store::errors::memory::MemoryErrorStore;
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `commcare_…` / `pillowtop_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            if word.starts_with("commcare_") || word.starts_with("pillowtop_") {
                out.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The names in a Prometheus text rendering.
fn rendered_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// What a pillow run records: changes, a failing change, an invalid message, checkpoints.
async fn pillow_run_names() -> BTreeSet<String> {
    let mut feed = MemoryFeed::new(&["t"], 1);
    feed.push_change("t", 0, "a");
    feed.push_change("t", 0, "bad");
    feed.push("t", 0, Some("x"), b"not json".to_vec());
    feed.push_tick();
    let p = RecordingProcessor::new("p", true);
    p.fail_ids.lock().expect("lock").insert("bad".to_owned());
    let processors: Vec<Box<dyn Processor>> = vec![Box::new(p)];
    let mut config = PillowConfig::new("deploy-names", "deploy-names");
    config.checkpoint_frequency = 1;
    let recorder = Arc::new(MemoryRecorder::new());
    Pillow::new(
        config,
        Box::new(feed),
        processors,
        Arc::new(MemoryCheckpointStore::new()),
        Arc::new(MemoryErrorStore::default()),
    )
    .with_metrics(recorder.clone())
    .run(&CancellationToken::new())
    .await
    .expect("run");
    rendered_names(&prometheus::render(&recorder.snapshot()))
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "deploy", 1).await;
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for i in 0..5 {
        producer
            .send_change(
                &topic.name,
                &ChangeMeta::new(format!("d{i}"), "sql", "case-sql"),
            )
            .await
            .expect("send");
    }
    let id = db.id("deploy");
    let c = db.pg.fresh_client().await.expect("client");
    c.execute(
        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", last_modified) VALUES ($1, $2, 0, 1, now())"#,
        &[&id, &topic.name],
    )
    .await
    .expect("checkpoint row");
    c.execute(
        "INSERT INTO pillow_retry_pillowerror (doc_id, pillow, date_created, date_last_attempt, date_next_attempt, total_attempts, current_attempt, error_type, error_traceback) \
         VALUES ('d0', $1, now(), now(), now(), 1, 1, 'E', 't')",
        &[&id],
    )
    .await
    .expect("error row");

    // A real `pillowtop lag --metrics-port` against the services.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args([
            "lag",
            &id,
            "--metrics-port",
            &port.to_string(),
            "--interval",
            "1",
        ])
        .env("PILLOWTOP_POSTGRES_URL", &url)
        .env("PILLOWTOP_KAFKA_BOOTSTRAP", &bootstrap)
        .env("PILLOWTOP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pillowtop lag");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scraped = String::new();
    while Instant::now() < deadline {
        if let Some(body) = http_get(port) {
            if body.contains("commcare_pillowtop_error_queue") {
                scraped = body;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let lag_names = rendered_names(&scraped);
    for n in [
        "commcare_change_feed_need_processing",
        "commcare_change_feed_processed_offsets",
        "commcare_change_feed_current_offsets",
        "commcare_change_feed_seconds_since_last_update",
        "commcare_pillowtop_error_queue",
        "pillowtop_checkpoint_retention_remaining_seconds",
        "pillowtop_checkpoint_time_lag_seconds",
    ] {
        assert!(
            lag_names.contains(n),
            "`pillowtop lag --metrics-port` lacks {n}: {scraped}"
        );
    }
    assert!(
        scraped.contains(&format!(
            "commcare_pillowtop_error_queue{{pillow_name=\"{id}\"}} 1"
        )),
        "{scraped}"
    );
    // Retention: the topic's default 7 days minus the age of the change at offset 1 (seconds old).
    let line = scraped
        .lines()
        .find(|l| {
            l.starts_with("pillowtop_checkpoint_retention_remaining_seconds")
                && l.contains(&topic.name)
        })
        .expect("a retention line for the topic");
    let secs: f64 = line
        .rsplit(' ')
        .next()
        .expect("value")
        .parse()
        .expect("number");
    assert!(
        (7.0 * 86400.0 - 120.0..=7.0 * 86400.0).contains(&secs),
        "{line}"
    );

    let mut exported = lag_names;
    exported.extend(pillow_run_names().await);
    // The stall watch's counter needs a stuck broker (tests/it/stall.rs): from the registry.
    exported.insert(prometheus::metric_name(metrics::FEED_STALLS));
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/pillowtop.json",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).expect("read");
        let used = metric_names(&text);
        assert!(used.len() >= 4, "{file} uses {used:?}");
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics nothing exports: {missing:?}; exported: {exported:?}"
        );
    }
}
