"""``pillowtop_rs.ops``: checkpoint operations from Python with the CLI's semantics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from pillowtop_rs import (
    ConfigurationError,
    OperationAborted,
    OperationRefused,
    Pillow,
    PillowProcessor,
    ops,
)
from pillowtop_rs._native import Change

Publish = Callable[..., list[str]]


class Nothing(PillowProcessor):
    def process_change(self, change: Change) -> None:
        pass


def test_split_merge_and_reset_round_trip(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: psycopg.Connection[Any],
    kit: Any,
    unique_name: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    publish(topic, [(f"d{i}", kit.change_message(f"d{i}")) for i in range(30)])
    source, target = unique_name + "_a", unique_name + "_b"
    Pillow(source, [topic], [Nothing()]).run(
        kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
    )
    before = kit.checkpoint_offsets(db, source)
    assert sum(before.values()) == 30

    dry = ops.split_checkpoints(source, [target], postgres_url=postgres_url, dry_run=True)
    assert dry["outcome"] == "dry_run"
    assert dry["plan"]["source"] == source and dry["plan"]["targets"] == [target]
    assert "result" not in dry
    assert kit.checkpoint_offsets(db, target) == {}
    done = ops.split_checkpoints(
        source, [target], postgres_url=postgres_url, target_topics={target: [topic]}, noinput=True
    )
    assert kit.checkpoint_offsets(db, target) == before
    assert done["outcome"] == "applied"
    assert done["result"] == {"rows_copied": len(before), "rows_written": len(before)}
    out = capfd.readouterr().out
    assert source in out and target in out

    reset = ops.reset_checkpoint(
        target, to="earliest", postgres_url=postgres_url, kafka=kafka_bootstrap, noinput=True
    )
    assert set(kit.checkpoint_offsets(db, target).values()) == {0}
    assert reset["result"] == {"checkpoint_id": target, "rows_written": len(before)}
    # Merging takes the minimum per partition: the reset target wins.
    merged = unique_name + "_m"
    ops.merge_checkpoints([source, target], merged, postgres_url=postgres_url, noinput=True)
    assert set(kit.checkpoint_offsets(db, merged).values()) == {0}

    with pytest.raises(OperationAborted) as info:
        ops.merge_checkpoints([], merged, postgres_url=postgres_url, noinput=True)
    assert info.value.exit_status == 2


def test_a_declined_question_raises_operation_aborted_with_commcares_status(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: psycopg.Connection[Any],
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, [("d1", kit.change_message("d1"))])
    source, target = unique_name + "_a", unique_name + "_b"
    for name in (source, target):
        Pillow(name, [topic], [Nothing()]).run(
            kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
        )
    ops.reset_checkpoint(
        target, to="earliest", postgres_url=postgres_url, kafka=kafka_bootstrap, noinput=True
    )
    kept = kit.checkpoint_offsets(db, target)
    assert kept != kit.checkpoint_offsets(db, source)
    # The target exists, so split asks before overwriting it; answer "n" on stdin.
    script = (
        "import sys\n"
        "from pillowtop_rs import OperationAborted, ops\n"
        "try:\n"
        f"    ops.split_checkpoints({source!r}, [{target!r}], postgres_url={postgres_url!r})\n"
        "except OperationAborted as e:\n"
        "    sys.exit(10 + e.exit_status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input="n\n", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 11, done.stdout + done.stderr
    assert "Pillow checkpoints" in done.stdout or "overwrite" in (done.stdout + done.stderr).lower()
    assert kit.checkpoint_offsets(db, target) == kept


class Script:
    """A ``Ui`` that records every line and answers from a list."""

    def __init__(self, *answers: str) -> None:
        self.lines: list[str] = []
        self.answers = list(answers)

    def out(self, line: str) -> None:
        self.lines.append(line)

    def err(self, line: str) -> None:
        self.lines.append(f"err: {line}")

    def read_answer(self) -> str:
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


def test_a_ui_object_receives_every_line_and_question_and_typed_errors_come_back(
    postgres_url: str, db: psycopg.Connection[Any], kit: Any, unique_name: str
) -> None:
    source, target = unique_name + "_a", unique_name + "_b"
    with db.cursor() as c:
        for cid, offset in ((source, 5), (target, 1)):
            c.execute(
                "INSERT INTO pillowtop_kafkacheckpoint"
                ' (checkpoint_id, topic, partition, "offset", last_modified)'
                " VALUES (%s, 'form', 0, %s, now())",
                [cid, offset],
            )
    db.commit()
    ui = Script("y", "n")
    with pytest.raises(OperationAborted) as info:
        ops.split_checkpoints(source, [target], postgres_url=postgres_url, ui=ui)
    assert info.value.exit_status == 1
    assert f"Some of ['{target}'] already exist:" in ui.lines
    assert "Are you sure you want to DELETE existing checkpoints? [y/n]" in ui.lines
    assert kit.checkpoint_offsets(db, target) == {0: 1}

    # With JSON on stdout, the messages and the questions go to stderr.
    ui = Script()
    dry = ops.split_checkpoints(
        source, [target], postgres_url=postgres_url, json=True, dry_run=True, ui=ui
    )
    assert ui.lines[-1] == "err: dry run: nothing was written"
    assert dry["plan"]["existing"][0]["checkpoint_id"] == target

    with pytest.raises(OperationRefused, match="have no rows"):
        ops.split_checkpoints(unique_name + "_never", [target], postgres_url=postgres_url, ui=ui)
    with pytest.raises(ConfigurationError, match="no target checkpoints given"):
        ops.split_checkpoints(source, [], postgres_url=postgres_url, ui=ui)


def test_wait_delivered_returns_once_the_pillow_has_handled_the_change(
    kafka_bootstrap: str, postgres_url: str, topic: str, unique_name: str
) -> None:
    from pillowtop_rs.producer import ChangeProducer

    producer = ChangeProducer(bootstrap=kafka_bootstrap)
    change = {"document_id": "fresh-1", "data_source_type": "sql", "data_source_name": "form-sql"}
    delivery = producer.send_change(topic, change)
    assert delivery is not None
    # Not yet: no pillow has run; the wait ends with False when its time is up.
    started = time.monotonic()
    assert not ops.wait_delivered(unique_name, delivery, postgres_url=postgres_url, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert not ops.processed(
        unique_name, delivery.topic, delivery.partition, delivery.offset, postgres_url=postgres_url
    )
    # A pillow handles it: both answers turn true, for the pillow and for its processor.
    Pillow(unique_name, [topic], [Nothing()]).run(
        kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
    )
    assert ops.wait_delivered(unique_name, delivery, postgres_url=postgres_url, timeout=10)
    # A timeout too large for the clock is no deadline (not an overflow).
    assert ops.wait_delivered(unique_name, delivery, postgres_url=postgres_url, timeout=1e300)
    assert ops.processed(
        unique_name,
        delivery.topic,
        delivery.partition,
        delivery.offset,
        postgres_url=postgres_url,
        processor="Nothing",
    )
    # The next offset of the partition has not been published, so it is not handled.
    assert not ops.processed(
        unique_name,
        delivery.topic,
        delivery.partition,
        delivery.offset + 1,
        postgres_url=postgres_url,
    )
    with pytest.raises(ConfigurationError, match="timeout"):
        ops.wait_delivered(unique_name, delivery, postgres_url=postgres_url, timeout=-1)


def test_ctrl_c_ends_an_online_split_and_withdraws_its_request(
    postgres_url: str, db: psycopg.Connection[Any], kit: Any, unique_name: str
) -> None:
    """``ops.split_checkpoints(..., online=True)`` waits for the source's live processes; a
    Ctrl-C ends the wait long before ``timeout`` and withdraws the request, changing nothing."""
    source, target = unique_name + "_a", unique_name + "_b"
    with db.cursor() as c:
        c.execute(
            "INSERT INTO pillowtop_kafkacheckpoint"
            ' (checkpoint_id, topic, partition, "offset", last_modified)'
            " VALUES (%s, 'form', 0, 7, now())",
            [f"{source}/processor/slow"],
        )
        # A live process of the source that never takes the request up.
        c.execute(
            "INSERT INTO pillowtop_rs_process (pillow_name, process_num, num_processes,"
            " checkpoint_id, hostname, pid, started_at, heartbeat_at)"
            " VALUES (%s, 0, 1, %s, 'elsewhere', 1, now(), now())",
            [source, source],
        )
    db.commit()
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(OperationRefused, match="interrupted after .*the request was withdrawn"):
            ops.split_checkpoints(
                source,
                [target],
                postgres_url=postgres_url,
                processor="slow",
                online=True,
                timeout=120,
                noinput=True,
            )
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30
    assert kit.checkpoint_offsets(db, target) == {}
    with db.cursor() as c:
        c.execute("SELECT count(*) FROM pillowtop_rs_handover WHERE checkpoint_id = %s", [source])
        row = c.fetchone()
    assert row is not None and row[0] == 0
