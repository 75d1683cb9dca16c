//! Kafka admin helpers: list partitions, create and delete topics, delete records (tests use it
//! to simulate retention), offsets for a timestamp.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KafkaError, Result};
use crate::partition::TopicPartition;

/// Every partition of `topics`, sorted.
pub(crate) fn partitions_of<C: rdkafka::ClientContext>(
    client: &Client<C>,
    topics: &[String],
) -> Result<Vec<TopicPartition>> {
    let mut out = Vec::new();
    for topic in topics {
        let md = client
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(|e| KafkaError::client(format!("reading the metadata of topic {topic}"), e))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| KafkaError::UnknownTopic(topic.clone()))?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(KafkaError::UnknownTopic(topic.clone()).into());
        }
        out.extend(
            t.partitions()
                .iter()
                .map(|p| TopicPartition::new(topic.clone(), p.id())),
        );
    }
    out.sort();
    Ok(out)
}

/// An admin client.
pub struct KafkaAdmin {
    admin: AdminClient<DefaultClientContext>,
    bootstrap: String,
}

impl std::fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl KafkaAdmin {
    pub fn new(bootstrap_servers: &str) -> Result<Self> {
        Self::with_config(bootstrap_servers, &super::KafkaClientConfig::new())
    }

    /// An admin client with extra librdkafka properties (e.g. security), applied last.
    pub fn with_config(
        bootstrap_servers: &str,
        client_config: &super::KafkaClientConfig,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        client_config.apply(&mut config);
        let admin = config.create().map_err(|e| {
            KafkaError::client(
                format!("creating an admin client for {bootstrap_servers}"),
                e,
            )
        })?;
        Ok(Self {
            admin,
            bootstrap: bootstrap_servers.to_owned(),
        })
    }

    /// Creates a topic and waits until every partition has a leader.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<()> {
        self.create_topic_replicated(topic, partitions, 1, config)
            .await
    }

    /// Creates a topic with `replication_factor` replicas per partition and waits until every
    /// partition has a leader.
    pub async fn create_topic_replicated(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
        config: &[(&str, &str)],
    ) -> Result<()> {
        crate::partition::validate_topic_name(topic)?;
        let mut new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor),
        );
        for (k, v) in config {
            new = new.set(k, v);
        }
        let res = self
            .admin
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| KafkaError::client(format!("creating topic {topic}"), e))?;
        for r in res {
            if let Err((t, code)) = r {
                return Err(KafkaError::Other(format!("creating topic {t} failed: {code}")).into());
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let md = self
                .admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(5));
            if let Ok(md) = md {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    let ready = t.error().is_none()
                        && i32::try_from(t.partitions().len()).ok() == Some(partitions)
                        && t.partitions().iter().all(|p| p.leader() >= 0);
                    if ready {
                        return Ok(());
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(
                    KafkaError::Other(format!("topic {topic} has no leader after 30 s")).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes topics (missing ones are ignored).
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<()> {
        self.admin
            .delete_topics(
                topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| KafkaError::client(format!("deleting topics {topics:?}"), e))?;
        Ok(())
    }

    /// Deletes the records before `before` on one partition (moves its first available offset).
    pub async fn delete_records(&self, tp: &TopicPartition, before: i64) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(before))
            .map_err(|e| KafkaError::client(format!("deleting records of {tp}"), e))?;
        let res = self
            .admin
            .delete_records(
                &tpl,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| {
                KafkaError::client(format!("deleting records of {tp} before {before}"), e)
            })?;
        for el in res.elements() {
            if let Err(e) = el.error() {
                return Err(KafkaError::client(
                    format!("deleting records of {tp} before {before}"),
                    e,
                )
                .into());
            }
        }
        Ok(())
    }

    /// A topic's `retention.ms`, as the broker reports it (describe configs); `None` when the
    /// topic keeps its messages forever (`-1`).
    pub async fn topic_retention_ms(&self, topic: &str) -> Result<Option<i64>> {
        let value = self.topic_config(topic, "retention.ms").await?;
        let ms: i64 = value.parse().map_err(|e| {
            KafkaError::Other(format!(
                "retention.ms of topic {topic} from kafka at {}: {value:?} is not a number: {e}",
                self.bootstrap
            ))
        })?;
        Ok((ms >= 0).then_some(ms))
    }

    /// One configuration value of a topic, as the broker reports it.
    async fn topic_config(&self, topic: &str, key: &str) -> Result<String> {
        let context = || {
            format!(
                "reading {key} of topic {topic} from kafka at {}",
                self.bootstrap
            )
        };
        let res = self
            .admin
            .describe_configs(
                &[ResourceSpecifier::Topic(topic)],
                &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| KafkaError::client(context(), e))?;
        let resource = match res.into_iter().next() {
            Some(Ok(r)) => r,
            Some(Err(code)) => {
                return Err(KafkaError::Other(format!("{}: {code}", context())).into())
            }
            None => return Err(KafkaError::Other(format!("{}: no answer", context())).into()),
        };
        resource
            .get(key)
            .and_then(|e| e.value.clone())
            .ok_or_else(|| KafkaError::Other(format!("{}: not reported", context())).into())
    }

    /// Every topic of the cluster but Kafka's internal ones (`__consumer_offsets`, ...), with
    /// its partition count, sorted. Blocks on a metadata request (up to 30 s).
    pub fn all_topics(&self) -> Result<Vec<(String, i32)>> {
        let md = self
            .admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(30))
            .map_err(|e| {
                KafkaError::client(
                    format!("listing the topics of kafka at {}", self.bootstrap),
                    e,
                )
            })?;
        let mut out: Vec<(String, i32)> = md
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && t.error().is_none())
            .map(|t| {
                (
                    t.name().to_owned(),
                    i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// A topic's `max.message.bytes`, as the broker reports it (describe configs).
    pub async fn topic_max_message_bytes(&self, topic: &str) -> Result<usize> {
        let context = || {
            format!(
                "reading max.message.bytes of topic {topic} from kafka at {}",
                self.bootstrap
            )
        };
        let res = self
            .admin
            .describe_configs(
                &[ResourceSpecifier::Topic(topic)],
                &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| KafkaError::client(context(), e))?;
        let resource = match res.into_iter().next() {
            Some(Ok(r)) => r,
            Some(Err(code)) => {
                return Err(KafkaError::Other(format!("{}: {code}", context())).into())
            }
            None => return Err(KafkaError::Other(format!("{}: no answer", context())).into()),
        };
        let value = resource
            .get("max.message.bytes")
            .and_then(|e| e.value.clone())
            .ok_or_else(|| KafkaError::Other(format!("{}: not reported", context())))?;
        value.parse().map_err(|e| {
            KafkaError::Other(format!("{}: {value:?} is not a size: {e}", context())).into()
        })
    }

    /// Every partition of `topics`, sorted. Blocks on a metadata request (up to 30 s): call it
    /// from a blocking context, not from an async worker.
    pub fn partitions(&self, topics: &[String]) -> Result<Vec<TopicPartition>> {
        partitions_of(self.admin.inner(), topics)
    }
}
