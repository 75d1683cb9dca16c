"""``pillowtop_rs.ops``: checkpoint operations from Python with the CLI's semantics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from pillowtop_rs import OperationAborted, Pillow, PillowProcessor, ops
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

    ops.split_checkpoints(source, [target], postgres_url=postgres_url, dry_run=True)
    assert kit.checkpoint_offsets(db, target) == {}
    ops.split_checkpoints(
        source, [target], postgres_url=postgres_url, target_topics={target: [topic]}, noinput=True
    )
    assert kit.checkpoint_offsets(db, target) == before
    out = capfd.readouterr().out
    assert source in out and target in out

    ops.reset_checkpoint(
        target, to="earliest", postgres_url=postgres_url, kafka=kafka_bootstrap, noinput=True
    )
    assert set(kit.checkpoint_offsets(db, target).values()) == {0}
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
