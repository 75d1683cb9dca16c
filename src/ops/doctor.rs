//! `pillowtop doctor CHECKPOINT_ID`: which processor holds a pillow back, how long catching up
//! takes with and without a split, and the commands that split it.
//!
//! The doctor samples twice, `interval` apart: the checkpoint rows and Kafka's high-water marks
//! (through [`super::lag::collect`], so each independent processor's own rows too) and the
//! liveness rows, whose `processor_stats` carry what each processor has cost the live processes
//! (seconds in its calls, sinks' waits for their writes included, and changes). From them:
//!
//! * the input rate (how fast the high-water marks grow) and the pillow's rate (how fast its
//!   rows move), its backlog and time lag;
//! * per processor its seconds per change and share of the pillow's time (shared checkpoint,
//!   CommCare's model), or its own backlog and rate (`processor_checkpoints = "independent"`);
//! * the verdict: keeping up, catching up, falling behind, or stalled (a backlog and no move);
//! * the processor that holds the pillow back: the costliest one (shared), the one with the
//!   largest own backlog (independent);
//! * the estimates: catch-up time now; with the processor split out, the catch-up time of the
//!   others (their rate grows by the time the processor no longer takes) and of the processor in
//!   its own pillow with the suggested number of processes (the fewest that keep up with 1.25×
//!   the input rate, at most one per partition).
//!
//! The estimates assume what a busy pillow shows: its processes are bound by their processors'
//! time. A pillow that keeps up is not busy, so no estimate is made then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::kafka::KafkaInfo;
use super::lag::{self, LagRow};
use super::Result;
use crate::pg::Pg;
use crate::store::liveness::postgres::PostgresLivenessStore;
use crate::store::liveness::{LivenessStore, ProcessRow, ProcessorStats};

/// The input rate a split pillow must keep up with, as a multiple of the measured one.
pub const HEADROOM: f64 = 1.25;

/// A time lag (age of the oldest unprocessed change) at or below this is "keeping up" when the
/// backlog is not growing.
pub const DEFAULT_MAX_TIME_LAG: Duration = Duration::from_secs(60);

/// How a pillow is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No backlog, or a small time lag that does not grow.
    KeepingUp,
    /// A backlog that shrinks.
    CatchingUp,
    /// A backlog that grows: the pillow reads slower than changes arrive.
    FallingBehind,
    /// A backlog and no progress at all during the interval.
    Stalled,
    /// No checkpoint rows yet.
    NeverRun,
}

impl Verdict {
    /// Whether an operator should act.
    pub fn is_finding(self) -> bool {
        matches!(self, Self::FallingBehind | Self::Stalled | Self::CatchingUp)
    }

    fn text(self) -> &'static str {
        match self {
            Self::KeepingUp => "keeping up",
            Self::CatchingUp => "catching up",
            Self::FallingBehind => "falling behind",
            Self::Stalled => "stalled",
            Self::NeverRun => "never run",
        }
    }
}

/// One processor of the pillow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessorReport {
    pub processor: String,
    /// It has its own checkpoint rows (independent processors).
    pub own_rows: bool,
    /// Its own backlog (own rows only).
    pub backlog: Option<i64>,
    /// Its own progress in changes/s over the interval (own rows only).
    pub rate: Option<f64>,
    pub time_lag_seconds: Option<i64>,
    /// Seconds per change over the live processes (from their heartbeats).
    pub seconds_per_change: Option<f64>,
    /// Its share of the time the pillow's processors took, 0..=1.
    pub share: Option<f64>,
    /// Its own backlog did not move during the interval (own rows only).
    pub stalled: bool,
    /// Its own catch-up time at the measured rates; `None` when it does not catch up.
    pub catch_up_seconds: Option<f64>,
}

/// The processor moved to its own pillow, and what that would give.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitAdvice {
    pub processor: String,
    /// The suggested checkpoint id of the new pillow.
    pub target: String,
    /// Processes for the new pillow (`--num-processes`).
    pub num_processes: u32,
    /// Its estimated rate with them, changes/s.
    pub estimated_rate: Option<f64>,
    /// The other processors' catch-up time once it is gone (shared checkpoint only).
    pub others_catch_up_seconds: Option<f64>,
    /// Its own catch-up time in the new pillow.
    pub processor_catch_up_seconds: Option<f64>,
    /// Even one process per partition would not keep up: the topic needs more partitions.
    pub needs_more_partitions: bool,
    /// The commands, in order.
    pub commands: Vec<String>,
}

/// What the doctor found for one pillow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    pub checkpoint_id: String,
    pub pillow_name: String,
    /// `shared` (one checkpoint, CommCare's) or `independent` (a checkpoint per processor).
    pub mode: &'static str,
    pub interval_seconds: f64,
    pub partitions: usize,
    /// Live processes of the pillow.
    pub processes: usize,
    /// Changes published per second during the interval.
    pub input_rate: f64,
    /// The pillow's backlog (its own rows) at the end of the interval.
    pub backlog: i64,
    /// The pillow's progress in changes/s over the interval.
    pub rate: f64,
    pub time_lag_seconds: Option<i64>,
    /// At the measured rates; `None` when it does not catch up.
    pub catch_up_seconds: Option<f64>,
    pub verdict: Verdict,
    pub processors: Vec<ProcessorReport>,
    /// The processor that holds the pillow back, when one does.
    pub holder: Option<String>,
    pub split: Option<SplitAdvice>,
    /// What to do, in words.
    pub advice: Vec<String>,
}

/// One look at the pillow.
#[derive(Debug, Clone)]
pub struct Sample {
    pub rows: Vec<LagRow>,
    pub processes: Vec<ProcessRow>,
}

/// How commands are spelled in the advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommandStyle {
    /// `pillowtop split ...` with checkpoint ids.
    #[default]
    Cli,
    /// `python manage.py split_pillow_checkpoints ...` with pillow names.
    Django,
}

/// Options of [`diagnose`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub max_time_lag: Duration,
    pub style: CommandStyle,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_time_lag: DEFAULT_MAX_TIME_LAG,
            style: CommandStyle::Cli,
        }
    }
}

/// Samples `checkpoint_id` twice, `interval` apart.
pub async fn sample_twice(
    pg: &Arc<Pg>,
    kafka: &KafkaInfo,
    checkpoint_id: &str,
    interval: Duration,
) -> Result<(Sample, Sample, Duration)> {
    let first = sample(pg, kafka, checkpoint_id).await?;
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(interval).await;
    let second = sample(pg, kafka, checkpoint_id).await?;
    Ok((first, second, t0.elapsed()))
}

async fn sample(pg: &Arc<Pg>, kafka: &KafkaInfo, checkpoint_id: &str) -> Result<Sample> {
    let rows = lag::collect(pg, kafka, Some(&[checkpoint_id.to_owned()])).await?;
    let processes = PostgresLivenessStore::new(pg.clone())
        .list(None)
        .await?
        .into_iter()
        .filter(|p| p.checkpoint_id == checkpoint_id)
        .collect();
    Ok(Sample { rows, processes })
}

/// Samples `checkpoint_id` twice and diagnoses it; `name` is the pillow's name when the caller
/// knows it (else the name its processes registered, else the checkpoint id).
pub async fn examine(
    pg: &Arc<Pg>,
    kafka: &KafkaInfo,
    checkpoint_id: &str,
    name: Option<&str>,
    interval: Duration,
    options: Options,
) -> Result<Diagnosis> {
    let (first, second, dt) = sample_twice(pg, kafka, checkpoint_id, interval).await?;
    Ok(diagnose(checkpoint_id, &first, &second, dt, options, name))
}

/// Sums of one checkpoint's rows (the pillow's, or one processor's).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    offset: i64,
    high: i64,
    backlog: i64,
    time_lag: Option<i64>,
    partitions: usize,
}

fn sums(rows: &[LagRow], processor: Option<&str>) -> Option<Sums> {
    let mut s = Sums::default();
    for r in rows.iter().filter(|r| r.processor.as_deref() == processor) {
        s.offset += r.offset;
        s.high += r.high.unwrap_or(r.offset);
        s.backlog += r.lag.unwrap_or(0).max(0);
        s.time_lag = s.time_lag.max(r.time_lag_seconds);
        s.partitions += 1;
    }
    (s.partitions > 0).then_some(s)
}

/// Per processor: the stats of the live processes of the second sample, minus those of the same
/// processes (same pid) in the first sample when that leaves changes, else since they started.
fn processor_costs(a: &Sample, b: &Sample) -> BTreeMap<String, (f64, u64)> {
    let sum = |stats: &[(&ProcessRow, &ProcessorStats)]| {
        let mut out: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        for (_, s) in stats {
            for (name, st) in *s {
                let e = out.entry(name.clone()).or_default();
                e.0 += st.seconds;
                e.1 += st.changes;
            }
        }
        out
    };
    let live: Vec<(&ProcessRow, &ProcessorStats)> = b
        .processes
        .iter()
        .filter(|p| p.alive)
        .map(|p| (p, &p.processor_stats))
        .collect();
    let total = sum(&live);
    let before: Vec<(&ProcessRow, &ProcessorStats)> = live
        .iter()
        .filter_map(|(p, _)| {
            a.processes
                .iter()
                .find(|q| q.process_num == p.process_num && q.pid == p.pid)
                .map(|q| (*p, &q.processor_stats))
        })
        .collect();
    let earlier = sum(&before);
    total
        .into_iter()
        .map(|(name, (s, c))| {
            let (s0, c0) = earlier.get(&name).copied().unwrap_or_default();
            if c > c0 && s >= s0 {
                (name, (s - s0, c - c0))
            } else {
                (name, (s, c))
            }
        })
        .collect()
}

fn per_sec(delta: i64, dt: f64) -> f64 {
    if dt > 0.0 {
        delta.max(0) as f64 / dt
    } else {
        0.0
    }
}

fn catch_up(backlog: i64, rate: f64, input: f64) -> Option<f64> {
    if backlog <= 0 {
        return Some(0.0);
    }
    (rate > input).then(|| backlog as f64 / (rate - input))
}

fn verdict(
    before: Option<Sums>,
    after: Sums,
    rate: f64,
    input: f64,
    max_time_lag: Duration,
) -> Verdict {
    let moved = before.is_none_or(|b| after.offset != b.offset);
    let grew = before.is_some_and(|b| after.backlog > b.backlog);
    let small = after
        .time_lag
        .is_none_or(|t| u64::try_from(t).unwrap_or(0) <= max_time_lag.as_secs());
    if after.backlog == 0 {
        Verdict::KeepingUp
    } else if !moved && before.is_some_and(|b| b.backlog > 0) {
        Verdict::Stalled
    } else if small && !grew {
        Verdict::KeepingUp
    } else if rate > input && !grew {
        Verdict::CatchingUp
    } else {
        Verdict::FallingBehind
    }
}

/// The diagnosis of `checkpoint_id` from two samples `dt` apart.
pub fn diagnose(
    checkpoint_id: &str,
    first: &Sample,
    second: &Sample,
    dt: Duration,
    options: Options,
    name: Option<&str>,
) -> Diagnosis {
    let dt_s = dt.as_secs_f64();
    let pillow_name = name
        .map(str::to_owned)
        .or_else(|| {
            second
                .rows
                .iter()
                .chain(&first.rows)
                .map(|r| r.pillow_name.clone())
                .next()
        })
        .or_else(|| second.processes.first().map(|p| p.pillow_name.clone()))
        .unwrap_or_else(|| checkpoint_id.to_owned());
    let own: Vec<String> = {
        let mut v: Vec<String> = second
            .rows
            .iter()
            .filter_map(|r| r.processor.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut diag = Diagnosis {
        checkpoint_id: checkpoint_id.to_owned(),
        pillow_name,
        mode: if own.is_empty() {
            "shared"
        } else {
            "independent"
        },
        interval_seconds: dt_s,
        partitions: 0,
        processes: second.processes.iter().filter(|p| p.alive).count(),
        input_rate: 0.0,
        backlog: 0,
        rate: 0.0,
        time_lag_seconds: None,
        catch_up_seconds: None,
        verdict: Verdict::NeverRun,
        processors: Vec::new(),
        holder: None,
        split: None,
        advice: Vec::new(),
    };
    // The pillow's own rows; in independent mode the pillow may have none yet on a partition
    // its slowest processor has not reached, so its input comes from the widest set of rows.
    let Some(now) = sums(&second.rows, None).or_else(|| {
        own.iter()
            .filter_map(|p| sums(&second.rows, Some(p)))
            .max_by_key(|s| s.partitions)
    }) else {
        diag.advice
            .push("no checkpoint rows yet: the pillow has not run (or not checkpointed)".into());
        return diag;
    };
    // The pace: the pillow's rows, or with independent processors the rows of the one furthest
    // behind (the pillow's rows follow it, rewritten about every second).
    let slowest = own
        .iter()
        .filter_map(|p| sums(&second.rows, Some(p)).map(|s| (p, s)))
        .max_by_key(|(_, s)| (s.backlog, std::cmp::Reverse(s.partitions)))
        .map(|(p, _)| p.as_str());
    let (then, now) = match slowest {
        Some(p) => (
            sums(&first.rows, Some(p)),
            sums(&second.rows, Some(p)).unwrap_or(now),
        ),
        None => (sums(&first.rows, None), now),
    };
    let widest = |rows: &[LagRow]| {
        own.iter()
            .filter_map(|p| sums(rows, Some(p)))
            .chain(sums(rows, None))
            .max_by_key(|s| (s.partitions, s.high))
    };
    diag.partitions = widest(&second.rows).map_or(now.partitions, |s| s.partitions);
    diag.input_rate = match (widest(&first.rows), widest(&second.rows)) {
        (Some(x), Some(y)) if x.partitions == y.partitions => per_sec(y.high - x.high, dt_s),
        _ => 0.0,
    };
    diag.backlog = sums(&second.rows, None).map_or(now.backlog, |s| s.backlog.max(now.backlog));
    diag.time_lag_seconds = now.time_lag;
    diag.rate = then.map_or(0.0, |x| per_sec(now.offset - x.offset, dt_s));
    diag.catch_up_seconds = catch_up(diag.backlog, diag.rate, diag.input_rate);
    diag.verdict = verdict(then, now, diag.rate, diag.input_rate, options.max_time_lag);
    let costs = processor_costs(first, second);
    diag.processors = processor_reports(&own, &costs, first, second, dt_s, diag.input_rate);
    advise(&mut diag, &costs, options.style);
    diag
}

/// A report per processor: every name the rows or the heartbeats know.
fn processor_reports(
    own: &[String],
    costs: &BTreeMap<String, (f64, u64)>,
    first: &Sample,
    second: &Sample,
    dt_s: f64,
    input_rate: f64,
) -> Vec<ProcessorReport> {
    let mut names: Vec<String> = own.to_vec();
    names.extend(costs.keys().cloned());
    names.sort();
    names.dedup();
    let total = total_seconds_per_change(costs);
    let mut out = Vec::new();
    for name in &names {
        let spc = costs
            .get(name)
            .filter(|(_, c)| *c > 0)
            .map(|(s, c)| s / *c as f64);
        let mut r = ProcessorReport {
            processor: name.clone(),
            own_rows: own.contains(name),
            backlog: None,
            rate: None,
            time_lag_seconds: None,
            seconds_per_change: spc,
            share: spc.filter(|_| total > 0.0).map(|s| s / total),
            stalled: false,
            catch_up_seconds: None,
        };
        if let Some(now) = sums(&second.rows, Some(name)) {
            let then = sums(&first.rows, Some(name));
            let rate = then.map_or(0.0, |x| per_sec(now.offset - x.offset, dt_s));
            r.backlog = Some(now.backlog);
            r.rate = Some(rate);
            r.time_lag_seconds = now.time_lag;
            r.stalled = then.is_some_and(|x| x.offset == now.offset && x.backlog > 0);
            r.catch_up_seconds = catch_up(now.backlog, rate, input_rate);
        }
        out.push(r);
    }
    out
}

fn total_seconds_per_change(costs: &BTreeMap<String, (f64, u64)>) -> f64 {
    costs
        .values()
        .filter(|(_, c)| *c > 0)
        .map(|(s, c)| s / *c as f64)
        .sum()
}

/// The holder, the split and the advice of a pillow that does not keep up.
fn advise(diag: &mut Diagnosis, costs: &BTreeMap<String, (f64, u64)>, style: CommandStyle) {
    if !diag.verdict.is_finding() {
        if diag.verdict == Verdict::KeepingUp {
            diag.advice
                .push(format!("{} keeps up: nothing to split", diag.pillow_name));
        }
        return;
    }
    diag.holder = if diag.mode == "independent" {
        diag.processors
            .iter()
            .filter(|p| p.own_rows && p.backlog.unwrap_or(0) > 0)
            .max_by_key(|p| p.backlog.unwrap_or(0))
            .map(|p| p.processor.clone())
    } else {
        diag.processors
            .iter()
            .filter(|p| p.seconds_per_change.is_some())
            .max_by(|x, y| {
                x.seconds_per_change
                    .unwrap_or(0.0)
                    .total_cmp(&y.seconds_per_change.unwrap_or(0.0))
            })
            .map(|p| p.processor.clone())
    };
    let Some(holder) = diag.holder.clone() else {
        diag.advice.push(if diag.processes == 0 {
            format!(
                "{} is {} but no process of it is alive: start it (its processes report what each processor costs)",
                diag.pillow_name,
                diag.verdict.text()
            )
        } else {
            format!(
                "{} is {} but its processes reported no processor costs yet (they report with each heartbeat, every 5 s): run the doctor again with a longer --interval",
                diag.pillow_name,
                diag.verdict.text()
            )
        });
        return;
    };
    if diag.verdict == Verdict::Stalled {
        diag.advice.push(format!(
            "{} made no progress in {:.0} s with a backlog of {}: look at its logs and error rows first (a stall is not a slow processor)",
            diag.pillow_name, diag.interval_seconds, diag.backlog
        ));
    }
    diag.split = Some(split_advice(
        diag,
        &holder,
        total_seconds_per_change(costs),
        style,
    ));
    if diag.mode == "shared" && diag.processors.len() > 1 {
        diag.advice.push(format!(
            "or, without a new pillow: set processor_checkpoints = \"independent\" in its [pillow] config, so the other processors no longer wait for {holder}"
        ));
    }
}

fn split_advice(d: &Diagnosis, holder: &str, total_spc: f64, style: CommandStyle) -> SplitAdvice {
    let p = d.processors.iter().find(|p| p.processor == holder);
    let processes = d.processes.max(1) as f64;
    // The holder's rate per process when it has a process to itself.
    let per_process = match (d.mode, p.and_then(|p| p.seconds_per_change)) {
        ("shared", Some(h)) if h > 0.0 && d.rate > 0.0 => {
            Some(d.rate * (total_spc / h) / processes)
        }
        ("shared", Some(h)) if h > 0.0 => Some(1.0 / h),
        _ => p
            .and_then(|p| p.rate)
            .filter(|r| *r > 0.0)
            .map(|r| r / processes),
    };
    let max_k = u32::try_from(d.partitions.max(1)).unwrap_or(u32::MAX);
    let need = d.input_rate * HEADROOM;
    let (k, more) = match per_process {
        Some(r) if r > 0.0 => (1..=max_k)
            .find(|k| r * f64::from(*k) >= need)
            .map_or((max_k, true), |k| (k, false)),
        _ => (u32::try_from(d.processes.max(1)).unwrap_or(1), false),
    };
    let estimated_rate = per_process.map(|r| r * f64::from(k));
    let backlog = p.and_then(|p| p.backlog).unwrap_or(d.backlog);
    let others = match (d.mode, p.and_then(|p| p.seconds_per_change)) {
        ("shared", Some(h)) if total_spc > h && d.rate > 0.0 => catch_up(
            d.backlog,
            d.rate * total_spc / (total_spc - h),
            d.input_rate,
        ),
        _ => None,
    };
    let slug: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let (source, target) = match style {
        CommandStyle::Cli => (
            d.checkpoint_id.clone(),
            format!("{}-{slug}", d.checkpoint_id),
        ),
        CommandStyle::Django => (d.pillow_name.clone(), format!("{}-{slug}", d.pillow_name)),
    };
    let mut commands = vec![format!(
        "# stop every process of {} (a final checkpoint is written)",
        d.pillow_name
    )];
    commands.push(match style {
        CommandStyle::Cli => format!("pillowtop split {source} {target}"),
        CommandStyle::Django => {
            format!("python manage.py split_pillow_checkpoints {source} {target}")
        }
    });
    commands.push(format!(
        "# remove {holder} from {source}'s processors; give {target} only {holder}"
    ));
    commands.push(match style {
        CommandStyle::Cli => format!(
            "# start {source} as before, and {target} with --num-processes {k} (pillowtop run --config <its config> --num-processes {k} --process-number 0..{})",
            k.saturating_sub(1)
        ),
        CommandStyle::Django => format!(
            "# start {source} as before, and python manage.py run_ptop --pillow-name {target} --num-processes {k} --process-number 0..{}",
            k.saturating_sub(1)
        ),
    });
    SplitAdvice {
        processor: holder.to_owned(),
        target,
        num_processes: k,
        estimated_rate,
        others_catch_up_seconds: others,
        processor_catch_up_seconds: estimated_rate.and_then(|r| catch_up(backlog, r, d.input_rate)),
        needs_more_partitions: more,
        commands,
    }
}

/// A duration for people: `42 s`, `12 min`, `3.5 h`, `never` for `None`.
pub fn human(seconds: Option<f64>) -> String {
    match seconds {
        None => "never (slower than the input)".into(),
        Some(s) if s < 90.0 => format!("{s:.0} s"),
        Some(s) if s < 5400.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

/// The diagnosis as lines for a terminal.
pub fn render(d: &Diagnosis) -> Vec<String> {
    let mut out = vec![format!(
        "{} (checkpoint {}, {} checkpoint, {} partitions, {} live processes): {}",
        d.pillow_name,
        d.checkpoint_id,
        d.mode,
        d.partitions,
        d.processes,
        d.verdict.text()
    )];
    if d.verdict == Verdict::NeverRun {
        out.extend(d.advice.iter().cloned());
        return out;
    }
    out.push(format!(
        "  over {:.0} s: {:.0} changes/s published, {:.0} changes/s processed; backlog {} changes, time lag {}; catch-up {}",
        d.interval_seconds,
        d.input_rate,
        d.rate,
        d.backlog,
        d.time_lag_seconds
            .map_or_else(|| "-".into(), |t| format!("{t} s")),
        human(d.catch_up_seconds)
    ));
    for p in &d.processors {
        let mut parts = Vec::new();
        if let Some(s) = p.seconds_per_change {
            parts.push(format!("{:.3} ms per change", s * 1000.0));
        }
        if let Some(s) = p.share {
            parts.push(format!("{:.0}% of the pillow's time", s * 100.0));
        }
        if let (Some(b), Some(r)) = (p.backlog, p.rate) {
            parts.push(format!(
                "own backlog {b}, {r:.0} changes/s, catch-up {}",
                human(p.catch_up_seconds)
            ));
        }
        if p.stalled {
            parts.push("STALLED".into());
        }
        let mark = if d.holder.as_deref() == Some(p.processor.as_str()) {
            "  <- holds the pillow back"
        } else {
            ""
        };
        out.push(format!(
            "  processor {}: {}{mark}",
            p.processor,
            if parts.is_empty() {
                "no measurements yet".into()
            } else {
                parts.join(", ")
            }
        ));
    }
    if let Some(s) = &d.split {
        out.push(format!(
            "split {} into {} with {} processes: {}{}{}",
            s.processor,
            s.target,
            s.num_processes,
            s.estimated_rate.map_or_else(
                || "rate unknown".into(),
                |r| format!("about {r:.0} changes/s")
            ),
            s.processor_catch_up_seconds
                .map_or(String::new(), |t| format!(
                    ", it catches up in {}",
                    human(Some(t))
                )),
            s.others_catch_up_seconds.map_or(String::new(), |t| format!(
                "; the other processors catch up in {}",
                human(Some(t))
            )),
        ));
        if s.needs_more_partitions {
            out.push(format!(
                "  even one process per partition ({}) would not keep up with {:.0} changes/s: add partitions to the topic",
                d.partitions,
                d.input_rate * HEADROOM
            ));
        }
        out.extend(s.commands.iter().map(|c| format!("  {c}")));
    }
    out.extend(d.advice.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::liveness::ProcessorStat;

    fn row(processor: Option<&str>, partition: i32, offset: i64, high: i64) -> LagRow {
        LagRow {
            checkpoint_id: processor.map_or_else(
                || "cp".to_owned(),
                |p| crate::store::checkpoints::processor_checkpoint_id("cp", p),
            ),
            pillow_name: "case-pillow".into(),
            processor: processor.map(str::to_owned),
            topic: "case-sql".into(),
            partition,
            offset,
            low: Some(0),
            high: Some(high),
            lag: Some(high - offset),
            seconds_since_checkpoint: 1,
            time_lag_seconds: (high > offset).then_some(600),
            retention_remaining_seconds: None,
            owner: None,
            read: None,
            stalled: false,
        }
    }

    fn process(stats: &[(&str, f64, u64)]) -> ProcessRow {
        let mut p = crate::ops::test_rows::process("case-pillow", "cp", true);
        p.processor_stats = stats
            .iter()
            .map(|(n, s, c)| {
                (
                    (*n).to_owned(),
                    ProcessorStat {
                        seconds: *s,
                        changes: *c,
                        ..Default::default()
                    },
                )
            })
            .collect();
        p
    }

    #[test]
    fn a_shared_pillow_falling_behind_names_its_costliest_processor_and_sizes_the_split() {
        // 10 s: 1,000 changes/s published over 2 partitions, 500/s processed; the slow processor
        // took 9 of every 10 ms.
        let first = Sample {
            rows: vec![row(None, 0, 0, 10_000), row(None, 1, 0, 10_000)],
            processes: vec![process(&[("fast", 1.0, 10_000), ("slow", 9.0, 10_000)])],
        };
        let second = Sample {
            rows: vec![row(None, 0, 2_500, 15_000), row(None, 1, 2_500, 15_000)],
            processes: vec![process(&[("fast", 1.5, 15_000), ("slow", 13.5, 15_000)])],
        };
        let d = diagnose(
            "cp",
            &first,
            &second,
            Duration::from_secs(10),
            Options::default(),
            None,
        );
        assert_eq!(d.mode, "shared");
        assert_eq!(d.verdict, Verdict::FallingBehind);
        assert!((d.input_rate - 1000.0).abs() < 1e-9, "{d:#?}");
        assert!((d.rate - 500.0).abs() < 1e-9, "{d:#?}");
        assert_eq!(d.backlog, 25_000);
        assert_eq!(d.catch_up_seconds, None, "slower than the input");
        assert_eq!(d.holder.as_deref(), Some("slow"));
        let slow = &d.processors[1];
        assert!((slow.share.expect("share") - 0.9).abs() < 1e-9, "{slow:?}");
        let s = d.split.as_ref().expect("split advice");
        // Alone, one process does 500 × 10/9 ≈ 556/s; 1,250/s needs 3 processes, but the topic
        // has 2 partitions.
        assert_eq!(
            (s.num_processes, s.needs_more_partitions),
            (2, true),
            "{s:#?}"
        );
        // The fast processor alone: 500 × 10/1 = 5,000/s → 25,000 / 4,000 = 6.25 s.
        let others = s.others_catch_up_seconds.expect("others catch up");
        assert!((others - 6.25).abs() < 1e-6, "{others}");
        assert!(
            s.commands.iter().any(|c| c == "pillowtop split cp cp-slow"),
            "{s:#?}"
        );
        let text = render(&d).join("\n");
        assert!(
            text.contains("slow: ") && text.contains("holds the pillow back"),
            "{text}"
        );
    }

    #[test]
    fn an_independent_pillow_names_the_processor_with_the_largest_own_backlog() {
        let first = Sample {
            rows: vec![
                row(None, 0, 100, 1_000),
                row(Some("fast"), 0, 1_000, 1_000),
                row(Some("slow"), 0, 100, 1_000),
            ],
            processes: vec![],
        };
        let second = Sample {
            rows: vec![
                row(None, 0, 200, 2_000),
                row(Some("fast"), 0, 2_000, 2_000),
                row(Some("slow"), 0, 200, 2_000),
            ],
            processes: vec![process(&[])],
        };
        let o = Options {
            style: CommandStyle::Django,
            ..Options::default()
        };
        let d = diagnose("cp", &first, &second, Duration::from_secs(10), o, None);
        assert_eq!(d.mode, "independent");
        assert_eq!(d.verdict, Verdict::FallingBehind, "{d:#?}");
        assert_eq!(d.holder.as_deref(), Some("slow"));
        let fast = d
            .processors
            .iter()
            .find(|p| p.processor == "fast")
            .expect("fast");
        assert_eq!((fast.backlog, fast.catch_up_seconds), (Some(0), Some(0.0)));
        let s = d.split.expect("split");
        // 10 changes/s for the slow lane; 125/s needs 13 processes, the topic has 1 partition.
        assert_eq!((s.num_processes, s.needs_more_partitions), (1, true));
        assert!(
            s.commands
                .iter()
                .any(|c| c
                    == "python manage.py split_pillow_checkpoints case-pillow case-pillow-slow"),
            "{:#?}",
            s.commands
        );
    }

    #[test]
    fn a_pillow_that_keeps_up_or_does_not_move_is_not_split() {
        let caught_up = Sample {
            rows: vec![row(None, 0, 5, 5)],
            processes: vec![process(&[("a", 1.0, 10)])],
        };
        let d = diagnose(
            "cp",
            &caught_up,
            &caught_up,
            Duration::from_secs(10),
            Options::default(),
            None,
        );
        assert_eq!(
            (d.verdict, d.holder.clone(), d.split.clone()),
            (Verdict::KeepingUp, None, None)
        );
        let stuck = Sample {
            rows: vec![row(None, 0, 5, 500)],
            processes: vec![process(&[("a", 1.0, 10)])],
        };
        let d = diagnose(
            "cp",
            &stuck,
            &stuck,
            Duration::from_secs(10),
            Options::default(),
            None,
        );
        assert_eq!(d.verdict, Verdict::Stalled);
        assert!(
            d.advice.iter().any(|a| a.contains("no progress")),
            "{:?}",
            d.advice
        );
        let never = Sample {
            rows: vec![],
            processes: vec![],
        };
        let d = diagnose(
            "cp",
            &never,
            &never,
            Duration::from_secs(1),
            Options::default(),
            None,
        );
        assert_eq!(d.verdict, Verdict::NeverRun);
    }

    #[test]
    fn costs_are_taken_over_the_interval_for_a_process_seen_twice_else_since_its_start() {
        let first = Sample {
            rows: vec![],
            processes: vec![process(&[("x", 100.0, 1_000)])],
        };
        let second = Sample {
            rows: vec![],
            processes: vec![process(&[("x", 101.0, 2_000)])],
        };
        assert_eq!(processor_costs(&first, &second)["x"], (1.0, 1_000));
        let mut restarted = second.clone();
        restarted.processes[0].pid = 43;
        assert_eq!(processor_costs(&first, &restarted)["x"], (101.0, 2_000));
    }
}
