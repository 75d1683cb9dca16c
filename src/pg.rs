//! A reconnecting tokio-postgres connection with retries for outages.
//!
//! Every session runs `SET TIME ZONE 'UTC'`, so timestamps written with `now()` are correct in
//! `timestamp with time zone` columns (our migrations) and in naive `timestamp` columns (a Django
//! project with `USE_TZ = False`, as CommCare runs).

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{Error, PostgresError, Result};

/// A lazily (re)connected client for one database URL.
pub struct Pg {
    url: String,
    client: Mutex<Option<Arc<Client>>>,
    backoff: Backoff,
    /// Ends the outage waits: once cancelled, a failing call is tried once more at most and
    /// then returns [`Error::ShutdownRequested`] instead of waiting for PostgreSQL.
    stop: CancellationToken,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for log lines and error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Pg {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client: Mutex::new(None),
            backoff: Backoff::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Outage waits end when `stop` is cancelled (the pillow's stop request).
    #[must_use]
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// A client for the same database with its own connection and the same stop token.
    #[must_use]
    pub fn sibling(&self) -> Self {
        Self::new(self.url.clone())
            .with_backoff(self.backoff)
            .with_stop(self.stop.clone())
    }

    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection of its own (for callers that need a client outside [`Pg::run`]).
    pub async fn fresh_client(&self) -> Result<Client> {
        self.connect().await
    }

    async fn connect(&self) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(|e| PostgresError::query(format!("connecting to {}", redact(&self.url)), e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %crate::error::describe_postgres(&e), "postgres connection closed");
            }
        });
        client
            .batch_execute("SET TIME ZONE 'UTC'")
            .await
            .map_err(|e| PostgresError::query("setting the session time zone", e))?;
        Ok(client)
    }

    /// Runs `f` with this connection, exclusively (so `f` may run a transaction), retrying with
    /// backoff while PostgreSQL is unreachable. A closed connection is replaced.
    pub async fn run<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        let mut retried_after_stop = false;
        loop {
            let result = {
                let mut guard = self.client.lock().await;
                let client = match guard.as_ref() {
                    Some(c) if !c.is_closed() => Ok(Arc::clone(c)),
                    _ => self.connect().await.map(Arc::new),
                };
                match client {
                    Ok(c) => {
                        *guard = Some(Arc::clone(&c));
                        f(c).await
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                // Once stopped, one immediate retry (a connection the server closed while
                // idle is replaced), never a wait.
                Err(e) if is_retriable(&e) && self.stop.is_cancelled() && !retried_after_stop => {
                    retried_after_stop = true;
                    attempt += 1;
                }
                Err(e) if is_retriable(&e) && started.elapsed() < self.backoff.max_elapsed => {
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(what, url = %redact(&self.url), attempt = attempt + 1, retry_in_ms = delay.as_millis(), error = %e, "postgres unavailable, retrying");
                    if !crate::backoff::sleep_unless_stopped(delay, &self.stop).await {
                        return Err(crate::backoff::stopped_waiting(
                            &format!("postgres at {}", redact(&self.url)),
                            what,
                            &e,
                        ));
                    }
                    attempt += 1;
                }
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(what, attempts = attempt + 1, "postgres recovered");
                    }
                    return Ok(v);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connection-level failures are retried; query errors (constraint, syntax) are not.
pub fn is_retriable(e: &Error) -> bool {
    match e {
        Error::Postgres(PostgresError::Query { source, .. }) => {
            let io = std::error::Error::source(source)
                .is_some_and(<dyn std::error::Error>::is::<std::io::Error>);
            let transient_state = source.code().is_some_and(|c| {
                let c = c.code();
                c.starts_with("08")
                    || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
            });
            source.is_closed() || io || transient_state
        }
        _ => false,
    }
}

/// Maps a query error to the crate error with context.
pub fn err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |e| PostgresError::query(context, e).into()
}
