//! The stored state the engine owns: one module per table, each with a trait (what the engine
//! needs of the table), a PostgreSQL store and an in-memory store for unit tests and benches.
//! Nothing outside `store/` writes SQL on these tables.
//!
//! | table | store | what a row is |
//! |---|---|---|
//! | `pillowtop_kafkacheckpoint` (CommCare's) | [`checkpoints`] | the next offset to read of one partition of one checkpoint |
//! | `pillow_retry_pillowerror` (CommCare's) | [`errors`] | a change that failed, with its attempts and next attempt |
//! | `pillowtop_rs_process` (ours) | [`liveness`] | a running pillow process, its partitions and heartbeat |
//! | `pillowtop_rs_checkpoint_history` (ours) | [`history`] | one day's snapshot of one checkpoint row |
//! | `pillowtop_djangopillowcheckpoint` (CommCare's) | [`schema`] only | created for Django's sake, never read or written |
//!
//! [`schema`] holds the DDL of every table and the one idempotent step that creates them.
//! [`transaction`] is the one BEGIN … COMMIT the PostgreSQL stores share.

pub mod checkpoints;
pub mod errors;
pub mod handover;
pub mod history;
pub mod liveness;
pub mod reindex;
pub mod schema;
pub mod transaction;

use crate::error::Result;
use crate::pg::{err, Pg};

/// Runs `sql`, whose one parameter `$1` is `ids` as a `text[]`, and returns how many rows it
/// changed; `what` names the step in errors (e.g. "deleting the rows of checkpoints [...]").
async fn execute_with_ids(pg: &Pg, what: &str, sql: &str, ids: &[String]) -> Result<u64> {
    pg.run(what, |c| async move {
        c.execute(sql, &[&ids]).await.map_err(err(what))
    })
    .await
}
