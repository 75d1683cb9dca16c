//! The Elasticsearch side of a reindex ([`super::Version`]): a new index behind the
//! processor's alias, created with refresh off and no replicas (restored at the swap), the
//! alias moved in one `_aliases` request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{ReindexOptions, Version};
use crate::error::{ElasticsearchError, Error, Result};
use crate::processor::elasticsearch::{DocTransform, ElasticsearchConfig, ElasticsearchProcessor};
use crate::processor::Processor;
use crate::store::reindex::{ReindexRun, Step, Update};

/// An Elasticsearch processor's index versions.
pub(super) struct EsVersion {
    pub(super) es: Es,
    pub(super) config: ElasticsearchConfig,
    pub(super) transform: Option<DocTransform>,
    pub(super) stop: CancellationToken,
}

impl EsVersion {
    pub(super) fn new(
        config: &ElasticsearchConfig,
        transform: Option<DocTransform>,
        stop: &CancellationToken,
    ) -> Result<Self> {
        let p = ElasticsearchProcessor::new(config.clone())?;
        Ok(Self {
            es: Es {
                client: p.client().clone(),
                url: config.urls.join(","),
                stop: stop.clone(),
                budget: Duration::from_secs(config.outage_budget_secs),
            },
            config: config.clone(),
            transform,
            stop: stop.clone(),
        })
    }

    /// The settings to restore at the swap: the configured ones, else the old index's.
    async fn restore_values(&self, old: &str, configured: Value) -> Result<Value> {
        let (status, current) = self
            .es
            .call(Method::Get, &format!("/{old}/_settings"), None)
            .await?;
        let index = if status == 200 {
            current
                .get(old)
                .and_then(|v| v.pointer("/settings/index"))
                .cloned()
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let pick = |k: &str| {
            configured
                .get(k)
                .cloned()
                .filter(|v| !v.is_null())
                .or_else(|| index.get(k).cloned())
                .unwrap_or(Value::Null)
        };
        Ok(json!({
            "refresh_interval": pick("refresh_interval"),
            "number_of_replicas": pick("number_of_replicas"),
        }))
    }
}

#[async_trait]
impl Version for EsVersion {
    fn noun(&self) -> &'static str {
        "index"
    }

    fn check(&self, _options: &ReindexOptions) -> std::result::Result<(), String> {
        if let Some(f) = &self.config.id_field {
            return Err(format!("the processor takes each document's _id from its field {f:?}; the verification compares the source's ids with the index's, so this is not supported yet"));
        }
        if self.config.alias.is_none() {
            return Err(format!(
                "index {} has no alias: readers would not see the new index; add `alias` to the processor's configuration (and read through it)",
                self.config.index
            ));
        }
        Ok(())
    }

    fn serving(&self, latest: Option<&ReindexRun>) -> String {
        latest.map_or_else(|| self.config.index.clone(), |r| r.targets().primary)
    }

    fn names(
        &self,
        serving: &str,
        options: &ReindexOptions,
    ) -> std::result::Result<(String, String, String), String> {
        let alias = self.config.alias.clone().unwrap_or_default();
        let new = options.new_index.clone().unwrap_or_else(|| {
            format!("{alias}_{}", Utc::now().format("%Y%m%d%H%M%S")).to_lowercase()
        });
        Ok((serving.to_owned(), new, alias))
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        let (status, _) = self
            .es
            .call(Method::Head, &format!("/{name}"), None)
            .await?;
        Ok(status == 200)
    }

    async fn size(&self, name: &str) -> Result<(Option<i64>, Option<i64>)> {
        let (status, cat) = self
            .es
            .call(
                Method::Get,
                &format!("/_cat/indices/{name}?format=json&bytes=b"),
                None,
            )
            .await?;
        let old = (status == 200)
            .then(|| cat.get(0).cloned())
            .flatten()
            .unwrap_or(Value::Null);
        Ok((num(&old, "docs.count"), num(&old, "store.size")))
    }

    async fn free_bytes(&self) -> Result<Option<i64>> {
        let (_, allocation) = self
            .es
            .call(Method::Get, "/_cat/allocation?format=json&bytes=b", None)
            .await?;
        Ok(allocation
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| num(n, "disk.avail"))
            .min())
    }

    fn where_free(&self) -> &'static str {
        "the search node"
    }

    async fn create(&self, run: &ReindexRun) -> Result<Update> {
        let es = &self.es;
        let (settings, restore) = reindex_settings(self.config.settings.as_ref());
        let restore = self.restore_values(&run.old_index, restore).await?;
        let mut body = serde_json::Map::new();
        body.insert("settings".into(), settings);
        if let Some(m) = &self.config.mappings {
            body.insert("mappings".into(), m.clone());
        }
        // Made already (a resumed run, or an index prepared by hand): kept as it is.
        let mut existed = self.exists(&run.new_index).await?;
        if !existed {
            let (status, reply) = es
                .call(
                    Method::Put,
                    &format!("/{}", run.new_index),
                    Some(&Value::Object(body)),
                )
                .await?;
            // Made by another process between the two requests: the same as found.
            existed = status == 400 && reply.to_string().contains("resource_already_exists");
            if !(200..300).contains(&status) && !existed {
                return Err(ElasticsearchError::Status {
                    context: format!("creating the new index {}", run.new_index),
                    status,
                    body: reply.to_string(),
                }
                .into());
            }
        }
        Ok(Update {
            step: Some(Step::Created),
            settings: Some(restore),
            log: Some(format!(
                "{} {} (refresh off, no replicas)",
                if existed { "found" } else { "created" },
                run.new_index
            )),
            ..Update::default()
        })
    }

    fn writer(&self, name: &str, create_only: bool) -> Result<Box<dyn Processor>> {
        let mut c = self.config.clone();
        name.clone_into(&mut c.index);
        c.alias = None;
        c.flush_max_changes = 0;
        let mut p = ElasticsearchProcessor::new(c)?.with_stop(self.stop.clone());
        if let Some(t) = &self.transform {
            p = p.with_transform(t.clone());
        }
        Ok(Box::new(if create_only { p.with_create_only() } else { p }))
    }

    async fn refresh(&self, name: &str) -> Result<()> {
        self.es.refresh(name).await
    }

    async fn all_ids(&self, name: &str, domain: Option<&str>) -> Result<HashSet<String>> {
        self.es.all_ids(name, domain).await
    }

    async fn fetch(&self, name: &str, ids: &[String]) -> Result<HashMap<String, Value>> {
        self.es.mget(name, ids).await
    }

    async fn expected(&self, docs: &HashMap<String, String>) -> Result<HashMap<String, Value>> {
        Ok(docs
            .iter()
            .filter_map(|(id, d)| Some((id.clone(), self.expected_source(d)?)))
            .collect())
    }

    fn may_skip(&self) -> bool {
        self.transform.is_some()
    }

    async fn domain_counts(&self, name: &str) -> Result<Option<BTreeMap<String, u64>>> {
        let (status, reply) = self
            .es
            .call(
                Method::Post,
                &format!("/{name}/_search"),
                Some(&json!({"size": 0, "aggs": {"d": {"terms": {"field": "domain", "size": 10000}}}})),
            )
            .await?;
        if status != 200 {
            return Ok(None); // no keyword `domain` field: counted in total only
        }
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for b in reply
            .pointer("/aggregations/d/buckets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(k), Some(n)) = (
                b.get("key").and_then(Value::as_str),
                b.get("doc_count").and_then(Value::as_u64),
            ) {
                counts.insert(k.to_owned(), n);
            }
        }
        Ok(Some(counts))
    }

    async fn swap(&self, run: &ReindexRun) -> Result<u64> {
        let es = &self.es;
        let index = &run.new_index;
        let restore = json!({"index": {
            "refresh_interval": run.settings.get("refresh_interval").cloned().unwrap_or(Value::Null),
            "number_of_replicas": run.settings.get("number_of_replicas").cloned().unwrap_or(Value::Null),
        }});
        es.ok(
            &format!("restoring the settings of {index}"),
            Method::Put,
            &format!("/{index}/_settings"),
            Some(&restore),
        )
        .await?;
        es.refresh(index).await?;
        // A preindex has no old index (a remove action naming a missing index fails).
        let mut actions = Vec::new();
        if self.exists(&run.old_index).await? {
            actions.push(
                json!({"remove": {"index": run.old_index, "alias": run.alias, "must_exist": false}}),
            );
        }
        actions.push(json!({"add": {"index": index, "alias": run.alias}}));
        let started = Instant::now();
        es.ok(
            &format!(
                "moving alias {} from {} to {index}",
                run.alias, run.old_index
            ),
            Method::Post,
            "/_aliases",
            Some(&json!({ "actions": actions })),
        )
        .await?;
        Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn swapped(&self, run: &ReindexRun) -> String {
        format!("alias {} now points at {}", run.alias, run.new_index)
    }

    async fn unswap(&self, run: &ReindexRun) -> Result<String> {
        self.es
            .ok(
                &format!("moving alias {} back to {}", run.alias, run.old_index),
                Method::Post,
                "/_aliases",
                Some(&json!({"actions": [
                    {"remove": {"index": run.new_index, "alias": run.alias, "must_exist": false}},
                    {"add": {"index": run.old_index, "alias": run.alias}},
                ]})),
            )
            .await?;
        Ok(format!(
            "alias {} points at {} again; {} is no longer written",
            run.alias, run.old_index, run.new_index
        ))
    }

    async fn delete(&self, _run: &ReindexRun, name: &str) -> Result<()> {
        let (status, reply) = self
            .es
            .call(Method::Delete, &format!("/{name}"), None)
            .await?;
        if !(200..300).contains(&status) && status != 404 {
            return Err(ElasticsearchError::Status {
                context: format!("deleting index {name}"),
                status,
                body: reply.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

impl EsVersion {
    /// What the index must hold for a source document: nothing for a `-Deleted` document or one
    /// the transform skips (or fails on); else the transformed document without its `_id`.
    fn expected_source(&self, text: &str) -> Option<Value> {
        let doc: Value = serde_json::from_str(text).ok()?;
        if doc
            .get("doc_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("-Deleted"))
        {
            return None;
        }
        let mut out = match &self.transform {
            Some(t) => t(&doc).ok()??,
            None => doc,
        };
        if let Value::Object(m) = &mut out {
            m.remove("_id");
        }
        Some(out)
    }
}

fn num(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(|x| x.as_str()?.parse::<i64>().ok())
}

/// The new index's settings (the configured ones, refresh off, no replicas) and the configured
/// values of the two replaced (`null` when not configured).
fn reindex_settings(configured: Option<&Value>) -> (Value, Value) {
    let mut flat = serde_json::Map::new();
    if let Some(Value::Object(m)) = configured {
        for (k, v) in m {
            if k == "index" {
                if let Value::Object(inner) = v {
                    for (k2, v2) in inner {
                        flat.insert(k2.clone(), v2.clone());
                    }
                }
            } else {
                flat.insert(k.strip_prefix("index.").unwrap_or(k).to_owned(), v.clone());
            }
        }
    }
    let restore = json!({
        "refresh_interval": flat.get("refresh_interval").cloned().unwrap_or(Value::Null),
        "number_of_replicas": flat.get("number_of_replicas").cloned().unwrap_or(Value::Null),
    });
    flat.insert("refresh_interval".into(), json!("-1"));
    flat.insert("number_of_replicas".into(), json!(0));
    (Value::Object(flat), restore)
}

/// Plain JSON requests to the search node, with outages (429, 502-504, no connection) waited
/// out for the processor's `outage_budget_secs`, a warning naming the node and its error per
/// attempt.
pub(super) struct Es {
    client: Elasticsearch,
    url: String,
    stop: CancellationToken,
    /// How long an outage is waited out: the processor's `outage_budget_secs`.
    budget: Duration,
}

impl Es {
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let budget = self.budget;
        let started = Instant::now();
        let mut attempt = 0u32;
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        loop {
            let mut headers = HeaderMap::with_capacity(1);
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let sent = self
                .client
                .transport()
                .send(method, path, headers, None::<&()>, bytes.as_deref(), None)
                .await;
            let failure = match sent {
                Ok(r) => {
                    let status = r.status_code().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    if !matches!(status, 429 | 502..=504) {
                        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                        return Ok((status, v));
                    }
                    format!("status {status}: {}", &text[..text.len().min(300)])
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= budget {
                return Err(ElasticsearchError::Unavailable {
                    url: self.url.clone(),
                    context: format!("{method:?} {path}"),
                    attempts: attempt + 1,
                    waited_secs: started.elapsed().as_secs(),
                    budget_secs: budget.as_secs(),
                    last_error: failure,
                }
                .into());
            }
            let delay = Duration::from_millis(250 * 2u64.pow(attempt.min(4)));
            tracing::warn!(url = %self.url, request = %format!("{method:?} {path}"), attempt = attempt + 1,
                retry_in_ms = delay.as_millis(), error = %failure, "elasticsearch unavailable during a reindex, retrying");
            if !crate::backoff::sleep_unless_stopped(delay, &self.stop).await {
                return Err(Error::ShutdownRequested(format!(
                    "stopped while waiting for elasticsearch at {} ({method:?} {path}): {failure}",
                    self.url
                )));
            }
            attempt += 1;
        }
    }

    /// Makes everything written to `index` searchable.
    pub(super) async fn refresh(&self, index: &str) -> Result<()> {
        self.ok(
            &format!("refreshing {index}"),
            Method::Post,
            &format!("/{index}/_refresh"),
            None,
        )
        .await
        .map(drop)
    }

    /// A request that must answer 2xx.
    pub(super) async fn ok(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, reply) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(reply)
        } else {
            Err(ElasticsearchError::Status {
                context: what.to_owned(),
                status,
                body: reply.to_string(),
            }
            .into())
        }
    }

    /// Every `_id` of `index` (with `domain` = `domain` when given), by a scroll.
    pub(super) async fn all_ids(
        &self,
        index: &str,
        domain: Option<&str>,
    ) -> Result<HashSet<String>> {
        let query = domain.map_or_else(
            || json!({"match_all": {}}),
            |d| json!({"term": {"domain": d}}),
        );
        let mut reply = self
            .ok(
                &format!("listing the ids of {index}"),
                Method::Post,
                &format!("/{index}/_search?scroll=1m"),
                Some(&json!({"size": 5000, "_source": false, "sort": ["_doc"], "query": query})),
            )
            .await?;
        let mut ids = HashSet::new();
        loop {
            let hits = reply
                .pointer("/hits/hits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let scroll = reply
                .get("_scroll_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if hits.is_empty() {
                if let Some(s) = scroll {
                    let _ = self
                        .call(
                            Method::Delete,
                            "/_search/scroll",
                            Some(&json!({"scroll_id": s})),
                        )
                        .await;
                }
                return Ok(ids);
            }
            ids.extend(
                hits.iter()
                    .filter_map(|h| h.get("_id")?.as_str().map(str::to_owned)),
            );
            let Some(s) = scroll else { return Ok(ids) };
            reply = self
                .ok(
                    &format!("listing the ids of {index}"),
                    Method::Post,
                    "/_search/scroll",
                    Some(&json!({"scroll": "1m", "scroll_id": s})),
                )
                .await?;
        }
    }

    /// The sources of `ids` in `index` (absent ones are not returned).
    pub(super) async fn mget(&self, index: &str, ids: &[String]) -> Result<HashMap<String, Value>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(1000) {
            let reply = self
                .ok(
                    &format!("reading documents of {index}"),
                    Method::Post,
                    &format!("/{index}/_mget"),
                    Some(&json!({"ids": chunk})),
                )
                .await?;
            for d in reply
                .get("docs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if d.get("found").and_then(Value::as_bool) == Some(true) {
                    if let (Some(id), Some(src)) =
                        (d.get("_id").and_then(Value::as_str), d.get("_source"))
                    {
                        out.insert(id.to_owned(), src.clone());
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_index_has_refresh_off_and_no_replicas_and_the_configured_values_are_restored() {
        let (s, restore) = reindex_settings(Some(&json!({
            "number_of_shards": 2, "index": {"refresh_interval": "5s"}, "index.number_of_replicas": 1
        })));
        assert_eq!(
            s,
            json!({"number_of_shards": 2, "refresh_interval": "-1", "number_of_replicas": 0})
        );
        assert_eq!(
            restore,
            json!({"refresh_interval": "5s", "number_of_replicas": 1})
        );
        let (_, none) = reindex_settings(None);
        assert_eq!(
            none,
            json!({"refresh_interval": null, "number_of_replicas": null})
        );
    }
}
