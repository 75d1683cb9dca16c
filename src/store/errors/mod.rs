//! Failed changes: CommCare's `PillowError` rows in `pillow_retry_pillowerror`, and the stores
//! that write them (PostgreSQL, memory). The attempt and backoff arithmetic the rows follow is
//! CommCare's retry policy, in [`crate::retry`]; [`storable`] makes any row storable.

pub mod memory;
pub mod postgres;
pub mod storable;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::change::{Change, ChangeMeta};
use crate::error::Result;

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
    /// The record for `change` failing in `pillow` with an error of `error_type` (CommCare's
    /// `module.Class` form) and `traceback`. The change's attempt count must already be
    /// incremented for this pass.
    pub fn for_change(pillow: &str, change: &Change, error_type: &str, traceback: String) -> Self {
        Self {
            doc_id: change.id.clone(),
            pillow: pillow.to_owned(),
            error_type: error_type.to_owned(),
            traceback,
            change: change.to_dict(),
            metadata: Some(change.metadata.clone()),
            attempts: i32::try_from(change.metadata.attempts.max(1)).unwrap_or(i32::MAX),
        }
    }
}

/// A stored error row (the columns tests and operators look at).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
