"""Bench data and bench resources: CommCare-style form changes, unique topics, tables, indices.

The message shape is CommCare's ``ChangeMeta`` (reference doc §1.2, ``src/change.rs``) with the
form document embedded under ``document`` (as ``pillowtop``'s embedded-document store reads it):

    {"document_id": "...", "document_rev": null, "data_source_type": "sql",
     "data_source_name": "form-sql", "document_type": "XFormInstance",
     "document_subtype": "<xmlns>", "domain": "...", "is_deletion": false,
     "publish_timestamp": "...Z", "attempts": 0, "original_publication_datetime": "...Z",
     "document": {"_id": "...", "doc_type": "XFormInstance", "domain": "...", "xmlns": "...",
                  "received_on": "...Z", "form": {"meta": {"userID": "...", ...}, "amount": 12.5,
                  ...}, ...}}

A small fraction of the changes (``deletion_every``) are deletions of a form published earlier,
so the delete paths of the sinks are exercised too. The message key is the document id and
partitions come from librdkafka's key hashing, as CommCare's producer does it.

``Resources`` creates every topic, checkpoint id, table and index under a unique name and removes
them all on exit.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

import psycopg
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from elasticsearch import Elasticsearch

DOMAINS = ("dimagi", "demo-health", "field-survey", "nutrition")
XMLNS = (
    "http://openrosa.org/formdesigner/5A4B1D5C-BENCH-REGISTRATION",
    "http://openrosa.org/formdesigner/5A4B1D5C-BENCH-FOLLOWUP",
    "http://openrosa.org/formdesigner/5A4B1D5C-BENCH-CLOSE",
)
BASE_TIME = datetime(2024, 5, 1, 8, 0, 0, tzinfo=timezone.utc)

# The "xform" reporting table (like a UCR data source table): column -> JSON path in the form
# document. Shared by the reference PostgreSQL writer and the Rust table processor's contender.
FORM_TABLE_COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (column, SQL type, JSON path)
    ("doc_id", "text", ("_id",)),
    ("domain", "text", ("domain",)),
    ("xmlns", "text", ("xmlns",)),
    ("user_id", "text", ("form", "meta", "userID")),
    ("received_on", "timestamptz", ("received_on",)),
    ("amount", "numeric", ("form", "amount")),
)


def form_table_ddl(table: str) -> str:
    """``CREATE TABLE`` for the reporting table (``doc_id`` is the primary key)."""
    cols = ", ".join(
        f"{name} {sqltype}" + (" PRIMARY KEY" if name == "doc_id" else "")
        for name, sqltype, _ in FORM_TABLE_COLUMNS
    )
    return f"CREATE TABLE {table} ({cols})"


# The Elasticsearch index the form sinks write to (one shard, no replica: a one-node cluster).
ES_INDEX_BODY: dict[str, Any] = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "dynamic": False,
        "properties": {
            "doc_type": {"type": "keyword"},
            "domain": {"type": "keyword"},
            "xmlns": {"type": "keyword"},
            "received_on": {"type": "date"},
            "app_id": {"type": "keyword"},
            "form": {
                "properties": {
                    "meta": {
                        "properties": {
                            "userID": {"type": "keyword"},
                            "instanceID": {"type": "keyword"},
                            "timeStart": {"type": "date"},
                            "timeEnd": {"type": "date"},
                        }
                    },
                    "amount": {"type": "double"},
                    "village": {"type": "keyword"},
                }
            },
        },
    },
}


def _ts(dt: datetime) -> str:
    """CommCare's datetime format: ISO 8601, UTC, microseconds, ``Z``."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def form_id(i: int) -> str:
    """The id of form ``i`` (uuid-shaped, deterministic)."""
    return f"{i:08x}-5eed-4f00-a000-{i:012x}"


@dataclass(frozen=True)
class Dataset:
    """What was published: sizes and the expected end state of the sinks."""

    topic: str
    partitions: int
    changes: int
    payload_bytes: int
    deletions: int
    deleted_ids: frozenset[str] = field(repr=False)

    @property
    def expected_rows(self) -> int:
        """Rows (documents) a correct sink holds at the end."""
        forms = self.changes - self.deletions
        return forms - len(self.deleted_ids)


def form_document(i: int, now: datetime) -> dict[str, Any]:
    """Form ``i`` as CommCare stores an ``XFormInstance`` (trimmed to typical fields)."""
    fid = form_id(i)
    received = BASE_TIME + timedelta(seconds=i * 7)
    return {
        "_id": fid,
        "doc_type": "XFormInstance",
        "domain": DOMAINS[i % len(DOMAINS)],
        "xmlns": XMLNS[i % len(XMLNS)],
        "app_id": f"app-{i % 17:04d}",
        "received_on": _ts(received),
        "server_modified_on": _ts(now),
        "form": {
            "@xmlns": XMLNS[i % len(XMLNS)],
            "@name": "Bench visit",
            "meta": {
                "userID": f"user-{i % 997:05d}",
                "username": f"mobile{i % 997}",
                "instanceID": fid,
                "deviceID": f"device-{i % 211}",
                "timeStart": _ts(received - timedelta(minutes=5)),
                "timeEnd": _ts(received),
                "appVersion": "CommCare Android, version 2.53.1",
            },
            "village": f"village-{i % 101}",
            "household_size": i % 9 + 1,
            "amount": round((i % 10_000) * 0.25, 2),
            "notes": "routine visit, no follow up needed",
        },
    }


def change_message(i: int, now: datetime, deletion_of: int | None = None) -> tuple[str, bytes]:
    """Change ``i``: (key, JSON body). A deletion names form ``deletion_of`` and embeds no doc."""
    ts = _ts(now)
    if deletion_of is not None:
        doc_id = form_id(deletion_of)
        meta: dict[str, Any] = {
            "document_id": doc_id,
            "document_rev": None,
            "data_source_type": "sql",
            "data_source_name": "form-sql",
            "document_type": "XFormInstance",
            "document_subtype": XMLNS[deletion_of % len(XMLNS)],
            "domain": DOMAINS[deletion_of % len(DOMAINS)],
            "is_deletion": True,
            "publish_timestamp": ts,
            "attempts": 0,
            "original_publication_datetime": ts,
        }
    else:
        doc = form_document(i, now)
        doc_id = doc["_id"]
        meta = {
            "document_id": doc_id,
            "document_rev": None,
            "data_source_type": "sql",
            "data_source_name": "form-sql",
            "document_type": "XFormInstance",
            "document_subtype": doc["xmlns"],
            "domain": doc["domain"],
            "is_deletion": False,
            "publish_timestamp": ts,
            "attempts": 0,
            "original_publication_datetime": ts,
            "document": doc,
        }
    return doc_id, json.dumps(meta, separators=(",", ":")).encode()


def plan(changes: int, deletion_every: int) -> Iterator[tuple[int, int | None]]:
    """Yields (i, deleted form index or None). Every ``deletion_every``-th change deletes the form
    published ``changes // 2`` earlier (far enough that no chunk holds both)."""
    distance = max(1, changes // 2)
    for i in range(changes):
        if deletion_every and i % deletion_every == deletion_every - 1 and i >= distance:
            yield i, i - distance
        else:
            yield i, None


def publish(kafka: str, topic: str, partitions: int, changes: int, deletion_every: int) -> Dataset:
    """Publishes ``changes`` form changes to ``topic``; returns what a correct sink must hold."""
    producer = Producer(
        {
            "bootstrap.servers": kafka,
            "client.id": "cchq-producer",
            # Idempotence (acks=all, ordered retries): a retried batch must not land after a
            # later one, or a deletion could precede its form and the expected end state is off.
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 262_144,
            "compression.type": "none",
        }
    )
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    now = datetime.now(timezone.utc)
    total = 0
    deletions = 0
    deleted: set[str] = set()
    for i, deletion_of in plan(changes, deletion_every):
        key, body = change_message(i, now, deletion_of)
        if deletion_of is not None:
            deletions += 1
            deleted.add(key)
        total += len(body)
        while True:
            try:
                producer.produce(topic, body, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 2048 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise RuntimeError(
            f"publishing to {topic}: {left} messages undelivered, {len(failures)} failed "
            f"(first: {failures[:1]})"
        )
    return Dataset(topic, partitions, changes, total, deletions, frozenset(deleted))


def unique_name(purpose: str) -> str:
    """``bench_e2e_<purpose>_<8 hex>``: lowercase, safe as a topic, table, index and id."""
    slug = "".join(c if c.isalnum() else "_" for c in purpose.lower()).strip("_")
    return f"bench_e2e_{slug[:40]}_{secrets.token_hex(4)}"


class Resources:
    """Unique bench resources, all removed on exit (unless ``keep``)."""

    def __init__(self, kafka: str, postgres: str, elasticsearch: str | None, keep: bool = False):
        self.kafka = kafka
        self.postgres = postgres
        self.elasticsearch = elasticsearch
        self.keep = keep
        self.admin = AdminClient({"bootstrap.servers": kafka})
        self.topics: list[str] = []
        self.checkpoint_ids: list[str] = []
        self.tables: list[str] = []
        self.indices: list[str] = []
        self._es: Elasticsearch | None = None

    def __enter__(self) -> Resources:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keep:
            print(
                f"kept: topics {self.topics}, checkpoint ids {self.checkpoint_ids}, "
                f"tables {self.tables}, indices {self.indices}"
            )
            return
        self.cleanup()

    def es(self) -> Elasticsearch:
        """A client for the search node (``TEST_ELASTICSEARCH_URL``)."""
        if self.elasticsearch is None:
            raise RuntimeError("TEST_ELASTICSEARCH_URL is not set")
        if self._es is None:
            self._es = Elasticsearch([self.elasticsearch], timeout=120)
        return self._es

    def topic(self, purpose: str, partitions: int) -> str:
        """Creates a fresh topic and waits until its partitions are visible."""
        name = unique_name(purpose)
        self.topics.append(name)
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30,
        )
        futures[name].result(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = self.admin.list_topics(name, timeout=10).topics.get(name)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return name
            time.sleep(0.1)
        raise RuntimeError(f"topic {name} did not show {partitions} partitions within 30 s")

    def checkpoint_id(self, purpose: str) -> str:
        """A fresh checkpoint id (also used as the pillow name); its rows are deleted on exit."""
        name = unique_name(purpose)
        self.checkpoint_ids.append(name)
        return name

    def table(self, purpose: str) -> str:
        """A fresh, empty reporting table (``FORM_TABLE_COLUMNS``)."""
        name = unique_name(purpose)
        with psycopg.connect(self.postgres, autocommit=True) as conn:
            conn.execute(form_table_ddl(name).encode())
        self.tables.append(name)
        return name

    def index(self, purpose: str) -> str:
        """A fresh Elasticsearch index with ``ES_INDEX_BODY``."""
        name = unique_name(purpose)
        self.es().indices.create(index=name, body=ES_INDEX_BODY)
        self.indices.append(name)
        return name

    def cleanup(self) -> None:
        """Removes everything this object created; reports but survives individual failures."""
        problems: list[str] = []
        if self.topics:
            try:
                for name, fut in self.admin.delete_topics(
                    self.topics, operation_timeout=30
                ).items():
                    try:
                        fut.result(timeout=60)
                    except KafkaException as e:
                        problems.append(f"deleting topic {name}: {e}")
            except KafkaException as e:
                problems.append(f"deleting topics: {e}")
        try:
            with psycopg.connect(self.postgres, autocommit=True) as conn:
                for table in self.tables:
                    conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
                if self.checkpoint_ids:
                    for sql in (
                        "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = ANY(%s)",
                        "DELETE FROM pillow_retry_pillowerror WHERE pillow = ANY(%s)",
                        "DELETE FROM pillowtop_rs_process WHERE pillow_name = ANY(%s)",
                    ):
                        try:
                            conn.execute(sql.encode(), (self.checkpoint_ids,))
                        except psycopg.errors.UndefinedTable:
                            pass
        except psycopg.Error as e:
            problems.append(f"postgres cleanup: {e}")
        if self.indices:
            try:
                self.es().indices.delete(index=",".join(self.indices), ignore_unavailable=True)
            except Exception as e:  # noqa: BLE001 - cleanup reports and goes on
                problems.append(f"deleting indices: {e}")
        self.topics, self.tables, self.checkpoint_ids, self.indices = [], [], [], []
        for p in problems:
            print(f"cleanup: {p}")
