//! `pillowtop validate [ID...]`: CommCare's `validate_kafka_pillow_checkpoints` over
//! [`crate::ops::validate`]; exit status 5 when a checkpoint is older than what Kafka retains.

use super::conn::{Conn, KafkaConn};
use super::ui::Ui;
use crate::ops::validate::Problem;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Checkpoint ids (default: all).
    pub ids: Vec<String>,
    /// Skip rows at offset 0, as CommCare does.
    #[arg(long)]
    pub skip_zero: bool,
    /// Report problems but exit 0.
    #[arg(long)]
    pub print_only: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let print_only = a.print_only;
    let problems = check(a, ui).await?;
    Ok(if problems.is_empty() || print_only {
        0
    } else {
        super::INVALID
    })
}

/// Collects and prints the problems (JSON with `--json`); returns them.
pub async fn check(a: Args, ui: &dyn Ui) -> anyhow::Result<Vec<Problem>> {
    let ids = (!a.ids.is_empty()).then_some(a.ids);
    let problems =
        crate::ops::validate::collect(&a.conn.pg()?, &a.kafka.info()?, ids.as_deref(), a.skip_zero)
            .await?;
    if a.json {
        ui.out(&serde_json::to_string_pretty(&problems)?);
    } else if problems.is_empty() {
        ui.out("every checkpoint is within what kafka retains");
    } else {
        for p in &problems {
            ui.out(&p.to_string());
        }
    }
    Ok(problems)
}
