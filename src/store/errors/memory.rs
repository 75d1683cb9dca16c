//! An in-memory error store for unit tests and benches, with the same arithmetic as PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use super::{ErrorRecord, ErrorStore, PillowErrorRow};
use crate::error::{ProcessError, Result};
use crate::retry::next_attempt;

/// Rows keyed by (doc id, pillow). `fail` makes every `record` fail (to test crash-only handling).
#[derive(Debug, Default)]
pub struct MemoryErrorStore {
    rows: Mutex<BTreeMap<(String, String), PillowErrorRow>>,
    pub fail: std::sync::atomic::AtomicBool,
}

impl MemoryErrorStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ErrorStore for MemoryErrorStore {
    async fn record(&self, records: &[ErrorRecord]) -> Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProcessError::Other("error store unavailable (test)".into()).into());
        }
        let mut rows = self
            .rows
            .lock()
            .map_err(|_| ProcessError::Other("lock poisoned".into()))?;
        let now = Utc::now();
        for r in records {
            let row = rows
                .entry((r.doc_id.clone(), r.pillow.clone()))
                .or_insert_with(|| PillowErrorRow {
                    doc_id: r.doc_id.clone(),
                    pillow: r.pillow.clone(),
                    error_type: None,
                    error_traceback: None,
                    current_attempt: 0,
                    total_attempts: 0,
                    date_created: r
                        .metadata
                        .as_ref()
                        .and_then(|m| m.publish_timestamp)
                        .unwrap_or(now),
                    date_last_attempt: now,
                    date_next_attempt: None,
                    change: Some(r.change.clone()),
                    change_metadata: r
                        .metadata
                        .as_ref()
                        .and_then(|m| serde_json::to_value(m).ok()),
                });
            row.current_attempt += r.attempts;
            row.total_attempts += r.attempts;
            row.date_last_attempt = now;
            row.date_next_attempt = next_attempt(now, row.current_attempt);
            row.error_type = Some(r.error_type.clone());
            row.error_traceback = Some(r.traceback.clone());
        }
        Ok(())
    }

    async fn list(&self, pillow: &str) -> Result<Vec<PillowErrorRow>> {
        let rows = self
            .rows
            .lock()
            .map_err(|_| ProcessError::Other("lock poisoned".into()))?;
        Ok(rows
            .values()
            .filter(|r| r.pillow == pillow)
            .cloned()
            .collect())
    }
}
