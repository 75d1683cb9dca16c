//! Processors: what a pillow does with each change (CommCare's `PillowProcessor` and
//! `BulkPillowProcessor`).
//!
//! A processor's failure on one change is data, not control flow: it comes back as a
//! [`ProcessorFailure`], is recorded as a `PillowError`, and the pillow goes on. Only a fatal
//! [`crate::Error`] (for example a KeyboardInterrupt raised inside a Python processor, or a
//! service that stays down after retries) stops the pillow, without checkpointing the chunk.

pub mod elasticsearch;
pub mod memory;
pub mod postgres;
pub mod reindex_watch;

use async_trait::async_trait;

use crate::change::Change;
use crate::error::Result;

/// Why one change failed in one processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorFailure {
    /// CommCare's `module.Class` form, e.g. `pillowtop_rs.exceptions.ElasticsearchError` or a
    /// Python processor's own exception class.
    pub error_type: String,
    pub message: String,
    /// A formatted traceback when one exists (Python processors).
    pub traceback: Option<String>,
    /// `DocumentMissingError`s are always recorded, even when the pillow's `retry_errors` is off.
    pub document_missing: bool,
}

impl ProcessorFailure {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            traceback: None,
            document_missing: false,
        }
    }

    /// A `pillowtop_rs.exceptions.DocumentMissingError`.
    pub fn document_missing(doc_id: &str) -> Self {
        Self {
            error_type: "pillowtop_rs.exceptions.DocumentMissingError".into(),
            message: format!("document {doc_id} is missing from its document store"),
            traceback: None,
            document_missing: true,
        }
    }

    /// What goes into `error_traceback`: the traceback, or `Type: message` without one.
    pub fn traceback_or_message(&self) -> String {
        self.traceback
            .clone()
            .unwrap_or_else(|| format!("{}: {}", self.error_type, self.message))
    }
}

impl std::fmt::Display for ProcessorFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// The result of a bulk call: indices (into the chunk passed in) of changes to retry serially on
/// this processor, and changes that failed for good in this pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkOutcome {
    pub retry: Vec<usize>,
    pub errors: Vec<(usize, ProcessorFailure)>,
}

/// What a processor that writes after its calls return (a sink gathering across chunks, or with
/// requests in flight) reports to the pillow: see [`Processor::settle`].
#[derive(Debug, Default)]
pub struct Settled {
    /// The newest chunk sequence number all of whose changes this processor has fully handled
    /// (written, or returned in `failures` now or earlier). Never above the `seq` passed in;
    /// never goes back.
    pub written_through: u64,
    /// Held changes that failed for good since the last call, each returned once, with the
    /// change (its document may have been dropped) so the pillow records an error row for it.
    pub failures: Vec<(Change, ProcessorFailure)>,
}

/// A processor. Methods take `&mut self`: a pillow owns its processors and calls them one at a
/// time. The outer `Result` is fatal (stop the pillow); the inner one is the change's outcome.
#[async_trait]
pub trait Processor: Send {
    /// A name for logs, metrics and error messages.
    fn name(&self) -> &str;

    /// CommCare's `supports_batch_processing`: when true (and the chunk size is not 0) the pillow
    /// calls [`Processor::process_changes_chunk`] with whole chunks.
    fn supports_batch_processing(&self) -> bool {
        false
    }

    /// Whether the pillow must fetch the changes' documents (in bulk, per data source) before
    /// calling this processor.
    fn needs_documents(&self) -> bool {
        false
    }

    /// Processes one change.
    async fn process_change(&mut self, change: &mut Change)
        -> Result<Result<(), ProcessorFailure>>;

    /// Processes a de-duplicated chunk. The inner `Err` means the whole call failed: the pillow
    /// then runs every change of the chunk through [`Processor::process_change`] of this
    /// processor (CommCare's fallback).
    async fn process_changes_chunk(
        &mut self,
        changes: &mut [Change],
    ) -> Result<Result<ChunkOutcome, ProcessorFailure>> {
        let mut outcome = ChunkOutcome::default();
        for (i, change) in changes.iter_mut().enumerate() {
            if let Err(f) = self.process_change(change).await? {
                outcome.errors.push((i, f));
            }
        }
        Ok(Ok(outcome))
    }

    /// Sinks that hold changes after a call returns: the pillow numbers its chunks (1, 2, …);
    /// after it has passed every change of chunk `seq` to this processor it calls
    /// `settle(seq, flush)`. The processor answers the newest chunk whose changes are all
    /// durable ([`Settled::written_through`]) and the held changes that failed for good. With
    /// `flush` (an idle tick, a stop, a lost offset, before the stall probe) it writes everything
    /// it holds first and answers `written_through == seq`. The pillow's checkpoint (and this
    /// processor's own progress) only passes chunks at or below `written_through`: a sink may
    /// gather across chunks up to its own bounds (bytes, count, age) and never loses a change.
    ///
    /// The default, for processors whose writes are done when their calls return: everything
    /// passed is settled.
    async fn settle(&mut self, seq: u64, flush: bool) -> Result<Settled> {
        let _ = flush;
        Ok(Settled {
            written_through: seq,
            failures: Vec::new(),
        })
    }

    /// Called at each idle tick of the feed (no change for the idle timeout), after everything
    /// held was written: a processor that follows outside state (the Elasticsearch processor
    /// follows a reindex of its index) reads it here too. A no-op by default.
    async fn idle(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called after each successful checkpoint write.
    async fn checkpoint_updated(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called by the dedicated migration process about every 10 s (and once before a normal
    /// process starts consuming): create tables or indices, run migrations. A no-op by default.
    async fn bootstrap_if_needed(&mut self) -> Result<()> {
        Ok(())
    }
}
