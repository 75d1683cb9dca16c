//! What `pillowtop_rs.testing` needs from the core against a real broker: the latest offsets of
//! topics (`process_pillow_changes`, `capture_kafka_changes_context` record them on entry) and
//! the changes published between two sets of offsets (what `capture_kafka_changes_context`
//! returns), read with the pillow's own Kafka feed.

use std::collections::HashMap;
use std::time::Duration;

use pyo3::prelude::*;

use super::change::PyChange;
use super::detach::detached;
use crate::error::ProcessError;
use crate::feed::kafka::{KafkaFeed, KafkaFeedOptions};
use crate::feed::{read_between, ChangeFeed};
use crate::partition::TopicPartition;

type Offsets = HashMap<(String, i32), i64>;

fn runtime() -> PyResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pillowtop-test-io")
        .enable_all()
        .build()
        .map_err(|e| {
            PyErr::from(crate::Error::from(ProcessError::Other(format!(
                "cannot start the async runtime: {e}"
            ))))
        })
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
/// missing from `start` is read from 0), in each partition's order.
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
    let changes = detached(py, move || -> PyResult<Vec<crate::change::Change>> {
        let rt = runtime()?;
        let out: crate::Result<Vec<crate::change::Change>> = rt.block_on(async {
            let mut feed = feed(kafka, &topics)?;
            let end: HashMap<TopicPartition, i64> = end
                .into_iter()
                .map(|((t, p), o)| (TopicPartition::new(t, p), o))
                .collect();
            let start: Vec<(TopicPartition, i64)> = end
                .keys()
                .map(|tp| {
                    let from = start
                        .get(&(tp.topic.clone(), tp.partition))
                        .copied()
                        .unwrap_or(0);
                    (tp.clone(), from)
                })
                .collect();
            read_between(
                &mut feed,
                &start,
                &end,
                Duration::from_secs_f64(timeout.max(0.0)),
            )
            .await
            .map(|(changes, _invalid)| changes)
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(out?)
    })?;
    changes
        .into_iter()
        .map(|c| Py::new(py, PyChange::captured(c)))
        .collect()
}
