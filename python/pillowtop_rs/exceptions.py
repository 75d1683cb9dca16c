"""The pillowtop exception hierarchy.

Defined in Python (not in the extension) so that Django code can catch these without loading the
native module; the Rust side imports them and maps every core error variant to one of them.
"""

from __future__ import annotations


class PillowtopError(Exception):
    """Base class of every error raised by pillowtop_rs."""


class ConfigurationError(PillowtopError, ValueError):
    """A pillow, processor or connection setting is invalid."""


class PillowNotFoundError(PillowtopError, LookupError):
    """No pillow with that name is configured."""


class CheckpointError(PillowtopError):
    """Reading or writing a checkpoint failed."""


class PillowtopCheckpointReset(CheckpointError):
    """The stored checkpoint was changed by someone else while this pillow ran."""


class UnavailableKafkaOffset(CheckpointError):
    """Strict mode: a checkpoint offset is older than the first offset Kafka still retains."""


class ServiceError(PillowtopError):
    """A backing service failed (after retries)."""


class KafkaError(ServiceError):
    """Kafka failed."""


class KafkaPublishingError(KafkaError):
    """A change could not be published (CommCare's ``KafkaPublishingError``).

    The message names the topic, the document id and librdkafka's error.
    """


class PostgresError(ServiceError):
    """PostgreSQL failed."""


class ElasticsearchError(ServiceError):
    """The search engine failed."""


class DocumentError(PillowtopError):
    """A change's document could not be used."""


class DocumentNotFoundError(DocumentError):
    """The document store has no document with that id."""


class DocumentMissingError(DocumentError):
    """The document is missing; always recorded for retry, as in CommCare."""


class DocumentMismatchError(DocumentError):
    """The fetched document is older than the change (revision mismatch)."""


class InvalidChangeError(DocumentError, ValueError):
    """A Kafka message is not a valid change (bad JSON, missing or mistyped fields, too large)."""


class ProcessorError(PillowtopError):
    """A processor failed; the user's exception is the ``__cause__``."""


class OperationRefused(PillowtopError):
    """An operation cannot be applied as asked; nothing was written.

    A pillow involved is running (without ``force``), a source has no rows, the rows moved since
    the plan, an offset is outside what Kafka retains, or there is no history snapshot.
    """


class OperationAborted(PillowtopError):
    """An operator declined a prompt; ``exit_status`` is the command's exit status."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class ShutdownRequested(BaseException):  # noqa: N818 - CommCare-style name, not an error
    """A second SIGTERM asked the pillow to stop at once; not caught by ``except Exception``."""


__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "DocumentError",
    "DocumentMismatchError",
    "DocumentMissingError",
    "DocumentNotFoundError",
    "ElasticsearchError",
    "InvalidChangeError",
    "KafkaError",
    "KafkaPublishingError",
    "OperationAborted",
    "OperationRefused",
    "PillowNotFoundError",
    "PillowtopCheckpointReset",
    "PillowtopError",
    "PostgresError",
    "ProcessorError",
    "ServiceError",
    "ShutdownRequested",
    "UnavailableKafkaOffset",
]
