//! [`KafkaClientConfig`]: extra librdkafka client properties (security, tuning) that every Kafka
//! client the core creates applies, after its own settings: the feed's consumer and its stall
//! probe, the admin client that reads `max.message.bytes`, the operations' metadata clients
//! ([`crate::ops::kafka::KafkaInfo`]). A producer for the same cluster should apply the same
//! value.
//!
//! Where it comes from: TOML `[kafka] config = { "security.protocol" = "SSL", ... }` (alias
//! `settings`), `pillowtop run --kafka-config KEY=VALUE` and the operation commands'
//! `--kafka-config`, Python `Pillow.run(kafka_config={...})`, Django's kafka-python style options
//! (`pillowtop_rs.django.settings.kafka_client_config()`).

use rdkafka::config::ClientConfig;

use crate::error::{ConfigError, Result};

/// Properties the engine sets itself and that a client config may not override: the bootstrap
/// address has its own setting, and the consumer's offset rules are what make a lost position an
/// error instead of a silent skip.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Extra librdkafka properties, applied in order, last, to every client (see the module docs).
/// Values of secret-looking properties (`*password*`, `*secret*`, `sasl.oauthbearer.config`) are
/// never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaClientConfig {
    properties: Vec<(String, String)>,
}

fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key == "sasl.oauthbearer.config"
}

impl std::fmt::Debug for KafkaClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.properties
                    .iter()
                    .map(|(k, v)| (k, if is_secret(k) { "***" } else { v.as_str() })),
            )
            .finish()
    }
}

impl KafkaClientConfig {
    /// No extra property.
    pub fn new() -> Self {
        Self::default()
    }

    /// The properties `pairs`, checked: non-empty names, none the engine sets itself. A
    /// property given twice keeps its last value.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut c = Self::new();
        for (k, v) in pairs {
            c.set(k, v)?;
        }
        Ok(c)
    }

    /// Parses `KEY=VALUE` command-line arguments (`--kafka-config`).
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Self> {
        let mut c = Self::new();
        for a in args {
            let a = a.as_ref();
            let (k, v) = a.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--kafka-config {a:?}: expected KEY=VALUE (a librdkafka property, e.g. security.protocol=SSL)"
                ))
            })?;
            c.set(k.trim(), v)?;
        }
        Ok(c)
    }

    /// Sets one property (replacing an earlier value of the same name).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<()> {
        let (key, value) = (key.into(), value.into());
        if key.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "kafka client config: a property name is empty".to_owned(),
            )
            .into());
        }
        if RESERVED.contains(&key.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "kafka client config: {key} is set by pillowtop itself and cannot be overridden ({})",
                if key.contains("broker") || key.starts_with("bootstrap") {
                    "give the address as the Kafka bootstrap setting"
                } else {
                    "positions live in PostgreSQL checkpoints, and a lost position must stay an error"
                }
            ))
            .into());
        }
        self.properties.retain(|(k, _)| *k != key);
        self.properties.push((key, value));
        Ok(())
    }

    /// Every other property of `other` over these (later wins).
    #[must_use]
    pub fn merged(mut self, other: &Self) -> Self {
        for (k, v) in &other.properties {
            self.properties.retain(|(mine, _)| mine != k);
            self.properties.push((k.clone(), v.clone()));
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }

    /// The properties, in the order they are applied.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// Applies every property to `cfg` (call it after the client's own settings).
    pub fn apply(&self, cfg: &mut ClientConfig) {
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_checked_applied_last_and_secrets_hidden() {
        let c = KafkaClientConfig::from_pairs([
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "hunter2"),
            ("security.protocol", "SSL"),
        ])
        .expect("valid");
        assert_eq!(
            c.properties(),
            &[
                ("sasl.password".to_owned(), "hunter2".to_owned()),
                ("security.protocol".to_owned(), "SSL".to_owned())
            ]
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("SSL"),
            "{shown}"
        );
        let mut cfg = ClientConfig::new();
        cfg.set("security.protocol", "PLAINTEXT");
        c.apply(&mut cfg);
        assert_eq!(cfg.get("security.protocol"), Some("SSL"));

        let e = KafkaClientConfig::from_pairs([("group.id", "x")]).expect_err("reserved");
        assert!(e.to_string().contains("group.id"), "{e}");
        let e = KafkaClientConfig::from_pairs([("bootstrap.servers", "x")]).expect_err("reserved");
        assert!(e.to_string().contains("bootstrap setting"), "{e}");
        assert!(KafkaClientConfig::from_pairs([("", "x")]).is_err());
    }

    #[test]
    fn command_line_pairs_parse_and_merge() {
        let c = KafkaClientConfig::from_args(&["security.protocol=SSL", "ssl.ca.location=/a=b"])
            .expect("valid");
        assert_eq!(c.properties()[1].1, "/a=b");
        let e = KafkaClientConfig::from_args(&["security.protocol"]).expect_err("no =");
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
        let over =
            KafkaClientConfig::from_pairs([("security.protocol", "PLAINTEXT")]).expect("valid");
        let m = c.merged(&over);
        assert_eq!(
            m.properties().last(),
            Some(&("security.protocol".to_owned(), "PLAINTEXT".to_owned()))
        );
        assert_eq!(m.properties().len(), 2);
    }
}
