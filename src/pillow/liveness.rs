//! The liveness row of a running pillow process (`pillowtop_rs_process`): which host and pid
//! run which (pillow, process number), which partitions it owns, and a heartbeat refreshed on
//! every checkpoint and idle tick. Operators and the checkpoint commands read it to tell a
//! running pillow from a stopped one (docs/commcare-pillowtop.md §9 #23).

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::feed::assignment::Layout;
use crate::partition::TopicPartition;
use crate::pg::{err, Pg};

/// A heartbeat older than this means the process is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// One process's liveness row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRow {
    pub pillow_name: String,
    pub process_num: i32,
    pub num_processes: i32,
    pub dedicated_migration_process: bool,
    pub checkpoint_id: String,
    pub hostname: String,
    pub pid: i32,
    pub partitions: Vec<TopicPartition>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    /// Heartbeat within [`STALE_AFTER`].
    pub alive: bool,
}

/// Writes and reads liveness rows.
#[derive(Debug, Clone)]
pub struct Liveness {
    pg: Arc<Pg>,
}

impl Liveness {
    pub fn new(pg: Arc<Pg>) -> Self {
        Self { pg }
    }

    /// Registers (or takes over) the row of this pillow process.
    pub async fn register(
        &self,
        pillow: &str,
        checkpoint_id: &str,
        layout: &Layout,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let parts = serde_json::to_string(partitions).unwrap_or_else(|_| "[]".into());
        let (k, n) = (
            i32::try_from(layout.process_num).unwrap_or(i32::MAX),
            i32::try_from(layout.num_processes).unwrap_or(i32::MAX),
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
                         started_at = now(), heartbeat_at = now()",
                        &[&pillow, &k, &n, &dedicated, &checkpoint_id, &host, &pid, &parts],
                    )
                    .await
                    .map_err(err("registering the pillow process"))
                }
            })
            .await?;
        Ok(())
    }

    /// Refreshes the heartbeat.
    pub async fn heartbeat(&self, pillow: &str, process_num: u32) -> Result<()> {
        let k = i32::try_from(process_num).unwrap_or(i32::MAX);
        self.pg
            .run("refreshing the pillow heartbeat", |c| async move {
                c.execute("UPDATE pillowtop_rs_process SET heartbeat_at = now() WHERE pillow_name = $1 AND process_num = $2", &[&pillow, &k])
                    .await
                    .map_err(err("refreshing the pillow heartbeat"))
            })
            .await?;
        Ok(())
    }

    /// Removes the row on a clean stop.
    pub async fn unregister(&self, pillow: &str, process_num: u32) -> Result<()> {
        let k = i32::try_from(process_num).unwrap_or(i32::MAX);
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        self.pg
            .run("removing the pillow process row", |c| async move {
                c.execute("DELETE FROM pillowtop_rs_process WHERE pillow_name = $1 AND process_num = $2 AND pid = $3", &[&pillow, &k, &pid])
                    .await
                    .map_err(err("removing the pillow process row"))
            })
            .await?;
        Ok(())
    }

    /// Every row of `pillow` (all pillows when `None`).
    pub async fn list(&self, pillow: Option<&str>) -> Result<Vec<ProcessRow>> {
        let stale = i64::try_from(STALE_AFTER.as_secs()).unwrap_or(60);
        self.pg
            .run("listing pillow processes", |c| async move {
                let rows = c
                    .query(
                        "SELECT pillow_name, process_num, num_processes, dedicated_migration_process, checkpoint_id, hostname, pid, \
                         partitions::text, started_at, heartbeat_at, heartbeat_at > now() - make_interval(secs => $2) \
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
                    })
                    .collect())
            })
            .await
    }
}
