//! `pillowtop serve --port P`: the status page of every pillow (processes, per-partition
//! checkpoint / high-water mark / lag in offsets and seconds, error rows by type, changes per
//! second over the last hour) at `/`, its data as JSON at `/api/pillows` (CommCare's
//! `get_all_pillows_json` fields plus ours), until Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, KafkaConn};
use super::ui::Ui;
use crate::ops::http::{self, Response};
use crate::ops::status::{self, RateHistory};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The port to serve on.
    #[arg(long, default_value_t = 8020)]
    pub port: u16,
    /// The address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Seconds between the samples of the changes/s chart.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let pg = a.conn.pg()?;
    let kafka = Arc::new(a.kafka.info()?);
    let history = Arc::new(RateHistory::new());
    let listener = tokio::net::TcpListener::bind((a.bind.as_str(), a.port))
        .await
        .with_context(|| format!("listening on {}:{}", a.bind, a.port))?;
    ui.err(&format!(
        "serving the status page on http://{}/ (JSON at /api/pillows); Ctrl-C stops",
        listener.local_addr()?
    ));
    let token = CancellationToken::new();
    let sampler = {
        let (pg, kafka, history, token) =
            (pg.clone(), kafka.clone(), history.clone(), token.clone());
        let every = Duration::from_secs(a.interval.max(1));
        tokio::spawn(async move {
            loop {
                if let Err(e) = status::collect(&pg, &kafka, &history, &status::Names::new()).await
                {
                    tracing::warn!(error = %e, "status sample failed; retrying at the next interval");
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let server = tokio::spawn(http::serve(
        listener,
        move |path: String| {
            let (pg, kafka, history) = (pg.clone(), kafka.clone(), history.clone());
            async move {
                match path.as_str() {
                    "/" | "/index.html" => Response::ok("text/html; charset=utf-8", status::PAGE),
                    "/api/pillows" => {
                        match status::collect(&pg, &kafka, &history, &status::Names::new()).await {
                            Ok(s) => match serde_json::to_vec(&s) {
                                Ok(body) => Response::ok("application/json", body),
                                Err(e) => {
                                    Response::error(500, format!("cannot encode the status: {e}"))
                                }
                            },
                            Err(e) => Response::error(503, format!("cannot read the status: {e}")),
                        }
                    }
                    other => Response::error(404, format!("no page at {other}")),
                }
            }
        },
        token.clone(),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    token.cancel();
    let _ = sampler.await;
    let _ = server.await;
    Ok(0)
}
