//! CommCare's `list_kafka_topics` and `create_kafka_topics` (docs/commcare-pillowtop.md §4):
//! which of the pillows' topics exist, and creating the missing ones. CommCare works on its
//! fixed `topics.ALL`; here the topics are the configured pillows' (Django) or a `--topics` list,
//! and `list` without topics lists the cluster's. Existing topics are never altered.

use serde::Serialize;

use super::Result;
use crate::feed::kafka::consumer::blocking;
use crate::feed::kafka::KafkaAdmin;

/// One topic and whether Kafka has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicState {
    pub topic: String,
    /// Its partition count; `None` when the topic does not exist.
    pub partitions: Option<i32>,
}

/// What `create_kafka_topics` will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatePlan {
    pub topics: Vec<TopicState>,
    /// The topics to create (the missing ones), in order.
    pub create: Vec<String>,
    pub partitions: i32,
    pub replication_factor: i32,
}

/// The state of each of `topics` (every topic of the cluster when empty, Kafka's internal
/// topics left out), given the cluster's `(topic, partitions)`.
pub fn states(cluster: &[(String, i32)], topics: &[String]) -> Vec<TopicState> {
    if topics.is_empty() {
        return cluster
            .iter()
            .map(|(t, n)| TopicState {
                topic: t.clone(),
                partitions: Some(*n),
            })
            .collect();
    }
    let mut seen = std::collections::BTreeSet::new();
    topics
        .iter()
        .filter(|t| seen.insert(t.as_str()))
        .map(|t| TopicState {
            topic: t.clone(),
            partitions: cluster.iter().find(|(c, _)| c == t).map(|(_, n)| *n),
        })
        .collect()
}

/// Plans creating the missing ones of `topics` (pure).
pub fn plan_create(
    states: Vec<TopicState>,
    partitions: i32,
    replication_factor: i32,
) -> Result<CreatePlan> {
    if partitions < 1 || replication_factor < 1 {
        return Err(super::OpsError::InvalidArgument(format!(
            "partitions ({partitions}) and replication factor ({replication_factor}) must be at least 1"
        )));
    }
    for s in &states {
        crate::partition::validate_topic_name(&s.topic)?;
    }
    let create = states
        .iter()
        .filter(|s| s.partitions.is_none())
        .map(|s| s.topic.clone())
        .collect();
    Ok(CreatePlan {
        topics: states,
        create,
        partitions,
        replication_factor,
    })
}

/// Reads the cluster's topics and the state of `topics` (all when empty).
pub async fn list(
    admin: &std::sync::Arc<KafkaAdmin>,
    topics: &[String],
) -> Result<Vec<TopicState>> {
    let a = std::sync::Arc::clone(admin);
    let cluster = blocking(move || a.all_topics()).await?;
    Ok(states(&cluster, topics))
}

/// Creates the plan's topics, in order, each waited for until its partitions have leaders.
/// Returns the topics created.
pub async fn apply_create(admin: &KafkaAdmin, plan: &CreatePlan) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for t in &plan.create {
        admin
            .create_topic_replicated(t, plan.partitions, plan.replication_factor, &[])
            .await?;
        done.push(t.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_topics_are_created_and_names_are_checked() {
        let cluster = vec![("case-sql".to_owned(), 4), ("form-sql".to_owned(), 8)];
        let all = states(&cluster, &[]);
        assert_eq!(all.len(), 2);
        let want = ["form-sql".to_owned(), "sms".to_owned(), "sms".to_owned()];
        let s = states(&cluster, &want);
        assert_eq!(
            s,
            [
                TopicState {
                    topic: "form-sql".into(),
                    partitions: Some(8)
                },
                TopicState {
                    topic: "sms".into(),
                    partitions: None
                },
            ]
        );
        let plan = plan_create(s.clone(), 3, 1).expect("plan");
        assert_eq!(plan.create, ["sms"]);
        assert!(plan_create(s.clone(), 0, 1).is_err());
        assert!(plan_create(s, 1, 0).is_err());
        let bad = states(&cluster, &["a,b".to_owned()]);
        assert!(
            plan_create(bad, 1, 1).is_err(),
            "a comma breaks CommCare's text form"
        );
    }
}
