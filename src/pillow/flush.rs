//! Flushing a chunk: the processors run over the buffered changes, failures become error rows,
//! the changes are marked handled, and CommCare's per-chunk metrics are recorded.

use std::time::Instant;

use crate::change::Change;
use crate::error::{ProcessError, Result};
use crate::feed::InvalidMessage;
use crate::metrics;
use crate::partition::TopicPartition;
use crate::processor::ProcessorFailure;
use crate::retry::MAX_PROCESSING_ATTEMPTS;
use crate::store::errors::{storable, ErrorRecord};

use super::{chunk, HookPoint, Pillow, Run};

impl Pillow {
    /// Processes the buffered changes as one chunk and records their failures; marks them handled.
    pub(super) async fn flush(&mut self, run: &mut Run) -> Result<()> {
        if run.buffer.is_empty() && run.invalid.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let changes = std::mem::take(&mut run.buffer);
        let invalid = std::mem::take(&mut run.invalid);
        // The highest offset per partition in this chunk: what the chunk hands to the tracker.
        let mut handled: Vec<(TopicPartition, i64)> = Vec::new();
        for (topic, partition, offset) in changes
            .iter()
            .map(|c| (c.topic.as_str(), c.partition, c.offset))
            .chain(
                invalid
                    .iter()
                    .map(|m| (m.topic.as_str(), m.partition, m.offset)),
            )
        {
            match handled
                .iter_mut()
                .find(|(tp, _)| tp.partition == partition && tp.topic == topic)
            {
                Some((_, o)) => *o = (*o).max(offset),
                None => handled.push((TopicPartition::new(topic, partition), offset)),
            }
        }
        let n = (changes.len() + invalid.len()) as u64;
        let mut records = Vec::new();
        for m in &invalid {
            tracing::warn!(pillow = %self.config.name, topic = %m.topic, partition = m.partition, offset = m.offset, reason = %m.reason, "invalid change message recorded as an error");
            self.metrics.counter(
                metrics::INVALID_CHANGES,
                vec![
                    ("pillow_name", self.config.name.clone()),
                    ("topic", m.topic.clone()),
                ],
                1.0,
            );
            records.push(invalid_record(&self.config.name, m));
        }
        // Before de-duplication: a skipped retry must not stand in for another change of its
        // document in this chunk.
        let changes = self.without_retries_of_others(changes).await?;
        let batch = self.config.chunk_size > 0;
        let mut changes = if batch {
            chunk::deduplicate(changes)
        } else {
            changes
        };
        let lag = self.count_changes(&changes);
        self.call_hook(HookPoint::BeforeChunk)?;
        let failures = chunk::process_chunk(
            &mut self.processors,
            &mut changes,
            batch,
            &self.docstores,
            &self.config.name,
            self.metrics.as_ref(),
            &mut self.times,
        )
        .await?;
        self.record_failures(&mut changes, &failures, records)
            .await?;
        self.call_hook(HookPoint::AfterChunk)?;
        let ok = changes.len() as u64 - failures.len() as u64;
        let tags = self.tags();
        self.metrics
            .counter(metrics::CHANGES_SUCCESS, tags.clone(), ok as f64);
        {
            self.metrics.counter(
                metrics::PROCESSING_TIME_TOTAL,
                tags.clone(),
                started.elapsed().as_secs_f64(),
            );
            self.metrics
                .counter(metrics::PROCESSING_TIME_COUNT, tags, n as f64);
        }
        self.record_lag(lag);
        run.policy.saw(n);
        run.summary.changes += n;
        run.summary.invalid += invalid.len() as u64;
        run.summary.failed += failures.len() as u64;
        run.seq += 1;
        run.unsettled.push_back((run.seq, handled));
        self.settle(run, false).await
    }

    /// [`flush`](Self::flush), then every processor writes what it still holds: after this,
    /// every change handed out is fully handled (an idle tick, a stop, a lost offset, the stall
    /// probe rely on it).
    pub(super) async fn flush_all(&mut self, run: &mut Run) -> Result<()> {
        self.flush(run).await?;
        self.settle(run, true).await?;
        if let Some((seq, _)) = run.unsettled.front() {
            let behind: Vec<&str> = self
                .processors
                .iter()
                .zip(&run.written_through)
                .filter(|(_, w)| *w < seq)
                .map(|(p, _)| p.name())
                .collect();
            tracing::warn!(pillow = %self.config.name, processors = %behind.join(", "), chunk = seq,
                "processors asked to write everything they hold did not: the checkpoint stays behind their changes");
        }
        Ok(())
    }

    /// Asks each processor what it has written ([`Processor::settle`]), records the held changes
    /// that failed, and hands the offset tracker (hence the checkpoint) every chunk that all
    /// processors have settled: the checkpoint never passes a change a sink still holds. With
    /// `flush`, the processors write everything they hold first.
    pub(super) async fn settle(&mut self, run: &mut Run, flush: bool) -> Result<()> {
        if run.unsettled.is_empty() {
            return Ok(());
        }
        let seq = run.seq;
        let mut held_failures: Vec<(Change, ProcessorFailure)> = Vec::new();
        for (j, (p, written)) in self
            .processors
            .iter_mut()
            .zip(run.written_through.iter_mut())
            .enumerate()
        {
            if *written >= seq {
                continue;
            }
            let waited = Instant::now();
            let settled = p.settle(seq, flush).await?;
            self.times.add_wait(j, waited.elapsed());
            *written = (*written).max(settled.written_through.min(seq));
            held_failures.extend(settled.failures);
        }
        if !held_failures.is_empty() {
            let (mut changes, failures): (Vec<Change>, Vec<ProcessorFailure>) =
                held_failures.into_iter().unzip();
            let failures: std::collections::BTreeMap<usize, ProcessorFailure> =
                failures.into_iter().enumerate().collect();
            self.record_failures(&mut changes, &failures, Vec::new())
                .await?;
            run.summary.failed += failures.len() as u64;
        }
        let settled = run.written_through.iter().copied().min().unwrap_or(seq);
        while run.unsettled.front().is_some_and(|(s, _)| *s <= settled) {
            if let Some((_, handled)) = run.unsettled.pop_front() {
                for (tp, offset) in &handled {
                    run.tracker.mark_handled(tp, *offset);
                }
            }
        }
        Ok(())
    }

    /// A lane of an independent pillow drops the retried changes (`attempts > 0`) whose last
    /// failure in this pillow was recorded for other processors only, at the same attempt count:
    /// this processor has handled them already. Every other change stays (CommCare's retry runs
    /// every processor). One query per chunk that holds a retried change.
    async fn without_retries_of_others(&mut self, changes: Vec<Change>) -> Result<Vec<Change>> {
        if !self.independent_lane || changes.iter().all(|c| c.metadata.attempts == 0) {
            return Ok(changes);
        }
        let Some(me) = self
            .processors
            .first()
            .map(|p| storable::column_text(p.name()).into_owned())
        else {
            return Ok(changes);
        };
        let retried: Vec<String> = changes
            .iter()
            .filter(|c| c.metadata.attempts > 0)
            .map(|c| storable::column_text(&c.id).into_owned())
            .collect();
        let failed = self
            .errors
            .failed_processors(&self.config.name, Some(&retried))
            .await?;
        let mut scope: std::collections::HashMap<(&str, i32), Vec<&str>> =
            std::collections::HashMap::new();
        for f in &failed {
            scope
                .entry((f.doc_id.as_str(), f.attempts))
                .or_default()
                .push(f.processor.as_str());
        }
        let before = changes.len();
        let kept: Vec<Change> = changes
            .into_iter()
            .filter(|c| {
                if c.metadata.attempts == 0 {
                    return true;
                }
                let attempts = i32::try_from(c.metadata.attempts).unwrap_or(i32::MAX);
                let id = storable::column_text(&c.id);
                scope
                    .get(&(id.as_ref(), attempts))
                    .is_none_or(|processors| processors.contains(&me.as_str()))
            })
            .collect();
        let skipped = before - kept.len();
        if skipped > 0 {
            tracing::debug!(pillow = %self.config.name, processor = %me, skipped,
                "retried changes that failed only in other processors skipped");
            self.metrics.counter(
                metrics::RETRIES_SKIPPED,
                vec![("pillow_name", self.config.name.clone()), ("processor", me)],
                skipped as f64,
            );
        }
        Ok(kept)
    }

    /// Counts the failures and records them (with the invalid messages' `records`) in the error
    /// store; a failure to record stops the pillow (crash-only).
    pub(super) async fn record_failures(
        &mut self,
        changes: &mut [Change],
        failures: &std::collections::BTreeMap<usize, ProcessorFailure>,
        mut records: Vec<ErrorRecord>,
    ) -> Result<()> {
        for (i, f) in failures {
            let change = &mut changes[*i];
            change.increment_attempt_count();
            self.record_failure_metrics(change, f);
            if self.config.retry_errors || f.document_missing {
                let record = ErrorRecord::for_change(
                    &self.config.name,
                    change,
                    &f.error_type,
                    f.traceback_or_message(),
                );
                records.push(match (self.independent_lane, self.processors.first()) {
                    (true, Some(p)) => record.of_processor(p.name()),
                    _ => record,
                });
            }
        }
        if !records.is_empty() {
            if let Err(e) = self.errors.record(&records).await {
                let doc_id = records
                    .first()
                    .map(|r| r.doc_id.clone())
                    .unwrap_or_default();
                return Err(ProcessError::ErrorStore {
                    pillow: self.config.name.clone(),
                    doc_id,
                    source: Box::new(e),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Counts the chunk's changes (`changes.count`) and returns the maximum lag per
    /// `topic-partition` (now − `publish_timestamp`), in seconds.
    pub(super) fn count_changes(
        &self,
        changes: &[Change],
    ) -> std::collections::BTreeMap<String, f64> {
        // Aggregated per chunk (not per change): a few map entries, formatted once.
        let mut per_source: rustc_hash::FxHashMap<&str, u64> = rustc_hash::FxHashMap::default();
        let mut lag: rustc_hash::FxHashMap<(&str, i32), f64> = rustc_hash::FxHashMap::default();
        let now = chrono::Utc::now();
        for c in changes {
            *per_source
                .entry(c.metadata.data_source_name.as_str())
                .or_default() += 1;
            if let Some(t) = c.metadata.publish_timestamp {
                let secs = (now - t).num_milliseconds() as f64 / 1000.0;
                let e = lag
                    .entry((c.topic.as_str(), c.partition))
                    .or_insert(f64::MIN);
                *e = e.max(secs);
            }
        }
        for (source, count) in per_source {
            self.metrics.counter(
                metrics::CHANGES_COUNT,
                vec![
                    ("pillow_name", self.config.name.clone()),
                    ("datasource", source.to_owned()),
                    ("case_type", "NA".into()),
                ],
                count as f64,
            );
        }
        lag.into_iter()
            .map(|((topic, partition), secs)| (format!("{topic}-{partition}"), secs))
            .collect()
    }

    /// `change_lag` per topic-partition and the chunk's `chunked.max_change_lag`.
    pub(super) fn record_lag(&self, lag: std::collections::BTreeMap<String, f64>) {
        if let Some(max) = lag.values().copied().reduce(f64::max) {
            self.metrics
                .gauge(metrics::CHUNKED_MAX_CHANGE_LAG, self.tags(), max);
        }
        for (topic, secs) in lag {
            self.metrics.gauge(
                metrics::CHANGE_LAG,
                vec![("pillow_name", self.config.name.clone()), ("topic", topic)],
                secs,
            );
        }
    }

    pub(super) fn record_failure_metrics(&self, change: &Change, f: &ProcessorFailure) {
        tracing::warn!(pillow = %self.config.name, doc_id = %change.id, topic = %change.topic, partition = change.partition,
            offset = change.offset, error_type = %f.error_type, error = %f.message, "change failed");
        self.metrics.counter(
            metrics::CHANGES_EXCEPTIONS,
            vec![
                ("pillow_name", self.config.name.clone()),
                ("exception_type", f.error_type.clone()),
            ],
            1.0,
        );
    }
}

/// The error record of an invalid message. It is parked at once (`current_attempt` past the
/// maximum): re-publishing a message that cannot be parsed cannot make it valid.
pub(super) fn invalid_record(pillow: &str, m: &InvalidMessage) -> ErrorRecord {
    ErrorRecord {
        doc_id: m.doc_id(),
        pillow: pillow.to_owned(),
        error_type: "pillowtop_rs.exceptions.InvalidChangeError".into(),
        traceback: format!(
            "pillowtop_rs.exceptions.InvalidChangeError: {} (topic {}, partition {}, offset {}, {} bytes)\nmessage starts: {}",
            m.reason, m.topic, m.partition, m.offset, m.size, m.excerpt
        ),
        change: serde_json::json!({"id": m.doc_id(), "seq": m.offset, "deleted": false, "topic": m.topic, "partition": m.partition}),
        metadata: None,
        attempts: MAX_PROCESSING_ATTEMPTS + 1,
        processor: None,
    }
}
