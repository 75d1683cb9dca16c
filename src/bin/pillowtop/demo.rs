//! `pillowtop demo`, the README's main job: CommCare-style form changes (documents embedded)
//! through an `xform-pillow`-like pillow into an Elasticsearch index and a PostgreSQL reporting
//! table, the lag table, a query of each store checked against what was published, then
//! CommCare's split procedure (`split_pillow_checkpoints`): each processor runs on in its own
//! pillow from the split checkpoint. Everything it creates has a unique name and is removed at
//! the end unless `--keep`.
//! Binary only: the library and the Python wheel do not carry it.

// The demo is one story told in order; its steps read best as a few long functions. It owns its
// terminal, so it prints.
#![allow(clippy::too_many_lines, clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{IndicesDeleteParts, IndicesRefreshParts};
use elasticsearch::{Elasticsearch, SearchParts};
use pillowtop::change::ChangeMeta;
use pillowtop::config::{PillowFile, RunOptions};
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin};
use pillowtop::feed::TopicPartition;
use pillowtop::ops::kafka::KafkaInfo;
use pillowtop::ops::split::SplitTarget;
use pillowtop::pg::Pg;
use pillowtop::pillow::RunSummary;
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::store::history::postgres::PostgresHistoryStore;
use pillowtop::store::liveness::postgres::PostgresLivenessStore;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use pillowtop::cli::lag::print_rows as print_lag;
use pillowtop::cli::run::Progress;
use pillowtop::cli::split::print_plan;
use pillowtop::cli::ui::{self, StdUi};

const DOMAINS: [&str; 4] = ["dimagi", "demo-health", "field-survey", "nutrition"];
const VISIT_TYPES: [&str; 3] = ["routine", "follow-up", "referral"];
const XMLNS: &str = "http://openrosa.org/formdesigner/demo-household-visit";
/// Every 100th change deletes the form published 50 changes earlier (same key, so same
/// partition, so after it).
const DELETE_EVERY: u64 = 100;
const DELETE_BACK: u64 = 50;
/// The feed's idle tick: the pillows stop at the first one (`--until-idle`).
const IDLE_MS: u64 = 2000;

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "PILLOWTOP_KAFKA_BOOTSTRAP")]
    kafka: String,
    /// PostgreSQL URL.
    #[arg(long, env = "PILLOWTOP_POSTGRES_URL")]
    postgres_url: String,
    /// Elasticsearch (or OpenSearch) URL.
    #[arg(long, env = "PILLOWTOP_ELASTICSEARCH_URL")]
    elasticsearch_url: String,
    /// How many changes to publish first; a quarter as many follow the split.
    #[arg(long, default_value_t = 20_000)]
    changes: u64,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Keep the demo topic, index, table and checkpoint rows afterwards.
    #[arg(long)]
    keep: bool,
}

/// The names of everything the demo creates.
struct Names {
    topic: String,
    index: String,
    table: String,
    /// The xform pillow (both processors, then only the PostgreSQL one after the split).
    pillow: String,
    /// The pillow split off for the Elasticsearch processor.
    es_pillow: String,
}

impl Names {
    fn new() -> anyhow::Result<Self> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let suffix = format!(
            "{:x}{:04x}",
            now.as_secs() % 0xff_ffff,
            (now.subsec_nanos() ^ std::process::id()) % 0xffff
        );
        Ok(Self {
            topic: format!("demo-form-sql-{suffix}"),
            index: format!("demo_xforms_{suffix}"),
            table: format!("demo_xform_report_{suffix}"),
            pillow: format!("xform-pillow-{suffix}"),
            es_pillow: format!("xform-es-pillow-{suffix}"),
        })
    }
}

/// What was published so far: the live forms by sequence number (domain index, amount).
#[derive(Default)]
struct Published {
    changes: u64,
    deletions: u64,
    live: BTreeMap<u64, (usize, i64)>,
}

impl Published {
    /// Live forms and their summed amount per domain.
    fn per_domain(&self) -> BTreeMap<String, (i64, i64)> {
        let mut out: BTreeMap<String, (i64, i64)> =
            DOMAINS.iter().map(|d| ((*d).to_owned(), (0, 0))).collect();
        for (d, amount) in self.live.values() {
            let e = out.entry(DOMAINS[*d].to_owned()).or_default();
            e.0 += 1;
            e.1 += amount;
        }
        out
    }
}

fn form_id(i: u64) -> String {
    format!("form-{i:08}")
}

fn domain_of(i: u64) -> usize {
    usize::try_from(i % 4).unwrap_or(0)
}

fn amount_of(i: u64) -> i64 {
    i64::try_from(1 + (i * 37) % 500).unwrap_or(1)
}

/// A CommCare `XFormInstance` (deleted forms keep their fields, with `-Deleted` appended to
/// the doc type, as CommCare soft-deletes them).
fn form(i: u64, deleted: bool) -> Value {
    let received =
        chrono::DateTime::from_timestamp(1_714_953_600 + i64::try_from(i * 7).unwrap_or(0), 0)
            .unwrap_or_default();
    json!({
        "_id": form_id(i),
        "doc_type": if deleted { "XFormInstance-Deleted" } else { "XFormInstance" },
        "domain": DOMAINS[domain_of(i)],
        "xmlns": XMLNS,
        "received_on": pillowtop::change::format_datetime(&received),
        "form": {
            "@xmlns": XMLNS,
            "meta": {
                "userID": format!("user-{:03}", i % 97),
                "instanceID": form_id(i),
                "deviceID": format!("device-{}", i % 13),
                "appVersion": "CommCare Android, version \"2.53.1\"",
            },
            "household_size": 1 + i % 9,
            "amount": amount_of(i),
            "visit_type": VISIT_TYPES[usize::try_from(i % 3).unwrap_or(0)],
        },
    })
}

/// Change number `k`: a new form, or every [`DELETE_EVERY`]th one the deletion of an
/// earlier form. Records it in `published`.
fn change(k: u64, published: &mut Published) -> ChangeMeta {
    let deletion = k % DELETE_EVERY == DELETE_EVERY - 1 && k >= DELETE_BACK;
    let i = if deletion { k - DELETE_BACK } else { k };
    let mut m = ChangeMeta::new(form_id(i), "sql", "form-sql");
    m.document_type = Some(
        if deletion {
            "XFormInstance-Deleted"
        } else {
            "XFormInstance"
        }
        .into(),
    );
    m.document_subtype = Some(XMLNS.into());
    m.domain = Some(DOMAINS[domain_of(i)].into());
    m.is_deletion = deletion;
    m.extra.insert("document".into(), form(i, deletion));
    published.changes += 1;
    if deletion {
        published.deletions += 1;
        published.live.remove(&i);
    } else {
        published.live.insert(i, (domain_of(i), amount_of(i)));
    }
    m
}

/// Publishes changes `from..to` with a progress line on stderr.
async fn publish(
    producer: &ChangeProducer,
    topic: &str,
    from: u64,
    to: u64,
    published: &mut Published,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let total = to - from;
    let tty = std::io::stderr().is_terminal();
    let (mut sent, mut bytes, mut shown) = (0u64, 0usize, Instant::now());
    let deletions_before = published.deletions;
    let mut k = from;
    while k < to {
        let end = (k + 5000).min(to);
        let batch: Vec<ChangeMeta> = (k..end).map(|k| change(k, published)).collect();
        bytes += batch.iter().map(|m| m.to_json().len()).sum::<usize>();
        sent += producer.send_changes(topic, batch).await?;
        k = end;
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "published {sent:>8}/{total}  {:>9.0} changes/s  {:>6.1} MB",
            sent as f64 / secs,
            bytes as f64 / 1e6
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r  {line}   ");
        } else if shown.elapsed() >= Duration::from_secs(2) {
            let _ = writeln!(err, "  progress: {line}");
            shown = Instant::now();
        }
        let _ = err.flush();
    }
    if tty {
        eprintln!();
    }
    println!(
        "published {sent} changes ({:.1} MB, {} deletions of earlier forms) to {topic} in {:.2}s",
        bytes as f64 / 1e6,
        published.deletions - deletions_before,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn es_processor(a: &DemoArgs, n: &Names) -> Value {
    json!({
        "type": "elasticsearch",
        "urls": [a.elasticsearch_url],
        "index": n.index,
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"dynamic": false, "properties": {
            "doc_type": {"type": "keyword"},
            "domain": {"type": "keyword"},
            "xmlns": {"type": "keyword"},
            "received_on": {"type": "date"},
            "form": {"properties": {
                "meta": {"properties": {"userID": {"type": "keyword"}}},
                "amount": {"type": "long"},
            }},
        }},
    })
}

fn pg_processor(n: &Names) -> Value {
    json!({
        "type": "postgres_table",
        "table": n.table,
        "primary_key": ["doc_id"],
        "columns": [
            {"name": "doc_id", "type": "text", "change": "id"},
            {"name": "domain", "type": "text", "path": "domain"},
            {"name": "xmlns", "type": "text", "path": "xmlns"},
            {"name": "user_id", "type": "text", "path": "form.meta.userID"},
            {"name": "received_on", "type": "timestamptz", "path": "received_on"},
            {"name": "amount", "type": "integer", "path": "form.amount"},
        ],
        "filter": {"equals": {"doc_type": "XFormInstance"}},
    })
}

/// A pillow file, as `pillowtop run --config` would read it.
fn pillow_file(
    a: &DemoArgs,
    name: &str,
    topic: &str,
    processors: &[Value],
) -> anyhow::Result<PillowFile> {
    let file: PillowFile = serde_json::from_value(json!({
        "name": name,
        "checkpoint_id": name,
        "topics": [topic],
        "chunk_size": 500,
        "checkpoint_frequency": 5000,
        "max_checkpoint_delay_secs": 5,
        "kafka": {"bootstrap": a.kafka, "idle_timeout_ms": IDLE_MS},
        "postgres": {"url": a.postgres_url},
        "processors": processors,
    }))
    .with_context(|| format!("the pillow file of {name}"))?;
    file.validate()?;
    Ok(file)
}

/// Sum of a checkpoint's offsets.
async fn checkpoint_sum(pg: &Arc<Pg>, id: &str) -> anyhow::Result<i64> {
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&[id.to_owned()])
        .await?;
    Ok(rows.values().flatten().map(|r| r.offset).sum())
}

/// The live line: per pillow, changes handled, changes/s, lag (high-water mark − start
/// checkpoint − handled: what is still to read) and the checkpoint's lag (high-water mark −
/// stored checkpoint, which moves every 5,000 changes or 5 s).
async fn progress_line(pg: Arc<Pg>, high: i64, pillows: Vec<(String, i64, Arc<Progress>)>) {
    let tty = std::io::stderr().is_terminal();
    let every = Duration::from_millis(if tty { 250 } else { 2000 });
    let mut last: Vec<(u64, Instant)> = vec![(0, Instant::now()); pillows.len()];
    loop {
        tokio::time::sleep(every).await;
        let mut parts = Vec::new();
        for ((name, start, counter), (last_n, last_t)) in pillows.iter().zip(last.iter_mut()) {
            let n = counter.changes.load(Ordering::Relaxed);
            let rate = (n - *last_n) as f64 / last_t.elapsed().as_secs_f64().max(0.001);
            (*last_n, *last_t) = (n, Instant::now());
            let lag = high - start - i64::try_from(n).unwrap_or(0);
            let ckpt = checkpoint_sum(&pg, name)
                .await
                .map_or_else(|_| "?".to_owned(), |c| (high - c.max(*start)).to_string());
            parts.push(format!(
                "{name}: {n:>7} changes {rate:>7.0} changes/s, lag {lag:>6} (checkpoint lag {ckpt:>6}), {} failed",
                counter.failed.load(Ordering::Relaxed)
            ));
        }
        let line = parts.join(" | ");
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r  {line}   ")
        } else {
            writeln!(err, "  progress: {line}")
        };
        let _ = err.flush();
    }
}

/// Runs `files` side by side until each is idle, with the progress line; returns the
/// summaries in order.
async fn run_until_idle(
    pg: &Arc<Pg>,
    info: &KafkaInfo,
    topic: &str,
    files: &[PillowFile],
) -> anyhow::Result<Vec<RunSummary>> {
    let tps: Vec<TopicPartition> = info.partitions(&[topic.to_owned()]).await?;
    let high: i64 = info.watermarks(&tps).await?.values().map(|w| w.high).sum();
    let mut pillows = Vec::new();
    let mut watched = Vec::new();
    let token = CancellationToken::new();
    for f in files {
        let counter = Arc::new(Progress::default());
        let start = checkpoint_sum(pg, &f.checkpoint_id).await?;
        let options = RunOptions {
            until_idle: true,
            ..RunOptions::default()
        };
        pillows.push(
            f.spec(&options)?
                .build(&token)
                .await?
                .with_metrics(counter.clone()),
        );
        watched.push((f.checkpoint_id.clone(), start, counter));
        println!(
            "running {} from checkpoint offset sum {start} (high-water mark sum {high}): {} processor(s), chunk size {}, stops once caught up",
            f.name,
            f.processors.len(),
            f.chunk_size
        );
    }
    let finals = watched.clone();
    let ticker = tokio::spawn(progress_line(pg.clone(), high, watched));
    let started = Instant::now();
    let results = futures::future::join_all(pillows.iter_mut().map(|p| p.run(&token))).await;
    ticker.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    } else {
        // A run shorter than the 2 s between lines still shows where it ended.
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let parts: Vec<String> = finals
            .iter()
            .map(|(name, _, counter)| {
                let n = counter.changes.load(Ordering::Relaxed);
                format!("{name}: {n:>7} changes {:>7.0} changes/s", n as f64 / secs)
            })
            .collect();
        eprintln!("  progress (final): {}", parts.join(" | "));
    }
    let secs = started.elapsed().as_secs_f64();
    let mut summaries = Vec::new();
    for (f, r) in files.iter().zip(results) {
        let s = r.with_context(|| format!("running {}", f.name))?;
        println!(
            "{} stopped ({:?}): {} changes ({} failed, {} invalid), {} checkpoints in {secs:.2}s, {:.0} changes/s",
            f.name,
            s.stop_reason,
            s.changes,
            s.failed,
            s.invalid,
            s.checkpoints,
            s.changes as f64 / secs.max(0.001)
        );
        summaries.push(s);
    }
    Ok(summaries)
}

/// Prints the lag table of `ids` (`pillowtop lag`) and checks every partition is caught up.
async fn lag_table(pg: &Arc<Pg>, info: &KafkaInfo, ids: &[String]) -> anyhow::Result<()> {
    let rows = pillowtop::ops::lag::collect(pg, info, Some(ids)).await?;
    print_lag(&StdUi, &rows);
    let behind: i64 = rows.iter().map(|r| r.lag.unwrap_or(i64::MAX)).sum();
    let ok = behind == 0 && !rows.is_empty();
    println!(
        "lag 0 on all {} partitions: {}",
        rows.len(),
        if ok { "ok" } else { "MISMATCH" }
    );
    ensure!(ok, "a checkpoint is behind the high-water mark");
    Ok(())
}

/// `SELECT domain, count(*), sum(amount) … GROUP BY domain`.
async fn pg_per_domain(pg: &Pg, table: &str) -> anyhow::Result<BTreeMap<String, (i64, i64)>> {
    let sql = format!(
        "SELECT domain, count(*), sum(amount)::bigint FROM \"{table}\" GROUP BY domain ORDER BY domain"
    );
    println!("postgresql: {sql}");
    let rows = pg.fresh_client().await?.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                (r.get(1), r.get::<_, Option<i64>>(2).unwrap_or(0)),
            )
        })
        .collect())
}

/// A terms aggregation on `domain` with the sum of `form.amount`, after a refresh.
#[allow(clippy::cast_possible_truncation)]
async fn es_per_domain(
    es: &Elasticsearch,
    index: &str,
) -> anyhow::Result<BTreeMap<String, (i64, i64)>> {
    es.indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await?
        .error_for_status_code()?;
    let body = json!({
        "size": 0,
        "track_total_hits": true,
        "aggs": {"per_domain": {
            "terms": {"field": "domain", "size": 100},
            "aggs": {"amount": {"sum": {"field": "form.amount"}}},
        }},
    });
    println!("elasticsearch: GET {index}/_search {body}");
    let r: Value = es
        .search(SearchParts::Index(&[index]))
        .body(body)
        .send()
        .await?
        .error_for_status_code()?
        .json()
        .await?;
    let buckets = r["aggregations"]["per_domain"]["buckets"]
        .as_array()
        .with_context(|| format!("no aggregation in the search response: {r}"))?;
    Ok(buckets
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap_or_default().to_owned(),
                (
                    b["doc_count"].as_i64().unwrap_or(-1),
                    b["amount"]["value"].as_f64().unwrap_or(-1.0).round() as i64,
                ),
            )
        })
        .collect())
}

/// Queries both stores, prints them beside what was published, and checks they agree.
async fn check_stores(
    pg: &Pg,
    es: &Elasticsearch,
    n: &Names,
    published: &Published,
) -> anyhow::Result<()> {
    let expected = published.per_domain();
    let in_pg = pg_per_domain(pg, &n.table).await?;
    let in_es = es_per_domain(es, &n.index).await?;
    let cell = |m: &BTreeMap<String, (i64, i64)>, d: &str| m.get(d).copied().unwrap_or((0, 0));
    let mut domains: Vec<&String> = expected
        .keys()
        .chain(in_pg.keys())
        .chain(in_es.keys())
        .collect();
    domains.sort();
    domains.dedup();
    ui::print_table(
        &StdUi,
        &[
            "domain",
            "published live forms",
            "amount",
            "postgresql rows",
            "sum(amount)",
            "elasticsearch docs",
            "sum(form.amount)",
        ],
        domains
            .iter()
            .map(|d| {
                let (e, p, s) = (cell(&expected, d), cell(&in_pg, d), cell(&in_es, d));
                vec![
                    (*d).clone(),
                    e.0.to_string(),
                    e.1.to_string(),
                    p.0.to_string(),
                    p.1.to_string(),
                    s.0.to_string(),
                    s.1.to_string(),
                ]
            })
            .collect(),
    );
    let total =
        |m: &BTreeMap<String, (i64, i64)>| m.values().fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    let (live, amount) = total(&expected);
    let same =
        |m: &BTreeMap<String, (i64, i64)>| domains.iter().all(|d| cell(m, d) == cell(&expected, d));
    let (pg_ok, es_ok) = (same(&in_pg), same(&in_es));
    let verdict = |ok: bool| if ok { "ok" } else { "MISMATCH" };
    println!(
        "published {} changes: {live} live forms ({} deleted), amount {amount}",
        published.changes, published.deletions
    );
    println!(
        "postgresql agrees with the published forms ({} rows, amount {}): {}",
        total(&in_pg).0,
        total(&in_pg).1,
        verdict(pg_ok)
    );
    println!(
        "elasticsearch agrees with the published forms ({} docs, amount {}): {}",
        total(&in_es).0,
        total(&in_es).1,
        verdict(es_ok)
    );
    ensure!(
        pg_ok && es_ok,
        "a store does not hold exactly the published forms"
    );
    Ok(())
}

/// The demo tells its story on stdout and keeps stderr for its progress lines: unless
/// `PILLOWTOP_LOG` says otherwise, only warnings are logged.
pub(crate) fn init_logging() {
    if std::env::var_os("PILLOWTOP_LOG").is_none() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    }
}

pub(crate) async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let n = Names::new()?;
    println!("== pillowtop demo ==");
    println!(
        "kafka {}, postgresql {}, elasticsearch {}",
        a.kafka,
        pillowtop::pg::redact(&a.postgres_url),
        a.elasticsearch_url
    );
    let pg = Arc::new(Pg::new(&a.postgres_url));
    pillowtop::store::schema::ensure_schema(&pg)
        .await
        .context("creating the pillowtop tables")?;
    let es = Elasticsearch::new(Transport::single_node(&a.elasticsearch_url)?);
    let admin = KafkaAdmin::new(&a.kafka)?;
    admin
        .create_topic(&n.topic, a.partitions, &[])
        .await
        .with_context(|| format!("creating topic {}", n.topic))?;
    let result = scenario(&a, &n, &pg, &es).await;
    if a.keep {
        println!(
            "\nkept topic {}, index {}, table {} and checkpoints {} and {}",
            n.topic, n.index, n.table, n.pillow, n.es_pillow
        );
    } else {
        let cleaned = cleanup(&n, &pg, &es, &admin).await;
        match &cleaned {
            Ok(()) => println!(
                "\nremoved topic {}, index {}, table {} and the checkpoint rows (use --keep to keep them)",
                n.topic, n.index, n.table
            ),
            Err(e) => eprintln!("warning: cleaning up the demo failed: {e:#}"),
        }
        if result.is_ok() {
            cleaned?;
        }
    }
    result
}

async fn scenario(a: &DemoArgs, n: &Names, pg: &Arc<Pg>, es: &Elasticsearch) -> anyhow::Result<()> {
    let producer = ChangeProducer::new(&a.kafka)?;
    let info = KafkaInfo::new(&a.kafka)?;
    let first = a.changes;
    let second = a.changes / 4;
    let mut published = Published::default();

    println!(
        "\n== 1. publish {first} CommCare-style form changes (XFormInstance documents embedded) to {} ({} partitions) ==",
        n.topic, a.partitions
    );
    publish(&producer, &n.topic, 0, first, &mut published).await?;

    println!(
        "\n== 2. run {} (like CommCare's xform-pillow): elasticsearch index {} + postgresql table {} ==",
        n.pillow, n.index, n.table
    );
    let both = pillow_file(
        a,
        &n.pillow,
        &n.topic,
        &[es_processor(a, n), pg_processor(n)],
    )?;
    let s = run_until_idle(pg, &info, &n.topic, std::slice::from_ref(&both)).await?;
    ensure!(
        s[0].changes == first && s[0].failed == 0,
        "{} handled {} changes ({} failed), expected {first}",
        n.pillow,
        s[0].changes,
        s[0].failed
    );

    println!("\n== 3. lag table and a query of each store ==");
    lag_table(pg, &info, std::slice::from_ref(&n.pillow)).await?;
    println!();
    check_stores(pg, es, n, &published).await?;

    println!(
        "\n== 4. split: move the elasticsearch processor into its own pillow {} ==",
        n.es_pillow
    );
    println!(
        "{} is stopped; split_pillow_checkpoints {} {} copies its checkpoint:",
        n.pillow, n.pillow, n.es_pillow
    );
    let mut target = SplitTarget::new(&n.es_pillow);
    target.topics = Some(vec![n.topic.clone()]);
    let (plan, _) = pillowtop::ops::split::prepare_split(pg, &n.pillow, &[target], false).await?;
    print_plan(&StdUi, &plan);
    let written = pillowtop::ops::split::apply_split(pg, &plan).await?;
    println!(
        "copied {} rows of {} to {} ({written} rows written in one transaction)",
        plan.rows.len(),
        n.pillow,
        n.es_pillow
    );
    println!(
        "\npublishing {second} more changes, then running both pillows: {} with the postgresql processor only, {} with the elasticsearch processor only",
        n.pillow, n.es_pillow
    );
    publish(&producer, &n.topic, first, first + second, &mut published).await?;
    let files = [
        pillow_file(a, &n.pillow, &n.topic, &[pg_processor(n)])?,
        pillow_file(a, &n.es_pillow, &n.topic, &[es_processor(a, n)])?,
    ];
    let s = run_until_idle(pg, &info, &n.topic, &files).await?;
    println!();
    lag_table(pg, &info, &[n.pillow.clone(), n.es_pillow.clone()]).await?;
    println!();
    check_stores(pg, es, n, &published).await?;
    let fresh = s.iter().all(|s| s.changes == second && s.failed == 0);
    println!(
        "{} handled {} changes and {} handled {} changes, only the {second} published after the split (nothing re-processed): {}",
        n.pillow,
        s[0].changes,
        n.es_pillow,
        s[1].changes,
        if fresh { "ok" } else { "MISMATCH" }
    );
    ensure!(fresh, "a pillow did not start from the split checkpoint");
    println!("\n== done: both pillows run on from the split checkpoint ==");
    Ok(())
}

/// Deletes the topic, the index, the table and every row the demo's pillows wrote.
async fn cleanup(
    n: &Names,
    pg: &Arc<Pg>,
    es: &Elasticsearch,
    admin: &KafkaAdmin,
) -> anyhow::Result<()> {
    admin.delete_topics(&[&n.topic]).await?;
    let r = es
        .indices()
        .delete(IndicesDeleteParts::Index(&[&n.index]))
        .send()
        .await?;
    ensure!(
        r.status_code().is_success() || r.status_code().as_u16() == 404,
        "deleting index {}: status {}",
        n.index,
        r.status_code()
    );
    let ids = vec![n.pillow.clone(), n.es_pillow.clone()];
    let c = pg.fresh_client().await?;
    c.batch_execute(&format!("DROP TABLE IF EXISTS \"{}\"", n.table))
        .await?;
    PostgresCheckpointStore::new(Arc::clone(pg))
        .delete_ids(&ids)
        .await?;
    PostgresHistoryStore::new(Arc::clone(pg))
        .delete_checkpoints(&ids)
        .await?;
    PostgresLivenessStore::new(Arc::clone(pg))
        .delete_checkpoints(&ids)
        .await?;
    PostgresErrorStore::new(Arc::clone(pg))
        .delete_pillows(&ids)
        .await?;
    Ok(())
}
