"""Virtual workers (``run_ptop --gevent-workers``) against the real broker and database: W
pillows in one process, each reading exactly CommCare's partitions for its numbering."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pillowtop_rs import ConfigurationError, Pillow, partition_assignment
from pillowtop_rs.workers import WorkerFailed, run_virtual_workers, worker_layouts

Publish = Callable[..., list[str]]
Conn = psycopg.Connection[Any]


@pytest.fixture
def topic12(kafka_bootstrap: str, unique_name: str) -> Any:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = f"{unique_name}_w"
    admin.create_topics([NewTopic(name, num_partitions=12, replication_factor=1)])[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)


class PartitionRecorder:
    """A plain CommCare-style processor noting the thread and partition of each change."""

    def __init__(self) -> None:
        self.partitions: set[int] = set()
        self.threads: set[int] = set()
        self.seen: list[str] = []

    def process_change(self, change: Any) -> None:
        self.threads.add(threading.get_ident())
        self.partitions.add(change.partition)
        self.seen.append(change.id)


def test_layouts_are_commcares() -> None:
    assert worker_layouts(4, 1, 3, dedicated=True) == [(1, 10), (2, 10), (3, 10)]
    assert worker_layouts(4, 1, 3) == [(3, 12), (4, 12), (5, 12)]
    assert worker_layouts(4, 0, 3, dedicated=True) is None
    with pytest.raises(ConfigurationError):
        worker_layouts(4, 1, 1)


def test_three_workers_read_commcares_partitions_and_checkpoint_all(
    kafka_bootstrap: str,
    postgres_url: str,
    topic12: str,
    unique_name: str,
    publish: Publish,
    kit: Any,
    db: Conn,
) -> None:
    publish(topic12, [(f"d{i}", kit.change_message(f"d{i}")) for i in range(240)])
    layouts = worker_layouts(1, 0, 3)
    assert layouts == [(0, 3), (1, 3), (2, 3)]
    recorders: dict[int, PartitionRecorder] = {}

    def make(process_num: int, num_processes: int) -> Pillow:
        recorders[process_num] = PartitionRecorder()
        return Pillow(unique_name, [topic12], [recorders[process_num]], chunk_size=10)

    results = run_virtual_workers(
        make,
        layouts,
        kafka=kafka_bootstrap,
        postgres=postgres_url,
        until_idle=True,
        idle_timeout=1.0,
    )
    every = [(topic12, p) for p in range(12)]
    for w, rec in recorders.items():
        mine = {p for _, p in partition_assignment(every, 3, w)}
        assert rec.partitions == mine, f"worker {w}"
        assert len(rec.threads) == 1
    assert len({t for r in recorders.values() for t in r.threads}) == 3
    assert sorted(i for r in recorders.values() for i in r.seen) == sorted(
        f"d{i}" for i in range(240)
    )
    assert [r.summary.stop_reason for r in results if r.summary] == ["idle"] * 3
    offsets = kit.checkpoint_offsets(db, unique_name)
    assert len(offsets) == 12 and sum(offsets.values()) == 240


def test_a_failing_worker_stops_the_others_and_is_named(
    kafka_bootstrap: str, postgres_url: str, topic12: str, unique_name: str, db: Conn
) -> None:
    def make(process_num: int, num_processes: int) -> Pillow:
        # Worker 1 reads a topic that does not exist: it fails at start-up.
        topic = topic12 if process_num != 1 else f"{topic12}_missing"
        return Pillow(unique_name, [topic], [PartitionRecorder()])

    started = time.monotonic()
    with pytest.raises(WorkerFailed, match="virtual worker 1 of 2 failed"):
        run_virtual_workers(
            make,
            [(0, 2), (1, 2)],
            kafka=kafka_bootstrap,
            postgres=postgres_url,
            idle_timeout=1.0,
        )
    assert time.monotonic() - started < 60


SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    from pillowtop_rs import Pillow, request_shutdown
    from pillowtop_rs.workers import run_virtual_workers
    kafka, postgres, topic, name, workers = sys.argv[1:6]
    class P:
        def process_change(self, change):
            pass
    def make(p, n):
        return Pillow(name, [topic], [P()], chunk_size=10)
    layouts = [(w, int(workers)) for w in range(int(workers))]
    signal.signal(signal.SIGTERM, lambda *_: request_shutdown())  # as run_ptop does
    print("ready", flush=True)
    results = run_virtual_workers(make, layouts, kafka=kafka, postgres=postgres, idle_timeout=1.0)
    print("stopped", [r.summary.stop_reason for r in results], flush=True)
    print("rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    """
)


def test_sigterm_stops_every_worker_after_its_final_checkpoint(
    kafka_bootstrap: str,
    postgres_url: str,
    topic12: str,
    unique_name: str,
    publish: Publish,
    kit: Any,
    db: Conn,
) -> None:
    publish(topic12, [(f"d{i}", kit.change_message(f"d{i}")) for i in range(120)])
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, kafka_bootstrap, postgres_url, topic12, unique_name, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PILLOWTOP_LOG": "warn"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        offsets = kit.checkpoint_offsets(db, unique_name)
        if sum(offsets.values()) == 120 and len(offsets) == 12:
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped ['shutdown', 'shutdown', 'shutdown', 'shutdown']" in out
    offsets = kit.checkpoint_offsets(db, unique_name)
    assert len(offsets) == 12 and sum(offsets.values()) == 120
    rss = int(out.split("rss_kb")[1].split()[0])
    print(f"peak RSS of 4 virtual workers in one process: {rss / 1024:.0f} MiB")
    assert rss > 0


KILLABLE = textwrap.dedent(
    """
    import sys, time
    from pillowtop_rs import Pillow
    from pillowtop_rs.workers import run_virtual_workers
    kafka, postgres, topic, name, out = sys.argv[1:6]
    class Slow:
        def __init__(self):
            self.f = open(out, "a", buffering=1)
        def process_change(self, change):
            time.sleep(0.004)
            self.f.write(change.id + "\\n")
    layouts = [(w, 4) for w in range(4)]
    run_virtual_workers(lambda p, n: Pillow(name, [topic], [Slow()], chunk_size=10,
                                            checkpoint_frequency=20),
                        layouts, kafka=kafka, postgres=postgres, idle_timeout=1.0)
    """
)


def test_sigkill_of_the_workers_process_loses_nothing(
    kafka_bootstrap: str,
    postgres_url: str,
    topic12: str,
    unique_name: str,
    publish: Publish,
    kit: Any,
    db: Conn,
    tmp_path: Any,
) -> None:
    ids = [f"d{i}" for i in range(1200)]
    publish(topic12, [(i, kit.change_message(i)) for i in ids])
    out = tmp_path / "seen.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLABLE,
            kafka_bootstrap,
            postgres_url,
            topic12,
            unique_name,
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PILLOWTOP_LOG": "warn"},
    )
    deadline = time.monotonic() + 60
    while not out.exists() or len(out.read_text().splitlines()) < 300:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no final checkpoint
    proc.communicate(timeout=30)
    before = set(out.read_text().split())
    assert 0 < len(before) < len(ids), "killed mid-stream"

    # The restart (one process this time) resumes from the workers' checkpoints.
    class Recorder:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def process_change(self, change: Any) -> None:
            self.seen.append(change.id)

    rec = Recorder()
    Pillow(unique_name, [topic12], [rec]).run(
        kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
    )
    assert before | set(rec.seen) == set(ids), "every change handled at least once"
    assert len(rec.seen) < len(ids), "the restart resumed from checkpoints, not from the start"
    offsets = kit.checkpoint_offsets(db, unique_name)
    assert len(offsets) == 12 and sum(offsets.values()) == 1200
