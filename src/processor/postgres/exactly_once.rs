//! Exactly-once mode: a table's rows and the pillow's checkpoint commit in one transaction.
//!
//! # Design (no change to the pillow loop)
//!
//! The pillow already writes its checkpoint through a [`CheckpointStore`], after every chunk
//! since the last checkpoint was fully handled (processed, failures recorded). Exactly-once mode
//! hands the pillow a [`TransactionalCheckpointStore`] that shares one [`ExactlyOnceSession`]
//! (one dedicated connection) with the [`super::PgTableProcessor`]:
//!
//! 1. the processor writes each chunk inside the session's open transaction (`BEGIN` on the
//!    first chunk, a `SAVEPOINT` per chunk so that a failed statement undoes that chunk only),
//!    and records the highest offset it wrote per partition (*staged*);
//! 2. when the pillow's checkpoint policy fires, the store runs the ordinary checkpoint write
//!    ([`crate::store::checkpoints::postgres::write_in_transaction`]: rows locked, each `expected` value
//!    checked) **in that same transaction** and commits: rows and offsets become durable
//!    together, or neither does.
//!
//! Safety rules, each of which would otherwise break atomicity:
//!
//! * the store refuses (rolls everything back and fails) when a staged offset is not covered by
//!   the checkpoint it is asked to write: that happens on the pillow's fatal path, where rows of
//!   an unfinished chunk were staged but the checkpoint only covers earlier chunks. Everything
//!   since the last commit is then replayed on restart, which is correct because none of it
//!   was committed;
//! * a `PillowtopCheckpointReset` (an operator changed the rows) rolls the staged rows back too:
//!   the pillow reloads the stored offsets and replays from them;
//! * the session never reconnects inside a transaction: a lost connection poisons the session,
//!   every later write fails, and the pillow stops (crash-only; a restart replays from the last
//!   commit).
//!
//! Consequences: rows become visible at checkpoint time (set `checkpoint_frequency` and
//! `max_checkpoint_delay` for the visibility you need), the table must live in the same
//! database as `pillowtop_kafkacheckpoint`, and at most one processor of a pillow can be
//! exactly-once (other processors stay at-least-once). Error rows are written by the pillow on
//! its own connection before the checkpoint: a crash between the two re-records them on replay
//! (error rows are at-least-once, as everywhere else).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};

use crate::error::{PostgresError, Result};
use crate::partition::TopicPartition;
use crate::pg::{err, redact, Pg};
use crate::store::checkpoints::postgres::{write_in_transaction, PostgresCheckpointStore};
use crate::store::checkpoints::{CheckpointRow, CheckpointStore, CheckpointUpdate};

/// The session's state, behind its mutex.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    client: Option<Client>,
    /// A transaction is open on `client`.
    pub(crate) in_transaction: bool,
    /// Highest offset written (uncommitted) per partition.
    staged: HashMap<TopicPartition, i64>,
    /// Why the session can no longer commit (a lost transaction).
    poisoned: Option<String>,
}

impl SessionState {
    /// Records that rows of changes up to these offsets were written in the transaction.
    pub(crate) fn stage(&mut self, offsets: impl IntoIterator<Item = (TopicPartition, i64)>) {
        for (tp, o) in offsets {
            let e = self.staged.entry(tp).or_insert(o);
            *e = (*e).max(o);
        }
    }

    fn reset(&mut self) {
        self.in_transaction = false;
        self.staged.clear();
    }
}

/// One dedicated connection shared by an exactly-once processor and the pillow's checkpoint
/// store. Not reconnected inside a transaction (see the module docs).
pub struct ExactlyOnceSession {
    url: String,
    state: Mutex<SessionState>,
}

impl std::fmt::Debug for ExactlyOnceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactlyOnceSession")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

fn other(msg: String) -> crate::Error {
    PostgresError::Other(msg).into()
}

impl ExactlyOnceSession {
    pub fn new(url: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            url: url.into(),
            state: Mutex::new(SessionState::default()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Locks the session and makes sure it has a usable connection: (re)connects outside a
    /// transaction; inside one, a closed connection poisons the session.
    pub(crate) async fn lock(&self) -> Result<MutexGuard<'_, SessionState>> {
        let mut st = self.state.lock().await;
        if let Some(why) = &st.poisoned {
            return Err(other(format!(
                "exactly-once session on {} cannot commit: {why}",
                redact(&self.url)
            )));
        }
        let closed = st.client.as_ref().is_none_or(Client::is_closed);
        if closed {
            if st.in_transaction {
                let why = "the connection was lost inside the transaction; its rows were rolled back and the pillow must restart from its last checkpoint".to_owned();
                st.poisoned = Some(why.clone());
                st.reset();
                return Err(other(format!(
                    "exactly-once session on {}: {why}",
                    redact(&self.url)
                )));
            }
            let (client, connection) =
                tokio_postgres::connect(&self.url, NoTls)
                    .await
                    .map_err(|e| {
                        PostgresError::query(format!("connecting to {}", redact(&self.url)), e)
                    })?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "exactly-once postgres connection closed");
                }
            });
            client
                .batch_execute("SET TIME ZONE 'UTC'")
                .await
                .map_err(err("setting the session time zone"))?;
            st.client = Some(client);
        }
        Ok(st)
    }

    /// Marks the session unusable (a statement failed in a way that leaves the transaction in
    /// an unknown state).
    pub(crate) fn poison(st: &mut SessionState, why: String) {
        st.poisoned = Some(why);
        st.reset();
    }

    /// Rolls back the open transaction, if any, dropping the staged rows.
    pub async fn rollback(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.in_transaction {
            if let Some(c) = &st.client {
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
        st.reset();
        Ok(())
    }
}

/// The client of a locked session (present after [`ExactlyOnceSession::lock`]).
pub(crate) fn client(st: &SessionState) -> Result<&Client> {
    st.client
        .as_ref()
        .ok_or_else(|| other("exactly-once session has no connection".into()))
}

/// The pillow's checkpoint store in exactly-once mode: reads like [`PostgresCheckpointStore`],
/// writes inside the session's transaction and commits the staged rows with it.
#[derive(Debug, Clone)]
pub struct TransactionalCheckpointStore {
    session: Arc<ExactlyOnceSession>,
    plain: PostgresCheckpointStore,
}

impl TransactionalCheckpointStore {
    /// `pg` is used for reads and explicit row creation (it must point at the same database as
    /// the session).
    pub fn new(session: Arc<ExactlyOnceSession>, pg: Arc<Pg>) -> Self {
        Self {
            session,
            plain: PostgresCheckpointStore::new(pg),
        }
    }
}

#[async_trait]
impl CheckpointStore for TransactionalCheckpointStore {
    async fn load(&self, checkpoint_id: &str) -> Result<Vec<CheckpointRow>> {
        self.plain.load(checkpoint_id).await
    }

    /// The write commits the processor's rows: it must happen between chunks, in line.
    fn background_writes(&self) -> bool {
        false
    }

    async fn write(&self, checkpoint_id: &str, updates: &[CheckpointUpdate]) -> Result<()> {
        let mut st = self.session.lock().await?;
        // Every staged row must be covered by this checkpoint, or committing would make rows
        // durable whose changes the checkpoint says are still to be read.
        let uncovered = st
            .staged
            .iter()
            .find(|(tp, staged)| !updates.iter().any(|u| &u.tp == *tp && u.offset > **staged));
        if let Some((tp, staged)) = uncovered {
            let msg = format!(
                "exactly-once checkpoint {checkpoint_id}: rows up to offset {staged} of {tp} were written but the checkpoint does not cover them; rolling back the uncommitted rows (they will be replayed)"
            );
            if st.in_transaction {
                let _ = client(&st)?.batch_execute("ROLLBACK").await;
            }
            st.reset();
            return Err(other(msg));
        }
        let what = format!("committing rows with checkpoint {checkpoint_id}");
        let c = client(&st)?;
        if !st.in_transaction {
            c.batch_execute("BEGIN").await.map_err(err(what.clone()))?;
        }
        let result = match write_in_transaction(c, checkpoint_id, updates).await {
            Ok(()) => c.batch_execute("COMMIT").await.map_err(err(what)),
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                Err(e)
            }
        };
        if let Err(e) = &result {
            if client(&st).is_ok_and(Client::is_closed) {
                ExactlyOnceSession::poison(
                    &mut st,
                    format!("the connection was lost while committing: {e}"),
                );
                return result;
            }
        }
        st.reset();
        result
    }

    async fn create_rows(
        &self,
        checkpoint_id: &str,
        partitions: &[TopicPartition],
        offset: i64,
    ) -> Result<u64> {
        self.plain
            .create_rows(checkpoint_id, partitions, offset)
            .await
    }
}
