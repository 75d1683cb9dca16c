//! The sinks at the servers' ceilings, in one run: each sink's changes/s and CPU seconds per
//! million changes (of this process and of each server: broker, PostgreSQL, search node, from
//! /proc, see `common/cpu.rs`) beside the direct loaders of the same rows.
//!
//! * **Elasticsearch ceilings**: a direct `_bulk` loader, bodies of 1000 actions encoded before
//!   the clock starts, with 1, 2 and 4 concurrent clients, each into a fresh index;
//! * **Elasticsearch through the pillow**: N CommCare-style form changes on an 8-partition topic,
//!   a pillow built from a TOML config (as `pillowtop run` does) into a fresh index, by
//!   `max_in_flight` and chunk size (chunk 10 reads N/10 changes);
//! * **PostgreSQL ceilings**: a direct binary `COPY` of the same rows (encoded before the clock,
//!   1000 rows per transaction) into an empty table, and a direct prepared
//!   `INSERT … ON CONFLICT DO UPDATE` (1000 rows per statement) of the same rows over them;
//! * **PostgreSQL through the pillow**: new rows (`copy_first`), the same topic again over the
//!   rows (upserts), written in line per chunk (CommCare's way) or gathered across chunks on 1
//!   or 2 connections (the default), at chunk 1000 and at CommCare's chunk 10 (N/10 changes in line, N/2
//!   gathered);
//!   exactly-once new rows.
//!
//! Each direct loader runs `PILLOWTOP_BENCH_CEILING_ROUNDS` times (default 2) and its fastest
//! round is the ceiling: they swing most between runs, and the best is the conservative figure
//! for a ratio. A pillow with both sinks then reads a backlog of `PILLOWTOP_BENCH_MEMORY_CHANGES`
//! (default 500,000) and a tenth of it, each in a child process: its peak RSS growth must stay
//! within 1.25× (+ 4 MiB).
//!
//! Every pillow phase is verified: N changes handled, none failed, N documents / rows.
//!
//! ```text
//! source .services/env   # TEST_KAFKA_BOOTSTRAP, TEST_POSTGRES_URL, TEST_ELASTICSEARCH_URL
//! cargo bench --profile ci --features testing --bench sinks
//! PILLOWTOP_BENCH_CHANGES=20000 cargo bench --features testing --bench sinks   # smoke
//! PILLOWTOP_BENCH_SINKS=postgres cargo bench --profile ci --features testing --bench sinks  # one sink
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

#[path = "common/cpu.rs"]
mod cpu;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteParts, IndicesRefreshParts};
use elasticsearch::{CountParts, Elasticsearch};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::config::{PillowFile, RunOptions};
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin};
use pillowtop::pg::Pg;
use pillowtop::processor::postgres::TableDefinition;
use pillowtop::testing::{env_or, unique_name};
use serde_json::{json, Value};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 8;

fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(CHILD) {
        return memory_child(&spec);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    let (Ok(pg), Ok(kafka), Ok(es)) = (
        std::env::var("TEST_POSTGRES_URL"),
        std::env::var("TEST_KAFKA_BOOTSTRAP"),
        std::env::var("TEST_ELASTICSEARCH_URL"),
    ) else {
        anyhow::ensure!(!ci, "TEST_POSTGRES_URL / TEST_KAFKA_BOOTSTRAP / TEST_ELASTICSEARCH_URL are not set (CI must not skip)");
        eprintln!("skipping the sinks bench: the services' variables are not set (run tests/services/up and source .services/env)");
        return Ok(());
    };
    let n: usize = env_or("PILLOWTOP_BENCH_CHANGES", "100000").parse()?;
    let sinks = env_or("PILLOWTOP_BENCH_SINKS", "elasticsearch,postgres");
    let only: Vec<&str> = sinks.split(',').map(str::trim).collect();
    for s in &only {
        anyhow::ensure!(
            ["elasticsearch", "postgres"].contains(s),
            "PILLOWTOP_BENCH_SINKS: unknown sink {s:?} (elasticsearch, postgres)"
        );
    }
    let wanted = Wanted {
        elasticsearch: only.contains(&"elasticsearch"),
        postgres: only.contains(&"postgres"),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&pg, &kafka, &es, n, wanted))
}

/// Set in the child process of the memory check: `CONFIG_FILE:CHANGES`.
const CHILD: &str = "PILLOWTOP_BENCH_SINKS_CHILD";

/// The memory check's child: runs the pillow of the config file over that many changes and
/// prints its peak RSS growth (`peak_kib=`: VmHWM at the end minus VmRSS before the pillow was
/// built).
fn memory_child(spec: &str) -> anyhow::Result<()> {
    let (file, changes) = spec
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{CHILD}: FILE:CHANGES"))?;
    let text = std::fs::read_to_string(file)?;
    let changes: usize = changes.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let start = status_kib("VmRSS:");
    runtime.block_on(run_pillow(&text, changes))?;
    println!("peak_kib={}", status_kib("VmHWM:").saturating_sub(start));
    Ok(())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Peak RSS growth (MiB) of a pillow with both sinks (a reporting table and an index, fresh ones)
/// reading `changes` of `topic`, in a child process of its own.
async fn memory_phase(
    kafka: &str,
    pg_url: &str,
    es: &Elasticsearch,
    es_url: &str,
    topic: &str,
    changes: usize,
) -> anyhow::Result<f64> {
    let id = unique_name("bench_sinks_mem");
    let table = unique_name("bench_sinks_mem");
    let index = unique_name("bench_sinks_mem");
    let processors = format!(
        "type = \"postgres_table\"\n{}\n[[processors]]\ntype = \"elasticsearch\"\nurls = [\"{es_url}\"]\nindex = \"{index}\"\nsettings = {}\n",
        table_toml(&table, false),
        ES_SETTINGS.replace(':', " =")
    );
    let file = std::env::temp_dir().join(format!("{id}.toml"));
    std::fs::write(
        &file,
        pillow_toml(&id, topic, 100, kafka, pg_url, &processors),
    )?;
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child
        .env(CHILD, format!("{}:{changes}", file.display()))
        .stderr(std::process::Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || child.output()).await??;
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "memory phase ({changes} changes) failed: {stdout}"
    );
    let kib: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_kib="))
        .ok_or_else(|| anyhow::anyhow!("memory phase: no peak in {stdout:?}"))?
        .trim()
        .parse()?;
    let count = count_and_drop(es, &index).await?;
    anyhow::ensure!(
        count == changes as u64,
        "memory phase: {count} documents in {index}, expected {changes}"
    );
    let pg = Pg::new(pg_url);
    let c = pg.fresh_client().await?;
    let rows: i64 = c
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await?
        .get(0);
    anyhow::ensure!(
        rows == i64::try_from(changes)?,
        "memory phase: {rows} rows in {table}, expected {changes}"
    );
    c.batch_execute(&format!("DROP TABLE \"{table}\"")).await?;
    forget_pillow(&pg, &id).await?;
    Ok(kib / 1024.0)
}

/// Which sinks to measure (`PILLOWTOP_BENCH_SINKS`).
#[derive(Debug, Clone, Copy)]
struct Wanted {
    elasticsearch: bool,
    postgres: bool,
}

fn document(i: usize, version: usize) -> Value {
    let domain = ["dimagi", "demo-health", "field-survey", "nutrition"][i % 4];
    json!({
        "_id": format!("form-{i:08}"),
        "doc_type": "XFormInstance",
        "domain": domain,
        "xmlns": "http://openrosa.org/formdesigner/demo",
        "received_on": "2024-05-06T07:08:09.123456Z",
        "form": {
            "meta": {"userID": format!("user-{}", i % 97), "instanceID": format!("form-{i:08}")},
            "age": format!("{}", (i + version) % 90),
            "weight": format!("{}.{}", 40 + i % 60, i % 10),
            "consent": if i.is_multiple_of(3) { "no" } else { "yes" },
            "visit_date": "2024-05-01",
            "notes": "a short free-text answer of a typical length for a form question",
        },
    })
}

fn meta(i: usize, version: usize) -> ChangeMeta {
    let mut m = ChangeMeta::new(format!("form-{i:08}"), "sql", "form-sql");
    m.document_type = Some("XFormInstance".into());
    m.domain = Some("demo".into());
    m.extra.insert("document".into(), document(i, version));
    m
}

/// The Elasticsearch pillow phases: (max_in_flight, chunk size, flush_max_changes: 0 = no
/// gathering across chunks).
const ES_PHASES: [(usize, usize, usize); 7] = [
    (1, 1000, 0),
    (4, 1000, 0),
    (4, 1000, 5000),
    (4, 100, 0),
    (4, 100, 5000),
    (4, 10, 0),
    (4, 10, 5000),
];

/// The PostgreSQL pillow phases (all `copy_first`): (label, chunk size, extra table keys,
/// exactly-once, also an upsert pass over the rows).
const PG_PHASES: [(&str, usize, &str, bool, bool); 6] = [
    ("in line per chunk", 1000, "flush_max_rows = 0", false, true),
    (
        "gathered, 1 connection",
        1000,
        "connections = 1",
        false,
        true,
    ),
    ("gathered, 2 connections (default)", 1000, "", false, true),
    ("in line per chunk", 10, "flush_max_rows = 0", false, false),
    ("gathered, 2 connections (default)", 10, "", false, false),
    ("exactly-once", 1000, "", true, false),
];

const ES_SETTINGS: &str = r#"{"number_of_shards": 1, "number_of_replicas": 0}"#;

fn table_toml(table: &str, exactly_once: bool) -> String {
    format!(
        r#"table = "{table}"
primary_key = ["doc_id"]
write_method = "copy_first"
exactly_once = {exactly_once}
columns = [
  {{ name = "doc_id",      type = "text",        change = "id" }},
  {{ name = "domain",      type = "text",        path = "$.domain" }},
  {{ name = "xmlns",       type = "text",        path = "xmlns" }},
  {{ name = "user_id",     type = "text",        path = "form.meta.userID" }},
  {{ name = "received_on", type = "timestamptz", path = "received_on" }},
  {{ name = "age",         type = "integer",     path = "form.age" }},
  {{ name = "weight_kg",   type = "numeric",     path = "form.weight" }},
  {{ name = "consented",   type = "boolean",     path = "form.consent" }},
  {{ name = "visit_date",  type = "date",        path = "form.visit_date" }},
  {{ name = "form",        type = "jsonb",       path = "form" }},
]
"#
    )
}

/// The peak RSS of a pillow with both sinks as the backlog grows 10× (`PILLOWTOP_BENCH_MEMORY_CHANGES`,
/// default 500,000, and a tenth of it): flat when the large one is within 1.25× of the small one
/// (+ 4 MiB). Both backlogs are well above librdkafka's 16 MiB prefetch bound at the default size.
async fn memory_check(
    kafka: &str,
    pg_url: &str,
    es: &Elasticsearch,
    es_url: &str,
) -> anyhow::Result<()> {
    let big: usize = env_or("PILLOWTOP_BENCH_MEMORY_CHANGES", "500000").parse()?;
    let topic = unique_name("bench_sinks_mem_topic");
    let admin = KafkaAdmin::new(kafka)?;
    admin.create_topic(&topic, PARTITIONS, &[]).await?;
    let result = async {
        let producer = ChangeProducer::new(kafka)?;
        producer.send_changes(&topic, (0..big).map(|i| meta(i, 0))).await?;
        let bytes = meta(0, 0).to_json().len() as f64;
        let small = memory_phase(kafka, pg_url, es, es_url, &topic, big / 10).await?;
        let large = memory_phase(kafka, pg_url, es, es_url, &topic, big).await?;
        let mib = |n: usize| n as f64 * bytes / 1_048_576.0;
        let flat = large <= 1.25 * small + 4.0;
        println!(
            "\nmemory of a pillow with both sinks (peak RSS growth, chunk 100, defaults): backlog {} changes ({:.0} MiB) {small:.1} MiB; backlog {big} ({:.0} MiB) {large:.1} MiB; flat (≤ 1.25× + 4 MiB): {}",
            big / 10,
            mib(big / 10),
            mib(big),
            if flat { "OK" } else { "FAIL" }
        );
        anyhow::Ok(())
    }
    .await;
    admin.delete_topics(&[&topic]).await?;
    result
}

/// One measured phase.
struct Row {
    sink: &'static str,
    label: String,
    changes: usize,
    time: Duration,
    cpu: cpu::Sample,
    /// The label of the ceiling this row is compared with.
    ceiling: Option<String>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.changes as f64 / self.time.as_secs_f64()
    }
}

/// The faster of a best-so-far and a new measurement.
fn faster(
    best: Option<(Duration, cpu::Sample)>,
    new: (Duration, cpu::Sample),
) -> (Duration, cpu::Sample) {
    match best {
        Some(b) if b.0 <= new.0 => b,
        _ => new,
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| sink | phase | changes | changes/s | vs ceiling | CPU-s/M: {} | total |",
        cpu::NAMES.join(" | ")
    );
    println!(
        "|---|---|---:|---:|---:|{}---:|",
        "---:|".repeat(cpu::NAMES.len())
    );
    for r in rows {
        let per_m = |s: f64| s * 1e6 / r.changes as f64;
        let vs = r
            .ceiling
            .as_ref()
            .and_then(|c| rows.iter().find(|x| &x.label == c))
            .map_or_else(String::new, |c| {
                format!("{:.0}%", 100.0 * r.rate() / c.rate())
            });
        let cpus: Vec<String> = r
            .cpu
            .0
            .iter()
            .map(|&s| format!("{:.2}", per_m(s)))
            .collect();
        println!(
            "| {} | {} | {} | {:.0} | {vs} | {} | {:.2} |",
            r.sink,
            r.label,
            r.changes,
            r.rate(),
            cpus.join(" | "),
            per_m(r.cpu.total())
        );
    }
}

fn es_client(url: &str) -> anyhow::Result<Elasticsearch> {
    Ok(Elasticsearch::new(Transport::single_node(url)?))
}

async fn create_index(es: &Elasticsearch, index: &str) -> anyhow::Result<()> {
    let settings: Value = serde_json::from_str(ES_SETTINGS)?;
    let r = es
        .indices()
        .create(IndicesCreateParts::Index(index))
        .body(json!({"settings": settings}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status_code().is_success(),
        "create {index}: {}",
        r.text().await?
    );
    Ok(())
}

async fn count_and_drop(es: &Elasticsearch, index: &str) -> anyhow::Result<u64> {
    es.indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await?;
    let r: Value = es
        .count(CountParts::Index(&[index]))
        .send()
        .await?
        .json()
        .await?;
    es.indices()
        .delete(IndicesDeleteParts::Index(&[index]))
        .send()
        .await?;
    r["count"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("count of {index}: {r}"))
}

/// The direct `_bulk` loader: `clients` tasks take the next pre-encoded body until none is left.
async fn direct_bulk(
    es: &Elasticsearch,
    index: &str,
    bodies: &Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let path = format!("/{index}/_bulk");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (es, bodies, next, path) = (es.clone(), bodies.clone(), next.clone(), path.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return anyhow::Ok(());
                    };
                    let mut headers = HeaderMap::new();
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-ndjson"),
                    );
                    let r = es
                        .transport()
                        .send(
                            Method::Post,
                            &path,
                            headers,
                            Some(&[("filter_path", "errors")]),
                            Some(body.as_slice()),
                            None,
                        )
                        .await?;
                    let status = r.status_code();
                    let text = r.text().await?;
                    anyhow::ensure!(
                        status.is_success() && text.contains("false"),
                        "bulk: {status} {text}"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Runs a pillow from `text` until it has handled `n` changes.
async fn run_pillow(text: &str, n: usize) -> anyhow::Result<()> {
    let file = PillowFile::from_toml(text)?;
    let options = RunOptions {
        max_changes: Some(u64::try_from(n)?),
        ..RunOptions::default()
    };
    let stop = CancellationToken::new();
    let mut pillow = file.spec(&options)?.build(&stop).await?;
    let summary = pillow.run(&stop).await?;
    anyhow::ensure!(
        summary.changes == u64::try_from(n)? && summary.failed == 0,
        "{summary:?}"
    );
    Ok(())
}

fn pillow_toml(
    id: &str,
    topic: &str,
    chunk: usize,
    kafka: &str,
    pg: &str,
    processor: &str,
) -> String {
    format!(
        "name = \"{id}\"\ncheckpoint_id = \"{id}\"\ntopics = [\"{topic}\"]\nchunk_size = {chunk}\ncheckpoint_frequency = 10000\nmax_checkpoint_delay_secs = 300\n\
         [kafka]\nbootstrap = \"{kafka}\"\nidle_timeout_ms = 2000\n[postgres]\nurl = \"{pg}\"\n[[processors]]\n{processor}"
    )
}

async fn forget_pillow(pg: &Pg, id: &str) -> anyhow::Result<()> {
    let c = pg.fresh_client().await?;
    c.execute(
        "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1",
        &[&id],
    )
    .await?;
    c.execute(
        "DELETE FROM pillowtop_rs_process WHERE pillow_name = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

async fn run(
    pg_url: &str,
    kafka: &str,
    es_url: &str,
    n: usize,
    wanted: Wanted,
) -> anyhow::Result<()> {
    let probe = cpu::Probe::new();
    let pg = Arc::new(Pg::new(pg_url));
    pillowtop::store::schema::ensure_schema(&pg).await?;
    let es = es_client(es_url)?;
    println!("sinks bench: {n} changes; {}", probe.describe());
    let mut rows: Vec<Row> = Vec::new();
    // The direct loaders swing most between runs (±30%): each is measured this many times and
    // its fastest round is the ceiling (the conservative figure for our ratios).
    let ceiling_rounds: usize = env_or("PILLOWTOP_BENCH_CEILING_ROUNDS", "2").parse()?;
    anyhow::ensure!(
        ceiling_rounds >= 1,
        "PILLOWTOP_BENCH_CEILING_ROUNDS must be at least 1"
    );

    // The rows, as the pillow sees them (for the direct loaders' encodings).
    let changes: Vec<Change> = (0..n)
        .map(|i| {
            Change::from_message("bench", 0, 0, meta(i, 0).to_json().as_bytes()).expect("valid")
        })
        .collect();

    // Elasticsearch ceilings.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..n)
            .collect::<Vec<_>>()
            .chunks(1000)
            .map(|part| {
                let mut body = Vec::new();
                for &i in part {
                    let mut doc = document(i, 0);
                    let id = doc
                        .as_object_mut()
                        .and_then(|d| d.remove("_id"))
                        .unwrap_or_default();
                    body.extend_from_slice(format!("{{\"index\":{{\"_id\":{id}}}}}\n").as_bytes());
                    serde_json::to_writer(&mut body, &doc).expect("json");
                    body.push(b'\n');
                }
                body
            })
            .collect(),
    );
    let es_clients: &[usize] = if wanted.elasticsearch {
        &[1, 2, 4]
    } else {
        &[]
    };
    for &clients in es_clients {
        let mut fastest: Option<(Duration, cpu::Sample)> = None;
        for _ in 0..ceiling_rounds {
            let index = unique_name("bench_sinks_direct");
            create_index(&es, &index).await?;
            let (time, cpu) =
                cpu::measure(&probe, || direct_bulk(&es, &index, &bodies, clients)).await?;
            let count = count_and_drop(&es, &index).await?;
            anyhow::ensure!(
                count == n as u64,
                "direct bulk: {count} documents, expected {n}"
            );
            fastest = Some(faster(fastest, (time, cpu)));
        }
        let (time, cpu) = fastest.expect("at least one round");
        rows.push(Row {
            sink: "elasticsearch",
            label: format!("direct `_bulk`, {clients} client(s)"),
            changes: n,
            time,
            cpu,
            ceiling: None,
        });
    }
    let best_es = rows
        .iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .map(|r| r.label.clone());

    // The topic.
    let topic = unique_name("bench_sinks_topic");
    let admin = KafkaAdmin::new(kafka)?;
    admin.create_topic(&topic, PARTITIONS, &[]).await?;
    let result = async {
        let producer = ChangeProducer::new(kafka)?;
        let t = Instant::now();
        producer.send_changes(&topic, (0..n).map(|i| meta(i, 0))).await?;
        println!("published {n} changes in {:.2}s", t.elapsed().as_secs_f64());

        // Elasticsearch through the pillow.
        let es_phases: &[(usize, usize, usize)] = if wanted.elasticsearch { &ES_PHASES } else { &[] };
        for &(in_flight, chunk, gather) in es_phases {
            let changes = if chunk == 10 && gather == 0 { n / 10 } else { n };
            let id = unique_name("bench_sinks_es");
            let index = unique_name("bench_sinks_es");
            let processor = format!(
                "type = \"elasticsearch\"\nurls = [\"{es_url}\"]\nindex = \"{index}\"\nmax_in_flight = {in_flight}\nflush_max_changes = {gather}\nsettings = {}\n",
                ES_SETTINGS.replace(':', " =")
            );
            let text = pillow_toml(&id, &topic, chunk, kafka, pg_url, &processor);
            let (time, cpu) = cpu::measure(&probe, || run_pillow(&text, changes)).await?;
            let count = count_and_drop(&es, &index).await?;
            anyhow::ensure!(count == changes as u64, "pillow into {index}: {count} documents, expected {changes}");
            forget_pillow(&pg, &id).await?;
            rows.push(Row {
                sink: "elasticsearch",
                label: if gather == 0 {
                    format!("pillow, chunk {chunk}, max_in_flight {in_flight}, no gathering")
                } else {
                    format!("pillow, chunk {chunk}, max_in_flight {in_flight}, gathering {gather}")
                },
                changes,
                time,
                cpu,
                ceiling: best_es.clone(),
            });
        }

        if !wanted.postgres {
            return anyhow::Ok(());
        }
        // PostgreSQL ceilings: direct COPY of new rows, then direct upserts of the same rows.
        let table = unique_name("bench_sinks_direct");
        let def: TableDefinition = toml::from_str(&table_toml(&table, false))?;
        let encoder = pillowtop::processor::postgres::encoder::Encoder::new(&def);
        let rows_by_chunk: Vec<_> = changes.chunks(1000).map(|c| encoder.encode_chunk(c).upserts).collect();
        let types: Vec<_> = def.columns.iter().map(|c| c.column_type.pg_type()).collect();
        let cols: Vec<String> = def.columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
        let col_list = cols.join(", ");
        let column_defs = def.columns.iter().zip(&cols).map(|(c, q)| format!("{q} {}", c.column_type.sql())).collect::<Vec<_>>().join(", ");
        let sets = cols[1..].iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", ");
        let c = pg.fresh_client().await?;
        c.batch_execute(&format!("CREATE TABLE \"{table}\" ({column_defs}, PRIMARY KEY (\"doc_id\"))")).await?;
        let copy_sql = format!("COPY \"{table}\" ({col_list}) FROM STDIN (FORMAT binary)");
        let mut fastest: Option<(Duration, cpu::Sample)> = None;
        for _ in 0..ceiling_rounds {
        c.batch_execute(&format!("TRUNCATE \"{table}\"")).await?;
        let (time, cpu) = cpu::measure(&probe, || async {
            for rows in &rows_by_chunk {
                c.batch_execute("BEGIN").await?;
                let w = BinaryCopyInWriter::new(c.copy_in(&copy_sql).await?, &types);
                futures::pin_mut!(w);
                for row in rows {
                    let refs: Vec<&(dyn ToSql + Sync)> = row.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    w.as_mut().write(&refs).await?;
                }
                w.finish().await?;
                c.batch_execute("COMMIT").await?;
            }
            Ok(())
        })
        .await?;
        fastest = Some(faster(fastest, (time, cpu)));
        }
        let (time, cpu) = fastest.expect("at least one round");
        rows.push(Row { sink: "postgres", label: "direct binary `COPY`, new rows".into(), changes: n, time, cpu, ceiling: None });
        let width = cols.len();
        let values = |k: usize| (0..k).map(|r| format!("({})", (1..=width).map(|j| format!("${}", r * width + j)).collect::<Vec<_>>().join(", "))).collect::<Vec<_>>().join(", ");
        let upsert = |k: usize| format!("INSERT INTO \"{table}\" AS t ({col_list}) VALUES {} ON CONFLICT (\"doc_id\") DO UPDATE SET {sets}", values(k));
        let full = c.prepare_typed(&upsert(1000), &types.iter().cycle().take(1000 * width).cloned().collect::<Vec<_>>()).await?;
        let mut fastest: Option<(Duration, cpu::Sample)> = None;
        for _ in 0..ceiling_rounds {
        let (time, cpu) = cpu::measure(&probe, || async {
            for rows in &rows_by_chunk {
                let params: Vec<&(dyn ToSql + Sync)> = rows.iter().flat_map(|r| r.iter().map(|v| v as &(dyn ToSql + Sync))).collect();
                if rows.len() == 1000 {
                    c.execute(&full, &params).await?;
                } else {
                    let t: Vec<_> = types.iter().cycle().take(rows.len() * width).cloned().collect();
                    let s = c.prepare_typed(&upsert(rows.len()), &t).await?;
                    c.execute(&s, &params).await?;
                }
            }
            Ok(())
        })
        .await?;
        fastest = Some(faster(fastest, (time, cpu)));
        }
        let (time, cpu) = fastest.expect("at least one round");
        c.batch_execute(&format!("DROP TABLE \"{table}\"")).await?;
        rows.push(Row { sink: "postgres", label: "direct `INSERT … ON CONFLICT`, existing rows".into(), changes: n, time, cpu, ceiling: None });

        // PostgreSQL through the pillow: new rows, the same rows again (upserts), by how the
        // rows are written (in line per chunk as CommCare, or gathered on 1 or 2 connections:
        // the default), at chunk 1000 and CommCare's chunk 10; exactly-once new rows.
        for &(label, chunk, extra, exactly_once, upserts) in &PG_PHASES {
            // In line at chunk 10 is CommCare's way, and slow: a tenth of the changes.
            let changes = match (chunk, extra) {
                (10, "flush_max_rows = 0") => n / 10,
                (10, _) => n / 2,
                _ => n,
            };
            let table = unique_name("bench_sinks_table");
            let processor = format!("type = \"postgres_table\"\n{}{extra}\n", table_toml(&table, exactly_once));
            let passes: &[&str] = if upserts { &["new rows", "upserts over existing rows"] } else { &["new rows"] };
            for (k, what) in passes.iter().enumerate() {
                let id = unique_name("bench_sinks_pg");
                let text = pillow_toml(&id, &topic, chunk, kafka, pg_url, &processor);
                let (time, cpu) = cpu::measure(&probe, || run_pillow(&text, changes)).await?;
                forget_pillow(&pg, &id).await?;
                let count: i64 = c.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await?.get(0);
                anyhow::ensure!(count == i64::try_from(changes)?, "table {table} has {count} rows, expected {changes}");
                rows.push(Row {
                    sink: "postgres",
                    label: format!("pillow, chunk {chunk}, {label}, {what}"),
                    changes,
                    time,
                    cpu,
                    ceiling: Some(if k == 0 { "direct binary `COPY`, new rows".into() } else { "direct `INSERT … ON CONFLICT`, existing rows".into() }),
                });
            }
            c.batch_execute(&format!("DROP TABLE \"{table}\"")).await?;
        }
        anyhow::Ok(())
    }
    .await;
    admin.delete_topics(&[&topic]).await?;
    result?;
    println!("\nSinks against their direct ceilings ({n} changes; CPU seconds per million changes of each process, from /proc):");
    print_table(&rows);
    if wanted.elasticsearch && wanted.postgres {
        memory_check(kafka, pg_url, &es, es_url).await?;
    }
    Ok(())
}
