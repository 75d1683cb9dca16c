//! The change producer for Python (`pillowtop_rs.producer` wraps it): the core's
//! [`ChangeProducer`] with the GIL released while a delivery is awaited.
//!
//! Python hands over the change as JSON text (what CommCare's `ChangeMeta.to_json()` gives,
//! serialised); the core checks the required fields, fills the timestamps CommCare defaults and
//! writes the wire form. Deliveries of the asynchronous mode are kept here and handed back by
//! [`PyProducer::poll`] and [`PyProducer::flush`], so Python's callbacks and audit lines run on
//! the thread that asks: librdkafka's threads never call into Python.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::detach::detached;
use super::errors::{ConfigurationError, PillowtopError};
use crate::change::ChangeParseError;
use crate::error::{Error, KafkaError};
use crate::feed::kafka::producer::{change_for_publishing, ChangeProducer, ProducerOptions};

type Delivery = Pin<Box<dyn Future<Output = crate::Result<(i32, i64)>> + Send>>;

/// What Python gets for one finished delivery: (ticket, partition, offset, error). On an error
/// partition and offset are -1 and the error is a `KafkaPublishingError` instance.
type Outcome = (u64, i32, i64, Option<Py<PyAny>>);

/// A Kafka producer configured as CommCare's `ChangeProducer` (see `pillowtop_rs.producer`).
#[pyclass(name = "KafkaProducer", module = "pillowtop_rs._native", frozen)]
pub(crate) struct PyProducer {
    inner: ChangeProducer,
    runtime: tokio::runtime::Runtime,
    pending: Mutex<Vec<(u64, Delivery)>>,
    next_ticket: AtomicU64,
}

/// The change to publish, checked and completed (the required fields, CommCare's timestamp
/// defaults); a mistake raises `InvalidChangeError` naming it.
fn parse(body: &str) -> Result<crate::change::ChangeMeta, ChangeParseError> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ChangeParseError(format!("the change to publish is not JSON: {e}")))?;
    change_for_publishing(value, chrono::Utc::now())
}

fn to_py(e: Error) -> PyErr {
    PyErr::from(e)
}

fn bounded(
    inner: &ChangeProducer,
    topic: String,
    document_id: String,
    fut: impl Future<Output = crate::Result<(i32, i64)>> + Send + 'static,
) -> Delivery {
    // librdkafka reports every message within message.timeout.ms; this bound only guards
    // against a report that never comes.
    let bound = inner.timeout() + Duration::from_secs(2);
    Box::pin(async move {
        match tokio::time::timeout(bound, fut).await {
            Ok(result) => result,
            Err(_) => Err(KafkaError::Publishing {
                topic,
                document_id,
                reason: format!("no delivery report within {} s", bound.as_secs_f64()),
            }
            .into()),
        }
    })
}

#[pymethods]
impl PyProducer {
    /// A producer for `bootstrap`; `timeout` (seconds) bounds every delivery, `properties` are
    /// extra librdkafka settings applied last.
    #[new]
    #[pyo3(signature = (bootstrap, *, timeout = 5.0, properties = Vec::new()))]
    fn new(bootstrap: &str, timeout: f64, properties: Vec<(String, String)>) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(ConfigurationError::new_err(format!(
                "the producer timeout must be a positive number of seconds, not {timeout}"
            )));
        }
        let options = ProducerOptions {
            timeout: Duration::from_secs_f64(timeout),
            properties,
        };
        let inner = ChangeProducer::with_options(bootstrap, &options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| {
                PillowtopError::new_err(format!("cannot start the producer's runtime: {e}"))
            })?;
        Ok(Self {
            inner,
            runtime,
            pending: Mutex::new(Vec::new()),
            next_ticket: AtomicU64::new(1),
        })
    }

    /// The delivery bound in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.inner.timeout().as_secs_f64()
    }

    /// The bootstrap servers.
    #[getter]
    fn bootstrap(&self) -> &str {
        self.inner.bootstrap()
    }

    /// Publishes `body` (a change's JSON) to `topic` and waits for the broker, with the GIL
    /// released; returns (partition, offset). Raises `InvalidChangeError` for a change without
    /// its required fields, `KafkaPublishingError` when it is not delivered within the bound.
    fn send(&self, py: Python<'_>, topic: &str, body: &str) -> PyResult<(i32, i64)> {
        let meta = parse(body)?;
        let topic = topic.to_owned();
        detached(py, || {
            let pending = self.inner.enqueue(&topic, &meta).map_err(to_py)?;
            let id = pending.document_id().to_owned();
            let fut = bounded(&self.inner, topic, id, pending.wait());
            self.runtime.block_on(fut).map_err(to_py)
        })
    }

    /// Hands `body` to librdkafka without waiting; returns a ticket that [`Self::poll`] and
    /// [`Self::flush`] report on. Raises at once only for an invalid change or a full queue.
    fn enqueue(&self, topic: &str, body: &str) -> PyResult<u64> {
        let meta = parse(body)?;
        let pending = self.inner.enqueue(topic, &meta).map_err(to_py)?;
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let delivery = bounded(
            &self.inner,
            topic.to_owned(),
            meta.document_id.clone(),
            pending.wait(),
        );
        self.lock().push((ticket, delivery));
        Ok(ticket)
    }

    /// The deliveries finished so far (no waiting): (ticket, partition, offset, error).
    fn poll(&self, py: Python<'_>) -> Vec<Outcome> {
        let done = {
            let mut pending = self.lock();
            let _guard = self.runtime.enter();
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            take_finished(&mut pending, &mut cx)
        };
        outcomes(py, done)
    }

    /// Waits up to `timeout` seconds (the delivery bound by default) for every pending delivery,
    /// with the GIL released; returns those that finished. Any still pending stay pending.
    #[pyo3(signature = (timeout = None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Vec<Outcome>> {
        let limit = match timeout {
            Some(t) if t.is_finite() && t >= 0.0 => Duration::from_secs_f64(t),
            Some(t) => {
                return Err(ConfigurationError::new_err(format!(
                    "flush's timeout must be a non-negative number of seconds, not {t}"
                )))
            }
            None => self.inner.timeout() + Duration::from_secs(2),
        };
        let done = detached(py, || {
            let deadline = Instant::now() + limit;
            let mut pending = self.lock();
            let mut done = Vec::new();
            self.runtime.block_on(async {
                let all = std::future::poll_fn(|cx| {
                    done.extend(take_finished(&mut pending, cx));
                    if pending.is_empty() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                });
                let _ = tokio::time::timeout_at(deadline.into(), all).await;
            });
            Ok::<_, PyErr>(done)
        })?;
        Ok(outcomes(py, done))
    }

    /// How many deliveries are not reported yet.
    #[getter]
    fn pending(&self) -> usize {
        self.lock().len()
    }

    fn __repr__(&self) -> String {
        format!(
            "KafkaProducer(bootstrap={:?}, timeout={})",
            self.inner.bootstrap(),
            self.inner.timeout().as_secs_f64()
        )
    }
}

impl PyProducer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Delivery)>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn take_finished(
    pending: &mut Vec<(u64, Delivery)>,
    cx: &mut Context<'_>,
) -> Vec<(u64, crate::Result<(i32, i64)>)> {
    let mut done = Vec::new();
    pending.retain_mut(|(ticket, fut)| match fut.as_mut().poll(cx) {
        Poll::Ready(result) => {
            done.push((*ticket, result));
            false
        }
        Poll::Pending => true,
    });
    done
}

fn outcomes(py: Python<'_>, done: Vec<(u64, crate::Result<(i32, i64)>)>) -> Vec<Outcome> {
    done.into_iter()
        .map(|(ticket, result)| match result {
            Ok((partition, offset)) => (ticket, partition, offset, None),
            Err(e) => (ticket, -1, -1, Some(to_py(e).into_value(py).into_any())),
        })
        .collect()
}
