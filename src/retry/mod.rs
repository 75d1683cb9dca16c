//! Failed changes: CommCare's `PillowError` rows in `pillow_retry_pillowerror`, the attempt and
//! backoff arithmetic, and the stores that write them.
//!
//! One row per (document id, pillow name). Each pass over a change that fails adds the change's
//! attempt count (CommCare's `add_attempt` with `metadata.attempts`, after one increment per pass:
//! the fix for §9 #12) and schedules the next attempt `5 min × current_attempt²` later while
//! `current_attempt <= 3`; after that the row is parked (`date_next_attempt = NULL`).

pub mod memory;
pub mod postgres;
pub mod storable;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::change::{Change, ChangeMeta};
use crate::error::Result;
use crate::processor::ProcessorFailure;

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

/// What is recorded about one failed change.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRecord {
    pub doc_id: String,
    pub pillow: String,
    pub error_type: String,
    pub traceback: String,
    /// CommCare's `Change.to_dict()` without the document.
    pub change: serde_json::Value,
    pub metadata: Option<ChangeMeta>,
    /// How many attempts this failure adds (the change's attempt count after this pass).
    pub attempts: i32,
}

impl ErrorRecord {
    /// The record for `change` failing with `failure` in `pillow`. The change's attempt count
    /// must already be incremented for this pass.
    pub fn for_change(pillow: &str, change: &Change, failure: &ProcessorFailure) -> Self {
        Self {
            doc_id: change.id.clone(),
            pillow: pillow.to_owned(),
            error_type: failure.error_type.clone(),
            traceback: failure.traceback_or_message(),
            change: change.to_dict(),
            metadata: Some(change.metadata.clone()),
            attempts: i32::try_from(change.metadata.attempts.max(1)).unwrap_or(i32::MAX),
        }
    }
}

/// A stored error row (the columns tests and operators look at).
#[derive(Debug, Clone, PartialEq)]
pub struct PillowErrorRow {
    pub doc_id: String,
    pub pillow: String,
    pub error_type: Option<String>,
    pub error_traceback: Option<String>,
    pub current_attempt: i32,
    pub total_attempts: i32,
    pub date_created: DateTime<Utc>,
    pub date_last_attempt: DateTime<Utc>,
    pub date_next_attempt: Option<DateTime<Utc>>,
    pub change: Option<serde_json::Value>,
    pub change_metadata: Option<serde_json::Value>,
}

/// Where failed changes are recorded. A failure to record stops the pillow (crash-only).
#[async_trait]
pub trait ErrorStore: Send + Sync {
    async fn record(&self, records: &[ErrorRecord]) -> Result<()>;
    async fn list(&self, pillow: &str) -> Result<Vec<PillowErrorRow>>;
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
