//! The backfill of `pillowtop reindex` (issue 15) beside a direct loader of the same documents,
//! in one run, with CPU seconds per million documents of this process and of each server
//! (`common/cpu.rs`):
//!
//! * **direct loader**: reads the source table by id (1000 rows a query, as the backfill does)
//!   and sends each chunk as one `_bulk` request, 1 and 2 concurrent streams (ranges of the id,
//!   as the backfill's slices), into a fresh index with refresh off and no replicas;
//! * **direct `_bulk` of pre-encoded bodies**: the node's own ceiling, no reading;
//! * **reindex**: a whole `Reindexer::start` run (preflight, new index, backfill, verify with
//!   every id and a 200-document sample, swap, drop) with 1 and 2 slices; its backfill rate is
//!   timed from the run's own log (the backfill step's start to its end), the CPU over the whole
//!   run; the alias swap's time is the run's.
//!
//!
//! And for a `postgres_table` processor's table, the same documents into six columns:
//!
//! * **direct COPY loader**: reads the source by id (1000 rows a query), takes the six values
//!   out of each document and sends each chunk as one binary `COPY` into a fresh table, 1 and 2
//!   concurrent streams;
//! * **reindex**: a whole run of the table (new table, backfill, verify, swap by renames, drop)
//!   with 1 and 2 slices, timed as above.
//!
//! ```text
//! source .services/env
//! cargo bench --profile ci --features testing --bench reindex
//! PILLOWTOP_BENCH_DOCS=20000 cargo bench --features testing --bench reindex   # smoke
//! PILLOWTOP_BENCH_ONLY=table …   # the table's phases only
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
use std::time::Duration;

use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use pillowtop::ops::reindex::{ReindexOptions, ReindexSink, Reindexer, SqlSource};
use pillowtop::pg::Pg;
use pillowtop::processor::elasticsearch::ElasticsearchConfig;
use pillowtop::testing::{env_or, unique_name};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    let (Ok(pg), Ok(es)) = (
        std::env::var("TEST_POSTGRES_URL"),
        std::env::var("TEST_ELASTICSEARCH_URL"),
    ) else {
        anyhow::ensure!(
            !ci,
            "TEST_POSTGRES_URL / TEST_ELASTICSEARCH_URL are not set (CI must not skip)"
        );
        eprintln!("skipping the reindex bench: the services' variables are not set (run tests/services/up and source .services/env)");
        return Ok(());
    };
    let n: usize = env_or("PILLOWTOP_BENCH_DOCS", "100000").parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&pg, &es, n))
}

struct Row {
    label: String,
    docs: usize,
    time: Duration,
    cpu: Option<cpu::Sample>,
}

async fn call(
    es: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    ndjson: bool,
) -> anyhow::Result<(u16, Value)> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        }),
    );
    let r = es
        .transport()
        .send(
            method,
            path,
            headers,
            Some(&[("filter_path", "errors,count,error")]),
            body,
            None,
        )
        .await?;
    let status = r.status_code().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

const SETTINGS: &str = r#"{"settings":{"number_of_shards":1,"number_of_replicas":0,"refresh_interval":"-1"},"mappings":{"properties":{"domain":{"type":"keyword"},"received_on":{"type":"date"}}}}"#;

async fn fresh_index(es: &Elasticsearch, index: &str) -> anyhow::Result<()> {
    let (s, r) = call(
        es,
        Method::Put,
        &format!("/{index}"),
        Some(SETTINGS.as_bytes()),
        false,
    )
    .await?;
    anyhow::ensure!(s == 200, "creating {index}: {r}");
    Ok(())
}

async fn count_and_drop(es: &Elasticsearch, index: &str) -> anyhow::Result<u64> {
    call(es, Method::Post, &format!("/{index}/_refresh"), None, false).await?;
    let (_, r) = call(es, Method::Get, &format!("/{index}/_count"), None, false).await?;
    call(es, Method::Delete, &format!("/{index}"), None, false).await?;
    r["count"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("count of {index}: {r}"))
}

/// The ids that end each stream but the last (the quantiles of the source's ids, as the
/// backfill's slices).
async fn stream_bounds(pg_url: &str, table: &str, streams: usize) -> anyhow::Result<Vec<String>> {
    if streams <= 1 {
        return Ok(Vec::new());
    }
    let (c, conn) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let fractions: Vec<f64> = (1..streams).map(|k| k as f64 / streams as f64).collect();
    Ok(c
        .query_one(
            &format!("SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY doc_id)::text[] FROM {table}"),
            &[&fractions],
        )
        .await?
        .get(0))
}

/// The direct loader: `streams` tasks, each reading its slice of the table by id and sending
/// each chunk of 1000 as one `_bulk` request.
async fn direct_loader(
    pg_url: &str,
    es: &Elasticsearch,
    table: &str,
    index: &str,
    streams: usize,
) -> anyhow::Result<()> {
    // Ranges of the id, one a stream (as the backfill's slices).
    let bounds = stream_bounds(pg_url, table, streams).await?;
    let tasks: Vec<_> = (0..streams)
        .map(|k| {
            let (pg_url, es, table, index) = (
                pg_url.to_owned(),
                es.clone(),
                table.to_owned(),
                index.to_owned(),
            );
            let lower = k.checked_sub(1).and_then(|b| bounds.get(b).cloned()).unwrap_or_default();
            let upper = bounds.get(k).cloned();
            tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                let sql = format!(
                    "SELECT doc_id, doc::text FROM {table} WHERE doc_id > $1 AND ($2::text IS NULL OR doc_id <= $2) ORDER BY doc_id LIMIT 1000"
                );
                let stmt = c.prepare(&sql).await?;
                let mut last = lower;
                let path = format!("/{index}/_bulk");
                loop {
                    let rows = c.query(&stmt, &[&last, &upper]).await?;
                    let Some(r) = rows.last() else {
                        return anyhow::Ok(());
                    };
                    last = r.get(0);
                    let mut body = Vec::with_capacity(rows.len() * 400);
                    for r in &rows {
                        let (id, doc): (&str, &str) = (r.get(0), r.get(1));
                        let mut v: Value = serde_json::from_str(doc)?;
                        if let Some(m) = v.as_object_mut() {
                            m.remove("_id");
                        }
                        body.extend_from_slice(b"{\"index\":{\"_id\":");
                        serde_json::to_writer(&mut body, id)?;
                        body.extend_from_slice(b"}}\n");
                        serde_json::to_writer(&mut body, &v)?;
                        body.push(b'\n');
                    }
                    let (s, r) = call(&es, Method::Post, &path, Some(&body), true).await?;
                    anyhow::ensure!(
                        s == 200 && r["errors"] == json!(false),
                        "direct bulk: {s} {r}"
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

/// Pre-encoded bodies, `clients` at once.
async fn direct_bulk(
    es: &Elasticsearch,
    index: &str,
    bodies: &Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (es, bodies, next, path) = (
                es.clone(),
                bodies.clone(),
                next.clone(),
                format!("/{index}/_bulk"),
            );
            tokio::spawn(async move {
                while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (s, r) = call(&es, Method::Post, &path, Some(body), true).await?;
                    anyhow::ensure!(s == 200 && r["errors"] == json!(false), "bulk: {s} {r}");
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The time between the log lines of two steps of a run.
fn between(log: &Value, from: &str, to: &str) -> Option<Duration> {
    let at = |step: &str| {
        log.as_array()?
            .iter()
            .filter(|l| l["step"] == step)
            .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l["at"].as_str()?).ok())
            .next_back()
    };
    (at(to)? - at(from)?).to_std().ok()
}

async fn run(pg_url: &str, es_url: &str, n: usize) -> anyhow::Result<()> {
    let probe = cpu::Probe::new();
    println!("reindex bench: {n} documents; {}", probe.describe());
    let es = Elasticsearch::new(Transport::single_node(es_url)?);
    let pg = Arc::new(Pg::new(pg_url));
    pillowtop::store::schema::ensure_schema(&pg).await?;
    let table = unique_name("bench_reindex_src");
    let (c, conn) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(&format!(
        "CREATE TABLE {table} (doc_id text PRIMARY KEY, doc jsonb NOT NULL);
         INSERT INTO {table} SELECT 'form-' || lpad(i::text, 9, '0'), jsonb_build_object(
             '_id', 'form-' || lpad(i::text, 9, '0'), 'doc_type', 'XFormInstance',
             'domain', 'domain-' || (i % 50), 'xmlns', 'http://openrosa.org/formdesigner/' || (i % 20),
             'received_on', '2026-11-01T12:00:00Z', 'form', jsonb_build_object(
                 'meta', jsonb_build_object('userID', 'user-' || (i % 1000), 'instanceID', 'form-' || i),
                 'age', i % 90, 'name', 'name ' || i))
         FROM generate_series(1, {n}) i;
         ANALYZE {table};"
    ))
    .await?;
    let result = phases(pg_url, &pg, &es, es_url, &table, n, &probe).await;
    let _ = c
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await;
    result
}

async fn phases(
    pg_url: &str,
    pg: &Arc<Pg>,
    es: &Elasticsearch,
    es_url: &str,
    table: &str,
    n: usize,
    probe: &cpu::Probe,
) -> anyhow::Result<()> {
    if std::env::var("PILLOWTOP_BENCH_ONLY").is_ok_and(|v| v == "table") {
        return table_phases(pg_url, pg, table, n, probe).await;
    }
    let mut rows: Vec<Row> = Vec::new();
    // The direct loaders.
    for streams in [1, 2] {
        let index = unique_name("bench_reindex_direct");
        fresh_index(es, &index).await?;
        let (time, cpu) =
            cpu::measure(probe, || direct_loader(pg_url, es, table, &index, streams)).await?;
        let count = count_and_drop(es, &index).await?;
        anyhow::ensure!(count == n as u64, "direct loader: {count} documents of {n}");
        rows.push(Row {
            label: format!("direct loader (read + `_bulk`), {streams} stream(s)"),
            docs: n,
            time,
            cpu: Some(cpu),
        });
    }
    let bodies = {
        let (c, conn) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let all = c
            .query(
                &format!("SELECT doc_id, doc::text FROM {table} ORDER BY doc_id"),
                &[],
            )
            .await?;
        Arc::new(
            all.chunks(1000)
                .map(|part| {
                    let mut body = Vec::new();
                    for r in part {
                        let (id, doc): (&str, &str) = (r.get(0), r.get(1));
                        let mut v: Value = serde_json::from_str(doc).expect("json");
                        v.as_object_mut().expect("object").remove("_id");
                        body.extend_from_slice(
                            format!("{{\"index\":{{\"_id\":{id:?}}}}}\n").as_bytes(),
                        );
                        serde_json::to_writer(&mut body, &v).expect("json");
                        body.push(b'\n');
                    }
                    body
                })
                .collect::<Vec<_>>(),
        )
    };
    for clients in [1, 2] {
        let index = unique_name("bench_reindex_bulk");
        fresh_index(es, &index).await?;
        let (time, cpu) = cpu::measure(probe, || direct_bulk(es, &index, &bodies, clients)).await?;
        let count = count_and_drop(es, &index).await?;
        anyhow::ensure!(count == n as u64, "direct bulk: {count} documents of {n}");
        rows.push(Row {
            label: format!("direct `_bulk` of pre-encoded bodies, {clients} client(s)"),
            docs: n,
            time,
            cpu: Some(cpu),
        });
    }

    // The reindex, behind an alias.
    let mut swaps = Vec::new();
    for slices in [1, 2] {
        let alias = unique_name("bench_reindex_alias");
        let old = format!("{alias}_old");
        let new = format!("{alias}_new");
        let (s, r) = call(
            es,
            Method::Put,
            &format!("/{old}"),
            Some(format!(r#"{{"aliases":{{"{alias}":{{}}}}}}"#).as_bytes()),
            false,
        )
        .await?;
        anyhow::ensure!(s == 200, "creating {old}: {r}");
        let mut config = ElasticsearchConfig::new(es_url, &old);
        config.alias = Some(alias.clone());
        config.settings = Some(json!({"number_of_shards": 1, "number_of_replicas": 0}));
        config.mappings = Some(
            json!({"properties": {"domain": {"type": "keyword"}, "received_on": {"type": "date"}}}),
        );
        let pillow = unique_name("bench_reindex_pillow");
        let r = Reindexer {
            pg: pg.clone(),
            processor: format!("ElasticsearchProcessor({old})"),
            pillow: pillow.clone(),
            sink: ReindexSink::Elasticsearch {
                config,
                transform: None,
            },
            topics: Vec::new(),
            kafka: None,
            stop: CancellationToken::new(),
        };
        let mut options = ReindexOptions::new(SqlSource {
            table: table.to_owned(),
            id_column: "doc_id".into(),
            doc_column: "doc".into(),
        });
        options.slices = slices;
        options.keep_old_secs = 0;
        options.new_index = Some(new.clone());
        let mut run = None;
        let (time, cpu) = cpu::measure(probe, || async {
            run = Some(r.start(&options, true, &|_| {}).await?);
            Ok(())
        })
        .await?;
        let run = run.expect("a run");
        let backfill = between(&run.log, "backfill", "verify")
            .ok_or_else(|| anyhow::anyhow!("no backfill step in the run's log: {}", run.log))?;
        let count = count_and_drop(es, &new).await?;
        let _ = call(es, Method::Delete, &format!("/{old}"), None, false).await;
        delete_runs(pg_url, &pillow).await?;
        anyhow::ensure!(
            count == n as u64 && run.step.as_str() == "done",
            "reindex: {count} documents of {n}, step {}",
            run.step.as_str()
        );
        swaps.push(run.verify["swap_ms"].as_u64().unwrap_or(0));
        rows.push(Row {
            label: format!("reindex backfill, {slices} slice(s)"),
            docs: n,
            time: backfill,
            cpu: None,
        });
        rows.push(Row {
            label: format!("reindex whole run (preflight … verify, swap, drop), {slices} slice(s)"),
            docs: n,
            time,
            cpu: Some(cpu),
        });
    }

    print_rows(&rows, "best direct loader");
    println!("alias swap (one `_aliases` request): {swaps:?} ms");
    table_phases(pg_url, pg, table, n, probe).await
}

/// The rows as a Markdown table, each rate beside the best rate of the rows labelled
/// `direct…loader`.
fn print_rows(rows: &[Row], best_label: &str) {
    let best = rows
        .iter()
        .filter(|r| r.label.starts_with("direct") && r.label.contains("loader"))
        .map(|r| r.docs as f64 / r.time.as_secs_f64())
        .fold(0.0, f64::max);
    println!();
    println!(
        "| phase | docs | seconds | docs/s | vs {best_label} | CPU-s per M docs: {} | total |",
        cpu::NAMES.join(" | ")
    );
    println!(
        "|---|---:|---:|---:|---:|{}---:|",
        "---:|".repeat(cpu::NAMES.len())
    );
    for r in rows {
        let rate = r.docs as f64 / r.time.as_secs_f64();
        let per_m = |v: f64| v / r.docs as f64 * 1e6;
        let cpu_cols = r.cpu.map_or_else(
            || vec![String::new(); cpu::NAMES.len() + 1],
            |c| {
                c.0.iter()
                    .map(|v| format!("{:.1}", per_m(*v)))
                    .chain(std::iter::once(format!("{:.1}", per_m(c.total()))))
                    .collect()
            },
        );
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.0}% | {} |",
            r.label,
            r.docs,
            r.time.as_secs_f64(),
            rate,
            rate / best * 100.0,
            cpu_cols.join(" | ")
        );
    }
    println!();
}

/// The reporting table's columns (as the processor's definition and the direct loader have
/// them).
const COLUMNS: &str = r#"
table = "TABLE"
primary_key = ["doc_id"]
columns = [
  { name = "doc_id", type = "text", change = "id" },
  { name = "domain", type = "text", path = "domain" },
  { name = "xmlns", type = "text", path = "xmlns" },
  { name = "user_id", type = "text", path = "form.meta.userID" },
  { name = "age", type = "integer", path = "form.age" },
  { name = "received_on", type = "timestamptz", path = "received_on" },
]
"#;

const TABLE_SQL: &str = "(doc_id text PRIMARY KEY, domain text, xmlns text, user_id text, age integer, received_on timestamptz)";

/// The direct COPY loader: `streams` tasks, each reading its slice of the source by id and
/// sending each chunk of 1000 rows as one binary `COPY`.
async fn direct_copy(
    pg_url: &str,
    source: &str,
    target: &str,
    streams: usize,
) -> anyhow::Result<()> {
    use futures::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    let bounds = stream_bounds(pg_url, source, streams).await?;
    let tasks: Vec<_> = (0..streams)
        .map(|k| {
            let (pg_url, source, target) = (pg_url.to_owned(), source.to_owned(), target.to_owned());
            let lower = k.checked_sub(1).and_then(|b| bounds.get(b).cloned()).unwrap_or_default();
            let upper = bounds.get(k).cloned();
            tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                let stmt = c
                    .prepare(&format!(
                        "SELECT doc_id, doc::text FROM {source} WHERE doc_id > $1 AND ($2::text IS NULL OR doc_id <= $2) ORDER BY doc_id LIMIT 1000"
                    ))
                    .await?;
                let copy = format!("COPY {target} FROM STDIN (FORMAT binary)");
                let types = [Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4, Type::TIMESTAMPTZ];
                let mut last = lower;
                loop {
                    let rows = c.query(&stmt, &[&last, &upper]).await?;
                    let Some(r) = rows.last() else {
                        return anyhow::Ok(());
                    };
                    last = r.get(0);
                    let sink = c.copy_in(copy.as_str()).await?;
                    let writer = BinaryCopyInWriter::new(sink, &types);
                    pin_mut!(writer);
                    for r in &rows {
                        let (id, doc): (&str, &str) = (r.get(0), r.get(1));
                        let v: Value = serde_json::from_str(doc)?;
                        let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
                        let age = v
                            .pointer("/form/age")
                            .and_then(Value::as_i64)
                            .and_then(|a| i32::try_from(a).ok());
                        let received = text("/received_on")
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                            .map(|t| t.with_timezone(&chrono::Utc));
                        let values: [&(dyn ToSql + Sync); 6] = [
                            &id,
                            &text("/domain"),
                            &text("/xmlns"),
                            &text("/form/meta/userID"),
                            &age,
                            &received,
                        ];
                        writer.as_mut().write(&values).await?;
                    }
                    writer.finish().await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn table_phases(
    pg_url: &str,
    pg: &Arc<Pg>,
    source: &str,
    n: usize,
    probe: &cpu::Probe,
) -> anyhow::Result<()> {
    let (c, conn) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let count = |t: String| {
        let c = &c;
        async move {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await?
                .get(0);
            anyhow::Ok(usize::try_from(n).unwrap_or(0))
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    for streams in [1, 2] {
        let target = unique_name("bench_reindex_copy");
        c.batch_execute(&format!("CREATE TABLE {target} {TABLE_SQL}"))
            .await?;
        let (time, cpu) =
            cpu::measure(probe, || direct_copy(pg_url, source, &target, streams)).await?;
        let got = count(target.clone()).await?;
        c.batch_execute(&format!("DROP TABLE {target}")).await?;
        anyhow::ensure!(got == n, "direct COPY loader: {got} rows of {n}");
        rows.push(Row {
            label: format!("direct COPY loader (read + binary `COPY`), {streams} stream(s)"),
            docs: n,
            time,
            cpu: Some(cpu),
        });
    }
    let mut swaps = Vec::new();
    for slices in [1, 2] {
        let table = unique_name("bench_reindex_table");
        c.batch_execute(&format!("CREATE TABLE {table} {TABLE_SQL}"))
            .await?;
        let def: pillowtop::processor::postgres::TableDefinition =
            toml::from_str(&COLUMNS.replace("TABLE", &table))?;
        let pillow = unique_name("bench_reindex_pillow");
        let r = Reindexer {
            pg: pg.clone(),
            processor: format!("postgres-table:{table}"),
            pillow: pillow.clone(),
            sink: ReindexSink::Table(def),
            topics: Vec::new(),
            kafka: None,
            stop: CancellationToken::new(),
        };
        let mut options = ReindexOptions::new(SqlSource {
            table: source.to_owned(),
            id_column: "doc_id".into(),
            doc_column: "doc".into(),
        });
        options.slices = slices;
        options.keep_old_secs = 0;
        let mut run = None;
        let (time, cpu) = cpu::measure(probe, || async {
            run = Some(r.start(&options, true, &|_| {}).await?);
            Ok(())
        })
        .await?;
        let run = run.expect("a run");
        let backfill = between(&run.log, "backfill", "verify")
            .ok_or_else(|| anyhow::anyhow!("no backfill step in the run's log: {}", run.log))?;
        let got = count(table.clone()).await?;
        c.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await?;
        delete_runs(pg_url, &pillow).await?;
        anyhow::ensure!(
            got == n && run.step.as_str() == "done",
            "table reindex: {got} rows of {n}, step {}",
            run.step.as_str()
        );
        swaps.push(run.verify["swap_ms"].as_u64().unwrap_or(0));
        rows.push(Row {
            label: format!("table reindex backfill, {slices} slice(s)"),
            docs: n,
            time: backfill,
            cpu: None,
        });
        rows.push(Row {
            label: format!(
                "table reindex whole run (create … verify, swap, drop), {slices} slice(s)"
            ),
            docs: n,
            time,
            cpu: Some(cpu),
        });
    }
    print_rows(&rows, "best direct COPY loader");
    println!("table swap (two renames and a view, one transaction): {swaps:?} ms");
    Ok(())
}

async fn delete_runs(pg_url: &str, pillow: &str) -> anyhow::Result<()> {
    let (c, conn) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.execute(
        "DELETE FROM pillowtop_rs_reindex WHERE pillow = $1",
        &[&pillow],
    )
    .await?;
    Ok(())
}
