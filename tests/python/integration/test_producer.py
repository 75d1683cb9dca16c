"""``pillowtop_rs.producer`` against the real broker: CommCare's ``ChangeProducer`` semantics.

Every field of a change survives a round trip through a topic (published by the producer, read
by a real pillow); the key is the document id and the partition is Kafka's murmur2 placement;
a failure raises ``KafkaPublishingError`` within the configured bound; the audit lines; the
asynchronous mode with ``flush()``; a forked child gets its own client.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pillowtop_rs
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pillowtop_rs import BulkPillowProcessor, Change, Pillow
from pillowtop_rs.exceptions import InvalidChangeError, KafkaPublishingError
from pillowtop_rs.producer import ChangeProducer, Delivery

UTC = datetime.timezone.utc

# Kafka's own murmur2 vectors (the Java client's UtilsTest.testMurmur2): the signed hash.
MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def make_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
        f.result(30)


def delete_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics([name]).values():
        f.result(30)


@pytest.fixture
def topic7(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    """A fresh 7-partition topic, deleted afterwards."""
    make_topic(kafka_bootstrap, unique_name, 7)
    yield unique_name
    delete_topic(kafka_bootstrap, unique_name)


def read_all(bootstrap: str, topic: str, partitions: int, count: int) -> list[Any]:
    """``count`` raw messages of ``topic`` (every partition, from the start)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
    consumer.close()
    assert len(got) == count, f"read {len(got)} of {count} messages from {topic}"
    return got


class Recorder(BulkPillowProcessor):
    """Keeps every change's metadata as the pillow hands it over."""

    def __init__(self) -> None:
        self.metas: dict[str, Any] = {}
        self.partitions: dict[str, int | None] = {}

    def process_change(self, change: Change) -> None:
        self.metas[change.id] = change.metadata
        self.partitions[change.id] = change.partition

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        for change in changes_chunk:
            self.process_change(change)
        return [], []


class CommCareStyleMeta:
    """Stands in for CommCare's jsonobject ``ChangeMeta``: fields plus ``to_json()``."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self.document_id = fields["document_id"]

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)


def full_change(doc_id: str) -> dict[str, Any]:
    return {
        "document_id": doc_id,
        "document_rev": "3-abc",
        "data_source_type": "sql",
        "data_source_name": "form-sql",
        "document_type": "XFormInstance",
        "document_subtype": "http://openrosa.org/formdesigner/form1",
        "domain": "demo",
        "is_deletion": True,
        # aware, not UTC: written in UTC
        "publish_timestamp": datetime.datetime(
            2024, 2, 3, 10, 5, 6, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        "attempts": 2,
        # naive: taken as UTC, as CommCare's utcnow() values are
        "original_publication_datetime": datetime.datetime(2024, 2, 1, 0, 0, 0, 7),
        "associated_document_id": "form-1",
        "an_unknown_field": {"nested": [1, "two", None]},
    }


def test_every_field_round_trips_through_a_topic_into_a_pillow(
    kafka_bootstrap: str, postgres_url: str, topic7: str, unique_name: str
) -> None:
    producer = ChangeProducer(bootstrap=kafka_bootstrap)
    delivery = producer.send_change(topic7, full_change("doc-full"))
    assert isinstance(delivery, Delivery) and delivery.document_id == "doc-full"
    producer.send_change(
        topic7, CommCareStyleMeta(document_id=42, data_source_type="couch", data_source_name="db")
    )

    (raw, raw2) = sorted(
        read_all(kafka_bootstrap, topic7, 7, 2), key=lambda m: m.key() != b"doc-full"
    )
    assert raw.key() == b"doc-full" and raw2.key() == b"42"
    assert (raw.partition(), raw.offset()) == (delivery.partition, delivery.offset)
    body = json.loads(raw.value())
    assert body == {
        "document_id": "doc-full",
        "document_rev": "3-abc",
        "data_source_type": "sql",
        "data_source_name": "form-sql",
        "document_type": "XFormInstance",
        "document_subtype": "http://openrosa.org/formdesigner/form1",
        "domain": "demo",
        "is_deletion": True,
        "publish_timestamp": "2024-02-03T08:05:06.123456Z",
        "attempts": 2,
        "original_publication_datetime": "2024-02-01T00:00:00.000007Z",
        "associated_document_id": "form-1",
        "an_unknown_field": {"nested": [1, "two", None]},
    }
    # CommCare's defaults: both timestamps now when absent.
    body2 = json.loads(raw2.value())
    stamped = datetime.datetime.strptime(body2["publish_timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(stamped.replace(tzinfo=UTC) - datetime.datetime.now(UTC)) < datetime.timedelta(
        minutes=1
    )
    assert body2["original_publication_datetime"] == body2["publish_timestamp"]
    assert body2["attempts"] == 0 and body2["is_deletion"] is False

    recorder = Recorder()
    pillow = Pillow(unique_name, [topic7], [recorder])
    pillow.run(kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0)
    meta = recorder.metas["doc-full"]
    assert meta.document_rev == "3-abc"
    assert meta.data_source_type == "sql" and meta.data_source_name == "form-sql"
    assert meta.document_type == "XFormInstance"
    assert meta.document_subtype == "http://openrosa.org/formdesigner/form1"
    assert meta.domain == "demo" and meta.is_deletion is True and meta.attempts == 2
    assert meta.publish_timestamp == datetime.datetime(2024, 2, 3, 8, 5, 6, 123456, tzinfo=UTC)
    assert meta.original_publication_datetime == datetime.datetime(
        2024, 2, 1, 0, 0, 0, 7, tzinfo=UTC
    )
    assert meta.associated_document_id == "form-1"
    assert meta.an_unknown_field == {"nested": [1, "two", None]}
    assert recorder.partitions["doc-full"] == delivery.partition

    # Our own ChangeMeta (what a processor holds) re-publishes to the same wire form.
    again = producer.send_change(topic7, meta)
    assert again is not None and again.partition == delivery.partition
    republished = [
        m
        for m in read_all(kafka_bootstrap, topic7, 7, 3)
        if m.key() == b"doc-full" and m.offset() == again.offset
    ]
    assert json.loads(republished[0].value()) == body


def test_documents_are_placed_by_kafkas_murmur2_hash(kafka_bootstrap: str, topic7: str) -> None:
    producer = ChangeProducer(bootstrap=kafka_bootstrap)
    for key, signed_hash in MURMUR2.items():
        change = {"document_id": key, "data_source_type": "sql", "data_source_name": "form-sql"}
        delivery = producer.send_change(topic7, change)
        assert delivery is not None
        assert delivery.partition == (signed_hash & 0x7FFFFFFF) % 7, key
    assert len({(MURMUR2[k] & 0x7FFFFFFF) % 7 for k in MURMUR2}) > 1  # not all on one partition


def test_an_unreachable_broker_raises_within_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    # Port 1 on the loopback: nothing listens there.
    producer = ChangeProducer(bootstrap="127.0.0.1:1", timeout=1.5)
    change = {"document_id": "d-1", "data_source_type": "sql", "data_source_name": "form-sql"}
    caplog.set_level(logging.DEBUG, logger="kafka_producer_audit")
    started = time.monotonic()
    with pytest.raises(KafkaPublishingError) as info:
        producer.send_change("some-topic", change)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert '"d-1"' in message and '"some-topic"' in message, message
    assert "timed out" in message.lower(), message  # librdkafka's own text
    stages = [r.getMessage().split(",")[0] for r in caplog.records]
    assert stages == ["PRE-SEND", "ERROR"]


def test_an_unknown_topic_raises_within_the_bound(kafka_bootstrap: str, unique_name: str) -> None:
    producer = ChangeProducer(bootstrap=kafka_bootstrap, timeout=2.0)
    change = {"document_id": "d-2", "data_source_type": "sql", "data_source_name": "form-sql"}
    started = time.monotonic()
    with pytest.raises(KafkaPublishingError) as info:
        producer.send_change(unique_name, change)
    assert time.monotonic() - started < 3
    assert f'"{unique_name}"' in str(info.value) and '"d-2"' in str(info.value)
    assert "Unknown topic or partition" in str(info.value)  # librdkafka's text
    # The local broker does not create topics on first use.
    assert (
        unique_name
        not in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    )


def test_missing_required_fields_are_named_before_anything_is_sent() -> None:
    producer = ChangeProducer(bootstrap="127.0.0.1:1", timeout=1.0)
    with pytest.raises(InvalidChangeError, match="data_source_type, data_source_name"):
        producer.send_change("t", {"document_id": "x"})
    with pytest.raises(TypeError, match="to_json"):
        producer.send_change("t", ["not", "a", "change"])


def test_audit_lines_name_the_stage_doc_type_id_and_one_transaction(
    kafka_bootstrap: str, topic7: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kafka_producer_audit")
    producer = ChangeProducer(bootstrap=kafka_bootstrap)
    producer.send_change(topic7, full_change("audited"))
    lines = [r.getMessage().split(",") for r in caplog.records if r.name == "kafka_producer_audit"]
    assert [line[:3] for line in lines] == [
        ["PRE-SEND", "XFormInstance", "audited"],
        ["SENT", "XFormInstance", "audited"],
    ]
    assert lines[0][3] == lines[1][3] and len(lines[0][3]) == 32
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_async_mode_reports_each_delivery_on_flush(kafka_bootstrap: str, topic7: str) -> None:
    seen: list[tuple[str, Delivery | None, Any, int]] = []

    def on_delivery(meta: Any, delivery: Delivery | None, error: Any) -> None:
        seen.append((meta["document_id"], delivery, error, threading.get_ident()))

    producer = ChangeProducer(auto_flush=False, bootstrap=kafka_bootstrap, on_delivery=on_delivery)
    ids = [f"async-{i}" for i in range(50)]
    for doc_id in ids:
        change = {"document_id": doc_id, "data_source_type": "sql", "data_source_name": "x"}
        assert producer.send_change(topic7, change) is None
    assert producer.flush(10) == 0
    assert producer.producer.pending == 0
    assert sorted(s[0] for s in seen) == sorted(ids)
    assert all(s[1] is not None and s[2] is None for s in seen)
    assert {s[3] for s in seen} == {threading.get_ident()}
    keys = {m.key().decode() for m in read_all(kafka_bootstrap, topic7, 7, 50)}
    assert keys == set(ids)


def test_async_mode_failure_goes_to_the_callback() -> None:
    errors: list[BaseException | None] = []
    producer = ChangeProducer(
        auto_flush=False,
        bootstrap="127.0.0.1:1",
        timeout=1.0,
        on_delivery=lambda meta, delivery, error: errors.append(error),
    )
    change = {"document_id": "lost", "data_source_type": "sql", "data_source_name": "x"}
    producer.send_change("nowhere", change)
    assert producer.flush(5) == 1
    (error,) = errors
    assert isinstance(error, KafkaPublishingError) and '"lost"' in str(error)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_the_module_level_producer_is_per_process(
    kafka_bootstrap: str, topic7: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pillowtop_rs import producer as module

    monkeypatch.setenv("PILLOWTOP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setattr(module, "_default", None)
    change = {"document_id": "parent", "data_source_type": "sql", "data_source_name": "x"}
    module.send_change(topic7, change)
    parent_client = module.get_producer().producer
    pid = os.fork()
    if pid == 0:  # the child: a client of its own, and it works
        code = 1
        try:
            child = {"document_id": "child", "data_source_type": "sql", "data_source_name": "x"}
            module.send_change(topic7, child)
            code = 0 if module.get_producer().producer is not parent_client else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert module.get_producer().producer is parent_client
    keys = {m.key() for m in read_all(kafka_bootstrap, topic7, 7, 2)}
    assert keys == {b"parent", b"child"}
    assert pillowtop_rs.producer.send_change is module.send_change
