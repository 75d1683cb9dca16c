"""Checks that the reference pillow follows CommCare's loop (so the bench compares like with like).

    source .services/env && .venv/bin/python -m pytest benches/e2e -q

The service tests skip when ``TEST_KAFKA_BOOTSTRAP`` / ``TEST_POSTGRES_URL`` are unset.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from publish import Resources, change_message, publish  # noqa: E402
from reference_pillow import (  # noqa: E402
    BulkPillowProcessor,
    Change,
    CountingBulkProcessor,
    PillowProcessor,
    ReferencePillow,
    change_from_message,
    dedupe,
)

KAFKA = os.environ.get("TEST_KAFKA_BOOTSTRAP", "")
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "")
services = pytest.mark.skipif(
    not (KAFKA and POSTGRES), reason="TEST_KAFKA_BOOTSTRAP / TEST_POSTGRES_URL not set"
)


def test_dedupe_keeps_the_last_occurrence_in_order() -> None:
    chunk = [Change(i, s) for i, s in [("1", 1), ("2", 2), ("3", 3), ("2", 4), ("4", 5), ("1", 6)]]
    assert [(c.id, c.sequence_id) for c in dedupe(chunk)] == [
        ("3", 3),
        ("2", 4),
        ("4", 5),
        ("1", 6),
    ]


def test_change_from_message_takes_the_embedded_document() -> None:
    from datetime import datetime, timezone

    key, body = change_message(7, datetime.now(timezone.utc))
    change = change_from_message("t", 2, 41, body)
    assert change.id == key == change["id"]
    assert change["seq"] == 41 and change.partition == 2 and change.topic == "t"
    assert change.get_document() is not None and change["doc"]["_id"] == key
    assert change.metadata is not None and "document" not in change.metadata
    assert change.metadata["domain"] == change.metadata.domain == change["doc"]["domain"]
    assert not change.deleted and "doc" in change
    change.increment_attempt_count()
    assert change.metadata["attempts"] == 1


class FailingBulk(BulkPillowProcessor):
    """Chunk 0 raises (whole chunk goes serial); later chunks report one error and one retry."""

    def __init__(self) -> None:
        self.chunks = 0
        self.serial: list[str] = []

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        self.chunks += 1
        if self.chunks == 1:
            raise RuntimeError("bulk call failed")
        return [changes_chunk[1]], [(changes_chunk[0], ValueError("bad doc"))]

    def process_change(self, change: Change) -> None:
        self.serial.append(change.id)
        if change.id.startswith("00000001-"):  # form 1 always fails serially
            raise KeyError("no such thing")


class Serial(PillowProcessor):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def process_change(self, change: Change) -> None:
        self.seen.append(change.id)


@pytest.fixture
def resources() -> Iterator[Resources]:
    with Resources(KAFKA, POSTGRES, None) as res:
        yield res


@services
def test_loop_semantics_errors_and_checkpoint(resources: Resources) -> None:
    topic = resources.topic("loop", 1)
    ds = publish(KAFKA, topic, 1, 30, 0)
    name = resources.checkpoint_id("loop")
    bulk, serial = FailingBulk(), Serial()
    pillow = ReferencePillow(name, [topic], [bulk, serial], chunk_size=10, checkpoint_frequency=15)
    summary = pillow.run(kafka=KAFKA, postgres=POSTGRES, until_idle=True, idle_timeout=0.5)
    assert summary.changes == 30 and summary.stop_reason == "idle"
    # chunk 1 (forms 0..9) serially through the bulk processor; chunks 2, 3: one retry each
    assert bulk.chunks == 3
    assert len(bulk.serial) == 10 + 2
    assert len(serial.seen) == 30  # serial processors see every change
    # checkpoints: first chunk (last_update None), then every >= 15 changes, then the final
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        offsets = conn.execute(
            'SELECT "partition", "offset", doc_modification_time FROM pillowtop_kafkacheckpoint '
            "WHERE checkpoint_id = %s",
            (name,),
        ).fetchall()
        errors: list[Any] = conn.execute(
            "SELECT doc_id, error_type, current_attempt, total_attempts, date_next_attempt "
            "IS NOT NULL, change->>'seq', change_metadata->>'attempts' "
            "FROM pillow_retry_pillowerror WHERE pillow = %s ORDER BY doc_id",
            (name,),
        ).fetchall()
    assert offsets == [(0, ds.changes, None)]
    # form 1 fails serially (chunk 1); the first change of chunks 2 and 3 is a bulk error
    assert [(e[0][:8], e[1], e[2]) for e in errors] == [
        ("00000001", "builtins.KeyError", 1),
        ("0000000a", "builtins.ValueError", 1),
        ("00000014", "builtins.ValueError", 1),
    ]
    assert all(e[4] for e in errors)  # next attempt scheduled
    assert summary.failed == 3


@services
def test_resumes_from_the_checkpoint(resources: Resources) -> None:
    topic = resources.topic("resume", 2)
    publish(KAFKA, topic, 2, 200, 0)
    name = resources.checkpoint_id("resume")
    first = CountingBulkProcessor()
    ReferencePillow(name, [topic], [first], chunk_size=50, checkpoint_frequency=1000).run(
        kafka=KAFKA, postgres=POSTGRES, max_changes=120, idle_timeout=0.5
    )
    publish(KAFKA, topic, 2, 40, 0)  # 40 more messages (ids 0..39 again)
    second = CountingBulkProcessor()
    summary = ReferencePillow(name, [topic], [second], chunk_size=50).run(
        kafka=KAFKA, postgres=POSTGRES, until_idle=True, idle_timeout=0.5
    )
    assert first.count == 120
    # every message after the checkpoint, none before (a chunk may de-duplicate a repeated id)
    assert summary.changes == 80 + 40
    assert 80 <= second.count <= 120
