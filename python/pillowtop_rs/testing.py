"""Testing pillows and processors the way CommCare's tests do, with or without services.

In memory (no Kafka, no PostgreSQL)::

    pillow = Pillow("case-pillow", ["case-sql"], [MyProcessor()])
    result = pillow.process_changes([Change("case1", 0, metadata=ChangeMeta(...))])
    assert result.summary.failed == 0
    assert pillow.error_rows() == []

Against the real services, CommCare's ``process_pillow_changes`` (process exactly what was
published inside the block) and ``capture_kafka_changes_context`` (what was published)::

    with process_pillow_changes(pillow, kafka=KAFKA, postgres=PG):
        send_change("case-sql", meta)          # or the code under test publishing
    with capture_kafka_changes_context("case-sql", kafka=KAFKA) as captured:
        send_change("case-sql", meta)
    assert [c.id for c in captured.changes] == [meta.document_id]

Inside a Django project the ``kafka`` and ``postgres`` arguments default to the project's
settings, and a pillow may be given by name (resolved in ``PILLOWTOPS``).

The fake processors (:class:`CountingProcessor`, :class:`RecordingProcessor`,
:class:`FailingProcessor`) are plain classes with CommCare's processor interface, as
CommCare's ``pillowtop/processors/sample.py`` ones are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

from pillowtop_rs._native import Change, Pillow, RunSummary, kafka_offsets, read_kafka_changes

__all__ = [
    "CapturedChanges",
    "CountingProcessor",
    "FailingProcessor",
    "RecordingProcessor",
    "capture_kafka_changes_context",
    "process_pillow_changes",
]

PillowRef = Union[Pillow, str]


def _django_setting(what: str) -> str | None:
    try:
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        return None
    from pillowtop_rs.django import settings as ptop_settings

    return ptop_settings.kafka_bootstrap() if what == "kafka" else ptop_settings.postgres_url()


def _address(value: str | None, what: str) -> str:
    if value:
        return value
    found = _django_setting(what)
    if not found:
        raise ValueError(
            f"no {what} address: pass {what}=... (outside a configured Django project there is no"
            " setting to read it from)"
        )
    return found


def _resolve(pillow: PillowRef) -> Pillow:
    if isinstance(pillow, Pillow):
        return pillow
    from pillowtop_rs.registry import get_pillow_by_name

    return get_pillow_by_name(pillow)


@dataclass
class ProcessedPillows:
    """What :func:`process_pillow_changes` ran: one summary per pillow, after the block."""

    pillows: list[Pillow]
    summaries: list[RunSummary] = field(default_factory=list)


@contextmanager
def process_pillow_changes(
    *pillows: PillowRef,
    kafka: str | None = None,
    postgres: str | None = None,
    idle_timeout: float = 0.5,
) -> Iterator[ProcessedPillows]:
    """Process, on exit, exactly the changes published to the pillows' topics inside the block.

    CommCare's ``process_pillow_changes``: on entry the topics' latest offsets are recorded; on
    exit each pillow runs from them (``Pillow.run(since=...)``) until its feed is idle, with the
    real checkpoint and error tables. Nothing runs if the block raises.
    """
    if not pillows:
        raise TypeError("process_pillow_changes needs at least one pillow (or pillow name)")
    resolved = [_resolve(p) for p in pillows]
    kafka = _address(kafka, "kafka")
    postgres = _address(postgres, "postgres")
    starts = [kafka_offsets(kafka, p.topics) for p in resolved]
    done = ProcessedPillows(resolved)
    yield done
    for pillow, since in zip(resolved, starts):
        done.summaries.append(
            pillow.run(
                kafka=kafka,
                postgres=postgres,
                since=since,
                until_idle=True,
                idle_timeout=idle_timeout,
            )
        )


@dataclass
class CapturedChanges:
    """The changes :func:`capture_kafka_changes_context` saw published, in partition order."""

    topics: Sequence[str]
    changes: list[Change] = field(default_factory=list)


@contextmanager
def capture_kafka_changes_context(
    *topics: str, kafka: str | None = None, timeout: float = 30.0
) -> Iterator[CapturedChanges]:
    """Capture every change published to ``topics`` inside the block (CommCare's helper).

    On exit ``.changes`` holds them, read with a fresh consumer from the offsets recorded on
    entry up to the offsets on exit.
    """
    if not topics:
        raise TypeError("capture_kafka_changes_context needs at least one topic")
    kafka = _address(kafka, "kafka")
    start = kafka_offsets(kafka, list(topics))
    captured = CapturedChanges(topics)
    yield captured
    end = kafka_offsets(kafka, list(topics))
    captured.changes = read_kafka_changes(kafka, list(topics), start, end, timeout=timeout)


class CountingProcessor:
    """Counts the changes it processed (CommCare's ``CountingProcessor``)."""

    supports_batch_processing = False

    def __init__(self) -> None:
        self.count = 0

    def process_change(self, change: Any) -> None:
        """Count one change."""
        self.count += 1


class RecordingProcessor:
    """Keeps every change it saw, with its document (CommCare's ``TestProcessor``).

    With ``batch=True`` it is a bulk processor and also records each chunk's size.
    """

    def __init__(self, batch: bool = False) -> None:
        self.supports_batch_processing = batch
        self.changes_seen: list[Any] = []
        self.documents: list[Any] = []
        self.chunk_sizes: list[int] = []

    def process_change(self, change: Any) -> None:
        """Record one change and its document."""
        self.changes_seen.append(change)
        self.documents.append(change.get_document())

    def process_changes_chunk(self, changes_chunk: list[Any]) -> tuple[list[Any], list[Any]]:
        """Record a chunk (nothing to retry, no errors)."""
        self.chunk_sizes.append(len(changes_chunk))
        for change in changes_chunk:
            self.process_change(change)
        return [], []


class FailingProcessor:
    """Raises ``exception`` for the changes ``fails(change)`` selects (every change by default)."""

    supports_batch_processing = False

    def __init__(
        self, exception: type[Exception] = ValueError, fails: Any = None, message: str = "failed"
    ) -> None:
        self.exception = exception
        self.fails = fails or (lambda change: True)
        self.message = message
        self.failed: list[str] = []

    def process_change(self, change: Any) -> None:
        """Fail the change if selected."""
        if self.fails(change):
            self.failed.append(change.id)
            raise self.exception(f"{self.message}: {change.id}")
