//! `validate_kafka_pillow_checkpoints`: find checkpoints Kafka can no longer serve, before a
//! pillow starts on them (docs/commcare-pillowtop.md §2.4, §7.2). A checkpoint below the partition's first
//! available offset would skip changes (or fail in strict mode); one above the high-water mark
//! points at a recreated topic; one on a partition Kafka does not have is orphaned.
//!
//! CommCare skipped offset-0 rows because its pillows created them as a side effect; ours never
//! do, so offset 0 is checked like any other unless the caller asks to skip it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::kafka::{KafkaInfo, Watermarks};
use super::Result;
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::RowsById;

/// What is wrong with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Below the first available offset: changes were deleted by retention before being read.
    Expired,
    /// Above the high-water mark.
    BeyondHighWater,
    /// Kafka has no such partition.
    UnknownPartition,
}

/// One invalid row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub checkpoint_id: String,
    pub topic: String,
    pub partition: i32,
    pub kind: ProblemKind,
    /// The checkpoint's offset.
    pub needed: i64,
    pub first_available: Option<i64>,
    pub high: Option<i64>,
}

impl std::fmt::Display for Problem {
    /// CommCare's `UnavailableKafkaOffset` message, prefixed with the checkpoint id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = &self.checkpoint_id;
        match self.kind {
            ProblemKind::Expired => write!(
                f,
                "checkpoint {id}: First available topic offset for {}:{} is {} but needed {}.",
                self.topic,
                self.partition,
                self.first_available.unwrap_or_default(),
                self.needed
            ),
            ProblemKind::BeyondHighWater => write!(
                f,
                "checkpoint {id}: offset {} for {}:{} is beyond the high-water mark {}",
                self.needed,
                self.topic,
                self.partition,
                self.high.unwrap_or_default()
            ),
            ProblemKind::UnknownPartition => write!(
                f,
                "checkpoint {id}: kafka has no partition {}:{} (checkpoint offset {})",
                self.topic, self.partition, self.needed
            ),
        }
    }
}

/// Every problem of `rows` against `watermarks` (pure).
pub fn validate(
    rows: &RowsById,
    watermarks: &BTreeMap<TopicPartition, Watermarks>,
    skip_zero: bool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (id, rs) in rows {
        for r in rs {
            if skip_zero && r.offset == 0 {
                continue;
            }
            let w = watermarks.get(&r.tp);
            let kind = match w {
                None => Some(ProblemKind::UnknownPartition),
                Some(w) if r.offset < w.low => Some(ProblemKind::Expired),
                Some(w) if r.offset > w.high => Some(ProblemKind::BeyondHighWater),
                Some(_) => None,
            };
            if let Some(kind) = kind {
                out.push(Problem {
                    checkpoint_id: id.clone(),
                    topic: r.tp.topic.clone(),
                    partition: r.tp.partition,
                    kind,
                    needed: r.offset,
                    first_available: w.map(|w| w.low),
                    high: w.map(|w| w.high),
                });
            }
        }
    }
    out
}

/// Reads the rows (of `ids`, or all) and the watermarks, and validates them.
pub async fn collect(
    pg: &Arc<Pg>,
    kafka: &KafkaInfo,
    ids: Option<&[String]>,
    skip_zero: bool,
) -> Result<Vec<Problem>> {
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_selected(ids)
        .await?;
    let wanted: Vec<TopicPartition> = rows
        .values()
        .flatten()
        .map(|r| r.tp.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let watermarks = kafka.watermarks_of_existing(&wanted).await?;
    Ok(validate(&rows, &watermarks, skip_zero))
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::rows;
    use super::*;

    #[test]
    fn reports_expired_beyond_and_unknown_rows() {
        let data: RowsById = [(
            "c".to_owned(),
            rows(&[("t", 0, 2), ("t", 1, 0), ("t", 2, 99), ("t", 3, 5)]),
        )]
        .into();
        let w: BTreeMap<TopicPartition, Watermarks> = [
            (TopicPartition::new("t", 0), Watermarks { low: 6, high: 10 }),
            (TopicPartition::new("t", 1), Watermarks { low: 6, high: 10 }),
            (TopicPartition::new("t", 2), Watermarks { low: 0, high: 10 }),
        ]
        .into();
        let p = validate(&data, &w, false);
        let kinds: Vec<(i32, ProblemKind)> = p.iter().map(|p| (p.partition, p.kind)).collect();
        assert_eq!(
            kinds,
            [
                (0, ProblemKind::Expired),
                (1, ProblemKind::Expired),
                (2, ProblemKind::BeyondHighWater),
                (3, ProblemKind::UnknownPartition)
            ]
        );
        assert_eq!(
            p[0].to_string(),
            "checkpoint c: First available topic offset for t:0 is 6 but needed 2."
        );
        assert_eq!(
            validate(&data, &w, true).len(),
            3,
            "CommCare skips offset 0"
        );
    }
}
