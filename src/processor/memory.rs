//! Recording processors for tests and benches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{ChunkOutcome, Processor, ProcessorFailure};
use crate::change::Change;
use crate::error::Result;

/// What a [`RecordingProcessor`] saw, shared with the test that inspects it.
#[derive(Debug, Default)]
pub struct Recorded {
    /// (document id, topic, partition, offset) of every change processed successfully, in order.
    pub processed: Vec<(String, String, i32, i64)>,
    /// Sizes of the chunks passed to `process_changes_chunk`.
    pub chunks: Vec<usize>,
    /// How many times `process_change` was called (serial path and fallbacks).
    pub serial_calls: usize,
    pub checkpoint_updates: usize,
    pub bootstraps: usize,
}

/// A processor that records what it sees and fails on request.
#[derive(Debug, Clone)]
pub struct RecordingProcessor {
    name: String,
    batch: bool,
    pub recorded: Arc<Mutex<Recorded>>,
    /// Document ids whose processing fails.
    pub fail_ids: Arc<Mutex<HashSet<String>>>,
    /// When set, every bulk call fails as a whole (to exercise the serial fallback).
    pub fail_chunks: bool,
    /// Document ids that a bulk call returns as "retry serially".
    pub retry_ids: Arc<Mutex<HashSet<String>>>,
}

impl RecordingProcessor {
    pub fn new(name: &str, batch: bool) -> Self {
        Self {
            name: name.to_owned(),
            batch,
            recorded: Arc::default(),
            fail_ids: Arc::default(),
            fail_chunks: false,
            retry_ids: Arc::default(),
        }
    }

    fn fails(&self, id: &str) -> bool {
        self.fail_ids.lock().is_ok_and(|f| f.contains(id))
    }

    fn record(&self, c: &Change) {
        if let Ok(mut r) = self.recorded.lock() {
            r.processed
                .push((c.id.clone(), c.topic.clone(), c.partition, c.offset));
        }
    }
}

#[async_trait]
impl Processor for RecordingProcessor {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports_batch_processing(&self) -> bool {
        self.batch
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> Result<Result<(), ProcessorFailure>> {
        if let Ok(mut r) = self.recorded.lock() {
            r.serial_calls += 1;
        }
        if self.fails(&change.id) {
            return Ok(Err(ProcessorFailure::new(
                "tests.TestError",
                format!("{} fails on {}", self.name, change.id),
            )));
        }
        self.record(change);
        Ok(Ok(()))
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<Result<ChunkOutcome, ProcessorFailure>> {
        if let Ok(mut r) = self.recorded.lock() {
            r.chunks.push(changes.len());
        }
        if self.fail_chunks {
            return Ok(Err(ProcessorFailure::new(
                "tests.ChunkError",
                "the whole chunk failed",
            )));
        }
        let retry_ids = self.retry_ids.lock().map(|s| s.clone()).unwrap_or_default();
        let mut outcome = ChunkOutcome::default();
        for (i, c) in changes.iter().enumerate() {
            if retry_ids.contains(&c.id) {
                outcome.retry.push(i);
            } else if self.fails(&c.id) {
                outcome.errors.push((
                    i,
                    ProcessorFailure::new(
                        "tests.TestError",
                        format!("{} fails on {}", self.name, c.id),
                    ),
                ));
            } else {
                self.record(c);
            }
        }
        Ok(Ok(outcome))
    }

    async fn checkpoint_updated(&mut self) -> Result<()> {
        if let Ok(mut r) = self.recorded.lock() {
            r.checkpoint_updates += 1;
        }
        Ok(())
    }

    async fn bootstrap_if_needed(&mut self) -> Result<()> {
        if let Ok(mut r) = self.recorded.lock() {
            r.bootstraps += 1;
        }
        Ok(())
    }
}

/// A processor that does nothing (CommCare's `NoopProcessor`), for overhead benchmarks.
#[derive(Debug, Default, Clone)]
pub struct NoopProcessor {
    pub batch: bool,
}

#[async_trait]
impl Processor for NoopProcessor {
    fn name(&self) -> &str {
        "noop"
    }

    fn supports_batch_processing(&self) -> bool {
        self.batch
    }

    async fn process_change(
        &mut self,
        _change: &mut Change,
    ) -> Result<Result<(), ProcessorFailure>> {
        Ok(Ok(()))
    }

    async fn process_changes_chunk(
        &mut self,
        _changes: &mut [Change],
    ) -> Result<Result<ChunkOutcome, ProcessorFailure>> {
        Ok(Ok(ChunkOutcome::default()))
    }
}

/// A sink that holds changes across chunks (the [`Processor::settle`] contract), for tests: it
/// "writes" what it holds once it holds `hold_chunks` chunks, or when asked to flush. Changes
/// whose ids are in `fail_ids` fail at write time: they come back as held failures.
#[derive(Debug, Clone)]
pub struct HoldingProcessor {
    name: String,
    /// Chunks held before a write.
    pub hold_chunks: usize,
    /// (document id, offset) of every change written, in order.
    pub written: Arc<Mutex<Vec<(String, i64)>>>,
    pub fail_ids: Arc<Mutex<HashSet<String>>>,
    /// Changes received since the last `settle`.
    open: Vec<Change>,
    /// Held chunks: (seq, changes).
    held: Vec<(u64, Vec<Change>)>,
    written_through: u64,
}

impl HoldingProcessor {
    pub fn new(name: &str, hold_chunks: usize) -> Self {
        Self {
            name: name.to_owned(),
            hold_chunks,
            written: Arc::default(),
            fail_ids: Arc::default(),
            open: Vec::new(),
            held: Vec::new(),
            written_through: 0,
        }
    }

    fn write_held(&mut self) -> Vec<(Change, ProcessorFailure)> {
        let fail_ids = self.fail_ids.lock().map(|s| s.clone()).unwrap_or_default();
        let mut failures = Vec::new();
        for (seq, changes) in std::mem::take(&mut self.held) {
            for c in changes {
                if fail_ids.contains(&c.id) {
                    let f = ProcessorFailure::new(
                        "tests.WriteError",
                        format!("{} could not write {}", self.name, c.id),
                    );
                    failures.push((c, f));
                } else if let Ok(mut w) = self.written.lock() {
                    w.push((c.id.clone(), c.offset));
                }
            }
            self.written_through = seq;
        }
        failures
    }
}

#[async_trait]
impl Processor for HoldingProcessor {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports_batch_processing(&self) -> bool {
        true
    }

    async fn process_change(
        &mut self,
        change: &mut Change,
    ) -> Result<Result<(), ProcessorFailure>> {
        self.open.push(change.clone());
        Ok(Ok(()))
    }

    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<Result<ChunkOutcome, ProcessorFailure>> {
        self.open.extend(changes.iter().cloned());
        Ok(Ok(ChunkOutcome::default()))
    }

    async fn settle(&mut self, seq: u64, flush: bool) -> Result<super::Settled> {
        if seq > self.written_through && self.held.last().is_none_or(|(s, _)| *s < seq) {
            self.held.push((seq, std::mem::take(&mut self.open)));
        }
        let failures = if flush || self.held.len() >= self.hold_chunks.max(1) {
            self.write_held()
        } else {
            Vec::new()
        };
        Ok(super::Settled {
            written_through: self.written_through,
            failures,
        })
    }
}
