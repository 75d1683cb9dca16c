//! Pipelined at-least-once writes for [`super::PgTableProcessor`].
//!
//! `process_changes_chunk` only encodes: each change's row action joins the *gathered* rows
//! (the last change per primary key wins, across chunks), in one of `connections` groups chosen
//! by a hash of the primary key. When the gathered rows reach `flush_max_rows`,
//! `flush_max_bytes` or `flush_max_delay_ms`, `settle` hands each group to its connection's
//! writer task (a tokio task with a connection of its own, one batch written and at most one
//! queued: backpressure) and returns: the pillow reads and encodes the next chunks while
//! PostgreSQL writes. `settle` answers `written_through`: the newest chunk whose rows every
//! writer has committed, so the checkpoint never passes an uncommitted row.
//!
//! A batch that fails on its data (a constraint the definition does not know about) is rolled
//! back and its rows written one by one on the same connection: the culprits come back as
//! failures with their changes (error rows), the rest are written. A connection lost beyond
//! [`Pg`](crate::pg::Pg)'s retries is fatal, as in line.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use super::config::TableDefinition;
use super::encoder::{Action, EncodedChunk, Encoder, SqlValue};
use super::processor::{row_failure, TableSink};
use crate::change::Change;
use crate::error::{PostgresError, Result};
use crate::processor::{ChunkOutcome, ProcessorFailure, Settled};

/// The rows of one connection's group, each with the change it came from (without its
/// document: for the error row should it fail).
#[derive(Debug, Default)]
pub(crate) struct GroupRows {
    upserts: Vec<Vec<SqlValue>>,
    upsert_changes: Vec<Change>,
    deletes: Vec<Vec<SqlValue>>,
    delete_changes: Vec<Change>,
    /// Slots replaced by a later change of the same key (removed when the group is taken).
    dropped_upserts: Vec<usize>,
    dropped_deletes: Vec<usize>,
}

impl GroupRows {
    fn is_empty(&self) -> bool {
        self.upserts.len() == self.dropped_upserts.len()
            && self.deletes.len() == self.dropped_deletes.len()
    }

    /// The live rows (replaced ones removed).
    fn compact(mut self) -> Self {
        remove(
            &mut self.upserts,
            &mut self.upsert_changes,
            &mut self.dropped_upserts,
        );
        remove(
            &mut self.deletes,
            &mut self.delete_changes,
            &mut self.dropped_deletes,
        );
        self
    }

    fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

fn remove(rows: &mut Vec<Vec<SqlValue>>, changes: &mut Vec<Change>, drop: &mut Vec<usize>) {
    if drop.is_empty() {
        return;
    }
    drop.sort_unstable();
    let mut keep = vec![true; rows.len()];
    for &i in drop.iter() {
        keep[i] = false;
    }
    let mut it = keep.iter();
    rows.retain(|_| *it.next().unwrap_or(&true));
    let mut it = keep.iter();
    changes.retain(|_| *it.next().unwrap_or(&true));
    drop.clear();
}

/// Rows gathered across chunks, not yet handed to a writer.
#[derive(Debug, Default)]
struct Gathered {
    groups: Vec<GroupRows>,
    /// key → (group, is an upsert, slot): the live action of each primary key.
    keys: FxHashMap<String, (usize, bool, usize)>,
    bytes: usize,
    since: Option<Instant>,
}

impl Gathered {
    fn new(groups: usize) -> Self {
        Self {
            groups: (0..groups).map(|_| GroupRows::default()).collect(),
            ..Self::default()
        }
    }

    fn rows(&self) -> usize {
        self.keys.len()
    }

    fn push(&mut self, key: String, action: Action, change: &Change) {
        let n = self.groups.len();
        let group = if n == 1 {
            0
        } else {
            usize::try_from(crate::hash::fnv1a(key.as_bytes()) % n as u64).unwrap_or(0)
        };
        let g = &mut self.groups[group];
        let (upsert, slot) = match action {
            Action::Upsert(row) => {
                g.upserts.push(row);
                g.upsert_changes.push(change.without_document());
                (true, g.upserts.len() - 1)
            }
            Action::Delete(key) => {
                g.deletes.push(key);
                g.delete_changes.push(change.without_document());
                (false, g.deletes.len() - 1)
            }
            Action::Missing => return,
        };
        if let Some((was_group, was_upsert, was_slot)) =
            self.keys.insert(key, (group, upsert, slot))
        {
            // The same key hashes to the same group.
            let g = &mut self.groups[was_group];
            if was_upsert {
                g.dropped_upserts.push(was_slot);
            } else {
                g.dropped_deletes.push(was_slot);
            }
        }
        self.bytes += change.size;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Takes every group's live rows and starts afresh.
    fn take(&mut self) -> Vec<GroupRows> {
        let n = self.groups.len();
        self.keys.clear();
        self.bytes = 0;
        self.since = None;
        std::mem::replace(
            &mut self.groups,
            (0..n).map(|_| GroupRows::default()).collect(),
        )
        .into_iter()
        .map(GroupRows::compact)
        .collect()
    }
}

/// A writer's answer to one batch, in order.
struct Reply {
    writer: usize,
    result: Result<Written>,
}

/// One connection's writer task.
struct WriterTask {
    tx: mpsc::Sender<GroupRows>,
    /// For each batch sent and not answered yet, oldest first: the chunk every earlier chunk
    /// was dispatched by (the batch's rows may belong to any later chunk).
    pending: VecDeque<u64>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Pipeline {
    connections: usize,
    max_rows: usize,
    max_bytes: usize,
    max_delay: Duration,
    gathered: Gathered,
    /// Started with the first batch (they need the runtime and the final [`TableSink`]).
    writers: Vec<WriterTask>,
    replies_tx: mpsc::UnboundedSender<Reply>,
    replies: mpsc::UnboundedReceiver<Reply>,
    /// Every chunk at or below this one has been handed to the writers (or had no rows).
    dispatched_through: u64,
    /// Rows that failed alone, returned by the next `settle`.
    failures: Vec<(Change, ProcessorFailure)>,
}

impl std::fmt::Debug for WriterTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterTask")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub(crate) fn new(def: &TableDefinition) -> Self {
        let (replies_tx, replies) = mpsc::unbounded_channel();
        Self {
            connections: def.connections.max(1),
            max_rows: def.flush_max_rows,
            max_bytes: def.flush_max_bytes,
            max_delay: Duration::from_millis(def.flush_max_delay_ms),
            gathered: Gathered::new(def.connections.max(1)),
            writers: Vec::new(),
            replies_tx,
            replies,
            dispatched_through: 0,
            failures: Vec::new(),
        }
    }

    /// Encodes a chunk into the gathered rows: conversion failures and missing documents are
    /// answered at once, the rows are written later.
    pub(crate) fn gather(&mut self, encoder: &Encoder, changes: &[Change]) -> ChunkOutcome {
        let mut outcome = ChunkOutcome::default();
        for (i, change) in changes.iter().enumerate() {
            match encoder.encode(change) {
                Err(f) => outcome.errors.push((i, f)),
                Ok(action) => match encoder.key(&action) {
                    None => outcome.retry.push(i),
                    Some(key) => self.gathered.push(key, action, change),
                },
            }
        }
        outcome
    }

    fn due(&self) -> bool {
        self.gathered.rows() >= self.max_rows
            || self.gathered.bytes >= self.max_bytes
            || self
                .gathered
                .since
                .is_some_and(|t| t.elapsed() >= self.max_delay)
    }

    /// `Processor::settle` for the table: hands the gathered rows to the writers when a bound is
    /// reached (or with `flush`, then waits for every writer), and answers what is committed.
    pub(crate) async fn settle(
        &mut self,
        sink: &TableSink,
        seq: u64,
        flush: bool,
    ) -> Result<Settled> {
        self.collect()?;
        if self.gathered.rows() == 0 {
            self.gathered.since = None;
            self.dispatched_through = self.dispatched_through.max(seq);
        } else if flush || self.due() {
            self.dispatch(sink).await?;
            self.dispatched_through = self.dispatched_through.max(seq);
        }
        if flush {
            self.wait_idle().await?;
        }
        let committed = self
            .writers
            .iter()
            .filter_map(|w| w.pending.front().copied())
            .min()
            .unwrap_or(self.dispatched_through);
        Ok(Settled {
            written_through: committed.min(self.dispatched_through).min(seq),
            failures: std::mem::take(&mut self.failures),
        })
    }

    /// Hands every group's gathered rows to its writer (waiting while a writer has a batch
    /// queued already).
    pub(crate) async fn dispatch(&mut self, sink: &TableSink) -> Result<()> {
        if self.gathered.rows() == 0 {
            return Ok(());
        }
        if self.writers.is_empty() {
            self.start(sink)?;
        }
        let after = self.dispatched_through;
        for (i, rows) in self.gathered.take().into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let w = &mut self.writers[i];
            w.pending.push_back(after);
            if w.tx.send(rows).await.is_err() {
                // The task ended: it answered a fatal error, which `collect` returns.
                self.collect()?;
                return Err(PostgresError::Other(format!(
                    "the writer of table {} stopped",
                    sink.label()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Waits until every writer has answered every batch sent.
    pub(crate) async fn wait_idle(&mut self) -> Result<()> {
        while self.writers.iter().any(|w| !w.pending.is_empty()) {
            match tokio::time::timeout(Duration::from_secs(1), self.replies.recv()).await {
                Ok(Some(reply)) => self.answer(reply)?,
                Ok(None) => break,
                // A writer that ended without answering (it panicked) would be waited for
                // forever.
                Err(_)
                    if self
                        .writers
                        .iter()
                        .any(|w| !w.pending.is_empty() && w.tx.is_closed()) =>
                {
                    self.collect()?;
                    return Err(PostgresError::Other(
                        "a writer of the table ended without answering".into(),
                    )
                    .into());
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Takes the writers' answers that have arrived.
    fn collect(&mut self) -> Result<()> {
        while let Ok(reply) = self.replies.try_recv() {
            self.answer(reply)?;
        }
        Ok(())
    }

    fn answer(&mut self, reply: Reply) -> Result<()> {
        if let Some(w) = self.writers.get_mut(reply.writer) {
            w.pending.pop_front();
        }
        let written = reply.result?;
        self.failures.extend(written.failures);
        // The rows are freed here, on the pillow's thread that allocated them (perf, gathered
        // phase of the sinks bench: `mi_free` fell from 7.7% to 3.4% of the samples; CPU per
        // change moved within the run-to-run noise).
        drop(written.spent);
        Ok(())
    }

    fn start(&mut self, sink: &TableSink) -> Result<()> {
        for writer in 0..self.connections {
            let Some(own) = sink.sibling() else {
                return Err(PostgresError::Other(format!(
                    "table {}: background writes need an at-least-once target",
                    sink.label()
                ))
                .into());
            };
            let (tx, mut rx) = mpsc::channel::<GroupRows>(1);
            let replies = self.replies_tx.clone();
            tokio::spawn(async move {
                while let Some(rows) = rx.recv().await {
                    let result = write_group(&own, rows).await;
                    let fatal = result.is_err();
                    if replies.send(Reply { writer, result }).is_err() || fatal {
                        break;
                    }
                }
            });
            self.writers.push(WriterTask {
                tx,
                pending: VecDeque::new(),
            });
        }
        Ok(())
    }
}

/// A writer's answer to one batch: the rows that failed alone, and the rows written (handed back
/// to be freed by the thread that made them).
struct Written {
    failures: Vec<(Change, ProcessorFailure)>,
    spent: Option<(EncodedChunk, Vec<Change>, Vec<Change>)>,
}

/// Writes one group's rows in one transaction; when that fails on the data, row by row, so the
/// culprits fail alone.
async fn write_group(sink: &TableSink, rows: GroupRows) -> Result<Written> {
    let started = Instant::now();
    let n = rows.len();
    let GroupRows {
        upserts,
        upsert_changes,
        deletes,
        delete_changes,
        ..
    } = rows;
    let chunk = EncodedChunk {
        upserts,
        deletes,
        ..EncodedChunk::default()
    };
    let why = match sink.write(&chunk, Vec::new()).await? {
        Ok(()) => {
            tracing::debug!(table = %sink.label(), rows = n, elapsed_ms = started.elapsed().as_millis(), "gathered rows written");
            return Ok(Written {
                failures: Vec::new(),
                spent: Some((chunk, upsert_changes, delete_changes)),
            });
        }
        Err(why) => why,
    };
    tracing::warn!(table = %sink.label(), rows = n, error = %why, "writing gathered rows failed as a whole; writing them one by one");
    let mut failures = Vec::new();
    let deletes = chunk
        .deletes
        .into_iter()
        .zip(delete_changes)
        .map(|(r, c)| (false, r, c));
    let upserts = chunk
        .upserts
        .into_iter()
        .zip(upsert_changes)
        .map(|(r, c)| (true, r, c));
    for (upsert, row, change) in deletes.chain(upserts) {
        let one = if upsert {
            EncodedChunk {
                upserts: vec![row],
                ..EncodedChunk::default()
            }
        } else {
            EncodedChunk {
                deletes: vec![row],
                ..EncodedChunk::default()
            }
        };
        if let Err(why) = sink.write(&one, Vec::new()).await? {
            let f = row_failure(sink.label(), &change.id, &why);
            failures.push((change, f));
        }
    }
    Ok(Written {
        failures,
        spent: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeMeta;

    fn change(id: &str) -> Change {
        let m = ChangeMeta::new(id, "sql", "form-sql");
        Change::from_message("t", 0, 0, m.to_json().as_bytes()).expect("valid")
    }

    fn key(id: &str) -> String {
        format!("T{}:{id};", id.len())
    }

    #[test]
    fn the_last_action_per_key_wins_across_chunks_in_one_group() {
        let mut g = Gathered::new(3);
        let text = |s: &str| SqlValue::Text(s.into());
        g.push(
            key("a"),
            Action::Upsert(vec![text("a"), SqlValue::Integer(1)]),
            &change("a"),
        );
        g.push(
            key("b"),
            Action::Upsert(vec![text("b"), SqlValue::Integer(1)]),
            &change("b"),
        );
        g.push(key("a"), Action::Delete(vec![text("a")]), &change("a"));
        g.push(
            key("b"),
            Action::Upsert(vec![text("b"), SqlValue::Integer(2)]),
            &change("b"),
        );
        g.push(
            key("a"),
            Action::Upsert(vec![text("a"), SqlValue::Integer(3)]),
            &change("a"),
        );
        assert_eq!(g.rows(), 2);
        let groups = g.take();
        assert_eq!(g.rows(), 0);
        assert!(g.since.is_none());
        let mut upserts: Vec<_> = groups.iter().flat_map(|g| g.upserts.clone()).collect();
        upserts.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            upserts,
            vec![
                vec![text("a"), SqlValue::Integer(3)],
                vec![text("b"), SqlValue::Integer(2)]
            ]
        );
        assert!(groups
            .iter()
            .all(|g| g.deletes.is_empty() && g.delete_changes.is_empty()));
        for g in &groups {
            assert_eq!(g.upserts.len(), g.upsert_changes.len());
            for (row, c) in g.upserts.iter().zip(&g.upsert_changes) {
                assert_eq!(row[0], text(&c.id), "each row keeps its own change");
            }
        }
    }

    #[test]
    fn keys_spread_over_the_groups() {
        let mut g = Gathered::new(4);
        for i in 0..400 {
            let id = format!("form-{i}");
            g.push(
                key(&id),
                Action::Delete(vec![SqlValue::Text(id.clone())]),
                &change(&id),
            );
        }
        let sizes: Vec<usize> = g.take().iter().map(GroupRows::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 400);
        assert!(sizes.iter().all(|&n| n > 50), "{sizes:?}");
    }
}
