//! The liveness row of a running pillow process (`pillowtop_rs_process`): which host and pid
//! run which (pillow, process number), which partitions it owns, and a heartbeat refreshed on
//! every checkpoint and idle tick. Operators and the checkpoint commands read it to tell a
//! running pillow from a stopped one (docs/commcare-pillowtop.md §9 #23).
//!
//! The pillow registers its row when it starts, refreshes the heartbeat while it runs and removes
//! the row on a clean stop; a crashed process leaves a row whose heartbeat goes stale.

pub mod memory;
pub mod postgres;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::feed::assignment::Layout;
use crate::partition::TopicPartition;

/// A heartbeat older than this means the process is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// What one processor of a process has cost since the process started (ours, for
/// `pillowtop doctor`): the seconds spent in its calls (processing and, for sinks that write in
/// the background, waiting for their writes) and the changes it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessorStat {
    pub seconds: f64,
    pub changes: u64,
    /// Independent processors reading one shared read of Kafka: whether the processor's lane
    /// reads the shared ring (`true`) or, having fallen more than the lead bound behind, its
    /// own consumer (`false`); `None` without a shared read (rows of older versions too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<bool>,
    /// How often the lane detached from and rejoined the shared read since the process started.
    #[serde(default)]
    pub detaches: u64,
    #[serde(default)]
    pub rejoins: u64,
}

/// [`ProcessorStat`] by processor name.
pub type ProcessorStats = BTreeMap<String, ProcessorStat>;

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
    /// Each processor's cost since the process started, as of its last heartbeat.
    pub processor_stats: ProcessorStats,
}

/// Where liveness rows live. The row of this process is keyed by (pillow, process number) and
/// carries this host's name and this process's pid.
#[async_trait]
pub trait LivenessStore: Send + Sync {
    /// Registers (or takes over) the row of this pillow process.
    async fn register(
        &self,
        pillow: &str,
        checkpoint_id: &str,
        layout: &Layout,
        partitions: &[TopicPartition],
    ) -> Result<()>;

    /// Refreshes the heartbeat and records each processor's cost so far (`stats` are merged
    /// into the row's by processor name).
    async fn heartbeat(&self, pillow: &str, process_num: u32, stats: &ProcessorStats)
        -> Result<()>;

    /// Removes the row on a clean stop (only when this process still owns it).
    async fn unregister(&self, pillow: &str, process_num: u32) -> Result<()>;

    /// Every row of `pillow` (all pillows when `None`), by pillow name and process number.
    async fn list(&self, pillow: Option<&str>) -> Result<Vec<ProcessRow>>;
}

/// This host's name, as liveness rows record it.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// This process's pid, as liveness rows record it.
pub fn pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// A process number or count as the `integer` columns hold it.
pub(crate) fn column_int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
