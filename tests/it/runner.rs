//! `pillowtop run --config FILE` end to end: the built binary over a real Kafka topic into a real
//! PostgreSQL reporting table; graceful stop on SIGTERM; invalid configs; and exactly-once mode
//! under SIGKILL at random moments (with an at-least-once control run proving that the
//! assertion can fail).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::ChangeProducer;
use pillowtop::feed::TopicPartition;
use serde_json::json;

use crate::support::{require, TestDb, TestTopic};

/// A pillow config for `topic` into `table`.
fn config_text(
    id: &str,
    topic: &str,
    bootstrap: &str,
    url: &str,
    table: &str,
    exactly_once: bool,
) -> String {
    format!(
        r#"
name = "{id}"
checkpoint_id = "{id}"
topics = ["{topic}"]
chunk_size = 100
checkpoint_frequency = 1000
max_checkpoint_delay_secs = 300

[kafka]
bootstrap = "{bootstrap}"
idle_timeout_ms = 1000

[postgres]
url = "{url}"

[[processors]]
type = "postgres_table"
table = "{table}"
primary_key = ["doc_id"]
apply_count_column = "applied"
exactly_once = {exactly_once}
columns = [
  {{ name = "doc_id", type = "text", change = "id" }},
  {{ name = "domain", type = "text", path = "domain" }},
  {{ name = "age", type = "integer", path = "form.age" }},
  {{ name = "received_on", type = "timestamptz", path = "received_on" }},
  {{ name = "seq", type = "bigint", change = "offset" }},
]
[processors.filter]
equals = {{ doc_type = "XFormInstance" }}
"#
    )
}

/// Writes `text` to a unique temporary file, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(id: &str, text: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{id}.toml"));
        std::fs::write(&p, text).expect("write config");
        Self(p)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Publishes `n` form changes with embedded documents; every `archived_every`-th is not an
/// XFormInstance (filtered out). Returns how many match.
async fn publish_forms(bootstrap: &str, topic: &str, n: usize, archived_every: usize) -> usize {
    let producer = ChangeProducer::new(bootstrap).expect("producer");
    let mut matching = 0;
    let metas: Vec<ChangeMeta> = (0..n)
        .map(|i| {
            let archived = archived_every > 0 && i % archived_every == 0;
            matching += usize::from(!archived);
            let mut m = ChangeMeta::new(format!("form-{i:07}"), "sql", "form-sql");
            m.domain = Some("demo".into());
            m.extra.insert(
                "document".into(),
                json!({
                    "doc_type": if archived { "XFormArchived" } else { "XFormInstance" },
                    "domain": "demo",
                    "received_on": "2024-05-06T07:08:09Z",
                    "form": {"age": i % 90, "meta": {"userID": format!("u{}", i % 13)}},
                }),
            );
            m
        })
        .collect();
    producer.send_changes(topic, metas).await.expect("publish");
    matching
}

async fn high_water_marks(bootstrap: &str, topic: &str) -> BTreeMap<TopicPartition, i64> {
    let info = pillowtop::ops::kafka::KafkaInfo::new(bootstrap).expect("info");
    let parts = info
        .partitions(&[topic.to_owned()])
        .await
        .expect("partitions");
    info.watermarks(&parts)
        .await
        .expect("watermarks")
        .into_iter()
        .map(|(tp, w)| (tp, w.high))
        .collect()
}

async fn checkpoint(db: &TestDb, id: &str) -> BTreeMap<TopicPartition, i64> {
    let c = db.pg.fresh_client().await.expect("client");
    c.query(
        r#"SELECT topic, "partition", "offset" FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1"#,
        &[&id],
    )
    .await
    .expect("checkpoint")
    .iter()
    .map(|r| (TopicPartition::new(r.get::<_, String>(0), r.get(1)), r.get(2)))
    .collect()
}

/// (rows, sum of applied, max applied)
async fn table_stats(db: &TestDb, table: &str) -> (i64, i64, i64) {
    let c = db.pg.fresh_client().await.expect("client");
    match c
        .query_one(
            &format!("SELECT count(*), coalesce(sum(applied), 0)::bigint, coalesce(max(applied), 0) FROM {table}"),
            &[],
        )
        .await
    {
        Ok(r) => (r.get(0), r.get(1), r.get(2)),
        Err(_) => (0, 0, 0), // not created yet
    }
}

/// `pillowtop run --config CFG --until-idle`, off the runtime's threads.
async fn run_until_idle(cfg: &TempConfig) -> std::process::Output {
    let cfg_path = cfg.0.to_str().expect("utf-8").to_owned();
    tokio::task::spawn_blocking(move || {
        pillowtop(&["run", "--config", &cfg_path, "--until-idle"])
            .output()
            .expect("run")
    })
    .await
    .expect("join")
}

fn pillowtop(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pillowtop"));
    c.args(args).env("PILLOWTOP_LOG", "info");
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn run_processes_a_topic_into_a_table_until_idle() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "runner", 4).await;
    let id = db.id("runner");
    let table = db.id("runner_table");
    let matching = publish_forms(&bootstrap, &topic.name, 5000, 10).await;
    let cfg = TempConfig::new(
        &id,
        &config_text(&id, &topic.name, &bootstrap, &url, &table, false),
    );
    let out = run_until_idle(&cfg).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("stopped (Idle): 5000 changes (0 failed, 0 invalid)"),
        "{stderr}"
    );
    assert_eq!(
        table_stats(&db, &table).await,
        (
            i64::try_from(matching).expect("small"),
            i64::try_from(matching).expect("small"),
            1
        )
    );
    assert_eq!(
        checkpoint(&db, &id).await,
        high_water_marks(&bootstrap, &topic.name).await
    );

    // An invalid config is invalid usage (exit 2), naming the bad key.
    let bad = TempConfig::new(
        &format!("{id}_bad"),
        &config_text(&id, &topic.name, &bootstrap, &url, &table, false)
            .replace("chunk_size", "chunk_sise"),
    );
    let out = pillowtop(&["run", "--config", bad.0.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk_sise"));
    let out = pillowtop(&[
        "run",
        "--config",
        cfg.0.to_str().expect("utf-8"),
        "--process-number",
        "3",
        "--num-processes",
        "2",
    ])
    .output()
    .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_gracefully_with_a_final_checkpoint() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "runner_term", 2).await;
    let id = db.id("runner_term");
    let table = db.id("runner_term_table");
    let matching = publish_forms(&bootstrap, &topic.name, 3000, 0).await;
    let cfg = TempConfig::new(
        &id,
        &config_text(&id, &topic.name, &bootstrap, &url, &table, false),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = pillowtop(&[
        "run",
        "--config",
        cfg.0.to_str().expect("utf-8"),
        "--metrics-port",
        &port.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    // Wait until everything is in the table, then ask it to stop.
    let started = Instant::now();
    while table_stats(&db, &table).await.0 < i64::try_from(matching).expect("small") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pillow did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The running pillow serves its metrics with CommCare's names.
    let metrics = http_get(port, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let success: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("commcare_change_feed_changes_success{") && l.contains(&id))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(success >= 3000.0, "changes_success {success}\n{metrics}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(stderr.contains("stopped (Shutdown)"), "{stderr}");
    assert_eq!(
        checkpoint(&db, &id).await,
        high_water_marks(&bootstrap, &topic.name).await
    );
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`; the whole response as text.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Runs the pillow binary repeatedly, SIGKILLing it at random moments, until its checkpoint
/// reaches the end of the topic; then one clean run. Returns (kills, rows, sum applied, max).
async fn kill_until_done(
    db: &TestDb,
    cfg: &TempConfig,
    id: &str,
    table: &str,
    hwm: &BTreeMap<TopicPartition, i64>,
) -> (u32, (i64, i64, i64)) {
    use rand::Rng;
    let log = std::env::temp_dir().join(format!("{id}.log"));
    let spawn = || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        pillowtop(&[
            "run",
            "--config",
            cfg.0.to_str().expect("utf-8"),
            "--until-idle",
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("spawn")
    };
    let tail = || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let mut kills = 0;
    let mut rng = rand::rng();
    let total: i64 = hwm.values().sum();
    while checkpoint(db, id).await != *hwm {
        let mut child = spawn();
        // Kill at a random point of this run's remaining work (measured by the rows it wrote),
        // then a few milliseconds later (mid-chunk): a time-based moment would miss the whole
        // run on an idle machine, where 100,000 changes take under a second.
        let before = table_stats(db, table).await.0;
        let at = before + (total - before) * rng.random_range(5..90) / 100;
        let started = std::time::Instant::now();
        let mut finished = false;
        while table_stats(db, table).await.0 < at.max(before + 1)
            && started.elapsed() < Duration::from_secs(30)
        {
            if child.try_wait().expect("try_wait").is_some() {
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        if finished || child.try_wait().expect("try_wait").is_some() {
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        assert!(kills < 60, "the pillow never caught up:\n{}", tail());
    }
    let status = spawn().wait().expect("final run");
    assert!(status.success(), "final run failed:\n{}", tail());
    assert_eq!(checkpoint(db, id).await, *hwm, "{}", tail());
    let _ = std::fs::remove_file(&log);
    (kills, table_stats(db, table).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_under_sigkill_at_random_moments() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "eo_sigkill", 4).await;
    const N: usize = 100_000;
    // Unique document ids: each change must be applied exactly once, so `applied` is 1 on
    // every row. A row applied by a killed run whose checkpoint did not commit would be
    // applied again on replay (applied = 2): that is what atomicity rules out.
    let matching =
        i64::try_from(publish_forms(&bootstrap, &topic.name, N, 0).await).expect("small");
    let hwm = high_water_marks(&bootstrap, &topic.name).await;

    let id = db.id("eo_sigkill");
    let table = db.id("eo_sigkill_table");
    let cfg = TempConfig::new(
        &id,
        &config_text(&id, &topic.name, &bootstrap, &url, &table, true),
    );
    let (kills, stats) = kill_until_done(&db, &cfg, &id, &table, &hwm).await;
    eprintln!("exactly-once: {kills} kills, (rows, sum applied, max applied) = {stats:?}");
    assert!(
        kills >= 1,
        "the test must kill at least once to mean anything"
    );
    assert_eq!(
        stats,
        (matching, matching, 1),
        "every change applied exactly once"
    );

    // Control: the same scenario at-least-once must show replays, or the assertion above
    // could not detect a broken exactly-once mode.
    let id = db.id("alo_sigkill");
    let table = db.id("alo_sigkill_table");
    // Its checkpoint is written only when idle (or at the end): every kill after a row was
    // written leaves rows past it, so the control replays on any machine (with the frequency
    // above, an idle machine can finish the run between two checkpoints and the kill).
    let cfg = TempConfig::new(
        &id,
        &config_text(&id, &topic.name, &bootstrap, &url, &table, false).replace(
            "checkpoint_frequency = 1000",
            "checkpoint_frequency = 100000000",
        ),
    );
    let (kills, stats) = kill_until_done(&db, &cfg, &id, &table, &hwm).await;
    eprintln!("at-least-once control: {kills} kills, (rows, sum applied, max applied) = {stats:?}");
    assert_eq!(stats.0, matching, "no row lost");
    assert!(
        stats.1 > matching,
        "the at-least-once control replayed nothing after {kills} kills: the exactly-once assertion would not detect a lost atomicity"
    );
}

/// `pillowtop run --workers 3` over 12 partitions: three pillows on one runtime in one process,
/// each reading exactly CommCare's share for its virtual numbering (`sorted[w::3]`), together
/// covering every change once and checkpointing every partition at its end.
#[tokio::test(flavor = "multi_thread")]
async fn run_with_virtual_workers_splits_the_partitions_as_commcare_does() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "workers", 12).await;
    let id = db.id("workers");
    let table = db.id("workers_table");
    let matching = publish_forms(&bootstrap, &topic.name, 3000, 0).await;
    let cfg = TempConfig::new(
        &id,
        &config_text(&id, &topic.name, &bootstrap, &url, &table, false),
    );
    let cfg_path = cfg.0.to_str().expect("utf-8").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        pillowtop(&[
            "run",
            "--config",
            &cfg_path,
            "--until-idle",
            "--workers",
            "3",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("3 virtual workers: 0 of 3, 1 of 3, 2 of 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3000 changes (0 failed, 0 invalid)"),
        "{stderr}"
    );
    // Every change exactly once (at-least-once, and here nothing was redelivered).
    let n = i64::try_from(matching).expect("small");
    assert_eq!(table_stats(&db, &table).await, (n, n, 1));
    assert_eq!(
        checkpoint(&db, &id).await,
        high_water_marks(&bootstrap, &topic.name).await
    );
    // Each worker owned CommCare's share: the pillow's start lines list its partitions.
    let all: Vec<TopicPartition> = (0..12)
        .map(|p| TopicPartition::new(topic.name.clone(), p))
        .collect();
    for w in 0..3u32 {
        let layout = pillowtop::feed::assignment::Layout {
            num_processes: 3,
            process_num: w,
            dedicated_migration_process: false,
        };
        let mine = layout.assign(&all).expect("layout");
        let listed = mine
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            stderr.contains(&format!("process={w} processes=3"))
                && stderr.contains(&format!("partitions={listed}")),
            "worker {w} should own {listed}\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_independent_processors_runs_each_lane_on_its_own_task_into_two_tables() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "runner-lanes", 4).await;
    let id = db.id("runner_lanes");
    let (first, second) = (db.id("runner_lanes_a"), db.id("runner_lanes_b"));
    let matching = publish_forms(&bootstrap, &topic.name, 3000, 10).await;
    // Two tables, so two processors; independent, each lane on a task of its own (the CLI).
    let text = config_text(&id, &topic.name, &bootstrap, &url, &first, false);
    let processor = &text[text.find("[[processors]]").expect("processor")..];
    let text = format!(
        "processor_checkpoints = \"independent\"\n{text}\n{}",
        processor.replace(&first, &second)
    );
    let cfg = TempConfig::new(&id, &text);
    let out = run_until_idle(&cfg).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("independent processors read Kafka once"),
        "{stderr}"
    );
    let n = i64::try_from(matching).expect("small");
    assert_eq!(table_stats(&db, &first).await, (n, n, 1));
    assert_eq!(table_stats(&db, &second).await, (n, n, 1));
    let hwm = high_water_marks(&bootstrap, &topic.name).await;
    assert_eq!(checkpoint(&db, &id).await, hwm);
    // Each processor's own rows are at the end too.
    let c = db.pg.fresh_client().await.expect("client");
    let lanes: Vec<String> = c
        .query(
            "SELECT DISTINCT checkpoint_id FROM pillowtop_kafkacheckpoint WHERE checkpoint_id LIKE $1 || '/processor/_%' ORDER BY 1",
            &[&id],
        )
        .await
        .expect("lanes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lanes.len(), 2, "{lanes:?}");
    for lane in &lanes {
        assert_eq!(&checkpoint(&db, lane).await, &hwm, "{lane}");
    }
}
