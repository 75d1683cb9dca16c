//! The status page's data: every pillow (checkpoint id) with its processes, its partitions'
//! checkpoint / high-water mark / lag in offsets and seconds, its error rows by type, and its
//! changes per second over the last hour; in the shape of CommCare's `get_all_pillows_json`
//! (`name`, `seq_format`, `seq`, `offsets`, `seconds_since_last`, `time_since_last`,
//! `hours_since_last`) plus these additions.
//!
//! The rate comes from a [`RateHistory`] that samples the sum of each checkpoint's offsets: the
//! changes a pillow checkpointed between two samples over the time between them. `pillowtop
//! serve` samples every `--interval` seconds and keeps an hour; a page served from elsewhere (the
//! Django admin view) passes an empty history and the page accumulates its own samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::kafka::KafkaInfo;
use super::lag::{self, LagRow};
use super::Result;
use crate::pg::Pg;
use crate::store::errors::postgres::PostgresErrorStore;
use crate::store::liveness::postgres::PostgresLivenessStore;
use crate::store::liveness::{LivenessStore, ProcessRow};

/// The page itself: static HTML and JavaScript that reads [`Status`] as JSON from the URL in
/// its `data-api` attribute (default `/api/pillows`) every few seconds.
pub const PAGE: &str = include_str!("status_page.html");

/// How long the rate history reaches back.
pub const HISTORY_SPAN: Duration = Duration::from_secs(3600);

/// One live (or recently seen) process of a pillow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessStatus {
    pub hostname: String,
    pub pid: i32,
    pub process_num: i32,
    pub num_processes: i32,
    pub alive: bool,
    pub heartbeat_age_seconds: i64,
    /// `topic-partition` names this process reads.
    pub partitions: Vec<String>,
}

/// One pillow (checkpoint id) on the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PillowStatus {
    /// CommCare's `name`: the pillow name of a process using the checkpoint, else the id.
    pub name: String,
    pub checkpoint_id: String,
    /// CommCare's fields.
    pub seq_format: &'static str,
    /// The checkpoint, by `"topic,partition"` (CommCare's text form).
    pub seq: BTreeMap<String, i64>,
    /// The high-water marks, by `"topic,partition"`.
    pub offsets: BTreeMap<String, i64>,
    pub seconds_since_last: i64,
    pub time_since_last: String,
    pub hours_since_last: i64,
    /// Additions: the total lag in changes, the largest lag in seconds (age of the oldest
    /// unprocessed change), the processes and how many are alive.
    pub need_processing: i64,
    pub max_lag_seconds: Option<i64>,
    pub processes_alive: usize,
    pub processes: Vec<ProcessStatus>,
    pub partitions: Vec<LagRow>,
    /// Error rows by error type.
    pub errors: BTreeMap<String, i64>,
    pub error_rows: i64,
    /// `(unix seconds, changes per second)` over the last hour, oldest first.
    pub rate: Vec<(i64, f64)>,
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub generated_at: DateTime<Utc>,
    pub pillows: Vec<PillowStatus>,
}

/// `(when, sum of the checkpoint's offsets)`, oldest first.
type Samples = VecDeque<(DateTime<Utc>, i64)>;

/// Samples of each checkpoint's offset sum, for the rate chart.
#[derive(Debug, Default)]
pub struct RateHistory {
    samples: Mutex<BTreeMap<String, Samples>>,
}

impl RateHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `total` (the sum of the checkpoint's offsets) at `at`; forgets samples older than
    /// [`HISTORY_SPAN`].
    pub fn record(&self, checkpoint_id: &str, at: DateTime<Utc>, total: i64) {
        let Ok(mut all) = self.samples.lock() else {
            return;
        };
        let q = all.entry(checkpoint_id.to_owned()).or_default();
        q.push_back((at, total));
        let span = chrono::Duration::from_std(HISTORY_SPAN).unwrap_or_default();
        while q.front().is_some_and(|(t, _)| at - *t > span) {
            q.pop_front();
        }
    }

    /// `(unix seconds, changes per second)` between consecutive samples (a decrease, a reset or
    /// rewind, counts as 0).
    pub fn rate(&self, checkpoint_id: &str) -> Vec<(i64, f64)> {
        let Ok(all) = self.samples.lock() else {
            return Vec::new();
        };
        let Some(q) = all.get(checkpoint_id) else {
            return Vec::new();
        };
        q.iter()
            .zip(q.iter().skip(1))
            .filter_map(|((t0, n0), (t1, n1))| {
                let secs = (*t1 - *t0).num_milliseconds() as f64 / 1000.0;
                (secs > 0.0).then(|| (t1.timestamp(), ((n1 - n0).max(0)) as f64 / secs))
            })
            .collect()
    }
}

/// CommCare's `time_since_last`: `H:MM:SS` (days as `N days, H:MM:SS`).
fn pretty_duration(secs: i64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!("{}:{:02}:{:02}", rest / 3600, (rest % 3600) / 60, rest % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// Pillow names by checkpoint id, known to the caller (a Django project's `PILLOWTOPS`): the
/// name of a pillow with no live process, whose error rows are recorded under its name.
pub type Names = BTreeMap<String, String>;

/// Builds the page's data (pure): lag rows grouped by checkpoint, with the processes, error
/// counts and rate history.
pub fn build(
    rows: Vec<LagRow>,
    processes: &[ProcessRow],
    errors: &[(String, String, i64)],
    history: &RateHistory,
    names: &Names,
    now: DateTime<Utc>,
) -> Status {
    let mut by_id: BTreeMap<String, Vec<LagRow>> = BTreeMap::new();
    for r in rows {
        by_id.entry(r.checkpoint_id.clone()).or_default().push(r);
    }
    let pillows = by_id
        .into_iter()
        .map(|(id, parts)| {
            let name = match names.get(&id) {
                Some(n) => n.clone(),
                None => parts
                    .first()
                    .map_or_else(|| id.clone(), |r| r.pillow_name.clone()),
            };
            let procs: Vec<ProcessStatus> = processes
                .iter()
                .filter(|p| p.checkpoint_id == id)
                .map(|p| ProcessStatus {
                    hostname: p.hostname.clone(),
                    pid: p.pid,
                    process_num: p.process_num,
                    num_processes: p.num_processes,
                    alive: p.alive,
                    heartbeat_age_seconds: (now - p.heartbeat_at).num_seconds().max(0),
                    partitions: p.partitions.iter().map(ToString::to_string).collect(),
                })
                .collect();
            let mut errs: BTreeMap<String, i64> = BTreeMap::new();
            for (pillow, ty, n) in errors {
                if *pillow == name || *pillow == id {
                    *errs.entry(ty.clone()).or_default() += n;
                }
            }
            let since = parts
                .iter()
                .map(|r| r.seconds_since_checkpoint)
                .min()
                .unwrap_or(0);
            PillowStatus {
                seq_format: "json",
                seq: parts
                    .iter()
                    .map(|r| (format!("{},{}", r.topic, r.partition), r.offset))
                    .collect(),
                offsets: parts
                    .iter()
                    .filter_map(|r| Some((format!("{},{}", r.topic, r.partition), r.high?)))
                    .collect(),
                seconds_since_last: since,
                time_since_last: pretty_duration(since),
                hours_since_last: since / 3600,
                need_processing: parts.iter().filter_map(|r| r.lag).sum(),
                max_lag_seconds: parts.iter().filter_map(|r| r.time_lag_seconds).max(),
                processes_alive: procs.iter().filter(|p| p.alive).count(),
                processes: procs,
                error_rows: errs.values().sum(),
                errors: errs,
                rate: history.rate(&id),
                partitions: parts,
                name,
                checkpoint_id: id,
            }
        })
        .collect();
    Status {
        generated_at: now,
        pillows,
    }
}

/// Reads everything the page shows from PostgreSQL and Kafka; records each checkpoint's offset
/// sum in `history` when given.
pub async fn collect(
    pg: &std::sync::Arc<Pg>,
    kafka: &KafkaInfo,
    history: &RateHistory,
    names: &Names,
) -> Result<Status> {
    let rows = lag::collect(pg, kafka, None).await?;
    let processes = PostgresLivenessStore::new(pg.clone()).list(None).await?;
    let errors = PostgresErrorStore::new(pg.clone()).counts_by_type().await?;
    let now = Utc::now();
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &rows {
        *totals.entry(r.checkpoint_id.as_str()).or_default() += r.offset;
    }
    for (id, total) in totals {
        history.record(id, now, total);
    }
    Ok(build(rows, &processes, &errors, history, names, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::TopicPartition;

    fn row(id: &str, partition: i32, offset: i64, high: i64) -> LagRow {
        LagRow {
            checkpoint_id: id.into(),
            pillow_name: "xform-pillow".into(),
            processor: None,
            topic: "form-sql".into(),
            partition,
            offset,
            low: Some(0),
            high: Some(high),
            lag: Some(high - offset),
            seconds_since_checkpoint: 7 + i64::from(partition),
            time_lag_seconds: Some(i64::from(partition) * 3),
            retention_remaining_seconds: None,
            owner: None,
            read: None,
            stalled: false,
        }
    }

    #[test]
    fn groups_partitions_counts_errors_and_keeps_commcares_fields() {
        let now = Utc::now();
        let history = RateHistory::new();
        history.record("cp", now - chrono::Duration::seconds(20), 100);
        history.record("cp", now - chrono::Duration::seconds(10), 600);
        history.record("cp", now, 600);
        let process = ProcessRow {
            pillow_name: "xform-pillow".into(),
            process_num: 0,
            num_processes: 1,
            dedicated_migration_process: false,
            checkpoint_id: "cp".into(),
            hostname: "h".into(),
            pid: 42,
            partitions: vec![TopicPartition::new("form-sql", 0)],
            started_at: now,
            heartbeat_at: now - chrono::Duration::seconds(3),
            alive: true,
            processor_stats: crate::store::liveness::ProcessorStats::new(),
        };
        let errors = vec![
            (
                "xform-pillow".to_owned(),
                "builtins.ValueError".to_owned(),
                2,
            ),
            ("other".to_owned(), "builtins.ValueError".to_owned(), 9),
        ];
        let s = build(
            vec![row("cp", 0, 10, 15), row("cp", 1, 4, 4)],
            &[process],
            &errors,
            &history,
            &Names::new(),
            now,
        );
        let p = &s.pillows[0];
        assert_eq!(
            (p.name.as_str(), p.need_processing, p.max_lag_seconds),
            ("xform-pillow", 5, Some(3))
        );
        assert_eq!(p.seq["form-sql,0"], 10);
        assert_eq!(p.offsets["form-sql,1"], 4);
        assert_eq!(
            (p.seconds_since_last, p.time_since_last.as_str()),
            (7, "0:00:07")
        );
        assert_eq!(
            (p.processes_alive, p.processes[0].heartbeat_age_seconds),
            (1, 3)
        );
        assert_eq!(p.errors["builtins.ValueError"], 2);
        assert_eq!(p.rate.len(), 2);
        assert!((p.rate[0].1 - 50.0).abs() < 1.0, "{:?}", p.rate);
        assert!(p.rate[1].1.abs() < 1e-9);
        assert_eq!(pretty_duration(90_061), "1 day, 1:01:01");
    }
}
