//! Waiting out outages and retrying transient failures: the policy of [`super::retry`] in time.
//!
//! [`Policy`] is the processor's (URLs without credentials, backoff, the outage budget, the
//! retry count, the stop token); a [`Wait`] is one request's (or one bulk batch's) account of
//! it. An outage is waited out with exponential backoff (capped at `max_backoff_ms`) until the
//! node answers without an outage or `outage_budget_secs` pass without progress; a transient
//! failure is retried `max_retries` times. Every wait logs a warning naming the service, the
//! URL, the attempt, the next delay and the server's or transport's own text; a recovery logs
//! an info line. A stop request ends a wait at once with [`Error::ShutdownRequested`] (and, once
//! an outage has begun, the request in flight too).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::config::ElasticsearchConfig;
use crate::backoff::Backoff;
use crate::error::{ElasticsearchError, Error, Result};

/// The service name in log lines.
const SERVICE: &str = "elasticsearch";

/// How a processor waits for its node.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// The node URLs without passwords, for log lines and errors.
    pub(super) url: String,
    /// Passwords of the URLs, scrubbed from error texts (a transport error may quote its URL).
    secrets: Vec<String>,
    backoff: Backoff,
    budget: Duration,
    max_retries: u32,
    pub(super) stop: CancellationToken,
}

impl Policy {
    pub(super) fn new(config: &ElasticsearchConfig) -> Self {
        let secrets = config
            .urls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok()?.password().map(str::to_owned))
            .collect();
        let mut policy = Self {
            url: String::new(),
            secrets,
            backoff: Backoff {
                initial: Duration::from_millis(config.base_backoff_ms),
                max_delay: Duration::from_millis(config.max_backoff_ms.max(config.base_backoff_ms)),
                max_elapsed: config.outage_budget(),
            },
            budget: config.outage_budget(),
            max_retries: config.max_retries,
            stop: CancellationToken::new(),
        };
        // As configured, without the passwords.
        policy.url = policy.scrub(&config.urls.join(", "));
        policy
    }

    /// A new account for one request (or bulk batch) of `processor`, described by `what`.
    pub(super) fn wait<'a>(&'a self, processor: &'a str, what: String) -> Wait<'a> {
        Wait {
            policy: self,
            processor,
            what,
            waits: 0,
            outage_since: None,
            outage_attempts: 0,
            retries: 0,
            last_error: String::new(),
        }
    }

    /// `text` without the URLs' passwords.
    pub(super) fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(text.to_owned(), |t, s| {
                t.replace(&format!(":{s}@"), ":***@")
            })
    }

    /// A transport error's text with its causes (the top level alone says "error sending
    /// request" without saying why), without passwords.
    pub(super) fn describe(&self, e: &elasticsearch::Error) -> String {
        self.scrub(&crate::error::with_causes(e))
    }
}

/// One request's account of its outage and its retries.
pub(super) struct Wait<'a> {
    policy: &'a Policy,
    processor: &'a str,
    what: String,
    /// Consecutive waits (the backoff exponent).
    waits: u32,
    /// When the current outage began (the last progress), if one is going on.
    outage_since: Option<Instant>,
    outage_attempts: u32,
    retries: u32,
    last_error: String,
}

impl Wait<'_> {
    pub(super) fn what(&self) -> &str {
        &self.what
    }

    /// Transient retries spent so far.
    pub(super) fn retries(&self) -> u32 {
        self.retries
    }

    /// After an outage (`error`: the server's or the transport's text): waits before the next
    /// attempt. `Err` once the budget is spent ([`ElasticsearchError::Unavailable`]) or on a
    /// stop request ([`Error::ShutdownRequested`]).
    pub(super) async fn outage(&mut self, error: &str) -> Result<()> {
        self.last_error = self.policy.scrub(error);
        let since = *self.outage_since.get_or_insert_with(Instant::now);
        self.outage_attempts += 1;
        let waited = since.elapsed();
        let budget = self.policy.budget;
        if waited >= budget {
            return Err(ElasticsearchError::Unavailable {
                url: self.policy.url.clone(),
                context: self.what.clone(),
                attempts: self.outage_attempts,
                waited_secs: waited.as_secs(),
                budget_secs: budget.as_secs(),
                last_error: std::mem::take(&mut self.last_error),
            }
            .into());
        }
        // The last attempt falls at the end of the budget, not after it.
        let delay = self
            .policy
            .backoff
            .delay(self.waits)
            .min(budget.saturating_sub(waited));
        tracing::warn!(service = SERVICE, url = %self.policy.url, processor = self.processor, what = %self.what,
            attempt = self.outage_attempts, retry_in_ms = delay.as_millis(), waited_ms = waited.as_millis(),
            budget_secs = budget.as_secs(), error = %self.last_error, "elasticsearch unavailable, waiting");
        self.sleep(delay).await
    }

    /// After a transient failure: waits and returns `Ok(true)`, or `Ok(false)` once
    /// `max_retries` are spent. `Err` on a stop request.
    pub(super) async fn transient(&mut self, error: &str) -> Result<bool> {
        if self.retries >= self.policy.max_retries {
            return Ok(false);
        }
        self.last_error = self.policy.scrub(error);
        self.retries += 1;
        let delay = self.policy.backoff.delay(self.waits);
        tracing::warn!(service = SERVICE, url = %self.policy.url, processor = self.processor, what = %self.what,
            attempt = self.retries, max_retries = self.policy.max_retries, retry_in_ms = delay.as_millis(),
            error = %self.last_error, "elasticsearch request failed, retrying");
        self.sleep(delay).await?;
        Ok(true)
    }

    /// The node answered without an outage (or made progress): an outage going on is over.
    pub(super) fn progressed(&mut self) {
        if let Some(since) = self.outage_since.take() {
            tracing::info!(service = SERVICE, url = %self.policy.url, processor = self.processor, what = %self.what,
                attempts = self.outage_attempts + 1, waited_ms = since.elapsed().as_millis(), "elasticsearch recovered");
            self.outage_attempts = 0;
            self.waits = 0;
        }
    }

    /// Runs one request. Once an outage has begun a stop request ends it too (a request to a
    /// node that does not answer may take the whole request timeout).
    pub(super) async fn request<T>(&self, request: impl Future<Output = T>) -> Result<T> {
        if self.outage_since.is_none() {
            return Ok(request.await);
        }
        tokio::select! {
            biased;
            () = self.policy.stop.cancelled() => Err(self.stopped()),
            v = request => Ok(v),
        }
    }

    async fn sleep(&mut self, delay: Duration) -> Result<()> {
        self.waits = self.waits.saturating_add(1);
        if crate::backoff::sleep_unless_stopped(delay, &self.policy.stop).await {
            Ok(())
        } else {
            Err(self.stopped())
        }
    }

    fn stopped(&self) -> Error {
        Error::ShutdownRequested(format!(
            "stopped while waiting for elasticsearch at {} ({}): {}",
            self.policy.url, self.what, self.last_error
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget_secs: u64) -> Policy {
        let mut c = ElasticsearchConfig::new("http://elastic:s3cret@127.0.0.1:1", "forms");
        c.urls.push("http://127.0.0.1:2".into());
        c.outage_budget_secs = budget_secs;
        c.base_backoff_ms = 1;
        c.max_backoff_ms = 5;
        c.max_retries = 2;
        Policy::new(&c)
    }

    #[test]
    fn urls_and_texts_lose_their_passwords() {
        let p = policy(1);
        assert_eq!(p.url, "http://elastic:***@127.0.0.1:1, http://127.0.0.1:2");
        assert_eq!(
            p.scrub("error sending request for url (http://elastic:s3cret@127.0.0.1:1/_bulk)"),
            "error sending request for url (http://elastic:***@127.0.0.1:1/_bulk)"
        );
    }

    #[tokio::test]
    async fn an_outage_is_waited_out_for_the_budget_then_named() {
        let p = policy(0);
        let mut w = p.wait("es", "creating index forms".into());
        let e = w.outage("status 503: no master").await.expect_err("spent");
        assert!(
            matches!(
                e,
                Error::Elasticsearch(ElasticsearchError::Unavailable { attempts: 1, .. })
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "elasticsearch at http://elastic:***@127.0.0.1:1, http://127.0.0.1:2 still unavailable after 0 s (1 attempts, outage budget 0 s) while creating index forms: status 503: no master"
        );

        let mut c = ElasticsearchConfig::new("http://127.0.0.1:1", "forms");
        c.outage_budget_secs = 1;
        c.base_backoff_ms = 100;
        c.max_backoff_ms = 200;
        let p = Policy::new(&c);
        let mut w = p.wait("es", "x".into());
        let started = Instant::now();
        let mut attempts = 0;
        let e = loop {
            attempts += 1;
            if let Err(e) = w.outage("refused").await {
                break e;
            }
        };
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert!(attempts >= 5, "{attempts}");
        assert!(e.to_string().contains("while x: refused"), "{e}");
    }

    #[tokio::test]
    async fn progress_restarts_the_outage_clock_and_transients_are_counted() {
        let p = policy(3600);
        let mut w = p.wait("es", "x".into());
        w.outage("a").await.expect("waits");
        assert!(w.outage_since.is_some());
        w.progressed();
        assert!(w.outage_since.is_none() && w.waits == 0);
        assert!(w.transient("500").await.expect("waits"));
        assert!(w.transient("500").await.expect("waits"));
        assert!(!w.transient("500").await.expect("spent"), "max_retries 2");
        assert_eq!(w.retries(), 2);
    }

    #[tokio::test]
    async fn a_stop_request_ends_a_wait_and_a_request_during_an_outage() {
        let mut c = ElasticsearchConfig::new("http://127.0.0.1:1", "forms");
        c.base_backoff_ms = 60_000;
        c.max_backoff_ms = 60_000;
        let mut p = Policy::new(&c);
        let stop = CancellationToken::new();
        p.stop = stop.clone();
        let mut w = p.wait("es", "creating index forms".into());
        // Before an outage a request is not interrupted.
        stop.cancel();
        assert_eq!(w.request(async { 7 }).await.expect("runs"), 7);
        let started = Instant::now();
        let e = w.outage("connection refused").await.expect_err("stopped");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            e.to_string(),
            "shutdown requested: stopped while waiting for elasticsearch at http://127.0.0.1:1 (creating index forms): connection refused"
        );
        let e = w
            .request(std::future::pending::<()>())
            .await
            .expect_err("stopped");
        assert!(matches!(e, Error::ShutdownRequested(_)), "{e:?}");
    }
}
