//! `split_pillow_checkpoints`: copy every row of a source checkpoint to one or more targets
//! (docs/commcare-pillowtop.md §2.1), with CommCare's traps fixed (§9 #14):
//!
//! * the plan lists what is copied, which target rows are deleted or overwritten (with their last
//!   update), and, when the targets' topics are known, the topics only the source has (copied,
//!   unused by that target) and the topics only the target has (no rows: that target starts them
//!   by its start policy);
//! * a source without rows is an error before anything is written;
//! * the apply step is one transaction that first checks the target rows are still those of the
//!   plan.
//!
//! As in CommCare, every source row is copied (not only the target's topics), and every existing
//! row of a target is deleted first, on all topics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::{check_ids, refuse_running, verify_unchanged, OpsError, Result, Row};
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::{KeyedOffset, RowsById};
use crate::store::liveness::ProcessRow;

/// A target checkpoint and, when known, the topics its pillow reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    pub checkpoint_id: String,
    pub topics: Option<Vec<String>>,
}

impl SplitTarget {
    pub fn new(checkpoint_id: impl Into<String>) -> Self {
        Self {
            checkpoint_id: checkpoint_id.into(),
            topics: None,
        }
    }
}

/// Topics of one target that differ from the source's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicMismatch {
    pub checkpoint_id: String,
    pub topics: Vec<String>,
}

/// What a split will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitPlan {
    pub source: String,
    pub targets: Vec<String>,
    /// The source rows, copied to every target (per topic and partition).
    pub rows: Vec<Row>,
    /// Every existing row of the targets: deleted, or overwritten by a copied row.
    pub existing: Vec<Row>,
    /// Per target: topics the source has and the target does not read (copied, unused).
    pub source_only_topics: Vec<TopicMismatch>,
    /// Per target: topics the target reads and the source has no rows for (no rows are written:
    /// the target starts them by its start policy).
    pub target_only_topics: Vec<TopicMismatch>,
}

impl SplitPlan {
    /// Rows the apply step writes (source rows × targets).
    pub fn rows_to_write(&self) -> usize {
        self.rows.len() * self.targets.len()
    }

    /// Target ids that already have rows (CommCare's "Some of [...] already exist").
    pub fn existing_targets(&self) -> Vec<String> {
        self.existing
            .iter()
            .map(|r| r.checkpoint_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The offset `existing` row `r` will hold after the split (`None`: deleted).
    pub fn replacement(&self, r: &Row) -> Option<i64> {
        self.rows
            .iter()
            .find(|s| s.topic == r.topic && s.partition == r.partition)
            .map(|s| s.offset)
    }
}

/// Plans a split of `source` into `targets`. `rows` holds the rows of the source and of every
/// target (missing entries count as no rows).
pub fn plan_split(source: &str, targets: &[SplitTarget], rows: &RowsById) -> Result<SplitPlan> {
    if targets.is_empty() {
        return Err(OpsError::NoTargets);
    }
    let mut ids = vec![source.to_owned()];
    ids.extend(targets.iter().map(|t| t.checkpoint_id.clone()));
    check_ids(&ids)?;
    let source_rows: Vec<Row> = rows
        .get(source)
        .map(|v| v.iter().map(|r| Row::new(source, r)).collect())
        .unwrap_or_default();
    if source_rows.is_empty() {
        return Err(OpsError::NoSourceRows {
            ids: vec![source.to_owned()],
            detail: String::new(),
        });
    }
    let source_topics: BTreeSet<&str> = source_rows.iter().map(|r| r.topic.as_str()).collect();
    let mut existing = Vec::new();
    let mut source_only = Vec::new();
    let mut target_only = Vec::new();
    for t in targets {
        if let Some(v) = rows.get(&t.checkpoint_id) {
            existing.extend(v.iter().map(|r| Row::new(&t.checkpoint_id, r)));
        }
        if let Some(topics) = &t.topics {
            for topic in topics {
                crate::partition::validate_topic_name(topic)?;
            }
            let wanted: BTreeSet<&str> = topics.iter().map(String::as_str).collect();
            let only_source: Vec<String> = source_topics
                .difference(&wanted)
                .map(|s| (*s).to_owned())
                .collect();
            let only_target: Vec<String> = wanted
                .difference(&source_topics)
                .map(|s| (*s).to_owned())
                .collect();
            if !only_source.is_empty() {
                source_only.push(TopicMismatch {
                    checkpoint_id: t.checkpoint_id.clone(),
                    topics: only_source,
                });
            }
            if !only_target.is_empty() {
                target_only.push(TopicMismatch {
                    checkpoint_id: t.checkpoint_id.clone(),
                    topics: only_target,
                });
            }
        }
    }
    Ok(SplitPlan {
        source: source.to_owned(),
        targets: targets.iter().map(|t| t.checkpoint_id.clone()).collect(),
        rows: source_rows,
        existing,
        source_only_topics: source_only,
        target_only_topics: target_only,
    })
}

/// Reads the rows of the source and targets and the liveness rows, refuses while the source or
/// a target has a live process (unless `force`), and plans the split. Returns the plan and the
/// live processes that `force` overrode.
pub async fn prepare_split(
    pg: &Arc<Pg>,
    source: &str,
    targets: &[SplitTarget],
    force: bool,
) -> Result<(SplitPlan, Vec<ProcessRow>)> {
    let mut ids = vec![source.to_owned()];
    ids.extend(targets.iter().map(|t| t.checkpoint_id.clone()));
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&ids)
        .await?;
    let plan = plan_split(source, targets, &rows)?;
    let forced = refuse_running(pg, &ids, force).await?;
    Ok((plan, forced))
}

/// Applies `plan` in one transaction: deletes every row of the targets (checking they are the
/// plan's `existing` rows), then writes the source's offsets under each target. Returns the number
/// of rows written.
pub async fn apply_split(pg: &Arc<Pg>, plan: &SplitPlan) -> Result<u64> {
    let mut writes: Vec<KeyedOffset> = Vec::with_capacity(plan.rows_to_write());
    for target in &plan.targets {
        writes.extend(plan.rows.iter().map(|r| (target.clone(), r.tp(), r.offset)));
    }
    let what = format!(
        "splitting checkpoint {} into {:?}",
        plan.source, plan.targets
    );
    let writes = &writes;
    let store = PostgresCheckpointStore::new(Arc::clone(pg));
    store
        .transaction(&what, |tx| async move {
            let deleted = tx.delete(&plan.targets).await?;
            verify_unchanged(&plan.existing, &deleted)?;
            Ok(tx.insert_new(writes).await??)
        })
        .await
}

/// Rows per topic: (topic, partitions, min offset, max offset), for summaries.
pub fn rows_per_topic(rows: &[Row]) -> BTreeMap<String, (usize, i64, i64)> {
    let mut out: BTreeMap<String, (usize, i64, i64)> = BTreeMap::new();
    for r in rows {
        let e = out
            .entry(r.topic.clone())
            .or_insert((0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 = e.1.min(r.offset);
        e.2 = e.2.max(r.offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::rows;
    use super::*;

    fn by_id(v: Vec<(&str, Vec<crate::store::checkpoints::CheckpointRow>)>) -> RowsById {
        v.into_iter().map(|(k, r)| (k.to_owned(), r)).collect()
    }

    #[test]
    fn copies_every_source_row_to_every_target_and_lists_existing_rows() {
        let data = by_id(vec![
            (
                "a",
                rows(&[("form", 0, 10), ("form", 1, 20), ("case", 0, 5)]),
            ),
            ("b", rows(&[("form", 0, 3), ("old", 0, 1)])),
        ]);
        let plan =
            plan_split("a", &[SplitTarget::new("b"), SplitTarget::new("c")], &data).expect("plan");
        assert_eq!(plan.rows.len(), 3);
        assert_eq!(plan.rows_to_write(), 6);
        assert_eq!(plan.existing_targets(), ["b"]);
        assert_eq!(plan.existing.len(), 2);
        assert_eq!(
            plan.replacement(&plan.existing[0]),
            Some(10),
            "form,0 is overwritten"
        );
        assert_eq!(
            plan.replacement(&plan.existing[1]),
            None,
            "old,0 is deleted"
        );
        assert!(plan.source_only_topics.is_empty() && plan.target_only_topics.is_empty());
        let per_topic = rows_per_topic(&plan.rows);
        assert_eq!(per_topic["form"], (2, 10, 20));
    }

    #[test]
    fn topic_mismatches_are_reported_per_target() {
        let data = by_id(vec![("a", rows(&[("form", 0, 10), ("case", 0, 5)]))]);
        let target = SplitTarget {
            checkpoint_id: "meta".into(),
            topics: Some(vec!["form".into(), "form-meta".into()]),
        };
        let plan = plan_split("a", &[target, SplitTarget::new("other")], &data).expect("plan");
        assert_eq!(
            plan.source_only_topics,
            [TopicMismatch {
                checkpoint_id: "meta".into(),
                topics: vec!["case".into()]
            }]
        );
        assert_eq!(
            plan.target_only_topics,
            [TopicMismatch {
                checkpoint_id: "meta".into(),
                topics: vec!["form-meta".into()]
            }]
        );
        assert_eq!(
            plan.rows.len(),
            2,
            "source-only topics are still copied, as in CommCare"
        );
    }

    #[test]
    fn refuses_a_source_without_rows_no_targets_and_repeated_ids() {
        let data = by_id(vec![("b", rows(&[("form", 0, 3)]))]);
        let e = plan_split("never-run", &[SplitTarget::new("b")], &data).expect_err("no rows");
        assert!(matches!(e, OpsError::NoSourceRows { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "checkpoints [\"never-run\"] have no rows: nothing to copy (has the pillow ever run?)"
        );
        assert!(matches!(
            plan_split("b", &[], &data),
            Err(OpsError::NoTargets)
        ));
        assert!(matches!(
            plan_split("b", &[SplitTarget::new("b")], &data),
            Err(OpsError::InvalidArgument(_))
        ));
        let bad = SplitTarget {
            checkpoint_id: "c".into(),
            topics: Some(vec!["a,b".into()]),
        };
        assert!(plan_split("b", &[bad], &data).is_err());
    }
}
