//! librdkafka's own log lines and client errors, in our log.
//!
//! Without this, librdkafka logs through the `log` crate, which nothing here listens to, and the
//! rdkafka crate sets librdkafka's level from `log`'s (off): a broker that goes away, a
//! connection refused, a metadata refresh with "no usable brokers" were all silent. With it,
//! librdkafka's warnings and errors appear at the default level (target `librdkafka`), its
//! notices at `info`, the rest at `debug`; `PILLOWTOP_LOG=librdkafka=debug` plus librdkafka's
//! own `debug` setting shows everything.

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as RdKafkaError;

/// The client context of every consumer the feed creates. `bootstrap` names the broker in
/// each line.
#[derive(Debug, Clone)]
pub struct LoggingContext {
    pub bootstrap: String,
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let bootstrap = self.bootstrap.as_str();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", bootstrap, facility = fac, "{message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", bootstrap, facility = fac, "{message}");
            }
            RDKafkaLogLevel::Notice => {
                tracing::info!(target: "librdkafka", bootstrap, facility = fac, "{message}");
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", bootstrap, facility = fac, "{message}");
            }
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        // The end of a partition (a scan asks for it with `enable.partition.eof`) is no error.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(target: "librdkafka", bootstrap = %self.bootstrap, "{reason}");
            return;
        }
        tracing::warn!(target: "librdkafka", bootstrap = %self.bootstrap, error = %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for LoggingContext {}

/// Sets librdkafka's own level to what our subscriber shows for target `librdkafka`, and never
/// below warnings (librdkafka filters at the source: what it does not emit cannot be shown).
pub fn set_log_level(cfg: &mut ClientConfig) {
    let level = if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Notice
    } else {
        RDKafkaLogLevel::Warning
    };
    cfg.set_log_level(level);
}
