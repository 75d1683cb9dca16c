//! [`ElasticsearchConfig`]: where and how the Elasticsearch processor writes.
//!
//! Deserialised strictly (`deny_unknown_fields`) from the JSON the Python front or the config
//! file produces. Durations are integers in milliseconds so that JSON, TOML and YAML read alike.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{ConfigError, Result};

/// The Elasticsearch processor's settings.
///
/// ```json
/// {
///   "urls": ["http://127.0.0.1:9200"],
///   "index": "xforms_2024-01-01",
///   "alias": "xforms",
///   "settings": {"number_of_shards": 1, "number_of_replicas": 0},
///   "mappings": {"properties": {"domain": {"type": "keyword"}}},
///   "id_field": null,
///   "max_actions_per_request": 1000,
///   "max_bytes_per_request": 10485760,
///   "max_in_flight": 4,
///   "flush_max_changes": 5000,
///   "flush_max_bytes": 8388608,
///   "flush_max_delay_ms": 100,
///   "max_docs_per_second": 0,
///   "max_retries": 4,
///   "outage_budget_secs": 300,
///   "base_backoff_ms": 1000,
///   "max_backoff_ms": 30000,
///   "request_timeout_ms": 30000,
///   "external_version_field": null,
///   "transform": "identity"
/// }
/// ```
///
/// Only `urls` (or `url`, a single string) and `index` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Node URLs; with several, requests go round robin. `url` (one string) is accepted too.
    #[serde(alias = "url", deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// The index written to (never the alias: an alias may point at several indices).
    pub index: String,
    /// An alias created with the index (for readers).
    #[serde(default)]
    pub alias: Option<String>,
    /// Index mappings used when the index is created.
    #[serde(default)]
    pub mappings: Option<Value>,
    /// Index settings used when the index is created.
    #[serde(default)]
    pub settings: Option<Value>,
    /// The (transformed) document field holding the Elasticsearch `_id`. `None` (the default):
    /// the change's document id, CommCare's `_id`. A top-level `_id` is never sent in the
    /// source (Elasticsearch rejects metadata fields there).
    #[serde(default)]
    pub id_field: Option<String>,
    /// At most this many actions per `_bulk` request.
    #[serde(default = "defaults::max_actions")]
    pub max_actions_per_request: usize,
    /// At most this many body bytes per `_bulk` request (a single larger action goes alone).
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes_per_request: usize,
    /// At most this many `_bulk` requests of one chunk in flight at once. A chunk of at least
    /// [`MIN_ACTIONS_PER_GROUP`] × 2 actions is split into up to this many groups by a hash of
    /// the document `_id`, and the groups are sent concurrently (each group's requests one after
    /// the other), so the writes of one document stay in order and never overtake each other.
    /// One node indexes a single bulk request on one write thread per shard; several in flight
    /// use its other threads. 1 sends the chunk's requests one after the other (CommCare's way).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Gathering across chunks: the actions of successive chunks are held and written together
    /// once at least this many are held (or `flush_max_bytes`, or `flush_max_delay_ms` after the
    /// first), so small chunks (CommCare's default chunk size is 10) still make large bulk
    /// requests. The checkpoint follows what was written (see
    /// [`Processor::settle`](crate::processor::Processor::settle)): it never passes a held change;
    /// an idle feed, a stop or a lost partition write everything held first. A whole bulk request
    /// rejected after gathering fails the changes of that request (error rows), with no
    /// change-by-change fallback. The default, 5,000, makes CommCare's default chunk size 10 as
    /// fast as large chunks; 0 turns gathering off: every chunk is written before its call
    /// returns, as in CommCare.
    #[serde(default = "defaults::flush_max_changes")]
    pub flush_max_changes: usize,
    /// Gathering across chunks: write once the held actions reach this many bytes.
    #[serde(default = "defaults::flush_max_bytes")]
    pub flush_max_bytes: usize,
    /// Gathering across chunks: write once the oldest held action is this old (checked after each
    /// chunk; an idle feed writes at its idle tick).
    #[serde(default = "defaults::flush_max_delay_ms")]
    pub flush_max_delay_ms: u64,
    /// A rate ceiling for shared clusters: at most this many actions per second are sent, over
    /// all the processor's requests in flight (a request waits until its actions fit; its
    /// changes are not checkpointed before it is written). 0 (the default): no ceiling. Each
    /// process of a pillow has its own ceiling: a pillow run as N processes sends up to N ×
    /// this.
    #[serde(default)]
    pub max_docs_per_second: u64,
    /// Retries, after the first attempt, of transient failures that are not an outage: a
    /// request or an item answered 500 or another 5xx that does not say the cluster is
    /// unavailable. A request still failing stops the pillow; an item still failing becomes its
    /// change's error row. CommCare's `MAX_RETRIES` is 4. Outages are not counted here: see
    /// `outage_budget_secs`. Rejections (400s such as mapping errors) are never retried.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// How long an outage is waited out, in seconds without progress: connection failures,
    /// timeouts, 408, 429, 502, 503, 504 and "cluster not ready" answers, for bulk requests,
    /// their items and the index creation at start-up (see
    /// [`retry`](super::retry)). A warning is logged per attempt; nothing is checkpointed
    /// past the changes waiting. Once spent, the pillow stops with
    /// [`ElasticsearchError::Unavailable`](crate::error::ElasticsearchError::Unavailable).
    /// 300 s like PostgreSQL's; 0 stops at the first outage.
    #[serde(default = "defaults::outage_budget_secs")]
    pub outage_budget_secs: u64,
    /// The first retry delay; it doubles on each retry (with up to 25% jitter).
    #[serde(default = "defaults::base_backoff_ms")]
    pub base_backoff_ms: u64,
    /// The largest retry delay (also while an outage is waited out).
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Time limit of one HTTP request; a timed-out request is retried.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A (dotted) document field holding a non-negative integer version: documents are then
    /// written with `version_type=external`, so an older version never overwrites a newer one
    /// (a 409 conflict counts as done). Never the Kafka offset.
    #[serde(default)]
    pub external_version_field: Option<String>,
    /// The document transform, by name (see
    /// [`Transforms`](super::processor::Transforms)): `identity` by default.
    #[serde(default = "defaults::transform")]
    pub transform: String,
}

/// A chunk is split into concurrent groups only so that each group keeps at least this many
/// actions (smaller bulk requests cost the node more per document than they gain).
pub const MIN_ACTIONS_PER_GROUP: usize = 100;

mod defaults {
    pub(super) fn max_actions() -> usize {
        1000
    }
    pub(super) fn max_bytes() -> usize {
        10 * 1024 * 1024
    }
    pub(super) fn max_in_flight() -> usize {
        4
    }
    pub(super) fn flush_max_changes() -> usize {
        5000
    }
    pub(super) fn flush_max_bytes() -> usize {
        8 * 1024 * 1024
    }
    pub(super) fn flush_max_delay_ms() -> u64 {
        100
    }
    pub(super) fn max_retries() -> u32 {
        4
    }
    pub(super) fn outage_budget_secs() -> u64 {
        300
    }
    pub(super) fn base_backoff_ms() -> u64 {
        1000
    }
    pub(super) fn max_backoff_ms() -> u64 {
        30_000
    }
    pub(super) fn request_timeout_ms() -> u64 {
        30_000
    }
    pub(super) fn transform() -> String {
        "identity".into()
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl ElasticsearchConfig {
    /// A configuration with the defaults for `url` and `index`.
    pub fn new(url: impl Into<String>, index: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            index: index.into(),
            alias: None,
            mappings: None,
            settings: None,
            id_field: None,
            max_actions_per_request: defaults::max_actions(),
            max_bytes_per_request: defaults::max_bytes(),
            max_in_flight: defaults::max_in_flight(),
            flush_max_changes: defaults::flush_max_changes(),
            flush_max_bytes: defaults::flush_max_bytes(),
            flush_max_delay_ms: defaults::flush_max_delay_ms(),
            max_docs_per_second: 0,
            max_retries: defaults::max_retries(),
            outage_budget_secs: defaults::outage_budget_secs(),
            base_backoff_ms: defaults::base_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            request_timeout_ms: defaults::request_timeout_ms(),
            external_version_field: None,
            transform: defaults::transform(),
        }
    }

    /// Parses and validates the JSON form.
    pub fn from_json(json: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(json).map_err(|e| {
            ConfigError::Invalid(format!(
                "invalid elasticsearch processor configuration: {e}"
            ))
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn outage_budget(&self) -> Duration {
        Duration::from_secs(self.outage_budget_secs)
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| -> Result<()> {
            Err(ConfigError::Invalid(format!(
                "elasticsearch processor for index {:?}: {m}",
                self.index
            ))
            .into())
        };
        if self.urls.is_empty() {
            return invalid("no urls".into());
        }
        for u in &self.urls {
            if let Err(e) = url::Url::parse(u) {
                return invalid(format!("invalid url {u:?}: {e}"));
            }
        }
        if self.index.is_empty()
            || self.index.starts_with(['_', '-', '+'])
            || self.index.chars().any(|c| {
                c.is_ascii_uppercase()
                    || matches!(
                        c,
                        ' ' | '"' | '*' | '\\' | '<' | '|' | ',' | '>' | '/' | '?' | '#' | ':'
                    )
            })
        {
            return invalid("the index name is not a valid elasticsearch index name".into());
        }
        if self.alias.as_deref() == Some("") {
            return invalid("the alias is empty".into());
        }
        for (what, v) in [("mappings", &self.mappings), ("settings", &self.settings)] {
            if v.as_ref().is_some_and(|v| !v.is_object()) {
                return invalid(format!("{what} must be a JSON object"));
            }
        }
        if self.max_actions_per_request == 0 || self.max_bytes_per_request == 0 {
            return invalid("the bulk limits must be positive".into());
        }
        if !(1..=64).contains(&self.max_in_flight) {
            return invalid(format!(
                "max_in_flight must be between 1 and 64, not {}",
                self.max_in_flight
            ));
        }
        if self.request_timeout_ms == 0 {
            return invalid("the request timeout must be positive".into());
        }
        if self.id_field.as_deref() == Some("")
            || self.external_version_field.as_deref() == Some("")
        {
            return invalid("empty document field name".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_gets_the_defaults() {
        let c =
            ElasticsearchConfig::from_json(r#"{"url": "http://localhost:9200", "index": "forms"}"#)
                .expect("valid");
        assert_eq!(
            c,
            ElasticsearchConfig::new("http://localhost:9200", "forms")
        );
        let c2: ElasticsearchConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("json")).expect("round trip");
        assert_eq!(c, c2);
    }

    #[test]
    fn the_outage_budget_is_a_setting_in_json_and_toml() {
        let c = ElasticsearchConfig::from_json(
            r#"{"url": "http://localhost:9200", "index": "forms", "outage_budget_secs": 60}"#,
        )
        .expect("valid");
        assert_eq!(c.outage_budget(), Duration::from_secs(60));
        assert_eq!(
            ElasticsearchConfig::new("http://localhost:9200", "forms").outage_budget_secs,
            300,
            "PostgreSQL's budget by default"
        );
        let t: ElasticsearchConfig = toml::from_str(
            "urls = [\"http://localhost:9200\"]\nindex = \"forms\"\noutage_budget_secs = 0\nmax_retries = 2\n",
        )
        .expect("toml");
        assert_eq!((t.outage_budget_secs, t.max_retries), (0, 2));
        assert!(ElasticsearchConfig::from_json(
            r#"{"url": "http://localhost:9200", "index": "forms", "outage_budget_secs": -1}"#
        )
        .is_err());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        for (json, needle) in [
            (
                r#"{"urls": ["http://a:9200"], "index": "x", "bulk_size": 3}"#,
                "unknown field",
            ),
            (r#"{"urls": [], "index": "x"}"#, "no urls"),
            (r#"{"urls": ["not a url"], "index": "x"}"#, "invalid url"),
            (
                r#"{"urls": ["http://a:9200"], "index": "Forms"}"#,
                "index name",
            ),
            (
                r#"{"urls": ["http://a:9200"], "index": "x", "max_actions_per_request": 0}"#,
                "bulk limits",
            ),
            (
                r#"{"urls": ["http://a:9200"], "index": "x", "max_in_flight": 0}"#,
                "max_in_flight must be between 1 and 64, not 0",
            ),
            (
                r#"{"urls": ["http://a:9200"], "index": "x", "mappings": [1]}"#,
                "mappings",
            ),
        ] {
            let e = ElasticsearchConfig::from_json(json).expect_err(json);
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }
}
