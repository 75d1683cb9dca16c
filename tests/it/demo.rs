//! `pillowtop demo`, the README's main job (`bash scripts/demo`), run end to end against the
//! real services so that it cannot rot: publish, the xform pillow into Elasticsearch and
//! PostgreSQL, the lag table, the store checks, the split, both pillows on, the cleanup.

use std::process::Command;

use pillowtop::pg::Pg;

use crate::support::require;

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_and_its_checks_pass() {
    let kafka = require!("TEST_KAFKA_BOOTSTRAP");
    let url = require!("TEST_POSTGRES_URL");
    let es = require!("TEST_ELASTICSEARCH_URL");
    let (k, u) = (kafka.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pillowtop"))
            .args([
                "demo",
                "--changes",
                "2000",
                "--kafka",
                &k,
                "--postgres-url",
                &u,
            ])
            .args(["--elasticsearch-url", &es])
            .output()
            .expect("run pillowtop demo")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for line in [
        "== 1. publish 2000 CommCare-style form changes",
        "published 2000 changes",
        "== 2. run xform-pillow-",
        "== 3. lag table and a query of each store ==",
        "lag 0 on all 8 partitions: ok",
        "postgresql: SELECT domain, count(*), sum(amount)",
        "published 2000 changes: 1960 live forms (20 deleted)",
        "postgresql agrees with the published forms (1960 rows",
        "elasticsearch agrees with the published forms (1960 docs",
        "== 4. split: move the elasticsearch processor into its own pillow xform-es-pillow-",
        "rows copied (next offset to read):",
        "published 500 changes",
        "lag 0 on all 16 partitions: ok",
        "published 2500 changes: 2450 live forms (25 deleted)",
        "postgresql agrees with the published forms (2450 rows",
        "elasticsearch agrees with the published forms (2450 docs",
        "only the 500 published after the split (nothing re-processed): ok",
        "removed topic demo-form-sql-",
    ] {
        assert!(
            stdout.contains(line),
            "missing {line:?} in the demo output:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    assert!(stderr.contains("changes/s"), "no progress line:\n{stderr}");
    // The cleanup removed the checkpoint rows and the table.
    let pillow = stdout
        .split_whitespace()
        .find(|w| w.starts_with("xform-pillow-"))
        .expect("the pillow name")
        .to_owned();
    let c = Pg::new(&url).fresh_client().await.expect("client");
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1",
            &[&pillow],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "checkpoint rows of {pillow} left behind");
    let suffix = pillow.trim_start_matches("xform-pillow-");
    let table: Option<String> = c
        .query_one(
            "SELECT to_regclass($1)::text",
            &[&format!("demo_xform_report_{suffix}")],
        )
        .await
        .expect("regclass")
        .get(0);
    assert_eq!(table, None, "the demo table is left behind");
}
