//! `pillowtop split SOURCE TARGET...`: CommCare's `split_pillow_checkpoints` over
//! [`crate::ops::split`], with its "already exist" questions and exit status 1 when declined.

use std::sync::Arc;

use anyhow::bail;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::conn::{Confirm, Conn};
use super::ui::{
    self, confirm_and_apply, print_table, py_list, time, Confirmation, Report, Say, Ui,
};
use crate::ops::handover::{self, ProcessorSplitPlan};
use crate::ops::split::{self as core, SplitPlan, SplitTarget};
use crate::pg::Pg;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// The source checkpoint id.
    pub source: String,
    /// The target checkpoint ids.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// The topics a target reads, to report mismatches: `TARGET=topic1,topic2`, or
    /// `topic1,topic2` for every target. Repeatable.
    #[arg(long = "target-topics", value_name = "[TARGET=]TOPICS")]
    pub target_topics: Vec<String>,
    /// Split out this processor only, with its own position (ours): the one TARGET starts
    /// exactly where the processor stopped, and the source no longer runs it.
    #[arg(long, value_name = "NAME", conflicts_with = "target_topics")]
    pub processor: Option<String>,
    /// With --processor: hand it over while the source runs (either processor_checkpoints
    /// mode); the source's other processors never stop.
    #[arg(long, requires = "processor")]
    pub online: bool,
    /// With --online: seconds to wait for the live processes to hand over.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
}

/// What an applied split wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Split {
    /// Rows of the source copied to each target.
    pub rows_copied: usize,
    /// Rows written in all.
    pub rows_written: u64,
}

pub async fn exec(args: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(apply(&args, ui, &super::ctrl_c_token())
        .await?
        .outcome
        .status())
}

/// Plans the split, shows it, asks, and applies it. `stop` ends an online split's wait (the
/// request is withdrawn if no process took it up).
pub async fn apply(
    args: &Args,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<Report<Split>> {
    let pg = args.conn.pg()?;
    split(&pg, args, ui, stop).await
}

async fn split(
    pg: &Arc<Pg>,
    args: &Args,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<Report<Split>> {
    if let Some(processor) = &args.processor {
        return split_processor(pg, args, processor, ui, stop).await;
    }
    let c = &args.confirm;
    let targets = parse_target_topics(&args.targets, &args.target_topics)?;
    let (plan, forced) =
        core::prepare_split(pg, &args.source, &targets, c.force || c.dry_run).await?;
    let mut notes = Vec::new();
    for m in &plan.source_only_topics {
        notes.push(format!(
            "warning: topics {:?} are copied to {} but its pillow does not read them",
            m.topics, m.checkpoint_id
        ));
    }
    for m in &plan.target_only_topics {
        notes.push(format!(
            "warning: {} reads topics {:?} that {} has no rows for: no rows are written, so {} starts them by its start policy",
            m.checkpoint_id, m.topics, plan.source, m.checkpoint_id
        ));
    }
    let steps = if plan.existing.is_empty() {
        Vec::new()
    } else {
        let header = format!("Some of {} already exist:", py_list(&plan.targets));
        ui::overwrite_steps(header, &plan.existing)
    };
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
            let n = core::apply_split(pg, &plan).await?;
            Say::new(ui, c.json).say(&format!(
                "copied {} rows of {} to {} ({n} rows written in one transaction)",
                plan.rows.len(),
                plan.source,
                py_list(&plan.targets)
            ));
            Ok(Split {
                rows_copied: plan.rows.len(),
                rows_written: n,
            })
        },
    )
    .await
}

/// `--target-topics` specs onto the targets.
fn parse_target_topics(targets: &[String], specs: &[String]) -> anyhow::Result<Vec<SplitTarget>> {
    let mut out: Vec<SplitTarget> = targets.iter().map(SplitTarget::new).collect();
    for spec in specs {
        let (who, topics) = match spec.rsplit_once('=') {
            Some((id, t)) => (Some(id), t),
            None => (None, spec.as_str()),
        };
        let topics: Vec<String> = topics
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let mut matched = false;
        for t in &mut out {
            if who.is_none_or(|w| w == t.checkpoint_id) {
                t.topics.get_or_insert_with(Vec::new).extend(topics.clone());
                matched = true;
            }
        }
        if !matched {
            bail!(
                "--target-topics {spec}: {} is not a target",
                who.unwrap_or_default()
            );
        }
    }
    Ok(out)
}

/// The split plan as text (also the demo's).
pub fn print_plan(ui: &dyn Ui, plan: &SplitPlan) {
    ui.out(&format!(
        "split checkpoint {} into {}: {} rows copied to each target",
        plan.source,
        py_list(&plan.targets),
        plan.rows.len()
    ));
    let per_topic = core::rows_per_topic(&plan.rows);
    print_table(
        ui,
        &["topic", "partitions", "min offset", "max offset"],
        per_topic
            .iter()
            .map(|(t, (n, lo, hi))| vec![t.clone(), n.to_string(), lo.to_string(), hi.to_string()])
            .collect(),
    );
    ui.out("rows copied (next offset to read):");
    print_table(
        ui,
        &["topic", "partition", "offset", "source last modified"],
        plan.rows
            .iter()
            .map(|r| {
                vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.offset.to_string(),
                    time(&r.last_modified),
                ]
            })
            .collect(),
    );
    if plan.existing.is_empty() {
        ui.out("no target has rows: nothing is overwritten");
    } else {
        ui.out("existing target rows (all are replaced):");
        print_table(
            ui,
            &[
                "checkpoint",
                "topic",
                "partition",
                "offset",
                "last modified",
                "after split",
            ],
            plan.existing
                .iter()
                .map(|r| {
                    vec![
                        r.checkpoint_id.clone(),
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.offset.to_string(),
                        time(&r.last_modified),
                        plan.replacement(r)
                            .map_or_else(|| "deleted".into(), |o| o.to_string()),
                    ]
                })
                .collect(),
        );
    }
}

/// `--processor NAME [--online]`: one processor out, with its own position
/// ([`crate::ops::handover`]).
async fn split_processor(
    pg: &Arc<Pg>,
    args: &Args,
    processor: &str,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<Report<Split>> {
    let c = &args.confirm;
    let [target] = args.targets.as_slice() else {
        bail!(
            "--processor moves one processor to one target pillow, not {}",
            args.targets.len()
        );
    };
    let plan = handover::prepare(
        pg,
        &args.source,
        processor,
        target,
        args.online,
        c.force || c.dry_run,
    )
    .await?;
    let mut notes = Vec::new();
    if !plan.live.is_empty() && !args.online && c.dry_run {
        notes.push(format!(
            "note: {} has {} live processes: applying this would be refused (stop it first, or add --online)",
            plan.source,
            plan.live.len()
        ));
    }
    let steps = if plan.existing.is_empty() {
        Vec::new()
    } else {
        let header = format!("{target} already has rows:");
        ui::overwrite_steps(header, &plan.existing)
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
            let mut last = usize::MAX;
            let done = handover::apply(pg, &plan, timeout, stop, |h, wanted| {
                if h.done.len() != last {
                    last = h.done.len();
                    say.say(&format!(
                        "handed over {} of {wanted} partitions",
                        h.done.len()
                    ));
                }
            })
            .await?;
            say.say(&format!(
                "processor {processor} of {} now belongs to {target}: {} partitions handed over with their offsets; start {target} with this processor, and remove it from {}'s definition at its next deploy (until then it skips it)",
                plan.source,
                done.done.len(),
                plan.source
            ));
            Ok(Split {
                rows_copied: done.done.len(),
                rows_written: u64::try_from(done.done.len()).unwrap_or(u64::MAX),
            })
        },
    )
    .await
}

/// The processor split's plan as text.
pub fn print_processor_plan(ui: &dyn Ui, plan: &ProcessorSplitPlan) {
    let how = if plan.live.is_empty() {
        format!("{} is stopped: its rows are handed over now", plan.source)
    } else {
        format!(
            "{} runs ({} live processes): each stops this processor after its current chunk and hands its partitions over; the other processors go on",
            plan.source,
            plan.live.len()
        )
    };
    ui.out(&format!(
        "split processor {} out of {} into {}: {how}",
        plan.processor, plan.source, plan.target
    ));
    if let Some(h) = &plan.pending {
        ui.out(&format!(
            "a request of {} is pending: {} partitions handed over so far",
            time(&h.requested_at),
            h.done.len()
        ));
    }
    ui.out("the processor's position now (next offset to read; its own rows, else the pillow's):");
    print_table(
        ui,
        &["topic", "partition", "offset", "from"],
        plan.position
            .iter()
            .map(|r| {
                vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.offset.to_string(),
                    r.checkpoint_id.clone(),
                ]
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
            "{} rows of {} are overwritten",
            plan.existing.len(),
            plan.target
        ));
    }
}
