"""What a Python pillow tells the outside, against real Kafka and PostgreSQL: the core's log lines
in Python ``logging``, metrics over HTTP (``metrics_port``) and into a sink, and Kafka client
properties that reach librdkafka (``kafka_config``).

Mirrors ``src/python/observe.rs`` and ``src/telemetry.rs``.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import pillowtop_rs
import psycopg
import pytest
from pillowtop_rs import BulkPillowProcessor, Change, Pillow, PillowProcessor

Publish = Callable[..., list[str]]
Conn = psycopg.Connection[Any]


class Bulk(BulkPillowProcessor):
    """Takes whole chunks."""

    def __init__(self) -> None:
        self.seen = 0

    def process_change(self, change: Change) -> None:
        self.seen += 1

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        self.seen += len(changes_chunk)
        return [], []


class Serial(PillowProcessor):
    """One change at a time, a little slowly (so its timing is visible)."""

    def process_change(self, change: Change) -> None:
        time.sleep(0.001)


def messages(kit: Any, n: int) -> list[tuple[str, bytes]]:
    return [(f"doc-{i}", kit.change_message(f"doc-{i}", document={"i": i})) for i in range(n)]


ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: A line of the core's own stderr output (tracing's format: a UTC timestamp, then the level).
STDERR_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\s+(ERROR|WARN|INFO|DEBUG|TRACE)\s+(.*)$")


def core_stderr_lines(err: str, needle: str) -> list[str]:
    """The lines of ``err`` that the core's stderr output wrote and that contain ``needle``
    (Python handlers of other tests may write the same messages to stderr in their format)."""
    found = []
    for line in ANSI.sub("", err).splitlines():
        m = STDERR_LINE.match(line.strip())
        if m and needle in m.group(2):
            found.append(line)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_core_log_lines_reach_python_logging_with_fields(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    publish(topic, messages(kit, 5))
    caplog.set_level(logging.INFO, logger="pillowtop_rs")
    main = threading.get_ident()
    pillow = Pillow(unique_name, [topic], [Bulk()], checkpoint_id=unique_name + "-ckpt")
    summary = pillow.run(
        kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
    )
    assert summary.changes == 5
    ours = [r for r in caplog.records if r.name.startswith("pillowtop_rs")]
    starting = [r for r in ours if r.getMessage().startswith("pillow starting")]
    assert len(starting) == 1, [r.getMessage() for r in ours]
    r = starting[0]
    assert r.name == "pillowtop_rs.pillow"
    assert r.levelno == logging.INFO and r.levelname == "INFO"
    # Structured fields as `extra`, typed, and readable in the message.
    extra: Any = r
    assert extra.pillow == unique_name
    assert extra.checkpoint_id == unique_name + "-ckpt"
    # `process` is a LogRecord attribute (the OS pid): the field is renamed `process_`.
    assert extra.process_ == 0 and extra.processes == 1
    assert extra.rust_target == "pillowtop::pillow::run"
    assert f"pillow={unique_name}" in r.getMessage()
    assert r.pathname.endswith("run.rs") and r.lineno > 0
    # Emitted on the thread that called run(), near when it happened.
    assert r.thread == main
    assert abs(time.time() - r.created) < 60
    # One line per partition without a checkpoint, with the partition as a field.
    fresh = [m for m in ours if m.getMessage().startswith("no checkpoint for this partition")]
    assert len(fresh) == 3 and all(getattr(m, "partition", "").startswith(topic) for m in fresh)
    # The final line comes from the last drain, after the loop stopped.
    stopped: list[Any] = [m for m in ours if m.getMessage().startswith("pillow stopped")]
    assert len(stopped) == 1 and stopped[0].changes == 5
    # No duplicate on stderr by default.
    assert core_stderr_lines(capfd.readouterr().err, "pillow starting") == []


def test_log_output_stderr_keeps_the_clis_output_and_levels_are_filtered(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    publish(topic, messages(kit, 2))
    caplog.set_level(logging.INFO, logger="pillowtop_rs")
    run: dict[str, Any] = {"kafka": kafka_bootstrap, "postgres": postgres_url, "until_idle": True}
    Pillow(unique_name, [topic], [Bulk()]).run(idle_timeout=1.0, log_output="stderr", **run)
    assert not [r for r in caplog.records if r.name.startswith("pillowtop_rs")]
    assert len(core_stderr_lines(capfd.readouterr().err, "pillow starting")) == 1
    # WARNING and up only: the INFO lines are not forwarded at all.
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="pillowtop_rs")
    Pillow(unique_name + "-w", [topic], [Bulk()]).run(idle_timeout=1.0, **run)
    assert not [r for r in caplog.records if r.name.startswith("pillowtop_rs") and r.levelno < 30]
    with pytest.raises(pillowtop_rs.ConfigurationError, match="log_output"):
        Pillow(unique_name, [topic], [Bulk()]).run(log_output="syslog", **run)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def test_metrics_port_serves_commcare_metrics_while_the_pillow_runs(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 40))
    port = free_port()
    seen: list[str] = []
    stop = threading.Event()

    def scraper() -> None:
        # Scrapes while the pillow runs until the counters show every change.
        while not stop.is_set():
            try:
                text = scrape(port)
            except OSError:
                time.sleep(0.05)
                continue
            # The processing-time count is recorded last for a chunk: every counter is settled.
            if metric_sum(text, "commcare_change_feed_processing_time_count") >= 40:
                seen.append(text)
                return
            time.sleep(0.05)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        summary = Pillow(unique_name, [topic], [Bulk(), Serial()], chunk_size=10).run(
            kafka=kafka_bootstrap,
            postgres=postgres_url,
            until_idle=True,
            idle_timeout=3.0,
            metrics_port=port,
        )
    finally:
        stop.set()
        t.join()
    assert summary.changes == 40
    assert seen, "the endpoint never showed the 40 changes while the pillow ran"
    text = seen[0]
    assert metric_sum(text, "commcare_change_feed_changes_count", pillow_name=unique_name) == 40
    assert metric_sum(text, "commcare_change_feed_changes_success", pillow_name=unique_name) == 40
    assert metric_sum(text, "commcare_change_feed_processing_time_count") == 40
    # Each processor timed once per chunk (4 chunks of 10), under its class name.
    for processor in ("Bulk", "Serial"):
        count = metric_sum(text, "commcare_change_feed_processor_timing_count", processor=processor)
        assert count == 4, (processor, text)
    assert "# TYPE commcare_change_feed_processor_timing histogram" in text
    # The endpoint lives as long as the run.
    with pytest.raises(OSError):
        scrape(port)


class RecordingSink:
    """A metrics sink that keeps every call and the thread it came on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, str]]] = []
        self.threads: set[int] = set()

    def counter(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(("counter", name, value, dict(tags)))

    def gauge(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(("gauge", name, value, dict(tags)))

    def histogram(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(("histogram", name, value, dict(tags)))


def test_metrics_sink_gets_batches_on_the_calling_thread(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
) -> None:
    publish(topic, messages(kit, 30))
    sink = RecordingSink()
    summary = Pillow(unique_name, [topic], [Bulk(), Serial()], chunk_size=10).run(
        kafka=kafka_bootstrap,
        postgres=postgres_url,
        until_idle=True,
        idle_timeout=1.0,
        metrics_sink=sink,
    )
    assert summary.changes == 30
    assert sink.threads == {threading.get_ident()}
    counted = sum(
        v
        for kind, name, v, tags in sink.calls
        if kind == "counter"
        and name == "commcare.change_feed.changes.count"
        and tags.get("pillow_name") == unique_name
    )
    assert counted == 30
    timings = [
        (v, tags)
        for kind, name, v, tags in sink.calls
        if kind == "histogram" and name == "commcare.change_feed.processor.timing"
    ]
    serial = [v for v, tags in timings if tags["processor"] == "Serial"]
    assert len(serial) == 3 and all(v >= 0.009 for v in serial), serial  # 10 x 1 ms per chunk
    assert {tags["processor"] for _, tags in timings} == {"Bulk", "Serial"}
    assert all(tags["pillow_name"] == unique_name for _, tags in timings)
    checkpoints = [
        v
        for kind, name, v, _ in sink.calls
        if name == "commcare.change_feed.change_feed.checkpoint"
    ]
    assert sum(checkpoints) == summary.checkpoints


def test_a_failing_sink_is_reported_once_and_the_pillow_goes_on(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    publish: Publish,
    db: Conn,
    kit: Any,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(topic, messages(kit, 3))

    class Broken(RecordingSink):
        def counter(self, name: str, value: float, tags: Mapping[str, str]) -> None:
            raise RuntimeError("statsd is down")

    caplog.set_level(logging.ERROR, logger="pillowtop_rs")
    summary = Pillow(unique_name, [topic], [Bulk()]).run(
        kafka=kafka_bootstrap,
        postgres=postgres_url,
        until_idle=True,
        idle_timeout=1.0,
        metrics_sink=Broken(),
    )
    assert summary.changes == 3
    errors = [r for r in caplog.records if r.name == "pillowtop_rs.metrics"]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "statsd is down" in str(errors[0].exc_info[1])
    with pytest.raises(TypeError, match="histogram"):

        class NoHistogram:
            def counter(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

            def gauge(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

        Pillow(unique_name, [topic], [Bulk()]).run(
            kafka=kafka_bootstrap,
            postgres=postgres_url,
            metrics_sink=NoHistogram(),  # type: ignore[arg-type]
        )


def test_kafka_config_reaches_librdkafka(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    db: Conn,
    unique_name: str,
) -> None:
    pillow = Pillow(unique_name, [topic], [Bulk()])
    run: dict[str, Any] = {"kafka": kafka_bootstrap, "postgres": postgres_url, "until_idle": True}
    # librdkafka's own message, naming the property and the value.
    with pytest.raises(pillowtop_rs.KafkaError, match=r"security\.protocol") as e:
        pillow.run(kafka_config={"security.protocol": "bogus"}, **run)
    assert "bogus" in str(e.value)
    # What pillowtop owns cannot be overridden.
    with pytest.raises(pillowtop_rs.ConfigurationError, match=r"auto\.offset\.reset"):
        pillow.run(kafka_config={"auto.offset.reset": "earliest"}, **run)
    with pytest.raises(pillowtop_rs.ConfigurationError, match="kafka_config"):
        pillow.run(kafka_config={"socket.timeout.ms": [1]}, **run)  # type: ignore[dict-item]
    # A valid property is accepted, with typed values turned into librdkafka's text.
    summary = pillow.run(
        kafka_config={"security.protocol": "PLAINTEXT", "socket.keepalive.enable": True},
        idle_timeout=1.0,
        **run,
    )
    assert summary.stop_reason == "idle"


def test_operation_commands_take_kafka_config(
    kafka_bootstrap: str, postgres_url: str, topic: str, capfd: pytest.CaptureFixture[str]
) -> None:
    status = pillowtop_rs.run_cli(
        [
            "assignments",
            "1",
            "--topics",
            topic,
            "--kafka",
            kafka_bootstrap,
            "--kafka-config",
            "security.protocol=bogus",
        ]
    )
    err = capfd.readouterr().err
    assert status != 0
    assert "security.protocol" in err and "bogus" in err, err


def test_python_operations_take_kafka_config(kafka_bootstrap: str, topic: str) -> None:
    from pillowtop_rs import ops

    # The assignments read the topic's partitions through a client with these properties.
    with pytest.raises(pillowtop_rs.PillowtopError, match=r"security\.protocol"):
        ops.assignments([topic], 1, kafka=kafka_bootstrap, kafka_config={"security.protocol": "x"})
    # A fresh topic can take a moment to appear in a new client's metadata.
    deadline = time.monotonic() + 20
    while True:
        try:
            ops.assignments(
                [topic], 1, kafka=kafka_bootstrap, kafka_config={"security.protocol": "PLAINTEXT"}
            )
            break
        except pillowtop_rs.KafkaError as e:
            if "does not exist" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
