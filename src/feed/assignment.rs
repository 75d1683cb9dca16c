//! The partition layout: which process reads which partitions. One pure function, used by the
//! runner, the operator commands and validation (CommCare's `_filter_partitions`, the dedicated
//! migration process and the `--gevent-workers` expansion).

use crate::error::{ConfigError, Result};
use crate::partition::TopicPartition;

/// How a process's share of the partitions is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub num_processes: u32,
    pub process_num: u32,
    /// Process 0 is the dedicated migration process and consumes nothing.
    pub dedicated_migration_process: bool,
}

impl Layout {
    pub fn single() -> Self {
        Self {
            num_processes: 1,
            process_num: 0,
            dedicated_migration_process: false,
        }
    }

    /// Rejects impossible layouts (CommCare asserts `0 <= k < N`; we also reject `dedicated` with
    /// fewer than two processes, where nothing would consume: docs/commcare-pillowtop.md §9 #21).
    pub fn validate(&self) -> Result<()> {
        if self.num_processes == 0 || self.process_num >= self.num_processes {
            return Err(ConfigError::Invalid(format!(
                "process number {} is not within 0..{} processes",
                self.process_num, self.num_processes
            ))
            .into());
        }
        if self.dedicated_migration_process && self.num_processes < 2 {
            return Err(ConfigError::Invalid(
                "a dedicated migration process needs at least 2 processes: with 1, nothing would consume"
                    .into(),
            )
            .into());
        }
        Ok(())
    }

    /// True for the dedicated migration process, which consumes nothing.
    pub fn is_migration_process(&self) -> bool {
        self.dedicated_migration_process && self.process_num == 0
    }

    /// This process's partitions: sort all (topic, partition) pairs, then take every N-th from
    /// index k (`sorted[k::N]`); in dedicated mode process 0 takes none and process k ≥ 1 takes
    /// `sorted[(k-1)::(N-1)]`.
    pub fn assign(&self, all: &[TopicPartition]) -> Result<Vec<TopicPartition>> {
        self.validate()?;
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        let (start, step) = if self.dedicated_migration_process {
            if self.process_num == 0 {
                return Ok(Vec::new());
            }
            (self.process_num - 1, self.num_processes - 1)
        } else {
            (self.process_num, self.num_processes)
        };
        Ok(sorted
            .into_iter()
            .skip(start as usize)
            .step_by(step as usize)
            .collect())
    }

    /// The layouts of `workers` virtual workers inside this OS process (`run_ptop
    /// --gevent-workers W`). `None` for the dedicated migration process, which runs no workers.
    pub fn virtual_workers(&self, workers: u32) -> Result<Option<Vec<Layout>>> {
        self.validate()?;
        if workers < 2 {
            return Err(ConfigError::Invalid(format!(
                "virtual workers must be at least 2, not {workers}"
            ))
            .into());
        }
        if self.is_migration_process() {
            return Ok(None);
        }
        let layouts = if self.dedicated_migration_process {
            let (n, k) = (self.num_processes - 1, self.process_num - 1);
            (0..workers)
                .map(|w| Layout {
                    num_processes: n * workers + 1,
                    process_num: k * workers + 1 + w,
                    dedicated_migration_process: true,
                })
                .collect()
        } else {
            (0..workers)
                .map(|w| Layout {
                    num_processes: self.num_processes * workers,
                    process_num: self.process_num * workers + w,
                    dedicated_migration_process: false,
                })
                .collect()
        };
        Ok(Some(layouts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(topic: &str, n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new(topic, p)).collect()
    }

    fn nums(v: &[TopicPartition]) -> Vec<i32> {
        v.iter().map(|tp| tp.partition).collect()
    }

    fn layout(n: u32, k: u32, dedicated: bool) -> Layout {
        Layout {
            num_processes: n,
            process_num: k,
            dedicated_migration_process: dedicated,
        }
    }

    #[test]
    fn commcare_vectors_one_topic_six_partitions_three_processes() {
        let all = parts("case-sql", 6);
        assert_eq!(nums(&layout(3, 0, false).assign(&all).expect("ok")), [0, 3]);
        assert_eq!(nums(&layout(3, 1, false).assign(&all).expect("ok")), [1, 4]);
        assert_eq!(nums(&layout(3, 2, false).assign(&all).expect("ok")), [2, 5]);
        assert!(layout(3, 0, true).assign(&all).expect("ok").is_empty());
        assert_eq!(
            nums(&layout(3, 1, true).assign(&all).expect("ok")),
            [0, 2, 4]
        );
        assert_eq!(
            nums(&layout(3, 2, true).assign(&all).expect("ok")),
            [1, 3, 5]
        );
    }

    #[test]
    fn partitions_sort_numerically_and_topics_interleave() {
        let mut all = parts("case-sql", 3);
        all.extend(parts("case", 3));
        let p0 = layout(2, 0, false).assign(&all).expect("ok");
        let p1 = layout(2, 1, false).assign(&all).expect("ok");
        let s = |v: &[TopicPartition]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(s(&p0), ["case,0", "case,2", "case-sql,1"]);
        assert_eq!(s(&p1), ["case,1", "case-sql,0", "case-sql,2"]);
        let twelve = parts("t", 12);
        assert_eq!(
            nums(&layout(11, 10, false).assign(&twelve).expect("ok")),
            [10]
        );
        assert_eq!(
            nums(&layout(10, 9, false).assign(&twelve).expect("ok")),
            [9]
        );
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        let all: Vec<_> = parts("a", 32).into_iter().chain(parts("b", 7)).collect();
        for n in 1..10 {
            for dedicated in [false, true] {
                if dedicated && n < 2 {
                    continue;
                }
                let mut seen: Vec<_> = (0..n)
                    .flat_map(|k| layout(n, k, dedicated).assign(&all).expect("ok"))
                    .collect();
                seen.sort();
                let mut want = all.clone();
                want.sort();
                assert_eq!(seen, want, "n={n} dedicated={dedicated}");
            }
        }
    }

    #[test]
    fn commcare_virtual_worker_vectors() {
        let nk = |v: Vec<Layout>| {
            v.iter()
                .map(|l| (l.process_num, l.num_processes))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            nk(layout(4, 1, true)
                .virtual_workers(3)
                .expect("ok")
                .expect("workers")),
            [(1, 10), (2, 10), (3, 10)]
        );
        assert_eq!(
            nk(layout(4, 1, false)
                .virtual_workers(3)
                .expect("ok")
                .expect("workers")),
            [(3, 12), (4, 12), (5, 12)]
        );
        assert_eq!(layout(4, 0, true).virtual_workers(3).expect("ok"), None);
        assert!(layout(4, 1, false).virtual_workers(1).is_err());
    }

    #[test]
    fn impossible_layouts_are_rejected() {
        assert!(layout(1, 0, true).validate().is_err());
        assert!(layout(3, 3, false).validate().is_err());
        assert!(layout(0, 0, false).validate().is_err());
        assert!(layout(2, 1, true).validate().is_ok());
    }
}
