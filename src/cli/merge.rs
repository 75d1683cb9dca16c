//! `pillowtop merge SOURCE... TARGET`: CommCare's `merge_pillow_checkpoints` over
//! [`crate::ops::merge`], with its questions and exit statuses (1 declined, 2 the sources'
//! partitions disagree, 3 the reprocessing was declined). Ours: `merge SOURCE TARGET --processor
//! NAME [--online]` takes a processor split out of TARGET into SOURCE back
//! ([`crate::ops::handover::prepare_merge`]).

use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::conn::{Confirm, Conn};
use super::ui::{
    self, confirm_and_apply, print_table, py_list, Accept, Confirmation, Report, Say, Step, Ui,
};
use crate::ops::handover::{self, ProcessorMergePlan};
use crate::ops::merge::{self as core, MergePlan};
use crate::pg::Pg;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// The source checkpoint ids followed by the target checkpoint id.
    #[arg(required = true, value_name = "SOURCE... TARGET")]
    pub ids: Vec<String>,
    /// The topics the target pillow reads (comma-separated): only they are checked and
    /// written.
    #[arg(long, value_delimiter = ',')]
    pub topics: Option<Vec<String>>,
    /// Take back this processor only (ours): SOURCE is the pillow it was split into, TARGET the
    /// pillow it was split out of, which runs it again from its position in SOURCE.
    #[arg(long, value_name = "NAME", conflicts_with = "topics")]
    pub processor: Option<String>,
    /// With --processor: while the pillows run (either processor_checkpoints mode): SOURCE
    /// stops the processor at a chunk boundary after its final checkpoint, TARGET takes it
    /// back at one; their other processors never stop.
    #[arg(long, requires = "processor")]
    pub online: bool,
    /// With --online: seconds to wait for the live processes.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
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
    Ok(apply(&args, ui, &super::ctrl_c_token())
        .await?
        .outcome
        .status())
}

/// Plans the merge, shows it, asks, and applies it. `stop` ends an online merge's wait (the
/// request is withdrawn if nothing was handed back yet).
pub async fn apply(
    args: &Args,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<Report<Merge>> {
    let pg = args.conn.pg()?;
    if let Some(processor) = &args.processor {
        return merge_processor(&pg, args, processor, ui, stop).await;
    }
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

/// `--processor NAME [--online]`: a split processor taken back ([`crate::ops::handover`]).
async fn merge_processor(
    pg: &Arc<Pg>,
    args: &Args,
    processor: &str,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<Report<Merge>> {
    let c = &args.confirm;
    let [source, target] = args.ids.as_slice() else {
        bail!(
            "--processor takes one processor from one pillow back into another: give SOURCE TARGET, not {} ids",
            args.ids.len()
        );
    };
    let plan = handover::prepare_merge(
        pg,
        source,
        processor,
        target,
        args.online,
        c.force || c.dry_run,
    )
    .await?;
    let mut notes = Vec::new();
    let live = plan.source_live.len() + plan.target_live.len();
    if live > 0 && !args.online && c.dry_run {
        notes.push(format!(
            "note: {live} live processes of {source} and {target}: applying this would be refused (stop them first, or add --online)"
        ));
    }
    let max = plan.max_reprocess();
    let steps = if max > 0 {
        vec![
            Step::Note(format!(
                "{target}'s other processors will see again up to {max} changes of a partition (one shared checkpoint: it moves back to the processor's position)"
            )),
            Step::Ask {
                question: "Is this amount of reprocessing acceptable y/N?".into(),
                accept: Accept::Y,
                status: super::REPROCESSING_DECLINED,
                declined_message: None,
            },
        ]
    } else {
        Vec::new()
    };
    let timeout = std::time::Duration::from_secs(args.timeout);
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: &plan,
            forced: &[],
            text: &print_processor_plan,
            notes,
            nothing_to_do: None,
            steps,
        },
        || async {
            let say = Say::new(ui, c.json);
            let mut last = None;
            let done = handover::apply_merge(pg, &plan, timeout, stop, |p| {
                if last != Some(p) {
                    last = Some(p);
                    say.say(&format!(
                        "handed back {} and taken back {} of {} partitions",
                        p.handed_back, p.taken_back, p.partitions
                    ));
                }
            })
            .await?;
            say.say(&format!(
                "processor {processor} runs in {target} again: {} partitions taken back from {source}; remove it from {source}'s definition at its next deploy (until then {source} skips it)",
                done.partitions
            ));
            Ok(Merge {
                target: target.clone(),
                max_reprocess: max,
            })
        },
    )
    .await
}

/// The processor merge's plan as text.
pub fn print_processor_plan(ui: &dyn Ui, plan: &ProcessorMergePlan) {
    let side = |id: &str, live: usize, what: &str| {
        if live == 0 {
            format!("{id} is stopped: done here")
        } else {
            format!("{id} runs ({live} live processes): {what}")
        }
    };
    ui.out(&format!(
        "merge processor {} of {} back into {}, which it was split out of:",
        plan.processor, plan.source, plan.target
    ));
    ui.out(&format!(
        "  {}",
        side(
            &plan.source,
            plan.source_live.len(),
            "each stops the processor after its current chunk and hands its partitions back"
        )
    ));
    ui.out(&format!(
        "  {}",
        side(
            &plan.target,
            plan.target_live.len(),
            "each takes it back at a chunk boundary, from the lower of its rows and the processor's"
        )
    ));
    ui.out(&format!(
        "  {} keeps {}",
        plan.target,
        if plan.independent {
            "a checkpoint per processor: its other processors see nothing again"
        } else {
            "one shared checkpoint: it moves back to the processor's position where that is lower"
        }
    ));
    let show = |o: Option<i64>| o.map_or_else(|| "-".into(), |o| o.to_string());
    print_table(
        ui,
        &[
            "topic",
            "partition",
            "processor",
            "pillow",
            "merged",
            "reprocess",
        ],
        plan.partitions
            .iter()
            .map(|p| {
                vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    show(p.processor_offset),
                    show(p.pillow_offset),
                    show(p.merged_offset),
                    p.reprocess.to_string(),
                ]
            })
            .collect(),
    );
}
