//! `add_kafka_partition <topic> <num_partitions>` (docs/commcare-pillowtop.md §2.4): after partitions were added
//! to a topic, give every checkpoint that reads the topic (has any row on it) a row at offset 0
//! for each new partition, so that no pillow starts them by accident of a missing row. Existing
//! rows are left alone. The CLI asks CommCare's two questions and, unlike CommCare (§9 #19),
//! aborts unless the answer is `y` or `yes`. When Kafka is reachable, a topic that does not have
//! that many partitions yet is refused.

use std::sync::Arc;

use serde::Serialize;

use super::{OpsError, Result};
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;
use crate::store::checkpoints::RowsById;

/// What adding partitions will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddPartitionsPlan {
    pub topic: String,
    pub num_partitions: i32,
    /// Checkpoints with rows on the topic.
    pub checkpoint_ids: Vec<String>,
    /// (checkpoint id, partition) rows to create at offset 0.
    pub create: Vec<(String, i32)>,
}

/// Plans the rows. `rows` holds the rows of the checkpoints to consider (those without a row on
/// `topic` are skipped); `kafka_partitions` is the topic's partition count, when known.
pub fn plan_add_partitions(
    topic: &str,
    num_partitions: i32,
    rows: &RowsById,
    kafka_partitions: Option<Option<i32>>,
) -> Result<AddPartitionsPlan> {
    crate::partition::validate_topic_name(topic)?;
    if num_partitions < 1 {
        return Err(OpsError::InvalidArgument(format!(
            "topic {topic} needs at least 1 partition, not {num_partitions}"
        )));
    }
    match kafka_partitions {
        Some(None) => {
            return Err(OpsError::InvalidArgument(format!(
                "topic {topic} does not exist in kafka"
            )))
        }
        Some(Some(n)) if n < num_partitions => {
            return Err(OpsError::InvalidArgument(format!(
                "topic {topic} has {n} partitions in kafka, not {num_partitions}: run \
                 kafka-topics.sh --alter --partitions={num_partitions} --topic={topic} first"
            )))
        }
        _ => {}
    }
    let mut ids = Vec::new();
    let mut create = Vec::new();
    for (id, rs) in rows {
        let have: Vec<i32> = rs
            .iter()
            .filter(|r| r.tp.topic == topic)
            .map(|r| r.tp.partition)
            .collect();
        if have.is_empty() {
            continue;
        }
        ids.push(id.clone());
        create.extend(
            (0..num_partitions)
                .filter(|p| !have.contains(p))
                .map(|p| (id.clone(), p)),
        );
    }
    Ok(AddPartitionsPlan {
        topic: topic.to_owned(),
        num_partitions,
        checkpoint_ids: ids,
        create,
    })
}

/// Creates the plan's rows in one transaction; fails with [`OpsError::Stale`], writing nothing,
/// when one of them appeared meanwhile.
pub async fn apply_add_partitions(pg: &Arc<Pg>, plan: &AddPartitionsPlan) -> Result<u64> {
    if plan.create.is_empty() {
        return Ok(0);
    }
    let what = format!("adding partitions of topic {}", plan.topic);
    let topic = plan.topic.as_str();
    let want = plan.create.len() as u64;
    let store = PostgresCheckpointStore::new(Arc::clone(pg));
    store
        .transaction(&what, |tx| async move {
            let n = tx.create_missing(topic, &plan.create, 0).await?;
            if n != want {
                return Err(OpsError::Stale {
                    checkpoint_id: plan.create[0].0.clone(),
                    detail: format!("{} of the new rows of topic {topic} appeared", want - n),
                });
            }
            Ok(n)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::rows;
    use super::*;

    #[test]
    fn creates_missing_partitions_for_every_reader_of_the_topic() {
        let data: RowsById = [
            ("a".to_owned(), rows(&[("t", 0, 5), ("t", 1, 7)])),
            ("b".to_owned(), rows(&[("t", 0, 5), ("t", 2, 1)])),
            ("other".to_owned(), rows(&[("u", 0, 5)])),
        ]
        .into();
        let plan = plan_add_partitions("t", 4, &data, Some(Some(4))).expect("plan");
        assert_eq!(plan.checkpoint_ids, ["a", "b"]);
        let want: Vec<(String, i32)> = [("a", 2), ("a", 3), ("b", 1), ("b", 3)]
            .iter()
            .map(|(i, p)| ((*i).to_owned(), *p))
            .collect();
        assert_eq!(plan.create, want);
        let e = plan_add_partitions("t", 8, &data, Some(Some(4))).expect_err("kafka has 4");
        assert!(
            e.to_string()
                .contains("kafka-topics.sh --alter --partitions=8"),
            "{e}"
        );
        assert!(plan_add_partitions("t", 0, &data, None).is_err());
        assert!(plan_add_partitions("t", 2, &data, Some(None)).is_err());
    }
}
