//! CommCare's checkpoint fixes over [`crate::ops::fix`]: `fix-checkpoint-after-rewind`,
//! `fix-checkpoints-from-date`, `fix-checkpoints-from-file`. Each prints the plan (current and
//! new offset per partition, rows kept), asks CommCare's questions (`y` or `yes`), and writes each
//! checkpoint in one transaction; refuses while a pillow involved has a live process unless
//! `--force`.

use anyhow::Context;
use chrono::NaiveDate;
use serde::Serialize;

use super::conn::{Confirm, Conn};
use super::ui::{confirm_and_apply, print_table, Accept, Confirmation, Report, Say, Step, Ui};
use crate::ops::fix::{self as core, FixPlan, FixSource};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct AfterRewindArgs {
    /// The checkpoint id.
    pub checkpoint_id: String,
    /// The maximum of each partition over the newest 10 snapshots, instead of the snapshot with
    /// the largest sum of offsets.
    #[arg(long)]
    pub by_partition: bool,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct FromDateArgs {
    /// The date (YYYY-MM-DD): each checkpoint goes back to its newest snapshot before it.
    pub date: NaiveDate,
    /// The checkpoint ids (default: every checkpoint with a snapshot before the date, after an
    /// extra question).
    pub ids: Vec<String>,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct FromFileArgs {
    /// A JSON file `{checkpoint_id: {"topic,partition": offset}}`.
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
}

/// What an applied fix wrote, per checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fixed {
    pub checkpoint_id: String,
    pub source: String,
    pub rows_written: u64,
}

/// CommCare's question form: `<msg> Type ['y', 'yes'] to continue.`
fn question(msg: &str) -> Step {
    Step::ask(
        format!("{msg} Type ['y', 'yes'] to continue."),
        Accept::YOrYes,
    )
}

pub async fn exec_after_rewind(a: AfterRewindArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(after_rewind(&a, ui).await?.outcome.status())
}

pub async fn exec_from_date(a: FromDateArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(from_date(&a, ui).await?.outcome.status())
}

pub async fn exec_from_file(a: FromFileArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(from_file(&a, ui).await?.outcome.status())
}

/// `fix_checkpoint_after_rewind`: CommCare's two questions, then the historical maximum.
pub async fn after_rewind(a: &AfterRewindArgs, ui: &dyn Ui) -> anyhow::Result<Report<Vec<Fixed>>> {
    let id = &a.checkpoint_id;
    let steps = vec![
        question(&format!(
            "Are you sure you want to reset the checkpoint for the '{id}' pillow?"
        )),
        question("Have you stopped the pillow?"),
    ];
    let source = FixSource::AfterRewind {
        by_partition: a.by_partition,
    };
    fix(
        ui,
        &a.conn,
        &a.confirm,
        std::slice::from_ref(id),
        &source,
        steps,
    )
    .await
}

/// `fix_checkpoints_from_date`: the newest snapshot before the date, for the given checkpoints
/// or (after an extra question) every checkpoint with a history.
pub async fn from_date(a: &FromDateArgs, ui: &dyn Ui) -> anyhow::Result<Report<Vec<Fixed>>> {
    let mut steps = Vec::new();
    let ids = if a.ids.is_empty() {
        let ids = core::ids_with_history(&a.conn.pg()?, a.date).await?;
        if ids.is_empty() {
            anyhow::bail!(
                "no checkpoint has a history snapshot before {}: nothing to fix from",
                a.date
            );
        }
        steps.push(question(
            "No pillows specified, are you sure you want to reset all pillows?",
        ));
        ids
    } else {
        a.ids.clone()
    };
    steps.push(question(&format!(
        "Are you sure you want to reset the checkpoints of {} to their snapshots before {}?",
        super::ui::py_list(&ids),
        a.date
    )));
    fix(
        ui,
        &a.conn,
        &a.confirm,
        &ids,
        &FixSource::BeforeDate(a.date),
        steps,
    )
    .await
}

/// `fix_checkpoints_from_file`: the offsets of a JSON file.
pub async fn from_file(a: &FromFileArgs, ui: &dyn Ui) -> anyhow::Result<Report<Vec<Fixed>>> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading the checkpoint file {}", a.file.display()))?;
    from_json(&text, &a.conn, &a.confirm, ui).await
}

/// `fix_checkpoints_from_file` with the file's text (the Django command maps pillow names to
/// checkpoint ids first).
pub async fn from_json(
    text: &str,
    conn: &Conn,
    confirm: &Confirm,
    ui: &dyn Ui,
) -> anyhow::Result<Report<Vec<Fixed>>> {
    let given = core::parse_fix_file(text)?;
    let ids: Vec<String> = given.keys().cloned().collect();
    let steps = vec![question(&format!(
        "Are you sure you want to set the checkpoints of {} as shown?",
        super::ui::py_list(&ids)
    ))];
    fix(ui, conn, confirm, &ids, &FixSource::Given(given), steps).await
}

async fn fix(
    ui: &dyn Ui,
    conn: &Conn,
    c: &Confirm,
    ids: &[String],
    source: &FixSource,
    steps: Vec<Step>,
) -> anyhow::Result<Report<Vec<Fixed>>> {
    let pg = conn.pg()?;
    let (plans, forced) = core::prepare_fix(&pg, ids, source, c.force).await?;
    let noop = plans.iter().all(FixPlan::is_noop);
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: plans.as_slice(),
            forced: &forced,
            text: &print_plans,
            notes: Vec::new(),
            nothing_to_do: noop
                .then_some("nothing to do: the checkpoints already hold these offsets"),
            steps,
        },
        || async {
            let mut done = Vec::new();
            for p in &plans {
                let n = core::apply_fix(&pg, p).await?;
                Say::new(ui, c.json).say(&format!(
                    "checkpoint {}: {n} rows set from {}",
                    p.checkpoint_id, p.source
                ));
                done.push(Fixed {
                    checkpoint_id: p.checkpoint_id.clone(),
                    source: p.source.clone(),
                    rows_written: n,
                });
            }
            Ok(done)
        },
    )
    .await
}

fn print_plans(ui: &dyn Ui, plans: &[FixPlan]) {
    for p in plans {
        ui.out(&format!(
            "set checkpoint {} from {}",
            p.checkpoint_id, p.source
        ));
        print_table(
            ui,
            &["topic", "partition", "current", "new"],
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
                "  kept: {},{} at {} (not in the source)",
                k.topic, k.partition, k.offset
            ));
        }
    }
}
