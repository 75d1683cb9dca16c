//! What `pillowtop_rs.testing` needs from the core against a real broker: the latest offsets of
//! topics (`process_pillow_changes`, `capture_kafka_changes_context` record them on entry) and
//! the changes published between two sets of offsets (what `capture_kafka_changes_context`
//! returns), read with the operator commands' scan.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;

use super::change::PyChange;
use super::detach::{detached, runtime_from};
use crate::change::Change;
use crate::feed::kafka::scan::{scan, ScanRequest};
use crate::feed::kafka::{KafkaFeed, KafkaFeedOptions};
use crate::feed::ChangeFeed;
use crate::partition::TopicPartition;

type Offsets = HashMap<(String, i32), i64>;

fn runtime() -> PyResult<tokio::runtime::Runtime> {
    runtime_from(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pillowtop-test-io"),
    )
}

fn feed(kafka: String, topics: &[String]) -> crate::Result<KafkaFeed> {
    let mut options =
        KafkaFeedOptions::new(kafka, format!("pillowtop-test-{}", std::process::id()));
    options.idle_timeout = Duration::from_millis(100);
    options.bootstrap_setting = Some("the test harness's kafka argument".to_owned());
    KafkaFeed::new(topics, options)
}

/// The high-water mark (the next offset to be written) of every partition of `topics`.
#[pyfunction]
pub(crate) fn kafka_offsets(
    py: Python<'_>,
    kafka: String,
    topics: Vec<String>,
) -> PyResult<Offsets> {
    detached(py, move || -> PyResult<Offsets> {
        let rt = runtime()?;
        let out: crate::Result<Offsets> = rt.block_on(async {
            let mut feed = feed(kafka, &topics)?;
            let partitions = feed.partitions().await?;
            let marks = feed.watermarks(&partitions).await?;
            Ok(marks
                .into_iter()
                .map(|(tp, _, high)| ((tp.topic, tp.partition), high))
                .collect())
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(out?)
    })
}

/// The changes of `topics` from `start` up to `end` (offsets by (topic, partition); a partition
/// missing from `start` is read from 0), in each partition's order, read by the operator
/// commands' scan ([`crate::feed::kafka::scan`]). Messages that are not changes are skipped.
#[pyfunction]
#[pyo3(signature = (kafka, topics, start, end, *, timeout = 30.0))]
pub(crate) fn read_kafka_changes(
    py: Python<'_>,
    kafka: String,
    topics: Vec<String>,
    start: Offsets,
    end: Offsets,
    timeout: f64,
) -> PyResult<Vec<Py<PyChange>>> {
    let changes = detached(py, move || -> PyResult<Vec<Change>> {
        let rt = runtime()?;
        let out: crate::Result<Vec<Change>> = rt.block_on(async {
            let end: BTreeMap<TopicPartition, i64> = end
                .into_iter()
                .filter(|((t, _), _)| topics.contains(t))
                .map(|((t, p), o)| (TopicPartition::new(t, p), o))
                .collect();
            let start = end
                .keys()
                .map(|tp| {
                    let from = start
                        .get(&(tp.topic.clone(), tp.partition))
                        .copied()
                        .unwrap_or(0);
                    (tp.clone(), from)
                })
                .collect();
            let request = ScanRequest {
                bootstrap_servers: kafka.clone(),
                start,
                end: Some(end),
            };
            let mut changes = Vec::new();
            let wait = Duration::from_secs_f64(timeout.max(0.0));
            let scanned = tokio::time::timeout(
                wait,
                scan(request, &CancellationToken::new(), |m| {
                    if let Some(body) = &m.body {
                        if let Ok(c) =
                            Change::from_message(&m.tp.topic, m.tp.partition, m.offset, body)
                        {
                            changes.push(c);
                        }
                    }
                    true
                }),
            )
            .await
            .map_err(|_| {
                crate::error::KafkaError::Other(format!(
                    "reading changes from {kafka}: the end offsets were not reached within {wait:?}"
                ))
            })?;
            scanned?;
            Ok(changes)
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(out?)
    })?;
    changes
        .into_iter()
        .map(|c| Py::new(py, PyChange::captured(c)))
        .collect()
}
