//! Checkpoint operations at production scale against the real PostgreSQL: split one pillow into
//! 100 and merge 100 pillows into one, 128 partitions each (12,800 rows), timing plan + apply
//! (one transaction each). Goal: well under a second.
//!
//! `cargo bench --features testing --bench ops` (needs `TEST_POSTGRES_URL`; skipped with a
//! message when it is unset, a failure when `CI` is set).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pillowtop::ops::merge::{apply_merge, prepare_merge};
use pillowtop::ops::split::{apply_split, prepare_split, SplitTarget};
use pillowtop::pg::Pg;
use pillowtop::testing::unique_name;

const PILLOWS: usize = 100;
const PARTITIONS: i32 = 128;
const ROUNDS: usize = 5;
const GOAL: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let Some(url) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        anyhow::ensure!(
            std::env::var("CI").map_or(true, |v| v.is_empty()),
            "TEST_POSTGRES_URL is not set: run tests/services/up and source .services/env (CI must not skip)"
        );
        eprintln!("skipping the ops bench: TEST_POSTGRES_URL is not set (run tests/services/up and source .services/env)");
        return Ok(());
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&url))
}

struct Timing {
    label: String,
    rows: usize,
    plan: Vec<Duration>,
    apply: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

async fn run(url: &str) -> anyhow::Result<()> {
    let pg = Arc::new(Pg::new(url));
    pillowtop::store::schema::ensure_schema(&pg).await?;
    let prefix = unique_name("bench_ops");
    let source = format!("{prefix}_source");
    let targets: Vec<String> = (0..PILLOWS).map(|i| format!("{prefix}_t{i:03}")).collect();
    let merged = format!("{prefix}_merged");
    let topic = "bench-case-sql";

    // The source pillow: 128 partitions at assorted offsets.
    let c = pg.fresh_client().await?;
    c.execute(
        r#"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "partition", "offset", last_modified)
           SELECT $1, $2, p, 1000000 + p * 37, now() FROM generate_series(0, $3 - 1) AS p"#,
        &[&source, &topic, &PARTITIONS],
    )
    .await?;

    let result = async {
        let split_targets: Vec<SplitTarget> = targets.iter().map(SplitTarget::new).collect();
        let mut split = Timing {
            label: format!("split 1 → {PILLOWS} pillows × {PARTITIONS} partitions"),
            rows: PILLOWS * usize::try_from(PARTITIONS)?,
            plan: Vec::new(),
            apply: Vec::new(),
        };
        // Round 1 writes new targets; later rounds replace existing ones (delete + write).
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let (plan, _) = prepare_split(&pg, &source, &split_targets, false).await?;
            split.plan.push(t.elapsed());
            let t = Instant::now();
            let n = apply_split(&pg, &plan).await?;
            split.apply.push(t.elapsed());
            anyhow::ensure!(usize::try_from(n)? == split.rows, "split wrote {n} rows");
        }
        // Let the targets drift apart so the merge has reprocessing to compute.
        c.execute(
            r#"UPDATE pillowtop_kafkacheckpoint SET "offset" = "offset" + (hashtext(checkpoint_id) & 1023)
               WHERE checkpoint_id LIKE $1"#,
            &[&format!("{prefix}_t%")],
        )
        .await?;
        let mut merge = Timing {
            label: format!("merge {PILLOWS} → 1 pillow × {PARTITIONS} partitions"),
            rows: split.rows,
            plan: Vec::new(),
            apply: Vec::new(),
        };
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let (plan, _) = prepare_merge(&pg, &targets, &merged, None, false).await?;
            merge.plan.push(t.elapsed());
            let t = Instant::now();
            apply_merge(&pg, &plan).await?;
            merge.apply.push(t.elapsed());
        }
        anyhow::Ok(vec![split, merge])
    }
    .await;

    c.execute(
        "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id LIKE $1",
        &[&format!("{prefix}%")],
    )
    .await?;
    let timings = result?;

    println!("\ncheckpoint operations against PostgreSQL ({ROUNDS} rounds; plan = read rows + liveness + plan, apply = one transaction)\n");
    println!("| operation | rows | plan median ms | apply median ms | plan+apply median ms | plan+apply worst ms | goal < 1 s |");
    println!("|---|---|---|---|---|---|---|");
    let mut ok = true;
    for t in &timings {
        let totals: Vec<Duration> = t.plan.iter().zip(&t.apply).map(|(a, b)| *a + *b).collect();
        let worst = totals.iter().max().copied().unwrap_or_default();
        let pass = worst < GOAL;
        ok &= pass;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            t.label,
            t.rows,
            ms(median(&t.plan)),
            ms(median(&t.apply)),
            ms(median(&totals)),
            ms(worst),
            if pass { "pass" } else { "FAIL" }
        );
    }
    anyhow::ensure!(ok, "a checkpoint operation took a second or more");
    Ok(())
}
