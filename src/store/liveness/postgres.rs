//! Liveness rows in `pillowtop_rs_process`. The heartbeat is PostgreSQL's `now()`, so rows of
//! processes on hosts with skewed clocks compare fairly.

use std::sync::Arc;

use async_trait::async_trait;

use super::{column_int, hostname, pid, LivenessStore, ProcessRow, ProcessorStats, STALE_AFTER};
use crate::error::Result;
use crate::feed::assignment::Layout;
use crate::partition::TopicPartition;
use crate::pg::{err, Pg};

/// The liveness store over one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresLivenessStore {
    pg: Arc<Pg>,
}

impl PostgresLivenessStore {
    /// The store over `pg`.
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    /// Deletes the rows of every process of `checkpoint_ids` (outside any pillow: the demo's
    /// cleanup); returns how many.
    pub async fn delete_checkpoints(&self, checkpoint_ids: &[String]) -> Result<u64> {
        crate::store::execute_with_ids(
            &self.pg,
            &format!("removing the process rows of checkpoints {checkpoint_ids:?}"),
            "DELETE FROM pillowtop_rs_process WHERE checkpoint_id = ANY($1)",
            checkpoint_ids,
        )
        .await
    }
}

#[async_trait]
impl LivenessStore for PostgresLivenessStore {
    async fn register(
        &self,
        pillow: &str,
        checkpoint_id: &str,
        layout: &Layout,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        let host = hostname();
        let pid = pid();
        let parts = serde_json::to_string(partitions).unwrap_or_else(|_| "[]".into());
        let (k, n) = (
            column_int(layout.process_num),
            column_int(layout.num_processes),
        );
        let dedicated = layout.dedicated_migration_process;
        self.pg
            .run("registering the pillow process", |c| {
                let (host, parts) = (host.clone(), parts.clone());
                async move {
                    c.execute(
                        "INSERT INTO pillowtop_rs_process (pillow_name, process_num, num_processes, dedicated_migration_process, \
                         checkpoint_id, hostname, pid, partitions, started_at, heartbeat_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, now(), now()) \
                         ON CONFLICT (pillow_name, process_num) DO UPDATE SET num_processes = EXCLUDED.num_processes, \
                         dedicated_migration_process = EXCLUDED.dedicated_migration_process, checkpoint_id = EXCLUDED.checkpoint_id, \
                         hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, partitions = EXCLUDED.partitions, \
                         started_at = now(), heartbeat_at = now(), processor_stats = '{}'",
                        &[&pillow, &k, &n, &dedicated, &checkpoint_id, &host, &pid, &parts],
                    )
                    .await
                    .map_err(err("registering the pillow process"))
                }
            })
            .await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        pillow: &str,
        process_num: u32,
        stats: &ProcessorStats,
    ) -> Result<()> {
        let k = column_int(process_num);
        let stats = serde_json::to_string(stats).unwrap_or_else(|_| "{}".into());
        self.pg
            .run("refreshing the pillow heartbeat", |c| {
                let stats = stats.clone();
                async move {
                    c.execute(
                        "UPDATE pillowtop_rs_process SET heartbeat_at = now(), processor_stats = processor_stats || $3::text::jsonb \
                         WHERE pillow_name = $1 AND process_num = $2",
                        &[&pillow, &k, &stats],
                    )
                    .await
                    .map_err(err("refreshing the pillow heartbeat"))
                }
            })
            .await?;
        Ok(())
    }

    async fn unregister(&self, pillow: &str, process_num: u32) -> Result<()> {
        let k = column_int(process_num);
        let pid = pid();
        self.pg
            .run("removing the pillow process row", |c| async move {
                c.execute("DELETE FROM pillowtop_rs_process WHERE pillow_name = $1 AND process_num = $2 AND pid = $3", &[&pillow, &k, &pid])
                    .await
                    .map_err(err("removing the pillow process row"))
            })
            .await?;
        Ok(())
    }

    async fn list(&self, pillow: Option<&str>) -> Result<Vec<ProcessRow>> {
        let stale = i64::try_from(STALE_AFTER.as_secs()).unwrap_or(60);
        self.pg
            .run("listing pillow processes", |c| async move {
                let rows = c
                    .query(
                        "SELECT pillow_name, process_num, num_processes, dedicated_migration_process, checkpoint_id, hostname, pid, \
                         partitions::text, started_at, heartbeat_at, heartbeat_at > now() - make_interval(secs => $2), processor_stats::text \
                         FROM pillowtop_rs_process WHERE $1::text IS NULL OR pillow_name = $1 ORDER BY pillow_name, process_num",
                        &[&pillow, &(stale as f64)],
                    )
                    .await
                    .map_err(err("listing pillow processes"))?;
                Ok(rows
                    .iter()
                    .map(|r| ProcessRow {
                        pillow_name: r.get(0),
                        process_num: r.get(1),
                        num_processes: r.get(2),
                        dedicated_migration_process: r.get(3),
                        checkpoint_id: r.get(4),
                        hostname: r.get(5),
                        pid: r.get(6),
                        partitions: serde_json::from_str(&r.get::<_, String>(7)).unwrap_or_default(),
                        started_at: r.get(8),
                        heartbeat_at: r.get(9),
                        alive: r.get(10),
                        processor_stats: serde_json::from_str(&r.get::<_, String>(11)).unwrap_or_default(),
                    })
                    .collect())
            })
            .await
    }
}
