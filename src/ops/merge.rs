//! `merge_pillow_checkpoints`: one checkpoint from several (docs/commcare-pillowtop.md §2.2), taking the
//! **minimum** offset of each partition across the sources so that no processor of any merged
//! pillow skips a change; the processors of a more advanced source reprocess `max − min` changes
//! on that partition. CommCare's traps are fixed on purpose (§9 #15–#17):
//!
//! * an empty source list, or sources without rows, fail before anything is written;
//! * the consistency check is per topic and does not depend on row order: every source that reads
//!   a topic must have every partition of it that another source has; the error names exactly
//!   which partitions are missing where (CommCare's exit status 2);
//! * with the target's topics given, only those topics are checked and merged (partial overlap
//!   on other topics no longer aborts);
//! * the apply step is one transaction that replaces the target's rows after checking they are
//!   still those of the plan.
//!
//! Sources without any row (pillows that never ran) are listed in the plan: they do not drag the
//! merge down to offset 0 as they did in CommCare, and their processors start where the other
//! sources are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::{
    check_ids, refuse_running, verify_unchanged, MissingPartitions, OpsError, Result, Row,
};
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::{KeyedOffset, RowsById};
use crate::store::liveness::ProcessRow;

/// One merged partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergedPartition {
    pub topic: String,
    pub partition: i32,
    /// The offset written to the target: the minimum across the sources.
    pub offset: i64,
    pub max_offset: i64,
    /// `max − min`: changes the most advanced source's processors will see again.
    pub reprocess: i64,
    /// Each source's offset on this partition.
    pub sources: BTreeMap<String, i64>,
}

impl MergedPartition {
    pub fn tp(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// What a merge will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergePlan {
    pub sources: Vec<String>,
    pub target: String,
    /// The target pillow's topics, when given: only they are checked and written.
    pub target_topics: Option<Vec<String>>,
    pub partitions: Vec<MergedPartition>,
    /// The target's existing rows (all deleted; those of merged partitions are rewritten).
    pub existing: Vec<Row>,
    /// Sources without any row (never-run pillows): they contribute nothing.
    pub sources_without_rows: Vec<String>,
    /// Source topics left out because the target does not read them.
    pub ignored_topics: Vec<String>,
}

impl MergePlan {
    /// The largest reprocessing of any partition (CommCare's `maximum_difference`).
    pub fn max_reprocess(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.reprocess)
            .max()
            .unwrap_or(0)
    }

    pub fn target_exists(&self) -> bool {
        !self.existing.is_empty()
    }
}

/// Plans merging `sources` into `target`. `rows` holds the rows of every source and of the
/// target (missing entries count as no rows).
pub fn plan_merge(
    sources: &[String],
    target: &str,
    target_topics: Option<&[String]>,
    rows: &RowsById,
) -> Result<MergePlan> {
    if sources.is_empty() {
        return Err(OpsError::NoSources);
    }
    let mut ids = sources.to_vec();
    ids.push(target.to_owned());
    check_ids(&ids)?;
    let wanted: Option<BTreeSet<&str>> = match target_topics {
        Some(topics) => {
            for t in topics {
                crate::partition::validate_topic_name(t)?;
            }
            Some(topics.iter().map(String::as_str).collect())
        }
        None => None,
    };
    let keep = |topic: &str| wanted.as_ref().is_none_or(|w| w.contains(topic));

    // (topic → source → partitions → offset), restricted to the target's topics.
    let mut by_topic: ByTopic<'_> = BTreeMap::new();
    let mut ignored = BTreeSet::new();
    let mut without_rows = Vec::new();
    for s in sources {
        let source_rows = rows.get(s).map(Vec::as_slice).unwrap_or_default();
        if source_rows.is_empty() {
            without_rows.push(s.clone());
        }
        for r in source_rows {
            if keep(&r.tp.topic) {
                by_topic
                    .entry(r.tp.topic.as_str())
                    .or_default()
                    .entry(s.as_str())
                    .or_default()
                    .insert(r.tp.partition, r.offset);
            } else {
                ignored.insert(r.tp.topic.clone());
            }
        }
    }
    if by_topic.is_empty() {
        let detail = match target_topics {
            Some(t) if without_rows.len() < sources.len() => format!(" on topics {t:?}"),
            _ => String::new(),
        };
        return Err(OpsError::NoSourceRows {
            ids: sources.to_vec(),
            detail,
        });
    }

    let (partitions, missing) = merge_topics(&by_topic);
    if !missing.is_empty() {
        return Err(OpsError::Inconsistent(missing));
    }
    let existing = rows
        .get(target)
        .map(|v| v.iter().map(|r| Row::new(target, r)).collect())
        .unwrap_or_default();
    Ok(MergePlan {
        sources: sources.to_vec(),
        target: target.to_owned(),
        target_topics: target_topics.map(<[String]>::to_vec),
        partitions,
        existing,
        sources_without_rows: without_rows,
        ignored_topics: ignored.into_iter().collect(),
    })
}

/// Reads the rows of the sources and target and the liveness rows, refuses while one of them has
/// a live process (unless `force`), and plans the merge. Returns the plan and the live processes
/// that `force` overrode.
pub async fn prepare_merge(
    pg: &Arc<Pg>,
    sources: &[String],
    target: &str,
    target_topics: Option<&[String]>,
    force: bool,
) -> Result<(MergePlan, Vec<ProcessRow>)> {
    let mut ids = sources.to_vec();
    ids.push(target.to_owned());
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&ids)
        .await?;
    let plan = plan_merge(sources, target, target_topics, &rows)?;
    let forced = refuse_running(pg, &ids, force).await?;
    Ok((plan, forced))
}

/// Sources by partition by topic.
type ByTopic<'a> = BTreeMap<&'a str, BTreeMap<&'a str, BTreeMap<i32, i64>>>;

/// Per topic: the minimum of each partition, and the partitions each reading source lacks.
fn merge_topics(by_topic: &ByTopic<'_>) -> (Vec<MergedPartition>, Vec<MissingPartitions>) {
    let mut missing = Vec::new();
    let mut partitions = Vec::new();
    for (topic, per_source) in by_topic {
        let all: BTreeSet<i32> = per_source
            .values()
            .flat_map(|m| m.keys().copied())
            .collect();
        for (source, parts) in per_source {
            let lacks: Vec<i32> = all
                .iter()
                .filter(|p| !parts.contains_key(p))
                .copied()
                .collect();
            if !lacks.is_empty() {
                missing.push(MissingPartitions {
                    checkpoint_id: (*source).to_owned(),
                    topic: (*topic).to_owned(),
                    partitions: lacks,
                });
            }
        }
        for p in &all {
            let offsets: BTreeMap<String, i64> = per_source
                .iter()
                .filter_map(|(s, parts)| parts.get(p).map(|o| ((*s).to_owned(), *o)))
                .collect();
            let min = offsets.values().copied().min().unwrap_or(0);
            let max = offsets.values().copied().max().unwrap_or(0);
            partitions.push(MergedPartition {
                topic: (*topic).to_owned(),
                partition: *p,
                offset: min,
                max_offset: max,
                reprocess: max - min,
                sources: offsets,
            });
        }
    }
    (partitions, missing)
}

/// Applies `plan` in one transaction: deletes the target's rows (checking they are the plan's),
/// then writes the minimum offset of every merged partition. Returns the number of rows written.
pub async fn apply_merge(pg: &Arc<Pg>, plan: &MergePlan) -> Result<u64> {
    let writes: Vec<KeyedOffset> = plan
        .partitions
        .iter()
        .map(|p| (plan.target.clone(), p.tp(), p.offset))
        .collect();
    let what = format!(
        "merging checkpoints {:?} into {}",
        plan.sources, plan.target
    );
    let (writes, targets) = (&writes, std::slice::from_ref(&plan.target));
    let store = PostgresCheckpointStore::new(Arc::clone(pg));
    store
        .transaction(&what, |tx| async move {
            let deleted = tx.delete(targets).await?;
            verify_unchanged(&plan.existing, &deleted)?;
            Ok(tx.insert_new(writes).await??)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::rows;
    use super::*;

    fn data(v: Vec<(&str, Vec<crate::store::checkpoints::CheckpointRow>)>) -> RowsById {
        v.into_iter().map(|(k, r)| (k.to_owned(), r)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn takes_the_minimum_per_partition_and_reports_reprocessing() {
        let d = data(vec![
            ("a", rows(&[("case", 0, 100), ("case", 1, 50)])),
            ("b", rows(&[("case", 0, 80), ("case", 1, 70)])),
            ("t", rows(&[("case", 0, 1)])),
        ]);
        let plan = plan_merge(&ids(&["a", "b"]), "t", None, &d).expect("plan");
        let got: Vec<(i32, i64, i64)> = plan
            .partitions
            .iter()
            .map(|p| (p.partition, p.offset, p.reprocess))
            .collect();
        assert_eq!(got, [(0, 80, 20), (1, 50, 20)]);
        assert_eq!(plan.max_reprocess(), 20);
        assert!(plan.target_exists());
        assert_eq!(plan.partitions[0].sources["a"], 100);
    }

    #[test]
    fn disjoint_topics_are_unioned_and_partial_overlap_passes() {
        // CommCare (b): disjoint topic sets pass; (c): partial overlap used to abort.
        let d = data(vec![
            (
                "a",
                rows(&[("case", 0, 1), ("case-sql", 0, 5), ("case-sql", 1, 6)]),
            ),
            ("b", rows(&[("case-sql", 0, 3), ("case-sql", 1, 9)])),
        ]);
        let plan = plan_merge(&ids(&["a", "b"]), "t", None, &d).expect("plan");
        assert_eq!(plan.partitions.len(), 3);
        assert!(!plan.target_exists());
    }

    #[test]
    fn missing_partitions_are_named() {
        // CommCare (d): a source created before partitions were added.
        let d = data(vec![
            ("a", rows(&[("case", 0, 1), ("case", 1, 1), ("case", 2, 1)])),
            ("b", rows(&[("case", 0, 1)])),
        ]);
        let e = plan_merge(&ids(&["a", "b"]), "t", None, &d).expect_err("inconsistent");
        let OpsError::Inconsistent(m) = &e else {
            panic!("{e}")
        };
        assert_eq!(
            m,
            &[MissingPartitions {
                checkpoint_id: "b".into(),
                topic: "case".into(),
                partitions: vec![1, 2]
            }]
        );
        assert!(e
            .to_string()
            .starts_with("Not all checkpoints have the same topics and partitions specified. Aborting pillow merging: checkpoint b lacks partitions [1, 2] of topic case"));
    }

    #[test]
    fn target_topics_restrict_the_check_and_the_rows() {
        let d = data(vec![
            ("a", rows(&[("case", 0, 1), ("case", 1, 1), ("form", 0, 4)])),
            ("b", rows(&[("case", 0, 1), ("form", 0, 2)])),
        ]);
        assert!(plan_merge(&ids(&["a", "b"]), "t", None, &d).is_err());
        let plan = plan_merge(&ids(&["a", "b"]), "t", Some(&ids(&["form"])), &d).expect("plan");
        assert_eq!(plan.partitions.len(), 1);
        assert_eq!(plan.partitions[0].offset, 2);
        assert_eq!(plan.ignored_topics, ["case"]);
        let e = plan_merge(&ids(&["a", "b"]), "t", Some(&ids(&["nothing"])), &d)
            .expect_err("no rows on the target's topics");
        assert!(e.to_string().contains("on topics"), "{e}");
    }

    #[test]
    fn empty_sources_and_never_run_sources() {
        let d = data(vec![("a", rows(&[("case", 0, 7)]))]);
        assert!(matches!(
            plan_merge(&[], "t", None, &d),
            Err(OpsError::NoSources)
        ));
        assert!(matches!(
            plan_merge(&ids(&["x", "y"]), "t", None, &d),
            Err(OpsError::NoSourceRows { .. })
        ));
        let plan = plan_merge(&ids(&["a", "never"]), "t", None, &d).expect("plan");
        assert_eq!(plan.sources_without_rows, ["never"]);
        assert_eq!(
            plan.partitions[0].offset, 7,
            "a never-run source does not drag to 0"
        );
        assert!(matches!(
            plan_merge(&ids(&["a", "t"]), "t", None, &d),
            Err(OpsError::InvalidArgument(_))
        ));
    }
}
