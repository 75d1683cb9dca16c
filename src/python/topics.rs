//! Topics from Python: the partitions Kafka reports for topics (what `pillow_topic_assignments
//! --csv` lays out), and the `topics` argument of `Pillow(...)` checked with a message that
//! names it.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::detach::detached;
use crate::feed::kafka::KafkaAdmin;

/// Every (topic, partition) of `topics`, sorted, as the broker at `kafka_bootstrap` reports
/// them; raises `KafkaError` for a topic Kafka does not have or an unreachable broker.
#[pyfunction]
#[pyo3(signature = (kafka_bootstrap, topics, *, properties = Vec::new()))]
pub(crate) fn topic_partitions(
    py: Python<'_>,
    kafka_bootstrap: String,
    topics: Vec<String>,
    properties: Vec<(String, String)>,
) -> PyResult<Vec<(String, i32)>> {
    detached(py, move || {
        let config = crate::feed::kafka::KafkaClientConfig::from_pairs(properties)?;
        let admin = KafkaAdmin::with_config(&kafka_bootstrap, &config)?;
        let all = admin.partitions(&topics)?;
        Ok::<_, crate::Error>(all.into_iter().map(|tp| (tp.topic, tp.partition)).collect())
    })
}

/// `what` (an argument holding topic names) as a list of strings: a list or tuple of `str`.
/// A single string is refused with a message naming the argument and the expected type (it
/// would otherwise be read as a sequence of one-letter topics, or refused by PyO3 with
/// ``Can't extract `str` to `Vec` ``).
pub(crate) fn topic_names(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        let s: String = value.extract()?;
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of topic names, not the string {s:?}: write [{s:?}]"
        )));
    }
    value.extract::<Vec<String>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a list of topic names (str), not {}",
            value
                .get_type()
                .name()
                .map_or_else(|_| "this value".to_owned(), |n| n.to_string())
        ))
    })
}
