//! Operator operations on checkpoints (split, merge, reset, history, add partitions, validate,
//! lag, assignments), each as a plan (computed, printable, no side effects) and an apply step
//! (one transaction). No prompts and no printing here: the CLI and the Django commands do that.
//!
//! * **Planning is pure.** Every `plan_*` function takes the rows (and, where needed, Kafka
//!   watermarks) it works on as arguments, so it is unit-tested without services and a plan can
//!   be shown before anything is written.
//! * **Applying is one transaction** and verifies the plan: the target rows deleted or
//!   overwritten must be exactly the rows the plan showed, else nothing is written and
//!   [`OpsError::Stale`] asks the operator to plan again.
//! * **No side effects on reading** (docs/commcare-pillowtop.md §9 #6): naming a checkpoint never creates rows.
//! * **No SQL here.** Rows are read and written through [`crate::store`]: the applies run in
//!   [`PostgresCheckpointStore::transaction`](crate::store::checkpoints::postgres::PostgresCheckpointStore::transaction),
//!   and re-verify the plan (`verify_unchanged`) between its reads and its writes.
//! * CommCare's traps are fixed on purpose (docs/commcare-pillowtop.md §9 rows 14–21): topic mismatches are
//!   reported, running pillows are refused unless forced, merges check partition sets per topic
//!   and validate everything before writing.

pub mod add_partitions;
pub mod assignments;
pub mod doctor;
pub mod fix;
pub mod freshness;
pub mod handover;
pub mod history;
pub mod http;
pub mod inspect;
pub mod kafka;
pub mod lag;
pub mod merge;
pub mod prometheus;
pub mod reindex;
pub mod reset;
pub mod split;
pub mod status;
pub mod topics;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{ConfigError, Error};
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::RowConflict;
use crate::store::checkpoints::{CheckpointRow, KeyedOffset};
use crate::store::liveness::postgres::PostgresLivenessStore;
use crate::store::liveness::{LivenessStore, ProcessRow};
use crate::store::transaction::TransactionError;

/// `Result` of an operation.
pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// Why an operation refused to run or failed. Every variant names the checkpoints involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// A merge was given no source checkpoint (CommCare raised `IndexError`, possibly after
    /// deleting the target's rows: docs/commcare-pillowtop.md §9 #16).
    #[error("no source checkpoints given: merge needs at least one source and a target")]
    NoSources,
    /// A split was given no target checkpoint.
    #[error("no target checkpoints given: split needs a source and at least one target")]
    NoTargets,
    /// The sources have no rows to copy or merge (never-run pillows, or a topic filter that
    /// leaves nothing).
    #[error(
        "checkpoints {ids:?} have no rows{detail}: nothing to copy (has the pillow ever run?)"
    )]
    NoSourceRows { ids: Vec<String>, detail: String },
    /// Invalid arguments (an id given twice, a source that is also the target, ...).
    #[error("invalid arguments: {0}")]
    InvalidArgument(String),
    /// A pillow whose checkpoint would change has a live process (docs/commcare-pillowtop.md §9 #14).
    #[error(
        "pillow {checkpoint_id} is running ({processes}): stop it first, or force the operation"
    )]
    Running {
        checkpoint_id: String,
        processes: String,
    },
    /// Merge sources disagree on the partitions of a topic they read (CommCare's exit status 2).
    #[error("Not all checkpoints have the same topics and partitions specified. Aborting pillow merging: {}", describe_missing(.0))]
    Inconsistent(Vec<MissingPartitions>),
    /// The rows changed between planning and applying: nothing was written.
    #[error("checkpoint {checkpoint_id} changed since the plan was made ({detail}): nothing was written, plan again")]
    Stale {
        checkpoint_id: String,
        detail: String,
    },
    /// A requested offset is outside what Kafka retains.
    #[error("offset {offset} for {tp} of checkpoint {checkpoint_id} is outside the retained range {low}..={high}")]
    OutOfRange {
        checkpoint_id: String,
        tp: TopicPartition,
        offset: i64,
        low: i64,
        high: i64,
    },
    /// A history restore found no snapshot.
    #[error("no history snapshot of checkpoint {checkpoint_id} on or before {date}")]
    NoSnapshot {
        checkpoint_id: String,
        date: chrono::NaiveDate,
    },
    /// A checkpoint fix found no history to fix from.
    #[error("checkpoint {checkpoint_id} cannot be fixed from its history: {detail}")]
    NoHistory {
        checkpoint_id: String,
        detail: String,
    },
    /// An online split's hand-over did not complete (no live process of the source took it up,
    /// or not every partition was handed over in time).
    #[error("processor {processor} of {source_id} was not handed over to {target}: {detail}")]
    NotHandedOver {
        source_id: String,
        processor: String,
        target: String,
        detail: String,
    },
    /// A service or core failure.
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<OpsError> for Error {
    /// For callers that want the crate's error: refusals and invalid arguments become
    /// configuration errors (a dedicated `Error::Ops` variant would keep the kind).
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::Core(e) => e,
            other => ConfigError::Invalid(other.to_string()).into(),
        }
    }
}

impl TransactionError for OpsError {
    /// A service failure is retried by the store's transaction; a refusal is not.
    fn into_core(self) -> std::result::Result<Error, Self> {
        match self {
            OpsError::Core(e) => Ok(e),
            other => Err(other),
        }
    }
}

impl From<RowConflict> for OpsError {
    /// A row that a concurrent writer created makes the plan stale.
    fn from(c: RowConflict) -> Self {
        OpsError::Stale {
            checkpoint_id: c.checkpoint_id,
            detail: format!("a row was written concurrently: {}", c.detail),
        }
    }
}

impl From<crate::partition::InvalidTopicName> for OpsError {
    fn from(e: crate::partition::InvalidTopicName) -> Self {
        Self::Core(e.into())
    }
}

impl From<crate::error::PostgresError> for OpsError {
    fn from(e: crate::error::PostgresError) -> Self {
        Self::Core(e.into())
    }
}

impl From<crate::error::KafkaError> for OpsError {
    fn from(e: crate::error::KafkaError) -> Self {
        Self::Core(e.into())
    }
}

/// Partitions a source lacks on a topic that another source has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingPartitions {
    pub checkpoint_id: String,
    pub topic: String,
    pub partitions: Vec<i32>,
}

fn describe_missing(missing: &[MissingPartitions]) -> String {
    let mut s = String::new();
    for (i, m) in missing.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        let _ = write!(
            s,
            "checkpoint {} lacks partitions {:?} of topic {}",
            m.checkpoint_id, m.partitions, m.topic
        );
    }
    s
}

/// A stored row, with its checkpoint id, as plans show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub checkpoint_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub last_modified: DateTime<Utc>,
}

impl Row {
    pub fn new(checkpoint_id: &str, r: &CheckpointRow) -> Self {
        Self {
            checkpoint_id: checkpoint_id.to_owned(),
            topic: r.tp.topic.clone(),
            partition: r.tp.partition,
            offset: r.offset,
            last_modified: r.last_modified,
        }
    }

    pub fn tp(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// Refuses when a live process runs one of `ids` (matched on its checkpoint id or pillow name),
/// unless `force`; returns the live processes that `force` overrode.
pub fn check_not_running(
    processes: &[ProcessRow],
    ids: &[String],
    force: bool,
) -> Result<Vec<ProcessRow>> {
    let live: Vec<ProcessRow> = processes
        .iter()
        .filter(|p| {
            p.alive
                && !gone_from_this_host(p)
                && ids
                    .iter()
                    .any(|id| p.checkpoint_id == *id || p.pillow_name == *id)
        })
        .cloned()
        .collect();
    if live.is_empty() || force {
        return Ok(live);
    }
    let first = &live[0];
    let id = ids
        .iter()
        .find(|id| first.checkpoint_id == **id || first.pillow_name == **id)
        .cloned()
        .unwrap_or_default();
    let processes = live
        .iter()
        .filter(|p| p.checkpoint_id == id || p.pillow_name == id)
        .map(|p| {
            format!(
                "process {} of pillow {} on {} pid {}, last heartbeat {} s ago at {}; taken as gone {} s after its last heartbeat",
                p.process_num,
                p.pillow_name,
                p.hostname,
                p.pid,
                (chrono::Utc::now() - p.heartbeat_at).num_seconds().max(0),
                p.heartbeat_at.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::store::liveness::STALE_AFTER.as_secs(),
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(OpsError::Running {
        checkpoint_id: id,
        processes,
    })
}

/// A process of this host whose pid no longer exists (killed, crashed) is gone whatever its
/// heartbeat's age: a SIGKILL does not make an operator wait for the heartbeat to go stale.
/// Processes of other hosts are judged by the heartbeat alone.
fn gone_from_this_host(p: &ProcessRow) -> bool {
    let proc_fs = std::path::Path::new("/proc/self");
    p.hostname == crate::store::liveness::hostname()
        && proc_fs.exists()
        && !std::path::Path::new(&format!("/proc/{}", p.pid)).exists()
}

/// Reads the liveness rows and refuses when a live process runs one of `ids`, unless `force`
/// (see [`check_not_running`]); returns the live processes that `force` overrode.
pub(crate) async fn refuse_running(
    pg: &Arc<Pg>,
    ids: &[String],
    force: bool,
) -> Result<Vec<ProcessRow>> {
    let processes = PostgresLivenessStore::new(Arc::clone(pg))
        .list(None)
        .await?;
    check_not_running(&processes, ids, force)
}

/// Rejects an empty id and ids given twice.
pub(crate) fn check_ids(ids: &[String]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for id in ids {
        if id.is_empty() {
            return Err(OpsError::InvalidArgument("a checkpoint id is empty".into()));
        }
        if !seen.insert(id.as_str()) {
            return Err(OpsError::InvalidArgument(format!(
                "checkpoint {id} is given twice"
            )));
        }
    }
    Ok(())
}

/// Fails with [`OpsError::Stale`] when `found` (what a transaction deleted or locked) differs from
/// the rows the plan showed.
pub(crate) fn verify_unchanged(planned: &[Row], found: &[KeyedOffset]) -> Result<()> {
    let mut want: Vec<KeyedOffset> = planned
        .iter()
        .map(|r| (r.checkpoint_id.clone(), r.tp(), r.offset))
        .collect();
    want.sort();
    if want == found {
        return Ok(());
    }
    let (id, detail) = first_difference(&want, found);
    Err(OpsError::Stale {
        checkpoint_id: id,
        detail,
    })
}

fn first_difference(want: &[KeyedOffset], found: &[KeyedOffset]) -> (String, String) {
    let w: BTreeMap<(&str, &TopicPartition), i64> = want
        .iter()
        .map(|(id, tp, o)| ((id.as_str(), tp), *o))
        .collect();
    let f: BTreeMap<(&str, &TopicPartition), i64> = found
        .iter()
        .map(|(id, tp, o)| ((id.as_str(), tp), *o))
        .collect();
    for (k, o) in &f {
        match w.get(k) {
            None => return (k.0.to_owned(), format!("{} appeared at offset {o}", k.1)),
            Some(p) if p != o => {
                return (
                    k.0.to_owned(),
                    format!("{} moved from offset {p} to {o}", k.1),
                )
            }
            Some(_) => {}
        }
    }
    for (k, o) in &w {
        if !f.contains_key(k) {
            return (k.0.to_owned(), format!("{} at offset {o} was deleted", k.1));
        }
    }
    (String::new(), "rows differ".into())
}

/// The newest `last_modified` of each id in `rows`.
pub fn last_modified_by_id(rows: &[Row]) -> BTreeMap<String, DateTime<Utc>> {
    let mut out: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for r in rows {
        let e = out
            .entry(r.checkpoint_id.clone())
            .or_insert(r.last_modified);
        if r.last_modified > *e {
            *e = r.last_modified;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod test_rows {
    use super::*;

    pub(crate) fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("valid")
    }

    /// Rows of one checkpoint from `(topic, partition, offset)` triples.
    pub(crate) fn rows(v: &[(&str, i32, i64)]) -> Vec<CheckpointRow> {
        v.iter()
            .map(|(t, p, o)| CheckpointRow {
                tp: TopicPartition::new(*t, *p),
                offset: *o,
                last_modified: at(i64::from(*p)),
            })
            .collect()
    }

    pub(crate) fn process(pillow: &str, checkpoint_id: &str, alive: bool) -> ProcessRow {
        ProcessRow {
            pillow_name: pillow.into(),
            process_num: 0,
            num_processes: 1,
            dedicated_migration_process: false,
            checkpoint_id: checkpoint_id.into(),
            hostname: "host".into(),
            pid: 42,
            partitions: vec![],
            started_at: at(0),
            heartbeat_at: at(10),
            alive,
            processor_stats: crate::store::liveness::ProcessorStats::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_rows::*;
    use super::*;

    #[test]
    fn running_pillows_are_refused_unless_forced() {
        let procs = [
            process("xform-pillow", "xform-pillow-id", true),
            process("other", "other", true),
            process("stale", "stale", false),
        ];
        let ids = vec!["xform-pillow-id".to_owned()];
        let e = check_not_running(&procs, &ids, false).expect_err("running");
        assert!(
            e.to_string()
                .starts_with("pillow xform-pillow-id is running (process 0 of pillow xform-pillow on host pid 42"),
            "{e}"
        );
        assert_eq!(
            check_not_running(&procs, &ids, true).expect("forced").len(),
            1
        );
        assert!(check_not_running(&procs, &["stale".to_owned()], false)
            .expect("a stale heartbeat is not running")
            .is_empty());
        assert!(check_not_running(&procs, &["xform-pillow".to_owned()], false).is_err());
        assert!(
            e.to_string().contains("s ago at ") && e.to_string().contains("taken as gone 60 s"),
            "{e}"
        );
    }

    #[test]
    fn a_process_of_this_host_that_no_longer_exists_is_not_running() {
        let mut dead = process("killed", "killed", true);
        dead.hostname = crate::store::liveness::hostname();
        dead.pid = i32::MAX; // beyond any pid_max: no such process
        let mut me = process("me", "me", true);
        me.hostname = crate::store::liveness::hostname();
        me.pid = crate::store::liveness::pid();
        let procs = [dead, me];
        assert!(check_not_running(&procs, &["killed".to_owned()], false)
            .expect("a killed process is gone")
            .is_empty());
        assert!(check_not_running(&procs, &["me".to_owned()], false).is_err());
    }

    #[test]
    fn stale_plans_name_the_first_difference() {
        let planned = vec![Row {
            checkpoint_id: "b".into(),
            topic: "t".into(),
            partition: 0,
            offset: 5,
            last_modified: at(0),
        }];
        let same = vec![("b".to_owned(), TopicPartition::new("t", 0), 5)];
        assert!(verify_unchanged(&planned, &same).is_ok());
        let moved = vec![("b".to_owned(), TopicPartition::new("t", 0), 7)];
        assert_eq!(
            verify_unchanged(&planned, &moved).expect_err("moved").to_string(),
            "checkpoint b changed since the plan was made (t,0 moved from offset 5 to 7): nothing was written, plan again"
        );
        assert!(verify_unchanged(&planned, &[]).is_err());
        assert!(verify_unchanged(&[], &same).is_err());
    }

    #[test]
    fn ids_must_be_distinct_and_non_empty() {
        assert!(check_ids(&["a".into(), "b".into()]).is_ok());
        assert!(check_ids(&["a".into(), "a".into()]).is_err());
        assert!(check_ids(&[String::new()]).is_err());
    }
}
