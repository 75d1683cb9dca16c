//! `pillowtop history snapshot|list|restore` over [`crate::store::history`] and
//! [`crate::ops::history`]: CommCare's daily checkpoint history and `fix_checkpoints_from_date`.

use chrono::{NaiveDate, Utc};
use clap::Subcommand;
use serde::Serialize;

use super::conn::{Confirm, Conn};
use super::ui::{confirm_and_apply, print_table, Accept, Confirmation, Report, Say, Step, Ui};
use crate::ops::history::{self as core, RestorePlan};
use crate::store::history::postgres::PostgresHistoryStore;
use crate::store::history::{HistoryStore, KEEP_DAYS};

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Record today's snapshot of every checkpoint and prune records older than --keep-days
    /// (CommCare's create_historical_checkpoints). Running pillows already record their own
    /// checkpoint once a day; this records every checkpoint at once (stopped pillows too).
    Snapshot(SnapshotArgs),
    /// The recorded days, newest first.
    List(ListArgs),
    /// Restore checkpoints from their newest snapshot on or before a date.
    #[command(
        after_help = "Exit status: 0 done or dry run; 1 the question was declined; 4 refused or failed"
    )]
    Restore(RestoreArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// Record under this date instead of today (UTC).
    #[arg(long)]
    pub date: Option<NaiveDate>,
    #[arg(long, default_value_t = KEEP_DAYS)]
    pub keep_days: u32,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Only this checkpoint.
    pub checkpoint_id: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    #[arg(long)]
    pub date: NaiveDate,
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn exec(cmd: Command, ui: &dyn Ui) -> anyhow::Result<u8> {
    match cmd {
        Command::Snapshot(a) => {
            let date = a.date.unwrap_or_else(|| Utc::now().date_naive());
            let s = PostgresHistoryStore::new(a.conn.pg()?)
                .snapshot(date, a.keep_days)
                .await?;
            ui.out(&format!(
                "recorded {} checkpoint rows under {}; pruned {} records older than {} days",
                s.rows, s.date, s.pruned, a.keep_days
            ));
            Ok(0)
        }
        Command::List(a) => {
            let entries = PostgresHistoryStore::new(a.conn.pg()?)
                .list(a.checkpoint_id.as_deref())
                .await?;
            if a.json {
                ui.out(&serde_json::to_string_pretty(&entries)?);
            } else {
                print_table(
                    ui,
                    &["date", "checkpoint", "rows", "sum of offsets"],
                    entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.date.to_string(),
                                e.checkpoint_id.clone(),
                                e.rows.to_string(),
                                e.offsets_total.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(0)
        }
        Command::Restore(a) => Ok(restore(&a, ui).await?.outcome.status()),
    }
}

/// What an applied restore wrote, per checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    pub checkpoint_id: String,
    pub date: NaiveDate,
    pub rows_restored: u64,
}

/// Plans the restore (refusing while a pillow runs, unless `--force`), shows it, asks, applies.
pub async fn restore(a: &RestoreArgs, ui: &dyn Ui) -> anyhow::Result<Report<Vec<Restored>>> {
    let pg = a.conn.pg()?;
    let c = &a.confirm;
    let (plans, forced) = core::prepare_restore(&pg, &a.ids, a.date, c.force || c.dry_run).await?;
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: plans.as_slice(),
            forced: &forced,
            text: &print_plans,
            notes: Vec::new(),
            nothing_to_do: None,
            steps: vec![Step::ask(
                "Restore these checkpoints? Type 'yes' to continue:",
                Accept::Yes,
            )],
        },
        || async {
            let mut done = Vec::new();
            for p in &plans {
                let n = core::apply_restore(&pg, p).await?;
                Say::new(ui, c.json).say(&format!(
                    "checkpoint {}: {n} rows restored from {}",
                    p.checkpoint_id, p.date
                ));
                done.push(Restored {
                    checkpoint_id: p.checkpoint_id.clone(),
                    date: p.date,
                    rows_restored: n,
                });
            }
            Ok(done)
        },
    )
    .await
}

fn print_plans(ui: &dyn Ui, plans: &[RestorePlan]) {
    for p in plans {
        ui.out(&format!(
            "restore checkpoint {} from the snapshot of {}",
            p.checkpoint_id, p.date
        ));
        print_table(
            ui,
            &["topic", "partition", "current", "restored"],
            p.rows
                .iter()
                .map(|r| {
                    vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.current
                            .map_or_else(|| "(no row)".into(), |o| o.to_string()),
                        r.new.to_string(),
                    ]
                })
                .collect(),
        );
        for k in &p.kept {
            ui.out(&format!(
                "  kept: {},{} at {} (not in the snapshot)",
                k.topic, k.partition, k.offset
            ));
        }
    }
}
