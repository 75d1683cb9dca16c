"""pillowtop_rs: a CommCare-compatible pillowtop with a Rust core.

This module never imports Django; the optional Django app is ``pillowtop_rs.django``.
"""

from __future__ import annotations

from pillowtop_rs._native import (
    Change,
    ChangeMeta,
    Pillow,
    RunSummary,
    RustProcessor,
    __version__,
    next_attempt_delay_minutes,
    parse_change_meta,
    partition_assignment,
    request_shutdown,
    run_cli,
    virtual_worker_layouts,
)
from pillowtop_rs.exceptions import (
    CheckpointError,
    ConfigurationError,
    DocumentError,
    DocumentMismatchError,
    DocumentMissingError,
    DocumentNotFoundError,
    ElasticsearchError,
    InvalidChangeError,
    KafkaError,
    OperationAborted,
    OperationRefused,
    PillowNotFoundError,
    PillowtopCheckpointReset,
    PillowtopError,
    PostgresError,
    ProcessorError,
    ServiceError,
    ShutdownRequested,
    UnavailableKafkaOffset,
)
from pillowtop_rs.processors import BulkPillowProcessor, PillowProcessor

__all__ = [
    "BulkPillowProcessor",
    "Change",
    "ChangeMeta",
    "Pillow",
    "PillowProcessor",
    "RunSummary",
    "RustProcessor",
    "CheckpointError",
    "ConfigurationError",
    "DocumentError",
    "DocumentMismatchError",
    "DocumentMissingError",
    "DocumentNotFoundError",
    "ElasticsearchError",
    "InvalidChangeError",
    "KafkaError",
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
    "__version__",
    "next_attempt_delay_minutes",
    "parse_change_meta",
    "partition_assignment",
    "request_shutdown",
    "run_cli",
    "virtual_worker_layouts",
]
