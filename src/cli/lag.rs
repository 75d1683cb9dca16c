//! `pillowtop lag [ID...]` (alias `status`) over [`crate::ops::lag`]: the lag table, once or
//! every `--interval` seconds, and CommCare's lag gauges in Prometheus format with
//! `--metrics-port`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, KafkaConn};
use super::ui::{print_table, Ui};
use crate::metrics::MemoryRecorder;
use crate::ops::lag::{self as core, LagRow};
use crate::ops::prometheus;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Checkpoint ids (default: all).
    pub ids: Vec<String>,
    #[arg(long)]
    pub json: bool,
    /// Repeat every this many seconds (default 120 with --metrics-port).
    #[arg(long)]
    pub interval: Option<u64>,
    /// Serve the gauges on this port (all interfaces) at /metrics.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// Stop after this many rounds (with --interval or --metrics-port).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// The topics of the given pillows: a checkpoint id without rows (a pillow that never ran)
    /// is shown with these topics' partitions as "no checkpoint yet".
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Per checkpoint id, its topics (the Django front passes each pillow's); else `--topics`.
    #[arg(skip)]
    pub topics_by_id: std::collections::BTreeMap<String, Vec<String>>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let pg = a.conn.pg()?;
    let kafka = a.kafka.info()?;
    let ids = (!a.ids.is_empty()).then(|| a.ids.clone());
    let current: Arc<std::sync::Mutex<Arc<MemoryRecorder>>> = Arc::default();
    let token = CancellationToken::new();
    if let Some(port) = a.metrics_port {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("listening on port {port}"))?;
        ui.err(&format!(
            "serving metrics on http://{}/metrics",
            listener.local_addr()?
        ));
        let cur = current.clone();
        tokio::spawn(prometheus::serve(
            listener,
            move || {
                let rec = cur.lock().map(|r| r.clone()).unwrap_or_default();
                prometheus::render(&rec.snapshot())
            },
            token.clone(),
        ));
    }
    let every = a.interval.or(a.metrics_port.map(|_| 120));
    let mut round = 0u64;
    loop {
        let rows = core::collect(&pg, &kafka, ids.as_deref()).await?;
        let rec = Arc::new(MemoryRecorder::new());
        core::record(&rows, &*rec);
        if a.metrics_port.is_some() {
            core::record_error_queue(&core::error_queue(&pg).await?, &*rec);
        }
        if let Ok(mut c) = current.lock() {
            *c = rec;
        }
        let never = never_run(&kafka, &a, &rows).await;
        if a.json {
            ui.out(&serde_json::to_string(&rows)?);
            for (id, tps) in &never {
                ui.err(&format!(
                    "checkpoint {id}: no checkpoint yet ({} partitions)",
                    tps.len()
                ));
            }
        } else {
            print_rows_and_never_run(ui, &rows, &never);
        }
        round += 1;
        let Some(secs) = every else { break };
        if a.rounds.is_some_and(|n| round >= n) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    token.cancel();
    Ok(0)
}

/// The requested checkpoint ids without rows (pillows that never ran), each with the partitions
/// of its topics and their high-water marks (none when its topics are unknown or Kafka cannot
/// say).
async fn never_run(
    kafka: &crate::ops::kafka::KafkaInfo,
    a: &Args,
    rows: &[LagRow],
) -> Vec<(String, Vec<(crate::partition::TopicPartition, Option<i64>)>)> {
    let mut out = Vec::new();
    for id in &a.ids {
        if rows.iter().any(|r| r.checkpoint_id == *id) {
            continue;
        }
        let topics = a.topics_by_id.get(id).unwrap_or(&a.topics);
        let tps = if topics.is_empty() {
            Vec::new()
        } else {
            kafka.partitions(topics).await.unwrap_or_default()
        };
        let high = kafka.watermarks_of_existing(&tps).await.unwrap_or_default();
        let with_high = tps
            .into_iter()
            .map(|tp| {
                let h = high.get(&tp).map(|w| w.high);
                (tp, h)
            })
            .collect();
        out.push((id.clone(), with_high));
    }
    out
}

type NeverRun = [(String, Vec<(crate::partition::TopicPartition, Option<i64>)>)];

/// The lag table: one row per checkpoint and partition (also the demo's final table).
pub fn print_rows(ui: &dyn Ui, rows: &[LagRow]) {
    print_rows_and_never_run(ui, rows, &[]);
}

/// The lag table, then a row per partition of each pillow that never ran ("no checkpoint yet";
/// its lag is everything Kafka retains).
fn print_rows_and_never_run(ui: &dyn Ui, rows: &[LagRow], never: &NeverRun) {
    let mut table: Vec<Vec<String>> = rows.iter().map(row_cells).collect();
    for (id, tps) in never {
        if tps.is_empty() {
            table.push(vec![
                id.clone(),
                "-".into(),
                "-".into(),
                "(all)".into(),
                "no checkpoint yet".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "(no live process)".into(),
                "-".into(),
            ]);
        }
        for (tp, high) in tps {
            table.push(vec![
                id.clone(),
                tp.topic.clone(),
                tp.partition.to_string(),
                "(all)".into(),
                "no checkpoint yet".into(),
                high.map_or_else(|| "(no partition)".into(), |h| h.to_string()),
                "-".into(),
                "-".into(),
                "-".into(),
                "(no live process)".into(),
                "-".into(),
            ]);
        }
    }
    print_table(
        ui,
        &[
            "checkpoint",
            "topic",
            "partition",
            "processor",
            "offset",
            "high-water mark",
            "lag",
            "since checkpoint",
            "time lag",
            "owner",
            "state",
        ],
        table,
    );
}

fn row_cells(r: &LagRow) -> Vec<String> {
    vec![
        r.checkpoint_id.clone(),
        r.topic.clone(),
        r.partition.to_string(),
        r.processor.clone().unwrap_or_else(|| "(all)".into()),
        r.offset.to_string(),
        r.high
            .map_or_else(|| "(no partition)".into(), |h| h.to_string()),
        r.lag.map_or_else(|| "-".into(), |l| l.to_string()),
        format!("{}s", r.seconds_since_checkpoint),
        r.time_lag_seconds
            .map_or_else(|| "-".into(), |s| format!("{s}s")),
        r.owner
            .clone()
            .unwrap_or_else(|| "(no live process)".into()),
        state_cell(r),
    ]
}

/// A processor's read state and stall (`-` for the pillow's rows and when nothing is known).
fn state_cell(r: &LagRow) -> String {
    let mut parts: Vec<String> = Vec::new();
    match r.read {
        Some("detached") => parts.push("detached: own consumer".into()),
        Some(read) => parts.push(format!("{read} read")),
        None => {}
    }
    if r.stalled {
        parts.push(format!(
            "STALLED: no progress for {}s",
            r.seconds_since_checkpoint
        ));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}
