//! A slow processor under a steady input rate above its capacity (issue 14's benchmark): the
//! time lag of the fast processor beside it, and the work done per second, with one shared
//! checkpoint (CommCare's model: every chunk goes through both processors in turn) and with
//! independent processors (`processor_checkpoints = "independent"`: one lane each).
//!
//! ```text
//! source .services/env   # TEST_KAFKA_BOOTSTRAP, TEST_POSTGRES_URL
//! cargo bench --features testing --bench lanes
//! PILLOWTOP_BENCH_SECONDS=4 cargo bench --features testing --bench lanes   # CI smoke
//! PILLOWTOP_BENCH_RATE=3000   # changes/s published (default 2000)
//! ```
//!
//! Each mode gets a fresh 4-partition topic and pillow. The pillow runs CommCare's default chunk
//! size (10); `fast` records, for each change, the time from its `publish_timestamp` to the
//! moment it handles it; `slow` waits 10 ms per chunk (a processor bound by a remote service:
//! about 900 changes/s at chunk 10). A warm-up change is awaited first (group join, topic
//! assignment), then a producer publishes `RATE` changes/s in batches every 100 ms for `SECONDS`,
//! and the pillow is stopped right after the last batch: what each processor handled in that
//! window is its work. CPU is user + system of this process and of each server over the window;
//! RSS is this process's, sampled every 50 ms: the largest in each quarter of the window (a lane
//! falling behind must not grow it without bound). `PILLOWTOP_BENCH_SECONDS` sets the window
//! (20 s), `PILLOWTOP_BENCH_MODES` the modes (`shared,own,independent,tasks`).
//!
//! The slow processor waits without using the CPU; with `PILLOWTOP_BENCH_SLOW=cpu` it computes
//! for those 10 ms instead (a processor bound by its own CPU, or by a blocking call). Mode
//! `tasks` runs each lane on a tokio task of its own, as `pillowtop run` does; the other
//! independent modes poll every lane from the one task that drives the pillow (as the Python
//! front must), so a slow processor that computes holds the others while it does.

// A benchmark reports by printing: its table on stdout, skips and failures on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/cpu.rs"]
mod cpu;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pillowtop::assembly::{PillowSpec, ProcessorSpec, DEFAULT_POSTGRES_OUTAGE_BUDGET};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::kafka::{ChangeProducer, KafkaAdmin, KafkaFeedOptions};
use pillowtop::pillow::{PillowConfig, ProcessorCheckpoints};
use pillowtop::processor::{ChunkOutcome, Processor, ProcessorFailure};
use pillowtop::testing::unique_name;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const PARTITIONS: i32 = 4;
const CHUNK: usize = 10;
const SLOW_PER_CHUNK: Duration = Duration::from_millis(10);
const BATCH_EVERY_MS: u64 = 100;
const BATCH_EVERY: Duration = Duration::from_millis(BATCH_EVERY_MS);
const WARMUP_ID: &str = "warmup";

/// Records the time lag of every measured change it handles (ids other than the warm-up's).
struct Fast {
    lags_ms: Arc<Mutex<Vec<f64>>>,
    handled: Arc<AtomicU64>,
    warm: Arc<AtomicBool>,
}

impl Fast {
    fn see(&self, changes: &[Change]) {
        let now = chrono::Utc::now();
        let mut lags = self.lags_ms.lock().expect("lags");
        for c in changes {
            if c.id == WARMUP_ID {
                self.warm.store(true, Ordering::SeqCst);
                continue;
            }
            if let Some(t) = c.metadata.publish_timestamp {
                #[allow(clippy::cast_precision_loss)]
                lags.push((now - t).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
            }
            self.handled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Processor for Fast {
    fn name(&self) -> &str {
        "fast"
    }
    fn supports_batch_processing(&self) -> bool {
        true
    }
    async fn process_change(
        &mut self,
        c: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        self.see(std::slice::from_ref(c));
        Ok(Ok(()))
    }
    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        self.see(changes);
        Ok(Ok(ChunkOutcome::default()))
    }
}

/// Waits `SLOW_PER_CHUNK` per chunk (a processor bound by a remote service), or computes for
/// as long with `cpu` (one bound by its own CPU).
struct Slow {
    handled: Arc<AtomicU64>,
    cpu: bool,
}

impl Slow {
    async fn take_time(&self) {
        if self.cpu {
            let until = Instant::now() + SLOW_PER_CHUNK;
            let mut x = 0u64;
            while Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        } else {
            tokio::time::sleep(SLOW_PER_CHUNK).await;
        }
    }
}

#[async_trait]
impl Processor for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn supports_batch_processing(&self) -> bool {
        true
    }
    async fn process_change(
        &mut self,
        c: &mut Change,
    ) -> pillowtop::Result<Result<(), ProcessorFailure>> {
        self.take_time().await;
        if c.id != WARMUP_ID {
            self.handled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(()))
    }
    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> pillowtop::Result<Result<ChunkOutcome, ProcessorFailure>> {
        self.take_time().await;
        let n = changes.iter().filter(|c| c.id != WARMUP_ID).count();
        self.handled.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Ok(ChunkOutcome::default()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Shared,
    /// Independent processors, each lane with its own consumer (`lane_max_lead_changes = 0`).
    OwnReads,
    /// Independent processors on one shared read with a bounded lead (the default).
    Independent,
    /// The same, each lane on a tokio task of its own (`pillowtop run`).
    Tasks,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Shared => "one shared checkpoint (CommCare's)",
            Mode::OwnReads => "independent, a consumer per lane",
            Mode::Independent => "independent, one shared read, one task",
            Mode::Tasks => "independent, shared read, lane tasks",
        }
    }
}

struct Outcome {
    mode: Mode,
    published: u64,
    seconds: f64,
    fast: u64,
    slow: u64,
    /// The fast processor's time lags (ms), sorted.
    lags_ms: Vec<f64>,
    cpu: cpu::Sample,
    /// The largest RSS sampled in each quarter of the window.
    rss_quarters_kib: [u64; 4],
}

/// `PILLOWTOP_BENCH_SLOW=cpu`: the slow processor computes instead of waiting.
fn slow_on_cpu() -> bool {
    std::env::var("PILLOWTOP_BENCH_SLOW").is_ok_and(|v| v == "cpu")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn run_mode(
    mode: Mode,
    kafka: &str,
    postgres: &str,
    rate: u64,
    seconds: u64,
    probe: &cpu::Probe,
) -> Res<Outcome> {
    let topic = unique_name("bench-lanes");
    let admin = KafkaAdmin::new(kafka)?;
    admin.create_topic(&topic, PARTITIONS, &[]).await?;
    let result = measure(mode, kafka, postgres, &topic, rate, seconds, probe).await;
    if let Err(e) = admin.delete_topics(&[topic.as_str()]).await {
        eprintln!("lanes bench: could not delete topic {topic}: {e}");
    }
    result
}

#[allow(clippy::too_many_lines)]
async fn measure(
    mode: Mode,
    kafka: &str,
    postgres: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    probe: &cpu::Probe,
) -> Res<Outcome> {
    let id = unique_name("bench-lanes");
    let lags_ms = Arc::new(Mutex::new(Vec::with_capacity(
        usize::try_from(rate * seconds).unwrap_or(0),
    )));
    let fast_handled = Arc::new(AtomicU64::new(0));
    let slow_handled = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(AtomicBool::new(false));
    let mut config = PillowConfig::new(&id, &id);
    config.chunk_size = CHUNK;
    config.processor_checkpoints = match mode {
        Mode::Shared => ProcessorCheckpoints::Shared,
        Mode::OwnReads | Mode::Independent | Mode::Tasks => ProcessorCheckpoints::Independent,
    };
    config.lanes_on_own_tasks = mode == Mode::Tasks;
    if mode == Mode::OwnReads {
        config.lane_max_lead_changes = 0;
    }
    let mut feed = KafkaFeedOptions::new(kafka, &id);
    feed.idle_timeout = Duration::from_millis(200);
    let spec = PillowSpec {
        config,
        topics: vec![topic.to_owned()],
        feed,
        postgres_url: postgres.to_owned(),
        postgres_outage_budget: DEFAULT_POSTGRES_OUTAGE_BUDGET,
        processors: vec![
            ProcessorSpec::Ready(Box::new(Fast {
                lags_ms: lags_ms.clone(),
                handled: fast_handled.clone(),
                warm: warm.clone(),
            })),
            ProcessorSpec::Ready(Box::new(Slow {
                handled: slow_handled.clone(),
                cpu: slow_on_cpu(),
            })),
        ],
        document_stores: Vec::new(),
    };
    let stop = CancellationToken::new();
    let pillow = {
        let stop = stop.clone();
        tokio::spawn(async move { spec.run(&stop, |p| p).await })
    };

    let producer = ChangeProducer::new(kafka)?;
    producer
        .send_changes(topic, [ChangeMeta::new(WARMUP_ID, "sql", "bench")])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !warm.load(Ordering::SeqCst) {
        if Instant::now() > deadline || pillow.is_finished() {
            stop.cancel();
            let why = match pillow.await {
                Ok(Err(e)) => e.to_string(),
                _ => "no error".into(),
            };
            return Err(format!(
                "{}: the warm-up change was not handled in 60 s ({why})",
                mode.label()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // RSS sampler: the window's first and last quarters.
    let sampling = Arc::new(AtomicBool::new(true));
    let quarter = Duration::from_secs_f64(seconds as f64 / 4.0);
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut quarters = [0u64; 4];
            while sampling.load(Ordering::Relaxed) {
                let q = usize::try_from(start.elapsed().as_nanos() / quarter.as_nanos().max(1))
                    .unwrap_or(3);
                let rss = rss_kib();
                let q = q.min(3);
                quarters[q] = quarters[q].max(rss);
                std::thread::sleep(Duration::from_millis(50));
            }
            quarters
        })
    };

    let cpu_start = probe.sample();
    let start = Instant::now();
    let per_batch = (rate * BATCH_EVERY_MS / 1000).max(1);
    let batches = seconds * 1000 / BATCH_EVERY_MS;
    let mut published = 0u64;
    let mut n = 0u64;
    for b in 0..batches {
        let due = start + BATCH_EVERY * u32::try_from(b)?;
        tokio::time::sleep_until(due.into()).await;
        let metas = (0..per_batch).map(|_| {
            n += 1;
            ChangeMeta::new(format!("d{n}"), "sql", "bench")
        });
        published += producer
            .send_changes(topic, metas.collect::<Vec<_>>())
            .await?;
    }
    tokio::time::sleep_until((start + BATCH_EVERY * u32::try_from(batches)?).into()).await;
    let fast = fast_handled.load(Ordering::SeqCst);
    let slow = slow_handled.load(Ordering::SeqCst);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_used = probe.sample() - cpu_start;
    sampling.store(false, Ordering::Relaxed);
    let rss_quarters = sampler.join().map_err(|_| "the RSS sampler panicked")?;
    stop.cancel();
    pillow.await??;

    let mut lags = std::mem::take(&mut *lags_ms.lock().expect("lags"));
    lags.sort_by(f64::total_cmp);
    Ok(Outcome {
        mode,
        published,
        seconds: elapsed,
        fast,
        slow,
        lags_ms: lags,
        cpu: cpu_used,
        rss_quarters_kib: rss_quarters,
    })
}

#[allow(clippy::cast_precision_loss)]
fn report(rate: u64, seconds: u64, outcomes: &[Outcome]) {
    println!(
        "\nlanes bench: {rate} changes/s published for {seconds} s into {PARTITIONS} partitions; chunk {CHUNK}; \
         fast = records its time lag, slow = {} {} ms per chunk",
        if slow_on_cpu() { "computes" } else { "waits" },
        SLOW_PER_CHUNK.as_millis()
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>12}",
        "mode",
        "fast/s",
        "slow/s",
        "work/s",
        "lag p50",
        "lag p99",
        "lag max",
        "fast done",
        "CPU-s/M",
        "RSS MiB q1→q2→q3→q4"
    );
    for o in outcomes {
        let fast = o.fast as f64 / o.seconds;
        let slow = o.slow as f64 / o.seconds;
        println!(
            "{:<36} {:>9.0} {:>9.0} {:>9.0} {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>9.1}% {:>9.1} {}",
            o.mode.label(),
            fast,
            slow,
            fast + slow,
            percentile(&o.lags_ms, 0.5),
            percentile(&o.lags_ms, 0.99),
            percentile(&o.lags_ms, 1.0),
            100.0 * o.fast as f64 / o.published.max(1) as f64,
            o.cpu.total() / (o.published.max(1) as f64 / 1e6),
            o.rss_quarters_kib
                .iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join("→"),
        );
    }
    println!(
        "\nfast/s, slow/s: changes each processor handled in the window / its length; work/s = their sum. \
         lag: now - publish_timestamp when `fast` handles a change. fast done: the share of the changes published \
         in the window that the fast processor handled within it. CPU-s/M: user + system of this process and the \
         servers ({}) per million changes published.",
        cpu::NAMES.join(", ")
    );
    for o in outcomes {
        let names = cpu::NAMES
            .iter()
            .zip(o.cpu.0)
            .map(|(n, s)| format!("{n} {s:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("  {}: CPU s {names}", o.mode.label());
    }
    let find = |m: Mode| outcomes.iter().find(|o| o.mode == m);
    let cpu_m = |o: &Outcome| o.cpu.total() / (o.published.max(1) as f64 / 1e6);
    let p99 = |o: &Outcome| percentile(&o.lags_ms, 0.99);
    let work = |o: &Outcome| (o.fast + o.slow) as f64 / o.seconds;
    if let (Some(own), Some(independent)) = (find(Mode::OwnReads), find(Mode::Independent)) {
        println!(
            "shared read vs a consumer per lane: CPU-s/M {:.1} vs {:.1} ({:.2}x); broker CPU s {:.2} vs {:.2}",
            cpu_m(independent),
            cpu_m(own),
            cpu_m(independent) / cpu_m(own).max(1e-9),
            independent.cpu.0[1],
            own.cpu.0[1],
        );
    }
    if let Some(shared) = find(Mode::Shared) {
        for o in outcomes.iter().filter(|o| o.mode != Mode::Shared) {
            println!(
                "{} vs shared: fast lag p99 {:.0} ms vs {:.0} ms ({:.1}x lower); work/s {:.2}x",
                o.mode.label(),
                p99(o),
                p99(shared),
                p99(shared) / p99(o).max(1e-3),
                work(o) / work(shared).max(1e-9),
            );
        }
    }
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("lanes bench: skipped outside `cargo bench` (no --bench argument)");
        return ExitCode::SUCCESS;
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(kafka), Some(postgres)) = (env("TEST_KAFKA_BOOTSTRAP"), env("TEST_POSTGRES_URL"))
    else {
        if std::env::var_os("CI").is_some() {
            eprintln!("lanes bench: TEST_KAFKA_BOOTSTRAP and TEST_POSTGRES_URL must be set in CI (source the env file written by tests/services/up)");
            return ExitCode::FAILURE;
        }
        println!("lanes bench skipped: TEST_KAFKA_BOOTSTRAP / TEST_POSTGRES_URL not set (start tests/services/up and source its env file)");
        return ExitCode::SUCCESS;
    };
    let number = |k: &str, default: u64| env(k).and_then(|v| v.parse().ok()).unwrap_or(default);
    let rate = number("PILLOWTOP_BENCH_RATE", 2000);
    let seconds = number("PILLOWTOP_BENCH_SECONDS", 20).max(1);
    // PILLOWTOP_BENCH_MODES=shared,own,independent,tasks (the default: all four) picks modes, e.g.
    // one long run of the shared read alone to see its memory over minutes.
    let modes: Vec<Mode> = env("PILLOWTOP_BENCH_MODES")
        .unwrap_or_else(|| "shared,own,independent,tasks".into())
        .split(',')
        .filter_map(|m| match m.trim() {
            "shared" => Some(Mode::Shared),
            "own" => Some(Mode::OwnReads),
            "independent" => Some(Mode::Independent),
            "tasks" => Some(Mode::Tasks),
            _ => None,
        })
        .collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lanes bench: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let probe = cpu::Probe::new();
    println!("lanes bench: CPU of this process and {}", probe.describe());
    let run = rt.block_on(async {
        let mut outcomes = Vec::new();
        for mode in modes {
            outcomes.push(run_mode(mode, &kafka, &postgres, rate, seconds, &probe).await?);
        }
        Res::Ok(outcomes)
    });
    match run {
        Ok(outcomes) => {
            report(rate, seconds, &outcomes);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lanes bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
