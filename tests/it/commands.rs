//! CommCare's remaining commands through the `pillowtop` binary against the real services: the
//! checkpoint fixes (after a rewind, from a date, from a file), the Kafka inspection commands
//! (tail with Ctrl-C and --limit, search, dump of the remaining changes), the topic commands, and
//! the daily history snapshot recorded by a running pillow. Each write command is run dry, with
//! its question declined, refused, and applied.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use pillowtop::change::ChangeMeta;
use pillowtop::feed::assignment::Layout;
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin};
use pillowtop::feed::memory::MemoryFeed;
use pillowtop::feed::TopicPartition;
use pillowtop::pg::Pg;
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::processor::Processor;
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::checkpoints::CheckpointStore;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::store::history::postgres::PostgresHistoryStore;
use pillowtop::store::history::HistoryStore;
use pillowtop::store::liveness::postgres::PostgresLivenessStore;
use pillowtop::store::liveness::LivenessStore;
use pillowtop::testing::unique_name;
use tokio_util::sync::CancellationToken;

use crate::support::{require, TestDb, TestTopic};

/// Writes rows `(topic, partition, offset)` of `id` directly.
async fn put(pg: &Pg, id: &str, rows: &[(&str, i32, i64)]) {
    let c = pg.fresh_client().await.expect("client");
    for (t, p, o) in rows {
        c.execute(
            r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", last_modified)
               VALUES ($1, $2, $3, $4, now())
               ON CONFLICT (checkpoint_id, topic, "partition") DO UPDATE SET "offset" = EXCLUDED."offset""#,
            &[&id, t, p, o],
        )
        .await
        .expect("insert row");
    }
}

async fn offsets(pg: &Arc<Pg>, id: &str) -> Vec<i64> {
    PostgresCheckpointStore::new(pg.clone())
        .load(id)
        .await
        .expect("load")
        .into_iter()
        .map(|r| r.offset)
        .collect()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1990, 1, d).expect("date")
}

/// Dates no other test uses: `fix-checkpoints-from-date` without ids sees only these.
fn early(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1980, 1, d).expect("date")
}

/// Records a snapshot of `id` holding `rows` under `date`.
async fn snapshot(pg: &Arc<Pg>, id: &str, date: NaiveDate, rows: &[(&str, i32, i64)]) {
    put(pg, id, rows).await;
    let s = PostgresHistoryStore::new(pg.clone())
        .snapshot_checkpoint(id, date, 30)
        .await
        .expect("snapshot");
    assert_eq!(s.rows, rows.len() as u64);
}

/// Runs the CLI with `args`, feeding `stdin`; returns (exit code, stdout, stderr).
fn cli(env: &[(&str, &str)], args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args(args)
        .envs(env.iter().copied())
        .env("PILLOWTOP_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pillowtop");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pg_env(url: &str) -> Vec<(&'static str, String)> {
    vec![("PILLOWTOP_POSTGRES_URL", url.to_owned())]
}

fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Deletes the history rows of `ids` (TestDb deletes their checkpoint rows).
async fn forget_history(pg: &Arc<Pg>, ids: &[String]) {
    PostgresHistoryStore::new(pg.clone())
        .delete_checkpoints(ids)
        .await
        .expect("delete history");
}

// ---------------------------------------------------------------------------------------------
// fix_checkpoint_after_rewind, fix_checkpoints_from_date, fix_checkpoints_from_file

#[tokio::test(flavor = "multi_thread")]
async fn fix_checkpoint_after_rewind_dry_run_declined_refused_and_applied() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let pg = &db.pg;
    let (id, empty) = (db.id("rewind"), db.id("rewind_empty"));
    snapshot(pg, &id, day(1), &[("case", 0, 40), ("case", 1, 70)]).await;
    snapshot(pg, &id, day(2), &[("case", 0, 50), ("case", 1, 60)]).await;
    // Day 3 recorded the rewound checkpoint, which is also what is stored now.
    snapshot(pg, &id, day(3), &[("case", 0, 10), ("case", 1, 90)]).await;
    let env = pg_env(&url);
    let env = env_refs(&env);
    let cmd = ["fix-checkpoint-after-rewind", id.as_str()];

    let (code, out, err) = cli(&env, &[&cmd[..], &["--dry-run"]].concat(), "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "set checkpoint {id} from the historical maximum: the snapshot of 1990-01-02"
        )),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was written"), "{out}");
    assert_eq!(offsets(pg, &id).await, [10, 90]);

    let (code, out, _) = cli(&env, &cmd, "y\nn\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!(
        "Are you sure you want to reset the checkpoint for the '{id}' pillow? Type ['y', 'yes'] to continue."
    )));
    assert!(out.contains("Have you stopped the pillow? Type ['y', 'yes'] to continue."));
    assert_eq!(
        offsets(pg, &id).await,
        [10, 90],
        "declined: nothing written"
    );

    // A live process of the pillow: refused without --force.
    let live = PostgresLivenessStore::new(pg.clone());
    live.register(
        &id,
        &id,
        &Layout::single(),
        &[TopicPartition::new("case", 0)],
    )
    .await
    .expect("register");
    let (code, _, err) = cli(&env, &[&cmd[..], &["--noinput"]].concat(), "");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("pillow {id} is running")), "{err}");
    live.unregister(&id, 0).await.expect("unregister");

    let (code, out, err) = cli(&env, &cmd, "yes\ny\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "checkpoint {id}: 2 rows set from the historical maximum"
        )),
        "{out}"
    );
    assert_eq!(offsets(pg, &id).await, [50, 60]);

    let (code, out, err) = cli(
        &env,
        &[&cmd[..], &["--by-partition", "--noinput"]].concat(),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(offsets(pg, &id).await, [50, 90], "each partition's maximum");
    let (code, out, _) = cli(
        &env,
        &[&cmd[..], &["--by-partition", "--noinput"]].concat(),
        "",
    );
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");

    let (code, _, err) = cli(
        &env,
        &["fix-checkpoint-after-rewind", &empty, "--noinput"],
        "",
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!(
            "checkpoint {empty} cannot be fixed from its history: it has no history snapshot"
        )),
        "{err}"
    );
    forget_history(pg, &[id]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fix_checkpoints_from_date_takes_the_newest_snapshot_before_the_date() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let pg = &db.pg;
    let (a, b) = (db.id("fromdate_a"), db.id("fromdate_b"));
    snapshot(pg, &a, early(1), &[("form", 0, 5)]).await;
    snapshot(pg, &a, early(3), &[("form", 0, 30)]).await;
    snapshot(pg, &b, early(2), &[("form", 0, 7)]).await;
    put(pg, &a, &[("form", 0, 99)]).await;
    put(pg, &b, &[("form", 0, 98)]).await;
    let env = pg_env(&url);
    let env = env_refs(&env);

    let (code, out, err) = cli(
        &env,
        &[
            "fix-checkpoints-from-date",
            "1980-01-03",
            &a,
            &b,
            "--dry-run",
            "--json",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("the plan as JSON");
    assert_eq!(
        plan[0]["source"], "the snapshot of 1980-01-01",
        "strictly before the date"
    );
    assert_eq!(plan[1]["source"], "the snapshot of 1980-01-02");
    assert!(err.contains("dry run"), "{err}");

    let (code, out, _) = cli(
        &env,
        &["fix-checkpoints-from-date", "1980-01-03", &a, &b],
        "n\n",
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(offsets(pg, &a).await, [99]);

    let (code, out, err) = cli(
        &env,
        &["fix-checkpoints-from-date", "1980-01-03", &a, &b],
        "y\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        (offsets(pg, &a).await, offsets(pg, &b).await),
        (vec![5], vec![7])
    );

    let (code, _, err) = cli(
        &env,
        &[
            "fix-checkpoints-from-date",
            "1980-01-02",
            &a,
            &b,
            "--noinput",
        ],
        "",
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("checkpoint {b} cannot be fixed from its history: it has no history snapshot before 1980-01-02")), "{err}");
    assert_eq!(
        offsets(pg, &a).await,
        [5],
        "nothing written when one checkpoint cannot be fixed"
    );

    // Without ids: every checkpoint with a snapshot before the date, after CommCare's extra
    // question (declined here). The 1980 dates keep other tests' snapshots (1990 and today) out.
    let (code, out, _) = cli(&env, &["fix-checkpoints-from-date", "1980-01-04"], "n\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("No pillows specified, are you sure you want to reset all pillows? Type ['y', 'yes'] to continue."), "{out}");
    assert!(
        out.contains(&format!(
            "set checkpoint {a} from the snapshot of 1980-01-03"
        )),
        "{out}"
    );
    forget_history(pg, &[a, b]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fix_checkpoints_from_file_sets_the_given_offsets() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let pg = &db.pg;
    let (a, b) = (db.id("fromfile_a"), db.id("fromfile_b"));
    put(pg, &a, &[("sms", 0, 1), ("sms", 1, 2), ("other", 0, 3)]).await;
    let dir = std::env::temp_dir().join(unique_name("fixfile"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("checkpoints.json");
    // CommCare's form for b: the sequence as a JSON string.
    std::fs::write(
        &file,
        format!(r#"{{"{a}": {{"sms,0": 11, "sms,1": 12}}, "{b}": "{{\"sms,0\": 5}}"}}"#),
    )
    .expect("write file");
    let f = file.to_str().expect("path");
    let env = pg_env(&url);
    let env = env_refs(&env);

    let (code, out, _) = cli(&env, &["fix-checkpoints-from-file", f, "--dry-run"], "");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("kept: other,0 at 3 (not in the source)"),
        "{out}"
    );
    assert!(out.contains("(no row)"), "b has no rows yet: {out}");
    let (code, _, _) = cli(&env, &["fix-checkpoints-from-file", f], "no\n");
    assert_eq!(code, 1);
    assert_eq!(offsets(pg, &a).await, [3, 1, 2]);
    let (code, out, err) = cli(&env, &["fix-checkpoints-from-file", f], "yes\n");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(offsets(pg, &a).await, [3, 11, 12], "other,0 kept");
    assert_eq!(offsets(pg, &b).await, [5]);

    std::fs::write(&file, r#"{"x": {"sms": 1}}"#).expect("write");
    let (code, _, err) = cli(&env, &["fix-checkpoints-from-file", f, "--noinput"], "");
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(r#"checkpoint file: checkpoint x: partition "sms" is not "topic,partition""#),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// create_kafka_topics, list_kafka_topics

#[tokio::test(flavor = "multi_thread")]
async fn create_kafka_topics_creates_only_the_missing_ones_and_list_shows_them() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let existing = TestTopic::new(&bootstrap, "topics_existing", 2).await;
    let missing = unique_name("topics_missing");
    let env = [("PILLOWTOP_KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let both = format!("{},{missing}", existing.name);
    let create = [
        "create-kafka-topics",
        "--topics",
        both.as_str(),
        "--partitions",
        "3",
    ];
    let admin = KafkaAdmin::new(&bootstrap).expect("admin");
    let exists = |name: &str| admin_partitions(&admin, name);

    let (code, out, _) = cli(&env, &[&create[..], &["--dry-run"]].concat(), "");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "create topic {missing} with 3 partitions, replication factor 1"
        )),
        "{out}"
    );
    assert!(
        !out.contains(&format!("create topic {}", existing.name)),
        "{out}"
    );
    assert_eq!(exists(&missing), None, "dry run: nothing created");
    let (code, _, _) = cli(&env, &create, "n\n");
    assert_eq!(code, 1);
    assert_eq!(exists(&missing), None, "declined: nothing created");
    let (code, out, err) = cli(&env, &create, "y\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("created topic {missing}")), "{out}");
    assert_eq!(exists(&missing), Some(3));
    assert_eq!(
        exists(&existing.name),
        Some(2),
        "the existing topic is not altered"
    );
    let (code, out, _) = cli(&env, &create, "");
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do: every topic exists"), "{out}");
    let (code, _, err) = cli(
        &env,
        &[
            "create-kafka-topics",
            "--topics",
            "a,b",
            "--partitions",
            "0",
            "--noinput",
        ],
        "",
    );
    assert_eq!(code, 4, "{err}");

    let (code, out, _) = cli(
        &env,
        &[
            "list-kafka-topics",
            "--topics",
            &format!("{both},{missing}_nope"),
            "--json",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        listed,
        serde_json::json!([
            {"topic": existing.name, "partitions": 2},
            {"topic": missing, "partitions": 3},
            {"topic": format!("{missing}_nope"), "partitions": null},
        ])
    );
    let (code, out, _) = cli(&env, &["list-kafka-topics"], "");
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.trim_start().starts_with(&missing)),
        "every topic of the cluster: {out}"
    );
    admin.delete_topics(&[&missing]).await.expect("delete");
}

/// The partition count of `topic` (a blocking metadata call; fine in a test).
fn admin_partitions(admin: &KafkaAdmin, topic: &str) -> Option<usize> {
    match admin.partitions(&[topic.to_owned()]) {
        Ok(p) => Some(p.len()),
        Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// tail_kafka, search_kafka_changes, ptop_dump_remaining_changes

fn meta(id: &str, doc_type: &str, subtype: Option<&str>) -> ChangeMeta {
    let mut m = ChangeMeta::new(id, "sql", "case-sql");
    m.document_type = Some(doc_type.to_owned());
    m.document_subtype = subtype.map(str::to_owned);
    m
}

/// Spawns the CLI with its stdout read line by line on a thread.
fn spawn(
    env: &[(&str, &str)],
    args: &[&str],
) -> (
    Child,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pillowtop"))
        .args(args)
        .envs(env.iter().copied())
        .env("PILLOWTOP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pillowtop");
    let lines = |r: Box<dyn Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        rx
    };
    let out = lines(Box::new(child.stdout.take().expect("stdout")));
    let err = lines(Box::new(child.stderr.take().expect("stderr")));
    (child, out, err)
}

fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {within:?}; saw:\n{seen}");
}

fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_kafka_follows_from_the_end_filters_and_stops_on_ctrl_c_or_limit() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "tail", 2).await;
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    producer
        .send_change(&topic.name, &meta("before", "CommCareCase", None))
        .await
        .expect("send");
    let env = [("PILLOWTOP_KAFKA_BOOTSTRAP", bootstrap.as_str())];

    // Ctrl-C: a clean stop with the summary.
    let (mut child, out, err) = spawn(
        &env,
        &[
            "tail-kafka",
            "--topics",
            &topic.name,
            "--doc-type",
            "CommCareCase",
        ],
    );
    wait_for(
        &err,
        "from their ends (Ctrl-C to stop)",
        Duration::from_secs(30),
    );
    // The assignment at the ends happens right after that line: publish until one arrives.
    let mut line = None;
    for i in 0..50 {
        producer
            .send_change(
                &topic.name,
                &meta(&format!("form-{i}"), "XFormInstance", None),
            )
            .await
            .expect("send");
        producer
            .send_change(
                &topic.name,
                &meta(&format!("case-{i}"), "CommCareCase", Some("person")),
            )
            .await
            .expect("send");
        if let Ok(l) = out.recv_timeout(Duration::from_millis(300)) {
            line = Some(l);
            break;
        }
    }
    let line = line.expect("a followed change is printed");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["metadata"]["document_type"], "CommCareCase", "{line}");
    assert!(
        v["id"].as_str().is_some_and(|id| id.starts_with("case-")),
        "not the change before the start: {line}"
    );
    assert!(
        v["partition"].is_number() && v["offset"].is_number(),
        "{line}"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(10)),
        0,
        "Ctrl-C ends tail-kafka with 0"
    );
    wait_for(&err, "tail-kafka: interrupted:", Duration::from_secs(5));

    // --limit: exits by itself after that many changes.
    let (mut child, out, err) = spawn(
        &env,
        &["tail-kafka", "--topics", &topic.name, "--limit", "2"],
    );
    wait_for(&err, "Ctrl-C to stop", Duration::from_secs(30));
    for i in 0..50 {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        producer
            .send_change(
                &topic.name,
                &meta(&format!("more-{i}"), "CommCareCase", None),
            )
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 0);
    let printed: Vec<String> = out.try_iter().collect();
    assert_eq!(printed.len(), 2, "{printed:?}");
    wait_for(&err, "tail-kafka: limit reached: ", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn search_kafka_changes_finds_ids_types_and_times_up_to_a_limit() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let topic = TestTopic::new(&bootstrap, "search", 3).await;
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    for i in 0..30 {
        let (t, sub) = if i % 3 == 0 {
            ("CommCareCase", Some("person"))
        } else {
            ("XFormInstance", None)
        };
        producer
            .send_change(&topic.name, &meta(&format!("doc-{i}"), t, sub))
            .await
            .expect("send");
    }
    producer
        .send_raw(&topic.name, Some(0), Some("bad"), b"not json")
        .await
        .expect("send");
    let env = [("PILLOWTOP_KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let ids = |out: &str| -> Vec<String> {
        let mut v: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json line")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned()
            })
            .collect();
        v.sort();
        v
    };

    let (code, out, err) = cli(
        &env,
        &[
            "search-kafka-changes",
            "--topic",
            &topic.name,
            "--doc-ids",
            "doc-4,doc-17,missing",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&out), ["doc-17", "doc-4"]);
    assert!(err.contains("search-kafka-changes: done: 31 messages read, 2 changes printed, 1 invalid messages skipped"), "{err}");

    let (code, out, _) = cli(
        &env,
        &[
            "search-kafka-changes",
            "--topic",
            &topic.name,
            "--doc-type",
            "CommCareCase",
            "--doc-subtype",
            "person",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(ids(&out).len(), 10);

    let (code, out, err) = cli(
        &env,
        &[
            "search-kafka-changes",
            "--topic",
            &topic.name,
            "--limit",
            "4",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 4);
    assert!(err.contains("limit reached"), "{err}");

    let tomorrow = (chrono::Utc::now() + chrono::Days::new(1))
        .format("%Y-%m-%d")
        .to_string();
    let (code, out, err) = cli(
        &env,
        &[
            "search-kafka-changes",
            "--topic",
            &topic.name,
            "--start-date",
            &tomorrow,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "nothing published after tomorrow: {out}");
    let (code, out, _) = cli(
        &env,
        &[
            "search-kafka-changes",
            "--topic",
            &topic.name,
            "--start-date",
            "2000-01-01",
            "--end-date",
            &tomorrow,
            "--doc-ids",
            "doc-0",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(ids(&out), ["doc-0"]);
    let (code, _, err) = cli(
        &env,
        &["search-kafka-changes", "--topic", &unique_name("nope")],
        "",
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dump_remaining_changes_writes_what_the_checkpoint_has_not_processed() {
    let bootstrap = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let topic = TestTopic::new(&bootstrap, "dump", 2).await;
    let producer = ChangeProducer::new(&bootstrap).expect("producer");
    let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for i in 0..20 {
        let id = format!("doc-{i}");
        let (p, _) = producer
            .send_raw(
                &topic.name,
                Some(i % 2),
                Some(&id),
                meta(&id, "CommCareCase", None).to_json().as_bytes(),
            )
            .await
            .expect("send");
        by_partition.entry(p).or_default().push(id);
    }
    let id = db.id("dump");
    // Processed: 4 of partition 0, 7 of partition 1.
    put(&db.pg, &id, &[(&topic.name, 0, 4), (&topic.name, 1, 7)]).await;
    let mut want: Vec<String> = by_partition[&0][4..]
        .iter()
        .chain(&by_partition[&1][7..])
        .cloned()
        .collect();
    want.sort();
    let dir = std::env::temp_dir().join(unique_name("dump"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("remaining.gz");
    let env = [
        ("PILLOWTOP_KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("PILLOWTOP_POSTGRES_URL", url.as_str()),
    ];

    let (code, _, err) = cli(
        &env,
        &[
            "dump-remaining-changes",
            &id,
            "--output",
            file.to_str().expect("path"),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "checkpoint {id}: 9 remaining changes on 2 partitions"
        )),
        "{err}"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&file).expect("open"))
        .read_to_string(&mut text)
        .expect("gzip");
    let mut got: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            assert!(
                v["seq"].is_number() && v["deleted"] == false && v["metadata"].is_object(),
                "{l}"
            );
            v["id"].as_str().expect("id").to_owned()
        })
        .collect();
    got.sort();
    assert_eq!(got, want);

    let (code, out, _) = cli(
        &env,
        &[
            "dump-remaining-changes",
            &id,
            "--output",
            "-",
            "--limit",
            "3",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, _, err) = cli(
        &env,
        &["dump-remaining-changes", &db.id("dump_none"), "-o", "-"],
        "",
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("have no rows"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint history snapshots by the running pillows

#[tokio::test(flavor = "multi_thread")]
async fn running_pillows_record_one_history_snapshot_a_day_whichever_process_comes_first() {
    let db = TestDb::new(&require!("TEST_POSTGRES_URL")).await;
    let pg = &db.pg;
    let id = db.id("daily");
    let history = Arc::new(PostgresHistoryStore::new(pg.clone()));
    let run = |changes: &[(i32, &str)]| {
        let mut feed = MemoryFeed::new(&["t"], 2);
        for (p, doc) in changes {
            feed.push_change("t", *p, doc);
        }
        feed.push_tick();
        let mut config = PillowConfig::new(id.clone(), id.clone());
        config.checkpoint_frequency = 1;
        config.max_checkpoint_delay = None;
        let processors: Vec<Box<dyn Processor>> =
            vec![Box::new(RecordingProcessor::new("p", true))];
        Pillow::new(
            config,
            Box::new(feed),
            processors,
            Arc::new(PostgresCheckpointStore::new(pg.clone())),
            Arc::new(PostgresErrorStore::new(pg.clone())),
        )
        .with_history(history.clone())
    };
    run(&[(0, "a"), (1, "b")])
        .run(&CancellationToken::new())
        .await
        .expect("first run");
    let today = chrono::Utc::now().date_naive();
    let entries = history.list(Some(&id)).await.expect("list");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((entries[0].date, entries[0].rows), (today, 2));
    let first = entries[0].offsets_total;
    // Another process (or a restart) the same day: the day's snapshot stays as recorded.
    put(pg, &id, &[("t", 0, 0), ("t", 1, 0)]).await;
    run(&[(0, "c"), (0, "d"), (0, "e")])
        .run(&CancellationToken::new())
        .await
        .expect("second run");
    let entries = history.list(Some(&id)).await.expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].offsets_total, first, "idempotent within the day");
    // The snapshot restores through fix-checkpoints-from-date (the day after today).
    let (plans, _) = pillowtop::ops::fix::prepare_fix(
        pg,
        std::slice::from_ref(&id),
        &pillowtop::ops::fix::FixSource::BeforeDate(today + chrono::Days::new(1)),
        false,
    )
    .await
    .expect("plan");
    assert_eq!(plans[0].source, format!("the snapshot of {today}"));
    forget_history(pg, &[id]).await;
}
