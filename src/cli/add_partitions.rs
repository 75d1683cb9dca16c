//! `pillowtop add-partitions TOPIC N`: CommCare's `add_kafka_partition` over
//! [`crate::ops::add_partitions`]; aborts unless both questions are answered `y` or `yes`.

use serde::Serialize;

use super::conn::{Confirm, Conn, KafkaConn};
use super::ui::{confirm_and_apply, print_table, Accept, Confirmation, Report, Say, Step, Ui};
use crate::ops::add_partitions::{self as core, AddPartitionsPlan};
use crate::store::checkpoints::postgres::PostgresCheckpointStore;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    pub topic: String,
    pub num_partitions: i32,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub conn: Conn,
    /// When given (or set in the environment), the topic must have that many partitions.
    #[command(flatten)]
    pub kafka: KafkaConn,
}

/// What an applied add-partitions wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Added {
    pub rows_created: u64,
}

pub async fn exec(args: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(apply(&args, ui).await?.outcome.status())
}

/// Plans the new rows, shows them, asks both questions, and writes them.
pub async fn apply(args: &Args, ui: &dyn Ui) -> anyhow::Result<Report<Added>> {
    let pg = args.conn.pg()?;
    let (topic, n, c) = (&args.topic, args.num_partitions, &args.confirm);
    let count = match args.kafka.bootstrap() {
        Some(_) => Some(args.kafka.info()?.partition_count(topic).await?),
        None => None,
    };
    let rows = PostgresCheckpointStore::new(pg.clone())
        .load_on_topic(Some(topic))
        .await?;
    let plan = core::plan_add_partitions(topic, n, &rows, count)?;
    let alter = format!("kafka-topics.sh --alter --partitions={n} --topic={topic}");
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: &plan,
            forced: &[],
            text: &print_plan,
            notes: Vec::new(),
            nothing_to_do: plan.create.is_empty().then_some("nothing to do"),
            steps: vec![
                Step::Ask {
                    question: format!("Have you stopped the pillows that read {topic}? [y/n]"),
                    accept: Accept::YOrYes,
                    status: super::DECLINED,
                    declined_message: Some("aborted: stop the pillows first".into()),
                },
                Step::Ask {
                    question: format!("Have you run {alter}? [y/n]"),
                    accept: Accept::YOrYes,
                    status: super::DECLINED,
                    declined_message: Some(format!("aborted: run {alter} first")),
                },
            ],
        },
        || async {
            let written = core::apply_add_partitions(&pg, &plan).await?;
            Say::new(ui, c.json).say(&format!(
                "created {written} rows; please restart the pillows"
            ));
            Ok(Added {
                rows_created: written,
            })
        },
    )
    .await
}

fn print_plan(ui: &dyn Ui, plan: &AddPartitionsPlan) {
    ui.out(&format!(
        "topic {}: {} checkpoints read it; {} rows to create at offset 0",
        plan.topic,
        plan.checkpoint_ids.len(),
        plan.create.len()
    ));
    print_table(
        ui,
        &["checkpoint", "new partitions"],
        plan.checkpoint_ids
            .iter()
            .map(|id| {
                let parts: Vec<String> = plan
                    .create
                    .iter()
                    .filter(|(i, _)| i == id)
                    .map(|(_, p)| p.to_string())
                    .collect();
                vec![
                    id.clone(),
                    if parts.is_empty() {
                        "-".into()
                    } else {
                        parts.join(" ")
                    },
                ]
            })
            .collect(),
    );
}
