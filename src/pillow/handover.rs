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
use crate::store::handover::{self, HandoverKind};

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

    /// Reads the requests at most every [`HANDOVER_POLL`] (`force`: now), hands over the
    /// processors asked for, each after a flush and a checkpoint of everything handed out, and
    /// takes back a processor being merged back once its target has handed it back. Returns
    /// whether the pillow has no processor left to run (every one was handed over).
    pub(super) async fn take_up_handovers(&mut self, run: &mut Run, force: bool) -> Result<bool> {
        let Some(pg) = self.handovers.clone() else {
            return Ok(false);
        };
        if !force
            && run
                .handovers_polled
                .is_some_and(|t| t.elapsed() < HANDOVER_POLL)
        {
            return Ok(false);
        }
        run.handovers_polled = Some(Instant::now());
        let requests = handover::load(&pg, Some(&self.config.checkpoint_id)).await?;
        for h in requests {
            // Taken back here already (an online merge the other processes have not finished).
            if h.taken_back(&run.summary.partitions) {
                continue;
            }
            let j = self.processors.iter().position(|p| p.name() == h.processor);
            if let Some(j) = j {
                self.hand_over(&pg, run, &h, j).await?;
            }
            if h.merge_requested_at.is_some() {
                self.take_back(&pg, run, &h).await?;
            }
        }
        Ok(self.processors.is_empty())
    }

    /// Hands processor `j` over as `h` asks, at this chunk boundary, and parks it.
    async fn hand_over(
        &mut self,
        pg: &Pg,
        run: &mut Run,
        h: &handover::Handover,
        j: usize,
    ) -> Result<()> {
        if self.processors.len() == 1 && h.kind == HandoverKind::Split {
            tracing::warn!(pillow = %self.config.name, processor = %h.processor, target = %h.target,
                "asked to hand over the pillow's only processor: refused (stop the pillow and split it offline, or run the target instead)");
            return Ok(());
        }
        // The processor stops at this chunk boundary: everything handed out is handled
        // and checkpointed, so the rows are exactly where it stopped.
        self.flush_all(run).await?;
        self.checkpoint(run).await?;
        let own: Vec<TopicPartition> = run.summary.partitions.clone();
        let handed = handover::hand_over(pg, h, Some(&own)).await?;
        self.park_processor(run, j);
        let partitions = own
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        match h.kind {
            HandoverKind::Split => {
                tracing::warn!(pillow = %self.config.name, processor = %h.processor, target = %h.target,
                handed_over = handed.len(), partitions = %partitions,
                "processor split out of the running pillow: handed over at a chunk boundary, no longer run here (remove it from the pillow's definition; `pillowtop merge --online` takes it back)");
            }
            HandoverKind::Merge => {
                tracing::warn!(pillow = %self.config.name, processor = %h.processor, target = %h.target,
                handed_over = handed.len(), partitions = %partitions,
                "processor merged back into the pillow it was split from: handed back at a chunk boundary, no longer run here");
            }
        }
        Ok(())
    }

    /// Takes the parked processor of `split` (being merged back) back once its target has
    /// handed it back for every partition of this process: at a chunk boundary, after a flush
    /// and a checkpoint, the rows become the lower of the pillow's and the processor's
    /// ([`handover::take_back`]) and the feed goes on from them with the processor running
    /// again (the others see again what the processor had not handled yet, as after an offline
    /// merge).
    async fn take_back(
        &mut self,
        pg: &Pg,
        run: &mut Run,
        split: &handover::Handover,
    ) -> Result<()> {
        let k = self.parked.iter().position(|p| p.name() == split.processor);
        let Some(k) = k else {
            return Ok(());
        };
        let own: Vec<TopicPartition> = run.summary.partitions.clone();
        let back = handover::load(pg, Some(&split.target))
            .await?
            .into_iter()
            .find(|b| b.processor == split.processor && b.kind == HandoverKind::Merge);
        if !back.is_some_and(|b| b.covers(&own)) {
            return Ok(()); // The target still runs it somewhere: asked again at the next poll.
        }
        self.flush_all(run).await?;
        self.checkpoint(run).await?;
        if !run.unsettled.is_empty() || run.in_flight.is_some() {
            return Ok(()); // A sink still holds changes: tried again at the next poll.
        }
        let Some(taken) = handover::take_back(pg, split, Some(&own), false).await? else {
            return Ok(());
        };
        let stop = run.stop.clone();
        run.tracker = super::run::unless_stopped(
            &stop,
            "reading the positions again after taking a processor back",
            self.start_positions(&own, None),
        )
        .await?;
        let p = self.parked.remove(k);
        self.processors.push(p);
        run.written_through.push(run.seq);
        let rewound: Vec<String> = taken
            .partitions
            .iter()
            .filter_map(|(tp, o)| o.map(|o| format!("{tp}@{o}")))
            .collect();
        tracing::warn!(pillow = %self.config.name, processor = %split.processor, from = %split.target,
            positions = %rewound.join(" "), complete = taken.complete,
            "processor merged back into the running pillow: it runs here again from the lower of its position and the pillow's");
        Ok(())
    }

    /// Leaves processor `j` out of the rest of the run, parked: an online merge may take it
    /// back.
    fn park_processor(&mut self, run: &mut Run, j: usize) {
        let p = self.processors.remove(j);
        self.parked.push(p);
        if j < run.written_through.len() {
            run.written_through.remove(j);
        }
        self.times.remove(j);
    }
}
