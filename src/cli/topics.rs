//! CommCare's `list-kafka-topics` and `create-kafka-topics` over [`crate::ops::topics`]: the
//! given topics (or, for `list`, every topic of the cluster) with their partition counts, and
//! the creation of the missing ones after the plan and one question.

use std::sync::Arc;

use anyhow::Context;

use super::conn::{Confirm, KafkaConn};
use super::ui::{confirm_and_apply, print_table, Accept, Confirmation, Report, Say, Step, Ui};
use crate::feed::kafka::KafkaAdmin;
use crate::ops::topics::{self as core, CreatePlan, TopicState};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ListArgs {
    /// Only these topics (comma-separated); default: every topic of the cluster.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CreateArgs {
    /// The topics the pillows read (comma-separated); the missing ones are created.
    #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
    pub topics: Vec<String>,
    /// Partitions of each new topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replicas of each partition of a new topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    #[command(flatten)]
    pub confirm: Confirm,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

fn admin(k: &KafkaConn) -> anyhow::Result<Arc<KafkaAdmin>> {
    let b = k
        .bootstrap()
        .context("no Kafka address: pass --kafka or set PILLOWTOP_KAFKA_BOOTSTRAP")?;
    Ok(Arc::new(KafkaAdmin::new(&b)?))
}

fn print_states(ui: &dyn Ui, states: &[TopicState]) {
    print_table(
        ui,
        &["topic", "partitions"],
        states
            .iter()
            .map(|s| {
                vec![
                    s.topic.clone(),
                    s.partitions
                        .map_or_else(|| "(missing)".into(), |n| n.to_string()),
                ]
            })
            .collect(),
    );
}

pub async fn exec_list(a: ListArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    let states = list(&a).await?;
    print(ui, &states, a.json)?;
    Ok(0)
}

/// Prints the topics as a table, or as JSON.
pub fn print(ui: &dyn Ui, states: &[TopicState], json: bool) -> anyhow::Result<()> {
    if json {
        ui.out(&serde_json::to_string_pretty(states)?);
    } else {
        print_states(ui, states);
    }
    Ok(())
}

/// The topics and their partition counts.
pub async fn list(a: &ListArgs) -> anyhow::Result<Vec<TopicState>> {
    Ok(core::list(&admin(&a.kafka)?, &a.topics).await?)
}

pub async fn exec_create(a: CreateArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    Ok(create(&a, ui).await?.outcome.status())
}

/// Plans the creation of the missing topics, shows it, asks, creates.
pub async fn create(a: &CreateArgs, ui: &dyn Ui) -> anyhow::Result<Report<Vec<String>>> {
    let admin = admin(&a.kafka)?;
    let states = core::list(&admin, &a.topics).await?;
    let plan = core::plan_create(states, a.partitions, a.replication_factor)?;
    let c = &a.confirm;
    confirm_and_apply(
        ui,
        c,
        Confirmation {
            plan: &plan,
            forced: &[],
            text: &print_plan,
            notes: Vec::new(),
            nothing_to_do: plan
                .create
                .is_empty()
                .then_some("nothing to do: every topic exists"),
            steps: vec![Step::ask(
                format!("Create {} topics? [y/n]", plan.create.len()),
                Accept::YOrYes,
            )],
        },
        || async {
            let done = core::apply_create(&admin, &plan).await?;
            for t in &done {
                Say::new(ui, c.json).say(&format!("created topic {t}"));
            }
            Ok(done)
        },
    )
    .await
}

fn print_plan(ui: &dyn Ui, plan: &CreatePlan) {
    print_states(ui, &plan.topics);
    for t in &plan.create {
        ui.out(&format!(
            "create topic {t} with {} partitions, replication factor {}",
            plan.partitions, plan.replication_factor
        ));
    }
}
