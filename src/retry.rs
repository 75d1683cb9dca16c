//! CommCare's retry policy for failed changes: the attempt and backoff arithmetic of its
//! `PillowError` rows. The rows themselves and their stores are in [`crate::store::errors`].
//!
//! One row per (document id, pillow name). Each pass over a change that fails adds the change's
//! attempt count (CommCare's `add_attempt` with `metadata.attempts`, after one increment per pass:
//! the fix for §9 #12) and schedules the next attempt `5 min × current_attempt²` later while
//! `current_attempt <= 3`; after that the row is parked (`date_next_attempt = NULL`).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// CommCare's `PILLOW_RETRY_REPROCESS_INTERVAL`.
pub const REPROCESS_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// CommCare's `PILLOW_RETRY_QUEUE_MAX_PROCESSING_ATTEMPTS`.
pub const MAX_PROCESSING_ATTEMPTS: i32 = 3;
/// CommCare's `PILLOW_RETRY_MULTI_ATTEMPTS_CUTOFF`.
pub const MULTI_ATTEMPTS_CUTOFF: i32 = 9;

/// When the next attempt is due after `current_attempt` attempts, or `None` when parked.
pub fn next_attempt(last_attempt: DateTime<Utc>, current_attempt: i32) -> Option<DateTime<Utc>> {
    if !(0..=MAX_PROCESSING_ATTEMPTS).contains(&current_attempt) {
        return None;
    }
    let squared = u32::try_from(current_attempt * current_attempt).ok()?;
    let delay = chrono::Duration::from_std(REPROCESS_INTERVAL * squared).ok()?;
    Some(last_attempt + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_5_20_45_minutes_then_parked() {
        let t = Utc::now();
        let mins = |n| next_attempt(t, n).map(|d| (d - t).num_minutes());
        assert_eq!(mins(1), Some(5));
        assert_eq!(mins(2), Some(20));
        assert_eq!(mins(3), Some(45));
        assert_eq!(mins(4), None);
    }
}
