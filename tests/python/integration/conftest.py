"""Fixtures for the service tests: unique topics, CommCare-shaped change messages, cleanup."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

Publish = Callable[..., list[str]]


class Kit:
    """Helpers for the tests (a fixture, since test modules cannot import conftest)."""

    @staticmethod
    def change_message(
        doc_id: str,
        *,
        domain: str = "demo",
        document: dict[str, Any] | None = None,
        deleted: bool = False,
    ) -> bytes:
        """A change message as CommCare's producer writes it (``ChangeMeta`` JSON)."""
        meta: dict[str, Any] = {
            "document_id": doc_id,
            "document_rev": None,
            "data_source_type": "sql",
            "data_source_name": "form-sql",
            "document_type": "XFormInstance",
            "document_subtype": "http://openrosa.org/formdesigner/form1",
            "domain": domain,
            "is_deletion": deleted,
            "publish_timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "attempts": 0,
        }
        if document is not None:
            meta["document"] = document
        return json.dumps(meta).encode()

    @staticmethod
    def checkpoint_offsets(conn: psycopg.Connection[Any], checkpoint_id: str) -> dict[int, int]:
        """``{partition: offset}`` of a checkpoint."""
        rows = conn.execute(
            'SELECT "partition", "offset" FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = %s',
            (checkpoint_id,),
        ).fetchall()
        return {int(p): int(o) for p, o in rows}

    @staticmethod
    def error_rows(conn: psycopg.Connection[Any], pillow: str) -> list[tuple[Any, ...]]:
        """``(doc_id, error_type, error_traceback, current_attempt)`` rows of a pillow."""
        return conn.execute(
            "SELECT doc_id, error_type, error_traceback, current_attempt "
            "FROM pillow_retry_pillowerror WHERE pillow = %s ORDER BY doc_id",
            (pillow,),
        ).fetchall()


@pytest.fixture
def kit() -> type[Kit]:
    """The helper namespace."""
    return Kit


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    """A fresh 3-partition topic, deleted afterwards."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for f in admin.create_topics(
        [NewTopic(unique_name, num_partitions=3, replication_factor=1)]
    ).values():
        f.result(30)
    yield unique_name
    for f in admin.delete_topics([unique_name]).values():
        f.result(30)


@pytest.fixture
def publish(kafka_bootstrap: str) -> Publish:
    """``publish(topic, messages)``: produces ``(key, body)`` pairs or bodies, returns the keys."""

    def _publish(topic: str, messages: list[tuple[str, bytes]]) -> list[str]:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        for key, body in messages:
            producer.produce(topic, key=key.encode(), value=body)
            producer.poll(0)
        assert producer.flush(30) == 0
        return [k for k, _ in messages]

    return _publish


@pytest.fixture
def db(postgres_url: str, unique_name: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection; the rows of checkpoint/pillow ids starting with the test's
    unique name are deleted afterwards."""
    conn = psycopg.connect(postgres_url, autocommit=True)
    yield conn
    like = unique_name + "%"
    for table, column in [
        ("pillowtop_kafkacheckpoint", "checkpoint_id"),
        ("pillow_retry_pillowerror", "pillow"),
        ("pillowtop_rs_failed_processor", "pillow"),
        ("pillowtop_rs_process", "pillow_name"),
        ("pillowtop_rs_handover", "checkpoint_id"),
        ("pillowtop_rs_reindex", "pillow"),
    ]:
        try:
            conn.execute(f"DELETE FROM {table} WHERE {column} LIKE %s", (like,))  # noqa: S608
        except psycopg.errors.UndefinedTable:
            pass
    conn.close()
