//! How a live processor follows the rebuilds of its index or table (`pillowtop reindex`,
//! [`crate::ops::reindex`]): about once a second ([`REINDEX_POLL`]) it reads the newest run of
//! its processor from [`crate::store::reindex`], the processor turns the run's step into where
//! it writes, and only then acknowledges the step under `host:pid`, so that a reindex relying on
//! an acknowledgement knows every write from then on goes where the step says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::pg::Pg;
use crate::store::reindex::{ReindexRun, Step};

/// How often a running processor reads the newest reindex of its index or table.
pub const REINDEX_POLL: Duration = Duration::from_secs(1);

/// What a processor knows of the rebuilds of its index or table.
#[derive(Debug)]
pub(crate) struct ReindexWatch {
    pg: Arc<Pg>,
    pillow: String,
    /// `host:pid`, as the acknowledgements name processes.
    who: String,
    polled: Option<Instant>,
    /// The run and step last acknowledged.
    acked: Option<(i64, Step)>,
    /// The last poll failed (logged once until one succeeds).
    failing: bool,
}

impl ReindexWatch {
    /// `pg` should have no outage budget (see [`Self::read`]).
    pub(crate) fn new(pg: Arc<Pg>, pillow: impl Into<String>) -> Self {
        Self {
            pg,
            pillow: pillow.into(),
            who: format!(
                "{}:{}",
                crate::store::liveness::hostname(),
                crate::store::liveness::pid()
            ),
            polled: None,
            acked: None,
            failing: false,
        }
    }

    pub(crate) fn pillow(&self) -> &str {
        &self.pillow
    }

    /// The newest run of `processor` (ended or not, `Some(None)` when it never had one), at
    /// most every [`REINDEX_POLL`] unless `force`; `None` when not due or when PostgreSQL
    /// cannot be read. One attempt: while PostgreSQL is unreachable the processor keeps
    /// writing where it did and acknowledges nothing, so a reindex waits for it rather than
    /// the pillow waiting for the database. Only a stop request is an error.
    pub(crate) async fn read(
        &mut self,
        processor: &str,
        force: bool,
    ) -> Result<Option<Option<ReindexRun>>> {
        if !force && self.polled.is_some_and(|t| t.elapsed() < REINDEX_POLL) {
            return Ok(None);
        }
        self.polled = Some(Instant::now());
        match crate::store::reindex::latest(&self.pg, &self.pillow, processor).await {
            Ok(run) => {
                if self.failing {
                    tracing::info!(processor = %processor, "reading the reindex state works again");
                    self.failing = false;
                }
                Ok(Some(run))
            }
            Err(e) if e.is_stop_request() => Err(e),
            Err(e) => {
                if !self.failing {
                    tracing::warn!(processor = %processor, error = %e,
                        "cannot read the reindex state (PostgreSQL); writing where it did until it can");
                    self.failing = true;
                }
                Ok(None)
            }
        }
    }

    /// Acknowledges the step of `run` (once per step; an unfinished run only), after the
    /// processor writes where the step says. A failure is logged and tried again at the next
    /// poll: the reindex waits.
    pub(crate) async fn acknowledge(&mut self, processor: &str, run: &ReindexRun) -> Result<()> {
        if run.finished_at.is_some() || self.acked == Some((run.id, run.step)) {
            return Ok(());
        }
        match crate::store::reindex::acknowledge(&self.pg, run.id, &self.who, run.step).await {
            Ok(()) => self.acked = Some((run.id, run.step)),
            Err(e) if e.is_stop_request() => return Err(e),
            Err(e) => tracing::warn!(processor = %processor, error = %e,
                "cannot acknowledge the reindex step (PostgreSQL); trying again at the next poll"),
        }
        Ok(())
    }
}
