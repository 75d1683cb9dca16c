//! When to checkpoint (CommCare's `PillowCheckpointEventHandler`), with a monotonic clock.
//!
//! Due when `changes_seen >= frequency`, or when the delay rule is on and either nothing was
//! written since start (so the first change after start always checkpoints) or `max_delay` has
//! passed since the last write. The idle rule (feed tick) is separate: it writes whatever own
//! partitions moved, whatever the counters say.

use std::time::{Duration, Instant};

/// The checkpoint decision's state.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    frequency: u64,
    /// `None` disables the time rule (CommCare's `PTOP_CHECKPOINT_DELAY_OVERRIDE = None`).
    max_delay: Option<Duration>,
    changes_seen: u64,
    last_update: Option<Instant>,
}

/// CommCare's `MAX_CHECKPOINT_DELAY`.
pub const DEFAULT_MAX_CHECKPOINT_DELAY: Duration = Duration::from_secs(300);
/// CommCare's `CHECKPOINT_FREQUENCY`.
pub const DEFAULT_CHECKPOINT_FREQUENCY: u64 = 100;

impl CheckpointPolicy {
    pub fn new(frequency: u64, max_delay: Option<Duration>) -> Self {
        Self {
            frequency: frequency.max(1),
            max_delay,
            changes_seen: 0,
            last_update: None,
        }
    }

    /// Counts handled changes.
    pub fn saw(&mut self, n: u64) {
        self.changes_seen += n;
    }

    pub fn changes_seen(&self) -> u64 {
        self.changes_seen
    }

    /// Whether a checkpoint is due now.
    pub fn is_due(&self, now: Instant) -> bool {
        if self.changes_seen >= self.frequency {
            return true;
        }
        match (self.max_delay, self.last_update) {
            (None, _) => false,
            (Some(_), None) => self.changes_seen > 0,
            (Some(d), Some(t)) => self.changes_seen > 0 && now.duration_since(t) >= d,
        }
    }

    /// Records a checkpoint write: the counter resets.
    pub fn checkpointed(&mut self, now: Instant) {
        self.changes_seen = 0;
        self.last_update = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_change_after_start_always_checkpoints() {
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(100, Some(Duration::from_secs(300)));
        assert!(!p.is_due(t0), "nothing seen yet");
        p.saw(1);
        assert!(p.is_due(t0));
        p.checkpointed(t0);
        p.saw(1);
        assert!(!p.is_due(t0 + Duration::from_secs(10)));
        assert!(p.is_due(t0 + Duration::from_secs(300)));
    }

    #[test]
    fn frequency_rule_and_reset() {
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(10, None);
        p.saw(9);
        assert!(!p.is_due(t0), "delay rule off, below frequency");
        p.saw(1);
        assert!(p.is_due(t0));
        p.checkpointed(t0);
        assert_eq!(p.changes_seen(), 0);
        assert!(!p.is_due(t0 + Duration::from_secs(100_000)));
    }
}
