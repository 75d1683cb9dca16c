//! `pillowtop reindex` of a `postgres_table` processor against the real services (issue 15): a
//! live pillow (a `pillowtop run` child) keeps writing its reporting table while the table is
//! rebuilt from the source with changes published all along; the reindex is SIGKILLed at random
//! moments and resumed; the table under its configured name ends equal to what the source
//! implies, the old version (kept for a rollback) too, the pillow never stops, and a rollback
//! gives the old version back. A rebuild after a definition change fills the new column of every
//! row, and once the keep window has passed the old version and the swap's view are gone.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pillowtop::change::ChangeMeta;
use pillowtop::feed::kafka::ChangeProducer;
use rand::Rng;

use crate::support::{pillowtop, require, Running, TestDb, TestTopic};

/// Every table and view whose name starts with the prefix is dropped on drop.
struct Relations {
    url: String,
    prefix: String,
}

impl Drop for Relations {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let _ = c
                    .batch_execute(&format!(
                        "DO $$ DECLARE r record; BEGIN
                           FOR r IN SELECT relname, relkind FROM pg_class
                                    WHERE relname LIKE '{prefix}%' AND relkind IN ('v', 'r')
                                    ORDER BY relkind DESC LOOP
                             IF r.relkind = 'v' THEN EXECUTE format('DROP VIEW IF EXISTS %I', r.relname);
                             ELSE EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', r.relname); END IF;
                           END LOOP; END $$;"
                    ))
                    .await;
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
    config: std::path::PathBuf,
    /// The source table (the pillow's document store).
    source: String,
    /// The reporting table's configured name.
    table: String,
    pg_url: String,
    _relations: Relations,
}

impl Setup {
    /// A source table of `docs` documents, a topic, and a pillow config writing the reporting
    /// table (doc_id, domain, n; only `XFormInstance` documents), its documents fetched from the
    /// source.
    async fn new(name: &str, docs: usize) -> Option<Self> {
        let bootstrap = crate::support::service("TEST_KAFKA_BOOTSTRAP")?;
        let pg_url = crate::support::service("TEST_POSTGRES_URL")?;
        let db = TestDb::new(&pg_url).await;
        let pillow = db.id(name);
        let topic = TestTopic::new(&bootstrap, name, 2).await;
        let source = format!("{pillow}_src");
        let c = db.pg.fresh_client().await.expect("client");
        c.batch_execute(&format!(
            "CREATE TABLE {source} (doc_id text PRIMARY KEY, doc jsonb NOT NULL);
             INSERT INTO {source} SELECT 'doc-' || lpad(i::text, 6, '0'),
               jsonb_build_object('_id', 'doc-' || lpad(i::text, 6, '0'), 'doc_type', 'XFormInstance',
                                  'domain', 'd' || (i % 3), 'n', i % 7)
             FROM generate_series(1, {docs}) i;"
        ))
        .await
        .expect("source table");
        let s = Self {
            _relations: Relations {
                url: pg_url.clone(),
                prefix: pillow.clone(),
            },
            config: std::env::temp_dir().join(format!("{pillow}.toml")),
            table: format!("{pillow}_report"),
            db,
            bootstrap,
            pillow,
            topic,
            source,
            pg_url,
        };
        s.write_config(false);
        Some(s)
    }

    /// The pillow's config; `with_n2` adds a column (a definition change).
    fn write_config(&self, with_n2: bool) {
        let n2 = if with_n2 {
            r#"  { name = "n2", type = "bigint", path = "n" },
"#
        } else {
            ""
        };
        let store = format!(
            r#"[[document_stores]]
data_source_type = "sql"
data_source_name = "*"
table = "{}"
id_column = "doc_id"
doc_column = "doc"
"#,
            self.source
        );
        self.write_config_with(&store, n2);
    }

    /// The pillow's config with `store` (its document stores) and more columns.
    fn write_config_with(&self, store: &str, more_columns: &str) {
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

{store}
[[processors]]
type = "postgres_table"
table = "{table}"
primary_key = ["doc_id"]
flush_max_delay_ms = 50
filter = {{ equals = {{ doc_type = "XFormInstance" }} }}
columns = [
  {{ name = "doc_id", type = "text", change = "id" }},
  {{ name = "domain", type = "text", path = "domain" }},
  {{ name = "n", type = "integer", path = "n" }},
{more_columns}]
"#,
            pillow = self.pillow,
            topic = self.topic.name,
            bootstrap = self.bootstrap,
            pg_url = self.pg_url,
            table = self.table,
        );
        std::fs::write(&self.config, toml).expect("config file");
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
        Running(
            pillowtop(&["run", "--config", self.config.to_str().expect("path")])
                .stdout(Stdio::null())
                .stderr(self.log("pillow"))
                .spawn()
                .expect("spawn the pillow"),
        )
    }

    fn reindex(&self, args: &[&str]) -> Child {
        let mut all = vec!["reindex"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", self.config.to_str().expect("path")]);
        pillowtop(&all)
            .stdout(self.log("reindex"))
            .stderr(self.log("reindex"))
            .spawn()
            .expect("spawn pillowtop reindex")
    }

    fn reindex_output(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["reindex"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", self.config.to_str().expect("path")]);
        pillowtop(&all).output().expect("pillowtop reindex")
    }

    async fn publish(&self, producer: &ChangeProducer, id: &str) {
        producer
            .send_change(&self.topic.name, &ChangeMeta::new(id, "sql", "forms"))
            .await
            .expect("publish");
    }

    /// The rows the source implies: its `XFormInstance` documents (`n2` = `n` when asked).
    async fn expected(&self, with_n2: bool) -> BTreeMap<String, String> {
        let n2 = if with_n2 { ", (doc->>'n')::bigint" } else { "" };
        self.rows(&format!(
            "SELECT doc_id, row(doc->>'domain', (doc->>'n')::int{n2})::text FROM {} WHERE doc->>'doc_type' = 'XFormInstance'",
            self.source
        ))
        .await
    }

    /// The rows of relation `name` (a table or a view; none while it does not exist).
    async fn table(&self, name: &str, with_n2: bool) -> BTreeMap<String, String> {
        if self.kind(name).await.is_empty() {
            return BTreeMap::new();
        }
        let n2 = if with_n2 { ", n2" } else { "" };
        self.rows(&format!(
            "SELECT doc_id, row(domain, n{n2})::text FROM \"{name}\""
        ))
        .await
    }

    async fn rows(&self, sql: &str) -> BTreeMap<String, String> {
        let c = self.db.pg.fresh_client().await.expect("client");
        c.query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", pillowtop::error::describe_postgres(&e)))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Waits until table `name` holds what the source implies.
    async fn wait_equal(&self, name: &str, with_n2: bool, within: Duration) {
        let started = Instant::now();
        loop {
            let (want, got) = (
                self.expected(with_n2).await,
                self.table(name, with_n2).await,
            );
            if want == got {
                return;
            }
            if started.elapsed() > within {
                let missing: Vec<_> = want
                    .keys()
                    .filter(|k| !got.contains_key(*k))
                    .take(5)
                    .collect();
                let extra: Vec<_> = got
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .take(5)
                    .collect();
                let differ: Vec<_> = want
                    .iter()
                    .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                    .take(5)
                    .collect();
                panic!(
                    "table {name} differs from the source after {within:?}: {} rows wanted, {} found; missing {missing:?}, extra {extra:?}, differing {differ:?}\npillow log:\n{}\nreindex log:\n{}",
                    want.len(),
                    got.len(),
                    self.log_text("pillow"),
                    self.log_text("reindex")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `r` (table), `v` (view), or empty when `name` does not exist.
    async fn kind(&self, name: &str) -> String {
        let c = self.db.pg.fresh_client().await.expect("client");
        c.query_opt(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)",
            &[&format!("\"{name}\"")],
        )
        .await
        .expect("relkind")
        .map(|r| r.get(0))
        .unwrap_or_default()
    }

    /// The newest run's step, old and new version names.
    async fn run(&self) -> (String, String, String) {
        let c = self.db.pg.fresh_client().await.expect("client");
        c.query_opt(
            "SELECT step, old_index, new_index FROM pillowtop_rs_reindex WHERE pillow = $1 ORDER BY id DESC LIMIT 1",
            &[&self.pillow],
        )
        .await
        .expect("run")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap_or_default()
    }
}

fn still_running(p: &mut Running, s: &Setup) {
    assert!(
        p.0.try_wait().expect("try_wait").is_none(),
        "the pillow stopped: {}",
        s.log_text("pillow")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_reindex_killed_at_random_moments_and_resumed_ends_equal_to_the_source_with_the_pillow_running(
) {
    let _ = require!("TEST_POSTGRES_URL");
    let docs = 6000;
    let Some(s) = Setup::new("rxt_kill", docs).await else {
        return;
    };
    let producer = ChangeProducer::new(&s.bootstrap).expect("producer");
    for i in 1..=docs {
        s.publish(&producer, &format!("doc-{i:06}")).await;
    }
    let mut pillow = s.start_pillow();
    s.wait_equal(&s.table, false, Duration::from_secs(90)).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        let s = &s;
        let producer = &producer;
        async move {
            crate::support::write_during(&s.db, &s.source, producer, &s.topic.name, docs, &stop)
                .await
        }
    };
    let rebuild = async {
        let mut kills = 0;
        let mut child = s.reindex(&[
            "start",
            "--chunk-size",
            "4",
            "--slices",
            "2",
            "--keep-old",
            "1h",
            "--sample-size",
            "300",
            "--noinput",
        ]);
        for _ in 0..3 {
            let wait = Duration::from_millis(rand::rng().random_range(200..2000));
            tokio::time::sleep(wait).await;
            if child.try_wait().expect("try_wait").is_none() {
                child.kill().expect("SIGKILL the reindex");
                kills += 1;
                eprintln!("table reindex: SIGKILL at step {:?}", s.run().await.0);
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
    eprintln!("table reindex: {kills} SIGKILLs, {changes} changes published during the rebuild");
    let (at, old, new) = s.run().await;
    assert_eq!(at, "swapped", "{log}");
    // The configured name is the rebuilt version now; the old one is kept and still written; the
    // view the swap left (a lagging process's second target) reads the old one.
    assert_eq!(s.kind(&s.table).await, "r");
    assert_eq!(s.kind(&old).await, "r");
    assert_eq!(s.kind(&new).await, "v");
    s.wait_equal(&s.table, false, Duration::from_secs(90)).await;
    s.wait_equal(&old, false, Duration::from_secs(30)).await;
    still_running(&mut pillow, &s);

    // Rollback: the configured name is the old version again, with every change; the rebuilt
    // one and the views go.
    let out = s.reindex_output(&["rollback", "--noinput"]);
    assert!(
        out.status.success(),
        "rollback: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.run().await.0, "rolled_back");
    assert_eq!(s.kind(&new).await, "", "the rolled-back version is dropped");
    assert_eq!(s.kind(&old).await, "", "the rollback's view is dropped");
    let c = s.db.pg.fresh_client().await.expect("client");
    c.execute(
        &format!(
            "UPDATE {} SET doc = jsonb_set(doc, '{{n}}', '1000') WHERE doc_id = 'doc-000001'",
            s.source
        ),
        &[],
    )
    .await
    .expect("update");
    s.publish(&producer, "doc-000001").await;
    s.wait_equal(&s.table, false, Duration::from_secs(60)).await;
    still_running(&mut pillow, &s);
    assert!(
        !s.log_text("pillow").contains("ERROR"),
        "the pillow logged errors: {}",
        s.log_text("pillow")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_rebuilt_after_a_definition_change_has_the_new_column_in_every_row_and_the_old_version_goes(
) {
    let _ = require!("TEST_POSTGRES_URL");
    let docs = 1500;
    let Some(s) = Setup::new("rxt_def", docs).await else {
        return;
    };
    let producer = ChangeProducer::new(&s.bootstrap).expect("producer");
    for i in 1..=docs {
        s.publish(&producer, &format!("doc-{i:06}")).await;
    }
    let mut pillow = s.start_pillow();
    s.wait_equal(&s.table, false, Duration::from_secs(90)).await;
    drop(pillow);
    // The definition gains a column: the pillow adds it, empty in the rows written before.
    s.write_config(true);
    pillow = s.start_pillow();
    let started = Instant::now();
    let column = format!(
        "SELECT column_name::text, '' FROM information_schema.columns WHERE table_name = '{}' AND column_name = 'n2'",
        s.table
    );
    while s.rows(&column).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the column was not added: {}",
            s.log_text("pillow")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let empty = s
        .rows(&format!(
            "SELECT doc_id, '' FROM \"{}\" WHERE n2 IS NULL",
            s.table
        ))
        .await;
    assert_eq!(empty.len(), docs, "the rows written before have no n2");
    let preflight = s.reindex_output(&["start", "--dry-run", "--json"]);
    let text = String::from_utf8_lossy(&preflight.stdout);
    assert!(
        preflight.status.success(),
        "dry run: {text}{}",
        String::from_utf8_lossy(&preflight.stderr)
    );
    assert!(
        text.contains(&format!("{}_r", s.table)),
        "the plan names the new version: {text}"
    );
    // The database runs on this host: preflight reads its filesystem's free space.
    let plan: serde_json::Value = serde_json::from_str(&text).expect("the plan is JSON");
    assert!(
        plan["preflight"]["free_bytes"]
            .as_i64()
            .is_some_and(|b| b > 0),
        "the database's free disk: {plan}"
    );

    let out = s.reindex_output(&["start", "--keep-old", "0s", "--noinput"]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "reindex: {log}");
    let (step, old, new) = s.run().await;
    assert_eq!(step, "done", "{log}");
    s.wait_equal(&s.table, true, Duration::from_secs(30)).await;
    assert_eq!(
        s.kind(&old).await,
        "",
        "the old version is dropped after its window"
    );
    assert_eq!(s.kind(&new).await, "", "the swap's view is dropped with it");
    // The pillow writes the rebuilt table, and only it.
    let c = s.db.pg.fresh_client().await.expect("client");
    c.execute(
        &format!(
            "UPDATE {} SET doc = jsonb_set(doc, '{{n}}', '99') WHERE doc_id = 'doc-000002'",
            s.source
        ),
        &[],
    )
    .await
    .expect("update");
    s.publish(&producer, "doc-000002").await;
    s.wait_equal(&s.table, true, Duration::from_secs(60)).await;
    still_running(&mut pillow, &s);
    assert_eq!(
        s.kind(&old).await,
        "",
        "nothing writes the dropped version again"
    );
}

/// The swap's view: a process that wrote both versions before the swap and has not yet read
/// the run again (it reads it about once a second) writes the configured name and the built
/// version's former name, now a view over the old version, so the old version misses nothing;
/// once it has read the swap it writes the old version by its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_has_not_seen_the_swap_still_writes_both_versions_through_the_view() {
    use std::fmt::Write as _;
    use std::sync::Arc;

    use pillowtop::change::Change;
    use pillowtop::ops::reindex::{ReindexOptions, ReindexSink, Reindexer, SqlSource};
    use pillowtop::pg::Pg;
    use pillowtop::processor::postgres::{PgTableProcessor, TableDefinition};
    use pillowtop::processor::Processor;

    let Some(pg_url) = crate::support::service("TEST_POSTGRES_URL") else {
        return;
    };
    let db = TestDb::new(&pg_url).await;
    let pillow = db.id("rxt_view");
    let _relations = Relations {
        url: pg_url.clone(),
        prefix: pillow.clone(),
    };
    let (source, table) = (format!("{pillow}_src"), format!("{pillow}_t"));
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "CREATE TABLE {source} (doc_id text PRIMARY KEY, doc jsonb NOT NULL);
         INSERT INTO {source} SELECT 'doc-' || i, jsonb_build_object('n', i) FROM generate_series(1, 3000) i;"
    ))
    .await
    .expect("source");
    let def: TableDefinition = toml::from_str(&format!(
        r#"
        table = "{table}"
        primary_key = ["doc_id"]
        flush_max_rows = 0
        columns = [
          {{ name = "doc_id", type = "text", change = "id" }},
          {{ name = "n", type = "integer", path = "n" }},
        ]
        "#
    ))
    .expect("definition");
    // This test process is the pillow's one live process: the run waits for its acknowledgement.
    c.execute(
        "INSERT INTO pillowtop_rs_process (pillow_name, process_num, num_processes, checkpoint_id, hostname, pid, started_at, heartbeat_at) \
         VALUES ($1, 0, 1, $1, $2, $3, now(), now())",
        &[&pillow, &pillowtop::store::liveness::hostname(), &pillowtop::store::liveness::pid()],
    )
    .await
    .expect("liveness row");
    let pg = Arc::new(Pg::new(&pg_url));
    let mut p = PgTableProcessor::new(def.clone(), pg.clone())
        .expect("processor")
        .with_reindex_watch(Arc::new(Pg::new(&pg_url)), &pillow);
    p.bootstrap_if_needed().await.expect("table");
    let name = p.name().to_owned();
    let r = Reindexer {
        pg: Arc::new(Pg::new(&pg_url)),
        pillow: pillow.clone(),
        processor: name,
        sink: ReindexSink::Table(def),
        topics: Vec::new(),
        kafka: None,
        stop: tokio_util::sync::CancellationToken::new(),
    };
    let mut options = ReindexOptions::new(SqlSource {
        table: source.clone(),
        id_column: "doc_id".into(),
        doc_column: "doc".into(),
    });
    options.keep_old_secs = 3600;
    options.chunk_size = 100;
    // The run on a thread of its own (its progress callback is not `Sync`).
    let run = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(r.start(&options, true, &|_| {}))
    });

    // New documents, written while the run goes on.
    let mut written: Vec<String> = Vec::new();
    let mut through_the_view = 0;
    let mut swapped_at: Option<Instant> = None;
    for i in 0.. {
        let id = format!("live-{i}");
        let msg = serde_json::json!({
            "document_id": id, "data_source_type": "sql", "data_source_name": "t",
            "document": {"n": i},
        });
        // As in production, the source has the document before its change is processed.
        c.execute(
            &format!("INSERT INTO {source} VALUES ($1, jsonb_build_object('n', $2::int))"),
            &[&id, &i32::try_from(i).expect("small")],
        )
        .await
        .expect("source row");
        let mut changes =
            vec![Change::from_message("t", 0, i, msg.to_string().as_bytes()).expect("change")];
        let outcome = p
            .process_changes_chunk(&mut changes)
            .await
            .expect("not fatal")
            .expect("the chunk is written");
        assert!(
            outcome.errors.is_empty() && outcome.retry.is_empty(),
            "{outcome:?}"
        );
        written.push(id);
        // What the run's built version's name is now: a table, then (after the swap) a view.
        let view: Option<String> = c
            .query_opt(
                "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass(quote_ident(new_index))) \
                 FROM pillowtop_rs_reindex WHERE pillow = $1 ORDER BY id DESC LIMIT 1",
                &[&pillow],
            )
            .await
            .expect("kind")
            .and_then(|r| r.get(0));
        let tables = p.tables();
        if view.as_deref() == Some("v") {
            swapped_at.get_or_insert_with(Instant::now);
            if tables.len() == 2 && tables[1].contains("_r") {
                through_the_view += 1; // written to the built version's name: the view
            }
            if swapped_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                assert!(
                    tables[1].contains("_o"),
                    "the processor writes the old version by its own name once it has read the swap: {tables:?}"
                );
                break;
            }
        }
        c.execute(
            "UPDATE pillowtop_rs_process SET heartbeat_at = now() WHERE pillow_name = $1",
            &[&pillow],
        )
        .await
        .expect("heartbeat");
        assert!(i < 20_000, "the run never swapped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = tokio::task::spawn_blocking(move || run.join())
        .await
        .expect("joined")
        .expect("the run's thread")
        .expect("the run");
    assert_eq!(done.step.as_str(), "swapped");
    assert!(
        through_the_view > 0,
        "no chunk was written between the swap and the processor's next read of the run"
    );
    eprintln!("{through_the_view} chunks written through the swap's view");
    // Both versions have every row the processor wrote.
    for t in [&table, &done.old_index] {
        let n: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM \"{t}\" WHERE doc_id = ANY($1)"),
                &[&written],
            )
            .await
            .expect("count")
            .get(0);
        if usize::try_from(n).ok() != Some(written.len()) {
            let present: Vec<String> = c
                .query(
                    &format!("SELECT doc_id FROM \"{t}\" WHERE doc_id = ANY($1)"),
                    &[&written],
                )
                .await
                .expect("ids")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<&String> = written.iter().filter(|w| !present.contains(w)).collect();
            let mut elsewhere = String::new();
            for other in [&table, &done.old_index, &done.new_index] {
                let n: i64 = c
                    .query_one(
                        &format!("SELECT count(*) FROM \"{other}\" WHERE doc_id = ANY($1)"),
                        &[&missing
                            .iter()
                            .map(|m| (*m).clone())
                            .collect::<Vec<String>>()],
                    )
                    .await
                    .map_or(-1, |r| r.get(0));
                let _ = write!(elsewhere, "{other}: {n}; ");
            }
            panic!(
                "table {t} misses {} of the {} rows the processor wrote ({:?} …; of those: {elsewhere}); the run: {} {}",
                missing.len(),
                written.len(),
                &missing[..missing.len().min(10)],
                done.verify,
                done.log
            );
        }
    }
    let c2 = db.pg.fresh_client().await.expect("client");
    c2.execute(
        "DELETE FROM pillowtop_rs_process WHERE pillow_name = $1",
        &[&pillow],
    )
    .await
    .expect("liveness row removed");
}

/// Publishes a change of each of `ids` embedding its source document (`deletion`: a change
/// with `is_deletion` and no document).
async fn publish_embedded(
    s: &Setup,
    c: &tokio_postgres::Client,
    producer: &ChangeProducer,
    ids: &[String],
    deletion: bool,
) {
    let rows = c
        .query(
            &format!(
                "SELECT doc_id, doc FROM {} WHERE doc_id = ANY($1)",
                s.source
            ),
            &[&ids],
        )
        .await
        .expect("source documents");
    let metas = rows.iter().map(|r| {
        let mut meta = ChangeMeta::new(r.get::<_, String>(0), "sql", "forms");
        if deletion {
            meta.is_deletion = true;
        } else {
            meta.extra
                .insert("document".into(), r.get::<_, serde_json::Value>(1));
        }
        meta
    });
    producer
        .send_changes(&s.topic.name, metas)
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_rebuilt_from_kafka_has_the_newest_change_of_each_document_and_none_deleted_during_the_backfill(
) {
    let _ = require!("TEST_POSTGRES_URL");
    let docs = 10_000;
    let Some(s) = Setup::new("rxt_kafka", docs).await else {
        return;
    };
    // The documents come in the changes (no document store); a column from the change's offset,
    // which only a rebuild from the topics can fill.
    s.write_config_with(
        "",
        r#"  { name = "off", type = "bigint", change = "offset" },
"#,
    );
    let producer = ChangeProducer::new(&s.bootstrap).expect("producer");
    let all: Vec<String> = (1..=docs).map(|i| format!("doc-{i:06}")).collect();
    let c = s.db.pg.fresh_client().await.expect("client");
    publish_embedded(&s, &c, &producer, &all, false).await;
    c.execute(
        &format!(
            "UPDATE {} SET doc = jsonb_set(doc, '{{n}}', to_jsonb((doc->>'n')::int + 1))",
            s.source
        ),
        &[],
    )
    .await
    .expect("update");
    publish_embedded(&s, &c, &producer, &all, false).await;
    let mut pillow = s.start_pillow();
    s.wait_equal(&s.table, false, Duration::from_secs(90)).await;

    // While the table is rebuilt: updates, and deletions of both kinds (a `-Deleted` document,
    // an `is_deletion` change), each first in the source table (what the table must end as).
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = async {
        let mut changes = 0usize;
        while !stop.is_cancelled() {
            // 20 documents at a time, so that many change while the backfill runs; while it
            // copies, only deletions (of documents it may not have copied yet).
            let backfill = s.run().await.0 == "backfill";
            let (kind, ids) = {
                let mut rng = rand::rng();
                let ids: Vec<String> = (0..20)
                    .map(|_| format!("doc-{:06}", rng.random_range(1..=docs)))
                    .collect();
                (rng.random_range(0..if backfill { 4 } else { 10 }), ids)
            };
            let set = if kind < 4 {
                "doc || '{\"doc_type\": \"XFormInstance-Deleted\"}'"
            } else {
                "jsonb_set(doc, '{n}', to_jsonb((doc->>'n')::int + 1))"
            };
            c.execute(
                &format!("UPDATE {} SET doc = {set} WHERE doc_id = ANY($1)", s.source),
                &[&ids],
            )
            .await
            .expect("change the source");
            publish_embedded(&s, &c, &producer, &ids, kind == 0).await;
            changes += 20;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        changes
    };
    // The new version exists already, with a row no change gives: the verification deletes it.
    let new = format!("{}_new", s.table);
    c.batch_execute(&format!(
        "CREATE TABLE \"{new}\" (LIKE \"{t}\" INCLUDING ALL);
         INSERT INTO \"{new}\" (doc_id, domain, n, off) VALUES ('stray', 'd0', 0, 0);",
        t = s.table
    ))
    .await
    .expect("the new version");
    let rebuild = async {
        let mut child = s.reindex(&[
            "start",
            "--new-index",
            &new,
            "--from-kafka",
            "--chunk-size",
            "5",
            "--keep-old",
            "1h",
            "--noinput",
        ]);
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..1500))).await;
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL the reindex");
            eprintln!(
                "table reindex from kafka: SIGKILL at step {:?}",
                s.run().await.0
            );
        }
        let _ = child.wait();
        let status = s.reindex(&["resume", "--noinput"]).wait().expect("resume");
        // Changes go on for a moment after the swap too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        status
    };
    let (changes, status) = tokio::join!(writer, rebuild);
    let log = s.log_text("reindex");
    assert!(status.success(), "the resume failed ({status}): {log}");
    let (at, old, _) = s.run().await;
    assert_eq!(at, "swapped", "{log}");
    let verify: serde_json::Value = c
        .query_one(
            "SELECT verify FROM pillowtop_rs_reindex WHERE pillow = $1 ORDER BY id DESC LIMIT 1",
            &[&s.pillow],
        )
        .await
        .expect("run")
        .get(0);
    eprintln!(
        "table reindex from kafka: {changes} changes during the rebuild; verification {verify}"
    );
    assert!(
        verify["repaired"].as_u64() >= Some(1),
        "the stray row was deleted: {verify}"
    );
    s.wait_equal(&s.table, false, Duration::from_secs(90)).await;
    s.wait_equal(&old, false, Duration::from_secs(30)).await;
    // Each row's offset is its document's newest change's, in both versions.
    let offsets = |name: String| {
        let s = &s;
        async move {
            s.rows(&format!("SELECT doc_id, off::text FROM \"{name}\""))
                .await
        }
    };
    let (fresh, kept) = (offsets(s.table.clone()).await, offsets(old.clone()).await);
    assert_eq!(fresh.len(), kept.len());
    let differ: Vec<_> = fresh
        .iter()
        .filter(|(k, v)| kept.get(*k) != Some(*v))
        .take(5)
        .collect();
    assert!(
        differ.is_empty(),
        "offsets differ from the kept version: {differ:?}"
    );
    still_running(&mut pillow, &s);
}
