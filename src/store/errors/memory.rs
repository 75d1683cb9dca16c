//! An in-memory error store for unit tests and benches, with the same arithmetic as PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use super::{ErrorRecord, ErrorStore, FailedProcessor, PillowErrorRow};
use crate::error::{ProcessError, Result};
use crate::retry::next_attempt;

/// (pillow, doc id, processor) → (attempts, when recorded).
type FailedRows = BTreeMap<(String, String, String), (i32, chrono::DateTime<Utc>)>;

/// Rows keyed by (doc id, pillow). `fail` makes every `record` fail (to test crash-only handling).
#[derive(Debug, Default)]
pub struct MemoryErrorStore {
    rows: Mutex<BTreeMap<(String, String), PillowErrorRow>>,
    failed: Mutex<FailedRows>,
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
        let mut failed = self
            .failed
            .lock()
            .map_err(|_| ProcessError::Other("lock poisoned".into()))?;
        for r in records {
            if let Some(p) = &r.processor {
                failed.insert(
                    (r.pillow.clone(), r.doc_id.clone(), p.clone()),
                    (r.attempts, now),
                );
            }
        }
        Ok(())
    }

    async fn failed_processors(
        &self,
        pillow: &str,
        doc_ids: Option<&[String]>,
    ) -> Result<Vec<FailedProcessor>> {
        let failed = self
            .failed
            .lock()
            .map_err(|_| ProcessError::Other("lock poisoned".into()))?;
        Ok(failed
            .iter()
            .filter(|((p, d, _), _)| p == pillow && doc_ids.is_none_or(|ids| ids.contains(d)))
            .map(|((_, d, processor), (attempts, _))| FailedProcessor {
                doc_id: d.clone(),
                processor: processor.clone(),
                attempts: *attempts,
            })
            .collect())
    }

    async fn forget_failed_processors(
        &self,
        pillow: &str,
        older_than: std::time::Duration,
    ) -> Result<u64> {
        let rows = self
            .rows
            .lock()
            .map_err(|_| ProcessError::Other("lock poisoned".into()))?;
        let mut failed = self
            .failed
            .lock()
            .map_err(|_| ProcessError::Other("lock poisoned".into()))?;
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let before = failed.len();
        failed.retain(|(p, d, _), (_, at)| {
            p != pillow || *at >= cutoff || rows.contains_key(&(d.clone(), p.clone()))
        });
        Ok((before - failed.len()) as u64)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn failure(doc_id: &str, processor: &str) -> ErrorRecord {
        ErrorRecord {
            doc_id: doc_id.into(),
            pillow: "p".into(),
            error_type: "tests.TestError".into(),
            traceback: "boom".into(),
            change: serde_json::json!({"id": doc_id}),
            metadata: None,
            attempts: 1,
            processor: Some(processor.into()),
        }
    }

    #[tokio::test]
    async fn failed_processors_are_forgotten_only_without_an_error_row_and_when_old() {
        let store = MemoryErrorStore::new();
        store
            .record(&[failure("a", "x"), failure("a", "y"), failure("b", "x")])
            .await
            .expect("record");
        let only_a = store
            .failed_processors("p", Some(&["a".to_owned()]))
            .await
            .expect("read");
        assert_eq!(
            only_a
                .iter()
                .map(|f| f.processor.as_str())
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
        // The rows still exist: nothing is forgotten, however old.
        assert_eq!(
            store
                .forget_failed_processors("p", Duration::ZERO)
                .await
                .expect("forget"),
            0
        );
        store
            .rows
            .lock()
            .expect("lock")
            .remove(&("a".to_owned(), "p".to_owned()));
        assert_eq!(
            store
                .forget_failed_processors("p", Duration::from_secs(3600))
                .await
                .expect("forget"),
            0,
            "recent"
        );
        assert_eq!(
            store
                .forget_failed_processors("p", Duration::ZERO)
                .await
                .expect("forget"),
            2
        );
        assert_eq!(
            store
                .failed_processors("p", None)
                .await
                .expect("read")
                .len(),
            1
        );
    }
}
