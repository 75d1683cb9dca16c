//! A backfill from the pillow's own topics (`pillowtop reindex start --from-kafka`), for
//! pillows whose changes embed their documents: the newest change of each document before the
//! run's Kafka position (the high-water marks recorded when every process wrote to both
//! indices) is written, with `create` actions, so the live pillow's writes of changes at or after
//! that position always win.
//!
//! Two passes over `[start, position)`: the first keeps, for each document id, the partition and
//! offset of its newest change and whether that change carries a document (a deletion, a
//! `-Deleted` document or a change without an embedded document is not copied); the second
//! writes exactly those changes, in segments, each partition's next offset kept in the run's
//! progress (a resumed run redoes the first pass, in memory, and continues the second).
//!
//! A document changed at or after the position is the live pillow's: it writes both versions of
//! every such change, so the copy leaves it alone. Before each segment's writes the topics are
//! read on from the position to their current ends, and every document changed there is taken
//! out of the segment; without that, a document deleted by the live pillow during the backfill
//! would come back from its older change. After the segment's writes the topics are read on
//! again: a document of the segment changed meanwhile (the pillow may have written it before
//! the older copy landed) gets its newest change written again, as a plain write, until none
//! was changed meanwhile (at most [`REAPPLY_ROUNDS`] rounds).
//!
//! Verification lists the new version's ids first and reads the topics after that, so every
//! live write it saw has its change among those read:
//! - every document the first pass kept that no change at or after the position touched must be
//!   in the new version; missing ones are written again from the topic;
//! - every document in the new version must be one of those or changed at or after the
//!   position; any other (its newest change before the position deletes it, or it has no change
//!   at all) is deleted from the new version.
//!
//! Both repairs are checked again once; what remains is a difference that stops the run with the
//! old version serving. (A deletion repair races with a change of that document published in
//! the milliseconds between the topics' read and the delete: the live pillow's write of it could
//! be deleted. Such a document has had no change since before the position.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{note_failures, refused, OnProgress, Progress, ReindexOptions, Reindexer};
use crate::change::{Change, ChangeMeta};
use crate::error::Result;
use crate::feed::kafka::scan::{scan, RawMessage, ScanEnd, ScanRequest};
use crate::partition::TopicPartition;
use crate::store::reindex::{self as store, ReindexRun};

/// Messages one segment of the second pass reads at most (then its writes go out and its
/// progress is recorded).
const SEGMENT: usize = 20_000;

/// How many times at most the documents changed while they were copied are written again.
const REAPPLY_ROUNDS: usize = 5;

/// The newest change of each document before the position: (partition index, offset, copied).
pub(super) struct Latest {
    partitions: Vec<TopicPartition>,
    by_id: HashMap<String, (u32, i64, bool)>,
    /// Changes without an embedded document (a pillow reading a document store).
    pub(super) without_document: u64,
}

impl Latest {
    fn is_newest(&self, id: &str, tp: &TopicPartition, offset: i64) -> bool {
        self.by_id.get(id).is_some_and(|&(p, o, copied)| {
            copied && o == offset && self.partitions.get(p as usize) == Some(tp)
        })
    }

    /// The ids whose newest change before the position is copied.
    pub(super) fn copied(&self) -> impl Iterator<Item = &str> {
        self.by_id
            .iter()
            .filter(|(_, (_, _, c))| *c)
            .map(|(id, _)| id.as_str())
    }
}

#[derive(Deserialize)]
struct DocType<'a> {
    #[serde(borrow, default)]
    doc_type: Option<std::borrow::Cow<'a, str>>,
}

/// The id of a change and whether its document would be copied.
fn read(m: &RawMessage) -> Option<(String, bool, bool)> {
    let (meta, doc) = ChangeMeta::parse_raw(m.body.as_deref()?).ok()?;
    let has_doc = doc.is_some();
    let copied = !meta.is_deletion
        && doc.is_some_and(|d| {
            serde_json::from_str::<DocType<'_>>(d.get())
                .ok()
                .and_then(|t| t.doc_type)
                .is_none_or(|t| !t.ends_with("-Deleted"))
        });
    Some((meta.document_id, copied, has_doc || meta.is_deletion))
}

/// The documents changed at or after the run's position, as far as the topics have been read.
pub(super) struct Touched {
    read_to: BTreeMap<TopicPartition, i64>,
    ids: HashSet<String>,
}

impl Touched {
    /// Nothing read yet: the topics are read from the position `end`.
    pub(super) fn from(end: &BTreeMap<TopicPartition, i64>) -> Self {
        Self {
            read_to: end.clone(),
            ids: HashSet::new(),
        }
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

impl Reindexer {
    /// Reads the topics from where `t` stopped to their current ends; returns the documents
    /// changed there.
    pub(super) async fn catch_up(&self, t: &mut Touched) -> Result<HashSet<String>> {
        let partitions: Vec<TopicPartition> = t.read_to.keys().cloned().collect();
        let now: BTreeMap<TopicPartition, i64> = self
            .kafka_info()?
            .watermarks_of_existing(&partitions)
            .await?
            .into_iter()
            .map(|(tp, w)| (tp, w.high))
            .collect();
        let req = self.request(&t.read_to, &now)?;
        let mut new = HashSet::new();
        if !req.start.is_empty() {
            let ended = scan(req, &self.stop, |m| {
                if let Some((id, _, _)) = read(&m) {
                    new.insert(id);
                }
                true
            })
            .await?;
            if ended == ScanEnd::Stopped {
                return Err(crate::Error::ShutdownRequested(
                    "the reindex stopped while reading the changes after its position; `pillowtop reindex resume` carries it on".into(),
                ));
            }
        }
        for (tp, h) in now {
            let e = t.read_to.entry(tp).or_insert(h);
            *e = (*e).max(h);
        }
        t.ids.extend(new.iter().cloned());
        Ok(new)
    }

    /// Writes the newest change at or after the position (up to where `t` has read) of each of
    /// `ids` into the new version, as the live pillow does (not `create`: it updates or deletes).
    async fn reapply(
        &self,
        run: &ReindexRun,
        t: &Touched,
        end: &BTreeMap<TopicPartition, i64>,
        ids: &HashSet<String>,
    ) -> Result<()> {
        let mut newest: HashMap<String, Change> = HashMap::new();
        let req = self.request(end, &t.read_to)?;
        if !req.start.is_empty() {
            scan(req, &self.stop, |m| {
                if let Some(body) = m.body.as_deref() {
                    if let Ok(c) = Change::from_message(&m.tp.topic, m.tp.partition, m.offset, body)
                    {
                        if ids.contains(&c.id) {
                            newest.insert(c.id.clone(), c);
                        }
                    }
                }
                true
            })
            .await?;
        }
        let mut changes: Vec<Change> = newest.into_values().collect();
        if changes.is_empty() {
            return Ok(());
        }
        let mut writer = self.version()?.writer(&run.new_index, false)?;
        let outcome = writer.process_changes_chunk(&mut changes).await?;
        let mut failures = Vec::new();
        note_failures(run, &changes, outcome, &mut failures);
        tracing::info!(run = run.id, index = %run.new_index, documents = changes.len(),
            "reindex from Kafka: documents changed while their older version was copied, written again from their newest change");
        Ok(())
    }

    fn kafka_info(&self) -> Result<&crate::ops::kafka::KafkaInfo> {
        self.kafka.as_ref().ok_or_else(|| {
            refused(
                self,
                "a backfill from Kafka needs the pillow's Kafka servers (its config's [kafka] bootstrap)",
            )
        })
    }

    /// The run's position (`end`, exclusive) and where the backfill starts.
    pub(super) async fn kafka_range(
        &self,
        run: &ReindexRun,
        o: &ReindexOptions,
    ) -> Result<(BTreeMap<TopicPartition, i64>, BTreeMap<TopicPartition, i64>)> {
        let k = self.kafka_info()?;
        let end: BTreeMap<TopicPartition, i64> = run
            .kafka_position
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, v)| {
                let (topic, p) = key.rsplit_once(',')?;
                Some((TopicPartition::new(topic, p.parse().ok()?), v.as_i64()?))
            })
            .collect();
        if end.is_empty() {
            return Err(refused(
                self,
                format!(
                    "run {}: no Kafka position was recorded (no partitions of topics {:?})",
                    run.id, self.topics
                ),
            ));
        }
        let partitions: Vec<TopicPartition> = end.keys().cloned().collect();
        let since = o.from_kafka.as_ref().and_then(|k| k.since_ms);
        let start = match since {
            Some(t) => k.offsets_for_time(&partitions, t).await?,
            None => k
                .watermarks_of_existing(&partitions)
                .await?
                .into_iter()
                .map(|(tp, w)| (tp, w.low))
                .collect(),
        };
        Ok((start, end))
    }

    fn request(
        &self,
        start: &BTreeMap<TopicPartition, i64>,
        end: &BTreeMap<TopicPartition, i64>,
    ) -> Result<ScanRequest> {
        Ok(ScanRequest {
            bootstrap_servers: self.kafka_info()?.bootstrap().to_owned(),
            start: start
                .iter()
                .filter(|(tp, o)| end.get(*tp).is_some_and(|e| e > *o))
                .map(|(tp, o)| (tp.clone(), *o))
                .collect(),
            end: Some(end.clone()),
        })
    }

    /// The first pass: the newest change of each document in `[start, end)`.
    pub(super) async fn latest_changes(
        &self,
        start: &BTreeMap<TopicPartition, i64>,
        end: &BTreeMap<TopicPartition, i64>,
    ) -> Result<Latest> {
        let partitions: Vec<TopicPartition> = end.keys().cloned().collect();
        let index: HashMap<TopicPartition, u32> = partitions
            .iter()
            .enumerate()
            .map(|(i, tp)| (tp.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let mut latest = Latest {
            partitions,
            by_id: HashMap::new(),
            without_document: 0,
        };
        let req = self.request(start, end)?;
        if req.start.is_empty() {
            return Ok(latest);
        }
        scan(req, &self.stop, |m| {
            if let Some((id, copied, has_doc)) = read(&m) {
                if !has_doc {
                    latest.without_document += 1;
                }
                let p = index.get(&m.tp).copied().unwrap_or(u32::MAX);
                latest.by_id.insert(id, (p, m.offset, copied));
            }
            true
        })
        .await?;
        Ok(latest)
    }

    /// The second pass (or a repair, with `only`): writes the newest change of each document
    /// from `next` to `end`, recording each partition's next offset in the run's progress unless
    /// repairing. Returns the messages read and the write failures.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy_latest(
        &self,
        run: &ReindexRun,
        latest: &Latest,
        mut next: BTreeMap<TopicPartition, i64>,
        end: &BTreeMap<TopicPartition, i64>,
        only: Option<&HashSet<String>>,
        touched: &mut Touched,
        chunk_size: usize,
        done: &AtomicU64,
        report: &dyn Fn(bool),
    ) -> Result<Vec<Value>> {
        let mut writer = self.version()?.writer(&run.new_index, true)?;
        let mut failures: Vec<Value> = run
            .progress
            .get("kafka")
            .and_then(|k| k.get("failures")?.as_array().cloned())
            .unwrap_or_default();
        loop {
            let req = self.request(&next, end)?;
            if req.start.is_empty() {
                return Ok(failures);
            }
            let mut batch: Vec<Change> = Vec::new();
            let mut read_here = 0usize;
            let ended = scan(req, &self.stop, |m| {
                read_here += 1;
                next.insert(m.tp.clone(), m.offset + 1);
                if let Some(body) = m.body.as_deref() {
                    if let Ok(c) = Change::from_message(&m.tp.topic, m.tp.partition, m.offset, body)
                    {
                        if latest.is_newest(&c.id, &m.tp, m.offset)
                            && only.is_none_or(|o| o.contains(&c.id))
                        {
                            batch.push(c);
                        }
                    }
                }
                read_here < SEGMENT
            })
            .await?;
            if ended == ScanEnd::Stopped {
                return Err(crate::Error::ShutdownRequested(format!(
                    "reindex run {} stopped during the backfill from Kafka; `pillowtop reindex resume` carries it on",
                    run.id
                )));
            }
            if ended == ScanEnd::Done {
                // Every partition reached its end (trailing offsets may hold no message).
                for (tp, e) in end {
                    next.insert(tp.clone(), *e);
                }
            }
            // The documents the live pillow changed since: its writes decide them.
            self.catch_up(touched).await?;
            batch.retain(|c| !touched.contains(&c.id));
            for chunk in batch.chunks_mut(chunk_size.max(1)) {
                let outcome = writer.process_changes_chunk(chunk).await?;
                note_failures(run, chunk, outcome, &mut failures);
            }
            // A document changed while the segment was written: the live pillow may have written
            // (or deleted) it before the older copy landed. Its newest change is written again,
            // until no written document was changed meanwhile.
            let mut written: HashSet<String> = batch.iter().map(|c| c.id.clone()).collect();
            for _ in 0..REAPPLY_ROUNDS {
                let again: HashSet<String> = self
                    .catch_up(touched)
                    .await?
                    .into_iter()
                    .filter(|id| written.contains(id))
                    .collect();
                if again.is_empty() {
                    break;
                }
                self.reapply(run, touched, end, &again).await?;
                written = again;
            }
            done.fetch_add(read_here as u64, Ordering::Relaxed);
            if only.is_none() {
                let next_json: Vec<Value> = next
                    .iter()
                    .map(|(tp, o)| json!({"topic": tp.topic, "partition": tp.partition, "offset": o}))
                    .collect();
                store::set_progress(
                    &self.pg,
                    run.id,
                    "kafka",
                    &json!({"next": next_json, "done": done.load(Ordering::Relaxed), "failures": failures}),
                )
                .await?;
            }
            report(false);
        }
    }

    /// The backfill step from Kafka.
    pub(super) async fn backfill_kafka(
        &self,
        run: &ReindexRun,
        o: &ReindexOptions,
        progress: OnProgress<'_>,
    ) -> Result<u64> {
        let (start, end) = self.kafka_range(run, o).await?;
        let total: u64 = end
            .iter()
            .map(|(tp, e)| u64::try_from(e - start.get(tp).copied().unwrap_or(*e)).unwrap_or(0))
            .sum();
        let latest = self.latest_changes(&start, &end).await?;
        if latest.without_document > 0 {
            tracing::warn!(run = run.id, changes = latest.without_document,
                "reindex from Kafka: changes without an embedded document are not copied (a pillow reading a document store: use --source-table)");
        }
        let saved = run.progress.get("kafka");
        let mut next = start.clone();
        for p in saved
            .and_then(|k| k.get("next")?.as_array().cloned())
            .unwrap_or_default()
        {
            if let (Some(t), Some(part), Some(off)) = (
                p.get("topic").and_then(Value::as_str),
                p.get("partition").and_then(Value::as_i64),
                p.get("offset").and_then(Value::as_i64),
            ) {
                next.insert(
                    TopicPartition::new(t, i32::try_from(part).unwrap_or(0)),
                    off,
                );
            }
        }
        let done = AtomicU64::new(saved.and_then(|k| k.get("done")?.as_u64()).unwrap_or(0));
        let started = (std::time::Instant::now(), done.load(Ordering::Relaxed));
        let report = |_force: bool| {
            let d = done.load(Ordering::Relaxed);
            let per_second = (d - started.1) as f64 / started.0.elapsed().as_secs_f64().max(1e-3);
            progress(Progress {
                done: d,
                total: total.max(d),
                per_second,
                eta_secs: (per_second > 0.0).then(|| total.saturating_sub(d) as f64 / per_second),
            });
        };
        let mut touched = Touched::from(&end);
        self.copy_latest(
            run,
            &latest,
            next,
            &end,
            None,
            &mut touched,
            o.chunk_size,
            &done,
            &report,
        )
        .await?;
        report(true);
        Ok(done.load(Ordering::Relaxed))
    }

    /// The verification of a Kafka backfill (see the module's text): how many documents are
    /// expected, those still missing, those still present though they must not be, and how many
    /// were repaired.
    pub(super) async fn verify_kafka(
        &self,
        v: &dyn super::Version,
        run: &ReindexRun,
        o: &ReindexOptions,
    ) -> Result<KafkaVerification> {
        let (start, end) = self.kafka_range(run, o).await?;
        let latest = self.latest_changes(&start, &end).await?;
        let expected: HashSet<String> = latest.copied().map(str::to_owned).collect();
        let mut touched = Touched::from(&end);
        let mut report = KafkaVerification::default();
        for round in 0..2 {
            // The version's ids first, then the topics: a live write seen here has its change
            // among those read.
            v.refresh(&run.new_index).await?;
            let indexed = v.all_ids(&run.new_index, None).await?;
            self.catch_up(&mut touched).await?;
            let mut missing: Vec<String> = expected
                .iter()
                .filter(|id| !touched.contains(id) && !indexed.contains(*id))
                .cloned()
                .collect();
            let mut unexpected: Vec<String> = indexed
                .into_iter()
                .filter(|id| !expected.contains(id) && !touched.contains(id))
                .collect();
            missing.sort();
            unexpected.sort();
            report.expected = expected.iter().filter(|id| !touched.contains(id)).count();
            if round == 1 || (missing.is_empty() && unexpected.is_empty()) {
                report.missing = missing;
                report.unexpected = unexpected;
                break;
            }
            if !missing.is_empty() {
                let only: HashSet<String> = missing.iter().cloned().collect();
                let done = AtomicU64::new(0);
                self.copy_latest(
                    run,
                    &latest,
                    start.clone(),
                    &end,
                    Some(&only),
                    &mut touched,
                    o.chunk_size,
                    &done,
                    &|_| {},
                )
                .await?;
            }
            if !unexpected.is_empty() {
                let mut deletions: Vec<Change> = unexpected
                    .iter()
                    .cloned()
                    .map(super::delete_change)
                    .collect();
                let mut writer = v.writer(&run.new_index, false)?;
                let _ = writer.process_changes_chunk(&mut deletions).await?;
                tracing::info!(run = run.id, index = %run.new_index, documents = unexpected.len(),
                    "reindex: deleted documents whose newest change before the position deletes them");
            }
            report.repaired += missing.len() + unexpected.len();
        }
        Ok(report)
    }
}

/// What a Kafka backfill's verification found.
#[derive(Debug, Default)]
pub(super) struct KafkaVerification {
    pub(super) expected: usize,
    pub(super) missing: Vec<String>,
    pub(super) unexpected: Vec<String>,
    pub(super) repaired: usize,
}
