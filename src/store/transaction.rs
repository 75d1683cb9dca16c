//! One PostgreSQL transaction on the shared connection: BEGIN, the caller's statements, COMMIT,
//! or ROLLBACK on any error. BEGIN/COMMIT are statements (not `Client::transaction`), so the
//! client can stay behind an `Arc`.

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg::{err, Pg};

/// What a transaction body may fail with: a failure of the crate (a service failure, which
/// [`Pg::run`] retries from BEGIN while PostgreSQL is unreachable) or a refusal of the caller's
/// own (rolled back and returned as it is, never retried).
pub trait TransactionError: From<Error> {
    /// The crate's error inside `self`, or `self` when it is a refusal of the caller's own.
    fn into_core(self) -> Result<Error, Self>;
}

impl TransactionError for Error {
    fn into_core(self) -> Result<Error, Self> {
        Ok(self)
    }
}

/// Runs `f` inside BEGIN … COMMIT on `pg`'s exclusive connection (ROLLBACK on any error). A
/// connection failure is retried by [`Pg::run`] from BEGIN; a refusal
/// ([`TransactionError::into_core`] gives it back) is not.
pub async fn transaction<T, E, F, Fut>(pg: &Pg, what: &str, f: F) -> Result<T, E>
where
    F: Fn(Arc<Client>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: TransactionError,
{
    let f = &f;
    let outcome = pg
        .run(what, |c| async move {
            c.batch_execute("BEGIN").await.map_err(err(what))?;
            match f(Arc::clone(&c)).await {
                Ok(v) => {
                    c.batch_execute("COMMIT").await.map_err(err(what))?;
                    Ok(Ok(v))
                }
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    match e.into_core() {
                        Ok(core) => Err(core),
                        Err(refusal) => Ok(Err(refusal)),
                    }
                }
            }
        })
        .await?;
    outcome
}
