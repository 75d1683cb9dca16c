//! `pillowtop assignments N --topics ...`: CommCare's `pillow_topic_assignments` over
//! [`crate::ops::assignments`] (which process and virtual worker reads which partitions).

use super::conn::KafkaConn;
use super::ui::{print_table, Ui};
use crate::feed::TopicPartition;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    pub num_processes: u32,
    /// Process 0 is the dedicated migration process and reads nothing.
    #[arg(long)]
    pub dedicated: bool,
    /// Virtual workers per process.
    #[arg(long)]
    pub workers: Option<u32>,
    /// The pillow's topics (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub topics: Vec<String>,
    /// Partitions per topic, instead of asking Kafka.
    #[arg(long)]
    pub partitions: Option<i32>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let all: Vec<TopicPartition> = match a.partitions {
        Some(n) => a
            .topics
            .iter()
            .flat_map(|t| (0..n).map(move |p| TopicPartition::new(t.clone(), p)))
            .collect(),
        None => a.kafka.info()?.partitions(&a.topics).await?,
    };
    let plan =
        crate::ops::assignments::plan_assignments(&all, a.num_processes, a.dedicated, a.workers)?;
    if a.json {
        ui.out(&serde_json::to_string_pretty(&plan)?);
    } else {
        let rows = plan
            .iter()
            .map(|a| {
                vec![
                    a.process_num.to_string(),
                    a.worker.map_or_else(|| "-".into(), |w| w.to_string()),
                    if a.migration {
                        "(dedicated migration process: no partitions)".into()
                    } else {
                        a.partitions
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    },
                ]
            })
            .collect();
        print_table(ui, &["process", "worker", "partitions"], rows);
    }
    Ok(0)
}
