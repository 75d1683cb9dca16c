"""The drop-in lane: a processor written as CommCare writes them, reading its documents from a
Django model store, against the Rust no-op and a plain-Python reference, over one topic.

    source .services/env
    .venv/bin/python benches/e2e/dropin.py                # 100,000 changes, chunk 100
    .venv/bin/python benches/e2e/dropin.py --smoke        # 5,000 changes (CI)

One publish of metadata-only changes (no embedded document: every document comes from the store)
and one table of the same documents behind a Django model. Lanes, each over the whole topic under
its own checkpoint id, chunk size 100, timed to the last change including the final checkpoint,
then verified (every change seen, every document read, no error rows):

* ``rust-noop``: ``RustProcessor("noop")``, the engine and the Python front alone;
* ``commcare-meta``: a plain class with ``process_change`` reading ``change.metadata`` only;
* ``commcare-get_document``: the same class calling ``change.get_document()`` on a
  ``ModelDocumentStore`` (one query per chunk, fetched by the engine before the processor);
* ``reference-get_documents``: the plain-Python reference pillow (confluent-kafka, psycopg
  checkpoints) with a bulk processor that fetches each chunk's documents through the same store.

CPU is user + system seconds per million changes of this process, and of the Kafka and
PostgreSQL servers (their process trees) during the lane. "crossing" is the lane's CPU per
change over the no-op's, in µs: the cost of calling Python (and of the documents) per change.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from publish import unique_name  # noqa: E402
from reference_pillow import BulkPillowProcessor, ReferencePillow  # noqa: E402

CHUNK = 100
PARTITIONS = 4
SERVICES = Path(__file__).resolve().parents[2] / ".services" / "pids"
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_cpu(root: int) -> float:
    """User + system seconds of ``root`` and its live descendants (and its reaped children)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents[int(entry)] = int(fields[1])
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    total = 0
    for pid in tree:
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
            if pid == root:
                total += int(fields[13]) + int(fields[14])
    return total / TICKS


def server_cpu() -> dict[str, float]:
    out = {}
    for name in ("kafka", "postgres"):
        try:
            out[name] = tree_cpu(int((SERVICES / f"{name}.pid").read_text().strip()))
        except (OSError, ValueError):
            out[name] = 0.0
    return out


def setup_django(postgres: str) -> Any:
    """Configure Django on the bench database; returns the document model."""
    import django
    from django.conf import settings

    url = urlsplit(postgres)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.path.lstrip("/") or "postgres",
                "USER": unquote(url.username or "postgres"),
                "PASSWORD": unquote(url.password or ""),
                "HOST": url.hostname or "127.0.0.1",
                "PORT": str(url.port or 5432),
            }
        },
        INSTALLED_APPS=["django.contrib.contenttypes"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.db import models

    table = unique_name("dropin_docs")

    class FormDoc(models.Model):
        form_id: Any = models.CharField(max_length=64, primary_key=True)
        domain: Any = models.CharField(max_length=64)
        xmlns: Any = models.CharField(max_length=255)
        received_on: Any = models.DateTimeField()

        class Meta:
            app_label = "bench_dropin"
            db_table = table

    return FormDoc


class CommCareStyleProcessor:
    """A processor as CommCare writes them: a plain class, serial, no pillowtop_rs import."""

    supports_batch_processing = False

    def __init__(self, read_document: bool) -> None:
        self.read_document = read_document
        self.seen = 0
        self.documents = 0

    def process_change(self, change: Any) -> None:
        self.seen += 1
        if self.read_document:
            doc = change.get_document()
            if doc is not None and doc["domain"]:
                self.documents += 1
        elif change.metadata.domain:
            self.documents += 1


class ReferenceStoreProcessor(BulkPillowProcessor):
    """The reference's CommCare bulk pattern: one store fetch per chunk, then each document."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.seen = 0
        self.documents = 0

    def process_change(self, change: Any) -> None:
        self.process_changes_chunk([change])

    def process_changes_chunk(self, changes_chunk: list[Any]) -> tuple[list[Any], list[Any]]:
        docs = self.store.get_documents([c.id for c in changes_chunk])
        for c in changes_chunk:
            self.seen += 1
            doc = docs.get(c.id)
            if doc is not None and doc["domain"]:
                self.documents += 1
        return [], []


@dataclass
class Lane:
    name: str
    changes: int
    seconds: float
    cpu: float
    servers: dict[str, float]
    problems: list[str]


def timed(name: str, n: int, go: Callable[[], tuple[int, list[str]]]) -> Lane:
    gc.collect()
    s0 = server_cpu()
    t0, c0 = time.perf_counter(), time.process_time()
    changes, problems = go()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    s1 = server_cpu()
    if changes != n:
        problems.append(f"handled {changes} changes, expected {n}")
    return Lane(name, changes, secs, cpu, {k: s1[k] - s0[k] for k in s0}, problems)


def publish_metadata(kafka: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": kafka, "linger.ms": 20, "client.id": "cchq-producer"})
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for i in range(n):
        doc_id = f"form-{i:08d}"
        meta = {
            "document_id": doc_id,
            "document_rev": None,
            "data_source_type": "sql",
            "data_source_name": "form-sql",
            "document_type": "XFormInstance",
            "document_subtype": "http://openrosa.org/formdesigner/bench",
            "domain": f"domain-{i % 50}",
            "is_deletion": False,
            "publish_timestamp": now,
            "attempts": 0,
        }
        while True:
            try:
                producer.produce(topic, json.dumps(meta).encode(), doc_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def fill_table(postgres: str, model: Any, n: int) -> None:
    from django.db import connection

    with connection.schema_editor() as editor:
        editor.create_model(model)
    now = datetime.now(timezone.utc)
    with psycopg.connect(postgres) as conn, conn.cursor() as cur:
        table = model._meta.db_table
        with cur.copy(f"COPY {table} (form_id, domain, xmlns, received_on) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((f"form-{i:08d}", f"domain-{i % 50}", "http://bench", now))
        conn.commit()


def error_rows(postgres: str, pillow: str) -> int:
    with psycopg.connect(postgres) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pillow_retry_pillowerror WHERE pillow = %s", (pillow,)
        ).fetchone()
        return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--smoke", action="store_true", help="5,000 changes (CI)")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()
    n = 5_000 if args.smoke else args.changes
    kafka = os.environ["TEST_KAFKA_BOOTSTRAP"]
    postgres = os.environ["TEST_POSTGRES_URL"]
    os.environ.setdefault("PILLOWTOP_LOG", "warn")
    import pillowtop_rs
    from pillowtop_rs.django.stores import ModelDocumentStore

    model = setup_django(postgres)
    topic = unique_name("dropin")
    admin = AdminClient({"bootstrap.servers": kafka})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(30)
    names: list[str] = []
    try:
        print(f"publishing {n:,} metadata-only changes to {topic}; {n:,} rows behind a model")
        publish_metadata(kafka, topic, n)
        fill_table(postgres, model, n)
        store = ModelDocumentStore(model, id_field="form_id")
        lanes: list[Lane] = []

        def rs_lane(name: str, processor: Any, stores: dict[Any, Any] | None) -> Lane:
            pillow_name = unique_name(name.replace("-", "_"))
            names.append(pillow_name)
            pillow = pillowtop_rs.Pillow(
                pillow_name,
                [topic],
                [processor],
                chunk_size=CHUNK,
                checkpoint_frequency=1000,
                document_stores=stores,
            )

            def go() -> tuple[int, list[str]]:
                s = pillow.run(kafka=kafka, postgres=postgres, until_idle=True, max_changes=n)
                problems = []
                if hasattr(processor, "documents") and processor.documents != n:
                    problems.append(f"read {processor.documents} documents, expected {n}")
                if error_rows(postgres, pillow_name):
                    problems.append("error rows were recorded")
                return int(s.changes), problems

            return timed(name, n, go)

        lanes.append(
            rs_lane("rust-noop", pillowtop_rs.RustProcessor("noop", {"batch": True}), None)
        )
        lanes.append(rs_lane("commcare-meta", CommCareStyleProcessor(False), None))
        lanes.append(
            rs_lane(
                "commcare-get_document",
                CommCareStyleProcessor(True),
                {("sql", "form-sql"): store},
            )
        )
        ref_name = unique_name("dropin_reference")
        names.append(ref_name)
        ref_proc = ReferenceStoreProcessor(store)
        reference = ReferencePillow(
            ref_name, [topic], [ref_proc], chunk_size=CHUNK, checkpoint_frequency=1000
        )

        def ref_go() -> tuple[int, list[str]]:
            s = reference.run(
                kafka=kafka, postgres=postgres, until_idle=True, max_changes=n, idle_timeout=1.0
            )
            problems = [] if ref_proc.documents == n else [f"read {ref_proc.documents} documents"]
            return int(s.changes), problems

        lanes.append(timed("reference-get_documents", n, ref_go))
    finally:
        admin.delete_topics([topic])[topic].result(30)
        from django.db import connection

        with connection.schema_editor() as editor:
            editor.delete_model(model)
        with psycopg.connect(postgres, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    "DELETE FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = %s", (name,)
                )
                conn.execute("DELETE FROM pillow_retry_pillowerror WHERE pillow = %s", (name,))

    noop = lanes[0]
    ref = lanes[-1]
    print()
    print(f"{n:,} changes, chunk {CHUNK}, {PARTITIONS} partitions")
    print(
        "| lane | changes/s | vs reference | CPU-s/M (pillow) | CPU-s/M (kafka+pg) "
        "| crossing µs/change |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    failed = False
    for lane in lanes:
        rate = lane.changes / lane.seconds if lane.seconds else 0.0
        per_m = lane.cpu / lane.changes * 1e6 if lane.changes else 0.0
        servers = sum(lane.servers.values()) / lane.changes * 1e6 if lane.changes else 0.0
        crossing = (lane.cpu - noop.cpu) / lane.changes * 1e6 if lane is not noop else 0.0
        ratio = rate / (ref.changes / ref.seconds) if ref.seconds else 0.0
        note = f" FAILED: {'; '.join(lane.problems)}" if lane.problems else ""
        failed = failed or bool(lane.problems)
        print(
            f"| {lane.name} | {rate:,.0f} | {ratio:.2f}× | {per_m:.2f} | {servers:.2f} | "
            f"{crossing:.2f} |{note}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps([lane.__dict__ for lane in lanes], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
