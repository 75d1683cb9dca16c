//! The status page for the Django admin view: the page's HTML and its JSON, computed by the
//! core exactly as `pillowtop serve` computes them.

use pyo3::prelude::*;

use super::detach::{detached, runtime_from};
use crate::error::ProcessError;
use crate::ops::status::{self, RateHistory};

/// The status page's HTML; it reads its JSON from `api_url`.
#[pyfunction]
pub(crate) fn status_page(api_url: &str) -> String {
    status::PAGE.replace(
        "data-api=\"/api/pillows\"",
        &format!("data-api=\"{}\"", api_url.replace('"', "%22")),
    )
}

/// Every pillow's status as JSON (the `/api/pillows` document of `pillowtop serve`); `names`
/// maps checkpoint ids to pillow names (a pillow with no live process is shown, and its error
/// rows counted, under its name).
#[pyfunction]
#[pyo3(signature = (postgres_url, kafka_bootstrap, names = None))]
pub(crate) fn status_json(
    py: Python<'_>,
    postgres_url: String,
    kafka_bootstrap: String,
    names: Option<std::collections::BTreeMap<String, String>>,
) -> PyResult<String> {
    let names = names.unwrap_or_default();
    detached(py, move || -> PyResult<String> {
        let runtime = runtime_from(&mut tokio::runtime::Builder::new_current_thread())?;
        let out: crate::Result<String> = runtime.block_on(async {
            let pg = std::sync::Arc::new(crate::pg::Pg::new(postgres_url));
            let kafka = crate::ops::kafka::KafkaInfo::new(&kafka_bootstrap)?;
            let s = status::collect(&pg, &kafka, &RateHistory::new(), &names).await?;
            serde_json::to_string(&s)
                .map_err(|e| ProcessError::Other(format!("cannot encode the status: {e}")).into())
        });
        Ok(out?)
    })
}
