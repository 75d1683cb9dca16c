//! Online split of a pillow with one shared checkpoint (CommCare's model, the default): the
//! pillow watches `pillowtop_rs_handover` ([`crate::store::handover`]) and, asked to hand one of
//! its processors over to another pillow, stops running it at a chunk boundary: every change
//! handed out is fully handled and checkpointed first, so the pillow's rows are exactly where
//! the processor stopped; this process's partitions are then handed over (the target's rows are
//! written from them in one transaction) and the pillow goes on with its other processors. No
//! stop, no gap, nothing handled twice.
//!
//! A process that starts (or restarts after a kill between its checkpoint and the hand-over)
//! hands over its partitions from its rows and never runs the processor; it registers its
//! liveness row before it reads the requests, so a split never sees it as stopped while it
//! still runs the processor. The lanes of an independent pillow are watched by its coordinator
//! instead ([`super::independent`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::partition::TopicPartition;
use crate::pg::Pg;
use crate::store::handover;

use super::{Pillow, Run};

/// How often a running pillow reads the hand-over requests (one small query per process).
pub const HANDOVER_POLL: Duration = Duration::from_secs(1);

impl Pillow {
    /// Watches the hand-over requests in `pg` (online split of this pillow's processors).
    #[must_use]
    pub fn with_handovers(mut self, pg: Arc<Pg>) -> Self {
        self.handovers = Some(pg);
        self
    }

    /// Reads the requests at most every [`HANDOVER_POLL`] (`force`: now) and hands over the
    /// processors asked for, each after a flush and a checkpoint of everything handed out.
    pub(super) async fn take_up_handovers(&mut self, run: &mut Run, force: bool) -> Result<()> {
        let Some(pg) = self.handovers.clone() else {
            return Ok(());
        };
        if !force
            && run
                .handovers_polled
                .is_some_and(|t| t.elapsed() < HANDOVER_POLL)
        {
            return Ok(());
        }
        run.handovers_polled = Some(Instant::now());
        let requests = handover::load(&pg, Some(&self.config.checkpoint_id)).await?;
        for h in requests {
            let Some(j) = self.processors.iter().position(|p| p.name() == h.processor) else {
                continue;
            };
            if self.processors.len() == 1 {
                tracing::warn!(pillow = %self.config.name, processor = %h.processor, target = %h.target,
                    "asked to hand over the pillow's only processor: refused (stop the pillow and split it offline, or run the target instead)");
                continue;
            }
            // The processor stops at this chunk boundary: everything handed out is handled
            // and checkpointed, so the rows are exactly where it stopped.
            self.flush_all(run).await?;
            self.checkpoint(run).await?;
            let own: Vec<TopicPartition> = run.summary.partitions.clone();
            let handed = handover::hand_over(&pg, &h, Some(&own)).await?;
            self.remove_processor(run, j);
            tracing::warn!(pillow = %self.config.name, processor = %h.processor, target = %h.target,
                handed_over = handed.len(), partitions = %own.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
                "processor split out of the running pillow: handed over at a chunk boundary, no longer run here (remove it from the pillow's definition; to run it here again, delete its row of pillowtop_rs_handover)");
        }
        Ok(())
    }

    /// Leaves processor `j` out of the rest of the run.
    fn remove_processor(&mut self, run: &mut Run, j: usize) {
        self.processors.remove(j);
        if j < run.written_through.len() {
            run.written_through.remove(j);
        }
        self.times.remove(j);
    }
}
