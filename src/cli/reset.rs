//! `pillowtop reset CHECKPOINT --earliest|--latest|--offset N|--timestamp T` over
//! [`crate::ops::reset`]: moves a checkpoint (or one partition of it) after one `yes`.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::conn::{Confirm, Conn, KafkaConn};
use super::ui::{confirm_and_apply, print_table, Accept, Confirmation, Report, Say, Step, Ui};
use crate::feed::TopicPartition;
use crate::ops::reset::{self as core, ResetPlan, ResetTo, Selection};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// The checkpoint id.
    pub checkpoint_id: String,
    #[command(flatten)]
    pub to: ToArgs,
    /// Only this partition: `topic,partition`.
    #[arg(long, conflicts_with = "topics")]
    pub partition: Option<String>,
    /// Every partition of these topics (comma-separated), rows created where missing.
    /// Default: the partitions the checkpoint has rows for.
    #[arg(long, value_delimiter = ',')]
    pub topics: Option<Vec<String>>,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

#[derive(clap::Args, Debug, Clone, Default)]
#[group(required = true, multiple = false)]
pub struct ToArgs {
    /// The first retained offset.
    #[arg(long)]
    pub earliest: bool,
    /// The high-water mark.
    #[arg(long)]
    pub latest: bool,
    /// This offset.
    #[arg(long)]
    pub offset: Option<i64>,
    /// The first message at or after this time (RFC 3339, or milliseconds since the epoch).
    #[arg(long)]
    pub timestamp: Option<String>,
}

impl ToArgs {
    fn to(&self) -> anyhow::Result<ResetTo> {
        Ok(if self.earliest {
            ResetTo::Earliest
        } else if self.latest {
            ResetTo::Latest
        } else if let Some(o) = self.offset {
            ResetTo::Offset(o)
        } else if let Some(t) = &self.timestamp {
            ResetTo::Timestamp(parse_time(t)?)
        } else {
            bail!("give one of --earliest, --latest, --offset, --timestamp")
        })
    }
}

fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(ms) = s.parse::<i64>() {
        return DateTime::from_timestamp_millis(ms)
            .with_context(|| format!("timestamp {s} is out of range"));
    }
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("timestamp {s:?} is not RFC 3339 or milliseconds"))?
        .with_timezone(&Utc))
}

/// `topic,partition`.
pub(super) fn parse_tp(s: &str) -> anyhow::Result<TopicPartition> {
    let (t, p) = s
        .rsplit_once(',')
        .with_context(|| format!("partition {s:?} is not `topic,partition`"))?;
    Ok(TopicPartition::new(
        t,
        p.trim()
            .parse()
            .with_context(|| format!("partition number in {s:?}"))?,
    ))
}

/// What an applied reset wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reset {
    pub checkpoint_id: String,
    pub rows_written: u64,
}

pub async fn exec(args: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(apply(&args, ui).await?.outcome.status())
}

/// Plans the reset (refusing while the pillow runs, unless `--force`), shows it, asks, applies.
pub async fn apply(args: &Args, ui: &dyn Ui) -> anyhow::Result<Report<Reset>> {
    let selection = match (&args.partition, &args.topics) {
        (Some(p), _) => Selection::Partition(parse_tp(p)?),
        (None, Some(t)) => Selection::Topics(t.clone()),
        (None, None) => Selection::Existing,
    };
    let pg = args.conn.pg()?;
    let kafka = args.kafka.info()?;
    let to = args.to.to()?;
    let c = &args.confirm;
    let id = &args.checkpoint_id;
    let (plan, forced) =
        core::prepare_reset(&pg, &kafka, id, &selection, &to, c.force || c.dry_run).await?;
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: &plan,
            forced: &forced,
            text: &print_plan,
            notes: Vec::new(),
            nothing_to_do: None,
            steps: vec![Step::ask(
                format!("Reset checkpoint {id} as shown? Type 'yes' to continue:"),
                Accept::Yes,
            )],
        },
        || async {
            let n = core::apply_reset(&pg, &plan).await?;
            Say::new(ui, c.json).say(&format!("checkpoint {id}: {n} rows written"));
            Ok(Reset {
                checkpoint_id: id.clone(),
                rows_written: n,
            })
        },
    )
    .await
}

fn print_plan(ui: &dyn Ui, plan: &ResetPlan) {
    ui.out(&format!(
        "reset checkpoint {} to {}",
        plan.checkpoint_id, plan.to
    ));
    print_table(
        ui,
        &[
            "topic",
            "partition",
            "current",
            "new",
            "first available",
            "high-water mark",
        ],
        plan.rows
            .iter()
            .map(|r| {
                vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.current
                        .map_or_else(|| "(no row)".into(), |o| o.to_string()),
                    r.new.to_string(),
                    r.low.to_string(),
                    r.high.to_string(),
                ]
            })
            .collect(),
    );
}
