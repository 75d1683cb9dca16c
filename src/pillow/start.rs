//! Where each own partition starts: the stored checkpoint against the partition's retained range
//! and the start policy, decided by a pure function ([`resolve`]) and applied by a thin wrapper
//! that loads, logs, counts and assigns.

use std::collections::HashMap;
use std::time::Instant;

use crate::error::{CheckpointError, Result};
use crate::feed::offsets::OffsetTracker;
use crate::metrics;
use crate::partition::TopicPartition;

use super::{Pillow, StartPolicy};

/// Why a partition starts where it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartReason {
    /// At its stored checkpoint.
    Checkpoint,
    /// The checkpoint (`needed`) is older than the topic's retention: at the first retained
    /// offset, `skipped` changes lost to retention (non-strict mode).
    Expired { needed: i64, skipped: i64 },
    /// No checkpoint row: by the start policy.
    NoCheckpoint,
}

/// Where a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Start {
    pub seek: i64,
    pub reason: StartReason,
}

/// The start of `tp` from its stored offset and retained range `low..=high`: CommCare's rules
/// (strict mode fails on an expired checkpoint with its `UnavailableKafkaOffset` message), plus
/// ours: a checkpoint past the high-water mark (a recreated topic) is an error, never a silent
/// skip; without a row the start policy decides.
pub(super) fn resolve(
    checkpoint_id: &str,
    tp: &TopicPartition,
    stored: Option<i64>,
    (low, high): (i64, i64),
    policy: StartPolicy,
    strict: bool,
) -> std::result::Result<Start, CheckpointError> {
    let start = |seek, reason| Ok(Start { seek, reason });
    match stored {
        Some(o) if o < low && strict => Err(CheckpointError::UnavailableOffset {
            topic: tp.topic.clone(),
            partition: tp.partition,
            first: low,
            needed: o,
        }),
        Some(o) if o < low => start(
            low,
            StartReason::Expired {
                needed: o,
                skipped: low - o,
            },
        ),
        Some(o) if o > high => Err(CheckpointError::BeyondHighWater {
            checkpoint_id: checkpoint_id.to_owned(),
            tp: tp.clone(),
            offset: o,
            high,
        }),
        Some(o) => start(o, StartReason::Checkpoint),
        None => match policy {
            StartPolicy::Earliest => start(low, StartReason::NoCheckpoint),
            StartPolicy::Latest => start(high, StartReason::NoCheckpoint),
            StartPolicy::Error => Err(CheckpointError::Missing {
                checkpoint_id: checkpoint_id.to_owned(),
                tp: tp.clone(),
            }),
        },
    }
}

impl Pillow {
    /// Resolves where each own partition starts, from the checkpoint rows (or `resume`), the
    /// partition's retained range and the start policy; assigns the feed; returns the tracker.
    pub(super) async fn start_positions(
        &mut self,
        own: &[TopicPartition],
        resume: Option<&[(TopicPartition, i64)]>,
    ) -> Result<OffsetTracker> {
        let id = self.config.checkpoint_id.clone();
        let started = Instant::now();
        let stored: HashMap<TopicPartition, i64> = match resume {
            Some(r) => r.iter().cloned().collect(),
            None => self
                .checkpoints
                .load(&id)
                .await?
                .into_iter()
                .map(|r| (r.tp, r.offset))
                .collect(),
        };
        let watermarks = self.feed.watermarks(own).await?;
        let mut tracker = OffsetTracker::new();
        let mut positions = Vec::with_capacity(own.len());
        for (tp, low, high) in watermarks {
            let stored_offset = stored.get(&tp).copied();
            let Start { seek, reason } = resolve(
                &id,
                &tp,
                stored_offset,
                (low, high),
                self.config.start_policy,
                self.config.strict,
            )?;
            match reason {
                StartReason::Checkpoint => {}
                StartReason::Expired { needed, skipped } => {
                    tracing::warn!(pillow = %self.config.name, checkpoint_id = %id, partition = %tp, needed, first_available = low,
                        skipped, "checkpoint is older than the topic's retention: changes were deleted before this pillow read them; resuming at the first available offset");
                    self.count_offset_reset(&tp, "expired");
                }
                StartReason::NoCheckpoint => {
                    tracing::info!(pillow = %self.config.name, checkpoint_id = %id, partition = %tp, policy = ?self.config.start_policy, offset = seek,
                        "no checkpoint for this partition; starting by the start policy");
                    self.count_offset_reset(&tp, "no_checkpoint");
                }
            }
            let committed = if resume.is_some() {
                None
            } else {
                stored_offset
            };
            tracker.insert(tp.clone(), seek, committed);
            positions.push((tp, seek));
        }
        self.feed.assign(&positions).await?;
        tracing::info!(pillow = %self.config.name, partitions = positions.len(), elapsed_ms = started.elapsed().as_millis(), "positions resolved, consuming");
        Ok(tracker)
    }

    fn count_offset_reset(&self, tp: &TopicPartition, reason: &str) {
        self.metrics.counter(
            metrics::OFFSET_RESET,
            vec![
                ("pillow_name", self.config.name.clone()),
                ("topic", format!("{}-{}", tp.topic, tp.partition)),
                ("reason", reason.to_owned()),
            ],
            1.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("form-sql", 3)
    }

    fn at(
        stored: Option<i64>,
        policy: StartPolicy,
        strict: bool,
    ) -> std::result::Result<Start, CheckpointError> {
        resolve("ckpt", &tp(), stored, (10, 20), policy, strict)
    }

    #[test]
    fn a_checkpoint_in_range_is_where_it_starts_even_at_the_ends() {
        for o in [10, 15, 20] {
            assert_eq!(
                at(Some(o), StartPolicy::Error, true).expect("in range"),
                Start {
                    seek: o,
                    reason: StartReason::Checkpoint
                }
            );
        }
    }

    #[test]
    fn an_expired_checkpoint_resumes_at_the_first_retained_offset_unless_strict() {
        assert_eq!(
            at(Some(4), StartPolicy::Earliest, false).expect("non-strict"),
            Start {
                seek: 10,
                reason: StartReason::Expired {
                    needed: 4,
                    skipped: 6
                }
            }
        );
        let e = at(Some(4), StartPolicy::Earliest, true).expect_err("strict");
        assert_eq!(
            e.to_string(),
            "First available topic offset for form-sql:3 is 10 but needed 4."
        );
    }

    #[test]
    fn a_checkpoint_past_the_high_water_mark_is_an_error() {
        assert!(matches!(
            at(Some(21), StartPolicy::Earliest, false),
            Err(CheckpointError::BeyondHighWater {
                offset: 21,
                high: 20,
                ..
            })
        ));
    }

    #[test]
    fn without_a_row_the_policy_decides() {
        let none = |p| at(None, p, false);
        assert_eq!(none(StartPolicy::Earliest).expect("earliest").seek, 10);
        assert_eq!(none(StartPolicy::Latest).expect("latest").seek, 20);
        assert!(matches!(
            none(StartPolicy::Error),
            Err(CheckpointError::Missing { .. })
        ));
        assert_eq!(
            none(StartPolicy::Latest).expect("latest").reason,
            StartReason::NoCheckpoint
        );
    }
}
