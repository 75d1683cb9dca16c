//! Core errors to Python exceptions.
//!
//! The hierarchy is defined in Python, in `pillowtop_rs.exceptions`, and imported here, so that
//! Django code can catch it without loading the extension. Every variant of [`crate::Error`] and
//! of its area enums is matched by name, with no wildcard arm: a new core variant does not
//! compile until someone decides its Python type.

use pyo3::{import_exception, PyErr, Python};

use crate::change::ChangeParseError;
use crate::error::{self, ConfigError, Error, ProcessError};

// The Python classes keep their Python names here; the core enums of the same name are spelled
// `error::KafkaError` and so on.
import_exception!(pillowtop_rs.exceptions, PillowtopError);
import_exception!(pillowtop_rs.exceptions, ConfigurationError);
import_exception!(pillowtop_rs.exceptions, PillowNotFoundError);
import_exception!(pillowtop_rs.exceptions, CheckpointError);
import_exception!(pillowtop_rs.exceptions, PillowtopCheckpointReset);
import_exception!(pillowtop_rs.exceptions, UnavailableKafkaOffset);
import_exception!(pillowtop_rs.exceptions, KafkaError);
import_exception!(pillowtop_rs.exceptions, KafkaPublishingError);
import_exception!(pillowtop_rs.exceptions, PostgresError);
import_exception!(pillowtop_rs.exceptions, ElasticsearchError);
import_exception!(pillowtop_rs.exceptions, InvalidChangeError);
import_exception!(pillowtop_rs.exceptions, ProcessorError);
import_exception!(pillowtop_rs.exceptions, ShutdownRequested);
import_exception!(pillowtop_rs.exceptions, OperationAborted);
import_exception!(pillowtop_rs.exceptions, OperationRefused);
import_exception!(pillowtop_rs.exceptions, DocumentError);
import_exception!(pillowtop_rs.exceptions, DocumentMissingError);

impl From<Error> for PyErr {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::Config(ConfigError::Invalid(_)) => ConfigurationError::new_err(message),
            Error::Config(ConfigError::PillowNotFound(_)) => PillowNotFoundError::new_err(message),
            Error::Kafka(
                error::KafkaError::Client { .. }
                | error::KafkaError::UnknownTopic(_)
                | error::KafkaError::Stalled { .. }
                | error::KafkaError::Other(_),
            ) => KafkaError::new_err(message),
            Error::Kafka(error::KafkaError::Publishing { .. }) => {
                KafkaPublishingError::new_err(message)
            }
            Error::Postgres(
                error::PostgresError::Query { .. } | error::PostgresError::Other(_),
            ) => PostgresError::new_err(message),
            Error::Elasticsearch(
                error::ElasticsearchError::Transport { .. }
                | error::ElasticsearchError::Status { .. }
                | error::ElasticsearchError::Unavailable { .. },
            ) => ElasticsearchError::new_err(message),
            Error::Checkpoint(error::CheckpointError::UnavailableOffset { .. }) => {
                UnavailableKafkaOffset::new_err(message)
            }
            Error::Checkpoint(error::CheckpointError::Reset { .. }) => {
                PillowtopCheckpointReset::new_err(message)
            }
            Error::Checkpoint(
                error::CheckpointError::Missing { .. }
                | error::CheckpointError::BeyondHighWater { .. },
            ) => CheckpointError::new_err(message),
            // A callback's own error (a Python processor's exception) comes back unchanged.
            Error::Process(ProcessError::Callback(inner)) => match inner.downcast::<PyErr>() {
                Ok(original) => *original,
                Err(other) => ProcessorError::new_err(other.to_string()),
            },
            // Recording a failure failed: the pillow stops. The storage error is the cause.
            Error::Process(ProcessError::ErrorStore { source, .. }) => {
                let cause = PyErr::from(*source);
                let err = PillowtopError::new_err(message);
                Python::attach(|py| err.set_cause(py, Some(cause)));
                err
            }
            Error::Process(ProcessError::DocumentStore { .. } | ProcessError::Other(_)) => {
                ProcessorError::new_err(message)
            }
            Error::Reindex(
                error::ReindexError::Refused { .. }
                | error::ReindexError::Busy { .. }
                | error::ReindexError::Differences { .. },
            ) => OperationRefused::new_err(message),
            Error::ShutdownRequested(_) => ShutdownRequested::new_err(message),
        }
    }
}

impl From<ChangeParseError> for PyErr {
    fn from(err: ChangeParseError) -> Self {
        InvalidChangeError::new_err(err.to_string())
    }
}
