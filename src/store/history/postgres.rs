//! The checkpoint history in PostgreSQL: snapshots copy `pillowtop_kafkacheckpoint` in one
//! statement.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;

use super::{cutoff, HistoryEntry, HistoryStore, Snapshot, SnapshotSummary};
use crate::error::Result;
use crate::partition::TopicPartition;
use crate::pg::{err, Pg};
use crate::store::transaction::transaction;

/// The history store over one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresHistoryStore {
    pg: Arc<Pg>,
}

impl PostgresHistoryStore {
    /// The store over `pg`.
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    /// Deletes every record of `checkpoint_ids` (outside any plan: the demo's cleanup); returns
    /// how many.
    pub async fn delete_checkpoints(&self, checkpoint_ids: &[String]) -> Result<u64> {
        crate::store::execute_with_ids(
            &self.pg,
            &format!("deleting the history of checkpoints {checkpoint_ids:?}"),
            "DELETE FROM pillowtop_rs_checkpoint_history WHERE checkpoint_id = ANY($1)",
            checkpoint_ids,
        )
        .await
    }
}

#[async_trait]
impl HistoryStore for PostgresHistoryStore {
    async fn snapshot(&self, date: NaiveDate, keep_days: u32) -> Result<SnapshotSummary> {
        let cutoff = cutoff(date, keep_days);
        transaction(&self.pg, "recording the checkpoint history", |c| async move {
            let rows = c
                .execute(
                    r#"INSERT INTO pillowtop_rs_checkpoint_history (date_updated, checkpoint_id, topic, "partition", "offset", recorded_at)
                       SELECT $1, checkpoint_id, topic, "partition", "offset", now() FROM pillowtop_kafkacheckpoint
                       ON CONFLICT (date_updated, checkpoint_id, topic, "partition")
                       DO UPDATE SET "offset" = EXCLUDED."offset", recorded_at = EXCLUDED.recorded_at"#,
                    &[&date],
                )
                .await
                .map_err(err("recording the checkpoint history"))?;
            let pruned = c
                .execute(
                    "DELETE FROM pillowtop_rs_checkpoint_history WHERE date_updated < $1",
                    &[&cutoff],
                )
                .await
                .map_err(err("pruning the checkpoint history"))?;
            Ok(SnapshotSummary {
                date,
                rows,
                pruned,
            })
        })
        .await
    }

    async fn list(&self, checkpoint_id: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let rows = self
            .pg
            .run("reading the checkpoint history", |c| async move {
                c.query(
                    r#"SELECT date_updated, checkpoint_id, count(*), sum("offset")::bigint
                       FROM pillowtop_rs_checkpoint_history WHERE $1::text IS NULL OR checkpoint_id = $1
                       GROUP BY date_updated, checkpoint_id ORDER BY date_updated DESC, checkpoint_id"#,
                    &[&checkpoint_id],
                )
                .await
                .map_err(err("reading the checkpoint history"))
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                date: r.get(0),
                checkpoint_id: r.get(1),
                rows: r.get(2),
                offsets_total: r.get(3),
            })
            .collect())
    }

    async fn load_snapshot(
        &self,
        checkpoint_id: &str,
        date: NaiveDate,
    ) -> Result<Option<Snapshot>> {
        let rows = self
            .pg
            .run("reading the checkpoint history", |c| async move {
                c.query(
                    r#"SELECT date_updated, topic, "partition", "offset" FROM pillowtop_rs_checkpoint_history
                       WHERE checkpoint_id = $1 AND date_updated = (
                           SELECT max(date_updated) FROM pillowtop_rs_checkpoint_history
                           WHERE checkpoint_id = $1 AND date_updated <= $2)
                       ORDER BY topic, "partition""#,
                    &[&checkpoint_id, &date],
                )
                .await
                .map_err(err(format!(
                    "reading the history of checkpoint {checkpoint_id}"
                )))
            })
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let day: NaiveDate = first.get(0);
        Ok(Some((
            day,
            rows.iter()
                .map(|r| {
                    (
                        TopicPartition::new(r.get::<_, String>(1), r.get(2)),
                        r.get(3),
                    )
                })
                .collect(),
        )))
    }

    async fn recent(&self, checkpoint_id: &str, days: u32) -> Result<Vec<Snapshot>> {
        let days = i64::from(days);
        let rows = self
            .pg
            .run("reading the checkpoint history", |c| async move {
                c.query(
                    r#"SELECT date_updated, topic, "partition", "offset" FROM pillowtop_rs_checkpoint_history
                       WHERE checkpoint_id = $1 AND date_updated IN (
                           SELECT DISTINCT date_updated FROM pillowtop_rs_checkpoint_history
                           WHERE checkpoint_id = $1 ORDER BY date_updated DESC LIMIT $2)
                       ORDER BY date_updated DESC, topic, "partition""#,
                    &[&checkpoint_id, &days],
                )
                .await
                .map_err(err(format!(
                    "reading the history of checkpoint {checkpoint_id}"
                )))
            })
            .await?;
        let mut out: Vec<Snapshot> = Vec::new();
        for r in &rows {
            let day: NaiveDate = r.get(0);
            let entry = (
                TopicPartition::new(r.get::<_, String>(1), r.get(2)),
                r.get(3),
            );
            match out.last_mut() {
                Some((d, offsets)) if *d == day => offsets.push(entry),
                _ => out.push((day, vec![entry])),
            }
        }
        Ok(out)
    }

    async fn snapshot_checkpoint(
        &self,
        checkpoint_id: &str,
        date: NaiveDate,
        keep_days: u32,
    ) -> Result<SnapshotSummary> {
        let cutoff = cutoff(date, keep_days);
        let what = format!("recording the history of checkpoint {checkpoint_id}");
        transaction(&self.pg, &what, |c| {
            let what = what.clone();
            async move {
                c.execute(
                    r#"INSERT INTO pillowtop_rs_checkpoint_history (date_updated, checkpoint_id, topic, "partition", "offset", recorded_at)
                       SELECT $1, checkpoint_id, topic, "partition", "offset", now() FROM pillowtop_kafkacheckpoint
                       WHERE checkpoint_id = $2
                       ON CONFLICT (date_updated, checkpoint_id, topic, "partition") DO NOTHING"#,
                    &[&date, &checkpoint_id],
                )
                .await
                .map_err(err(what.clone()))?;
                let present: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pillowtop_rs_checkpoint_history WHERE date_updated = $1 AND checkpoint_id = $2",
                        &[&date, &checkpoint_id],
                    )
                    .await
                    .map_err(err(what.clone()))?
                    .get(0);
                let pruned = c
                    .execute(
                        "DELETE FROM pillowtop_rs_checkpoint_history WHERE checkpoint_id = $1 AND date_updated < $2",
                        &[&checkpoint_id, &cutoff],
                    )
                    .await
                    .map_err(err(what))?;
                Ok(SnapshotSummary {
                    date,
                    rows: u64::try_from(present).unwrap_or(0),
                    pruned,
                })
            }
        })
        .await
    }
}
