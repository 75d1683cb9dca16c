//! `pillowtop doctor ID...` over [`crate::ops::doctor`]: samples each pillow twice, `--interval`
//! seconds apart, and says which processor holds it back, how long catching up takes with and
//! without a split, and the commands of the split. Exit status 0 when every pillow keeps up (or
//! never ran), [`super::FINDING`] when one falls behind, catches up or is stalled.

use std::time::Duration;

use super::conn::{Conn, KafkaConn};
use super::ui::Ui;
use crate::ops::doctor::{self as core, CommandStyle, Diagnosis, Options};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Checkpoint ids of the pillows to examine.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Seconds between the two samples (the heartbeats that carry each processor's cost come
    /// every 5 s: give at least 10).
    #[arg(long, default_value_t = 15.0)]
    pub interval: f64,
    /// A time lag up to this many seconds that does not grow is "keeping up".
    #[arg(long, default_value_t = 60)]
    pub max_time_lag: u64,
    #[arg(long)]
    pub json: bool,
    /// Spell the commands for Django (`manage.py`, pillow names); the Django front sets it.
    #[arg(skip)]
    pub django: bool,
    /// Per checkpoint id, the pillow's name (the Django front passes them).
    #[arg(skip)]
    pub names: std::collections::BTreeMap<String, String>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let found = examine(&a, ui).await?;
    Ok(if found.iter().any(|d| d.verdict.is_finding()) {
        super::FINDING
    } else {
        0
    })
}

/// Examines every pillow (all sampled at once) and prints the diagnoses (JSON with `--json`).
pub async fn examine(a: &Args, ui: &dyn Ui) -> anyhow::Result<Vec<Diagnosis>> {
    if !(a.interval.is_finite() && a.interval > 0.0 && a.interval <= 3600.0) {
        anyhow::bail!(
            "--interval must be between 0 and 3600 seconds, not {}",
            a.interval
        );
    }
    let pg = a.conn.pg()?;
    let kafka = a.kafka.info()?;
    let options = Options {
        max_time_lag: Duration::from_secs(a.max_time_lag),
        style: if a.django {
            CommandStyle::Django
        } else {
            CommandStyle::Cli
        },
    };
    let interval = Duration::from_secs_f64(a.interval);
    if !a.json {
        ui.err(&format!(
            "sampling {} pillow(s) twice, {:.0} s apart...",
            a.ids.len(),
            a.interval
        ));
    }
    let mut found = Vec::new();
    let all = futures::future::join_all(a.ids.iter().map(|id| {
        let name = a.names.get(id).map(String::as_str);
        core::examine(&pg, &kafka, id, name, interval, options)
    }))
    .await;
    for d in all {
        found.push(d?);
    }
    if a.json {
        ui.out(&serde_json::to_string_pretty(&found)?);
    } else {
        for d in &found {
            for line in core::render(d) {
                ui.out(&line);
            }
        }
    }
    Ok(found)
}
