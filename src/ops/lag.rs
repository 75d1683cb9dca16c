//! Lag and status per checkpoint and partition: the stored offset, Kafka's high-water mark, the
//! lag in changes, the seconds since the checkpoint was written, and which live process owns the
//! partition (from the liveness rows). The same figures are exported as CommCare's gauges
//! (`pillow_datadog_metrics`, docs/commcare-pillowtop.md §1.10).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::kafka::{KafkaInfo, Watermarks};
use super::Result;
use crate::feed::TopicPartition;
use crate::metrics::Recorder;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::{is_processor_marker_id, split_processor_checkpoint_id, RowsById};
use crate::store::errors::postgres::PostgresErrorStore;
use crate::store::liveness::postgres::PostgresLivenessStore;
use crate::store::liveness::{LivenessStore, ProcessRow};

/// CommCare's gauge: seconds since the pillow's newest checkpoint write. Tags `pillow_name`,
/// `feed_type`.
pub const SECONDS_SINCE_LAST_UPDATE: &str = "commcare.change_feed.seconds_since_last_update";
/// CommCare's gauge: the partition's high-water mark. Tags `pillow_name`, `feed_type`,
/// `topic="<topic>-<partition>"`.
pub const CURRENT_OFFSETS: &str = "commcare.change_feed.current_offsets";
/// CommCare's gauge: the checkpoint offset.
pub const PROCESSED_OFFSETS: &str = "commcare.change_feed.processed_offsets";
/// CommCare's gauge: high-water mark − checkpoint.
pub const NEED_PROCESSING: &str = "commcare.change_feed.need_processing";
/// CommCare's gauge (celery task `record_pillow_error_queue_size`): the pillow's rows in
/// `pillow_retry_pillowerror`. Tag `pillow_name` (the rows' `pillow`).
pub const ERROR_QUEUE: &str = "commcare.pillowtop.error_queue";
/// Ours: seconds since the oldest unprocessed change of the partition was published (0 when
/// caught up). Tags as [`NEED_PROCESSING`].
pub const TIME_LAG_SECONDS: &str = "pillowtop.checkpoint_time_lag_seconds";
/// Ours: seconds until the partition's checkpoint may fall off Kafka's retention: the topic's
/// `retention.ms` minus the age of the oldest unprocessed change (the message at the checkpoint
/// offset, which time-based retention deletes first); the whole retention when caught up; 0 when
/// the checkpoint is already older than the first retained offset. Not exported for topics that
/// keep messages forever. Kafka deletes whole segments once their newest message is past
/// retention, so the message lives at least this long (the figure is a lower bound, an alert on
/// it fires early rather than late); size-based retention (`retention.bytes`) is not taken into
/// account. Tags as [`NEED_PROCESSING`].
pub const RETENTION_REMAINING_SECONDS: &str = "pillowtop.checkpoint_retention_remaining_seconds";

/// Ours: a processor's own lag in changes (independent processors,
/// `processor_checkpoints = "independent"`): its high-water mark − its own checkpoint. Tags
/// `pillow_name`, `processor`, `topic="<topic>-<partition>"`.
pub const PROCESSOR_NEED_PROCESSING: &str = "pillowtop.processor.need_processing";
/// Ours: a processor's own time lag (see [`TIME_LAG_SECONDS`]). Tags as
/// [`PROCESSOR_NEED_PROCESSING`].
pub const PROCESSOR_TIME_LAG_SECONDS: &str = "pillowtop.processor.time_lag_seconds";

/// One partition of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagRow {
    pub checkpoint_id: String,
    /// The pillow name of a process using this checkpoint (or, for a processor's own rows, the
    /// pillow's), else the checkpoint id.
    pub pillow_name: String,
    /// For a processor's own rows (`{checkpoint}/processor/{name}`, independent processors): the
    /// processor's name; `None` for the pillow's rows, which are the minimum over its processors.
    pub processor: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `None` when Kafka no longer has the partition.
    pub low: Option<i64>,
    pub high: Option<i64>,
    /// `high − offset`.
    pub lag: Option<i64>,
    pub seconds_since_checkpoint: i64,
    /// Seconds since the oldest unprocessed change was published (0 when caught up; `None`
    /// when unknown).
    pub time_lag_seconds: Option<i64>,
    /// Seconds until the checkpoint may fall off the topic's retention (see
    /// [`RETENTION_REMAINING_SECONDS`]); `None` when unknown or the topic keeps messages forever.
    pub retention_remaining_seconds: Option<i64>,
    /// `host pid N (process k)` of the live process that owns the partition.
    pub owner: Option<String>,
    /// For a processor's rows read through a shared read of Kafka (as of the owner's last
    /// heartbeat): `"shared"` while its lane reads the shared ring, `"detached"` while it has
    /// fallen more than the lead bound behind and reads with its own consumer; `None` otherwise.
    pub read: Option<&'static str>,
    /// A processor whose live owner has not moved its checkpoint for
    /// [`PROCESSOR_STALL_SECONDS`] while it has changes to handle: no progress (the time rule
    /// writes a progressing checkpoint at least every 300 s).
    pub stalled: bool,
}

/// A processor's rows behind their high-water mark and unwritten this long, under a live owner,
/// are reported as stalled: twice CommCare's `MAX_CHECKPOINT_DELAY` (300 s), which bounds the
/// time between two checkpoints of a processor that handles anything at all.
pub const PROCESSOR_STALL_SECONDS: i64 = 600;

/// Ours: 1 while a processor's lane reads with its own consumer (detached from the shared read),
/// 0 while it reads the shared ring. Tags `pillow_name`, `processor`.
pub const PROCESSOR_DETACHED: &str = "pillowtop.processor.detached";
/// Ours: 1 while a processor is stalled (see [`PROCESSOR_STALL_SECONDS`]), else 0. Tags as
/// [`PROCESSOR_NEED_PROCESSING`].
pub const PROCESSOR_STALLED: &str = "pillowtop.processor.stalled";

/// Computes the lag rows (pure). `retention_ms` holds each topic's finite `retention.ms`.
pub fn compute(
    rows: &RowsById,
    watermarks: &BTreeMap<TopicPartition, Watermarks>,
    timestamps: &BTreeMap<(TopicPartition, i64), i64>,
    retention_ms: &BTreeMap<String, i64>,
    processes: &[ProcessRow],
    now: DateTime<Utc>,
) -> Vec<LagRow> {
    let mut out = Vec::new();
    for (id, rs) in rows.iter().filter(|(id, _)| !is_processor_marker_id(id)) {
        let (parent, processor) = match split_processor_checkpoint_id(id) {
            Some((parent, name)) => (parent, Some(name.to_owned())),
            None => (id.as_str(), None),
        };
        let pillow_name = processes
            .iter()
            .find(|p| p.checkpoint_id == parent)
            .map_or_else(|| parent.to_owned(), |p| p.pillow_name.clone());
        for r in rs {
            let w = watermarks.get(&r.tp);
            let live = processes
                .iter()
                .find(|p| p.alive && p.checkpoint_id == parent && p.partitions.contains(&r.tp));
            let owner = live.map(|p| {
                format!(
                    "{} pid {} (process {}/{})",
                    p.hostname, p.pid, p.process_num, p.num_processes
                )
            });
            let stat = processor
                .as_ref()
                .and_then(|name| live?.processor_stats.get(name));
            let read =
                stat.and_then(|s| s.attached)
                    .map(|attached| if attached { "shared" } else { "detached" });
            let seconds_since_checkpoint = (now - r.last_modified).num_seconds().max(0);
            let stalled = processor.is_some()
                && live.is_some()
                && w.is_some_and(|w| r.offset < w.high)
                && seconds_since_checkpoint >= PROCESSOR_STALL_SECONDS;
            out.push(LagRow {
                checkpoint_id: id.clone(),
                pillow_name: pillow_name.clone(),
                processor: processor.clone(),
                topic: r.tp.topic.clone(),
                partition: r.tp.partition,
                offset: r.offset,
                low: w.map(|w| w.low),
                high: w.map(|w| w.high),
                lag: w.map(|w| (w.high - r.offset).max(0)),
                seconds_since_checkpoint,
                time_lag_seconds: match w {
                    Some(w) if r.offset >= w.high => Some(0),
                    Some(w) => timestamps
                        .get(&(r.tp.clone(), r.offset.max(w.low)))
                        .map(|ts| ((now.timestamp_millis() - ts) / 1000).max(0)),
                    None => None,
                },
                retention_remaining_seconds: match (w, retention_ms.get(&r.tp.topic)) {
                    (Some(w), Some(ret)) if r.offset < w.low => Some(0).filter(|_| *ret >= 0),
                    (Some(w), Some(ret)) if r.offset >= w.high => Some(ret / 1000),
                    (Some(w), Some(ret)) => timestamps
                        .get(&(r.tp.clone(), r.offset.max(w.low)))
                        .map(|ts| ((ts + ret - now.timestamp_millis()) / 1000).max(0)),
                    _ => None,
                },
                owner,
                read,
                stalled,
            });
        }
    }
    out
}

/// Reads the rows (of `ids`, or all), the watermarks and the liveness rows, and computes the lag.
/// Partitions of topics Kafka no longer has are reported without watermarks.
pub async fn collect(
    pg: &std::sync::Arc<Pg>,
    kafka: &KafkaInfo,
    ids: Option<&[String]>,
) -> Result<Vec<LagRow>> {
    let store = PostgresCheckpointStore::new(pg.clone());
    let rows = match ids {
        Some(ids) => store.load_with_processors(ids).await?,
        None => store.load_selected(None).await?,
    };
    let wanted: Vec<TopicPartition> = rows
        .values()
        .flatten()
        .map(|r| r.tp.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let watermarks = kafka.watermarks_of_existing(&wanted).await?;
    // The oldest unprocessed change of each partition that lags, from its retained range; a
    // consumer reads one offset per partition, so checkpoints sharing a partition take rounds.
    let behind: BTreeSet<(TopicPartition, i64)> = rows
        .values()
        .flatten()
        .filter_map(|r| {
            let w = watermarks.get(&r.tp)?;
            (r.offset < w.high).then(|| (r.tp.clone(), r.offset.max(w.low)))
        })
        .collect();
    let mut rounds: Vec<BTreeMap<TopicPartition, i64>> = Vec::new();
    for (tp, offset) in behind {
        match rounds.iter_mut().find(|r| !r.contains_key(&tp)) {
            Some(r) => {
                r.insert(tp, offset);
            }
            None => rounds.push([(tp, offset)].into()),
        }
    }
    let mut timestamps = BTreeMap::new();
    for round in rounds {
        let positions: Vec<(TopicPartition, i64)> = round.into_iter().collect();
        let found = kafka
            .timestamps_at(&positions, std::time::Duration::from_secs(5))
            .await?;
        for (tp, offset) in positions {
            if let Some(ts) = found.get(&tp) {
                timestamps.insert((tp, offset), *ts);
            }
        }
    }
    let retention = retention_of(kafka, rows.values().flatten().map(|r| r.tp.topic.as_str())).await;
    let processes = PostgresLivenessStore::new(pg.clone()).list(None).await?;
    Ok(compute(
        &rows,
        &watermarks,
        &timestamps,
        &retention,
        &processes,
        Utc::now(),
    ))
}

/// The finite `retention.ms` of each of `topics`. A topic whose configuration cannot be read
/// (deleted, or not allowed by the broker's ACLs) is left out with a warning: the lag is still
/// reported, without the retention figure.
async fn retention_of<'a>(
    kafka: &KafkaInfo,
    topics: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, i64> {
    let topics: BTreeSet<&str> = topics.collect();
    let mut out = BTreeMap::new();
    if topics.is_empty() {
        return out;
    }
    let admin = match crate::feed::kafka::KafkaAdmin::new(kafka.bootstrap()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the topics' retention");
            return out;
        }
    };
    for t in topics {
        match admin.topic_retention_ms(t).await {
            Ok(Some(ms)) => {
                out.insert(t.to_owned(), ms);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(topic = t, error = %e, "cannot read the topic's retention"),
        }
    }
    out
}

/// The number of error rows of each pillow (CommCare's `record_pillow_error_queue_size`).
pub async fn error_queue(pg: &std::sync::Arc<Pg>) -> Result<Vec<(String, i64)>> {
    let mut by_pillow: BTreeMap<String, i64> = BTreeMap::new();
    for (pillow, _type, n) in PostgresErrorStore::new(pg.clone()).counts_by_type().await? {
        *by_pillow.entry(pillow).or_default() += n;
    }
    Ok(by_pillow.into_iter().collect())
}

/// Records the error row counts as CommCare's `error_queue` gauge.
pub fn record_error_queue(counts: &[(String, i64)], recorder: &dyn Recorder) {
    for (pillow, n) in counts {
        recorder.gauge(
            ERROR_QUEUE,
            vec![("pillow_name", pillow.clone())],
            *n as f64,
        );
    }
}

/// Records the lag rows as CommCare's gauges.
pub fn record(rows: &[LagRow], recorder: &dyn Recorder) {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for r in rows {
        if let Some(processor) = &r.processor {
            // A processor's own rows: our gauges only (CommCare's are the pillow's).
            let Some(high) = r.high else { continue };
            let tags = || {
                vec![
                    ("pillow_name", r.pillow_name.clone()),
                    ("processor", processor.clone()),
                    ("topic", format!("{}-{}", r.topic, r.partition)),
                ]
            };
            recorder.gauge(
                PROCESSOR_NEED_PROCESSING,
                tags(),
                (high - r.offset).max(0) as f64,
            );
            if let Some(t) = r.time_lag_seconds {
                recorder.gauge(PROCESSOR_TIME_LAG_SECONDS, tags(), t as f64);
            }
            recorder.gauge(PROCESSOR_STALLED, tags(), f64::from(u8::from(r.stalled)));
            if let Some(read) = r.read {
                recorder.gauge(
                    PROCESSOR_DETACHED,
                    vec![
                        ("pillow_name", r.pillow_name.clone()),
                        ("processor", processor.clone()),
                    ],
                    f64::from(u8::from(read == "detached")),
                );
            }
            continue;
        }
        let e = newest
            .entry(r.pillow_name.as_str())
            .or_insert(r.seconds_since_checkpoint);
        *e = (*e).min(r.seconds_since_checkpoint);
        let Some(high) = r.high else { continue };
        let tags = || {
            vec![
                ("pillow_name", r.pillow_name.clone()),
                ("feed_type", "kafka".to_owned()),
                ("topic", format!("{}-{}", r.topic, r.partition)),
            ]
        };
        recorder.gauge(CURRENT_OFFSETS, tags(), high as f64);
        recorder.gauge(PROCESSED_OFFSETS, tags(), r.offset as f64);
        recorder.gauge(NEED_PROCESSING, tags(), (high - r.offset).max(0) as f64);
        if let Some(t) = r.time_lag_seconds {
            recorder.gauge(TIME_LAG_SECONDS, tags(), t as f64);
        }
        if let Some(t) = r.retention_remaining_seconds {
            recorder.gauge(RETENTION_REMAINING_SECONDS, tags(), t as f64);
        }
    }
    for (pillow, secs) in newest {
        recorder.gauge(
            SECONDS_SINCE_LAST_UPDATE,
            vec![
                ("pillow_name", pillow.to_owned()),
                ("feed_type", "kafka".to_owned()),
            ],
            secs as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::{at, process, rows};
    use super::*;
    use crate::metrics::MemoryRecorder;

    type Seen<'a> = (&'a str, &'a str, Option<&'a str>, Option<i64>, bool);

    #[test]
    fn a_processors_read_state_and_stall_come_from_its_live_owner_and_its_rows_age() {
        let id = |name| crate::store::checkpoints::processor_checkpoint_id("c", name);
        // Rows written at 0 s (partition 0); now is 700 s: older than the stall bound.
        let data: RowsById = [
            ("c".to_owned(), rows(&[("t", 0, 5)])),
            (id("fast"), rows(&[("t", 0, 15)])),
            (id("slow"), rows(&[("t", 0, 5)])),
        ]
        .into();
        let w: BTreeMap<TopicPartition, Watermarks> =
            [(TopicPartition::new("t", 0), Watermarks { low: 0, high: 15 })].into();
        let mut p = process("case-pillow", "c", true);
        p.partitions = vec![TopicPartition::new("t", 0)];
        let stat = |attached| crate::store::liveness::ProcessorStat {
            attached: Some(attached),
            ..Default::default()
        };
        p.processor_stats = [
            ("fast".to_owned(), stat(true)),
            ("slow".to_owned(), stat(false)),
        ]
        .into();
        let seen = |out: &[LagRow]| -> Vec<(Option<String>, Option<&'static str>, bool)> {
            out.iter()
                .map(|r| (r.processor.clone(), r.read, r.stalled))
                .collect()
        };
        let now = at(PROCESSOR_STALL_SECONDS + 100);
        let out = compute(
            &data,
            &w,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &[p.clone()],
            now,
        );
        assert_eq!(
            seen(&out),
            [
                (None, None, false),
                (Some("fast".into()), Some("shared"), false),
                (Some("slow".into()), Some("detached"), true),
            ],
            "the pillow's rows have no read state; fast is caught up; slow is behind and unwritten for 700 s"
        );
        let rec = MemoryRecorder::new();
        record(&out, &rec);
        let gauges: Vec<(String, f64)> = rec
            .snapshot()
            .iter()
            .filter(|(n, _, _)| *n == PROCESSOR_STALLED || *n == PROCESSOR_DETACHED)
            .map(|(n, tags, v)| {
                (
                    format!(
                        "{n} {}",
                        tags.iter()
                            .find(|t| t.0 == "processor")
                            .map_or("", |t| t.1.as_str())
                    ),
                    *v,
                )
            })
            .collect();
        assert_eq!(
            gauges,
            [
                (format!("{PROCESSOR_DETACHED} fast"), 0.0),
                (format!("{PROCESSOR_DETACHED} slow"), 1.0),
                (format!("{PROCESSOR_STALLED} fast"), 0.0),
                (format!("{PROCESSOR_STALLED} slow"), 1.0),
            ]
        );
        // Younger than the bound: not stalled. No live owner: a stopped pillow, not a stall.
        let young = compute(
            &data,
            &w,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &[p.clone()],
            at(PROCESSOR_STALL_SECONDS - 1),
        );
        assert!(young.iter().all(|r| !r.stalled));
        p.alive = false;
        let stopped = compute(&data, &w, &BTreeMap::new(), &BTreeMap::new(), &[p], now);
        assert!(stopped.iter().all(|r| !r.stalled && r.read.is_none()));
    }

    #[test]
    fn a_processors_own_rows_name_it_and_get_our_gauges_not_commcares() {
        let own = crate::store::checkpoints::processor_checkpoint_id("c", "slow-es");
        let data: RowsById = [
            ("c".to_owned(), rows(&[("t", 0, 5)])),
            (own.clone(), rows(&[("t", 0, 2)])),
            ("c/processor/".to_owned(), rows(&[("t", 0, 5)])),
        ]
        .into();
        let w: BTreeMap<TopicPartition, Watermarks> =
            [(TopicPartition::new("t", 0), Watermarks { low: 0, high: 15 })].into();
        let mut p = process("case-pillow", "c", true);
        p.partitions = vec![TopicPartition::new("t", 0)];
        let out = compute(&data, &w, &BTreeMap::new(), &BTreeMap::new(), &[p], at(100));
        let got: Vec<Seen> = out
            .iter()
            .map(|r| {
                (
                    r.checkpoint_id.as_str(),
                    r.pillow_name.as_str(),
                    r.processor.as_deref(),
                    r.lag,
                    r.owner.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("c", "case-pillow", None, Some(10), true),
                (own.as_str(), "case-pillow", Some("slow-es"), Some(13), true)
            ],
            "the processor's rows take the pillow's name and owner"
        );
        let rec = MemoryRecorder::new();
        record(&out, &rec);
        let snap = rec.snapshot();
        let gauge = |name: &str| -> Vec<(String, f64)> {
            snap.iter()
                .filter(|(n, _, _)| *n == name)
                .map(|(_, tags, v)| (format!("{tags:?}"), *v))
                .collect()
        };
        assert_eq!(
            gauge(NEED_PROCESSING).len(),
            1,
            "CommCare's gauge: the pillow's row only"
        );
        let own_lag = gauge(PROCESSOR_NEED_PROCESSING);
        assert_eq!(own_lag.len(), 1);
        assert!(
            own_lag[0].0.contains("slow-es") && (own_lag[0].1 - 13.0).abs() < f64::EPSILON,
            "{own_lag:?}"
        );
        assert_eq!(
            crate::store::checkpoints::split_processor_checkpoint_id(&own),
            Some(("c", "slow-es"))
        );
        assert_eq!(
            crate::store::checkpoints::split_processor_checkpoint_id("c"),
            None
        );
    }

    #[test]
    fn lag_owner_and_gauges() {
        let data: RowsById = [(
            "c".to_owned(),
            rows(&[("t", 0, 5), ("t", 1, 7), ("gone", 0, 3)]),
        )]
        .into();
        let w: BTreeMap<TopicPartition, Watermarks> = [
            (TopicPartition::new("t", 0), Watermarks { low: 0, high: 15 }),
            (TopicPartition::new("t", 1), Watermarks { low: 0, high: 7 }),
        ]
        .into();
        let mut p = process("case-pillow", "c", true);
        p.partitions = vec![TopicPartition::new("t", 1)];
        let ts: BTreeMap<(TopicPartition, i64), i64> =
            [((TopicPartition::new("t", 0), 5), at(40).timestamp_millis())].into();
        let retention: BTreeMap<String, i64> = [("t".to_owned(), 100_000)].into();
        let out = compute(&data, &w, &ts, &retention, &[p], at(100));
        let remaining: Vec<Option<i64>> =
            out.iter().map(|r| r.retention_remaining_seconds).collect();
        assert_eq!(
            remaining,
            [Some(40), Some(100), None],
            "t,0: its oldest unprocessed change is 60 s old of 100 s; t,1 is caught up; gone has no partition"
        );
        let mut expired = data.clone();
        expired.get_mut("c").expect("c")[0].offset = -1;
        let w2: BTreeMap<TopicPartition, Watermarks> =
            [(TopicPartition::new("t", 0), Watermarks { low: 3, high: 15 })].into();
        assert_eq!(
            compute(&expired, &w2, &ts, &retention, &[], at(100))[0].retention_remaining_seconds,
            Some(0),
            "already below the first retained offset"
        );
        let lags: Vec<Option<i64>> = out.iter().map(|r| r.time_lag_seconds).collect();
        assert_eq!(lags, [Some(60), Some(0), None]);
        let got: Vec<(String, Option<i64>, i64, bool)> = out
            .iter()
            .map(|r| {
                (
                    format!("{},{}", r.topic, r.partition),
                    r.lag,
                    r.seconds_since_checkpoint,
                    r.owner.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("t,0".to_owned(), Some(10), 100, false),
                ("t,1".to_owned(), Some(0), 99, true),
                ("gone,0".to_owned(), None, 100, false)
            ]
        );
        assert_eq!(out[0].pillow_name, "case-pillow");
        let m = MemoryRecorder::new();
        record(&out, &m);
        assert!((m.get(NEED_PROCESSING, &[("topic", "t-0")]) - 10.0).abs() < f64::EPSILON);
        assert!(
            (m.get(RETENTION_REMAINING_SECONDS, &[("topic", "t-0")]) - 40.0).abs() < f64::EPSILON
        );
        assert!((m.get(TIME_LAG_SECONDS, &[("topic", "t-0")]) - 60.0).abs() < f64::EPSILON);
        record_error_queue(&[("case-pillow".into(), 7)], &m);
        assert!((m.get(ERROR_QUEUE, &[("pillow_name", "case-pillow")]) - 7.0).abs() < f64::EPSILON);
        assert!(
            (m.get(SECONDS_SINCE_LAST_UPDATE, &[("pillow_name", "case-pillow")]) - 99.0).abs()
                < f64::EPSILON
        );
    }
}
