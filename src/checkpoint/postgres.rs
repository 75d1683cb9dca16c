//! Checkpoints in CommCare's `pillowtop_kafkacheckpoint` table.
//!
//! The stored value is the next offset to read. Writes are transactional: the rows are locked,
//! compared with what the writer last read or wrote (so an external edit is detected instead of
//! silently overwritten, docs/commcare-pillowtop.md §9 #10), then upserted with `last_modified = now()` and
//! `doc_modification_time = NULL` (what CommCare writes in practice, §9 #8).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{CheckpointRow, CheckpointStore, CheckpointUpdate};
use crate::error::{CheckpointError, Result};
use crate::partition::TopicPartition;
use crate::pg::{err, Pg};

/// A checkpoint store over one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresCheckpointStore {
    pg: Arc<Pg>,
}

impl PostgresCheckpointStore {
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    /// Every checkpoint id in the table with its row count and newest `last_modified`.
    pub async fn list_ids(&self) -> Result<Vec<(String, i64, DateTime<Utc>)>> {
        self.pg
            .run("listing checkpoints", |c| async move {
                let rows = c
                    .query(
                        "SELECT checkpoint_id, count(*), max(last_modified)::timestamptz FROM pillowtop_kafkacheckpoint \
                         GROUP BY checkpoint_id ORDER BY checkpoint_id",
                        &[],
                    )
                    .await
                    .map_err(err("listing checkpoints"))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            })
            .await
    }
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, checkpoint_id: &str) -> Result<Vec<CheckpointRow>> {
        let what = format!("reading checkpoint {checkpoint_id}");
        self.pg
            .run(&what, |c| {
                let what = what.clone();
                async move {
                    let rows = c
                        .query(
                            r#"SELECT topic, "partition", "offset", last_modified::timestamptz FROM pillowtop_kafkacheckpoint
                               WHERE checkpoint_id = $1 ORDER BY topic, "partition""#,
                            &[&checkpoint_id],
                        )
                        .await
                        .map_err(err(what))?;
                    Ok(rows
                        .iter()
                        .map(|r| CheckpointRow {
                            tp: TopicPartition::new(r.get::<_, String>(0), r.get(1)),
                            offset: r.get(2),
                            last_modified: r.get(3),
                        })
                        .collect())
                }
            })
            .await
    }

    async fn write(&self, checkpoint_id: &str, updates: &[CheckpointUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let what = format!("writing checkpoint {checkpoint_id}");
        self.pg
            .run(&what, |c| {
                let what = what.clone();
                async move {
                    // A transaction on the shared client: BEGIN/COMMIT as statements, so the
                    // client can stay behind an Arc.
                    c.batch_execute("BEGIN").await.map_err(err(what.clone()))?;
                    match write_in_transaction(&c, checkpoint_id, updates).await {
                        Ok(()) => c.batch_execute("COMMIT").await.map_err(err(what)),
                        Err(e) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            Err(e)
                        }
                    }
                }
            })
            .await
    }

    async fn create_rows(
        &self,
        checkpoint_id: &str,
        partitions: &[TopicPartition],
        offset: i64,
    ) -> Result<u64> {
        let what = format!("creating rows of checkpoint {checkpoint_id}");
        let topics: Vec<&str> = partitions.iter().map(|tp| tp.topic.as_str()).collect();
        let nums: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        self.pg
            .run(&what, |c| {
                let (what, topics, nums) = (what.clone(), &topics, &nums);
                async move {
                    c.execute(
                        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
                           SELECT $1, t, p, $4, NULL, now() FROM unnest($2::text[], $3::int[]) AS u(t, p)
                           ON CONFLICT (checkpoint_id, topic, "partition") DO NOTHING"#,
                        &[&checkpoint_id, topics, nums, &offset],
                    )
                    .await
                    .map_err(err(what))
                }
            })
            .await
    }
}

/// The body of a checkpoint write, inside a transaction the caller opened on `c` (and commits or
/// rolls back): locks the rows, checks each update's `expected` value (failing with
/// `CheckpointError::Reset`, having written nothing), then upserts. Exposed so that a processor
/// can commit its own rows and the checkpoint atomically (the exactly-once mode of
/// `processor::postgres`).
pub async fn write_in_transaction(
    c: &tokio_postgres::Client,
    checkpoint_id: &str,
    updates: &[CheckpointUpdate],
) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let what = format!("writing checkpoint {checkpoint_id}");
    let topics: Vec<&str> = updates.iter().map(|u| u.tp.topic.as_str()).collect();
    let partitions: Vec<i32> = updates.iter().map(|u| u.tp.partition).collect();
    let offsets: Vec<i64> = updates.iter().map(|u| u.offset).collect();
    let rows = c
        .query(
            r#"SELECT topic, "partition", "offset" FROM pillowtop_kafkacheckpoint
               WHERE checkpoint_id = $1 AND (topic, "partition") IN (SELECT * FROM unnest($2::text[], $3::int[]))
               FOR UPDATE"#,
            &[&checkpoint_id, &topics, &partitions],
        )
        .await
        .map_err(err(what.clone()))?;
    let found: HashMap<TopicPartition, i64> = rows
        .iter()
        .map(|r| {
            (
                TopicPartition::new(r.get::<_, String>(0), r.get(1)),
                r.get(2),
            )
        })
        .collect();
    for u in updates {
        let now = found.get(&u.tp).copied();
        if now != u.expected {
            return Err(CheckpointError::Reset {
                checkpoint_id: checkpoint_id.to_owned(),
                tp: u.tp.clone(),
                expected: u.expected,
                found: now,
            }
            .into());
        }
    }
    c.execute(
        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
           SELECT $1, t, p, o, NULL, now() FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o)
           ON CONFLICT (checkpoint_id, topic, "partition")
           DO UPDATE SET "offset" = EXCLUDED."offset", doc_modification_time = NULL, last_modified = now()"#,
        &[&checkpoint_id, &topics, &partitions, &offsets],
    )
    .await
    .map_err(err(what))?;
    Ok(())
}
