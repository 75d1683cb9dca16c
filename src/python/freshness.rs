//! The freshness API (`processed`, `wait_processed`): has a pillow, or one of its processors,
//! handled the change at a Kafka position? See [`crate::ops::freshness`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::detach::{detached, runtime_from};
use crate::ops::freshness::{self, Position};
use crate::partition::TopicPartition;
use crate::pg::Pg;

fn position(
    checkpoint_id: String,
    topic: &str,
    partition: i32,
    offset: i64,
    processor: Option<String>,
) -> Position {
    Position {
        checkpoint_id,
        tp: TopicPartition::new(topic, partition),
        offset,
        processor,
    }
}

/// Whether the change at (`topic`, `partition`, `offset`) has been handled by the pillow of
/// `checkpoint_id` (by its `processor` only, when given). One query.
#[pyfunction]
#[pyo3(signature = (checkpoint_id, topic, partition, offset, *, postgres_url, processor=None))]
pub(crate) fn processed(
    py: Python<'_>,
    checkpoint_id: String,
    topic: &str,
    partition: i32,
    offset: i64,
    postgres_url: String,
    processor: Option<String>,
) -> PyResult<bool> {
    let at = position(checkpoint_id, topic, partition, offset, processor);
    detached(py, move || -> PyResult<bool> {
        let runtime = runtime_from(&mut tokio::runtime::Builder::new_current_thread())?;
        let pg = Arc::new(Pg::new(postgres_url));
        Ok(runtime.block_on(freshness::processed(&pg, &at))?)
    })
}

/// Waits at most `timeout` seconds until the change has been handled: `True` once it has,
/// `False` when the time is up. Polls every `poll` seconds; Ctrl-C interrupts the wait (the
/// GIL is taken back between polls to check for signals).
#[pyfunction]
#[pyo3(signature = (checkpoint_id, topic, partition, offset, *, postgres_url, processor=None, timeout=30.0, poll=0.05))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait_processed(
    py: Python<'_>,
    checkpoint_id: String,
    topic: &str,
    partition: i32,
    offset: i64,
    postgres_url: String,
    processor: Option<String>,
    timeout: f64,
    poll: f64,
) -> PyResult<bool> {
    let at = position(checkpoint_id, topic, partition, offset, processor);
    // Negative or NaN is an error; a number of seconds too large for a `Duration` is "forever".
    let duration = |what: &str, s: f64| {
        if s.is_nan() || s < 0.0 {
            return Err(super::errors::ConfigurationError::new_err(format!(
                "{what} must be a non-negative number of seconds, not {s}"
            )));
        }
        Ok(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
    };
    let (timeout, poll) = (duration("timeout", timeout)?, duration("poll", poll)?);
    let runtime = runtime_from(&mut tokio::runtime::Builder::new_current_thread())?;
    let pg = Arc::new(Pg::new(postgres_url));
    // A timeout too large for the clock waits without a deadline.
    let deadline = Instant::now().checked_add(timeout);
    // Slices of at most half a second with the GIL released, then a signal check.
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let slice = left.min(Duration::from_millis(500));
        let done = detached(py, || -> PyResult<bool> {
            Ok(runtime.block_on(freshness::wait_processed(&pg, &at, slice, poll))?)
        })?;
        if done {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        py.check_signals()?;
    }
}
