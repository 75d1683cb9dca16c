//! What is retried: the one place that classifies Elasticsearch outcomes.
//!
//! * a whole request: transport failures (connection refused or reset, dropped connections,
//!   timeouts) and the statuses of [`is_retriable`] are retried with exponential backoff and
//!   jitter, then surface as a fatal [`crate::Error::Elasticsearch`]; any other non-2xx status
//!   fails the chunk as a whole (the pillow then retries its changes one by one);
//! * a bulk item: 2xx, a 404 on a delete (already gone) and a 409 (a version conflict: an equal
//!   or newer version is already there) are done; [`is_retriable`] statuses are re-sent (only
//!   those items); anything else (`mapper_parsing_exception` and other 4xx) is the change's
//!   failure, recorded as an error row.

use super::bulk::{ItemResult, Op};

/// Statuses worth retrying: 429 (too many requests, `es_rejected_execution_exception`), 408
/// (request timeout) and every 5xx.
pub fn is_retriable(status: u16) -> bool {
    status == 429 || status == 408 || (500..600).contains(&status)
}

/// Whether a failed request (no response) is worth retrying. Everything that is not a local
/// encoding error is: connection failures, dropped connections, timeouts, truncated bodies.
pub fn is_retriable_transport(e: &elasticsearch::Error) -> bool {
    !e.is_json()
}

/// What to do with one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Done,
    /// Re-send it; the reason is kept for the log and for the failure after the last retry.
    Retry(String),
    /// The change failed for good, with Elasticsearch's reason.
    Failed(String),
}

/// Classifies one item of a bulk response.
pub fn classify_item(op: Op, item: &ItemResult) -> ItemOutcome {
    let reason = || {
        item.error.as_ref().map_or_else(
            || format!("status {}", item.status),
            |e| format!("status {}: {e}", item.status),
        )
    };
    match item.status {
        // Written, already gone (a delete), or an equal or newer version is there.
        s if (200..300).contains(&s) || s == 409 || (s == 404 && op == Op::Delete) => {
            ItemOutcome::Done
        }
        s if is_retriable(s) => ItemOutcome::Retry(reason()),
        _ => ItemOutcome::Failed(reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::bulk::ItemError;
    use super::*;

    fn item(status: u16, kind: Option<&str>) -> ItemResult {
        ItemResult {
            status,
            error: kind.map(|k| ItemError {
                kind: k.into(),
                reason: Some("why".into()),
                caused_by: None,
            }),
        }
    }

    #[test]
    fn statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retriable(s), "{s}");
        }
        for s in [200, 201, 400, 401, 403, 404, 409, 413] {
            assert!(!is_retriable(s), "{s}");
        }
    }

    #[test]
    fn items() {
        use ItemOutcome::{Done, Failed, Retry};
        let cases = [
            (Op::Index, item(201, None), Done),
            (Op::Index, item(200, None), Done),
            (Op::Delete, item(200, None), Done),
            (Op::Delete, item(404, None), Done),
            (
                Op::Index,
                item(409, Some("version_conflict_engine_exception")),
                Done,
            ),
            (
                Op::Delete,
                item(409, Some("version_conflict_engine_exception")),
                Done,
            ),
            (
                Op::Index,
                item(429, Some("es_rejected_execution_exception")),
                Retry("status 429: es_rejected_execution_exception: why".into()),
            ),
            (
                Op::Index,
                item(503, Some("unavailable_shards_exception")),
                Retry("status 503: unavailable_shards_exception: why".into()),
            ),
            (
                Op::Index,
                item(400, Some("mapper_parsing_exception")),
                Failed("status 400: mapper_parsing_exception: why".into()),
            ),
            (
                Op::Index,
                item(404, Some("index_not_found_exception")),
                Failed("status 404: index_not_found_exception: why".into()),
            ),
            (Op::Index, item(0, None), Failed("status 0".into())),
        ];
        for (op, it, want) in cases {
            assert_eq!(classify_item(op, &it), want, "{op:?} {it:?}");
        }
    }
}
