//! The PostgreSQL reporting-table processor against the real services, in one run:
//!
//! 0. **anatomy of a chunk** of 1000 rows: encoding (documents parsed, values converted), then
//!    each statement of the `copy_merge` write on its own (BEGIN + CREATE TEMP TABLE, binary COPY
//!    into the temporary table, INSERT … SELECT … ON CONFLICT, TRUNCATE, COMMIT) beside a binary
//!    COPY straight into the table (what `copy_first` does for new rows);
//! 1. **write methods**: the same N form documents written by `PgTableProcessor` straight from
//!    memory (no Kafka) with each [`WriteMethod`] — `copy_first` (binary COPY straight into the
//!    table, falling back to `copy_merge` on a conflict), `copy_merge` (binary COPY into a temporary
//!    table, then one INSERT … SELECT … ON CONFLICT), `unnest` (one array parameter per column)
//!    and `insert_values` (multi-row VALUES with typed parameters, split below 65,535
//!    parameters) — for fresh inserts and for updates of existing rows, by chunk size;
//! 2. **Kafka → PostgreSQL table through the pillow**: N CommCare-style changes with embedded
//!    documents on an 8-partition topic, run by a pillow built from a config file
//!    (`PillowFile::spec` then `PillowSpec::build`, as `pillowtop run` does) until it has handled N
//!    changes, per write method and in exactly-once mode; changes/s and MB/s of message bodies.
//!
//! ```text
//! source .services/env   # TEST_KAFKA_BOOTSTRAP, TEST_POSTGRES_URL
//! cargo bench --features testing --bench pg_table
//! PILLOWTOP_BENCH_CHANGES=20000 cargo bench --features testing --bench pg_table   # smoke
//! ```
// A benchmark reports by printing; its scenario reads best as one function.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pillowtop::change::{Change, ChangeMeta};
use pillowtop::config::{PillowFile, RunOptions};
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin};
use pillowtop::pg::Pg;
use pillowtop::processor::postgres::{PgTableProcessor, TableDefinition, WriteMethod};
use pillowtop::processor::Processor;
use pillowtop::testing::{env_or, unique_name};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const METHODS: [WriteMethod; 4] = [
    WriteMethod::CopyFirst,
    WriteMethod::CopyMerge,
    WriteMethod::Unnest,
    WriteMethod::InsertValues,
];

fn main() -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    let (Ok(url), Ok(kafka)) = (
        std::env::var("TEST_POSTGRES_URL"),
        std::env::var("TEST_KAFKA_BOOTSTRAP"),
    ) else {
        anyhow::ensure!(
            !ci,
            "TEST_POSTGRES_URL / TEST_KAFKA_BOOTSTRAP are not set (CI must not skip)"
        );
        eprintln!("skipping the pg_table bench: TEST_POSTGRES_URL / TEST_KAFKA_BOOTSTRAP are not set (run tests/services/up and source .services/env)");
        return Ok(());
    };
    let n: usize = env_or("PILLOWTOP_BENCH_CHANGES", "100000").parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&url, &kafka, n))
}

fn columns_toml() -> &'static str {
    r#"columns = [
  { name = "doc_id",      type = "text",        change = "id" },
  { name = "domain",      type = "text",        path = "$.domain" },
  { name = "xmlns",       type = "text",        path = "xmlns" },
  { name = "user_id",     type = "text",        path = "form.meta.userID" },
  { name = "received_on", type = "timestamptz", path = "received_on" },
  { name = "age",         type = "integer",     path = "form.age" },
  { name = "weight_kg",   type = "numeric",     path = "form.weight" },
  { name = "consented",   type = "boolean",     path = "form.consent" },
  { name = "visit_date",  type = "date",        path = "form.visit_date" },
  { name = "form",        type = "jsonb",       path = "form" },
]
[filter]
equals = { doc_type = "XFormInstance" }"#
}

fn definition(table: &str, method: WriteMethod, exactly_once: bool) -> String {
    let method = match method {
        WriteMethod::CopyFirst => "copy_first",
        WriteMethod::CopyMerge => "copy_merge",
        WriteMethod::Unnest => "unnest",
        WriteMethod::InsertValues => "insert_values",
    };
    format!(
        "table = \"{table}\"\nprimary_key = [\"doc_id\"]\nwrite_method = \"{method}\"\nexactly_once = {exactly_once}\n{}",
        columns_toml()
    )
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

async fn drop_table(pg: &Pg, table: &str) -> anyhow::Result<()> {
    pg.fresh_client()
        .await?
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await?;
    Ok(())
}

/// Writes `changes` in chunks of `chunk` through a processor with `method`; returns the time.
async fn write_all(
    p: &mut PgTableProcessor,
    changes: &mut [Change],
    chunk: usize,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for c in changes.chunks_mut(chunk) {
        let out = p
            .process_changes_chunk(c)
            .await?
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        anyhow::ensure!(
            out.errors.is_empty() && out.retry.is_empty(),
            "unexpected failures"
        );
    }
    Ok(t.elapsed())
}

struct Row {
    label: String,
    changes: usize,
    bytes: usize,
    time: Duration,
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "| {:<44} | {:>9} | {:>9} | {:>12} | {:>7} |",
        "case", "changes", "seconds", "changes/s", "MB/s"
    );
    println!(
        "|{:-<46}|{:->11}|{:->11}|{:->14}|{:->9}|",
        "", "", "", "", ""
    );
    for r in rows {
        let s = r.time.as_secs_f64();
        println!(
            "| {:<44} | {:>9} | {:>9.2} | {:>12.0} | {:>7.1} |",
            r.label,
            r.changes,
            s,
            r.changes as f64 / s,
            r.bytes as f64 / s / 1e6
        );
    }
}

/// Section 0: where a chunk of 1000 new rows spends its time, in ms per chunk (mean over the
/// chunks of `changes`, fresh copies so that documents are parsed as in a pillow).
async fn anatomy(pg: &Pg, changes: &[Change]) -> anyhow::Result<()> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::ToSql;
    let chunk = 1000;
    let stage_table = unique_name("bench_pgt_stage");
    let direct_table = unique_name("bench_pgt_direct");
    let def: TableDefinition =
        toml::from_str(&definition(&stage_table, WriteMethod::CopyMerge, false))?;
    let encoder = pillowtop::processor::postgres::encoder::Encoder::new(&def);
    let types: Vec<_> = def
        .columns
        .iter()
        .map(|c| c.column_type.pg_type())
        .collect();
    let cols: Vec<String> = def
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let (col_list, column_defs) = (
        cols.join(", "),
        def.columns
            .iter()
            .zip(&cols)
            .map(|(c, q)| format!("{q} {}", c.column_type.sql()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let sets = cols[1..]
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let c = pg.fresh_client().await?;
    for t in [&stage_table, &direct_table] {
        c.batch_execute(&format!(
            "CREATE TABLE \"{t}\" ({column_defs}, PRIMARY KEY (\"doc_id\"))"
        ))
        .await?;
    }
    let steps = [
        "encode (parse + convert)",
        "BEGIN + CREATE TEMP TABLE",
        "COPY into the temporary table",
        "INSERT … SELECT … ON CONFLICT",
        "TRUNCATE the temporary table",
        "COMMIT",
        "COPY straight into the table + COMMIT",
    ];
    let mut total = [Duration::ZERO; 7];
    let mut chunks = 0u32;
    for part in changes.chunks(chunk) {
        // Not parsed yet: this section runs first, and clones do not share the parsed form.
        let fresh: Vec<Change> = part.to_vec();
        let mut t = Instant::now();
        let mut lap = |i: usize, total: &mut [Duration; 7]| {
            total[i] += t.elapsed();
            t = Instant::now();
        };
        let rows = encoder.encode_chunk(&fresh).upserts;
        lap(0, &mut total);
        c.batch_execute(&format!(
            "BEGIN; CREATE TEMP TABLE IF NOT EXISTS bench_stage ({column_defs})"
        ))
        .await?;
        lap(1, &mut total);
        let copy = |table: &str| format!("COPY {table} ({col_list}) FROM STDIN (FORMAT binary)");
        let write = |sink| async {
            let w = BinaryCopyInWriter::new(sink, &types);
            futures::pin_mut!(w);
            for row in &rows {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    row.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                w.as_mut().write(&refs).await?;
            }
            w.finish().await
        };
        write(c.copy_in(&copy("bench_stage")).await?).await?;
        lap(2, &mut total);
        c.batch_execute(&format!(
            "INSERT INTO \"{stage_table}\" AS t ({col_list}) SELECT {col_list} FROM bench_stage ON CONFLICT (\"doc_id\") DO UPDATE SET {sets}"
        ))
        .await?;
        lap(3, &mut total);
        c.batch_execute("TRUNCATE bench_stage").await?;
        lap(4, &mut total);
        c.batch_execute("COMMIT").await?;
        lap(5, &mut total);
        c.batch_execute("BEGIN").await?;
        write(c.copy_in(&copy(&format!("\"{direct_table}\""))).await?).await?;
        c.batch_execute("COMMIT").await?;
        lap(6, &mut total);
        chunks += 1;
    }
    for t in [&stage_table, &direct_table] {
        c.batch_execute(&format!("DROP TABLE \"{t}\"")).await?;
    }
    println!("\nAnatomy of a chunk of {chunk} new rows (ms per chunk, mean of {chunks}):");
    for (step, t) in steps.iter().zip(total) {
        println!(
            "  {step:<40} {:>7.2}",
            t.as_secs_f64() * 1e3 / f64::from(chunks.max(1))
        );
    }
    Ok(())
}

async fn run(url: &str, kafka: &str, n: usize) -> anyhow::Result<()> {
    let pg = Arc::new(Pg::new(url));
    pillowtop::store::schema::ensure_schema(&pg).await?;
    println!(
        "pg_table bench: {n} changes, PostgreSQL {}, Kafka {kafka}",
        pillowtop::pg::redact(url)
    );

    // 1. Write methods, from memory.
    let build = |version: usize| -> Vec<Change> {
        (0..n)
            .map(|i| {
                let body = meta(i, version).to_json();
                Change::from_message("bench", 0, i64::try_from(i).unwrap_or(0), body.as_bytes())
                    .expect("valid")
            })
            .collect()
    };
    let mut first = build(0);
    let mut second = build(1);
    let bytes: usize = first.iter().map(|c| c.size).sum();
    anatomy(&pg, &first).await?;
    let mut rows = Vec::new();
    for chunk in [100, 1000] {
        for method in METHODS {
            let mut best = (Duration::MAX, Duration::MAX);
            for _round in 0..2 {
                let table = unique_name("bench_pgt");
                let def: TableDefinition = toml::from_str(&definition(&table, method, false))?;
                let mut p = PgTableProcessor::new(def, pg.clone())?;
                p.bootstrap_if_needed().await?;
                let insert = write_all(&mut p, &mut first, chunk).await?;
                let update = write_all(&mut p, &mut second, chunk).await?;
                drop_table(&pg, &table).await?;
                best = (best.0.min(insert), best.1.min(update));
            }
            for (what, time) in [("insert", best.0), ("update", best.1)] {
                rows.push(Row {
                    label: format!("{method:?} {what}, chunk {chunk}"),
                    changes: n,
                    bytes,
                    time,
                });
            }
        }
    }
    print_table(
        "Write methods (PgTableProcessor from memory, 10 columns, best of 2; MB/s of change bodies):",
        &rows,
    );

    // 2. Kafka → table through the pillow.
    let topic = unique_name("bench_pgt_topic");
    let admin = KafkaAdmin::new(kafka)?;
    admin.create_topic(&topic, 8, &[]).await?;
    let result = async {
        let producer = ChangeProducer::new(kafka)?;
        let t = Instant::now();
        producer.send_changes(&topic, (0..n).map(|i| meta(i, 0))).await?;
        println!("\npublished {n} changes ({:.1} MB) in {:.2}s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());
        let mut rows = Vec::new();
        let cases: Vec<(WriteMethod, bool, usize)> = vec![
            (WriteMethod::CopyFirst, false, 1000),
            (WriteMethod::CopyMerge, false, 1000),
            (WriteMethod::Unnest, false, 1000),
            (WriteMethod::InsertValues, false, 1000),
            (WriteMethod::CopyFirst, false, 100),
            (WriteMethod::CopyMerge, false, 100),
            (WriteMethod::Unnest, false, 100),
            (WriteMethod::CopyFirst, true, 1000),
            (WriteMethod::CopyMerge, true, 1000),
            (WriteMethod::Unnest, true, 1000),
        ];
        for (method, exactly_once, chunk) in cases {
            let id = unique_name("bench_pgt_pillow");
            let table = unique_name("bench_pgt_table");
            let text = format!(
                "name = \"{id}\"\ncheckpoint_id = \"{id}\"\ntopics = [\"{topic}\"]\nchunk_size = {chunk}\ncheckpoint_frequency = 10000\nmax_checkpoint_delay_secs = 300\n\
                 [kafka]\nbootstrap = \"{kafka}\"\nidle_timeout_ms = 2000\n[postgres]\nurl = \"{url}\"\n[[processors]]\ntype = \"postgres_table\"\n{}",
                definition(&table, method, exactly_once).replace("\n[filter]", "\n[processors.filter]")
            );
            let file = PillowFile::from_toml(&text)?;
            let options = RunOptions {
                max_changes: Some(u64::try_from(n)?),
                ..RunOptions::default()
            };
            let t = Instant::now();
            let stop = CancellationToken::new();
            let mut pillow = file.spec(&options)?.build(&stop).await?;
            let summary = pillow.run(&stop).await?;
            let time = t.elapsed();
            anyhow::ensure!(summary.changes == u64::try_from(n)? && summary.failed == 0, "{summary:?}");
            let c = pg.fresh_client().await?;
            let count: i64 = c.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await?.get(0);
            anyhow::ensure!(count == i64::try_from(n)?, "table {table} has {count} rows, expected {n}");
            c.execute("DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1", &[&id]).await?;
            c.execute("DELETE FROM pillowtop_rs_process WHERE pillow_name = $1", &[&id]).await?;
            drop_table(&pg, &table).await?;
            rows.push(Row {
                label: format!(
                    "{method:?}, chunk {chunk}{}",
                    if exactly_once { ", exactly-once" } else { "" }
                ),
                changes: n,
                bytes,
                time,
            });
        }
        print_table(
            "Kafka → PostgreSQL table through the pillow (8 partitions, checkpoint every 10,000; time includes connecting):",
            &rows,
        );
        anyhow::Ok(())
    }
    .await;
    admin.delete_topics(&[&topic]).await?;
    result
}
