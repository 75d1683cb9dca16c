//! `pillowtop`: the operator command line. It owns its process, so it may print.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss
)]
//!
//! Exit codes: 0 success; 1 an operator declined a prompt; 2 invalid usage or configuration;
//! 3 a service failed (Kafka, PostgreSQL, search engine) or a run stopped on an error.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::{Parser, Subcommand};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::checkpoint::postgres::PostgresCheckpointStore;
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin, KafkaFeed, KafkaFeedOptions};
use pillowtop::pg::Pg;
use pillowtop::pillow::liveness::Liveness;
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::{ChunkOutcome, Processor, ProcessorFailure};
use pillowtop::retry::postgres::PostgresErrorStore;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pillowtop",
    version,
    about = "Operate CommCare-compatible pillows: Kafka change feeds with PostgreSQL checkpoints"
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
    /// Demo: publish CommCare-style form changes to a new topic and run a pillow over them
    /// with a live progress line, checkpointing in PostgreSQL.
    Demo {
        #[arg(long, env = "TEST_KAFKA_BOOTSTRAP")]
        kafka: String,
        #[arg(long, env = "TEST_POSTGRES_URL")]
        postgres_url: String,
        /// How many changes to publish.
        #[arg(long, default_value_t = 5000)]
        changes: u64,
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Keep the demo topic and checkpoint rows afterwards.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    pillowtop::telemetry::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Schema { postgres_url } => schema(&postgres_url).await,
            Command::Demo {
                kafka,
                postgres_url,
                changes,
                partitions,
                keep,
            } => demo(&kafka, &postgres_url, changes, partitions, keep).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
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

/// Counts changes per domain: the demo's processor (a bulk processor, as CommCare's are).
struct DomainCounter {
    seen: Arc<AtomicU64>,
    per_domain: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

#[async_trait]
impl Processor for DomainCounter {
    fn name(&self) -> &str {
        "domain-counter"
    }

    fn supports_batch_processing(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        if let Ok(mut m) = self.per_domain.lock() {
            *m.entry(change.metadata.domain.clone().unwrap_or_default())
                .or_default() += 1;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(Ok(()))
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        for c in changes.iter_mut() {
            if let Err(f) = self.process_change(c).await? {
                return Ok(Err(f));
            }
        }
        Ok(Ok(ChunkOutcome::default()))
    }
}

async fn demo(
    kafka: &str,
    postgres_url: &str,
    changes: u64,
    partitions: i32,
    keep: bool,
) -> anyhow::Result<()> {
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 0xff_ffff
    );
    let topic = format!("demo-form-sql-{suffix}");
    let pillow_name = format!("demo-xform-pillow-{suffix}");
    println!("== pillowtop demo ==");
    println!(
        "kafka {kafka}, postgres {}",
        pillowtop::pg::redact(postgres_url)
    );
    let pg = Arc::new(Pg::new(postgres_url));
    pillowtop::schema::ensure_schema(&pg)
        .await
        .context("creating the pillowtop tables")?;
    let admin = KafkaAdmin::new(kafka)?;
    admin
        .create_topic(&topic, partitions, &[])
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    println!("created topic {topic} with {partitions} partitions");
    demo_publish(kafka, &topic, changes).await?;
    let per_domain = demo_run(kafka, &pg, &topic, &pillow_name, changes).await?;
    demo_report(&pg, &pillow_name, changes, &per_domain).await?;
    if !keep {
        admin.delete_topics(&[&topic]).await?;
        pg.run("removing the demo checkpoint", |c| {
            let id = pillow_name.clone();
            async move {
                c.execute(
                    "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1",
                    &[&id],
                )
                .await
                .map_err(pillowtop::pg::err("removing the demo checkpoint"))
            }
        })
        .await?;
        println!("removed the demo topic and checkpoint (use --keep to keep them)");
    }
    Ok(())
}

/// Publishes `changes` CommCare-style form changes spread over four domains.
async fn demo_publish(kafka: &str, topic: &str, changes: u64) -> anyhow::Result<()> {
    let producer = ChangeProducer::new(kafka)?;
    let domains = ["dimagi", "demo-health", "field-survey", "nutrition"];
    let t0 = Instant::now();
    let metas = (0..changes).map(|i| {
        let mut m = ChangeMeta::new(format!("form-{i:08}"), "sql", "form-sql");
        m.document_type = Some("XFormInstance".into());
        m.document_subtype = Some("http://openrosa.org/formdesigner/demo".into());
        m.domain = Some(domains[usize::try_from(i % 4).unwrap_or(0)].into());
        m
    });
    let sent = producer.send_changes(topic, metas).await?;
    println!(
        "published {sent} CommCare-style form changes in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the demo pillow until the feed is idle; returns the changes counted per domain.
async fn demo_run(
    kafka: &str,
    pg: &Arc<Pg>,
    topic: &str,
    pillow_name: &str,
    changes: u64,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let seen = Arc::new(AtomicU64::new(0));
    let per_domain = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let mut config = PillowConfig::new(pillow_name, pillow_name);
    config.chunk_size = 100;
    config.checkpoint_frequency = 1000;
    config.until_idle = true;
    let mut options = KafkaFeedOptions::new(kafka, pillow_name);
    options.idle_timeout = Duration::from_secs(2);
    let feed = KafkaFeed::new(&[topic.to_owned()], options)?;
    let counter = DomainCounter {
        seen: seen.clone(),
        per_domain: per_domain.clone(),
    };
    let mut pillow = Pillow::new(
        config,
        Box::new(feed),
        vec![Box::new(counter)],
        Arc::new(PostgresCheckpointStore::new(pg.clone())),
        Arc::new(PostgresErrorStore::new(pg.clone())),
    )
    .with_liveness(Liveness::new(pg.clone()));
    println!("running pillow {pillow_name} (chunk size 100, checkpoint every 1000 changes; stops when idle for 2 s)");
    let progress = tokio::spawn(progress_line(seen, changes));
    let started = Instant::now();
    let summary = pillow.run(&CancellationToken::new()).await;
    progress.abort();
    let summary = summary?;
    println!(
        "\rprocessed {} changes ({} failed, {} invalid) with {} checkpoints in {:.2}s (including the 2 s idle wait)      ",
        summary.changes,
        summary.failed,
        summary.invalid,
        summary.checkpoints,
        started.elapsed().as_secs_f64()
    );
    let counts = per_domain.lock().map(|m| m.clone()).unwrap_or_default();
    Ok(counts)
}

async fn demo_report(
    pg: &Arc<Pg>,
    pillow_name: &str,
    changes: u64,
    per_domain: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    println!("\nchanges per domain:");
    for (domain, n) in per_domain {
        println!("  {domain:<14} {n:>8}");
    }
    let store = PostgresCheckpointStore::new(pg.clone());
    println!("\ncheckpoint {pillow_name} in pillowtop_kafkacheckpoint (next offset to read):");
    let rows = pillowtop::checkpoint::CheckpointStore::load(&store, pillow_name).await?;
    for r in &rows {
        println!(
            "  {:<28} partition {:>2}  offset {:>7}",
            r.tp.topic, r.tp.partition, r.offset
        );
    }
    let total: i64 = rows.iter().map(|r| r.offset).sum();
    let verdict = if u64::try_from(total).ok() == Some(changes) {
        "nothing lost, nothing pending"
    } else {
        "MISMATCH"
    };
    println!("  sum of offsets {total}, published {changes}: {verdict}");
    anyhow::ensure!(
        u64::try_from(total).ok() == Some(changes),
        "the checkpoint does not cover every published change"
    );
    Ok(())
}

async fn progress_line(seen: Arc<AtomicU64>, total: u64) {
    let mut first: Option<Instant> = None;
    let mut rate = 0.0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = seen.load(Ordering::Relaxed);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if let Some(t) = first {
            if n < total || rate == 0.0 {
                rate = n as f64 / t.elapsed().as_secs_f64().max(0.2);
            }
        }
        let pct = if total == 0 {
            100.0
        } else {
            n as f64 * 100.0 / total as f64
        };
        print!(
            "\r  {n:>8}/{total} changes  {pct:5.1}%  {rate:>9.0} changes/s  lag {:>8} changes   ",
            total.saturating_sub(n)
        );
        let _ = std::io::stdout().flush();
    }
}
