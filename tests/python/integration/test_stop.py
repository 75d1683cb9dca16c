"""Stop means stop, and the one assembly path from Python (reliability issue item 8,
architecture issue item 6).

Ctrl-C is as graceful as SIGTERM: the chunk at hand finishes, the final checkpoint is written,
``KeyboardInterrupt`` is re-raised carrying the run's summary, and a restart handles nothing
twice. A stop request ends every wait for a service, also at start-up. Options of the TOML
runner exist here too: exactly-once tables and SQL document stores.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from pillowtop_rs import BulkPillowProcessor, Change, Pillow, RustProcessor, SqlDocumentStore

Publish = Callable[..., list[str]]
Conn = psycopg.Connection[Any]


@contextmanager
def sigint_in(seconds: float) -> Iterator[None]:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Slow(BulkPillowProcessor):
    """Takes 2 ms a change, in Python code (where a default SIGINT would land)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def process_change(self, change: Change) -> None:
        time.sleep(0.002)
        self.seen.append(change.id)

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        for c in changes_chunk:
            self.process_change(c)
        return [], []


def test_ctrl_c_on_a_backlog_is_graceful_and_a_restart_handles_nothing_twice(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    n = 3000
    publish(topic, [(f"d-{i}", kit.change_message(f"d-{i}", document={"i": i})) for i in range(n)])
    first = Slow()
    pillow = Pillow(unique_name, [topic], [first], chunk_size=10, checkpoint_frequency=1000)
    with sigint_in(2.0), pytest.raises(KeyboardInterrupt) as raised:
        pillow.run(kafka=kafka_bootstrap, postgres=postgres_url, idle_timeout=1.0)
    summary = raised.value.summary  # type: ignore[attr-defined]
    assert summary.stop_reason == "shutdown"
    assert 0 < len(first.seen) < n, "interrupted on the backlog"
    assert summary.changes == len(first.seen)
    # The final checkpoint covers exactly what was handled.
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == len(first.seen)
    second = Slow()
    again = Pillow(unique_name, [topic], [second], chunk_size=10)
    again.run(kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0)
    assert not set(first.seen) & set(second.seen), "a restart after Ctrl-C handled changes twice"
    assert sorted(first.seen + second.seen) == sorted(f"d-{i}" for i in range(n))
    # Python's own SIGINT handler is back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_stops_at_once_without_finishing_the_chunk(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, [(f"s-{i}", kit.change_message(f"s-{i}", document={"i": i})) for i in range(50)])

    class Slower(Slow):
        def process_change(self, change: Change) -> None:
            time.sleep(0.2)  # a chunk of 10 takes 2 s
            self.seen.append(change.id)

    proc = Slower()
    pillow = Pillow(unique_name, [topic], [proc], chunk_size=10, checkpoint_frequency=1000)
    started = time.monotonic()
    # Both interrupts land inside the first chunk: a graceful stop would end it (at ~2 s).
    with sigint_in(0.8), sigint_in(1.2), pytest.raises(KeyboardInterrupt) as raised:
        pillow.run(kafka=kafka_bootstrap, postgres=postgres_url, idle_timeout=1.0)
    took = time.monotonic() - started
    assert took < 1.9, f"the second Ctrl-C waited for the chunk ({took:.2f} s)"
    assert not hasattr(raised.value, "summary"), "stopped at once, not after a final checkpoint"
    assert len(proc.seen) < 10
    # Nothing of the interrupted chunk was checkpointed.
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_ends_the_start_up_wait_for_an_unreachable_postgres(
    kafka_bootstrap: str, topic: str, unique_name: str
) -> None:
    pillow = Pillow(unique_name, [topic], [Slow()])
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    started = time.monotonic()
    with sigint_in(1.0), pytest.raises(KeyboardInterrupt) as raised:
        # Creating the pillowtop tables waits for PostgreSQL (5 minutes by default).
        pillow.run(kafka=kafka_bootstrap, postgres=url, idle_timeout=1.0)
    assert time.monotonic() - started < 4.0
    assert raised.value.summary.changes == 0  # type: ignore[attr-defined]


def test_an_exactly_once_table_and_a_sql_document_store_from_python(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    table = f"{unique_name}_report".lower()
    docs = f"{unique_name}_docs".lower()
    db.execute(f'CREATE TABLE "{docs}" (id text PRIMARY KEY, doc jsonb)')
    db.execute(
        f"INSERT INTO \"{docs}\" SELECT 'e-' || i, jsonb_build_object('n', i)"
        " FROM generate_series(0, 49) i"
    )
    db.commit()
    try:
        # No embedded documents: both processors read them from the SQL store.
        publish(topic, [(f"e-{i}", kit.change_message(f"e-{i}")) for i in range(50)])
        report = RustProcessor(
            "postgres_table",
            {
                "table": table,
                "primary_key": ["doc_id"],
                "exactly_once": True,
                "columns": [
                    {"name": "doc_id", "type": "text", "change": "id"},
                    {"name": "n", "type": "integer", "path": "n"},
                ],
            },
        )
        seen: dict[str, Any] = {}

        class Look(BulkPillowProcessor):
            def process_change(self, change: Change) -> None:
                seen[change.id] = change.get_document()

            def process_changes_chunk(
                self, changes_chunk: list[Change]
            ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
                for c in changes_chunk:
                    self.process_change(c)
                return [], []

        store = SqlDocumentStore(docs, id_column="id", doc_column="doc")
        pillow = Pillow(
            unique_name,
            [topic],
            [report, Look()],
            document_stores={("sql", "form-sql"): store},
        )
        summary = pillow.run(
            kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
        )
        assert summary.changes == 50 and summary.failed == 0
        assert seen == {f"e-{i}": {"n": i} for i in range(50)}
        rows = db.execute(f'SELECT count(*), sum(n) FROM "{table}"').fetchone()
        assert rows == (50, sum(range(50)))
        assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 50
    finally:
        db.execute(f'DROP TABLE IF EXISTS "{docs}"')
        db.execute(f'DROP TABLE IF EXISTS "{table}"')
        db.commit()


def test_two_exactly_once_tables_are_refused_when_the_pillow_is_defined(unique_name: str) -> None:
    def table(name: str) -> RustProcessor:
        return RustProcessor(
            "postgres_table",
            {
                "table": name,
                "primary_key": ["id"],
                "exactly_once": True,
                "columns": [{"name": "id", "type": "text", "change": "id"}],
            },
        )

    from pillowtop_rs import ConfigurationError

    with pytest.raises(ConfigurationError, match="at most one can commit with the checkpoint"):
        Pillow(unique_name, ["t"], [table("a"), table("b")])
    with pytest.raises(ConfigurationError, match="not a valid SQL identifier"):
        SqlDocumentStore("bad table")
