"""Type stub for ``pillowtop_rs._native`` (hand-written; checked by stubtest)."""

from collections.abc import Sequence
from typing import Any

__all__ = [
    "next_attempt_delay_minutes",
    "parse_change_meta",
    "partition_assignment",
    "virtual_worker_layouts",
    "__version__",
]

__version__: str

def partition_assignment(
    partitions: Sequence[tuple[str, int]],
    num_processes: int,
    process_num: int,
    dedicated: bool = False,
) -> list[tuple[str, int]]:
    """Return the (topic, partition) pairs that process ``process_num`` of ``num_processes`` reads.

    Raises ``ConfigurationError`` for an impossible layout.
    """

def virtual_worker_layouts(
    num_processes: int,
    process_num: int,
    workers: int,
    dedicated: bool = False,
) -> list[tuple[int, int]] | None:
    """Return the (process_num, num_processes) layouts of ``workers`` virtual workers.

    ``None`` for the dedicated migration process. Raises ``ConfigurationError`` for an impossible
    layout or fewer than two workers.
    """

def parse_change_meta(body: bytes) -> dict[str, Any]:
    """Parse a Kafka message body as CommCare's ``ChangeMeta``.

    Unknown fields are kept; an embedded document is under ``"document"``. Raises
    ``InvalidChangeError`` when the body is not a valid change.
    """

def next_attempt_delay_minutes(current_attempt: int) -> int | None:
    """Return the minutes until the next retry after ``current_attempt`` attempts, or ``None``."""
