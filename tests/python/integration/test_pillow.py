"""``pillowtop_rs.Pillow`` with Python processors against real Kafka and PostgreSQL.

Mirrors ``src/python/pillow.rs`` and ``src/python/processor.rs``: processors run on the calling
thread once per chunk, failures become error rows with the Python traceback, the checkpoint
covers exactly what was handled, and signals stop the pillow after a final checkpoint.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pillowtop_rs
import psycopg
import pytest
from pillowtop_rs import BulkPillowProcessor, Change, Pillow, PillowProcessor, ops

Publish = Callable[..., list[str]]
Conn = psycopg.Connection[Any]


class Recorder(BulkPillowProcessor):
    """Records every change it sees, the chunk sizes and the thread it ran on."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.chunks: list[int] = []
        self.threads: set[int] = set()
        self.checkpoints = 0

    def process_change(self, change: Change) -> None:
        self.threads.add(threading.get_ident())
        self.seen.append(change.id)

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        self.threads.add(threading.get_ident())
        self.chunks.append(len(changes_chunk))
        self.seen.extend(c.id for c in changes_chunk)
        return [], []

    def checkpoint_updated(self) -> None:
        self.checkpoints += 1


def messages(kit: Any, n: int, prefix: str = "doc") -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}-{i}", kit.change_message(f"{prefix}-{i}", document={"i": i, "form": {"n": i}}))
        for i in range(n)
    ]


def run(pillow: Pillow, kafka: str, pg: str, **kw: Any) -> pillowtop_rs.RunSummary:
    kw.setdefault("until_idle", True)
    kw.setdefault("idle_timeout", 1.0)
    return pillow.run(kafka=kafka, postgres=pg, **kw)


@contextmanager
def signal_in(seconds: float, signum: int, handler: Any = None) -> Iterator[None]:
    """Sends ``signum`` to this process after ``seconds`` (with ``handler`` installed, if given)."""
    previous = signal.signal(signum, handler) if handler is not None else None
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signum))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if handler is not None:
            signal.signal(signum, previous)


def test_bulk_processor_sees_every_change_once_on_the_calling_thread(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 250))
    rec = Recorder()
    pillow = Pillow(unique_name, [topic], [rec], chunk_size=100)
    summary = run(pillow, kafka_bootstrap, postgres_url)
    assert summary.stop_reason == "idle"
    assert summary.changes == 250 and summary.failed == 0
    assert sorted(rec.seen) == sorted(f"doc-{i}" for i in range(250))
    assert rec.threads == {threading.get_ident()}
    assert max(rec.chunks) <= 100 and sum(rec.chunks) == 250
    assert rec.checkpoints >= 1
    # The checkpoint is the next offset to read on every partition: everything was handled.
    offsets = kit.checkpoint_offsets(db, unique_name)
    assert sum(offsets.values()) == 250 and len(offsets) == 3
    # A second run resumes after the checkpoint: nothing is seen twice.
    rec2 = Recorder()
    again = run(Pillow(unique_name, [topic], [rec2], chunk_size=100), kafka_bootstrap, postgres_url)
    assert again.changes == 0 and rec2.seen == []


def test_change_looks_like_commcares(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(
        topic,
        [("d1", kit.change_message("d1", domain="dimagi", document={"_id": "d1", "x": [1, 2]}))],
    )
    publish(topic, [("d2", kit.change_message("d2", deleted=True))])
    got: dict[str, dict[str, Any]] = {}

    class Inspect(PillowProcessor):
        def process_change(self, change: Change) -> None:
            meta = change.metadata
            got[change.id] = {
                "item": (change["id"], change["seq"], change["deleted"], change["doc"]),
                "attrs": (change.topic, change.partition, change.seq == change.offset),
                "meta": (meta.domain, meta.data_source_name, meta.document_type, meta.is_deletion),
                "ts": meta.publish_timestamp,
                "dict": change.to_dict(),
                "keys": ("id" in change, "nope" in change, change.get("nope", 7)),
            }

    run(Pillow(unique_name, [topic], [Inspect()], chunk_size=0), kafka_bootstrap, postgres_url)
    d1 = got["d1"]
    assert d1["item"][0] == "d1" and d1["item"][2] is False
    assert d1["item"][3] == {"_id": "d1", "x": [1, 2]}
    assert d1["attrs"][0] == topic and d1["attrs"][2] is True
    assert d1["meta"] == ("dimagi", "form-sql", "XFormInstance", False)
    assert d1["ts"] is not None and d1["ts"].tzinfo is not None
    assert d1["dict"]["doc"] == {"_id": "d1", "x": [1, 2]} and d1["dict"]["id"] == "d1"
    assert d1["keys"] == (True, False, 7)
    assert got["d2"]["item"][2] is True and got["d2"]["item"][3] is None


def test_failures_become_error_rows_with_the_python_traceback(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 30))

    class Picky(PillowProcessor):
        def process_change(self, change: Change) -> None:
            if change.id in ("doc-3", "doc-17"):
                raise ValueError(f"cannot handle {change.id}")

    class BadShape(BulkPillowProcessor):
        def process_change(self, change: Change) -> None:
            pass

        def process_changes_chunk(self, changes_chunk: list[Change]) -> Any:
            if any(c.id == "doc-5" for c in changes_chunk):
                return "not a tuple"
            return [], []

    class Serial(PillowProcessor):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def process_change(self, change: Change) -> None:
            self.seen.append(change.id)

    after = Serial()
    pillow = Pillow(unique_name, [topic], [Picky(), after], chunk_size=10)
    summary = run(pillow, kafka_bootstrap, postgres_url)
    assert summary.changes == 30
    rows = {r[0]: r for r in kit.error_rows(db, unique_name)}
    assert set(rows) == {"doc-3", "doc-17"}
    # The failing changes: ValueError from Picky, with a real traceback naming the line.
    for doc in ("doc-3", "doc-17"):
        assert rows[doc][1] == "builtins.ValueError"
        assert "Traceback (most recent call last)" in rows[doc][2]
        assert f"cannot handle {doc}" in rows[doc][2] and "in process_change" in rows[doc][2]
        assert rows[doc][3] == 1
    # The first serial failure skips the processors after it (documented CommCare behaviour);
    # every other change reached the last processor.
    assert set(after.seen) == {f"doc-{i}" for i in range(30)} - {"doc-3", "doc-17"}
    assert summary.failed == 2
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 30


def test_a_wrong_return_shape_fails_the_chunk_with_a_type_error(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 30))

    class BadShape(BulkPillowProcessor):
        def process_change(self, change: Change) -> None:
            pass

        def process_changes_chunk(self, changes_chunk: list[Change]) -> Any:
            if any(c.id == "doc-5" for c in changes_chunk):
                return "not a tuple"
            return [], []

    after = Recorder()
    summary = run(
        Pillow(unique_name, [topic], [BadShape(), after], chunk_size=10),
        kafka_bootstrap,
        postgres_url,
    )
    rows = {r[0]: r for r in kit.error_rows(db, unique_name)}
    # Every change of the chunk holding doc-5 fails with the TypeError, recorded like any
    # processor exception. Batch processors each get the whole chunk (CommCare), so the next
    # one still saw every change.
    assert "doc-5" in rows and 1 <= len(rows) <= 10
    assert all(
        r[1] == "builtins.TypeError" and "must return (changes to retry" in r[2]
        for r in rows.values()
    )
    assert summary.changes == 30 and summary.failed == len(rows)
    assert sorted(after.seen) == sorted(f"doc-{i}" for i in range(30))


def test_set_document_reaches_later_processors_and_stores_fetch_in_bulk(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    # No embedded documents: they come from a Python document store, one call per chunk.
    publish(topic, [(f"s-{i}", kit.change_message(f"s-{i}")) for i in range(20)])

    class Store:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def get_documents(self, ids: list[str]) -> Mapping[str, Any]:
            self.calls.append(ids)
            return {i: {"_id": i, "v": 1} for i in ids if i != "s-7"}

    class Enrich(PillowProcessor):
        def process_change(self, change: Change) -> None:
            doc = change.get_document()
            if doc is not None:
                change.set_document({**doc, "v": doc["v"] + 1})

    seen: dict[str, Any] = {}

    class Check(PillowProcessor):
        def process_change(self, change: Change) -> None:
            seen[change.id] = change.get_document()

    store = Store()
    pillow = Pillow(
        unique_name,
        [topic],
        [Enrich(), Check()],
        chunk_size=10,
        document_stores={("sql", "form-sql"): store},
    )
    run(pillow, kafka_bootstrap, postgres_url)
    assert seen["s-7"] is None
    assert all(seen[f"s-{i}"] == {"_id": f"s-{i}", "v": 2} for i in range(20) if i != 7)
    assert sum(len(c) for c in store.calls) == 20 and all(len(c) <= 10 for c in store.calls)


def test_keyboard_interrupt_in_a_processor_stops_after_checkpointing_completed_chunks(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 100))

    class Interrupting(BulkPillowProcessor):
        def __init__(self) -> None:
            self.done: list[str] = []

        def process_change(self, change: Change) -> None:
            pass

        def process_changes_chunk(
            self, changes_chunk: list[Change]
        ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
            if len(self.done) >= 30:
                raise KeyboardInterrupt
            self.done.extend(c.id for c in changes_chunk)
            return [], []

    proc = Interrupting()
    pillow = Pillow(unique_name, [topic], [proc], chunk_size=10, checkpoint_frequency=1000)
    with pytest.raises(KeyboardInterrupt):
        run(pillow, kafka_bootstrap, postgres_url)
    # Completed chunks were checkpointed (the frequency alone would not have written them);
    # the interrupted chunk was not.
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == len(proc.done) >= 30
    # No liveness row is left behind.
    n = db.execute(
        "SELECT count(*) FROM pillowtop_rs_process WHERE pillow_name = %s", (unique_name,)
    ).fetchone()
    assert n is not None and n[0] == 0


def test_sigint_while_waiting_stops_cleanly_and_is_reraised(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 40))
    rec = Recorder()
    pillow = Pillow(
        unique_name,
        [topic],
        [rec],
        chunk_size=10,
        checkpoint_frequency=1000,
        max_checkpoint_delay=None,
    )
    started = time.monotonic()
    with signal_in(3.0, signal.SIGINT), pytest.raises(KeyboardInterrupt):
        pillow.run(kafka=kafka_bootstrap, postgres=postgres_url, idle_timeout=30.0)
    assert time.monotonic() - started < 10
    assert sorted(rec.seen) == sorted(f"doc-{i}" for i in range(40))
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 40


def test_sigterm_handler_requests_a_graceful_shutdown(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 40))
    rec = Recorder()
    hooks: Counter[int] = Counter()
    asked: list[int] = []
    with signal_in(3.0, signal.SIGTERM, lambda *_: asked.append(pillowtop_rs.request_shutdown())):
        summary = Pillow(unique_name, [topic], [rec], chunk_size=10).run(
            kafka=kafka_bootstrap,
            postgres=postgres_url,
            idle_timeout=30.0,
            on_chunk=lambda: hooks.update([threading.get_ident()]),
        )
    assert asked == [1]
    assert summary.stop_reason == "shutdown" and summary.changes == 40
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 40
    assert pillowtop_rs.request_shutdown() == 0  # nothing runs any more
    # on_chunk ran on this thread, before and after each chunk.
    assert set(hooks) == {threading.get_ident()} and hooks[threading.get_ident()] >= 2 * len(
        rec.chunks
    )


def test_definition_errors_are_clear(unique_name: str) -> None:
    with pytest.raises(TypeError, match="is not a processor: it needs a process_change"):
        Pillow(unique_name, ["t"], [object()])
    with pytest.raises(pillowtop_rs.ConfigurationError, match="start_policy"):
        Pillow(unique_name, ["t"], [Recorder()], start_policy="sometimes")
    with pytest.raises(pillowtop_rs.ConfigurationError, match="reads no topics"):
        Pillow(unique_name, [], [Recorder()])
    with pytest.raises(pillowtop_rs.ConfigurationError, match="chunk_size"):
        Pillow(unique_name, ["t"], [Recorder()], chunk_size=-1)


def test_unreachable_kafka_is_a_clear_error(postgres_url: str, db: Conn, unique_name: str) -> None:
    pillow = Pillow(unique_name, ["nowhere"], [Recorder()])
    with pytest.raises(pillowtop_rs.KafkaError):
        pillow.run(kafka="127.0.0.1:1", postgres=postgres_url, until_idle=True, idle_timeout=1.0)


def test_shutdown_requested_from_a_signal_handler_stops_at_once_without_a_final_checkpoint(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 40))
    rec = Recorder()

    def handler(signum: int, frame: object) -> None:
        raise pillowtop_rs.ShutdownRequested("a second SIGTERM")

    with signal_in(3.0, signal.SIGTERM, handler), pytest.raises(pillowtop_rs.ShutdownRequested):
        Pillow(
            unique_name,
            [topic],
            [rec],
            chunk_size=10,
            checkpoint_frequency=1000,
            max_checkpoint_delay=None,
        ).run(kafka=kafka_bootstrap, postgres=postgres_url, idle_timeout=30.0)
    # Everything was processed, but only the first chunk was checkpointed (the first change
    # after a start always checkpoints; the frequency never came due): "at once" skips the
    # final checkpoint that a graceful stop writes. Delivery stays at-least-once.
    assert sorted(rec.seen) == sorted(f"doc-{i}" for i in range(40))
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) < 40


def test_independent_processors_keep_their_own_checkpoints_from_python(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 40))

    class Named(Recorder):
        def __init__(self, name: str, fail_on: str | None = None) -> None:
            super().__init__()
            self.processor_name = name
            self.fail_on = fail_on

        def process_changes_chunk(
            self, changes_chunk: list[Change]
        ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
            super().process_changes_chunk(changes_chunk)
            bad = [c for c in changes_chunk if c.id == self.fail_on]
            return [], [(c, ValueError(f"{self.processor_name} refuses {c.id}")) for c in bad]

    # Two instances of one class need names of their own: the definition says so.
    with pytest.raises(pillowtop_rs.ConfigurationError, match="two processors are named twin"):
        Pillow(
            unique_name,
            [topic],
            [Named("twin"), Named("twin")],
            processor_checkpoints="independent",
        )
    with pytest.raises(pillowtop_rs.ConfigurationError, match="processor_checkpoints must be"):
        Pillow(unique_name, [topic], [Named("a")], processor_checkpoints="per-processor")  # type: ignore[arg-type]

    a, b = Named("a", fail_on="doc-7"), Named("b")
    pillow = Pillow(
        unique_name, [topic], [a, b], chunk_size=10, processor_checkpoints="independent"
    )
    assert pillow.processor_checkpoints == "independent"
    summary = run(pillow, kafka_bootstrap, postgres_url)
    assert summary.failed == 1
    # Each processor saw every change once, on this thread.
    for p in (a, b):
        assert sorted(p.seen) == sorted(f"doc-{i}" for i in range(40)), p.processor_name
        assert p.threads == {threading.get_ident()}
    # Each has its own rows at the end of every partition; the pillow's are their minimum.
    ends = kit.checkpoint_offsets(db, f"{unique_name}/processor/a")
    assert sum(ends.values()) == 40 and len(ends) == 3
    assert kit.checkpoint_offsets(db, f"{unique_name}/processor/b") == ends
    assert kit.checkpoint_offsets(db, unique_name) == ends
    # The failure is CommCare's error row of the pillow, which names the processor.
    rows = {r[0]: r for r in kit.error_rows(db, unique_name)}
    assert set(rows) == {"doc-7"} and "a refuses doc-7" in rows["doc-7"][2]
    assert rows["doc-7"][2].startswith(f"in processor a of pillow {unique_name}")
    # The retry queue's steps (the row's metadata re-published with publish_timestamp = now,
    # the rows deleted) run the change through the processor that failed only; a pillow with
    # one shared checkpoint would run it through both, as CommCare does.
    row = db.execute(
        "SELECT change_metadata::text FROM pillow_retry_pillowerror WHERE pillow = %s",
        (unique_name,),
    ).fetchone()
    assert row is not None
    meta = json.loads(row[0])
    assert meta["attempts"] == 1
    meta["publish_timestamp"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    publish(topic, [("doc-7", json.dumps(meta).encode())])
    db.execute(
        "DELETE FROM pillow_retry_pillowerror WHERE doc_id = 'doc-7' AND pillow = %s",
        (unique_name,),
    )
    a.fail_on = None
    a.seen.clear()
    b.seen.clear()
    assert run(pillow, kafka_bootstrap, postgres_url).failed == 0
    assert (a.seen, b.seen) == (["doc-7"], [])
    # The freshness API answers per processor.
    partition = max(ends, key=lambda p: ends[p])
    assert ops.processed(
        unique_name, topic, partition, ends[partition] - 1, postgres_url=postgres_url, processor="b"
    )
    assert not ops.processed(
        unique_name, topic, partition, ends[partition], postgres_url=postgres_url, processor="a"
    )


def test_the_lead_bound_of_independent_processors_is_set_from_python(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    kit: Any,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``lane_max_lead_changes`` / ``lane_max_lead_bytes`` reach the engine: 0 gives each
    processor a consumer of its own, a bound one shared read of Kafka with that bound."""
    publish(topic, messages(kit, 12))
    with pytest.raises(pillowtop_rs.ConfigurationError, match="lane_max_lead_changes must be >= 0"):
        Pillow(unique_name, [topic], [Recorder()], lane_max_lead_changes=-1)
    with pytest.raises(pillowtop_rs.ConfigurationError, match="lane_max_lead_bytes must be >= 0"):
        Pillow(unique_name, [topic], [Recorder()], lane_max_lead_bytes=-1)
    assert Pillow(unique_name, [topic], [Recorder()]).lane_max_lead_changes == 10_000
    caplog.set_level(logging.INFO, logger="pillowtop_rs")
    for bound, says in ((0, "with a consumer of their own"), (50, "through a shared read")):
        a, b = Recorder(), Recorder()
        a.processor_name, b.processor_name = "a", "b"  # type: ignore[attr-defined]
        pillow = Pillow(
            f"{unique_name}-{bound}",
            [topic],
            [a, b],
            processor_checkpoints="independent",
            lane_max_lead_changes=bound,
            lane_max_lead_bytes=1 << 20,
        )
        assert (pillow.lane_max_lead_changes, pillow.lane_max_lead_bytes) == (bound, 1 << 20)
        caplog.clear()
        assert run(pillow, kafka_bootstrap, postgres_url).failed == 0
        for p in (a, b):
            assert sorted(p.seen) == sorted(f"doc-{i}" for i in range(12))
        lines: list[Any] = [
            r for r in caplog.records if r.getMessage().startswith("independent processors")
        ]
        assert len(lines) == 1 and says in lines[0].getMessage(), [r.getMessage() for r in lines]
        if bound:
            assert lines[0].lane_max_lead_changes == bound
            assert lines[0].lane_max_lead_bytes == 1 << 20


def test_online_split_moves_a_processor_out_of_a_running_pillow_from_python(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    """``ops.split_checkpoints(..., processor=, online=True)`` while the pillow runs here: the
    processor stops at a chunk boundary, its exact position moves to the target, the other
    processor never stops, and nothing is handled twice or lost."""
    publish(topic, messages(kit, 30))

    class Positions(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.processor_name = name
            self.at: list[tuple[int, int]] = []

        def process_changes_chunk(
            self, changes_chunk: list[Change]
        ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
            self.at.extend((c.partition or 0, c.offset) for c in changes_chunk)
            return super().process_changes_chunk(changes_chunk)

    fast, slow = Positions("fast"), Positions("slow")
    pillow = Pillow(
        unique_name, [topic], [fast, slow], chunk_size=5, processor_checkpoints="independent"
    )
    target = f"{unique_name}-slow"
    outcome: dict[str, Any] = {}

    def operator() -> None:
        deadline = time.monotonic() + 60
        try:
            while len(slow.seen) < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            outcome["split"] = ops.split_checkpoints(
                unique_name,
                [target],
                postgres_url=postgres_url,
                processor="slow",
                online=True,
                timeout=30,
                noinput=True,
            )
            publish(topic, messages(kit, 20, prefix="late"))
            while len(fast.seen) < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = e
        finally:
            pillowtop_rs.request_shutdown()

    t = threading.Thread(target=operator)
    t.start()
    try:
        run(pillow, kafka_bootstrap, postgres_url, until_idle=False)
    finally:
        t.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["split"]["outcome"] == "applied"
    # The fast processor never stopped: it saw all 50, the late ones too, once each.
    assert sorted(fast.seen) == sorted(
        [f"doc-{i}" for i in range(30)] + [f"late-{i}" for i in range(20)]
    )
    # The slow one saw exactly the offsets below the position the target got, once each.
    handed = kit.checkpoint_offsets(db, target)
    assert handed, "the target has the processor's rows"
    assert sorted(slow.at) == sorted((p, o) for p, end in handed.items() for o in range(end))
    assert not [i for i in slow.seen if i.startswith("late-")], "split before they were published"
    # Its lane rows moved; the pillow's rows follow the fast processor alone now.
    assert kit.checkpoint_offsets(db, f"{unique_name}/processor/slow") == {}
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 50


def test_online_merge_takes_a_split_processor_back_into_a_running_pillow_from_python(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    """``ops.merge_checkpoints([target], source, processor=, online=True)`` while the source
    runs here (its lanes on this thread): the processor split out earlier goes back, its lane
    resumes from the position its pillow handed back (that pillow is stopped: handed back
    directly), and with independent checkpoints nothing is handled twice or lost."""
    publish(topic, messages(kit, 30))
    fast, slow = Recorder(), Recorder()
    fast.processor_name, slow.processor_name = "fast", "slow"  # type: ignore[attr-defined]
    pillow = Pillow(
        unique_name, [topic], [fast, slow], chunk_size=5, processor_checkpoints="independent"
    )
    target = f"{unique_name}-slow"
    outcome: dict[str, Any] = {}

    def operator() -> None:
        deadline = time.monotonic() + 60
        try:
            while len(slow.seen) < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            ops.split_checkpoints(
                unique_name,
                [target],
                postgres_url=postgres_url,
                processor="slow",
                online=True,
                timeout=30,
                noinput=True,
            )
            seen_at_split = len(slow.seen)
            publish(topic, messages(kit, 20, prefix="late"))
            while len(fast.seen) < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            outcome["seen_while_split"] = len(slow.seen) - seen_at_split
            outcome["merge"] = ops.merge_checkpoints(
                [target],
                unique_name,
                postgres_url=postgres_url,
                processor="slow",
                online=True,
                timeout=30,
                noinput=True,
            )
            publish(topic, messages(kit, 10, prefix="after"))
            while len(slow.seen) < 60 and time.monotonic() < deadline:
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = e
        finally:
            pillowtop_rs.request_shutdown()

    t = threading.Thread(target=operator)
    t.start()
    try:
        run(pillow, kafka_bootstrap, postgres_url, until_idle=False)
    finally:
        t.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["merge"]["outcome"] == "applied"
    assert outcome["seen_while_split"] == 0, "the pillow ran slow while it was split out"
    every = (
        [f"doc-{i}" for i in range(30)]
        + [f"late-{i}" for i in range(20)]
        + [f"after-{i}" for i in range(10)]
    )
    # Nothing lost, nothing twice: slow took the changes published while it was split out
    # (its own pillow never ran) after it came back, and fast never moved back.
    assert sorted(fast.seen) == sorted(every)
    assert sorted(slow.seen) == sorted(every)
    assert db.execute(
        "SELECT count(*) FROM pillowtop_rs_handover WHERE checkpoint_id = %s", (unique_name,)
    ).fetchone() == (0,), "the split's record is gone"
    assert sum(kit.checkpoint_offsets(db, unique_name).values()) == 60
