//! Checkpoints in CommCare's `pillowtop_kafkacheckpoint` table.
//!
//! The stored value is the next offset to read. Writes are transactional: the rows are locked,
//! compared with what the writer last read or wrote (so an external edit is detected instead of
//! silently overwritten, docs/commcare-pillowtop.md §9 #10), then upserted with `last_modified = now()` and
//! `doc_modification_time = NULL` (what CommCare writes in practice, §9 #8).
//!
//! The operator operations run their one-transaction applies through
//! [`PostgresCheckpointStore::transaction`]: the body gets a [`CheckpointTx`] (lock, delete,
//! insert, upsert rows of several checkpoints) and re-verifies its plan between the reads and the
//! writes.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{CheckpointRow, CheckpointStore, CheckpointUpdate, KeyedOffset, RowsById};
use crate::error::{CheckpointError, Result};
use crate::partition::TopicPartition;
use crate::pg::{err, Pg};
use crate::store::transaction::{transaction, TransactionError};

/// A checkpoint store over one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresCheckpointStore {
    pg: Arc<Pg>,
}

impl PostgresCheckpointStore {
    /// The store over `pg`.
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

    /// Every row of `ids`, one query; each id gets an entry (empty when it has no rows).
    pub async fn load_many(&self, ids: &[String]) -> Result<RowsById> {
        let rows = self
            .pg
            .run("reading checkpoints", |c| async move {
                c.query(
                    r#"SELECT checkpoint_id, topic, "partition", "offset", last_modified::timestamptz
                       FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = ANY($1)
                       ORDER BY checkpoint_id, topic, "partition""#,
                    &[&ids],
                )
                .await
                .map_err(err(format!("reading checkpoints {ids:?}")))
            })
            .await?;
        Ok(group_rows(ids, &rows))
    }

    /// The rows of `ids` and of their processors' own checkpoints (`{id}/processor/{name}`,
    /// independent processors).
    pub async fn load_with_processors(&self, ids: &[String]) -> Result<RowsById> {
        let rows = self
            .pg
            .run("reading checkpoints", |c| async move {
                c.query(
                    r#"SELECT checkpoint_id, topic, "partition", "offset", last_modified::timestamptz
                       FROM pillowtop_kafkacheckpoint
                       WHERE checkpoint_id = ANY($1)
                          OR EXISTS (SELECT 1 FROM unnest($1::text[]) AS p(id)
                                     WHERE left(checkpoint_id, length(p.id) + 11) = p.id || '/processor/')
                       ORDER BY checkpoint_id, topic, "partition""#,
                    &[&ids],
                )
                .await
                .map_err(err(format!("reading checkpoints {ids:?} and their processors'")))
            })
            .await?;
        Ok(group_rows(ids, &rows))
    }

    /// Every row of every checkpoint id that has a row on `topic` (of all ids when `None`).
    pub async fn load_on_topic(&self, topic: Option<&str>) -> Result<RowsById> {
        let rows = self
            .pg
            .run("reading checkpoints", |c| async move {
                c.query(
                    r#"SELECT checkpoint_id, topic, "partition", "offset", last_modified::timestamptz
                       FROM pillowtop_kafkacheckpoint
                       WHERE $1::text IS NULL OR checkpoint_id IN
                             (SELECT checkpoint_id FROM pillowtop_kafkacheckpoint WHERE topic = $1)
                       ORDER BY checkpoint_id, topic, "partition""#,
                    &[&topic],
                )
                .await
                .map_err(err("reading checkpoints"))
            })
            .await?;
        Ok(group_rows(&[], &rows))
    }

    /// Every row of `ids` ([`Self::load_many`]), or of every checkpoint id when `None`.
    pub async fn load_selected(&self, ids: Option<&[String]>) -> Result<RowsById> {
        match ids {
            Some(ids) => self.load_many(ids).await,
            None => self.load_on_topic(None).await,
        }
    }

    /// Deletes every row of `ids` (outside any plan: the demo's cleanup); returns how many.
    pub async fn delete_ids(&self, ids: &[String]) -> Result<u64> {
        crate::store::execute_with_ids(
            &self.pg,
            &format!("deleting the rows of checkpoints {ids:?}"),
            "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = ANY($1)",
            ids,
        )
        .await
    }

    /// Runs `f` in one transaction on the table (BEGIN … COMMIT, ROLLBACK on any error; see
    /// [`transaction`]). A connection failure is retried from BEGIN; a refusal of the caller's
    /// own (a stale plan) is returned as it is.
    pub async fn transaction<T, E, F, Fut>(&self, what: &str, f: F) -> std::result::Result<T, E>
    where
        F: Fn(CheckpointTx) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: TransactionError,
    {
        transaction(&self.pg, what, |c| f(CheckpointTx { c })).await
    }
}

fn group_rows(ids: &[String], rows: &[tokio_postgres::Row]) -> RowsById {
    let mut out: RowsById = ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for r in rows {
        out.entry(r.get::<_, String>(0))
            .or_default()
            .push(CheckpointRow {
                tp: TopicPartition::new(r.get::<_, String>(1), r.get(2)),
                offset: r.get(3),
                last_modified: r.get(4),
            });
    }
    out
}

/// A row that a concurrent writer created while a transaction meant to insert it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowConflict {
    /// The first checkpoint id the insert wrote to.
    pub checkpoint_id: String,
    /// What PostgreSQL said about the row.
    pub detail: String,
}

/// The checkpoint table inside a transaction that [`PostgresCheckpointStore::transaction`]
/// opened: every statement runs in it, and nothing is visible to others before COMMIT.
#[derive(Debug, Clone)]
pub struct CheckpointTx {
    c: Arc<Client>,
}

impl CheckpointTx {
    /// Locks (`FOR UPDATE`) the rows of `partitions` of `checkpoint_id` and returns them,
    /// sorted.
    pub async fn lock(
        &self,
        checkpoint_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<KeyedOffset>> {
        let topics: Vec<&str> = partitions.iter().map(|tp| tp.topic.as_str()).collect();
        let nums: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        let mut found: Vec<KeyedOffset> = lock_rows(&self.c, checkpoint_id, &topics, &nums)
            .await
            .map_err(err(format!("locking checkpoint {checkpoint_id}")))?
            .into_iter()
            .map(|(tp, o)| (checkpoint_id.to_owned(), tp, o))
            .collect();
        found.sort();
        Ok(found)
    }

    /// Deletes every row of `ids` and returns the deleted rows, sorted.
    pub async fn delete(&self, ids: &[String]) -> Result<Vec<KeyedOffset>> {
        let rows = self
            .c
            .query(
                r#"DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = ANY($1)
                   RETURNING checkpoint_id, topic, "partition", "offset""#,
                &[&ids],
            )
            .await
            .map_err(err(format!("deleting the rows of checkpoints {ids:?}")))?;
        let mut out: Vec<KeyedOffset> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    TopicPartition::new(r.get::<_, String>(1), r.get(2)),
                    r.get(3),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Inserts (or overwrites) `rows` with `last_modified = now()` and
    /// `doc_modification_time = NULL`, in one statement.
    pub async fn upsert(&self, rows: &[KeyedOffset]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let (ids, topics, parts, offsets) = columns(rows);
        upsert_rows(&self.c, &ids, &topics, &parts, &offsets)
            .await
            .map_err(err("writing checkpoint rows"))
    }

    /// Inserts `rows` that must not exist (the caller deleted every row of those ids in the same
    /// transaction): a plain insert, cheaper than an upsert. `Ok(Err(_))`: a concurrent writer
    /// created one of the rows meanwhile.
    pub async fn insert_new(
        &self,
        rows: &[KeyedOffset],
    ) -> Result<std::result::Result<u64, RowConflict>> {
        if rows.is_empty() {
            return Ok(Ok(0));
        }
        let (ids, topics, parts, offsets) = columns(rows);
        let result = self
            .c
            .execute(
                r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
                   SELECT i, t, p, o, NULL, now() FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS u(i, t, p, o)"#,
                &[&ids, &topics, &parts, &offsets],
            )
            .await;
        match result {
            Ok(n) => Ok(Ok(n)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Ok(Err(RowConflict {
                    checkpoint_id: ids.first().copied().unwrap_or_default().to_owned(),
                    detail: e.as_db_error().map_or_else(
                        || e.to_string(),
                        |d| d.detail().unwrap_or_default().to_owned(),
                    ),
                }))
            }
            Err(e) => Err(err("writing checkpoint rows")(e)),
        }
    }

    /// Creates rows at `offset` for the (checkpoint id, partition) pairs of `topic` that have
    /// none; returns how many it created.
    pub async fn create_missing(
        &self,
        topic: &str,
        rows: &[(String, i32)],
        offset: i64,
    ) -> Result<u64> {
        let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let topics = vec![topic; rows.len()];
        let parts: Vec<i32> = rows.iter().map(|r| r.1).collect();
        create_missing_rows(&self.c, &ids, &topics, &parts, offset)
            .await
            .map_err(err(format!("adding partitions of topic {topic}")))
    }
}

/// `rows` as the four column arrays the `unnest` statements take.
fn columns(rows: &[KeyedOffset]) -> (Vec<&str>, Vec<&str>, Vec<i32>, Vec<i64>) {
    (
        rows.iter().map(|r| r.0.as_str()).collect(),
        rows.iter().map(|r| r.1.topic.as_str()).collect(),
        rows.iter().map(|r| r.1.partition).collect(),
        rows.iter().map(|r| r.2).collect(),
    )
}

/// Locks the rows of (`topics[i]`, `nums[i]`) of `checkpoint_id`.
async fn lock_rows(
    c: &Client,
    checkpoint_id: &str,
    topics: &[&str],
    nums: &[i32],
) -> std::result::Result<Vec<(TopicPartition, i64)>, tokio_postgres::Error> {
    let rows = c
        .query(
            r#"SELECT topic, "partition", "offset" FROM pillowtop_kafkacheckpoint
               WHERE checkpoint_id = $1 AND (topic, "partition") IN (SELECT * FROM unnest($2::text[], $3::int[]))
               FOR UPDATE"#,
            &[&checkpoint_id, &topics, &nums],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                TopicPartition::new(r.get::<_, String>(0), r.get(1)),
                r.get(2),
            )
        })
        .collect())
}

/// Upserts rows given as columns, with `last_modified = now()`, `doc_modification_time = NULL`.
async fn upsert_rows(
    c: &Client,
    ids: &[&str],
    topics: &[&str],
    parts: &[i32],
    offsets: &[i64],
) -> std::result::Result<u64, tokio_postgres::Error> {
    c.execute(
        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
           SELECT i, t, p, o, NULL, now() FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS u(i, t, p, o)
           ON CONFLICT (checkpoint_id, topic, "partition")
           DO UPDATE SET "offset" = EXCLUDED."offset", doc_modification_time = NULL, last_modified = now()"#,
        &[&ids, &topics, &parts, &offsets],
    )
    .await
}

/// Creates the rows given as columns at `offset` where missing; returns how many it created.
async fn create_missing_rows(
    c: &Client,
    ids: &[&str],
    topics: &[&str],
    parts: &[i32],
    offset: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    c.execute(
        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", doc_modification_time, last_modified)
           SELECT i, t, p, $4, NULL, now() FROM unnest($1::text[], $2::text[], $3::int[]) AS u(i, t, p)
           ON CONFLICT (checkpoint_id, topic, "partition") DO NOTHING"#,
        &[&ids, &topics, &parts, &offset],
    )
    .await
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
        transaction(&self.pg, &what, |c| async move {
            write_in_transaction(&c, checkpoint_id, updates).await
        })
        .await
    }

    async fn write_together(&self, writes: &[(String, Vec<CheckpointUpdate>)]) -> Result<()> {
        let writes: Vec<&(String, Vec<CheckpointUpdate>)> =
            writes.iter().filter(|(_, u)| !u.is_empty()).collect();
        if writes.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = writes.iter().map(|(id, _)| id.as_str()).collect();
        let what = format!("writing checkpoints {}", ids.join(", "));
        let writes = &writes;
        transaction(&self.pg, &what, |c| async move {
            for (id, updates) in writes {
                write_in_transaction(&c, id, updates).await?;
            }
            Ok(())
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
        let ids = vec![checkpoint_id; partitions.len()];
        let topics: Vec<&str> = partitions.iter().map(|tp| tp.topic.as_str()).collect();
        let nums: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        self.pg
            .run(&what, |c| {
                let (what, ids, topics, nums) = (what.clone(), &ids, &topics, &nums);
                async move {
                    create_missing_rows(&c, ids, topics, nums, offset)
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
    c: &Client,
    checkpoint_id: &str,
    updates: &[CheckpointUpdate],
) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let what = format!("writing checkpoint {checkpoint_id}");
    let topics: Vec<&str> = updates.iter().map(|u| u.tp.topic.as_str()).collect();
    let nums: Vec<i32> = updates.iter().map(|u| u.tp.partition).collect();
    let found: std::collections::HashMap<TopicPartition, i64> =
        lock_rows(c, checkpoint_id, &topics, &nums)
            .await
            .map_err(err(what.clone()))?
            .into_iter()
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
    let ids = vec![checkpoint_id; updates.len()];
    let offsets: Vec<i64> = updates.iter().map(|u| u.offset).collect();
    upsert_rows(c, &ids, &topics, &nums, &offsets)
        .await
        .map_err(err(what))?;
    Ok(())
}
