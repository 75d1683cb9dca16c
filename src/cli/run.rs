//! `pillowtop run --config FILE`: a pure-Rust pillow described by a TOML file, until SIGTERM or
//! Ctrl-C (a graceful stop), `--until-idle` or `--max-changes`; with a progress line on stderr
//! and, with `--metrics-port`, the engine's metrics in Prometheus format. Also the [`Progress`]
//! counter the demo's progress line reads.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{PillowFile, RunOptions};
use crate::metrics::{self, Recorder, Tags};
use tokio_util::sync::CancellationToken;

use super::ui::Ui;

/// Exit status of an invalid config file or layout.
const INVALID_USAGE: u8 = 2;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
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
    /// Run this many virtual workers (at least 2) in this process, on one runtime: each its own
    /// pillow with its own consumer, partitions and checkpoint rows, numbered as CommCare's
    /// `run_ptop --gevent-workers` numbers them.
    #[arg(long)]
    workers: Option<u32>,
    /// An extra librdkafka property for every Kafka client of the pillow, over the file's
    /// `[kafka] config` (repeatable), e.g. `--kafka-config security.protocol=SSL`.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
}

/// Counts handled changes and failures, and keeps the last chunk lag, from a pillow's
/// metrics: the progress lines of `run` and `demo`.
#[derive(Default)]
pub struct Progress {
    pub changes: AtomicU64,
    pub failed: AtomicU64,
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

pub async fn progress_line(p: Arc<Progress>) {
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
// The handler runs on a tokio task, away from the command's `Ui`: it writes to stderr itself.
#[allow(clippy::print_stderr)]
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

/// The pillow's definition, or one per virtual worker (`--workers`): the file's layout (with
/// the command line's overrides) expanded by CommCare's formula. The migration process of a
/// dedicated layout runs alone.
fn worker_specs(
    file: &PillowFile,
    options: &RunOptions,
    workers: Option<u32>,
) -> crate::Result<Vec<crate::assembly::PillowSpec>> {
    // Every processor here is Rust's: independent processors run on tasks of their own.
    let on_tasks = |mut spec: crate::assembly::PillowSpec| {
        spec.config.lanes_on_own_tasks = true;
        spec
    };
    let base = on_tasks(file.spec(options)?);
    let Some(w) = workers else {
        return Ok(vec![base]);
    };
    let Some(layouts) = base.config.layout.virtual_workers(w)? else {
        return Ok(vec![base]);
    };
    layouts
        .into_iter()
        .map(|layout| {
            let mut spec = file.spec(&RunOptions {
                process_number: Some(layout.process_num),
                num_processes: Some(layout.num_processes),
                ..options.clone()
            })?;
            spec.config.layout = layout;
            Ok(on_tasks(spec))
        })
        .collect()
}

/// Runs every definition on this runtime until all have stopped; a worker that fails stops
/// the others (after their final checkpoints) and its error is returned, naming it. The
/// summaries of several workers are added up.
async fn run_all(
    specs: Vec<crate::assembly::PillowSpec>,
    token: &CancellationToken,
    recorder: Arc<dyn Recorder>,
    ui: &dyn Ui,
) -> crate::Result<crate::pillow::RunSummary> {
    if specs.len() == 1 {
        let spec = specs.into_iter().next().expect("one spec");
        return spec.run(token, |p| p.with_metrics(recorder.clone())).await;
    }
    ui.err(&format!(
        "{} virtual workers: {}",
        specs.len(),
        specs
            .iter()
            .map(|s| format!(
                "{} of {}",
                s.config.layout.process_num, s.config.layout.num_processes
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        let layout = spec.config.layout;
        let (token, recorder) = (token.clone(), recorder.clone());
        tasks.spawn(async move {
            let outcome = spec.run(&token, |p| p.with_metrics(recorder.clone())).await;
            if outcome.is_err() {
                token.cancel();
            }
            (layout, outcome)
        });
    }
    let mut total = crate::pillow::RunSummary::nothing(crate::pillow::StopReason::Shutdown);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let (layout, outcome) = joined.map_err(|e| {
            crate::error::ProcessError::Other(format!("a virtual worker panicked: {e}"))
        })?;
        match outcome {
            Ok(s) => {
                total.stop_reason = s.stop_reason;
                total.changes += s.changes;
                total.failed += s.failed;
                total.invalid += s.invalid;
                total.checkpoints += s.checkpoints;
                total.partitions.extend(s.partitions);
            }
            Err(e) if failure.is_none() => {
                ui.err(&format!(
                    "virtual worker {} of {} failed: {e}; stopping the others after their final checkpoint",
                    layout.process_num, layout.num_processes
                ));
                failure = Some(e);
            }
            Err(e) => ui.err(&format!(
                "virtual worker {} of {} failed too: {e}",
                layout.process_num, layout.num_processes
            )),
        }
    }
    failure.map_or(Ok(total), Err)
}

pub async fn exec(args: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let file = match PillowFile::load(&args.config) {
        Ok(f) => f,
        Err(e) => {
            ui.err(&format!("error: {e}"));
            return Ok(INVALID_USAGE);
        }
    };
    let kafka_config = match crate::feed::kafka::KafkaClientConfig::from_args(&args.kafka_config) {
        Ok(c) => c,
        Err(e) => {
            ui.err(&format!("error: {e}"));
            return Ok(INVALID_USAGE);
        }
    };
    let options = RunOptions {
        process_number: args.process_number,
        num_processes: args.num_processes,
        until_idle: args.until_idle,
        max_changes: args.max_changes,
        kafka_config,
    };
    let definitions = match worker_specs(&file, &options, args.workers) {
        Ok(s) => s,
        Err(e) => {
            ui.err(&format!("error: {e}"));
            return Ok(INVALID_USAGE);
        }
    };
    // Before anything connects: a stop request ends the start-up's waits too.
    let token = CancellationToken::new();
    install_signal_handlers(token.clone())?;
    let progress = Arc::new(Progress::default());
    let memory = Arc::new(crate::metrics::MemoryRecorder::new());
    let recorder = Arc::new(crate::metrics::Fanout(vec![
        progress.clone(),
        memory.clone(),
    ]));
    if let Some(port) = args.metrics_port {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on port {port} for --metrics-port: {e}"))?;
        ui.err(&format!(
            "serving metrics at http://{}/metrics",
            listener.local_addr()?
        ));
        let memory = memory.clone();
        tokio::spawn(crate::ops::prometheus::serve(
            listener,
            move || crate::ops::prometheus::render_recorder(&memory),
            token.clone(),
        ));
    }
    ui.err(&format!(
        "running pillow {} (checkpoint {}, topics {}, {} processor(s), chunk size {})",
        file.name,
        file.checkpoint_id,
        file.topics.join(","),
        file.processors.len(),
        file.chunk_size
    ));
    let ticker = (!args.quiet).then(|| tokio::spawn(progress_line(progress.clone())));
    let started = Instant::now();
    let summary = run_all(definitions, &token, recorder, ui).await;
    if let Some(t) = ticker {
        t.abort();
    }
    let s = summary?;
    let secs = started.elapsed().as_secs_f64();
    ui.err(&format!(
        "\npillow {} stopped ({:?}): {} changes ({} failed, {} invalid), {} checkpoints in {secs:.2}s, {:.0} changes/s",
        file.name,
        s.stop_reason,
        s.changes,
        s.failed,
        s.invalid,
        s.checkpoints,
        s.changes as f64 / secs.max(0.001)
    ));
    Ok(0)
}
