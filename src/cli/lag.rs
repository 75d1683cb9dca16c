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
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let pg = a.conn.pg()?;
    let kafka = a.kafka.info()?;
    let ids = (!a.ids.is_empty()).then_some(a.ids);
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
        if a.json {
            ui.out(&serde_json::to_string(&rows)?);
        } else {
            print_rows(ui, &rows);
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

/// The lag table: one row per checkpoint and partition (also the demo's final table).
pub fn print_rows(ui: &dyn Ui, rows: &[LagRow]) {
    print_table(
        ui,
        &[
            "checkpoint",
            "topic",
            "partition",
            "offset",
            "high-water mark",
            "lag",
            "since checkpoint",
            "time lag",
            "owner",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.checkpoint_id.clone(),
                    r.topic.clone(),
                    r.partition.to_string(),
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
                ]
            })
            .collect(),
    );
}
