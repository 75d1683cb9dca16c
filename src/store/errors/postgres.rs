//! Error rows in CommCare's `pillow_retry_pillowerror` table.
//!
//! `change` and `change_metadata` are `jsonb` in our migrations; a Django-created table may hold
//! them as `text` or `json`, so the column types are read once and the casts chosen to match.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{storable, ErrorRecord, ErrorStore, FailedProcessor, PillowErrorRow};
use crate::error::{PostgresError, Result};
use crate::pg::{err, Pg};
use crate::retry::{MAX_PROCESSING_ATTEMPTS, REPROCESS_INTERVAL};

/// Records (or moves to a new attempt count) one processor's failure on one document.
const FAILED_PROCESSOR_SQL: &str = "INSERT INTO pillowtop_rs_failed_processor AS f \
     (pillow, doc_id, processor, attempts, date_recorded) VALUES ($1, $2, $3, $4, now()) \
     ON CONFLICT (pillow, doc_id, processor) DO UPDATE SET attempts = EXCLUDED.attempts, date_recorded = now()";

/// The error store over one PostgreSQL database.
#[derive(Debug)]
pub struct PostgresErrorStore {
    pg: Arc<Pg>,
    /// SQL casts for (`change`, `change_metadata`), e.g. `jsonb`.
    casts: OnceCell<(String, String)>,
}

impl PostgresErrorStore {
    /// The store over `pg`.
    pub fn new(pg: Arc<Pg>) -> Self {
        Self {
            pg,
            casts: OnceCell::new(),
        }
    }

    /// How many error rows each pillow has, by error type: `(pillow, error_type, rows)` (the
    /// status page, and summed per pillow CommCare's `error_queue` gauge).
    pub async fn counts_by_type(&self) -> Result<Vec<(String, String, i64)>> {
        let ctx = "counting the error rows by pillow and type";
        self.pg
            .run(ctx, |c| async move {
                let rows = c
                    .query(
                        "SELECT pillow, coalesce(error_type, ''), count(*) FROM pillow_retry_pillowerror \
                         GROUP BY 1, 2 ORDER BY 1, 2",
                        &[],
                    )
                    .await
                    .map_err(err(ctx))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            })
            .await
    }

    /// Deletes every error row of `pillows` (outside any pillow: the demo's cleanup); returns
    /// how many.
    pub async fn delete_pillows(&self, pillows: &[String]) -> Result<u64> {
        crate::store::execute_with_ids(
            &self.pg,
            &format!("deleting the error rows of pillows {pillows:?}"),
            "DELETE FROM pillow_retry_pillowerror WHERE pillow = ANY($1)",
            pillows,
        )
        .await
    }

    /// Inserts `rows` in one transaction. `Ok(Some((i, message)))`: row `i` was refused for its
    /// content (SQLSTATE class 22 or 54) and nothing was written; other failures are errors
    /// (retried by [`Pg::run`] while PostgreSQL is unreachable).
    async fn insert_all(&self, sql: &str, rows: &[ErrorRecord]) -> Result<Option<(usize, String)>> {
        self.pg
            .run("recording pillow errors", |c| async move {
                let ctx = "recording pillow errors";
                c.batch_execute("BEGIN").await.map_err(err(ctx))?;
                // An independent processor's failure is kept per processor too, in the same
                // transaction as the row.
                let per_processor = rows.iter().any(|r| r.processor.is_some());
                let prepared = async {
                    let stmt = c.prepare(sql).await?;
                    let failed = if per_processor {
                        Some(c.prepare(FAILED_PROCESSOR_SQL).await?)
                    } else {
                        None
                    };
                    Ok::<_, tokio_postgres::Error>((stmt, failed))
                };
                let (stmt, failed_processor) = match prepared.await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        return Err(err(ctx)(e));
                    }
                };
                for (i, r) in rows.iter().enumerate() {
                    let created = r.metadata.as_ref().and_then(|m| m.publish_timestamp);
                    let change = r.change.to_string();
                    let meta = storable::metadata_json(r);
                    let res = c
                        .execute(
                            &stmt,
                            &[
                                &r.doc_id,
                                &r.pillow,
                                &created,
                                &r.attempts,
                                &r.error_type,
                                &r.traceback,
                                &change,
                                &meta,
                            ],
                        )
                        .await;
                    let res = match (res, &r.processor, &failed_processor) {
                        (Ok(_), Some(processor), Some(f)) => {
                            c.execute(f, &[&r.pillow, &r.doc_id, processor, &r.attempts])
                                .await
                        }
                        (res, ..) => res,
                    };
                    if let Err(e) = res {
                        let _ = c.batch_execute("ROLLBACK").await;
                        let content = e.code().is_some_and(|code| {
                            let code = code.code();
                            code.starts_with("22") || code.starts_with("54")
                        });
                        if content {
                            return Ok(Some((i, crate::error::describe_postgres(&e))));
                        }
                        return Err(err(format!(
                            "recording the error of {} for pillow {}",
                            r.doc_id, r.pillow
                        ))(e));
                    }
                }
                c.batch_execute("COMMIT").await.map_err(err(ctx))?;
                Ok(None)
            })
            .await
    }

    async fn casts(&self) -> Result<&(String, String)> {
        self.casts
            .get_or_try_init(|| async {
                self.pg
                    .run("reading the pillow_retry_pillowerror column types", |c| async move {
                        let rows = c
                            .query(
                                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                                 WHERE table_name = 'pillow_retry_pillowerror' AND column_name IN ('change', 'change_metadata') \
                                 AND table_schema = ANY (current_schemas(false))",
                                &[],
                            )
                            .await
                            .map_err(err("reading the pillow_retry_pillowerror column types"))?;
                        let cast = |name: &str| {
                            rows.iter()
                                .find(|r| r.get::<_, String>(0) == name)
                                .map_or("jsonb".to_owned(), |r| match r.get::<_, String>(1).as_str() {
                                    "json" => "json".to_owned(),
                                    "text" | "character varying" => "text".to_owned(),
                                    _ => "jsonb".to_owned(),
                                })
                        };
                        Ok((cast("change"), cast("change_metadata")))
                    })
                    .await
            })
            .await
    }
}

#[async_trait]
impl ErrorStore for PostgresErrorStore {
    async fn record(&self, records: &[ErrorRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (change_cast, meta_cast) = self.casts().await?.clone();
        // One statement per record inside one transaction: a chunk's errors land together.
        let sql = format!(
            r"INSERT INTO pillow_retry_pillowerror AS e
                (doc_id, pillow, date_created, date_last_attempt, date_next_attempt, total_attempts, current_attempt,
                 error_type, error_traceback, change, change_metadata)
              VALUES ($1, $2, coalesce($3, now()), now(),
                      CASE WHEN $4 <= {max} THEN now() + $4 * $4 * interval '{secs} seconds' END,
                      $4, $4, $5, $6, $7::text::{change_cast}, $8::text::{meta_cast})
              ON CONFLICT (doc_id, pillow) DO UPDATE SET
                current_attempt = e.current_attempt + EXCLUDED.current_attempt,
                total_attempts = e.total_attempts + EXCLUDED.total_attempts,
                date_last_attempt = now(),
                date_next_attempt = CASE WHEN e.current_attempt + EXCLUDED.current_attempt <= {max}
                    THEN now() + (e.current_attempt + EXCLUDED.current_attempt) * (e.current_attempt + EXCLUDED.current_attempt) * interval '{secs} seconds'
                    END,
                error_type = EXCLUDED.error_type,
                error_traceback = EXCLUDED.error_traceback",
            max = MAX_PROCESSING_ATTEMPTS,
            secs = REPROCESS_INTERVAL.as_secs(),
        );
        // Every row as PostgreSQL can store it (NUL characters, over-long ids, huge tracebacks).
        let mut rows: Vec<ErrorRecord> = records
            .iter()
            .map(|r| storable::storable(r).into_owned())
            .collect();
        // A row still refused for a reason of its own content (a data exception, a limit) goes
        // in shortened; the transaction is run again. At most one retry per row.
        for _ in 0..=rows.len() {
            match self.insert_all(&sql, &rows).await? {
                None => return Ok(()),
                Some((i, refused)) => {
                    tracing::warn!(pillow = %rows[i].pillow, doc_id = %rows[i].doc_id, error = %refused,
                        "postgres refused an error row as it was; storing it shortened");
                    rows[i] = storable::minimal(&rows[i], &refused);
                }
            }
        }
        Err(PostgresError::Other(format!(
            "recording {} pillow errors: postgres refused the shortened rows too",
            rows.len()
        ))
        .into())
    }

    async fn failed_processors(
        &self,
        pillow: &str,
        doc_ids: Option<&[String]>,
    ) -> Result<Vec<FailedProcessor>> {
        let ctx = format!("reading the failed processors of pillow {pillow}");
        let ctx = ctx.as_str();
        self.pg
            .run(ctx, |c| async move {
                let rows = c
                    .query(
                        "SELECT doc_id, processor, attempts FROM pillowtop_rs_failed_processor \
                         WHERE pillow = $1 AND ($2::text[] IS NULL OR doc_id = ANY($2)) ORDER BY 1, 2",
                        &[&pillow, &doc_ids],
                    )
                    .await
                .map_err(err(ctx))?;
                Ok(rows
                    .iter()
                    .map(|r| FailedProcessor {
                        doc_id: r.get(0),
                        processor: r.get(1),
                        attempts: r.get(2),
                    })
                    .collect())
            })
            .await
    }

    async fn forget_failed_processors(
        &self,
        pillow: &str,
        older_than: std::time::Duration,
    ) -> Result<u64> {
        let ctx = format!("forgetting the old failed processors of pillow {pillow}");
        let ctx = ctx.as_str();
        let secs = older_than.as_secs_f64();
        self.pg
            .run(ctx, |c| async move {
                c.execute(
                    "DELETE FROM pillowtop_rs_failed_processor f WHERE f.pillow = $1 \
                     AND f.date_recorded < now() - make_interval(secs => $2) \
                     AND NOT EXISTS (SELECT 1 FROM pillow_retry_pillowerror e \
                                     WHERE e.doc_id = f.doc_id AND e.pillow = f.pillow)",
                    &[&pillow, &secs],
                )
                .await
                .map_err(err(ctx))
            })
            .await
    }

    async fn list(&self, pillow: &str) -> Result<Vec<PillowErrorRow>> {
        self.pg
            .run("listing pillow errors", |c| async move {
                let rows = c
                    .query(
                        "SELECT doc_id, pillow, error_type, error_traceback, current_attempt, total_attempts, \
                         date_created::timestamptz, date_last_attempt::timestamptz, date_next_attempt::timestamptz, \
                         change::text, change_metadata::text FROM pillow_retry_pillowerror WHERE pillow = $1 ORDER BY doc_id",
                        &[&pillow],
                    )
                    .await
                    .map_err(err("listing pillow errors"))?;
                let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
                Ok(rows
                    .iter()
                    .map(|r| PillowErrorRow {
                        doc_id: r.get(0),
                        pillow: r.get(1),
                        error_type: r.get(2),
                        error_traceback: r.get(3),
                        current_attempt: r.get(4),
                        total_attempts: r.get(5),
                        date_created: r.get(6),
                        date_last_attempt: r.get(7),
                        date_next_attempt: r.get(8),
                        change: json(r.get(9)),
                        change_metadata: json(r.get(10)),
                    })
                    .collect())
            })
            .await
    }
}
