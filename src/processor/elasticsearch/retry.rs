//! What is retried: the one place that classifies Elasticsearch outcomes.
//!
//! Every failure is one of three kinds ([`Failure`]):
//! * an **outage** ([`Failure::Outage`]): the node cannot take the request now — a transport
//!   failure (connection refused or reset, a dropped connection, a timeout), 408, 429, 502,
//!   503, 504, or an answer that says the cluster is not ready (no master, a cluster block,
//!   unavailable shards, a rejected execution: [`UNAVAILABLE_ERRORS`]). Outages are waited out
//!   with backoff for the processor's time budget (`outage_budget_secs`), then stop the pillow
//!   with [`crate::error::ElasticsearchError::Unavailable`]; nothing is checkpointed past them;
//! * a **transient** failure ([`Failure::Transient`]): any other 5xx, retried `max_retries`
//!   times; a whole request then stops the pillow, an item becomes its change's error row;
//! * a **rejection** ([`Failure::Rejected`]): anything else (a 400 such as
//!   `mapper_parsing_exception`, a 404 index, a local encoding error): never retried. A
//!   rejected item is its change's error row; a rejected whole request fails the chunk as a
//!   whole (the pillow then retries its changes one by one).
//!
//! A bulk item is done when it is 2xx, a 404 on a delete (already gone) or a 409 (a version
//! conflict: an equal or newer version is already there).

use super::bulk::{ItemResult, Op};

/// What a failed request or item calls for. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Outage,
    Transient,
    Rejected,
}

/// Statuses that mean the node cannot take requests now.
pub const OUTAGE_STATUSES: [u16; 5] = [408, 429, 502, 503, 504];

/// Elasticsearch error types that mean the cluster is not ready (whatever the status).
pub const UNAVAILABLE_ERRORS: [&str; 10] = [
    "cluster_block_exception",
    "master_not_discovered_exception",
    "not_master_exception",
    "no_shard_available_action_exception",
    "unavailable_shards_exception",
    "es_rejected_execution_exception",
    "circuit_breaking_exception",
    "node_not_connected_exception",
    "node_disconnected_exception",
    "process_cluster_event_timeout_exception",
];

/// Classifies a whole request's non-2xx answer, from its status and body.
pub fn classify_status(status: u16, body: &str) -> Failure {
    if OUTAGE_STATUSES.contains(&status) || UNAVAILABLE_ERRORS.iter().any(|k| body.contains(k)) {
        Failure::Outage
    } else if (500..600).contains(&status) {
        Failure::Transient
    } else {
        Failure::Rejected
    }
}

/// Classifies a failed request (no response). Everything that is not a local encoding error is
/// an outage: connection failures, dropped connections, timeouts, truncated bodies.
pub fn classify_transport(e: &elasticsearch::Error) -> Failure {
    if e.is_json() {
        Failure::Rejected
    } else {
        Failure::Outage
    }
}

/// What to do with one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Done,
    /// Re-send it (an outage or a transient failure); the reason is kept for the log and for
    /// the failure once the budget is spent.
    Retry(Failure, String),
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
        s => {
            let kind = item.error.as_ref().map_or("", |e| e.kind.as_str());
            match classify_status(s, kind) {
                Failure::Rejected => ItemOutcome::Failed(reason()),
                f => ItemOutcome::Retry(f, reason()),
            }
        }
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
        use Failure::{Outage, Rejected, Transient};
        let cases = [
            (408, "", Outage),
            (429, "", Outage),
            (502, "<html>bad gateway</html>", Outage),
            (503, "", Outage),
            (504, "", Outage),
            (500, "", Transient),
            (501, "", Transient),
            (
                500,
                r#"{"error":{"type":"master_not_discovered_exception"}}"#,
                Outage,
            ),
            (
                403,
                r#"{"error":{"root_cause":[{"type":"cluster_block_exception","reason":"index [x] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)]"}]}}"#,
                Outage,
            ),
            (
                400,
                r#"{"error":{"type":"mapper_parsing_exception"}}"#,
                Rejected,
            ),
            (
                400,
                r#"{"error":{"type":"resource_already_exists_exception"}}"#,
                Rejected,
            ),
            (401, "", Rejected),
            (
                404,
                r#"{"error":{"type":"index_not_found_exception"}}"#,
                Rejected,
            ),
            (413, "", Rejected),
        ];
        for (status, body, want) in cases {
            assert_eq!(classify_status(status, body), want, "{status} {body}");
        }
    }

    #[test]
    fn items() {
        use Failure::{Outage, Transient};
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
                Retry(
                    Outage,
                    "status 429: es_rejected_execution_exception: why".into(),
                ),
            ),
            (
                Op::Index,
                item(503, Some("unavailable_shards_exception")),
                Retry(
                    Outage,
                    "status 503: unavailable_shards_exception: why".into(),
                ),
            ),
            (
                Op::Index,
                item(500, Some("null_pointer_exception")),
                Retry(Transient, "status 500: null_pointer_exception: why".into()),
            ),
            (
                Op::Index,
                item(403, Some("cluster_block_exception")),
                Retry(Outage, "status 403: cluster_block_exception: why".into()),
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
