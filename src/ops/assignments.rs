//! `pillow_topic_assignments`: which process (and virtual worker) reads which partitions, computed
//! by the same layout function the runner uses ([`Layout::assign`]), including the dedicated
//! migration process that CommCare's command ignored (docs/commcare-pillowtop.md §9 #20, #21).

use serde::Serialize;

use super::Result;
use crate::feed::assignment::Layout;
use crate::feed::TopicPartition;

/// The partitions of one process, or of one virtual worker of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessAssignment {
    pub process_num: u32,
    /// The virtual worker inside the process, with `--workers`.
    pub worker: Option<u32>,
    /// The dedicated migration process reads nothing.
    pub migration: bool,
    pub partitions: Vec<TopicPartition>,
}

/// The layout of `num_processes` processes over `all` partitions.
pub fn plan_assignments(
    all: &[TopicPartition],
    num_processes: u32,
    dedicated: bool,
    workers: Option<u32>,
) -> Result<Vec<ProcessAssignment>> {
    let mut out = Vec::new();
    for k in 0..num_processes.max(1) {
        let layout = Layout {
            num_processes,
            process_num: k,
            dedicated_migration_process: dedicated,
        };
        layout.validate()?;
        if layout.is_migration_process() {
            out.push(ProcessAssignment {
                process_num: k,
                worker: None,
                migration: true,
                partitions: Vec::new(),
            });
            continue;
        }
        match workers {
            Some(w) => {
                for (i, wl) in layout
                    .virtual_workers(w)?
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    out.push(ProcessAssignment {
                        process_num: k,
                        worker: Some(u32::try_from(i).unwrap_or(u32::MAX)),
                        migration: false,
                        partitions: wl.assign(all)?,
                    });
                }
            }
            None => out.push(ProcessAssignment {
                process_num: k,
                worker: None,
                migration: false,
                partitions: layout.assign(all)?,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new("case-sql", p)).collect()
    }

    fn nums(a: &ProcessAssignment) -> Vec<i32> {
        a.partitions.iter().map(|tp| tp.partition).collect()
    }

    #[test]
    fn dedicated_layout_and_workers() {
        let a = plan_assignments(&parts(6), 3, true, None).expect("ok");
        assert!(a[0].migration && a[0].partitions.is_empty());
        assert_eq!(nums(&a[1]), [0, 2, 4]);
        assert_eq!(nums(&a[2]), [1, 3, 5]);
        let w = plan_assignments(&parts(8), 2, false, Some(2)).expect("ok");
        let got: Vec<(u32, Option<u32>, Vec<i32>)> = w
            .iter()
            .map(|a| (a.process_num, a.worker, nums(a)))
            .collect();
        assert_eq!(
            got,
            [
                (0, Some(0), vec![0, 4]),
                (0, Some(1), vec![1, 5]),
                (1, Some(0), vec![2, 6]),
                (1, Some(1), vec![3, 7])
            ]
        );
        assert!(plan_assignments(&parts(4), 1, true, None).is_err());
        assert!(plan_assignments(&parts(4), 0, false, None).is_err());
    }
}
