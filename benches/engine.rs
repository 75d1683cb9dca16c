//! Engine overhead against the real broker: a no-op processor over N small changes, beside plain
//! rdkafka consumption of the same topic, measured in the same run.
//!
//! ```text
//! source .services/env   # TEST_KAFKA_BOOTSTRAP, TEST_POSTGRES_URL
//! cargo bench --features testing --bench engine
//! PILLOWTOP_BENCH_CHANGES=20000 cargo bench --features testing --bench engine   # CI smoke
//! PILLOWTOP_BENCH_METRICS=memory   # the pillow modes record metrics (memory: as metrics_port; buffered: as a Python sink)
//! ```
//!
//! Goal (the issue): pillowtop reaches at least 70% of the raw consumption rate, and its memory is
//! flat with backlog size.
//!
//! The parent publishes the changes once, then runs every measured phase in a fresh child process
//! (this executable again, with the phase in `PILLOWTOP_BENCH_PHASE`), so that peak RSS is not
//! hidden by memory an earlier phase left in the allocator and timing is not skewed by its state.
//! Phases alternate between raw and pillowtop modes over `PILLOWTOP_BENCH_ROUNDS` rounds (default
//! 2, order reversed every other round); each mode reports its best time and its largest RSS.
//!
//! A phase's time runs from creating its Kafka client to handling the N-th change (pillowtop:
//! `max_changes = N`, so the idle tail is not timed; the final flush and checkpoint are).
//! Its peak RSS is the largest VmRSS (sampled every 50 ms, and VmHWM at the end) minus VmRSS at
//! the phase's start.

// A benchmark reports by printing: its table on stdout, skips and failures on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::hint::black_box;
use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::kafka::{KafkaAdmin, KafkaFeed, KafkaFeedOptions};
use pillowtop::feed::{ChangeFeed, FeedItem, TopicPartition};
use pillowtop::pg::Pg;
use pillowtop::pillow::{Pillow, PillowConfig, StopReason};
use pillowtop::processor::memory::NoopProcessor;
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::testing::{env_or, unique_name};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// Where the parent hands a child its phase (JSON).
const PHASE_ENV: &str = "PILLOWTOP_BENCH_PHASE";
/// The prefix of the child's one result line on stdout.
const RESULT_PREFIX: &str = "PILLOWTOP_BENCH_RESULT ";
/// Same prefetch bound as `KafkaFeedOptions::new`, so raw and pillowtop fetch alike.
const PREFETCH_KBYTES: &str = "16384";
const IDLE_TIMEOUT: Duration = Duration::from_millis(500);
const CHECKPOINT_FREQUENCY: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// `BaseConsumer::poll` on a plain thread, counting messages: no parsing.
    Raw,
    /// As `Raw`, and each payload parsed into a `Change` (what the feed does per message).
    RawParse,
    /// `StreamConsumer::recv` on tokio, counting messages: the async client without parsing.
    RawStream,
    /// `KafkaFeed` alone (reader task, parsing, channel), drained with `next()`: no pillow loop.
    Feed,
    /// The whole engine: `Pillow` + `KafkaFeed` + `NoopProcessor` + PostgreSQL stores.
    Pillow { chunk: usize },
}

impl Mode {
    fn slug(self) -> String {
        match self {
            Mode::Raw => "raw".into(),
            Mode::RawParse => "raw-parse".into(),
            Mode::RawStream => "raw-stream".into(),
            Mode::Feed => "feed".into(),
            Mode::Pillow { chunk } => format!("pillow-{chunk}"),
        }
    }

    fn label(self) -> String {
        match self {
            Mode::Raw => "raw rdkafka (BaseConsumer, no parse)".into(),
            Mode::RawParse => "raw rdkafka + parse Change".into(),
            Mode::RawStream => "raw rdkafka (StreamConsumer on tokio, no parse)".into(),
            Mode::Feed => "KafkaFeed only (reader task + parse + channel)".into(),
            Mode::Pillow { chunk } => format!("pillowtop noop, chunk {chunk}"),
        }
    }
}

/// One measured phase, run in a child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Phase {
    mode: Mode,
    kafka: String,
    postgres: String,
    topic: String,
    partitions: i32,
    /// Changes to handle: the phase ends at the N-th.
    changes: u64,
    /// Checkpoint id and pillow name (pillow modes).
    checkpoint_id: String,
}

/// What a child reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Outcome {
    changes: u64,
    seconds: f64,
    /// User + system CPU time of the phase (all threads).
    cpu_seconds: f64,
    start_rss_kib: u64,
    peak_rss_kib: u64,
}

impl Outcome {
    fn peak_delta_mib(&self) -> f64 {
        self.peak_rss_kib.saturating_sub(self.start_rss_kib) as f64 / 1024.0
    }
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(PHASE_ENV) {
        return child(&spec);
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine bench: skipped outside `cargo bench` (no --bench argument)");
        return ExitCode::SUCCESS;
    }
    let kafka = std::env::var("TEST_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|v| !v.is_empty());
    let postgres = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let (Some(kafka), Some(postgres)) = (kafka, postgres) else {
        if std::env::var_os("CI").is_some() {
            eprintln!("engine bench: TEST_KAFKA_BOOTSTRAP and TEST_POSTGRES_URL must be set in CI (source the env file written by tests/services/up)");
            return ExitCode::FAILURE;
        }
        println!("engine bench skipped: TEST_KAFKA_BOOTSTRAP / TEST_POSTGRES_URL not set (start tests/services/up and source its env file)");
        return ExitCode::SUCCESS;
    };
    match parent(&kafka, &postgres) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_number(var: &str, default: u64) -> Res<u64> {
    let v = env_or(var, &default.to_string());
    v.replace('_', "")
        .parse()
        .map_err(|e| format!("{var}={v:?} is not a number: {e}").into())
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// Parent: publish, run the phases, print the table, clean up.

fn parent(kafka: &str, postgres: &str) -> Res<()> {
    let n = env_number("PILLOWTOP_BENCH_CHANGES", 1_000_000)?.max(10);
    let partitions = i32::try_from(env_number("PILLOWTOP_BENCH_PARTITIONS", 8)?.max(1))?;
    let rounds = env_number("PILLOWTOP_BENCH_ROUNDS", 2)?.max(1);
    let rt = runtime()?;
    let admin = KafkaAdmin::new(kafka)?;
    let pg = Pg::new(postgres);
    rt.block_on(pillowtop::store::schema::ensure_schema(&pg))?;
    let topic = unique_name("bench_engine");
    rt.block_on(admin.create_topic(&topic, partitions, &[]))?;
    let base = Phase {
        mode: Mode::Raw,
        kafka: kafka.to_owned(),
        postgres: postgres.to_owned(),
        topic: topic.clone(),
        partitions,
        changes: n,
        checkpoint_id: String::new(),
    };
    let result = measure(&base, rounds);
    // Clean up whatever happened.
    if let Err(e) = rt.block_on(admin.delete_topics(&[topic.as_str()])) {
        eprintln!("could not delete topic {topic}: {e}");
    }
    if let Err(e) = rt.block_on(delete_rows(&pg, &topic)) {
        eprintln!("could not delete the checkpoint rows of {topic}: {e}");
    }
    result
}

/// Publishes N/10 changes, measures pillowtop at that backlog, publishes the rest, then
/// alternates the modes at backlog N.
fn measure(base: &Phase, rounds: u64) -> Res<()> {
    let n = base.changes;
    let small = n / 10;
    println!(
        "engine bench: topic {} ({} partitions), {n} changes, {rounds} round(s), {} cores",
        base.topic,
        base.partitions,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let started = Instant::now();
    publish(base, 0, small)?;
    let rate = small as f64 / started.elapsed().as_secs_f64();
    println!("published {small} changes ({rate:.0}/s)");
    let small_mode = Mode::Pillow { chunk: 100 };
    let mut small_runs = Vec::new();
    for r in 0..rounds {
        let phase = Phase {
            mode: small_mode,
            changes: small,
            checkpoint_id: format!("{}_s{r}", base.topic),
            ..base.clone()
        };
        small_runs.push(run_child(&phase)?);
    }
    let started = Instant::now();
    publish(base, small, n)?;
    let rate = (n - small) as f64 / started.elapsed().as_secs_f64();
    println!("published {} more changes ({rate:.0}/s)", n - small);
    check_published(base)?;

    let modes = [
        Mode::Raw,
        Mode::Pillow { chunk: 100 },
        Mode::RawParse,
        Mode::Pillow { chunk: 10 },
        Mode::RawStream,
        Mode::Feed,
    ];
    let mut runs: Vec<Vec<Outcome>> = vec![Vec::new(); modes.len()];
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..modes.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let phase = Phase {
                mode: modes[i],
                checkpoint_id: format!("{}_{r}_{i}", base.topic),
                ..base.clone()
            };
            runs[i].push(run_child(&phase)?);
        }
    }
    let mut rows: Vec<(String, Outcome)> = modes
        .iter()
        .zip(&runs)
        .map(|(m, o)| (m.label(), best(o)))
        .collect();
    let small_best = best(&small_runs);
    rows.push((format!("{} @ backlog N/10", small_mode.label()), small_best));
    report(&rows, &small_best);
    Ok(())
}

/// The fastest run, with the largest peak RSS delta of all runs (the conservative figure).
fn best(runs: &[Outcome]) -> Outcome {
    let mut out = runs
        .iter()
        .copied()
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .expect("every mode ran at least once");
    let worst = runs
        .iter()
        .max_by(|a, b| a.peak_delta_mib().total_cmp(&b.peak_delta_mib()))
        .expect("every mode ran at least once");
    out.start_rss_kib = worst.start_rss_kib;
    out.peak_rss_kib = worst.peak_rss_kib;
    out
}

/// The backlog the engine-overhead goal is stated for.
const GOAL_CHANGES: u64 = 1_000_000;

fn report(rows: &[(String, Outcome)], small: &Outcome) {
    let rate = |o: &Outcome| o.changes as f64 / o.seconds;
    // The reference: the faster of the two plain consumers (BaseConsumer, StreamConsumer).
    let raw = [Mode::Raw.label(), Mode::RawStream.label()]
        .iter()
        .filter_map(|l| rows.iter().find(|(label, _)| label == l))
        .map(|(_, o)| rate(o))
        .fold(f64::MIN, f64::max);
    println!("\n| mode | changes | seconds | changes/s | ratio vs raw | peak RSS MiB | CPU s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, o) in rows {
        println!(
            "| {label} | {} | {:.2} | {:.0} | {:.0}% | {:.1} | {:.2} |",
            o.changes,
            o.seconds,
            rate(o),
            100.0 * rate(o) / raw,
            o.peak_delta_mib(),
            o.cpu_seconds,
        );
    }
    let find = |label: String| {
        rows.iter()
            .find(|(l, _)| *l == label)
            .map(|(_, o)| *o)
            .expect("the pillow rows are in the table")
    };
    let p100 = find(Mode::Pillow { chunk: 100 }.label());
    let p10 = find(Mode::Pillow { chunk: 10 }.label());
    // The goal is stated for 1,000,000 changes: a smaller run (CI's smoke size) is mostly
    // start-up and connection set-up, and its ratios say nothing either way.
    let measured = p100.changes >= GOAL_CHANGES;
    let verdict = |ok: bool| match (measured, ok) {
        (false, _) => "n/a below 1,000,000 changes",
        (true, true) => "PASS",
        (true, false) => "FAIL",
    };
    let pct100 = 100.0 * rate(&p100) / raw;
    let pct10 = 100.0 * rate(&p10) / raw;
    let parsed = rate(&find(Mode::RawParse.label()));
    println!(
        "\nratio vs raw: against the faster plain consumer ({raw:.0}/s). peak RSS = largest VmRSS during the phase (50 ms samples and VmHWM) minus VmRSS at its start, in a fresh process; CPU s = user + system time of that process.\n\
         goal: pillowtop ≥ 70% of raw: {} ({pct100:.0}%, chunk 100)\n\
         goal at chunk 10 (CommCare's default): {} ({pct10:.0}%)",
        verdict(pct100 >= 70.0),
        verdict(pct10 >= 70.0),
    );
    println!(
        "for reference, against raw + parse (the same decoding work, {parsed:.0}/s): chunk 100 {:.0}%, chunk 10 {:.0}%",
        100.0 * rate(&p100) / parsed,
        100.0 * rate(&p10) / parsed,
    );
    let (a, b) = (small.peak_delta_mib(), p100.peak_delta_mib());
    let mib = |changes: u64| (changes * change_json(0).1.len() as u64) as f64 / 1_048_576.0;
    // Below twice the prefetch bound the whole backlog fits in librdkafka's queue: memory grows
    // with it by design, and the comparison says nothing.
    let prefetch_mib = PREFETCH_KBYTES.parse::<f64>().unwrap_or(0.0) / 1024.0;
    let flat = if mib(small.changes) < 2.0 * prefetch_mib {
        format!("n/a, backlog N/10 is below twice the {prefetch_mib:.0} MiB prefetch bound")
    } else {
        verdict(b <= 1.25 * a + 4.0).to_owned()
    };
    println!(
        "memory flat with backlog (peak RSS at N ≤ 1.25 × at N/10 + 4 MiB): {flat} (backlog {} = {:.0} MiB: {a:.1} MiB; backlog {} = {:.0} MiB: {b:.1} MiB)",
        small.changes,
        mib(small.changes),
        p100.changes,
        mib(p100.changes),
    );
    let extra = env_or("PILLOWTOP_BENCH_KAFKA_EXTRA", "");
    if !extra.is_empty() {
        println!("extra consumer settings (all modes): {extra}");
    }
    let _ = std::io::stdout().flush();
}

/// Runs `phase` in a fresh child process and returns what it reports.
fn run_child(phase: &Phase) -> Res<Outcome> {
    let exe = std::env::current_exe()?;
    // `PILLOWTOP_BENCH_WRAP="perf record -g -o /tmp/engine-%s.data --"` runs each phase under a
    // profiler; `%s` becomes the phase's mode (`raw`, `feed`, `pillow-100`, …).
    let mut command = match std::env::var("PILLOWTOP_BENCH_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let slug = phase.mode.slug();
            let mut words = wrap.split_whitespace().map(|w| w.replace("%s", &slug));
            let mut c = Command::new(words.next().unwrap_or_default());
            c.args(words).arg(exe);
            c
        }
        _ => Command::new(exe),
    };
    let output = command
        .env(PHASE_ENV, serde_json::to_string(phase)?)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "phase {:?} failed ({}): {stdout}",
            phase.mode, output.status
        )
        .into());
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .ok_or_else(|| format!("phase {:?} printed no result: {stdout}", phase.mode))?;
    let outcome: Outcome = serde_json::from_str(line)?;
    eprintln!(
        "  {:<50} {:>9} changes {:>7.2} s {:>10.0}/s  CPU {:>6.2} s  peak RSS {:>6.1} MiB",
        phase.mode.label(),
        outcome.changes,
        outcome.seconds,
        outcome.changes as f64 / outcome.seconds,
        outcome.cpu_seconds,
        outcome.peak_delta_mib()
    );
    Ok(outcome)
}

/// A small change as CommCare publishes a SQL form (~330 bytes of JSON): (document id, body).
fn change_json(i: u64) -> (String, String) {
    let mut meta = ChangeMeta::new(format!("{:016x}{i:016x}", 0x5eed_u64), "sql", "form-sql");
    meta.document_type = Some("XFormInstance".into());
    meta.document_subtype = Some("http://openrosa.org/formdesigner/5A4B1D5C-BENCH".into());
    meta.domain = Some("bench-domain".into());
    let body = meta.to_json();
    (meta.document_id, body)
}

/// Publishes changes `from..to`, round-robin over the partitions, keyed by document id.
fn publish(phase: &Phase, from: u64, to: u64) -> Res<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &phase.kafka)
        .set("acks", "1")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()?;
    let parts = u64::try_from(phase.partitions)?;
    for i in from..to {
        let (key, body) = change_json(i);
        let partition = i32::try_from(i % parts)?;
        let mut record = BaseRecord::to(&phase.topic)
            .key(&key)
            .payload(&body)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Checks that the topic holds exactly N messages (delivery failures would be silent otherwise).
fn check_published(phase: &Phase) -> Res<()> {
    let consumer: BaseConsumer = raw_config(phase).create()?;
    let mut total = 0;
    for p in 0..phase.partitions {
        let (low, high) = consumer.fetch_watermarks(&phase.topic, p, Duration::from_secs(30))?;
        total += high - low;
    }
    if u64::try_from(total)? != phase.changes {
        return Err(format!(
            "topic {} holds {total} messages, expected {}",
            phase.topic, phase.changes
        )
        .into());
    }
    Ok(())
}

async fn delete_rows(pg: &Pg, topic: &str) -> Res<()> {
    let client = pg.fresh_client().await?;
    let like = format!("{}%", topic.replace('_', "\\_"));
    client
        .execute(
            "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id LIKE $1",
            &[&like],
        )
        .await?;
    client
        .execute(
            "DELETE FROM pillow_retry_pillowerror WHERE pillow LIKE $1",
            &[&like],
        )
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child: one phase, timed, with RSS sampling.

fn child(spec: &str) -> ExitCode {
    let result = serde_json::from_str::<Phase>(spec)
        .map_err(BoxError::from)
        .and_then(|phase| run_phase(&phase));
    match result {
        Ok(outcome) => match serde_json::to_string(&outcome) {
            Ok(json) => {
                println!("{RESULT_PREFIX}{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("engine bench phase: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("engine bench phase failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_phase(phase: &Phase) -> Res<Outcome> {
    let rt = runtime()?;
    let sampler = RssSampler::start();
    let start_rss_kib = sampler.start_kib;
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    let changes = match phase.mode {
        Mode::Raw => raw(phase, false)?,
        Mode::RawParse => raw(phase, true)?,
        Mode::RawStream => rt.block_on(raw_stream(phase))?,
        Mode::Feed => rt.block_on(feed_only(phase))?,
        Mode::Pillow { chunk } => rt.block_on(pillow(phase, chunk))?,
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds() - start_cpu;
    let peak_rss_kib = sampler.stop();
    drop(rt);
    Ok(Outcome {
        changes,
        seconds,
        cpu_seconds,
        start_rss_kib,
        peak_rss_kib,
    })
}

/// Generous bound on a phase, so that a lost message fails the bench instead of hanging it.
fn deadline(phase: &Phase) -> Instant {
    Instant::now() + Duration::from_secs(120 + phase.changes / 2_000)
}

/// Extra librdkafka consumer settings for every mode, from `PILLOWTOP_BENCH_KAFKA_EXTRA`
/// (`key=value,key=value`), e.g. `fetch.queue.backoff.ms=10` to try a setting on both sides.
fn kafka_extra() -> Vec<(String, String)> {
    env_or("PILLOWTOP_BENCH_KAFKA_EXTRA", "")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn raw_config(phase: &Phase) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &phase.kafka)
        .set("group.id", format!("{}-raw", phase.topic))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error")
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("fetch.wait.max.ms", "100")
        // As KafkaFeed sets it: a consumer slower than fetching (raw + parse) must not idle for
        // librdkafka's default 1 s backoff, or the reference rows are unfairly slow.
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in kafka_extra() {
        cfg.set(k, v);
    }
    cfg
}

fn assignment(phase: &Phase) -> Res<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..phase.partitions {
        tpl.add_partition_offset(&phase.topic, p, Offset::Offset(0))?;
    }
    Ok(tpl)
}

fn raw(phase: &Phase, parse: bool) -> Res<u64> {
    let consumer: BaseConsumer = raw_config(phase).create()?;
    consumer.assign(&assignment(phase)?)?;
    let deadline = deadline(phase);
    let mut count = 0;
    while count < phase.changes {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                count += 1;
                if parse {
                    let payload = m.payload().unwrap_or_default();
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    let change =
                        Change::from_message(m.topic(), m.partition(), m.offset(), payload)
                            .map_err(|e| format!("message {count}: {e}"))?;
                    black_box((change, key));
                } else {
                    black_box(m.payload_len());
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None if Instant::now() > deadline => {
                return Err(format!("only {count} of {} messages arrived", phase.changes).into())
            }
            None => {}
        }
    }
    Ok(count)
}

async fn raw_stream(phase: &Phase) -> Res<u64> {
    let consumer: StreamConsumer = raw_config(phase).create()?;
    consumer.assign(&assignment(phase)?)?;
    let deadline = tokio::time::Instant::from_std(deadline(phase));
    let mut count = 0;
    while count < phase.changes {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| format!("only {count} of {} messages arrived", phase.changes))??;
        black_box(m.payload_len());
        count += 1;
    }
    Ok(count)
}

fn feed_options(phase: &Phase) -> KafkaFeedOptions {
    let mut options = KafkaFeedOptions::new(&phase.kafka, format!("{}-feed", phase.topic));
    options.idle_timeout = IDLE_TIMEOUT;
    options.client_config =
        pillowtop::feed::kafka::KafkaClientConfig::from_pairs(kafka_extra()).expect("properties");
    options
}

async fn feed_only(phase: &Phase) -> Res<u64> {
    let mut feed = KafkaFeed::new(std::slice::from_ref(&phase.topic), feed_options(phase))?;
    let positions: Vec<(TopicPartition, i64)> = (0..phase.partitions)
        .map(|p| (TopicPartition::new(phase.topic.clone(), p), 0))
        .collect();
    feed.assign(&positions).await?;
    let deadline = deadline(phase);
    let mut count = 0;
    while count < phase.changes {
        match feed.next().await? {
            Some(FeedItem::Change(c)) => {
                black_box(c);
                count += 1;
            }
            Some(FeedItem::Tick) if Instant::now() > deadline => {
                return Err(format!("only {count} of {} changes arrived", phase.changes).into())
            }
            Some(FeedItem::Tick) => {}
            other => return Err(format!("unexpected feed item {other:?}").into()),
        }
    }
    Ok(count)
}

async fn pillow(phase: &Phase, chunk: usize) -> Res<u64> {
    let pg = Arc::new(Pg::new(&phase.postgres));
    let feed = KafkaFeed::new(std::slice::from_ref(&phase.topic), feed_options(phase))?;
    let mut config = PillowConfig::new(&phase.checkpoint_id, &phase.checkpoint_id);
    config.chunk_size = chunk;
    config.checkpoint_frequency = std::env::var("PILLOWTOP_BENCH_CKPT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHECKPOINT_FREQUENCY);
    config.max_changes = Some(phase.changes);
    let mut pillow = Pillow::new(
        config,
        Box::new(feed),
        vec![Box::new(NoopProcessor { batch: true })],
        Arc::new(PostgresCheckpointStore::new(Arc::clone(&pg))),
        Arc::new(PostgresErrorStore::new(pg)),
    );
    // `PILLOWTOP_BENCH_METRICS=memory` records as `metrics_port` does (a `MemoryRecorder`),
    // `=buffered` as a Python metrics sink does; unset: no recorder (the default of a pillow).
    match std::env::var("PILLOWTOP_BENCH_METRICS").as_deref() {
        Ok("memory") => {
            pillow = pillow.with_metrics(Arc::new(pillowtop::metrics::MemoryRecorder::new()));
        }
        Ok("buffered") => {
            let b = Arc::new(pillowtop::metrics::Buffered::new(10_000));
            let drain = Arc::clone(&b);
            // Drained every 100 ms, as the Python lane does.
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    black_box(drain.take());
                }
            });
            pillow = pillow.with_metrics(b);
        }
        _ => {}
    }
    let shutdown = CancellationToken::new();
    let watchdog = {
        let shutdown = shutdown.clone();
        let at = tokio::time::Instant::from_std(deadline(phase));
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            shutdown.cancel();
        })
    };
    let summary = pillow.run(&shutdown).await;
    watchdog.abort();
    let summary = summary?;
    if summary.stop_reason != StopReason::MaxChanges || summary.changes != phase.changes {
        return Err(format!(
            "pillow stopped ({:?}) after {} of {} changes",
            summary.stop_reason, summary.changes, phase.changes
        )
        .into());
    }
    Ok(summary.changes)
}

/// Samples this process's VmRSS every 50 ms on a background thread.
struct RssSampler {
    start_kib: u64,
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start() -> Self {
        let start_kib = status_kib("VmRSS:");
        let peak_kib = Arc::new(AtomicU64::new(start_kib));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (Arc::clone(&peak_kib), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kib("VmRSS:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            start_kib,
            peak_kib,
            stop,
            thread,
        }
    }

    /// Stops sampling; returns the peak (also counting VmHWM, the kernel's exact high-water mark).
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak_kib
            .load(Ordering::Relaxed)
            .max(status_kib("VmRSS:"))
            .max(status_kib("VmHWM:"))
    }
}

/// User + system CPU time of this process so far (/proc/self/stat, in USER_HZ = 100 ticks).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name in parentheses; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A `kB` field of /proc/self/status (0 where there is no such file).
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
