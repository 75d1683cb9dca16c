//! `pillowtop`: the operator command line. It owns its process, so it may print.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss
)]
//!
//! Exit codes (CommCare's for the checkpoint commands): 0 success; 1 an operator declined a
//! prompt; 2 invalid usage, or merge sources whose partitions disagree; 3 the merge's
//! reprocessing was declined; 4 any other failure (a service failed, a refusal such as a running
//! pillow without `--force`, a source without rows); 5 `validate` found invalid checkpoints.
//!
//! The checkpoint commands are in the `ops` module at the end of this file; the library side is
//! `pillowtop::ops` (plans and one-transaction applies, no printing).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pillowtop::pg::Pg;

#[derive(Parser)]
#[command(
    name = "pillowtop",
    version,
    about = "Operate CommCare-compatible pillows: Kafka change feeds with PostgreSQL checkpoints",
    after_help = "Exit status: 0 success; 1 a question was declined; 2 invalid usage, or merge sources whose partitions disagree; 3 the merge's reprocessing was declined; 4 any other failure; 5 validate found invalid checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the pillowtop tables (checkpoints, errors, liveness) if they are missing.
    Schema {
        #[arg(long, env = "TEST_POSTGRES_URL")]
        postgres_url: String,
    },
    /// Demo, the README's main job: publish CommCare-style form changes (with their documents)
    /// to a new topic, run an xform pillow into an Elasticsearch index and a PostgreSQL reporting
    /// table with a live progress line, print the lag table and a query of each store, then split
    /// the checkpoint so that each processor runs on in its own pillow.
    Demo(demo::DemoArgs),
    /// Run a pure-Rust pillow described by a TOML config file (see examples/xform-pillow.toml)
    /// until SIGTERM or Ctrl-C (a graceful stop: the current chunk finishes and the checkpoint
    /// is written), or --until-idle / --max-changes. Exit 0 on a graceful stop, 2 for an invalid
    /// config, 4 for any other failure.
    Run(run::RunArgs),
    #[command(flatten)]
    Ops(ops::OpsCommand),
}

fn main() -> ExitCode {
    ExitCode::from(run(std::env::args_os()))
}

/// Runs the command line with `args` (the first is the program name) and returns the exit
/// status. The Python front calls this in-process (`pillowtop_rs.run_cli`), so the Django
/// commands and the binary share one implementation, prompts and statuses included.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    if matches!(cli.command, Command::Demo(_)) {
        demo::init_logging();
    }
    pillowtop::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 4;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Schema { postgres_url } => schema(&postgres_url).await.map(|()| 0),
            Command::Demo(args) => demo::demo(args).await.map(|()| 0),
            Command::Run(args) => run::run(args).await,
            Command::Ops(cmd) => ops::run(cmd).await,
        }
    });
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ops::exit_code(&e)
        }
    }
}

async fn schema(url: &str) -> anyhow::Result<()> {
    let pg = Pg::new(url);
    pillowtop::schema::ensure_schema(&pg).await?;
    println!(
        "pillowtop tables are present in {}",
        pillowtop::pg::redact(url)
    );
    Ok(())
}

/// `pillowtop demo`, the README's main job: CommCare-style form changes (documents embedded)
/// through an `xform-pillow`-like pillow into an Elasticsearch index and a PostgreSQL reporting
/// table, the lag table, a query of each store checked against what was published, then
/// CommCare's split procedure (`split_pillow_checkpoints`): each processor runs on in its own
/// pillow from the split checkpoint. Everything it creates has a unique name and is removed at
/// the end unless `--keep`.
mod demo {
    // The demo is one story told in order; its steps read best as a few long functions.
    #![allow(clippy::too_many_lines)]

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
    use pillowtop::config::{build_pillow, PillowFile, RunOptions};
    use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin};
    use pillowtop::feed::TopicPartition;
    use pillowtop::ops::kafka::KafkaInfo;
    use pillowtop::ops::split::SplitTarget;
    use pillowtop::pg::Pg;
    use pillowtop::pillow::RunSummary;
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;

    use super::ops::{print_lag, print_split, print_table};
    use super::run::Progress;

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
    pub(super) struct DemoArgs {
        #[arg(long, env = "TEST_KAFKA_BOOTSTRAP")]
        kafka: String,
        #[arg(long, env = "TEST_POSTGRES_URL")]
        postgres_url: String,
        #[arg(long, env = "TEST_ELASTICSEARCH_URL")]
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
    async fn checkpoint_sum(pg: &Pg, id: &str) -> anyhow::Result<i64> {
        let rows = pillowtop::ops::load_rows(pg, &[id.to_owned()]).await?;
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
        for f in files {
            let counter = Arc::new(Progress::default());
            let start = checkpoint_sum(pg, &f.checkpoint_id).await?;
            let options = RunOptions {
                until_idle: true,
                ..RunOptions::default()
            };
            pillows.push(
                build_pillow(f, &options)
                    .await?
                    .with_metrics(counter.clone()),
            );
            watched.push((f.checkpoint_id.clone(), start, counter));
            println!(
                "running {} from checkpoint offset sum {start} (high-water mark sum {high}): {} processor(s), chunk size {}, stops at the first idle tick ({IDLE_MS} ms)",
                f.name,
                f.processors.len(),
                f.chunk_size
            );
        }
        let ticker = tokio::spawn(progress_line(pg.clone(), high, watched));
        let started = Instant::now();
        let token = CancellationToken::new();
        let results = futures::future::join_all(pillows.iter_mut().map(|p| p.run(&token))).await;
        ticker.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
        let secs = started.elapsed().as_secs_f64();
        let mut summaries = Vec::new();
        for (f, r) in files.iter().zip(results) {
            let s = r.with_context(|| format!("running {}", f.name))?;
            println!(
                "{} stopped ({:?}): {} changes ({} failed, {} invalid), {} checkpoints in {secs:.2}s (including the idle tick), {:.0} changes/s",
                f.name,
                s.stop_reason,
                s.changes,
                s.failed,
                s.invalid,
                s.checkpoints,
                s.changes as f64 / (secs - IDLE_MS as f64 / 1000.0).max(0.001)
            );
            summaries.push(s);
        }
        Ok(summaries)
    }

    /// Prints the lag table of `ids` (`pillowtop lag`) and checks every partition is caught up.
    async fn lag_table(pg: &Arc<Pg>, info: &KafkaInfo, ids: &[String]) -> anyhow::Result<()> {
        let rows = pillowtop::ops::lag::collect(pg, info, Some(ids)).await?;
        print_lag(&rows);
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
        print_table(
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
        let total = |m: &BTreeMap<String, (i64, i64)>| {
            m.values().fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
        };
        let (live, amount) = total(&expected);
        let same = |m: &BTreeMap<String, (i64, i64)>| {
            domains.iter().all(|d| cell(m, d) == cell(&expected, d))
        };
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
    pub(super) fn init_logging() {
        if std::env::var_os("PILLOWTOP_LOG").is_none() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_writer(std::io::stderr)
                .with_target(false)
                .try_init();
        }
    }

    pub(super) async fn demo(a: DemoArgs) -> anyhow::Result<()> {
        let n = Names::new()?;
        println!("== pillowtop demo ==");
        println!(
            "kafka {}, postgresql {}, elasticsearch {}",
            a.kafka,
            pillowtop::pg::redact(&a.postgres_url),
            a.elasticsearch_url
        );
        let pg = Arc::new(Pg::new(&a.postgres_url));
        pillowtop::schema::ensure_schema(&pg)
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

    async fn scenario(
        a: &DemoArgs,
        n: &Names,
        pg: &Arc<Pg>,
        es: &Elasticsearch,
    ) -> anyhow::Result<()> {
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
        let (plan, _) =
            pillowtop::ops::split::prepare_split(pg, &n.pillow, &[target], false).await?;
        print_split(&plan);
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
        pg: &Pg,
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
        for sql in [
            "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = ANY($1)",
            "DELETE FROM pillowtop_rs_checkpoint_history WHERE checkpoint_id = ANY($1)",
            "DELETE FROM pillowtop_rs_process WHERE checkpoint_id = ANY($1)",
            "DELETE FROM pillow_retry_pillowerror WHERE pillow = ANY($1)",
        ] {
            c.execute(sql, &[&ids]).await?;
        }
        Ok(())
    }
}

/// `pillowtop run --config FILE`: a pure-Rust pillow from a config file, with signal handling
/// and a live progress line on stderr.
mod run {
    use std::io::{IsTerminal, Write};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use pillowtop::config::{build_pillow, PillowFile, RunOptions};
    use pillowtop::metrics::{self, Recorder, Tags};
    use tokio_util::sync::CancellationToken;

    /// Exit status of an invalid config file or layout.
    const INVALID_USAGE: u8 = 2;

    #[derive(clap::Args, Debug)]
    pub(super) struct RunArgs {
        /// The pillow's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// This process's number (overrides the file's `process_number`).
        #[arg(long)]
        process_number: Option<u32>,
        /// How many processes share the partitions (overrides the file's `num_processes`).
        #[arg(long)]
        num_processes: Option<u32>,
        /// Stop at the first idle tick, after flushing and checkpointing.
        #[arg(long)]
        until_idle: bool,
        /// Stop after this many changes.
        #[arg(long)]
        max_changes: Option<u64>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Serve the engine's metrics (CommCare's names) in Prometheus text format on this port
        /// (all interfaces), at /metrics, while the pillow runs.
        #[arg(long)]
        metrics_port: Option<u16>,
    }

    /// Counts handled changes and failures, and keeps the last chunk lag, from a pillow's
    /// metrics: the progress lines of `run` and `demo`.
    #[derive(Default)]
    pub(super) struct Progress {
        pub(super) changes: AtomicU64,
        pub(super) failed: AtomicU64,
        lag_ms: AtomicU64,
    }

    impl Recorder for Progress {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        fn counter(&self, name: &'static str, _: Tags, value: f64) {
            match name {
                metrics::PROCESSING_TIME_COUNT => {
                    self.changes.fetch_add(value as u64, Ordering::Relaxed);
                }
                metrics::CHANGES_EXCEPTIONS => {
                    self.failed.fetch_add(value as u64, Ordering::Relaxed);
                }
                _ => {}
            }
        }

        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        fn gauge(&self, name: &'static str, _: Tags, value: f64) {
            if name == metrics::CHUNKED_MAX_CHANGE_LAG {
                self.lag_ms
                    .store((value.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
            }
        }
    }

    async fn progress_line(p: Arc<Progress>) {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let started = Instant::now();
        let (mut last_n, mut last_t) = (0u64, Instant::now());
        loop {
            tokio::time::sleep(every).await;
            let n = p.changes.load(Ordering::Relaxed);
            let rate = (n - last_n) as f64 / last_t.elapsed().as_secs_f64().max(0.001);
            let avg = n as f64 / started.elapsed().as_secs_f64().max(0.001);
            (last_n, last_t) = (n, Instant::now());
            let line = format!(
                "{n:>10} changes  {rate:>9.0} changes/s (avg {avg:.0})  {} failed  lag {:.1}s",
                p.failed.load(Ordering::Relaxed),
                p.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
            );
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                write!(err, "\r{line}   ")
            } else {
                writeln!(err, "progress: {line}")
            };
            let _ = err.flush();
        }
    }

    /// SIGTERM or Ctrl-C cancel the token (graceful stop); a second one exits at once (130).
    fn install_signal_handlers(token: CancellationToken) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            for n in 0.. {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => { if r.is_err() { return; } }
                    r = term.recv() => { if r.is_none() { return; } }
                }
                if n == 0 {
                    eprintln!("\nstopping: finishing the current chunk, then writing the checkpoint (signal again to exit at once)");
                    token.cancel();
                } else {
                    eprintln!("\nsecond signal: exiting without a final checkpoint");
                    std::process::exit(130);
                }
            }
        });
        Ok(())
    }

    pub(super) async fn run(args: RunArgs) -> anyhow::Result<u8> {
        let file = match PillowFile::load(&args.config) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(INVALID_USAGE);
            }
        };
        let options = RunOptions {
            process_number: args.process_number,
            num_processes: args.num_processes,
            until_idle: args.until_idle,
            max_changes: args.max_changes,
        };
        if let Err(e) = file.pillow_config(&options).validate() {
            eprintln!("error: {e}");
            return Ok(INVALID_USAGE);
        }
        let progress = Arc::new(Progress::default());
        let memory = Arc::new(pillowtop::metrics::MemoryRecorder::new());
        let mut pillow = build_pillow(&file, &options).await?.with_metrics(Arc::new(
            pillowtop::metrics::Fanout(vec![progress.clone(), memory.clone()]),
        ));
        let token = CancellationToken::new();
        install_signal_handlers(token.clone())?;
        if let Some(port) = args.metrics_port {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot listen on port {port} for --metrics-port: {e}")
                })?;
            eprintln!(
                "serving metrics at http://{}/metrics",
                listener.local_addr()?
            );
            let memory = memory.clone();
            tokio::spawn(pillowtop::ops::prometheus::serve(
                listener,
                move || {
                    let samples = memory.snapshot();
                    let refs: Vec<_> = samples
                        .iter()
                        .map(|(n, t, v)| (*n, t.clone(), *v))
                        .collect();
                    pillowtop::ops::prometheus::render(&refs)
                },
                token.clone(),
            ));
        }
        eprintln!(
            "running pillow {} (checkpoint {}, topics {}, {} processor(s), chunk size {})",
            file.name,
            file.checkpoint_id,
            file.topics.join(","),
            file.processors.len(),
            file.chunk_size
        );
        let ticker = (!args.quiet).then(|| tokio::spawn(progress_line(progress.clone())));
        let started = Instant::now();
        let summary = pillow.run(&token).await;
        if let Some(t) = ticker {
            t.abort();
        }
        let s = summary?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "\npillow {} stopped ({:?}): {} changes ({} failed, {} invalid), {} checkpoints in {secs:.2}s, {:.0} changes/s",
            file.name,
            s.stop_reason,
            s.changes,
            s.failed,
            s.invalid,
            s.checkpoints,
            s.changes as f64 / secs.max(0.001)
        );
        Ok(0)
    }
}

/// The checkpoint commands: CommCare's operator commands over `pillowtop::ops`, with CommCare's
/// prompt texts and exit statuses (the defects of reference §9 fixed, as listed in each help).
mod ops {
    // Flags are independent switches; the lint's "use an enum" advice does not fit a CLI. The
    // dispatch functions read best as one match over the subcommands.
    #![allow(clippy::struct_excessive_bools, clippy::too_many_lines)]

    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::io::{BufRead, Write};
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{bail, Context};
    use chrono::{DateTime, NaiveDate, Utc};
    use clap::{Args, Subcommand};
    use pillowtop::feed::TopicPartition;
    use pillowtop::ops::kafka::KafkaInfo;
    use pillowtop::ops::{self as core, OpsError};
    use pillowtop::pg::Pg;
    use tokio_util::sync::CancellationToken;

    /// Exit status of a declined prompt.
    const DECLINED: u8 = 1;
    /// Exit status of inconsistent merge sources.
    const INCONSISTENT: u8 = 2;
    /// Exit status of a declined reprocessing question.
    const REPROCESSING_DECLINED: u8 = 3;
    /// Exit status of any other failure.
    const FAILED: u8 = 4;
    /// Exit status of `validate` when a checkpoint is invalid.
    const INVALID: u8 = 5;

    /// The exit status for an error that ended a command.
    pub(super) fn exit_code(e: &anyhow::Error) -> u8 {
        match e.downcast_ref::<OpsError>() {
            Some(OpsError::Inconsistent(_)) => INCONSISTENT,
            _ => FAILED,
        }
    }

    #[derive(Args, Debug, Clone)]
    pub(super) struct Conn {
        /// PostgreSQL URL [env: PILLOWTOP_POSTGRES_URL, else TEST_POSTGRES_URL].
        #[arg(long)]
        postgres_url: Option<String>,
    }

    #[derive(Args, Debug, Clone)]
    pub(super) struct KafkaConn {
        /// Kafka bootstrap servers [env: PILLOWTOP_KAFKA_BOOTSTRAP, else TEST_KAFKA_BOOTSTRAP].
        #[arg(long)]
        kafka: Option<String>,
    }

    fn from_env(flag: Option<&String>, vars: &[&str]) -> Option<String> {
        flag.cloned().or_else(|| {
            vars.iter()
                .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        })
    }

    impl Conn {
        fn pg(&self) -> anyhow::Result<Arc<Pg>> {
            let url = from_env(
                self.postgres_url.as_ref(),
                &["PILLOWTOP_POSTGRES_URL", "TEST_POSTGRES_URL"],
            )
            .context("no PostgreSQL URL: pass --postgres-url or set PILLOWTOP_POSTGRES_URL")?;
            Ok(Arc::new(Pg::new(url)))
        }
    }

    impl KafkaConn {
        fn bootstrap(&self) -> Option<String> {
            from_env(
                self.kafka.as_ref(),
                &["PILLOWTOP_KAFKA_BOOTSTRAP", "TEST_KAFKA_BOOTSTRAP"],
            )
        }

        fn info(&self) -> anyhow::Result<KafkaInfo> {
            let b = self
                .bootstrap()
                .context("no Kafka address: pass --kafka or set PILLOWTOP_KAFKA_BOOTSTRAP")?;
            Ok(KafkaInfo::new(&b)?)
        }
    }

    /// How a changing command asks before writing.
    #[derive(Args, Debug, Clone)]
    pub(super) struct Confirm {
        /// Do not ask: answer every question with yes.
        #[arg(long)]
        noinput: bool,
        /// Show the plan and stop without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Proceed even though a pillow involved has a live process.
        #[arg(long)]
        force: bool,
        /// Print the plan as JSON on stdout (questions and messages go to stderr).
        #[arg(long)]
        json: bool,
    }

    #[derive(Subcommand, Debug)]
    pub(super) enum OpsCommand {
        /// Copy every checkpoint row of a source pillow to one or more target pillows
        /// (CommCare's split_pillow_checkpoints).
        ///
        /// Prints the plan (rows per topic and partition; target rows that will be deleted or
        /// overwritten, with their last update; topics only the source or only a target has),
        /// asks CommCare's two questions when a target exists, and writes everything in one
        /// transaction. Refuses while the source or a target has a live process unless --force.
        #[command(
            after_help = "Exit status: 0 done or dry run; 1 a question was declined; 4 refused (running pillow, source without rows) or failed"
        )]
        Split {
            /// The source checkpoint id.
            source: String,
            /// The target checkpoint ids.
            #[arg(required = true)]
            targets: Vec<String>,
            /// The topics a target reads, to report mismatches: `TARGET=topic1,topic2`, or
            /// `topic1,topic2` for every target. Repeatable.
            #[arg(long = "target-topics", value_name = "[TARGET=]TOPICS")]
            target_topics: Vec<String>,
            #[command(flatten)]
            confirm: Confirm,
            #[command(flatten)]
            conn: Conn,
        },
        /// Merge the checkpoints of several source pillows into one target: the minimum offset
        /// of each partition (CommCare's merge_pillow_checkpoints). The last id is the target.
        ///
        /// Sources that read a topic must have the same partitions of it (restricted to the
        /// target's --topics when given); the plan shows the reprocessing of each partition.
        /// Answering `y` to "Is this amount of reprocessing acceptable y/N?" proceeds (CommCare's
        /// inverted answer is fixed); anything else exits 3.
        #[command(
            after_help = "Exit status: 0 done or dry run; 1 a question was declined; 2 the sources' partitions disagree; 3 the reprocessing was declined; 4 refused (no sources, no rows, running pillow) or failed"
        )]
        Merge {
            /// The source checkpoint ids followed by the target checkpoint id.
            #[arg(required = true, value_name = "SOURCE... TARGET")]
            ids: Vec<String>,
            /// The topics the target pillow reads (comma-separated): only they are checked and
            /// written.
            #[arg(long, value_delimiter = ',')]
            topics: Option<Vec<String>>,
            #[command(flatten)]
            confirm: Confirm,
            #[command(flatten)]
            conn: Conn,
        },
        /// Move a checkpoint (or one partition of it) to the earliest retained offset, the
        /// high-water mark, an explicit offset, or the first message at or after a time.
        #[command(
            after_help = "Exit status: 0 done or dry run; 1 the question was declined; 4 refused or failed"
        )]
        Reset {
            /// The checkpoint id.
            checkpoint_id: String,
            #[command(flatten)]
            to: ResetToArgs,
            /// Only this partition: `topic,partition`.
            #[arg(long, conflicts_with = "topics")]
            partition: Option<String>,
            /// Every partition of these topics (comma-separated), rows created where missing.
            /// Default: the partitions the checkpoint has rows for.
            #[arg(long, value_delimiter = ',')]
            topics: Option<Vec<String>>,
            #[command(flatten)]
            confirm: Confirm,
            #[command(flatten)]
            conn: Conn,
            #[command(flatten)]
            kafka: KafkaConn,
        },
        /// Daily checkpoint history: snapshot, list, restore.
        #[command(subcommand)]
        History(HistoryCommand),
        /// Create offset-0 rows for new partitions of a topic, for every checkpoint that has
        /// rows on the topic (CommCare's add_kafka_partition). Aborts unless both questions are
        /// answered y or yes.
        #[command(
            after_help = "Exit status: 0 done or dry run; 1 a question was declined; 4 refused or failed"
        )]
        AddPartitions {
            topic: String,
            num_partitions: i32,
            #[command(flatten)]
            confirm: Confirm,
            #[command(flatten)]
            conn: Conn,
            /// When given (or set in the environment), the topic must have that many partitions.
            #[command(flatten)]
            kafka: KafkaConn,
        },
        /// Check that Kafka can still serve every checkpoint (CommCare's
        /// validate_kafka_pillow_checkpoints): fails naming the checkpoint, the partition, the
        /// offset needed and the first available one.
        #[command(
            after_help = "Exit status: 0 every checkpoint is valid (or --print-only); 5 some checkpoint is invalid; 4 failed"
        )]
        Validate {
            /// Checkpoint ids (default: all).
            ids: Vec<String>,
            /// Skip rows at offset 0, as CommCare does.
            #[arg(long)]
            skip_zero: bool,
            /// Report problems but exit 0.
            #[arg(long)]
            print_only: bool,
            #[arg(long)]
            json: bool,
            #[command(flatten)]
            conn: Conn,
            #[command(flatten)]
            kafka: KafkaConn,
        },
        /// Per checkpoint and partition: offset, high-water mark, lag, seconds since the last
        /// checkpoint, time lag (age of the oldest unprocessed change), and the live process
        /// that owns it. With --metrics-port, serves CommCare's
        /// lag gauges in Prometheus format and refreshes them every --interval seconds.
        #[command(visible_alias = "status")]
        Lag {
            /// Checkpoint ids (default: all).
            ids: Vec<String>,
            #[arg(long)]
            json: bool,
            /// Repeat every this many seconds (default 120 with --metrics-port).
            #[arg(long)]
            interval: Option<u64>,
            /// Serve the gauges on this port (all interfaces) at /metrics.
            #[arg(long)]
            metrics_port: Option<u16>,
            /// Stop after this many rounds (with --interval or --metrics-port).
            #[arg(long)]
            rounds: Option<u64>,
            #[command(flatten)]
            conn: Conn,
            #[command(flatten)]
            kafka: KafkaConn,
        },
        /// Which process (and virtual worker) reads which partitions (CommCare's
        /// pillow_topic_assignments, with the dedicated migration process).
        Assignments {
            num_processes: u32,
            /// Process 0 is the dedicated migration process and reads nothing.
            #[arg(long)]
            dedicated: bool,
            /// Virtual workers per process.
            #[arg(long)]
            workers: Option<u32>,
            /// The pillow's topics (comma-separated).
            #[arg(long, value_delimiter = ',', required = true)]
            topics: Vec<String>,
            /// Partitions per topic, instead of asking Kafka.
            #[arg(long)]
            partitions: Option<i32>,
            #[arg(long)]
            json: bool,
            #[command(flatten)]
            kafka: KafkaConn,
        },
    }

    #[derive(Args, Debug, Clone)]
    #[group(required = true, multiple = false)]
    pub(super) struct ResetToArgs {
        /// The first retained offset.
        #[arg(long)]
        earliest: bool,
        /// The high-water mark.
        #[arg(long)]
        latest: bool,
        /// This offset.
        #[arg(long)]
        offset: Option<i64>,
        /// The first message at or after this time (RFC 3339, or milliseconds since the epoch).
        #[arg(long)]
        timestamp: Option<String>,
    }

    impl ResetToArgs {
        fn to(&self) -> anyhow::Result<core::reset::ResetTo> {
            use core::reset::ResetTo;
            Ok(if self.earliest {
                ResetTo::Earliest
            } else if self.latest {
                ResetTo::Latest
            } else if let Some(o) = self.offset {
                ResetTo::Offset(o)
            } else if let Some(t) = &self.timestamp {
                ResetTo::Timestamp(parse_time(t)?)
            } else {
                bail!("give one of --earliest, --latest, --offset, --timestamp")
            })
        }
    }

    fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
        if let Ok(ms) = s.parse::<i64>() {
            return DateTime::from_timestamp_millis(ms)
                .with_context(|| format!("timestamp {s} is out of range"));
        }
        Ok(DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("timestamp {s:?} is not RFC 3339 or milliseconds"))?
            .with_timezone(&Utc))
    }

    #[derive(Subcommand, Debug)]
    pub(super) enum HistoryCommand {
        /// Record today's snapshot of every checkpoint and prune records older than --keep-days
        /// (run daily, as CommCare's create_historical_checkpoints).
        Snapshot {
            /// Record under this date instead of today (UTC).
            #[arg(long)]
            date: Option<NaiveDate>,
            #[arg(long, default_value_t = core::history::KEEP_DAYS)]
            keep_days: u32,
            #[command(flatten)]
            conn: Conn,
        },
        /// The recorded days, newest first.
        List {
            /// Only this checkpoint.
            checkpoint_id: Option<String>,
            #[arg(long)]
            json: bool,
            #[command(flatten)]
            conn: Conn,
        },
        /// Restore checkpoints from their newest snapshot on or before a date.
        #[command(
            after_help = "Exit status: 0 done or dry run; 1 the question was declined; 4 refused or failed"
        )]
        Restore {
            #[arg(long)]
            date: NaiveDate,
            #[arg(required = true)]
            ids: Vec<String>,
            #[command(flatten)]
            confirm: Confirm,
            #[command(flatten)]
            conn: Conn,
        },
    }

    /// Runs a checkpoint command; returns the exit status.
    pub(super) async fn run(cmd: OpsCommand) -> anyhow::Result<u8> {
        match cmd {
            OpsCommand::Split {
                source,
                targets,
                target_topics,
                confirm,
                conn,
            } => split(&conn.pg()?, &source, &targets, &target_topics, &confirm).await,
            OpsCommand::Merge {
                ids,
                topics,
                confirm,
                conn,
            } => merge(&conn.pg()?, &ids, topics.as_deref(), &confirm).await,
            OpsCommand::Reset {
                checkpoint_id,
                to,
                partition,
                topics,
                confirm,
                conn,
                kafka,
            } => {
                let selection = match (partition, topics) {
                    (Some(p), _) => core::reset::Selection::Partition(parse_tp(&p)?),
                    (None, Some(t)) => core::reset::Selection::Topics(t),
                    (None, None) => core::reset::Selection::Existing,
                };
                reset(
                    &conn.pg()?,
                    &kafka.info()?,
                    &checkpoint_id,
                    &selection,
                    &to.to()?,
                    &confirm,
                )
                .await
            }
            OpsCommand::History(h) => history(h).await,
            OpsCommand::AddPartitions {
                topic,
                num_partitions,
                confirm,
                conn,
                kafka,
            } => {
                let info = match kafka.bootstrap() {
                    Some(b) => Some(KafkaInfo::new(&b)?),
                    None => None,
                };
                add_partitions(&conn.pg()?, info.as_ref(), &topic, num_partitions, &confirm).await
            }
            OpsCommand::Validate {
                ids,
                skip_zero,
                print_only,
                json,
                conn,
                kafka,
            } => {
                let ids = (!ids.is_empty()).then_some(ids);
                let problems = core::validate::collect(
                    &*conn.pg()?,
                    &kafka.info()?,
                    ids.as_deref(),
                    skip_zero,
                )
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&problems)?);
                } else if problems.is_empty() {
                    println!("every checkpoint is within what kafka retains");
                } else {
                    for p in &problems {
                        println!("{p}");
                    }
                }
                Ok(if problems.is_empty() || print_only {
                    0
                } else {
                    INVALID
                })
            }
            OpsCommand::Lag {
                ids,
                json,
                interval,
                metrics_port,
                rounds,
                conn,
                kafka,
            } => {
                let ids = (!ids.is_empty()).then_some(ids);
                lag(
                    &conn.pg()?,
                    &kafka.info()?,
                    ids,
                    json,
                    interval,
                    metrics_port,
                    rounds,
                )
                .await
            }
            OpsCommand::Assignments {
                num_processes,
                dedicated,
                workers,
                topics,
                partitions,
                json,
                kafka,
            } => {
                let all: Vec<TopicPartition> = match partitions {
                    Some(n) => topics
                        .iter()
                        .flat_map(|t| (0..n).map(move |p| TopicPartition::new(t.clone(), p)))
                        .collect(),
                    None => kafka.info()?.partitions(&topics).await?,
                };
                let plan =
                    core::assignments::plan_assignments(&all, num_processes, dedicated, workers)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                } else {
                    let rows = plan
                        .iter()
                        .map(|a| {
                            vec![
                                a.process_num.to_string(),
                                a.worker.map_or_else(|| "-".into(), |w| w.to_string()),
                                if a.migration {
                                    "(dedicated migration process: no partitions)".into()
                                } else {
                                    a.partitions
                                        .iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                },
                            ]
                        })
                        .collect();
                    print_table(&["process", "worker", "partitions"], rows);
                }
                Ok(0)
            }
        }
    }

    fn parse_tp(s: &str) -> anyhow::Result<TopicPartition> {
        let (t, p) = s
            .rsplit_once(',')
            .with_context(|| format!("partition {s:?} is not `topic,partition`"))?;
        Ok(TopicPartition::new(
            t,
            p.trim()
                .parse()
                .with_context(|| format!("partition number in {s:?}"))?,
        ))
    }

    /// Prints aligned columns, two spaces apart, with a header line.
    pub(super) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<String>| {
            let mut s = String::from("  ");
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ", w = widths[i]);
                }
            }
            println!("{}", s.trim_end());
        };
        line(headers.iter().map(|h| (*h).to_owned()).collect());
        for r in rows {
            line(r);
        }
    }

    /// Messages go to stdout, or to stderr when stdout carries JSON.
    fn say(json: bool, msg: &str) {
        if json {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }

    /// Asks `question`; returns the trimmed answer ("" at the end of input).
    fn ask(json: bool, question: &str) -> String {
        say(json, question);
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line.trim().to_owned()
    }

    fn time(t: &DateTime<Utc>) -> String {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }

    /// Python's list repr, as CommCare prints ids: `['a', 'b']`.
    fn py_list(ids: &[String]) -> String {
        format!(
            "[{}]",
            ids.iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn warn_forced(json: bool, forced: &[pillowtop::pillow::liveness::ProcessRow]) {
        for p in forced {
            say(
                json,
                &format!(
                    "warning: pillow {} (checkpoint {}) has a live process {} on {} pid {}: proceeding because of --force",
                    p.pillow_name, p.checkpoint_id, p.process_num, p.hostname, p.pid
                ),
            );
        }
    }

    /// CommCare's "already exists" block and two questions; `false` when declined.
    fn confirm_overwrite(
        json: bool,
        header: &str,
        existing: &BTreeMap<String, DateTime<Utc>>,
    ) -> bool {
        say(json, header);
        for (id, t) in existing {
            say(json, &format!("  {id}: last modified {}", time(t)));
        }
        if ask(
            json,
            "Do you want to continue and overwrite existing checkpoints? [y/n]",
        ) != "y"
        {
            return false;
        }
        ask(
            json,
            "Are you sure you want to DELETE existing checkpoints? [y/n]",
        ) == "y"
    }

    fn parse_target_topics(
        targets: &[String],
        specs: &[String],
    ) -> anyhow::Result<Vec<core::split::SplitTarget>> {
        let mut out: Vec<core::split::SplitTarget> =
            targets.iter().map(core::split::SplitTarget::new).collect();
        for spec in specs {
            let (who, topics) = match spec.rsplit_once('=') {
                Some((id, t)) => (Some(id), t),
                None => (None, spec.as_str()),
            };
            let topics: Vec<String> = topics
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            let mut matched = false;
            for t in &mut out {
                if who.is_none_or(|w| w == t.checkpoint_id) {
                    t.topics.get_or_insert_with(Vec::new).extend(topics.clone());
                    matched = true;
                }
            }
            if !matched {
                bail!(
                    "--target-topics {spec}: {} is not a target",
                    who.unwrap_or_default()
                );
            }
        }
        Ok(out)
    }

    async fn split(
        pg: &Arc<Pg>,
        source: &str,
        targets: &[String],
        target_topics: &[String],
        c: &Confirm,
    ) -> anyhow::Result<u8> {
        let targets = parse_target_topics(targets, target_topics)?;
        let (plan, forced) = core::split::prepare_split(pg, source, &targets, c.force).await?;
        warn_forced(c.json, &forced);
        if c.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print_split(&plan);
        }
        for m in &plan.source_only_topics {
            say(
                c.json,
                &format!(
                    "warning: topics {:?} are copied to {} but its pillow does not read them",
                    m.topics, m.checkpoint_id
                ),
            );
        }
        for m in &plan.target_only_topics {
            say(c.json, &format!(
                "warning: {} reads topics {:?} that {} has no rows for: no rows are written, so {} starts them by its start policy",
                m.checkpoint_id, m.topics, plan.source, m.checkpoint_id
            ));
        }
        if c.dry_run {
            say(c.json, "dry run: nothing was written");
            return Ok(0);
        }
        if !plan.existing.is_empty() && !c.noinput {
            let existing = core::last_modified_by_id(&plan.existing);
            let header = format!("Some of {} already exist:", py_list(&plan.targets));
            if !confirm_overwrite(c.json, &header, &existing) {
                return Ok(DECLINED);
            }
        }
        let n = core::split::apply_split(pg, &plan).await?;
        say(
            c.json,
            &format!(
                "copied {} rows of {} to {} ({n} rows written in one transaction)",
                plan.rows.len(),
                plan.source,
                py_list(&plan.targets)
            ),
        );
        Ok(0)
    }

    pub(super) fn print_split(plan: &core::split::SplitPlan) {
        println!(
            "split checkpoint {} into {}: {} rows copied to each target",
            plan.source,
            py_list(&plan.targets),
            plan.rows.len()
        );
        let per_topic = core::split::rows_per_topic(&plan.rows);
        print_table(
            &["topic", "partitions", "min offset", "max offset"],
            per_topic
                .iter()
                .map(|(t, (n, lo, hi))| {
                    vec![t.clone(), n.to_string(), lo.to_string(), hi.to_string()]
                })
                .collect(),
        );
        println!("rows copied (next offset to read):");
        print_table(
            &["topic", "partition", "offset", "source last modified"],
            plan.rows
                .iter()
                .map(|r| {
                    vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.offset.to_string(),
                        time(&r.last_modified),
                    ]
                })
                .collect(),
        );
        if plan.existing.is_empty() {
            println!("no target has rows: nothing is overwritten");
        } else {
            println!("existing target rows (all are replaced):");
            print_table(
                &[
                    "checkpoint",
                    "topic",
                    "partition",
                    "offset",
                    "last modified",
                    "after split",
                ],
                plan.existing
                    .iter()
                    .map(|r| {
                        vec![
                            r.checkpoint_id.clone(),
                            r.topic.clone(),
                            r.partition.to_string(),
                            r.offset.to_string(),
                            time(&r.last_modified),
                            plan.replacement(r)
                                .map_or_else(|| "deleted".into(), |o| o.to_string()),
                        ]
                    })
                    .collect(),
            );
        }
    }

    async fn merge(
        pg: &Arc<Pg>,
        ids: &[String],
        topics: Option<&[String]>,
        c: &Confirm,
    ) -> anyhow::Result<u8> {
        let (target, sources) = ids.split_last().context("give the sources and a target")?;
        let (plan, forced) =
            core::merge::prepare_merge(pg, sources, target, topics, c.force).await?;
        warn_forced(c.json, &forced);
        if c.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print_merge(&plan);
        }
        if !plan.sources_without_rows.is_empty() {
            say(c.json, &format!(
                "warning: {} have no rows (never run?): they contribute nothing, and their processors start where the other sources are",
                py_list(&plan.sources_without_rows)
            ));
        }
        if !plan.ignored_topics.is_empty() {
            say(
                c.json,
                &format!(
                    "note: source rows on topics {:?} are not merged: {} does not read them",
                    plan.ignored_topics, plan.target
                ),
            );
        }
        if c.dry_run {
            say(c.json, "dry run: nothing was written");
            return Ok(0);
        }
        if plan.target_exists() && !c.noinput {
            let existing = core::last_modified_by_id(&plan.existing);
            let header = format!("{} already exists:", plan.target);
            if !confirm_overwrite(c.json, &header, &existing) {
                return Ok(DECLINED);
            }
        }
        let max = plan.max_reprocess();
        if max > 0 {
            say(
                c.json,
                &format!("At least one checkpoint will need to reprocess {max} changes"),
            );
            if !c.noinput && ask(c.json, "Is this amount of reprocessing acceptable y/N?") != "y" {
                return Ok(REPROCESSING_DECLINED);
            }
        } else {
            say(c.json, "All pillows have the same offsets");
        }
        core::merge::apply_merge(pg, &plan).await?;
        say(c.json, &format!("{} checkpoints created", plan.target));
        Ok(0)
    }

    fn print_merge(plan: &core::merge::MergePlan) {
        println!(
            "merge checkpoints {} into {}: the minimum offset of each partition",
            py_list(&plan.sources),
            plan.target
        );
        let mut headers = vec!["topic", "partition", "offset", "max", "reprocess"];
        headers.extend(plan.sources.iter().map(String::as_str));
        print_table(
            &headers,
            plan.partitions
                .iter()
                .map(|p| {
                    let mut v = vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        p.offset.to_string(),
                        p.max_offset.to_string(),
                        p.reprocess.to_string(),
                    ];
                    v.extend(plan.sources.iter().map(|s| {
                        p.sources
                            .get(s)
                            .map_or_else(|| "-".into(), ToString::to_string)
                    }));
                    v
                })
                .collect(),
        );
        if plan.existing.is_empty() {
            println!("{} has no rows: nothing is overwritten", plan.target);
        } else {
            println!(
                "{} has {} rows; all are replaced",
                plan.target,
                plan.existing.len()
            );
        }
    }

    async fn reset(
        pg: &Arc<Pg>,
        kafka: &KafkaInfo,
        id: &str,
        selection: &core::reset::Selection,
        to: &core::reset::ResetTo,
        c: &Confirm,
    ) -> anyhow::Result<u8> {
        let plan = core::reset::prepare_reset(pg, kafka, id, selection, to).await?;
        let processes = pillowtop::pillow::liveness::Liveness::new(pg.clone())
            .list(None)
            .await?;
        let forced = core::check_not_running(&processes, &[id.to_owned()], c.force)?;
        warn_forced(c.json, &forced);
        if c.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!("reset checkpoint {} to {}", plan.checkpoint_id, plan.to);
            print_table(
                &[
                    "topic",
                    "partition",
                    "current",
                    "new",
                    "first available",
                    "high-water mark",
                ],
                plan.rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.topic.clone(),
                            r.partition.to_string(),
                            r.current
                                .map_or_else(|| "(no row)".into(), |o| o.to_string()),
                            r.new.to_string(),
                            r.low.to_string(),
                            r.high.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        if c.dry_run {
            say(c.json, "dry run: nothing was written");
            return Ok(0);
        }
        if !c.noinput
            && ask(
                c.json,
                &format!("Reset checkpoint {id} as shown? Type 'yes' to continue:"),
            ) != "yes"
        {
            return Ok(DECLINED);
        }
        let n = core::reset::apply_reset(pg, &plan).await?;
        say(c.json, &format!("checkpoint {id}: {n} rows written"));
        Ok(0)
    }

    async fn history(cmd: HistoryCommand) -> anyhow::Result<u8> {
        match cmd {
            HistoryCommand::Snapshot {
                date,
                keep_days,
                conn,
            } => {
                let date = date.unwrap_or_else(|| Utc::now().date_naive());
                let s = core::history::snapshot(&*conn.pg()?, date, keep_days).await?;
                println!(
                    "recorded {} checkpoint rows under {}; pruned {} records older than {keep_days} days",
                    s.rows, s.date, s.pruned
                );
                Ok(0)
            }
            HistoryCommand::List {
                checkpoint_id,
                json,
                conn,
            } => {
                let entries = core::history::list(&*conn.pg()?, checkpoint_id.as_deref()).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&entries)?);
                } else {
                    print_table(
                        &["date", "checkpoint", "rows", "sum of offsets"],
                        entries
                            .iter()
                            .map(|e| {
                                vec![
                                    e.date.to_string(),
                                    e.checkpoint_id.clone(),
                                    e.rows.to_string(),
                                    e.offsets_total.to_string(),
                                ]
                            })
                            .collect(),
                    );
                }
                Ok(0)
            }
            HistoryCommand::Restore {
                date,
                ids,
                confirm: c,
                conn,
            } => {
                let pg = conn.pg()?;
                let plans = core::history::prepare_restore(&pg, &ids, date).await?;
                let processes = pillowtop::pillow::liveness::Liveness::new(pg.clone())
                    .list(None)
                    .await?;
                let forced = core::check_not_running(&processes, &ids, c.force)?;
                warn_forced(c.json, &forced);
                if c.json {
                    println!("{}", serde_json::to_string_pretty(&plans)?);
                } else {
                    for p in &plans {
                        println!(
                            "restore checkpoint {} from the snapshot of {}",
                            p.checkpoint_id, p.date
                        );
                        print_table(
                            &["topic", "partition", "current", "restored"],
                            p.rows
                                .iter()
                                .map(|r| {
                                    vec![
                                        r.topic.clone(),
                                        r.partition.to_string(),
                                        r.current
                                            .map_or_else(|| "(no row)".into(), |o| o.to_string()),
                                        r.new.to_string(),
                                    ]
                                })
                                .collect(),
                        );
                        for k in &p.kept {
                            println!(
                                "  kept: {},{} at {} (not in the snapshot)",
                                k.topic, k.partition, k.offset
                            );
                        }
                    }
                }
                if c.dry_run {
                    say(c.json, "dry run: nothing was written");
                    return Ok(0);
                }
                if !c.noinput
                    && ask(c.json, "Restore these checkpoints? Type 'yes' to continue:") != "yes"
                {
                    return Ok(DECLINED);
                }
                for p in &plans {
                    let n = core::history::apply_restore(&pg, p).await?;
                    say(
                        c.json,
                        &format!(
                            "checkpoint {}: {n} rows restored from {}",
                            p.checkpoint_id, p.date
                        ),
                    );
                }
                Ok(0)
            }
        }
    }

    async fn add_partitions(
        pg: &Arc<Pg>,
        kafka: Option<&KafkaInfo>,
        topic: &str,
        n: i32,
        c: &Confirm,
    ) -> anyhow::Result<u8> {
        let count = match kafka {
            Some(k) => Some(k.partition_count(topic).await?),
            None => None,
        };
        let rows = core::load_rows_on_topic(pg, Some(topic)).await?;
        let plan = core::add_partitions::plan_add_partitions(topic, n, &rows, count)?;
        if c.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!(
                "topic {topic}: {} checkpoints read it; {} rows to create at offset 0",
                plan.checkpoint_ids.len(),
                plan.create.len()
            );
            print_table(
                &["checkpoint", "new partitions"],
                plan.checkpoint_ids
                    .iter()
                    .map(|id| {
                        let parts: Vec<String> = plan
                            .create
                            .iter()
                            .filter(|(i, _)| i == id)
                            .map(|(_, p)| p.to_string())
                            .collect();
                        vec![
                            id.clone(),
                            if parts.is_empty() {
                                "-".into()
                            } else {
                                parts.join(" ")
                            },
                        ]
                    })
                    .collect(),
            );
        }
        if c.dry_run || plan.create.is_empty() {
            say(
                c.json,
                if c.dry_run {
                    "dry run: nothing was written"
                } else {
                    "nothing to do"
                },
            );
            return Ok(0);
        }
        if !c.noinput {
            let yes = |a: String| matches!(a.to_lowercase().as_str(), "y" | "yes");
            if !yes(ask(
                c.json,
                &format!("Have you stopped the pillows that read {topic}? [y/n]"),
            )) {
                say(c.json, "aborted: stop the pillows first");
                return Ok(DECLINED);
            }
            if !yes(ask(
                c.json,
                &format!(
                    "Have you run kafka-topics.sh --alter --partitions={n} --topic={topic}? [y/n]"
                ),
            )) {
                say(
                    c.json,
                    &format!(
                    "aborted: run kafka-topics.sh --alter --partitions={n} --topic={topic} first"
                ),
                );
                return Ok(DECLINED);
            }
        }
        let written = core::add_partitions::apply_add_partitions(pg, &plan).await?;
        say(
            c.json,
            &format!("created {written} rows; please restart the pillows"),
        );
        Ok(0)
    }

    /// The `lag` table: one row per checkpoint and partition (also the demo's final table).
    pub(super) fn print_lag(rows: &[core::lag::LagRow]) {
        print_table(
            &[
                "checkpoint",
                "topic",
                "partition",
                "offset",
                "high-water mark",
                "lag",
                "since checkpoint",
                "time lag",
                "owner",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.checkpoint_id.clone(),
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.offset.to_string(),
                        r.high
                            .map_or_else(|| "(no partition)".into(), |h| h.to_string()),
                        r.lag.map_or_else(|| "-".into(), |l| l.to_string()),
                        format!("{}s", r.seconds_since_checkpoint),
                        r.time_lag_seconds
                            .map_or_else(|| "-".into(), |s| format!("{s}s")),
                        r.owner
                            .clone()
                            .unwrap_or_else(|| "(no live process)".into()),
                    ]
                })
                .collect(),
        );
    }

    async fn lag(
        pg: &Arc<Pg>,
        kafka: &KafkaInfo,
        ids: Option<Vec<String>>,
        json: bool,
        interval: Option<u64>,
        metrics_port: Option<u16>,
        rounds: Option<u64>,
    ) -> anyhow::Result<u8> {
        let current: Arc<std::sync::Mutex<Arc<pillowtop::metrics::MemoryRecorder>>> =
            Arc::default();
        let token = CancellationToken::new();
        if let Some(port) = metrics_port {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .with_context(|| format!("listening on port {port}"))?;
            eprintln!(
                "serving metrics on http://{}/metrics",
                listener.local_addr()?
            );
            let cur = current.clone();
            tokio::spawn(core::prometheus::serve(
                listener,
                move || {
                    let rec = cur.lock().map(|r| r.clone()).unwrap_or_default();
                    core::prometheus::render(&rec.snapshot())
                },
                token.clone(),
            ));
        }
        let every = interval.or(metrics_port.map(|_| 120));
        let mut round = 0u64;
        loop {
            let rows = core::lag::collect(pg, kafka, ids.as_deref()).await?;
            let rec = Arc::new(pillowtop::metrics::MemoryRecorder::new());
            core::lag::record(&rows, &*rec);
            if let Ok(mut c) = current.lock() {
                *c = rec;
            }
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                print_lag(&rows);
            }
            round += 1;
            let Some(secs) = every else { break };
            if rounds.is_some_and(|n| round >= n) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        token.cancel();
        Ok(0)
    }
}
