//! CommCare's read-only Kafka commands (docs/commcare-pillowtop.md §4) over
//! [`crate::feed::kafka::scan`]:
//!
//! * `tail_kafka`: follow topics from their high-water marks;
//! * `search_kafka_changes`: scan topics from a time (Kafka's offsets-for-times) or the first
//!   retained offset up to the high-water marks at the start, keeping the changes whose id, type,
//!   subtype and time match;
//! * `ptop_dump_remaining_changes`: the changes a checkpoint has not processed yet, from its
//!   offsets (or the first retained offset, if older) to the high-water marks.
//!
//! Each change is handed to the caller as a [`FoundChange`] (CommCare's metadata, the position
//! and time), up to a limit; invalid messages are counted, not fatal. Nothing is written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::kafka::KafkaInfo;
use super::{OpsError, Result};
use crate::feed::kafka::scan::{self, RawMessage, ScanEnd, ScanRequest};
use crate::feed::TopicPartition;
use crate::pg::Pg;
use crate::store::checkpoints::postgres::PostgresCheckpointStore;

/// Which changes to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    /// Only these document ids.
    pub doc_ids: Option<BTreeSet<String>>,
    /// Only this `document_type`.
    pub doc_type: Option<String>,
    /// Only this `document_subtype`.
    pub doc_subtype: Option<String>,
    /// Only messages published at or after this time (milliseconds since the epoch).
    pub start_ms: Option<i64>,
    /// Only messages published before this time.
    pub end_ms: Option<i64>,
}

impl ChangeFilter {
    /// Whether a change's metadata and time match.
    pub fn matches(&self, meta: &serde_json::Value, timestamp_ms: Option<i64>) -> bool {
        let field = |k: &str| meta.get(k).and_then(serde_json::Value::as_str);
        let time_ok = match timestamp_ms {
            Some(ts) => self.start_ms.is_none_or(|s| ts >= s) && self.end_ms.is_none_or(|e| ts < e),
            None => self.start_ms.is_none() && self.end_ms.is_none(),
        };
        time_ok
            && self
                .doc_ids
                .as_ref()
                .is_none_or(|ids| field("document_id").is_some_and(|id| ids.contains(id)))
            && self
                .doc_type
                .as_deref()
                .is_none_or(|t| field("document_type") == Some(t))
            && self
                .doc_subtype
                .as_deref()
                .is_none_or(|t| field("document_subtype") == Some(t))
    }
}

/// One change as the commands print it: CommCare's `id`, `seq` (the offset), `deleted` and
/// `metadata`, plus where and when it was published.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoundChange {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub seq: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub id: Option<String>,
    pub deleted: bool,
    pub metadata: serde_json::Value,
}

/// How a read ended and what it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct InspectSummary {
    /// Messages read.
    pub read: u64,
    /// Changes that matched (and were handed over).
    pub matched: u64,
    /// Messages that were not valid change metadata (skipped).
    pub invalid: u64,
    /// Whether the limit ended the read.
    pub limit_reached: bool,
    /// Whether a stop request (Ctrl-C) ended it.
    pub interrupted: bool,
}

/// Parses a message as change metadata; `None` for an invalid one.
pub fn to_change(m: &RawMessage) -> Option<FoundChange> {
    let meta: serde_json::Value = serde_json::from_slice(m.body.as_deref()?).ok()?;
    if !meta.is_object() {
        return None;
    }
    Some(FoundChange {
        topic: m.tp.topic.clone(),
        partition: m.tp.partition,
        offset: m.offset,
        seq: m.offset,
        timestamp: m.timestamp_ms.and_then(DateTime::from_timestamp_millis),
        id: meta
            .get("document_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        deleted: meta
            .get("is_deletion")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        metadata: meta,
    })
}

/// Scans `req`, handing the matching changes to `each` until `limit` of them.
async fn read<F>(
    req: ScanRequest,
    filter: &ChangeFilter,
    limit: Option<u64>,
    stop: &CancellationToken,
    mut each: F,
) -> Result<InspectSummary>
where
    F: FnMut(&FoundChange),
{
    let mut s = InspectSummary::default();
    if limit == Some(0) {
        s.limit_reached = true;
        return Ok(s);
    }
    let end = scan::scan(req, stop, |m| {
        s.read += 1;
        let Some(c) = to_change(&m) else {
            s.invalid += 1;
            return true;
        };
        if filter.matches(&c.metadata, m.timestamp_ms) {
            s.matched += 1;
            each(&c);
        }
        limit.is_none_or(|l| s.matched < l)
    })
    .await?;
    s.limit_reached = end == ScanEnd::Enough;
    s.interrupted = end == ScanEnd::Stopped;
    Ok(s)
}

/// `tail_kafka`: follows `topics` from their high-water marks until `stop` or `limit`.
pub async fn tail<F>(
    kafka: &KafkaInfo,
    topics: &[String],
    filter: &ChangeFilter,
    limit: Option<u64>,
    stop: &CancellationToken,
    each: F,
) -> Result<InspectSummary>
where
    F: FnMut(&FoundChange),
{
    let partitions = kafka.partitions(topics).await?;
    let w = kafka.watermarks(&partitions).await?;
    let start = w.into_iter().map(|(tp, w)| (tp, w.high)).collect();
    let req = ScanRequest {
        bootstrap_servers: kafka.bootstrap().to_owned(),
        start,
        end: None,
    };
    read(req, filter, limit, stop, each).await
}

/// `search_kafka_changes`: scans `topics` from `filter.start_ms` (or the first retained offset)
/// to the high-water marks at the start.
pub async fn search<F>(
    kafka: &KafkaInfo,
    topics: &[String],
    filter: &ChangeFilter,
    limit: Option<u64>,
    stop: &CancellationToken,
    each: F,
) -> Result<InspectSummary>
where
    F: FnMut(&FoundChange),
{
    let partitions = kafka.partitions(topics).await?;
    let w = kafka.watermarks(&partitions).await?;
    let from_time = match filter.start_ms {
        Some(ms) => Some(kafka.offsets_for_time(&partitions, ms).await?),
        None => None,
    };
    let start = w
        .iter()
        .map(|(tp, w)| {
            let o = from_time
                .as_ref()
                .and_then(|m| m.get(tp).copied())
                .unwrap_or(w.low)
                .max(w.low);
            (tp.clone(), o)
        })
        .collect();
    let end = w.iter().map(|(tp, w)| (tp.clone(), w.high)).collect();
    let req = ScanRequest {
        bootstrap_servers: kafka.bootstrap().to_owned(),
        start,
        end: Some(end),
    };
    read(req, filter, limit, stop, each).await
}

/// What `ptop_dump_remaining_changes` reads: per partition of the checkpoint, from its offset
/// (the first retained one, if older) to the high-water mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemainingPlan {
    pub checkpoint_id: String,
    pub partitions: Vec<RemainingPartition>,
}

/// One partition of a [`RemainingPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemainingPartition {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// Plans the dump of what `checkpoint_id` has not processed (its rows on `topics`, or all).
pub async fn plan_remaining(
    pg: &Arc<Pg>,
    kafka: &KafkaInfo,
    checkpoint_id: &str,
) -> Result<RemainingPlan> {
    let rows = PostgresCheckpointStore::new(Arc::clone(pg))
        .load_many(&[checkpoint_id.to_owned()])
        .await?;
    let rows = rows.get(checkpoint_id).cloned().unwrap_or_default();
    if rows.is_empty() {
        return Err(OpsError::NoSourceRows {
            ids: vec![checkpoint_id.to_owned()],
            detail: String::new(),
        });
    }
    let tps: Vec<TopicPartition> = rows.iter().map(|r| r.tp.clone()).collect();
    let w = kafka.watermarks_of_existing(&tps).await?;
    let partitions = rows
        .iter()
        .filter_map(|r| {
            let w = w.get(&r.tp)?;
            Some(RemainingPartition {
                topic: r.tp.topic.clone(),
                partition: r.tp.partition,
                from: r.offset.max(w.low),
                to: w.high,
            })
        })
        .collect();
    Ok(RemainingPlan {
        checkpoint_id: checkpoint_id.to_owned(),
        partitions,
    })
}

/// Reads what `plan` names, handing every change (no filter) to `each`.
pub async fn dump_remaining<F>(
    kafka: &KafkaInfo,
    plan: &RemainingPlan,
    limit: Option<u64>,
    stop: &CancellationToken,
    each: F,
) -> Result<InspectSummary>
where
    F: FnMut(&FoundChange),
{
    let tp = |p: &RemainingPartition| TopicPartition::new(p.topic.clone(), p.partition);
    let req = ScanRequest {
        bootstrap_servers: kafka.bootstrap().to_owned(),
        start: plan.partitions.iter().map(|p| (tp(p), p.from)).collect(),
        end: Some(
            plan.partitions
                .iter()
                .map(|p| (tp(p), p.to))
                .collect::<BTreeMap<_, _>>(),
        ),
    };
    read(req, &ChangeFilter::default(), limit, stop, each).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_id_type_subtype_and_time() {
        let meta = serde_json::json!({
            "document_id": "d1", "document_type": "CommCareCase", "document_subtype": "person",
            "data_source_type": "sql", "data_source_name": "case-sql", "is_deletion": true,
        });
        assert!(ChangeFilter::default().matches(&meta, None));
        let ids = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
        let f = ChangeFilter {
            doc_ids: ids(&["d1", "d2"]),
            doc_type: Some("CommCareCase".into()),
            doc_subtype: Some("person".into()),
            start_ms: Some(100),
            end_ms: Some(200),
        };
        assert!(f.matches(&meta, Some(150)));
        assert!(!f.matches(&meta, Some(200)), "the end is exclusive");
        assert!(!f.matches(&meta, Some(99)));
        assert!(!f.matches(&meta, None), "a time filter needs a time");
        assert!(!ChangeFilter {
            doc_ids: ids(&["x"]),
            ..Default::default()
        }
        .matches(&meta, None));
        assert!(!ChangeFilter {
            doc_subtype: Some("other".into()),
            ..Default::default()
        }
        .matches(&meta, None));
        let m = RawMessage {
            tp: TopicPartition::new("t", 2),
            offset: 7,
            timestamp_ms: Some(1_700_000_000_000),
            key: None,
            body: Some(meta.to_string().into_bytes()),
        };
        let c = to_change(&m).expect("valid");
        assert_eq!(
            (c.id.as_deref(), c.deleted, c.seq, c.partition),
            (Some("d1"), true, 7, 2)
        );
        let bad = RawMessage {
            body: Some(b"[1]".to_vec()),
            ..m.clone()
        };
        assert!(to_change(&bad).is_none());
        assert!(to_change(&RawMessage { body: None, ..m }).is_none());
    }
}
