//! CPU seconds of the bench process and of the local servers, from /proc, so a bench phase can
//! report CPU per change beside changes/s (on a 2-core box the servers share the cores, and
//! throughput alone swings with whatever else runs).
//!
//! The servers are found by the pid files of `tests/services/up` (`.services/pids/*.pid`, or
//! `$PILLOWTOP_SERVICES_DIR/pids`). PostgreSQL counts the postmaster and every child (backends,
//! writers): live children by their own times, exited ones through the postmaster's
//! `cutime`/`cstime` once it has reaped them. Kafka and the search node are one JVM each.

use std::path::PathBuf;

/// The processes measured, in print order.
pub(crate) const NAMES: [&str; 4] = ["bench", "broker", "postgres", "search"];

/// CPU seconds (user + system) per process group, at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample(pub(crate) [f64; 4]);

impl std::ops::Sub for Sample {
    type Output = Sample;
    fn sub(self, o: Sample) -> Sample {
        let mut out = [0.0; 4];
        for (i, v) in out.iter_mut().enumerate() {
            *v = (self.0[i] - o.0[i]).max(0.0);
        }
        Sample(out)
    }
}

impl Sample {
    pub(crate) fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

/// The pids to sample (`None`: not running or not found; it then counts 0).
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    broker: Option<i32>,
    postgres: Option<i32>,
    search: Option<i32>,
}

impl Probe {
    pub(crate) fn new() -> Self {
        let dir = std::env::var_os("PILLOWTOP_SERVICES_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".services"),
            PathBuf::from,
        );
        let pid = |name: &str| -> Option<i32> {
            let p: i32 = std::fs::read_to_string(dir.join("pids").join(format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            std::path::Path::new(&format!("/proc/{p}"))
                .exists()
                .then_some(p)
        };
        Self {
            broker: pid("kafka"),
            postgres: pid("postgres"),
            search: pid("search"),
        }
    }

    /// Which servers were found (for the bench's header line).
    pub(crate) fn describe(&self) -> String {
        format!(
            "broker pid {:?}, postgres pid {:?}, search pid {:?}",
            self.broker, self.postgres, self.search
        )
    }

    pub(crate) fn sample(&self) -> Sample {
        let own = stat(std::process::id().try_into().unwrap_or(0)).map_or(0.0, |s| s.own);
        let one = |p: Option<i32>| p.and_then(stat).map_or(0.0, |s| s.own);
        let postgres = self.postgres.map_or(0.0, |pm| {
            let main = stat(pm).map_or(0.0, |s| s.own + s.children);
            let kids: f64 = children(pm)
                .into_iter()
                .filter_map(stat)
                .map(|s| s.own + s.children)
                .sum();
            main + kids
        });
        Sample([own, one(self.broker), postgres, one(self.search)])
    }
}

struct Stat {
    ppid: i32,
    /// utime + stime, seconds.
    own: f64,
    /// cutime + cstime (reaped children), seconds.
    children: f64,
}

fn ticks_per_second() -> f64 {
    100.0 // USER_HZ on Linux
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) as f64;
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        own: (n(11) + n(12)) / ticks_per_second(),
        children: (n(13) + n(14)) / ticks_per_second(),
    })
}

fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// Runs `f`, timing it and sampling the CPU of every process before and after.
#[allow(dead_code)] // not every bench that reads the CPU times phases this way
pub(crate) async fn measure<F, Fut>(
    probe: &Probe,
    f: F,
) -> anyhow::Result<(std::time::Duration, Sample)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    quiesce(probe).await;
    let (c0, t0) = (probe.sample(), std::time::Instant::now());
    f().await?;
    let time = t0.elapsed();
    // The phase's connections close as it ends: their backends' CPU is counted once they have
    // exited and the postmaster has reaped them (a backend caught exiting shows no times).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok((time, probe.sample() - c0))
}

/// Waits (up to 15 s) until the servers are nearly idle (< 10% of a core over 0.5 s), so a phase
/// is not charged with the previous phase's background work (the search node's merges and
/// refreshes, PostgreSQL's checkpointer and autovacuum).
#[allow(dead_code)]
pub(crate) async fn quiesce(probe: &Probe) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let before = probe.sample();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let d = probe.sample() - before;
        if d.total() - d.0[0] < 0.05 {
            return;
        }
    }
}
