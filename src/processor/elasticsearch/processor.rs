//! [`ElasticsearchProcessor`]: index or delete each change's document, in bulk.
//!
//! Per change (CommCare's `BulkElasticProcessor`):
//! * `change.deleted`, or a document whose `doc_type` ends in `-Deleted`: delete (a 404 is
//!   fine: already gone);
//! * a missing document (the store has none): the change goes to the retry set; its serial
//!   retry fetches the document again and fails with `DocumentMissingError` if it is still
//!   missing (always recorded, as in CommCare);
//! * otherwise the document goes through the transform and is indexed.
//!
//! What is retried is decided in [`super::retry`], and how long in [`super::outage`]: an outage
//! (connection refused, dropped connections, timeouts, 429, 502-504, a cluster not ready) is
//! waited out for `outage_budget_secs` without progress, with a warning per attempt, then stops
//! the pillow with [`crate::error::ElasticsearchError::Unavailable`]; other 5xx are retried
//! `max_retries` times; a change is never skipped silently, and a stop request
//! ([`ElasticsearchProcessor::with_stop`]) ends a wait with [`Error::ShutdownRequested`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, Transport, TransportBuilder,
};
use elasticsearch::http::{Method, Url};
use elasticsearch::indices::IndicesCreateParts;
use elasticsearch::Elasticsearch;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::bulk::{parse_response, BulkBody, Source, BULK_FILTER_PATH};
use super::config::{ElasticsearchConfig, MIN_ACTIONS_PER_GROUP};
use super::outage::{Policy, Wait};
use super::retry::{classify_item, classify_status, classify_transport, Failure, ItemOutcome};
use crate::change::{Change, Document};
use crate::docstore::DocumentStores;
use crate::error::{ConfigError, ElasticsearchError, Error, ProcessError, Result};
use crate::path::{lookup, Projection};
use crate::pg::Pg;
use crate::processor::{ChunkOutcome, Processor, ProcessorFailure, Settled};
use crate::store::reindex::Targets;

/// A document transform: the document as fetched → the source to index. `Ok(None)` skips the
/// change (nothing is written or deleted, like CommCare's `doc_filter_fn`); `Err(message)`
/// fails the change (recorded with [`TRANSFORM_ERROR_TYPE`]). Called inline, in the
/// processor's own future (never spawned): when the Python front drives the pillow with
/// `block_on` on the calling thread, a wrapped Python callable runs there, once per document.
pub type DocTransform = Arc<dyn Fn(&Value) -> Result<Option<Value>, String> + Send + Sync>;

/// `error_type` of failures reported by Elasticsearch (mapping and parse errors, items still
/// failing after the retries, whole-request failures).
pub const ERROR_TYPE: &str = "pillowtop_rs.exceptions.ElasticsearchError";
/// `error_type` of transform failures and of documents without a usable id or version.
pub const TRANSFORM_ERROR_TYPE: &str = "pillowtop_rs.exceptions.ProcessorError";

/// The identity transform (the default). The processor does not call it: it indexes the
/// document as it is, without copying it.
pub fn identity() -> DocTransform {
    Arc::new(|doc: &Value| Ok(Some(doc.clone())))
}

/// Named transforms, for configurations that choose a transform by name (`"transform"`).
/// `identity` is built in.
#[derive(Clone)]
pub struct Transforms {
    map: HashMap<String, DocTransform>,
}

impl Default for Transforms {
    fn default() -> Self {
        Self::builtin()
    }
}

impl std::fmt::Debug for Transforms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Transforms {
    /// The built-in transforms: `identity`.
    pub fn builtin() -> Self {
        let mut map = HashMap::new();
        map.insert("identity".to_owned(), identity());
        Self { map }
    }

    /// Adds (or replaces) a named transform. `identity` is reserved.
    pub fn register(&mut self, name: impl Into<String>, transform: DocTransform) {
        let name = name.into();
        if name != "identity" {
            self.map.insert(name, transform);
        }
    }

    pub fn get(&self, name: &str) -> Option<DocTransform> {
        self.map.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Indexes and deletes changes' documents in one Elasticsearch index. See the module docs.
pub struct ElasticsearchProcessor {
    /// What sends bulk requests (cloned into the background writes).
    sender: Sender,
    /// `None`: identity, without copying the document.
    transform: Option<DocTransform>,
    /// With the identity transform: the fields a plan reads (`doc_type`, the id and version
    /// fields), read from an embedded document's text without parsing the rest, which is copied
    /// into the bulk body as it is.
    head: Option<Projection>,
    docstores: DocumentStores,
    held: Held,
    /// Follows the rebuilds of this processor's index ([`crate::store::reindex`]), when the
    /// pillow has PostgreSQL.
    watch: Option<ReindexWatch>,
    /// Documents are written only when absent ([`super::bulk::Op::Create`]): a reindex's
    /// backfill.
    create_only: bool,
}

use crate::processor::reindex_watch::ReindexWatch;
pub use crate::processor::reindex_watch::REINDEX_POLL;

/// What sends bulk requests to the index: the processor's in-line writes and its background
/// writes (a clone per wave: the counters are shared).
#[derive(Clone)]
struct Sender {
    name: String,
    config: Arc<ElasticsearchConfig>,
    client: Elasticsearch,
    /// The indices written (the configured one, or both versions during a reindex); replaced
    /// as a whole when a reindex moves on.
    targets: Arc<std::sync::RwLock<Arc<Targets>>>,
    policy: Policy,
    /// The actions per bulk request now: `max_actions_per_request`, halved on each 429 from the
    /// node and grown back by a quarter after each request without one.
    batch_limit: Arc<std::sync::atomic::AtomicUsize>,
    /// The rate ceiling (`max_docs_per_second`), if any.
    rate: Option<Arc<RateCeiling>>,
}

/// A rate ceiling over all the requests of a processor: each request reserves the time its
/// actions take at the ceiling's rate, after the reservations before it, and waits for its
/// start (a virtual schedule; an idle period earns no credit beyond one second's worth).
struct RateCeiling {
    per_second: f64,
    next_free: std::sync::Mutex<Instant>,
}

impl RateCeiling {
    fn new(per_second: u64) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second: per_second as f64,
            next_free: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// When `actions` actions may be sent: reserves their share of the schedule.
    fn reserve(&self, actions: usize, now: Instant) -> Instant {
        let mut next = self
            .next_free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // an idle spell earns at most one second's worth of credit (a burst of `per_second`)
        let earliest = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let start = (*next).max(earliest);
        *next = start + Duration::from_secs_f64(actions as f64 / self.per_second);
        start.max(now)
    }

    async fn wait(&self, actions: usize) {
        let at = self.reserve(actions, Instant::now());
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Actions gathered across chunks (`flush_max_changes` > 0), written by
/// [`Processor::settle`].
#[derive(Default)]
struct Held {
    /// The held actions; their `change` indexes `changes`.
    body: BulkBody,
    /// The changes of the held actions, without their documents (for error rows).
    changes: Vec<Change>,
    /// When the oldest held action was added.
    since: Option<Instant>,
    /// Failures of held actions written outside `settle` (before a serial write), returned by the
    /// next `settle`.
    failures: Vec<(Change, ProcessorFailure)>,
    /// The newest chunk all of whose actions are written.
    written_through: u64,
    /// The held actions being written in the background, if any.
    wave: Option<Wave>,
}

/// Held actions written in the background (see [`Processor::settle`]).
struct Wave {
    /// The newest chunk whose actions are all in this wave or written before it.
    through: u64,
    task: tokio::task::JoinHandle<Result<Vec<(Change, ProcessorFailure)>>>,
}

impl std::fmt::Debug for ElasticsearchProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchProcessor")
            .field("name", &self.sender.name)
            .field("config", &self.sender.config)
            .finish_non_exhaustive()
    }
}

/// What one change becomes.
enum Plan<'a> {
    Index {
        id: Cow<'a, str>,
        version: Option<u64>,
        source: Source<'a>,
    },
    Delete {
        id: Cow<'a, str>,
        version: Option<u64>,
    },
    Skip,
    Retry,
    Fail(ProcessorFailure),
}

/// A bulk request's answer.
enum Reply {
    Items(Option<Vec<super::bulk::ItemResult>>),
    Status(u16, String),
}

impl ElasticsearchProcessor {
    /// A processor for `config`, with the transform it names among the built-in ones.
    /// Connects to nothing yet.
    pub fn new(config: ElasticsearchConfig) -> Result<Self> {
        Self::with_transforms(config, &Transforms::builtin())
    }

    /// A processor for `config`, with the transform it names among `transforms`.
    pub fn with_transforms(config: ElasticsearchConfig, transforms: &Transforms) -> Result<Self> {
        config.validate()?;
        let transform = if config.transform == "identity" {
            None
        } else {
            Some(transforms.get(&config.transform).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "elasticsearch processor for index {:?}: unknown transform {:?} (known: {})",
                    config.index,
                    config.transform,
                    transforms.names().join(", ")
                ))
            })?)
        };
        let urls = config
            .urls
            .iter()
            .map(|u| Url::parse(u))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid(format!("invalid elasticsearch url: {e}")))?;
        let builder = match urls.as_slice() {
            [one] => TransportBuilder::new(SingleNodeConnectionPool::new(one.clone())),
            _ => TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None)),
        };
        let transport: Transport = builder
            .timeout(config.request_timeout())
            .disable_proxy()
            .build()
            .map_err(|e| {
                ConfigError::Invalid(format!(
                    "cannot build the elasticsearch client for index {:?}: {e}",
                    config.index
                ))
            })?;
        let head = transform.is_none().then(|| head_projection(&config));
        Ok(Self {
            head,
            sender: Sender {
                name: format!("ElasticsearchProcessor({})", config.index),
                targets: Arc::new(std::sync::RwLock::new(Arc::new(Targets {
                    primary: config.index.clone(),
                    also: Vec::new(),
                }))),
                policy: Policy::new(&config),
                client: Elasticsearch::new(transport),
                batch_limit: Arc::new(std::sync::atomic::AtomicUsize::new(
                    config.max_actions_per_request.max(1),
                )),
                rate: RateCeiling::new(config.max_docs_per_second).map(Arc::new),
                config: Arc::new(config),
            },
            transform,
            docstores: DocumentStores::new(),
            held: Held::default(),
            watch: None,
            create_only: false,
        })
    }

    /// Replaces the transform (for example with a wrapped Python callable).
    #[must_use]
    pub fn with_transform(mut self, transform: DocTransform) -> Self {
        self.transform = Some(transform);
        self.head = None;
        self
    }

    /// Stores to fetch a missing document again in the serial retry (CommCare fetches there).
    #[must_use]
    pub fn with_document_stores(mut self, docstores: DocumentStores) -> Self {
        self.docstores = docstores;
        self
    }

    /// A stop request (the pillow's stop token) ends a wait for the node (an outage's backoff,
    /// a retry's delay, and a request sent during an outage) with
    /// [`Error::ShutdownRequested`]. Without it, waits end only with their budget.
    #[must_use]
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.sender.policy.stop = stop;
        self
    }

    /// Follows the rebuilds of the index by `pillowtop reindex` (see [`crate::store::reindex`]):
    /// about once a second ([`REINDEX_POLL`]) and before the index is created, the processor
    /// reads the newest reindex of processor `name()` of `pillow` and writes where it says
    /// (both versions from its dual-write step until the old one is dropped), acknowledging
    /// each step it writes by.
    #[must_use]
    pub fn with_reindex_watch(mut self, pg: Arc<Pg>, pillow: impl Into<String>) -> Self {
        self.watch = Some(ReindexWatch::new(pg, pillow));
        self
    }

    /// Writes documents only when they are absent (`create` actions; a 409 is done), as a
    /// reindex's backfill does: a copy never overwrites a newer write of the live pillow.
    #[must_use]
    pub fn with_create_only(mut self) -> Self {
        self.create_only = true;
        self
    }

    /// The indices written now.
    pub fn targets(&self) -> Arc<Targets> {
        self.sender.targets()
    }

    /// Reads the newest reindex of this processor (at most every [`REINDEX_POLL`] unless
    /// `force`), writes where it says from now on and acknowledges its step.
    async fn follow_reindex(&mut self, force: bool) -> Result<()> {
        let Some(w) = &mut self.watch else {
            return Ok(());
        };
        let Some(run) = w.read(&self.sender.name, force).await? else {
            return Ok(());
        };
        let targets = run.as_ref().map_or_else(
            || Targets {
                primary: self.sender.config.index.clone(),
                also: Vec::new(),
            },
            crate::store::reindex::ReindexRun::targets,
        );
        if *self.sender.targets() != targets {
            tracing::info!(processor = %self.sender.name, pillow = %w.pillow(),
                indices = ?targets.all().collect::<Vec<_>>(), step = ?run.as_ref().map(|r| r.step.as_str()),
                "the index is being rebuilt: writing to these indices from now on");
            *self
                .sender
                .targets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(targets);
        }
        if let Some(run) = &run {
            w.acknowledge(&self.sender.name, run).await?;
        }
        Ok(())
    }

    /// Overrides the name used in logs, metrics and error messages.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.sender.name = name.into();
        self
    }

    pub fn config(&self) -> &ElasticsearchConfig {
        &self.sender.config
    }

    pub fn client(&self) -> &Elasticsearch {
        &self.sender.client
    }

    fn plan<'a>(&self, change: &'a Change) -> Plan<'a> {
        if let (Some(head), Document::Embedded(e), false) =
            (&self.head, &change.document, change.deleted)
        {
            if let Some(plan) = self.plan_embedded(change, e.raw(), &e.project(head)) {
                return plan;
            }
        }
        let doc = change.document();
        if change.deleted {
            return Plan::Delete {
                id: doc
                    .and_then(|d| self.id_from_field(d))
                    .unwrap_or(Cow::Borrowed(&change.id)),
                version: doc.and_then(|d| self.version(d).ok().flatten()),
            };
        }
        let Some(doc) = doc else {
            return Plan::Retry;
        };
        if doc
            .get("doc_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("-Deleted"))
        {
            return Plan::Delete {
                id: self.id_from_field(doc).unwrap_or(Cow::Borrowed(&change.id)),
                version: self.version(doc).ok().flatten(),
            };
        }
        let source = match &self.transform {
            None => Cow::Borrowed(doc),
            Some(t) => match t(doc) {
                Ok(Some(v)) => Cow::Owned(v),
                Ok(None) => return Plan::Skip,
                Err(m) => {
                    return Plan::Fail(self.sender.failure(
                        TRANSFORM_ERROR_TYPE,
                        &change.id,
                        &format!("transform {:?} failed: {m}", self.sender.config.transform),
                    ))
                }
            },
        };
        let id = match &self.sender.config.id_field {
            None => Cow::Borrowed(change.id.as_str()),
            Some(f) => match self.id_from_field(&source) {
                Some(id) => Cow::Owned(id.into_owned()),
                None => {
                    return Plan::Fail(self.sender.failure(
                        TRANSFORM_ERROR_TYPE,
                        &change.id,
                        &format!("id field {f:?} is missing or not a string or a number"),
                    ))
                }
            },
        };
        let version = match self.version(&source) {
            Ok(v) => v,
            Err(m) => return Plan::Fail(self.sender.failure(TRANSFORM_ERROR_TYPE, &change.id, &m)),
        };
        Plan::Index {
            id,
            version,
            source: Source::Value(source),
        }
    }

    /// The plan of an embedded document indexed as it is (identity transform), from its `head`
    /// (the fields a plan reads); `None` when the general path must decide (not an object, a
    /// deletion by `doc_type`, a missing id or a bad version: it says why).
    fn plan_embedded<'a>(
        &self,
        change: &'a Change,
        raw: &'a str,
        head: &Value,
    ) -> Option<Plan<'a>> {
        if !head.is_object()
            || head
                .get("doc_type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("-Deleted"))
        {
            return None;
        }
        let id = match &self.sender.config.id_field {
            None => Cow::Borrowed(change.id.as_str()),
            Some(_) => Cow::Owned(self.id_from_field(head)?.into_owned()),
        };
        let version = self.version(head).ok()?;
        Some(Plan::Index {
            id,
            version,
            source: Source::Raw(raw),
        })
    }

    fn id_from_field<'a>(&self, doc: &'a Value) -> Option<Cow<'a, str>> {
        match lookup(doc, self.sender.config.id_field.as_deref()?)? {
            Value::String(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }

    /// The external version, when configured: `Ok(None)` without versioning.
    fn version(&self, doc: &Value) -> std::result::Result<Option<u64>, String> {
        let Some(field) = self.sender.config.external_version_field.as_deref() else {
            return Ok(None);
        };
        match lookup(doc, field) {
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(Value::String(s)) if s.parse::<u64>().is_ok() => Ok(s.parse().ok()),
            other => Err(format!(
                "external version field {field:?} must hold a non-negative integer, found {}",
                other.map_or_else(|| "nothing".to_owned(), ToString::to_string)
            )),
        }
    }

    /// How many groups a chunk of `changes` changes is split into (see `max_in_flight`).
    fn groups(&self, changes: usize) -> usize {
        (changes / MIN_ACTIONS_PER_GROUP).clamp(1, self.sender.config.max_in_flight.max(1))
    }

    /// Writes one chunk before returning (gathering off, and the serial path).
    async fn write_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<std::result::Result<ChunkOutcome, ProcessorFailure>> {
        let started = Instant::now();
        let mut outcome = ChunkOutcome::default();
        let bytes: usize = changes.iter().map(|c| c.size + 64).sum();
        let groups = self.groups(changes.len());
        let mut bodies: Vec<BulkBody> = (0..groups)
            .map(|_| {
                let mut b = BulkBody::with_capacity(bytes / groups, changes.len() / groups + 1);
                b.set_create_only(self.create_only);
                b
            })
            .collect();
        for (i, change) in changes.iter().enumerate() {
            match self.plan(change) {
                Plan::Index {
                    id,
                    version,
                    source,
                } => {
                    let body = &mut bodies[group_of(&id, groups)];
                    if let Err(e) = body.push_source(i, &id, version, &source) {
                        outcome.errors.push((
                            i,
                            self.sender.failure(
                                TRANSFORM_ERROR_TYPE,
                                &id,
                                &format!("cannot encode the document: {e}"),
                            ),
                        ));
                    }
                }
                Plan::Delete { id, version } => {
                    bodies[group_of(&id, groups)].push_delete(i, &id, version);
                }
                Plan::Skip => {}
                Plan::Retry => outcome.retry.push(i),
                Plan::Fail(f) => outcome.errors.push((i, f)),
            }
        }
        let this = &*self;
        let sent = futures::future::join_all(
            bodies
                .iter()
                .filter(|b| !b.is_empty())
                .map(|b| this.sender.send(b)),
        )
        .await;
        // Every group has been sent to its end before the chunk's answer: a whole-request
        // rejection of one group fails the chunk, whatever the others did (they are written
        // again when the chunk's changes are retried, which is harmless for index and delete).
        let mut whole = None;
        for r in sent {
            match r? {
                Ok(failed) => outcome.errors.extend(failed),
                Err(w) => whole = whole.or(Some(w)),
            }
        }
        if let Some(w) = whole {
            return Ok(Err(w));
        }
        outcome.errors.sort_by_key(|(i, _)| *i);
        let actions: usize = bodies.iter().map(BulkBody::len).sum();
        let bytes: usize = bodies.iter().map(|b| b.bytes().len()).sum();
        tracing::debug!(processor = %self.sender.name, changes = changes.len(), actions, bytes, groups,
            failed = outcome.errors.len(), retry = outcome.retry.len(), elapsed_ms = started.elapsed().as_millis(), "bulk chunk done");
        Ok(Ok(outcome))
    }

    /// Plans and encodes a chunk's actions into the held body (gathering on); nothing is sent.
    fn hold_chunk(&mut self, changes: &[Change]) -> ChunkOutcome {
        let mut outcome = ChunkOutcome::default();
        let mut held = std::mem::take(&mut self.held);
        held.body.set_create_only(self.create_only);
        for (i, change) in changes.iter().enumerate() {
            let at = held.changes.len();
            let pushed = match self.plan(change) {
                Plan::Index {
                    id,
                    version,
                    source,
                } => match held.body.push_source(at, &id, version, &source) {
                    Ok(()) => true,
                    Err(e) => {
                        outcome.errors.push((
                            i,
                            self.sender.failure(
                                TRANSFORM_ERROR_TYPE,
                                &id,
                                &format!("cannot encode the document: {e}"),
                            ),
                        ));
                        false
                    }
                },
                Plan::Delete { id, version } => {
                    held.body.push_delete(at, &id, version);
                    true
                }
                Plan::Skip => false,
                Plan::Retry => {
                    outcome.retry.push(i);
                    false
                }
                Plan::Fail(f) => {
                    outcome.errors.push((i, f));
                    false
                }
            };
            if pushed {
                held.changes.push(change.without_document());
                held.since.get_or_insert_with(Instant::now);
            }
        }
        self.held = held;
        outcome
    }

    /// Takes the held actions for a write (and the changes they came from).
    fn take_held(&mut self) -> (BulkBody, Vec<Change>, usize) {
        let body = std::mem::take(&mut self.held.body);
        let changes = std::mem::take(&mut self.held.changes);
        self.held.since = None;
        let groups = self.groups(body.len());
        (body, changes, groups)
    }

    /// Writes every held action now (by concurrent groups), after the wave in flight; their
    /// failures are kept for the next `settle`. The serial path's first step.
    async fn write_held(&mut self) -> Result<()> {
        self.finish_wave().await?;
        if self.held.body.is_empty() {
            return Ok(());
        }
        let (body, changes, groups) = self.take_held();
        let failures = write_body(&self.sender, body, changes, groups).await?;
        self.held.failures.extend(failures);
        Ok(())
    }

    /// Starts writing every held action in the background (a *wave*, after the previous one
    /// has finished: a document's writes never overtake each other), covering the chunks up to
    /// `through`.
    async fn start_wave(&mut self, through: u64) -> Result<()> {
        self.finish_wave().await?;
        let (body, changes, groups) = self.take_held();
        let sender = self.sender.clone();
        self.held.wave = Some(Wave {
            through,
            task: tokio::spawn(async move { write_body(&sender, body, changes, groups).await }),
        });
        Ok(())
    }

    /// Waits for the wave in flight, if any: its failures are kept for the next `settle`, a
    /// fatal error is returned.
    async fn finish_wave(&mut self) -> Result<()> {
        let Some(wave) = self.held.wave.take() else {
            return Ok(());
        };
        let failures = wave.task.await.map_err(|e| {
            Error::Process(ProcessError::Other(format!(
                "the background bulk writes to index {} ended without an answer: {e}",
                self.sender.config.index
            )))
        })??;
        self.held.failures.extend(failures);
        self.held.written_through = self.held.written_through.max(wave.through);
        Ok(())
    }
}

/// Writes a body of held actions by concurrent groups; returns the changes that failed for good.
async fn write_body(
    sender: &Sender,
    body: BulkBody,
    changes: Vec<Change>,
    groups: usize,
) -> Result<Vec<(Change, ProcessorFailure)>> {
    let started = Instant::now();
    let mut changes: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
    let bodies = if groups > 1 {
        body.split(groups, |item| group_of(&item.doc_id, groups))
    } else {
        vec![body]
    };
    let sent = futures::future::join_all(bodies.iter().map(|b| sender.send(b))).await;
    let mut failures = Vec::new();
    for (r, b) in sent.into_iter().zip(&bodies) {
        match r? {
            Ok(failed) => failures.extend(failed),
            Err(whole) => {
                failures.extend(b.items().iter().map(|it| (it.change, whole.clone())));
            }
        }
    }
    let failed = failures.len();
    let mut out = Vec::with_capacity(failed);
    for (i, f) in failures {
        if let Some(c) = changes.get_mut(i).and_then(Option::take) {
            out.push((c, f));
        }
    }
    tracing::debug!(processor = %sender.name, actions = changes.len(), groups, failed,
        elapsed_ms = started.elapsed().as_millis(), "bulk of held chunks done");
    Ok(out)
}

impl Sender {
    /// A failure naming the index written now (the configured one, or the one a reindex
    /// moved the processor to).
    fn failure(&self, error_type: &str, doc_id: &str, reason: &str) -> ProcessorFailure {
        Self::failure_in(&self.targets().primary, error_type, doc_id, reason)
    }

    fn failure_in(index: &str, error_type: &str, doc_id: &str, reason: &str) -> ProcessorFailure {
        ProcessorFailure::new(
            error_type,
            format!("elasticsearch index {index} document {doc_id}: {reason}"),
        )
    }

    async fn bulk_request(
        &self,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<Reply, elasticsearch::Error> {
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let resp = self
            .client
            .transport()
            .send(
                Method::Post,
                path,
                headers,
                Some(&[("filter_path", BULK_FILTER_PATH)]),
                Some(body),
                None,
            )
            .await?;
        let status = resp.status_code().as_u16();
        let bytes = resp.bytes().await?;
        if !(200..300).contains(&status) {
            return Ok(Reply::Status(status, excerpt(&bytes)));
        }
        match parse_response(&bytes) {
            Ok(items) => Ok(Reply::Items(items)),
            Err(e) => Ok(Reply::Status(
                status,
                format!("unreadable bulk response ({e}): {}", excerpt(&bytes)),
            )),
        }
    }

    /// Sends every action of `body`, by batches; returns the changes that failed for good. The
    /// inner `Err` fails the whole chunk (a non-retriable status for a whole request).
    async fn send(
        &self,
        body: &BulkBody,
    ) -> Result<std::result::Result<Vec<(usize, ProcessorFailure)>, ProcessorFailure>> {
        let targets = self.targets();
        if targets.also.is_empty() {
            return self.send_to(&targets.primary, body).await;
        }
        // During a reindex: every version at once; a change failing in several is one failure
        // (the first index's), a whole-request failure of any fails the request.
        let sent =
            futures::future::join_all(targets.all().map(|index| self.send_to(index, body))).await;
        let mut failures: Vec<(usize, ProcessorFailure)> = Vec::new();
        for r in sent {
            match r? {
                Ok(f) => failures.extend(f),
                Err(whole) => return Ok(Err(whole)),
            }
        }
        failures.sort_by_key(|(i, _)| *i);
        failures.dedup_by_key(|(i, _)| *i);
        Ok(Ok(failures))
    }

    /// The indices written now.
    fn targets(&self) -> Arc<Targets> {
        Arc::clone(
            &self
                .targets
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Sends every action of `body` to `index`, by batches (see [`Self::send`]).
    async fn send_to(
        &self,
        index: &str,
        body: &BulkBody,
    ) -> Result<std::result::Result<Vec<(usize, ProcessorFailure)>, ProcessorFailure>> {
        let mut failures = Vec::new();
        let limit = self
            .batch_limit
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        let path = format!("/{index}/_bulk");
        for batch in body.batches(limit, self.config.max_bytes_per_request) {
            if let Err(whole) = self
                .send_batch(index, &path, body, batch, &mut failures)
                .await?
            {
                return Ok(Err(whole));
            }
        }
        Ok(Ok(failures))
    }

    /// Adapts the actions per request to the node's answer: halved on a 429 (the node's queue
    /// is full), grown back by a quarter after an answer without one.
    fn adapt(&self, throttled: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.config.max_actions_per_request.max(1);
        let now = self.batch_limit.load(Relaxed);
        let next = next_batch_limit(now, max, throttled);
        if next != now {
            self.batch_limit.store(next, Relaxed);
            if throttled {
                tracing::info!(processor = %self.name, index = %self.config.index, from = now, to = next,
                    "elasticsearch answered 429 (too many requests): fewer actions per bulk request");
            }
        }
    }

    fn fatal_context(index: &str, actions: usize, attempt: u32) -> String {
        format!("sending {actions} bulk actions to index {index} (after {attempt} retries)")
    }

    /// Sends one batch until every item is done or failed, re-sending only the items to retry.
    async fn send_batch(
        &self,
        index: &str,
        path: &str,
        body: &BulkBody,
        batch: std::ops::Range<usize>,
        failures: &mut Vec<(usize, ProcessorFailure)>,
    ) -> Result<std::result::Result<(), ProcessorFailure>> {
        let mut pending: Vec<usize> = batch.clone().collect();
        let mut wait = self.policy.wait(
            &self.name,
            format!("sending {} bulk actions to index {index}", batch.len()),
        );
        loop {
            let gathered;
            let bytes = if pending.len() == batch.len() {
                body.slice(batch.clone())
            } else {
                gathered = body.gather(&pending);
                &gathered
            };
            if let Some(rate) = &self.rate {
                rate.wait(pending.len()).await;
            }
            let reply = match wait.request(self.bulk_request(path, bytes)).await? {
                Ok(r) => r,
                Err(e) if classify_transport(&e) == Failure::Outage => {
                    wait.outage(&self.policy.describe(&e)).await?;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Elasticsearch(ElasticsearchError::Transport {
                        context: Self::fatal_context(index, pending.len(), wait.retries()),
                        source: e,
                    }))
                }
            };
            let results = match reply {
                Reply::Items(None) => {
                    wait.progressed();
                    self.adapt(false);
                    return Ok(Ok(())); // no item failed
                }
                Reply::Items(Some(r)) if r.len() == pending.len() => r,
                Reply::Items(Some(r)) => {
                    return Ok(Err(ProcessorFailure::new(
                        ERROR_TYPE,
                        format!(
                        "elasticsearch index {index}: bulk response has {} items for {} actions",
                        r.len(),
                        pending.len()
                    ),
                    )))
                }
                Reply::Status(s, text) => {
                    self.adapt(s == 429);
                    match self
                        .on_status(index, &mut wait, pending.len(), s, text)
                        .await?
                    {
                        None => continue,
                        Some(whole) => return Ok(Err(whole)),
                    }
                }
            };
            self.adapt(results.iter().any(|r| r.status == 429));
            let retry = Self::classify(index, body, &pending, &results, failures);
            if retry.len() < pending.len() {
                wait.progressed();
            }
            if retry.is_empty() {
                return Ok(Ok(()));
            }
            let example = retry
                .first()
                .map(|(_, _, r)| r.as_str())
                .unwrap_or_default();
            let reason = format!("{} items failed, e.g. {example}", retry.len());
            if retry.iter().any(|(_, f, _)| *f == Failure::Outage) {
                wait.outage(&reason).await?;
            } else if !wait.transient(&reason).await? {
                for (i, _, reason) in retry {
                    let item = &body.items()[i];
                    let reason = format!(
                        "{} still failing after {} retries: {reason}",
                        item.op.as_str(),
                        wait.retries()
                    );
                    failures.push((
                        item.change,
                        Self::failure_in(index, ERROR_TYPE, &item.doc_id, &reason),
                    ));
                }
                return Ok(Ok(()));
            }
            pending = retry.into_iter().map(|(i, _, _)| i).collect();
        }
    }

    /// A whole bulk request answered `status`: `None` after waiting to send it again (an
    /// outage, a transient failure within `max_retries`), the chunk's failure for a rejection,
    /// `Err` for a transient failure beyond the retries or the end of a wait.
    async fn on_status(
        &self,
        index: &str,
        wait: &mut Wait<'_>,
        actions: usize,
        status: u16,
        text: String,
    ) -> Result<Option<ProcessorFailure>> {
        let reason = format!("status {status}: {text}");
        match classify_status(status, &text) {
            Failure::Outage => wait.outage(&reason).await.map(|()| None),
            Failure::Transient if wait.transient(&reason).await? => Ok(None),
            Failure::Transient => Err(Error::Elasticsearch(ElasticsearchError::Status {
                context: Self::fatal_context(index, actions, wait.retries()),
                status,
                body: text,
            })),
            Failure::Rejected => {
                wait.progressed();
                Ok(Some(ProcessorFailure::new(
                    ERROR_TYPE,
                    format!(
                        "elasticsearch index {index}: bulk request of {actions} actions failed with {reason}"
                    ),
                )))
            }
        }
    }

    /// Sorts the items of one answer: failures are pushed to `failures`; the items to re-send
    /// are returned with their kinds and reasons.
    fn classify(
        index: &str,
        body: &BulkBody,
        pending: &[usize],
        results: &[super::bulk::ItemResult],
        failures: &mut Vec<(usize, ProcessorFailure)>,
    ) -> Vec<(usize, Failure, String)> {
        let mut retry = Vec::new();
        for (&i, result) in pending.iter().zip(results) {
            let item = &body.items()[i];
            match classify_item(item.op, result) {
                ItemOutcome::Done => {}
                ItemOutcome::Retry(kind, reason) => retry.push((i, kind, reason)),
                ItemOutcome::Failed(reason) => failures.push((
                    item.change,
                    Self::failure_in(
                        index,
                        ERROR_TYPE,
                        &item.doc_id,
                        &format!("{} failed: {reason}", item.op.as_str()),
                    ),
                )),
            }
        }
        retry
    }

    /// Runs `f` until it answers with a 2xx or a rejection (returned as they are), waiting out
    /// outages and retrying transient failures like a bulk request.
    async fn request_with_retries<F, Fut>(&self, what: &str, mut f: F) -> Result<(u16, String)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<(u16, String), elasticsearch::Error>>,
    {
        let mut wait = self.policy.wait(&self.name, what.to_owned());
        loop {
            match wait.request(f()).await? {
                Ok((s, body)) => {
                    let failure = (!(200..300).contains(&s)).then(|| classify_status(s, &body));
                    let reason = || format!("status {s}: {body}");
                    match failure {
                        Some(Failure::Outage) => wait.outage(&reason()).await?,
                        Some(Failure::Transient) if wait.transient(&reason()).await? => {}
                        Some(Failure::Transient) => {
                            return Err(Error::Elasticsearch(ElasticsearchError::Status {
                                context: format!("{what} (after {} retries)", wait.retries()),
                                status: s,
                                body,
                            }))
                        }
                        None | Some(Failure::Rejected) => {
                            wait.progressed();
                            return Ok((s, body));
                        }
                    }
                }
                Err(e) if classify_transport(&e) == Failure::Outage => {
                    wait.outage(&self.policy.describe(&e)).await?;
                }
                Err(e) => {
                    return Err(Error::Elasticsearch(ElasticsearchError::Transport {
                        context: wait.what().to_owned(),
                        source: e,
                    }))
                }
            }
        }
    }
}

/// The fields a plan reads from a document: `doc_type`, and the id and version fields when set.
fn head_projection(config: &ElasticsearchConfig) -> Projection {
    Projection::new(
        std::iter::once("doc_type")
            .chain(config.id_field.as_deref())
            .chain(config.external_version_field.as_deref()),
    )
}

/// The smallest batch a 429 halves the actions per request to.
const MIN_BATCH_LIMIT: usize = 16;

/// The actions per request after an answer: halved on a 429 (not below [`MIN_BATCH_LIMIT`] or
/// `max`), otherwise grown by a quarter up to `max`.
fn next_batch_limit(now: usize, max: usize, throttled: bool) -> usize {
    if throttled {
        (now / 2).max(MIN_BATCH_LIMIT.min(max))
    } else {
        (now + now / 4 + 1).min(max)
    }
}

/// The group (of `groups`) whose requests carry the actions of document `id`: one document's
/// actions are always in one group, in chunk order.
fn group_of(id: &str, groups: usize) -> usize {
    if groups <= 1 {
        return 0;
    }
    let h = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        h.write(id.as_bytes());
        h.finish()
    };
    // The high bits: FxHash mixes them best.
    usize::try_from((h >> 32) % groups as u64).unwrap_or(0)
}

fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]);
    s.into_owned()
}

#[async_trait]
impl Processor for ElasticsearchProcessor {
    fn name(&self) -> &str {
        &self.sender.name
    }

    fn supports_batch_processing(&self) -> bool {
        true
    }

    fn needs_documents(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> Result<std::result::Result<(), ProcessorFailure>> {
        self.follow_reindex(false).await?;
        if !change.deleted && change.document().is_none() && !self.docstores.is_empty() {
            change.document = Document::Unfetched;
            self.docstores
                .fetch_missing(std::slice::from_mut(change))
                .await?;
        }
        // Held actions go first, so that a document's writes stay in order.
        self.write_held().await?;
        let outcome = self.write_chunk(std::slice::from_mut(change)).await?;
        Ok(match outcome {
            Err(f) => Err(f),
            Ok(o) => match o.errors.into_iter().next() {
                Some((_, f)) => Err(f),
                None if !o.retry.is_empty() => Err(ProcessorFailure::document_missing(&change.id)),
                None => Ok(()),
            },
        })
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<std::result::Result<ChunkOutcome, ProcessorFailure>> {
        self.follow_reindex(false).await?;
        if self.sender.config.flush_max_changes > 0 {
            return Ok(Ok(self.hold_chunk(changes)));
        }
        self.write_chunk(changes).await
    }

    /// Gathering: the held actions go out in the background once a bound is reached (one wave
    /// at a time, up to `max_in_flight` requests each), while the pillow reads on; the answer is
    /// the newest chunk whose actions are all written.
    async fn settle(&mut self, seq: u64, flush: bool) -> Result<Settled> {
        self.follow_reindex(false).await?;
        if self
            .held
            .wave
            .as_ref()
            .is_some_and(|w| w.task.is_finished())
        {
            self.finish_wave().await?;
        }
        let held = &self.held;
        let due = flush
            || held.body.len() >= self.sender.config.flush_max_changes
            || held.body.bytes().len() >= self.sender.config.flush_max_bytes
            || held.since.is_some_and(|t| {
                t.elapsed() >= Duration::from_millis(self.sender.config.flush_max_delay_ms)
            });
        if held.body.is_empty() {
            // Nothing held: the chunks up to `seq` are written once the wave in flight is.
            match &mut self.held.wave {
                Some(w) => w.through = w.through.max(seq),
                None => self.held.written_through = self.held.written_through.max(seq),
            }
        } else if due {
            self.start_wave(seq).await?;
        }
        if flush {
            self.finish_wave().await?;
        }
        Ok(Settled {
            written_through: self.held.written_through.min(seq),
            failures: std::mem::take(&mut self.held.failures),
        })
    }

    /// An idle pillow acknowledges a reindex's steps at its idle tick.
    async fn idle(&mut self) -> Result<()> {
        self.follow_reindex(false).await
    }

    /// Creates the index with its settings, mappings and alias when it does not exist. One
    /// request; an existing index (`resource_already_exists_exception`) is left as it is.
    async fn bootstrap_if_needed(&mut self) -> Result<()> {
        self.follow_reindex(true).await?;
        if self.sender.targets().primary != self.sender.config.index {
            // A reindex has moved the processor to its new index, which the reindex made.
            return Ok(());
        }
        let mut body = serde_json::Map::new();
        if let Some(s) = &self.sender.config.settings {
            body.insert("settings".into(), s.clone());
        }
        if let Some(m) = &self.sender.config.mappings {
            body.insert("mappings".into(), m.clone());
        }
        if let Some(a) = &self.sender.config.alias {
            body.insert("aliases".into(), serde_json::json!({ a: {} }));
        }
        let body = Value::Object(body);
        let what = format!("creating index {}", self.sender.config.index);
        let (status, text) = self
            .sender
            .request_with_retries(&what, || async {
                let r = self
                    .sender
                    .client
                    .indices()
                    .create(IndicesCreateParts::Index(&self.sender.config.index))
                    .body(body.clone())
                    .send()
                    .await?;
                let status = r.status_code().as_u16();
                Ok((status, r.text().await?))
            })
            .await?;
        if (200..300).contains(&status) {
            tracing::info!(processor = %self.sender.name, index = %self.sender.config.index, alias = ?self.sender.config.alias, "created the elasticsearch index");
            return Ok(());
        }
        if status == 400 && text.contains("resource_already_exists_exception") {
            return Ok(());
        }
        Err(Error::Elasticsearch(ElasticsearchError::Status {
            context: what,
            status,
            body: text,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn processor(config: ElasticsearchConfig) -> ElasticsearchProcessor {
        ElasticsearchProcessor::new(config).expect("processor")
    }

    fn change(id: &str, deleted: bool, doc: Option<Value>) -> Change {
        let mut meta = crate::change::ChangeMeta::new(id, "sql", "form-sql");
        meta.is_deletion = deleted;
        if let Some(d) = doc {
            meta.extra.insert("document".into(), d);
        }
        Change::from_message("t", 0, 0, meta.to_json().as_bytes()).expect("change")
    }

    #[test]
    fn the_rate_ceiling_spaces_requests_by_their_actions() {
        let rate = RateCeiling::new(1000).expect("a ceiling");
        let t0 = Instant::now() + Duration::from_secs(10);
        *rate.next_free.lock().expect("lock") = t0;
        assert_eq!(rate.reserve(500, t0), t0, "the first goes at once");
        assert_eq!(rate.reserve(500, t0), t0 + Duration::from_millis(500));
        assert_eq!(rate.reserve(100, t0), t0 + Duration::from_millis(1000));
        // after a long idle spell, one second's credit: the second 1000 start at once too
        // (their own time is reserved after them), the next wait
        let later = t0 + Duration::from_secs(60);
        assert_eq!(rate.reserve(1000, later), later);
        assert_eq!(rate.reserve(1000, later), later);
        assert_eq!(rate.reserve(10, later), later + Duration::from_secs(1));
        assert!(RateCeiling::new(0).is_none(), "0 means no ceiling");
    }

    #[test]
    fn a_429_halves_the_batch_and_answers_without_one_grow_it_back() {
        assert_eq!(next_batch_limit(1000, 1000, true), 500);
        assert_eq!(next_batch_limit(20, 1000, true), 16, "a floor");
        assert_eq!(next_batch_limit(10, 10, true), 10, "never above max");
        assert_eq!(next_batch_limit(500, 1000, false), 626);
        assert_eq!(next_batch_limit(900, 1000, false), 1000);
        let mut n = 16;
        let mut steps = 0;
        while n < 1000 {
            n = next_batch_limit(n, 1000, false);
            steps += 1;
        }
        assert!(steps <= 20, "back to the maximum within {steps} answers");
    }

    #[test]
    fn chunks_split_into_groups_by_document_id() {
        let mut config = ElasticsearchConfig::new("http://127.0.0.1:1", "forms");
        config.max_in_flight = 4;
        let p = processor(config);
        assert_eq!(
            [10, 199, 200, 399, 1000, 100_000].map(|n| p.groups(n)),
            [1, 1, 2, 3, 4, 4]
        );
        assert_eq!(group_of("abc", 1), 0);
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            let id = format!("{n:08x}-form");
            let g = group_of(&id, 4);
            assert_eq!(g, group_of(&id, 4), "the same document, the same group");
            counts[g] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "balanced: {counts:?}");
    }

    #[test]
    fn an_embedded_document_is_indexed_from_its_text_with_the_identity_transform() {
        let mut config = ElasticsearchConfig::new("http://127.0.0.1:1", "forms");
        config.external_version_field = Some("meta.version".into());
        let p = processor(config);
        let c = change(
            "a",
            false,
            Some(json!({"_id": "a", "meta": {"version": 7}, "n": 1})),
        );
        match p.plan(&c) {
            Plan::Index {
                id,
                version,
                source: Source::Raw(raw),
            } => {
                assert_eq!((id.as_ref(), version), ("a", Some(7)));
                assert!(raw.contains("\"n\""), "{raw}");
            }
            other => panic!("expected a raw index plan, got {}", describe(&other)),
        }
        assert!(
            matches!(&c.document, Document::Embedded(e) if !e.is_parsed()),
            "the document was not parsed"
        );
        // A known document, or a deletion by doc_type, takes the general path.
        let mut known = c.clone();
        known.set_document(Some(json!({"meta": {"version": 8}})));
        assert!(matches!(
            p.plan(&known),
            Plan::Index {
                source: Source::Value(_),
                version: Some(8),
                ..
            }
        ));
        let deleted = change(
            "a",
            false,
            Some(json!({"doc_type": "XFormInstance-Deleted"})),
        );
        assert!(matches!(p.plan(&deleted), Plan::Delete { .. }));
    }

    fn describe(p: &Plan<'_>) -> String {
        match p {
            Plan::Index { id, source, .. } => format!("index {id} {source}"),
            Plan::Delete { id, .. } => format!("delete {id}"),
            Plan::Skip => "skip".into(),
            Plan::Retry => "retry".into(),
            Plan::Fail(f) => format!("fail {}", f.message),
        }
    }

    #[test]
    fn plans_follow_commcare() {
        let mut config = ElasticsearchConfig::new("http://127.0.0.1:1", "forms");
        config.external_version_field = Some("meta.version".into());
        let p = processor(config);
        let plan = |c: &Change| match p.plan(c) {
            Plan::Index { id, version, .. } => format!("index {id} {version:?}"),
            Plan::Delete { id, version } => format!("delete {id} {version:?}"),
            Plan::Skip => "skip".into(),
            Plan::Retry => "retry".into(),
            Plan::Fail(f) => format!("fail {}", f.message),
        };
        assert_eq!(plan(&change("a", true, None)), "delete a None");
        assert_eq!(plan(&change("a", false, None)), "retry");
        assert_eq!(
            plan(&change(
                "a",
                false,
                Some(json!({"doc_type": "XFormInstance-Deleted"}))
            )),
            "delete a None"
        );
        assert_eq!(
            plan(&change("a", false, Some(json!({"meta": {"version": 3}})))),
            "index a Some(3)"
        );
        assert_eq!(
            plan(&change("a", false, Some(json!({"meta": {"version": "4"}})))),
            "index a Some(4)"
        );
        assert_eq!(
            plan(&change("a", false, Some(json!({"x": 1})))),
            "fail elasticsearch index forms document a: external version field \"meta.version\" must hold a non-negative integer, found nothing"
        );
    }

    #[test]
    fn transforms_and_id_fields() {
        let mut config = ElasticsearchConfig::new("http://127.0.0.1:1", "forms");
        config.id_field = Some("case_id".into());
        config.transform = "upper".into();
        assert!(ElasticsearchProcessor::new(config.clone())
            .expect_err("unknown transform")
            .to_string()
            .contains("unknown transform \"upper\" (known: identity)"));
        let mut transforms = Transforms::builtin();
        transforms.register(
            "upper",
            Arc::new(|d: &Value| match d.get("skip") {
                Some(_) => Ok(None),
                None if d.get("bad").is_some() => Err("bad document".into()),
                None => Ok(Some(json!({"case_id": d["case_id"], "n": 1}))),
            }),
        );
        let p = ElasticsearchProcessor::with_transforms(config, &transforms).expect("processor");
        let plan = |c: &Change| match p.plan(c) {
            Plan::Index { id, source, .. } => format!("index {id} {source}"),
            Plan::Delete { id, .. } => format!("delete {id}"),
            Plan::Skip => "skip".into(),
            Plan::Retry => "retry".into(),
            Plan::Fail(f) => format!("fail {} {}", f.error_type, f.message),
        };
        assert_eq!(
            plan(&change("a", false, Some(json!({"case_id": "c1"})))),
            r#"index c1 {"case_id":"c1","n":1}"#
        );
        assert_eq!(plan(&change("a", false, Some(json!({"skip": 1})))), "skip");
        assert_eq!(
            plan(&change("a", false, Some(json!({"bad": 1})))),
            "fail pillowtop_rs.exceptions.ProcessorError elasticsearch index forms document a: transform \"upper\" failed: bad document"
        );
        assert!(plan(&change("a", false, Some(json!({"x": 1})))).starts_with("fail"));
        // Deletes use the id field when the document has it, else the change id.
        assert_eq!(
            plan(&change("a", true, Some(json!({"case_id": 7})))),
            "delete 7"
        );
        assert_eq!(plan(&change("a", true, None)), "delete a");
    }
}
