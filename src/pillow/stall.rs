//! The stall watch: a pillow whose feed stops delivering while the source has changes for it
//! must not sit there, healthy-looking, for good.
//!
//! Seen with librdkafka 2.12 after a broker restart: the client decommissions the broker while
//! it shuts down and afterwards only logs "no usable brokers", never reconnecting, while the
//! loop goes on ticking and heartbeating. The watch runs on idle ticks only (no cost while
//! changes flow): once no change has arrived for [`PillowConfig::stall_timeout`], the feed is
//! probed with a fresh client ([`ChangeFeed::probe`]):
//! - a backlog the fresh client can read → the feed's client is stuck: an error line naming
//!   the source, a `pillowtop.feed_stalls` count, and the client is re-created at the pillow's
//!   positions (nothing handed out is skipped: the positions are the next offsets after what
//!   was handled); after [`PillowConfig::max_stall_reconnects`] re-creations without progress
//!   the run fails with [`KafkaError::Stalled`], so the supervisor restarts the process;
//! - the source unreachable from a fresh client too → an outage: a warning with the client's
//!   own words on each probe, and the pillow waits (librdkafka reconnects by itself);
//! - nothing readable (no backlog, or only transaction markers) → all is well.
//!
//! [`PillowConfig::stall_timeout`]: super::PillowConfig::stall_timeout
//! [`PillowConfig::max_stall_reconnects`]: super::PillowConfig::max_stall_reconnects
//! [`ChangeFeed::probe`]: crate::feed::ChangeFeed::probe
//! [`KafkaError::Stalled`]: crate::error::KafkaError::Stalled

use std::time::{Duration, Instant};

use crate::feed::StallProbe;

/// No change for this long (while the source has some) means stuck.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Re-creations of a stuck client, without progress in between, before giving up.
pub const DEFAULT_MAX_RECONNECTS: u32 = 3;

/// The watch's state, kept by the run loop.
#[derive(Debug)]
pub struct StallWatch {
    timeout: Option<Duration>,
    max_reconnects: u32,
    /// Changes seen (handled or buffered) at the last look, and when that count last moved.
    seen: u64,
    progress_at: Instant,
    probed_at: Option<Instant>,
    /// Re-creations since the count last moved.
    reconnects: u32,
}

/// What the loop does after a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Fine,
    /// The source cannot be reached: warn, and wait.
    Outage(String),
    /// Re-create the feed's client.
    Reconnect { behind: i64, partitions: String },
    /// Stuck after every re-creation: stop the run with this backlog.
    GiveUp { behind: i64, partitions: String },
}

impl StallWatch {
    pub fn new(timeout: Option<Duration>, max_reconnects: u32, now: Instant) -> Self {
        Self {
            timeout,
            max_reconnects,
            seen: 0,
            progress_at: now,
            probed_at: None,
            reconnects: 0,
        }
    }

    /// Called on each idle tick with the count of changes seen so far; whether to probe now:
    /// no progress for the timeout, and no probe within the last timeout either.
    pub fn tick(&mut self, seen: u64, now: Instant) -> bool {
        let Some(timeout) = self.timeout else {
            return false;
        };
        if seen != self.seen {
            self.seen = seen;
            self.progress_at = now;
            self.reconnects = 0;
            return false;
        }
        let quiet = now.duration_since(self.progress_at) >= timeout;
        let probe_due = self
            .probed_at
            .is_none_or(|t| now.duration_since(t) >= timeout);
        if quiet && probe_due {
            self.probed_at = Some(now);
        }
        quiet && probe_due
    }

    /// How long no change has arrived.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.duration_since(self.progress_at)
    }

    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The decision for a probe's answer (and, for a reconnect, the count of it).
    pub fn judge(&mut self, probe: StallProbe) -> Verdict {
        match probe {
            StallProbe::Idle => Verdict::Fine,
            StallProbe::Unreachable(why) => Verdict::Outage(why),
            StallProbe::Stuck { behind, partitions } => {
                let partitions = partitions
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                if self.reconnects >= self.max_reconnects {
                    Verdict::GiveUp { behind, partitions }
                } else {
                    self.reconnects += 1;
                    Verdict::Reconnect { behind, partitions }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::TopicPartition;

    fn stuck() -> StallProbe {
        StallProbe::Stuck {
            behind: 5,
            partitions: vec![TopicPartition::new("t", 0), TopicPartition::new("t", 3)],
        }
    }

    #[test]
    fn probes_only_after_the_timeout_without_progress_and_at_most_once_per_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = StallWatch::new(Some(10 * s), 3, t0);
        assert!(!w.tick(0, t0 + 5 * s), "not quiet long enough");
        assert!(w.tick(0, t0 + 10 * s));
        assert!(!w.tick(0, t0 + 15 * s), "probed 5 s ago");
        assert!(w.tick(0, t0 + 20 * s));
        assert!(!w.tick(7, t0 + 31 * s), "progress resets the clock");
        assert!(!w.tick(7, t0 + 40 * s));
        assert!(w.tick(7, t0 + 41 * s));
        let mut off = StallWatch::new(None, 3, t0);
        assert!(!off.tick(0, t0 + 1000 * s));
    }

    #[test]
    fn reconnects_until_the_budget_then_gives_up_and_progress_refills_it() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(Some(Duration::from_secs(1)), 2, t0);
        let want = |v: &Verdict| matches!(v, Verdict::Reconnect { behind: 5, partitions } if partitions == "t,0 t,3");
        assert!(want(&w.judge(stuck())));
        assert!(want(&w.judge(stuck())));
        assert!(matches!(
            w.judge(stuck()),
            Verdict::GiveUp { behind: 5, .. }
        ));
        w.tick(1, t0 + Duration::from_secs(5));
        assert_eq!(w.reconnects(), 0);
        assert!(want(&w.judge(stuck())));
        assert_eq!(w.judge(StallProbe::Idle), Verdict::Fine);
        assert_eq!(
            w.judge(StallProbe::Unreachable("refused".into())),
            Verdict::Outage("refused".into())
        );
    }
}
