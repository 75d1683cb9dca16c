"""``pillowtop_rs.testing`` against the real broker and database: CommCare's
``process_pillow_changes`` and ``capture_kafka_changes_context``, with a processor written as
CommCare writes them (a plain class)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import psycopg
from pillowtop_rs import ChangeMeta, Pillow
from pillowtop_rs.testing import capture_kafka_changes_context, process_pillow_changes

Publish = Callable[..., list[str]]
Conn = psycopg.Connection[Any]


class PlainProcessor:
    """CommCare's processor interface, no base class."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def process_change(self, change: Any) -> None:
        self.seen.append((change.id, change.get_document()))


def test_process_pillow_changes_processes_exactly_what_the_block_published(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    unique_name: str,
    publish: Publish,
    kit: Any,
    db: Conn,
) -> None:
    before = [
        (f"before-{i}", kit.change_message(f"before-{i}", document={"i": i})) for i in range(3)
    ]
    publish(topic, before)
    proc = PlainProcessor()
    pillow = Pillow(unique_name, [topic], [proc], chunk_size=2)
    with process_pillow_changes(pillow, kafka=kafka_bootstrap, postgres=postgres_url) as done:
        inside = [(f"in-{i}", kit.change_message(f"in-{i}", document={"i": i})) for i in range(5)]
        publish(topic, inside)
        assert proc.seen == []  # nothing runs inside the block
    assert sorted(proc.seen) == sorted((f"in-{i}", {"i": i}) for i in range(5))
    (summary,) = done.summaries
    assert (summary.changes, summary.failed, summary.stop_reason) == (5, 0, "idle")
    # The checkpoint covers every partition up to its end, as CommCare's does after the block.
    offsets = kit.checkpoint_offsets(db, unique_name)
    assert sum(offsets.values()) == 8 and len(offsets) == 3


def test_capture_kafka_changes_context_returns_what_was_published_with_every_field(
    kafka_bootstrap: str, topic: str, publish: Publish
) -> None:
    publish(
        topic,
        [
            (
                "old",
                json.dumps(
                    ChangeMeta(
                        document_id="old", data_source_type="sql", data_source_name="form-sql"
                    ).to_json()
                ).encode(),
            )
        ],
    )
    published = datetime.datetime(2021, 3, 4, 5, 6, 7, 890123, tzinfo=datetime.timezone.utc)
    metas = [
        ChangeMeta(
            document_id=f"doc-{i}",
            document_rev=f"{i}-abc",
            data_source_type="sql",
            data_source_name="case-sql",
            document_type="CommCareCase",
            document_subtype="person",
            domain="demo",
            is_deletion=i == 2,
            publish_timestamp=published,
            attempts=i,
            original_publication_datetime=published,
            associated_document_id="form-1",
            newer_field={"n": i},
        )
        for i in range(4)
    ]
    with capture_kafka_changes_context(topic, kafka=kafka_bootstrap) as captured:
        publish(topic, [(m.document_id, json.dumps(m.to_json()).encode()) for m in metas])
    got = {c.id: c for c in captured.changes}
    assert sorted(got) == [f"doc-{i}" for i in range(4)]
    for m in metas:
        change = got[m.document_id]
        assert change.metadata == m
        assert change.metadata is not None
        assert change.metadata.publish_timestamp == published
        assert change.deleted == m.is_deletion
        assert change.topic == topic
        assert change.get_document() is None  # nothing embedded, no store: None, as CommCare
