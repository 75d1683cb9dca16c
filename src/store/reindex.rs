//! Rebuilds of a processor's index (issue 15), in `pillowtop_rs_reindex`: one row per run, the
//! state machine of [`crate::ops::reindex`] and what it did, readable by an operator.
//!
//! The running pillow reads the newest run of each of its Elasticsearch processors (about once
//! a second, [`latest`]) to know where to write ([`Targets`]): to both versions from the
//! dual-write step until the old version is dropped, to the new one alone after. Each process
//! acknowledges the step it writes by ([`acknowledge`]), so the reindex knows when every live
//! process writes to a version before it relies on that (before the backfill starts, before
//! the old version is deleted).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::pg::{err, Pg};

/// The steps of a run, in order; a run ends `Done`, `RolledBack` or `Aborted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Sizes and free disk checked (nothing written to the search node yet).
    Preflight,
    /// The new index exists, with the reindex settings (refresh off, no replicas).
    Created,
    /// The live pillow is asked to write to both versions (waiting for every process).
    DualWrite,
    /// Every live process writes to both; documents are copied from the source.
    Backfill,
    /// The copy is done; counts and a sample are compared.
    Verify,
    /// The alias points at the new index; the old one is kept (and still written) for rollback.
    Swapped,
    /// The old version is no longer written (waiting for every process), then deleted.
    DropOld,
    Done,
    /// The alias is back on the old index; the new one is no longer written, then deleted.
    RollingBack,
    RolledBack,
    /// Abandoned before the swap: the new version is no longer written, then deleted.
    Aborting,
    Aborted,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preflight => "preflight",
            Self::Created => "created",
            Self::DualWrite => "dual_write",
            Self::Backfill => "backfill",
            Self::Verify => "verify",
            Self::Swapped => "swapped",
            Self::DropOld => "drop_old",
            Self::Done => "done",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Aborting => "aborting",
            Self::Aborted => "aborted",
        }
    }

    /// The step named `s` (its `as_str`, which is its serde name).
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }

    /// Whether the run has ended (nothing left to do).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::RolledBack | Self::Aborted)
    }
}

/// Where a processor writes: `primary` (whose failures are its changes' error rows) and the
/// other versions written the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub primary: String,
    pub also: Vec<String>,
}

impl Targets {
    /// Every index written, the primary first.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary.as_str()).chain(self.also.iter().map(String::as_str))
    }
}

/// One run, as its row stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReindexRun {
    pub id: i64,
    pub pillow: String,
    pub processor: String,
    /// The index serving when the run started, and the one it builds.
    pub old_index: String,
    pub new_index: String,
    pub alias: String,
    pub step: Step,
    /// The command's options (source, chunk size, slices, filters, keep window).
    pub options: Value,
    /// What preflight found (sizes, free disk).
    pub preflight: Value,
    /// The pillow's topics' high-water marks when every process wrote to both versions.
    pub kafka_position: Value,
    /// Per backfill slice: `{"last_id": …, "done": n}`.
    pub progress: Value,
    /// `"host:pid"` → the step that process writes by.
    pub acks: BTreeMap<String, String>,
    pub verify: Value,
    /// The old index's settings the reindex settings replaced on the new one, restored at swap.
    pub settings: Value,
    pub keep_old_until: Option<DateTime<Utc>>,
    /// What each step did: `[{"at": …, "step": …, "message": …}]`.
    pub log: Value,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl ReindexRun {
    /// Where the processor writes while the run stands at its step.
    pub fn targets(&self) -> Targets {
        let (old, new) = (self.old_index.clone(), self.new_index.clone());
        match self.step {
            Step::DualWrite | Step::Backfill | Step::Verify => Targets {
                primary: old,
                also: vec![new],
            },
            Step::Swapped => Targets {
                primary: new,
                also: vec![old],
            },
            Step::DropOld | Step::Done => Targets {
                primary: new,
                also: vec![],
            },
            Step::Preflight
            | Step::Created
            | Step::RollingBack
            | Step::RolledBack
            | Step::Aborting
            | Step::Aborted => Targets {
                primary: old,
                also: vec![],
            },
        }
    }
}

impl ReindexRun {
    /// Where a `postgres_table` processor writes while the run stands at its step. A table
    /// keeps its name (`alias`, the configured table): the run builds `new_index`, the swap
    /// renames the table serving to `old_index` and `new_index` to the configured name, so the
    /// primary is always the configured name, and the other version is the one being built
    /// (before the swap) or the old one kept for a rollback (after it). The swap leaves a view
    /// under the name just vacated over the version that lost it, so a process that has not yet
    /// seen the swap still writes both versions (see [`crate::ops::reindex`]).
    pub fn table_targets(&self) -> Targets {
        let also = match self.step {
            Step::DualWrite | Step::Backfill | Step::Verify => vec![self.new_index.clone()],
            Step::Swapped => vec![self.old_index.clone()],
            Step::Preflight
            | Step::Created
            | Step::DropOld
            | Step::Done
            | Step::RollingBack
            | Step::RolledBack
            | Step::Aborting
            | Step::Aborted => Vec::new(),
        };
        Targets {
            primary: self.alias.clone(),
            also,
        }
    }
}

const COLUMNS: &str =
    "id, pillow, processor, old_index, new_index, alias, step, options, preflight, \
     kafka_position, progress, acks, verify, settings, keep_old_until, log, error, started_at, \
     updated_at, finished_at";

fn from_row(r: &tokio_postgres::Row) -> ReindexRun {
    let acks: Value = r.get(11);
    ReindexRun {
        id: r.get(0),
        pillow: r.get(1),
        processor: r.get(2),
        old_index: r.get(3),
        new_index: r.get(4),
        alias: r.get(5),
        step: Step::parse(&r.get::<_, String>(6)).unwrap_or(Step::Preflight),
        options: r.get(7),
        preflight: r.get(8),
        kafka_position: r.get(9),
        progress: r.get(10),
        acks: serde_json::from_value(acks).unwrap_or_default(),
        verify: r.get(12),
        settings: r.get(13),
        keep_old_until: r.get(14),
        log: r.get(15),
        error: r.get(16),
        started_at: r.get(17),
        updated_at: r.get(18),
        finished_at: r.get(19),
    }
}

/// The newest run of `processor` of `pillow`, ended or not.
pub async fn latest(pg: &Pg, pillow: &str, processor: &str) -> Result<Option<ReindexRun>> {
    let what = format!("reading the newest reindex of processor {processor} of pillow {pillow}");
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            let row = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_reindex WHERE pillow = $1 AND processor = $2 ORDER BY id DESC LIMIT 1"),
                    &[&pillow, &processor],
                )
                .await
                .map_err(err(what))?;
            Ok(row.as_ref().map(from_row))
        }
    })
    .await
}

/// Every run of `pillow` (every pillow when `None`), newest first.
pub async fn list(pg: &Pg, pillow: Option<&str>) -> Result<Vec<ReindexRun>> {
    let what = "listing the reindex runs";
    pg.run(what, |c| async move {
        let rows = c
            .query(
                &format!("SELECT {COLUMNS} FROM pillowtop_rs_reindex WHERE $1::text IS NULL OR pillow = $1 ORDER BY id DESC"),
                &[&pillow],
            )
            .await
            .map_err(err(what))?;
        Ok(rows.iter().map(from_row).collect())
    })
    .await
}

/// What a new run starts with.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub pillow: &'a str,
    pub processor: &'a str,
    pub old_index: &'a str,
    pub new_index: &'a str,
    pub alias: &'a str,
    pub options: &'a Value,
    pub preflight: &'a Value,
}

/// Records a new run at [`Step::Preflight`]. `Ok(None)`: the processor already has a run that
/// has not ended (one at a time, by a unique index).
pub async fn create(pg: &Pg, run: &NewRun<'_>) -> Result<Option<ReindexRun>> {
    let what = format!(
        "recording a reindex of processor {} of pillow {}",
        run.processor, run.pillow
    );
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            let row = c
                .query_opt(
                    &format!(
                        "INSERT INTO pillowtop_rs_reindex (pillow, processor, old_index, new_index, alias, step, options, preflight, log)
                         VALUES ($1, $2, $3, $4, $5, 'preflight', $6, $7,
                                 jsonb_build_array(jsonb_build_object('at', now(), 'step', 'preflight', 'message', 'run recorded')))
                         ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
                    ),
                    &[&run.pillow, &run.processor, &run.old_index, &run.new_index, &run.alias, run.options, run.preflight],
                )
                .await
                .map_err(err(what))?;
            Ok(row.as_ref().map(from_row))
        }
    })
    .await
}

/// One run by id.
pub async fn get(pg: &Pg, id: i64) -> Result<Option<ReindexRun>> {
    let what = format!("reading reindex run {id}");
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            let row = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM pillowtop_rs_reindex WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(err(what))?;
            Ok(row.as_ref().map(from_row))
        }
    })
    .await
}

/// A change of a run's row: the fields given are set, a log line is appended.
#[derive(Debug, Default, Clone)]
pub struct Update {
    pub step: Option<Step>,
    pub kafka_position: Option<Value>,
    pub progress: Option<Value>,
    pub verify: Option<Value>,
    pub settings: Option<Value>,
    pub keep_old_until: Option<DateTime<Utc>>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<String>>,
    pub log: Option<String>,
    pub finished: bool,
}

/// Applies `update` to run `id` and returns the row as it now stands.
pub async fn update(pg: &Pg, id: i64, update: &Update) -> Result<ReindexRun> {
    let what = format!("updating reindex run {id}");
    let step = update.step.map(Step::as_str);
    let clear_error = matches!(update.error, Some(None));
    let error = update.error.clone().flatten();
    pg.run(&what, |c| {
        let (what, error) = (what.clone(), error.clone());
        async move {
            let row = c
                .query_one(
                    &format!(
                        "UPDATE pillowtop_rs_reindex SET
                            step = COALESCE($2, step),
                            kafka_position = COALESCE($3, kafka_position),
                            progress = COALESCE($4, progress),
                            verify = COALESCE($5, verify),
                            settings = COALESCE($6, settings),
                            keep_old_until = COALESCE($7, keep_old_until),
                            error = CASE WHEN $8 THEN NULL ELSE COALESCE($9, error) END,
                            log = CASE WHEN $10::text IS NULL THEN log
                                  ELSE log || jsonb_build_array(jsonb_build_object('at', now(), 'step', COALESCE($2, step), 'message', $10::text)) END,
                            finished_at = CASE WHEN $11 THEN now() ELSE finished_at END,
                            updated_at = now()
                         WHERE id = $1 RETURNING {COLUMNS}"
                    ),
                    &[
                        &id,
                        &step,
                        &update.kafka_position,
                        &update.progress,
                        &update.verify,
                        &update.settings,
                        &update.keep_old_until,
                        &clear_error,
                        &error,
                        &update.log,
                        &update.finished,
                    ],
                )
                .await
                .map_err(err(what))?;
            Ok(from_row(&row))
        }
    })
    .await
}

/// Records that process `who` (`host:pid`) writes by `step` of run `id`.
pub async fn acknowledge(pg: &Pg, id: i64, who: &str, step: Step) -> Result<()> {
    let what = format!("acknowledging step {} of reindex run {id}", step.as_str());
    let step = step.as_str();
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            c.execute(
                "UPDATE pillowtop_rs_reindex SET acks = acks || jsonb_build_object($2::text, $3::text) WHERE id = $1",
                &[&id, &who, &step],
            )
            .await
            .map_err(err(what))?;
            Ok(())
        }
    })
    .await
}

/// Sets backfill slice `slice`'s progress (slices update their own key concurrently).
pub async fn set_progress(pg: &Pg, id: i64, slice: &str, progress: &Value) -> Result<()> {
    let what = format!("recording the backfill progress of reindex run {id}");
    pg.run(&what, |c| {
        let what = what.clone();
        async move {
            c.execute(
                "UPDATE pillowtop_rs_reindex SET progress = progress || jsonb_build_object($2::text, $3::jsonb), updated_at = now() WHERE id = $1",
                &[&id, &slice, progress],
            )
            .await
            .map_err(err(what))?;
            Ok(())
        }
    })
    .await
}

/// The advisory lock key of run `id` (held by the process carrying it out).
pub fn lock_key(id: i64) -> i64 {
    // A fixed high part so that the keys do not meet the schema lock's or other users'.
    0x5052_4958_0000_0000 | (id & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(step: Step) -> ReindexRun {
        ReindexRun {
            id: 1,
            pillow: "p".into(),
            processor: "es".into(),
            old_index: "old".into(),
            new_index: "new".into(),
            alias: "a".into(),
            step,
            options: Value::Null,
            preflight: Value::Null,
            kafka_position: Value::Null,
            progress: Value::Null,
            acks: BTreeMap::new(),
            verify: Value::Null,
            settings: Value::Null,
            keep_old_until: None,
            log: Value::Null,
            error: None,
            started_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
        }
    }

    #[test]
    fn the_processor_writes_both_versions_from_dual_write_until_the_old_one_is_dropped() {
        let t = |s| {
            let t = run(s).targets();
            t.all().map(str::to_owned).collect::<Vec<_>>().join(",")
        };
        assert_eq!(t(Step::Created), "old");
        assert_eq!(t(Step::DualWrite), "old,new");
        assert_eq!(t(Step::Backfill), "old,new");
        assert_eq!(t(Step::Verify), "old,new");
        assert_eq!(t(Step::Swapped), "new,old");
        assert_eq!(t(Step::DropOld), "new");
        assert_eq!(t(Step::Done), "new");
        assert_eq!(t(Step::RollingBack), "old");
        assert_eq!(t(Step::Aborted), "old");
    }

    #[test]
    fn a_table_keeps_its_name_and_writes_the_other_version_from_dual_write_until_the_old_one_is_dropped(
    ) {
        let t = |s| {
            let t = run(s).table_targets();
            t.all().map(str::to_owned).collect::<Vec<_>>().join(",")
        };
        assert_eq!(t(Step::Created), "a");
        assert_eq!(t(Step::DualWrite), "a,new");
        assert_eq!(t(Step::Backfill), "a,new");
        assert_eq!(t(Step::Verify), "a,new");
        assert_eq!(t(Step::Swapped), "a,old");
        assert_eq!(t(Step::DropOld), "a");
        assert_eq!(t(Step::Done), "a");
        assert_eq!(t(Step::RollingBack), "a");
        assert_eq!(t(Step::Aborting), "a");
    }

    #[test]
    fn steps_round_trip_through_their_names() {
        for s in [
            Step::Preflight,
            Step::Swapped,
            Step::RolledBack,
            Step::Aborting,
        ] {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::parse("nope"), None);
    }
}
