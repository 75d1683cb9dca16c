//! Retrying outages with exponential backoff and jitter, with a log line per retry.
//!
//! Used for service outages (PostgreSQL, Kafka admin calls, the search engine), never for bad
//! input: bad input is recorded as an error and the pillow goes on.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Sleeps for `delay` unless `stop` is (or gets) cancelled first; `false` means stopped.
pub async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// The error of an outage wait that a stop request ended: names the service (and where it
/// is), what was being done and the service's last error.
pub fn stopped_waiting(service: &str, what: &str, last: &Error) -> Error {
    tracing::warn!(service, what, error = %last, "stop requested: no longer waiting for the service");
    Error::ShutdownRequested(format!(
        "stopped while waiting for {service} ({what}); its last error: {last}"
    ))
}

/// How long and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max_delay: Duration,
    /// Give up (return the last error) once this much time has passed.
    pub max_elapsed: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `initial × 2^attempt`, capped, with up
    /// to 25% jitter subtracted so that many processes do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max_delay);
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let jitter = pseudo_random(u64::from(attempt)) % (nanos / 4 + 1);
        Duration::from_nanos(nanos - jitter)
    }

    /// Runs `f` until it succeeds, fails with an error `retriable` rejects, `max_elapsed`
    /// passes, or `stop` is cancelled during a wait (then [`Error::ShutdownRequested`]).
    pub async fn retry<T, F, Fut>(
        &self,
        what: &str,
        retriable: impl Fn(&Error) -> bool,
        stop: &CancellationToken,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(what, attempts = attempt + 1, "recovered after retrying");
                    }
                    return Ok(v);
                }
                Err(e) if retriable(&e) && started.elapsed() < self.max_elapsed => {
                    let delay = self.delay(attempt);
                    tracing::warn!(what, attempt = attempt + 1, retry_in_ms = delay.as_millis(), error = %e, "service unavailable, retrying");
                    if !sleep_unless_stopped(delay, stop).await {
                        return Err(stopped_waiting(what, "retrying", &e));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn pseudo_random(seed: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = seed ^ u64::from(t) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(5),
        };
        let d0 = b.delay(0);
        assert!(
            d0 <= Duration::from_millis(100) && d0 >= Duration::from_millis(75),
            "{d0:?}"
        );
        let d3 = b.delay(3);
        assert!(
            d3 <= Duration::from_millis(800) && d3 >= Duration::from_millis(600),
            "{d3:?}"
        );
        assert!(b.delay(30) <= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn retries_retriable_errors_then_succeeds() {
        let b = Backoff {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_elapsed: Duration::from_secs(5),
        };
        let mut calls = 0;
        let r = b
            .retry(
                "test",
                |_| true,
                &CancellationToken::new(),
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        if n < 3 {
                            Err(Error::ShutdownRequested("x".into()))
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(r.expect("ok"), 3);
    }

    #[tokio::test]
    async fn non_retriable_errors_return_at_once() {
        let b = Backoff::default();
        let mut calls = 0;
        let r: Result<()> = b
            .retry(
                "test",
                |_| false,
                &CancellationToken::new(),
                || {
                    calls += 1;
                    async { Err(Error::ShutdownRequested("x".into())) }
                },
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_stop_request_ends_the_wait_at_once() {
        let b = Backoff {
            initial: Duration::from_secs(30),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        };
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        let r: Result<()> = b
            .retry(
                "the test service",
                |_| true,
                &stop,
                || async {
                    Err(Error::Config(crate::error::ConfigError::Invalid(
                        "down".into(),
                    )))
                },
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let e = r.expect_err("stopped");
        assert!(matches!(e, Error::ShutdownRequested(_)), "{e}");
        assert!(
            e.to_string().contains("the test service") && e.to_string().contains("down"),
            "{e}"
        );
    }
}
