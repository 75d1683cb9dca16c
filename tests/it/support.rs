//! Shared test support: service addresses, unique self-cleaning resources.
//!
//! Service tests need the real services of `tests/services/up`. Locally, a test whose service
//! variable is unset is skipped with a message; in CI (`CI` set) that is a failure.

use std::sync::Arc;
use std::time::Duration;

use pillowtop::feed::kafka::KafkaAdmin;
use pillowtop::pg::Pg;
use pillowtop::processor::memory::RecordingProcessor;
use pillowtop::store::checkpoints::CheckpointStore;
use pillowtop::testing::unique_name;

/// The address in `var`, or `None` (skip) locally; panics in CI.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
            panic!("{var} is not set: run tests/services/up and source .services/env (CI must not skip service tests)")
        }
        _ => {
            eprintln!(
                "skipping: {var} is not set (run tests/services/up and source .services/env)"
            );
            None
        }
    }
}

macro_rules! require {
    ($var:expr) => {
        match $crate::support::service($var) {
            Some(v) => v,
            None => return,
        }
    };
}
pub(crate) use require;

/// A topic `test_<name>_<random>` with `partitions` partitions, deleted on drop.
pub struct TestTopic {
    pub name: String,
    bootstrap: String,
}

impl TestTopic {
    pub async fn new(bootstrap: &str, name: &str, partitions: i32) -> Self {
        Self::with_config(bootstrap, name, partitions, &[]).await
    }

    pub async fn with_config(
        bootstrap: &str,
        name: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Self {
        let topic = unique_name(name);
        KafkaAdmin::new(bootstrap)
            .expect("admin")
            .create_topic(&topic, partitions, config)
            .await
            .expect("create topic");
        Self {
            name: topic,
            bootstrap: bootstrap.to_owned(),
        }
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let (name, bootstrap) = (self.name.clone(), self.bootstrap.clone());
        // Drop cannot await: delete from a helper thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = KafkaAdmin::new(&bootstrap) {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        admin.delete_topics(&[&name]),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL connection with the pillowtop tables, and rows of the ids it hands out deleted
/// on drop.
pub struct TestDb {
    pub pg: Arc<Pg>,
    pub url: String,
    ids: std::sync::Mutex<Vec<String>>,
}

impl TestDb {
    pub async fn new(url: &str) -> Self {
        let pg = Arc::new(Pg::new(url));
        pillowtop::store::schema::ensure_schema(&pg)
            .await
            .expect("schema");
        Self {
            pg,
            url: url.to_owned(),
            ids: std::sync::Mutex::default(),
        }
    }

    /// A unique pillow name / checkpoint id whose rows are deleted on drop.
    pub fn id(&self, name: &str) -> String {
        let id = unique_name(name);
        self.ids.lock().expect("lock").push(id.clone());
        id
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let ids = self.ids.lock().expect("lock").clone();
        let url = self.url.clone();
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
                for id in ids {
                    let _ = c
                        .execute(
                            "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1 OR left(checkpoint_id, length($1) + 11) = $1 || '/processor/'",
                            &[&id],
                        )
                        .await;
                    let _ = c
                        .execute(
                            "DELETE FROM pillow_retry_pillowerror WHERE pillow = $1",
                            &[&id],
                        )
                        .await;
                    let _ = c
                        .execute(
                            "DELETE FROM pillowtop_rs_failed_processor WHERE pillow = $1",
                            &[&id],
                        )
                        .await;
                    let _ = c
                        .execute(
                            "DELETE FROM pillowtop_rs_process WHERE pillow_name = $1",
                            &[&id],
                        )
                        .await;
                    let _ = c
                        .execute(
                            "DELETE FROM pillowtop_rs_handover WHERE checkpoint_id = $1",
                            &[&id],
                        )
                        .await;
                    let _ = c
                        .execute("DELETE FROM pillowtop_rs_reindex WHERE pillow = $1", &[&id])
                        .await;
                    let _ = c
                        .execute(
                            "DELETE FROM pillowtop_rs_checkpoint_history WHERE checkpoint_id = $1",
                            &[&id],
                        )
                        .await;
                    let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {id}")).await;
                }
            });
        })
        .join();
    }
}

/// The log lines of the current thread (the test's own future and what it awaits directly), as
/// the default `fmt` layer writes them, for as long as the guard lives.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// Starts capturing (INFO and above) until the returned guard is dropped.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The captured lines that contain `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("lock"))
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The sum of the offsets checkpointed for `checkpoint_id` (the changes it is past).
pub async fn checkpointed(store: &dyn CheckpointStore, checkpoint_id: &str) -> i64 {
    store
        .load(checkpoint_id)
        .await
        .expect("load")
        .iter()
        .map(|r| r.offset)
        .sum()
}

/// The ids a recording processor processed, sorted.
pub fn processed_ids(p: &RecordingProcessor) -> Vec<String> {
    let mut v: Vec<String> = p
        .recorded
        .lock()
        .expect("lock")
        .processed
        .iter()
        .map(|r| r.0.clone())
        .collect();
    v.sort();
    v
}

/// A test of this binary run again as a child process (the SIGKILL tests): `test` (its full
/// name, run with `--ignored`) reads its parameters from the variable `var`; its stderr goes to a
/// log file named after `id` in the temporary folder, appended by every run.
pub struct ChildTest {
    test: &'static str,
    var: &'static str,
    spec: String,
    pub log: std::path::PathBuf,
}

impl ChildTest {
    pub fn new(test: &'static str, var: &'static str, spec: String, id: &str) -> Self {
        Self {
            test,
            var,
            spec,
            log: std::env::temp_dir().join(format!("{id}.log")),
        }
    }

    /// Starts one run.
    pub fn spawn(&self) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("child log");
        std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", self.test, "--ignored", "--nocapture"])
            .env(self.var, &self.spec)
            .env("PILLOWTOP_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn child")
    }

    /// The last 30 lines of the runs' log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Changes source table `table` (`doc_id`, `doc` jsonb; documents `doc-000001` … `docs`) and
/// publishes each change on `topic`, while a rebuild runs: updates, new documents and
/// deletions (doc_type `-Deleted`), until `stop`.
pub async fn write_during(
    db: &TestDb,
    table: &str,
    producer: &pillowtop::feed::kafka::ChangeProducer,
    topic: &str,
    docs: usize,
    stop: &tokio_util::sync::CancellationToken,
) -> usize {
    use rand::Rng as _;
    let c = db.pg.fresh_client().await.expect("client");
    let mut changes = 0;
    let mut next_new = docs + 1;
    while !stop.is_cancelled() {
        let (kind, pick) = {
            let mut rng = rand::rng();
            (rng.random_range(0..10), rng.random_range(1..=docs))
        };
        let id = match kind {
            0 => {
                let id = format!("doc-{next_new:06}");
                next_new += 1;
                c.execute(
                    &format!("INSERT INTO {table} VALUES ($1, jsonb_build_object('_id', $1::text, 'doc_type', 'XFormInstance', 'domain', 'd9', 'n', 0))"),
                    &[&id],
                )
                .await
                .expect("insert");
                id
            }
            1 => {
                let id = format!("doc-{pick:06}");
                c.execute(
                    &format!("UPDATE {table} SET doc = doc || '{{\"doc_type\": \"XFormInstance-Deleted\"}}' WHERE doc_id = $1"),
                    &[&id],
                )
                .await
                .expect("delete");
                id
            }
            _ => {
                let id = format!("doc-{pick:06}");
                c.execute(
                    &format!("UPDATE {table} SET doc = jsonb_set(doc, '{{n}}', to_jsonb((doc->>'n')::int + 1)) WHERE doc_id = $1"),
                    &[&id],
                )
                .await
                .expect("update");
                id
            }
        };
        producer
            .send_change(
                topic,
                &pillowtop::change::ChangeMeta::new(&id, "sql", "forms"),
            )
            .await
            .expect("publish");
        changes += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    changes
}

/// Kills the child on drop (a failed assertion must not leave a pillow running).
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `pillowtop` command of this build, logging at info, its output piped.
pub fn pillowtop(args: &[&str]) -> std::process::Command {
    use std::process::Stdio;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pillowtop"));
    c.args(args)
        .env("PILLOWTOP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A search node of a test's own, beside the shared one (`tests/services/search.sh` with its own
/// name and free ports): one whose disk watermarks the test may lower without blocking every
/// other test's index. Stopped, and its data folder deleted, on drop.
pub struct OwnSearchNode {
    name: String,
    pub url: String,
}

impl OwnSearchNode {
    /// Starts the node (about 10 s; its jars are the shared node's, resolved already).
    /// `settings`: more node settings, `key=value` words.
    pub async fn start(test: &str, settings: &[&str]) -> Self {
        // Both listeners are held until both ports are known, so the two differ.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let listeners = [bind(), bind()];
        let port = |l: &std::net::TcpListener| l.local_addr().expect("address").port();
        let (http, transport) = (port(&listeners[0]), port(&listeners[1]));
        drop(listeners);
        let name = format!("search-{test}-{http}");
        let mut start = std::process::Command::new("bash");
        start
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/services/search.sh"
            ))
            .arg("start")
            .env("PILLOWTOP_SEARCH_NAME", &name)
            .env("PILLOWTOP_SEARCH_HTTP_PORT", http.to_string())
            .env("PILLOWTOP_SEARCH_TRANSPORT_PORT", transport.to_string())
            .env("PILLOWTOP_SEARCH_HEAP", "384m")
            .env("PILLOWTOP_SEARCH_SETTINGS", settings.join(" "));
        let out = tokio::task::spawn_blocking(move || start.output())
            .await
            .expect("start the node")
            .expect("tests/services/search.sh");
        let node = Self {
            name,
            url: format!("http://127.0.0.1:{http}"),
        };
        assert!(
            out.status.success(),
            "search node {} did not start: {}{}",
            node.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }
}

impl Drop for OwnSearchNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/services/search.sh"
            ))
            .arg("stop")
            .env("PILLOWTOP_SEARCH_NAME", &self.name)
            .output();
    }
}
