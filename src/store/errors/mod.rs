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
    /// The processor that failed, recorded only by independent processors
    /// (`processor_checkpoints = "independent"`): a retry of the change then runs only the
    /// processors that failed ([`FailedProcessor`]). `None`: CommCare's per-pillow row.
    pub processor: Option<String>,
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
            processor: None,
        }
    }

    /// The record of `processor`'s failure (independent processors): its traceback starts with
    /// a line naming the processor, and the failure is kept per processor.
    #[must_use]
    pub fn of_processor(mut self, processor: &str) -> Self {
        self.traceback = format!(
            "in processor {processor} of pillow {} (processor_checkpoints = \"independent\": a retry runs only the processors that failed)\n{}",
            self.pillow, self.traceback
        );
        self.processor = Some(processor.to_owned());
        self
    }
}

/// One processor's failure on one document, kept beside CommCare's per-pillow error row
/// (`pillowtop_rs_failed_processor`). The retry queue re-publishes the change's metadata
/// unchanged (CommCare's consumers refuse unknown metadata keys) and deletes the error rows;
/// when the re-published change (its `attempts` equal to the one recorded here) reaches the
/// pillow, only the processors recorded for that attempt count run it. Anything that does not
/// match (another attempt count, no row, a pillow in shared mode) runs every processor, as in
/// CommCare: a mismatch costs a redundant run, never a skipped one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct FailedProcessor {
    pub doc_id: String,
    pub processor: String,
    /// The change's attempt count after the failing pass (what the retry re-publishes).
    pub attempts: i32,
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
    /// The processors of `pillow` recorded as failed for any of `doc_ids` (already in their
    /// stored form, [`storable::column_text`]); every one of the pillow's when `doc_ids` is `None`.
    async fn failed_processors(
        &self,
        pillow: &str,
        doc_ids: Option<&[String]>,
    ) -> Result<Vec<FailedProcessor>>;
    /// Forgets the processor failures of `pillow` recorded before `older_than` whose document
    /// has no error row any more (its retry was re-published long ago); returns how many.
    async fn forget_failed_processors(
        &self,
        pillow: &str,
        older_than: std::time::Duration,
    ) -> Result<u64>;
}
