//! `pillowtop merge SOURCE... TARGET`: CommCare's `merge_pillow_checkpoints` over
//! [`crate::ops::merge`], with its questions and exit statuses (1 declined, 2 the sources'
//! partitions disagree, 3 the reprocessing was declined).

use anyhow::Context;
use serde::Serialize;

use super::conn::{Confirm, Conn};
use super::ui::{
    self, confirm_and_apply, print_table, py_list, Accept, Confirmation, Report, Say, Step, Ui,
};
use crate::ops::merge::{self as core, MergePlan};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// The source checkpoint ids followed by the target checkpoint id.
    #[arg(required = true, value_name = "SOURCE... TARGET")]
    pub ids: Vec<String>,
    /// The topics the target pillow reads (comma-separated): only they are checked and
    /// written.
    #[arg(long, value_delimiter = ',')]
    pub topics: Option<Vec<String>>,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
}

/// What an applied merge wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Merge {
    pub target: String,
    /// The most changes one partition replays.
    pub max_reprocess: i64,
}

pub async fn exec(args: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(apply(&args, ui).await?.outcome.status())
}

/// Plans the merge, shows it, asks, and applies it.
pub async fn apply(args: &Args, ui: &dyn Ui) -> anyhow::Result<Report<Merge>> {
    let pg = args.conn.pg()?;
    let c = &args.confirm;
    let (target, sources) = args
        .ids
        .split_last()
        .context("give the sources and a target")?;
    let (plan, forced) = core::prepare_merge(
        &pg,
        sources,
        target,
        args.topics.as_deref(),
        c.force || c.dry_run,
    )
    .await?;
    let mut notes = Vec::new();
    if !plan.sources_without_rows.is_empty() {
        notes.push(format!(
            "warning: {} have no rows (never run?): they contribute nothing, and their processors start where the other sources are",
            py_list(&plan.sources_without_rows)
        ));
    }
    if !plan.ignored_topics.is_empty() {
        notes.push(format!(
            "note: source rows on topics {:?} are not merged: {} does not read them",
            plan.ignored_topics, plan.target
        ));
    }
    let mut steps = if plan.target_exists() {
        ui::overwrite_steps(format!("{} already exists:", plan.target), &plan.existing)
    } else {
        Vec::new()
    };
    let max = plan.max_reprocess();
    if max > 0 {
        steps.push(Step::Note(format!(
            "At least one checkpoint will need to reprocess {max} changes"
        )));
        steps.push(Step::Ask {
            question: "Is this amount of reprocessing acceptable y/N?".into(),
            accept: Accept::Y,
            status: super::REPROCESSING_DECLINED,
            declined_message: None,
        });
    } else {
        steps.push(Step::Note("All pillows have the same offsets".into()));
    }
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: &plan,
            forced: &forced,
            text: &print_plan,
            notes,
            nothing_to_do: None,
            steps,
        },
        || async {
            core::apply_merge(&pg, &plan).await?;
            Say::new(ui, c.json).say(&format!("{} checkpoints created", plan.target));
            Ok(Merge {
                target: plan.target.clone(),
                max_reprocess: max,
            })
        },
    )
    .await
}

/// The merge plan as text.
pub fn print_plan(ui: &dyn Ui, plan: &MergePlan) {
    ui.out(&format!(
        "merge checkpoints {} into {}: the minimum offset of each partition",
        py_list(&plan.sources),
        plan.target
    ));
    let mut headers = vec!["topic", "partition", "offset", "max", "reprocess"];
    headers.extend(plan.sources.iter().map(String::as_str));
    print_table(
        ui,
        &headers,
        plan.partitions
            .iter()
            .map(|p| {
                let mut v = vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.offset.to_string(),
                    p.max_offset.to_string(),
                    p.reprocess.to_string(),
                ];
                v.extend(plan.sources.iter().map(|s| {
                    p.sources
                        .get(s)
                        .map_or_else(|| "-".into(), ToString::to_string)
                }));
                v
            })
            .collect(),
    );
    if plan.existing.is_empty() {
        ui.out(&format!(
            "{} has no rows: nothing is overwritten",
            plan.target
        ));
    } else {
        ui.out(&format!(
            "{} has {} rows; all are replaced",
            plan.target,
            plan.existing.len()
        ));
    }
}
