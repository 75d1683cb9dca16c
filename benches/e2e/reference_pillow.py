"""A plain-Python reference pillow: CommCare's loop, written as a Python engineer would write it.

This is the yardstick the Rust engine is measured against (design guide §9, issues 5 and 6). It
follows CommCare's semantics (reference doc §1.3, §1.5, §1.6, §1.8, §1.9):

* **Feed**: a confluent-kafka ``Consumer`` with manual ``assign()`` (no group membership, no
  commits, ``enable.auto.commit=false``), starting from the offsets stored in
  ``pillowtop_kafkacheckpoint``; offset-0 rows are created for a new checkpoint id
  (``get_or_create_for_checkpoint_id``), partitions without a row start at the earliest offset.
  Each message is parsed with ``json.loads`` into a small ``Change`` (read-only mapping with
  ``id``/``seq``/``doc``/``deleted``, ``metadata`` as the ``ChangeMeta`` dict, the embedded
  ``document`` as its document). An empty ``consume()`` (``idle_timeout`` without a message) is
  CommCare's ``None`` heartbeat: it flushes a partial chunk, or checkpoints on idle.
* **Loop** (``process_changes``): with ``chunk_size > 0`` the bulk processors are the batch
  processors; changes are gathered into chunks of ``chunk_size`` (or flushed after 30 s), each
  chunk is de-duplicated (last occurrence per doc id wins, in the order of those occurrences), each
  batch processor's ``process_changes_chunk`` returns ``(retry, errors)``: errors are recorded,
  retries run serially on that processor, and a processor that raises has the whole chunk run
  serially through it; then every serial processor runs per change (the first failure skips the
  rest for that change). With ``chunk_size == 0`` every processor runs per change.
* **Errors**: ``handle_pillow_error`` increments ``metadata['attempts']`` and upserts the row of
  (doc id, pillow name) in ``pillow_retry_pillowerror`` (attempts, next attempt after
  5 min × attempt², parked after 3).
* **Checkpoints**: consulted once per flushed chunk (per change in serial mode); due when
  ``checkpoint_frequency`` changes were seen since the last one, or ``max_checkpoint_delay``
  seconds passed (the first chunk after start always checkpoints). The value stored for each
  assigned partition is the next offset to read (last consumed + 1; the seek start for a partition
  not consumed yet, which fixes CommCare's skip-one defect), every row upserted in one transaction
  with CommCare's row shape (``doc_modification_time`` NULL, ``last_modified`` now).

Deliberate differences from CommCare, all in the reference's favour or needed for a bench run:
``metadata`` stays a plain dict (CommCare wraps it in a ``jsonobject``, which costs far more);
messages are fetched with ``consume()`` in batches rather than one by one; no metrics, Sentry or
Datadog calls; the run can stop after ``max_changes`` or when caught up and idle, and then makes a
final checkpoint (CommCare's process simply runs on).
"""

from __future__ import annotations

import json
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    TopicPartition,
)
from elasticsearch import Elasticsearch, helpers
from elasticsearch.exceptions import ConflictError, NotFoundError
from psycopg.types.json import Jsonb

TP = tuple[str, int]

# CommCare's constants (pillow_retry/const.py, pillowtop/const.py, pillow/interface.py).
MAX_PROCESSING_ATTEMPTS = 3
REPROCESS_INTERVAL_SECONDS = 5 * 60
CHUNK_FLUSH_SECONDS = 30.0
# How many messages one consume() call may return (I/O granularity, not the chunk size).
FETCH_BATCH = 1000


class DocumentMissingError(Exception):
    """The change's document is neither embedded nor anywhere else (CommCare's name)."""


class BulkDocException(Exception):
    """One item of a bulk request failed (CommCare's name)."""


# --------------------------------------------------------------------------------------------
# Change
# --------------------------------------------------------------------------------------------


class Change:
    """CommCare's ``Change``: a read-only mapping with ``id``, ``seq``, ``doc`` and ``deleted``."""

    __slots__ = ("id", "sequence_id", "document", "deleted", "metadata", "topic", "partition")

    def __init__(
        self,
        id: str,
        sequence_id: int,
        document: dict[str, Any] | None = None,
        deleted: bool = False,
        metadata: ChangeMeta | None = None,
        topic: str | None = None,
        partition: int | None = None,
    ) -> None:
        self.id = id
        self.sequence_id = sequence_id
        self.document = document
        self.deleted = deleted
        self.metadata = metadata
        self.topic = topic
        self.partition = partition

    def __getitem__(self, key: str) -> Any:
        if key == "id":
            return self.id
        if key == "seq":
            return self.sequence_id
        if key == "doc":
            return self.document
        if key == "deleted":
            return self.deleted
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in ("id", "seq", "doc", "deleted")

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping ``get``."""
        try:
            return self[key]
        except KeyError:
            return default

    def get_document(self) -> dict[str, Any] | None:
        """The document: embedded in the message here (no document store in the bench)."""
        return self.document

    def set_document(self, document: dict[str, Any] | None) -> None:
        """Attach a document so that later processors do not fetch it again."""
        self.document = document

    def increment_attempt_count(self) -> None:
        """Add one to ``metadata['attempts']``."""
        if self.metadata is not None:
            self.metadata["attempts"] = (self.metadata.get("attempts") or 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """``Change.to_dict()`` without the document (``PillowError.change``)."""
        return {
            "id": self.id,
            "seq": self.sequence_id,
            "deleted": self.deleted,
            "topic": self.topic,
            "partition": self.partition,
        }

    def __repr__(self) -> str:
        return f"Change(id={self.id!r}, seq={self.sequence_id!r}, deleted={self.deleted!r})"


class ChangeMeta(dict[str, Any]):
    """The parsed ``ChangeMeta``: a dict that also reads fields as attributes (``meta.domain``),
    as CommCare's ``jsonobject`` does; unknown fields are kept. Far cheaper than ``jsonobject``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def change_from_message(topic: str, partition: int, offset: int, value: bytes) -> Change:
    """``change_from_kafka_message``: parse the ``ChangeMeta`` JSON; take the embedded document."""
    meta = ChangeMeta(json.loads(value))
    document = meta.pop("document", None)
    doc_id = meta["document_id"]
    if not isinstance(doc_id, str):
        doc_id = str(doc_id)
    return Change(doc_id, offset, document, bool(meta.get("is_deletion")), meta, topic, partition)


class ChangeLike(Protocol):
    """What the processors here use of a change (ours or ``pillowtop_rs.Change``)."""

    @property
    def id(self) -> str: ...

    @property
    def deleted(self) -> bool: ...

    @property
    def metadata(self) -> Any: ...

    def get_document(self) -> dict[str, Any] | None: ...


# --------------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------------


class PillowProcessor(ABC):
    """CommCare's ``PillowProcessor``."""

    supports_batch_processing: ClassVar[bool] = False

    @abstractmethod
    def process_change(self, change: Change) -> None:
        """Process one change; raise to fail it."""

    def checkpoint_updated(self) -> None:  # noqa: B027 - optional hook
        """Called after each successful checkpoint."""


class BulkPillowProcessor(PillowProcessor):
    """CommCare's ``BulkPillowProcessor``."""

    supports_batch_processing: ClassVar[bool] = True

    @abstractmethod
    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        """Process a chunk; return (changes to retry serially, [(change, exception)])."""


class CountingLogic:
    """The trivial bulk processor's body: counts changes per domain.

    Touches ``change.id`` and ``change.metadata.domain`` of every change (attribute access, as
    CommCare code reads its ``jsonobject`` ``ChangeMeta``; ``pillowtop_rs.ChangeMeta`` has no
    item access). A mixin, so that the very same code runs under the reference pillow and under
    ``pillowtop_rs``.
    """

    def __init__(self) -> None:
        self.count = 0
        self.last_id = ""
        self.per_domain: dict[str, int] = {}

    def process_change(self, change: Any) -> None:
        """Count one change."""
        self.last_id = change.id
        domain = change.metadata.domain
        self.per_domain[domain] = self.per_domain.get(domain, 0) + 1
        self.count += 1

    def process_changes_chunk(self, changes_chunk: list[Any]) -> tuple[list[Any], list[Any]]:
        """Count a chunk; nothing to retry, no errors."""
        per_domain = self.per_domain
        for change in changes_chunk:
            self.last_id = change.id
            domain = change.metadata.domain
            per_domain[domain] = per_domain.get(domain, 0) + 1
        self.count += len(changes_chunk)
        return [], []


class CountingBulkProcessor(CountingLogic, BulkPillowProcessor):
    """The trivial Python bulk processor, for the reference pillow."""


def _walk(doc: dict[str, Any], path: Sequence[str]) -> Any:
    value: Any = doc
    for key in path:
        value = value[key]
    return value


def _is_deleted(change: ChangeLike, doc: dict[str, Any] | None) -> bool:
    return change.deleted or (doc is not None and str(doc.get("doc_type", "")).endswith("-Deleted"))


class PostgresTableProcessor(BulkPillowProcessor):
    """Writes one row per document into a reporting table (UCR-like), with multi-row upserts.

    ``columns`` are (name, SQL type, JSON path); the first column is the primary key (the doc id).
    A deleted change (or a ``-Deleted`` doc type) deletes the row. One transaction per chunk.
    ``method``: ``values`` builds one ``INSERT … VALUES (…), (…) … ON CONFLICT`` per chunk
    (psycopg2's ``execute_values``); ``unnest`` sends one array per column; ``executemany`` uses
    psycopg 3's pipelined ``executemany``.
    """

    def __init__(
        self,
        postgres: str,
        table: str,
        columns: Sequence[tuple[str, str, Sequence[str]]],
        method: str = "unnest",
    ) -> None:
        if method not in ("values", "unnest", "executemany"):
            raise ValueError(f"unknown upsert method {method!r}")
        self.postgres = postgres
        self.table = table
        self.columns = [(name, sqltype, tuple(path)) for name, sqltype, path in columns]
        self.method = method
        self._conn: psycopg.Connection[Any] | None = None
        names = [c[0] for c in self.columns]
        self._names = ", ".join(names)
        self._set = ", ".join(f"{n} = EXCLUDED.{n}" for n in names[1:])
        self._row_sql = "(" + ", ".join(["%s"] * len(names)) + ")"
        self._values_sql: dict[int, bytes] = {}
        self._unnest_sql = (
            f"INSERT INTO {table} ({self._names}) SELECT * FROM unnest("
            + ", ".join(f"%s::{t}[]" for _, t, _ in self.columns)
            + f") ON CONFLICT ({names[0]}) DO UPDATE SET {self._set}"
        ).encode()
        self._single_sql = (
            f"INSERT INTO {table} ({self._names}) VALUES {self._row_sql} "
            f"ON CONFLICT ({names[0]}) DO UPDATE SET {self._set}"
        ).encode()
        self._delete_sql = f"DELETE FROM {table} WHERE {names[0]} = ANY(%s)".encode()

    def conn(self) -> psycopg.Connection[Any]:
        """The processor's own connection (reconnects after a failure)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.postgres, autocommit=False)
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def row(self, doc: dict[str, Any]) -> tuple[Any, ...]:
        """The table row for a document (raises KeyError/TypeError on a malformed document)."""
        return tuple(_walk(doc, path) for _, _, path in self.columns)

    def _values_statement(self, n: int) -> bytes:
        sql = self._values_sql.get(n)
        if sql is None:
            sql = (
                f"INSERT INTO {self.table} ({self._names}) VALUES "
                + ", ".join([self._row_sql] * n)
                + f" ON CONFLICT ({self.columns[0][0]}) DO UPDATE SET {self._set}"
            ).encode()
            self._values_sql[n] = sql
        return sql

    def _write(self, rows: list[tuple[Any, ...]], deletes: list[str]) -> None:
        conn = self.conn()
        try:
            with conn.cursor() as cur:
                if deletes:
                    cur.execute(self._delete_sql, (deletes,))
                if rows:
                    if self.method == "values":
                        params = [v for row in rows for v in row]
                        cur.execute(self._values_statement(len(rows)), params)
                    elif self.method == "unnest":
                        cur.execute(self._unnest_sql, [list(col) for col in zip(*rows)])
                    else:
                        cur.executemany(self._single_sql, rows)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        """Upsert the chunk's rows and delete its deleted documents in one transaction."""
        rows: list[tuple[Any, ...]] = []
        deletes: list[str] = []
        retry: list[Change] = []
        errors: list[tuple[Change, BaseException]] = []
        for change in changes_chunk:
            if change.deleted:
                deletes.append(change.id)
                continue
            doc = change.get_document()
            if doc is None:
                retry.append(change)  # missing documents are retried serially, as in CommCare
            elif _is_deleted(change, doc):
                deletes.append(change.id)
            else:
                try:
                    rows.append(self.row(doc))
                except (KeyError, TypeError) as e:
                    errors.append((change, e))
        self._write(rows, deletes)
        return retry, errors

    def process_change(self, change: Change) -> None:
        """Serial path: one upsert or delete."""
        doc = None if change.deleted else change.get_document()
        if not change.deleted and doc is None:
            raise DocumentMissingError(f"document {change.id} not found")
        if _is_deleted(change, doc) or doc is None:
            self._write([], [change.id])
        else:
            self._write([self.row(doc)], [])


def es_source(doc: dict[str, Any]) -> dict[str, Any]:
    """The transform: the document without ``_id`` (a metadata field ES refuses in a source)."""
    return {k: v for k, v in doc.items() if k != "_id"}


class ElasticsearchProcessor(BulkPillowProcessor):
    """CommCare's ``BulkElasticProcessor``: one ``helpers.bulk`` request per chunk.

    Deleted changes and ``-Deleted`` doc types delete (a 404 is fine); others index the
    transformed document. Per-item failures become ``BulkDocException`` errors; if the whole call
    raises, the loop runs the chunk serially.
    """

    def __init__(self, url: str, index: str) -> None:
        self.url = url
        self.index = index
        self.es = Elasticsearch([url], timeout=120)

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        """Bulk index/delete the chunk."""
        actions: list[dict[str, Any]] = []
        by_id: dict[str, Change] = {}
        retry: list[Change] = []
        errors: list[tuple[Change, BaseException]] = []
        index = self.index
        for change in changes_chunk:
            if change.deleted:
                actions.append({"_op_type": "delete", "_index": index, "_id": change.id})
                by_id[change.id] = change
                continue
            doc = change.get_document()
            if doc is None:
                retry.append(change)
            elif _is_deleted(change, doc):
                actions.append({"_op_type": "delete", "_index": index, "_id": change.id})
                by_id[change.id] = change
            else:
                actions.append(
                    {
                        "_op_type": "index",
                        "_index": index,
                        "_id": change.id,
                        "_source": es_source(doc),
                    }
                )
                by_id[change.id] = change
        if actions:
            _, failed = helpers.bulk(
                self.es,
                actions,
                chunk_size=len(actions),
                max_chunk_bytes=100 * 1024 * 1024,
                raise_on_error=False,
                stats_only=False,
            )
            assert isinstance(failed, list)
            for item in failed:
                op, info = next(iter(item.items()))
                if op == "delete" and info.get("status") == 404:
                    continue
                # Every action came from a change of by_id.
                failed_change = by_id[str(info.get("_id"))]
                errors.append(
                    (failed_change, BulkDocException(f"{op} of {failed_change.id} failed: {info}"))
                )
        return retry, errors

    def process_change(self, change: Change) -> None:
        """Serial path: index or delete one document."""
        doc = None if change.deleted else change.get_document()
        if not change.deleted and doc is None:
            raise DocumentMissingError(f"document {change.id} not found")
        try:
            if _is_deleted(change, doc) or doc is None:
                self.es.delete(index=self.index, id=change.id)
            else:
                self.es.index(index=self.index, id=change.id, document=es_source(doc))
        except (ConflictError, NotFoundError):
            pass


# --------------------------------------------------------------------------------------------
# Checkpoints and error rows (CommCare's tables, via psycopg)
# --------------------------------------------------------------------------------------------


class KafkaCheckpoint:
    """``KafkaPillowCheckpoint``: rows of ``pillowtop_kafkacheckpoint`` for one checkpoint id."""

    def __init__(self, conn: psycopg.Connection[Any], checkpoint_id: str) -> None:
        self.conn = conn
        self.checkpoint_id = checkpoint_id

    def get_or_create(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """``get_or_create_for_checkpoint_id``: offset-0 rows when the id has none on the topics;
        returns the stored offsets."""
        parts = list(partitions)
        topics = sorted({t for t, _ in parts})
        with self.conn.transaction():
            exists = self.conn.execute(
                b"SELECT 1 FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = %s "
                b"AND topic = ANY(%s) LIMIT 1",
                (self.checkpoint_id, topics),
            ).fetchone()
            if exists is None:
                with self.conn.cursor() as cur:
                    cur.executemany(
                        b"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "
                        b'"partition", "offset", doc_modification_time, last_modified) '
                        b"VALUES (%s, %s, %s, 0, NULL, now()) "
                        b'ON CONFLICT (checkpoint_id, topic, "partition") DO NOTHING',
                        [(self.checkpoint_id, t, p) for t, p in parts],
                    )
            rows = self.conn.execute(
                b'SELECT topic, "partition", "offset" FROM pillowtop_kafkacheckpoint '
                b"WHERE checkpoint_id = %s AND topic = ANY(%s)",
                (self.checkpoint_id, topics),
            ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def update_to(self, offsets: dict[TP, int]) -> None:
        """Upsert every (topic, partition) row in one transaction."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                b"INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, "
                b'"partition", "offset", doc_modification_time, last_modified) '
                b"VALUES (%s, %s, %s, %s, NULL, now()) "
                b'ON CONFLICT (checkpoint_id, topic, "partition") DO UPDATE SET '
                b'"offset" = EXCLUDED."offset", doc_modification_time = NULL, '
                b"last_modified = now()",
                [(self.checkpoint_id, t, p, o) for (t, p), o in offsets.items()],
            )


ERROR_UPSERT = f"""
INSERT INTO pillow_retry_pillowerror AS e
    (doc_id, pillow, date_created, date_last_attempt, date_next_attempt, total_attempts,
     current_attempt, error_type, error_traceback, change, change_metadata)
VALUES (%(doc_id)s, %(pillow)s, coalesce(%(created)s::timestamptz, now()), now(),
        CASE WHEN %(n)s <= {MAX_PROCESSING_ATTEMPTS}
             THEN now() + %(n)s * %(n)s * interval '{REPROCESS_INTERVAL_SECONDS} seconds' END,
        %(n)s, %(n)s, %(type)s, %(tb)s, %(change)s, %(meta)s)
ON CONFLICT (doc_id, pillow) DO UPDATE SET
    current_attempt = e.current_attempt + EXCLUDED.current_attempt,
    total_attempts = e.total_attempts + EXCLUDED.total_attempts,
    date_last_attempt = now(),
    date_next_attempt = CASE WHEN e.current_attempt + EXCLUDED.current_attempt
                                  <= {MAX_PROCESSING_ATTEMPTS}
        THEN now() + (e.current_attempt + EXCLUDED.current_attempt)
                   * (e.current_attempt + EXCLUDED.current_attempt)
                   * interval '{REPROCESS_INTERVAL_SECONDS} seconds' END,
    error_type = EXCLUDED.error_type,
    error_traceback = EXCLUDED.error_traceback
""".encode()


def record_pillow_error(
    conn: psycopg.Connection[Any], pillow: str, change: Change, exc: BaseException
) -> None:
    """``PillowError.get_or_create(change, pillow).add_attempt(exc, tb, change.metadata)``."""
    meta: dict[str, Any] = change.metadata if change.metadata is not None else {}
    n = int(meta.get("attempts") or 1)
    etype = type(exc)
    with conn.transaction():
        conn.execute(
            ERROR_UPSERT,
            {
                "doc_id": change.id,
                "pillow": pillow,
                "created": meta.get("publish_timestamp"),
                "n": n,
                "type": f"{etype.__module__}.{etype.__qualname__}",
                "tb": "".join(traceback.format_exception(etype, exc, exc.__traceback__)),
                "change": Jsonb(change.to_dict()),
                "meta": Jsonb(meta) if change.metadata is not None else None,
            },
        )


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create CommCare's checkpoint and error tables when missing (``src/store/schema.rs``)."""
    with conn.transaction():
        conn.execute(b"SELECT pg_advisory_xact_lock(7426853117)")
        conn.execute(
            b"""
DO $$ BEGIN IF to_regclass('pillowtop_kafkacheckpoint') IS NULL THEN
CREATE TABLE pillowtop_kafkacheckpoint (
    id serial PRIMARY KEY,
    checkpoint_id varchar(126) NOT NULL,
    topic varchar(126) NOT NULL,
    "partition" integer NOT NULL,
    "offset" bigint NOT NULL,
    doc_modification_time timestamp with time zone NULL,
    last_modified timestamp with time zone NOT NULL,
    CONSTRAINT pillowtop_kafkacheckpoint_checkpoint_id_topic_partition_uniq
        UNIQUE (checkpoint_id, topic, "partition")
);
CREATE INDEX pillowtop_kafkacheckpoint_checkpoint_id_idx
    ON pillowtop_kafkacheckpoint (checkpoint_id);
END IF; END $$;
DO $$ BEGIN IF to_regclass('pillow_retry_pillowerror') IS NULL THEN
CREATE TABLE pillow_retry_pillowerror (
    id bigserial PRIMARY KEY,
    doc_id varchar(255) NOT NULL,
    pillow varchar(255) NOT NULL,
    date_created timestamp with time zone NOT NULL,
    date_last_attempt timestamp with time zone NOT NULL,
    date_next_attempt timestamp with time zone NULL,
    total_attempts integer NOT NULL DEFAULT 0,
    current_attempt integer NOT NULL DEFAULT 0,
    error_type varchar(255) NULL,
    error_traceback text NULL,
    change jsonb NULL,
    change_metadata jsonb NULL,
    CONSTRAINT pillow_retry_pillowerror_doc_id_pillow_uniq UNIQUE (doc_id, pillow)
);
CREATE INDEX pillow_retry_pillowerror_pillow_idx ON pillow_retry_pillowerror (pillow);
CREATE INDEX pillow_retry_pillowerror_date_next_attempt_idx
    ON pillow_retry_pillowerror (date_next_attempt);
CREATE INDEX pillow_retry_pillowerror_current_attempt_idx
    ON pillow_retry_pillowerror (current_attempt);
CREATE INDEX pillow_retry_pillowerror_error_type_idx ON pillow_retry_pillowerror (error_type);
END IF; END $$;
"""
        )


# --------------------------------------------------------------------------------------------
# The pillow
# --------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did."""

    changes: int = 0  # messages consumed (valid or not)
    failed: int = 0  # handle_pillow_error calls
    invalid: int = 0  # messages that are not a valid ChangeMeta
    checkpoints: int = 0
    stop_reason: str = ""


def dedupe(chunk: list[Change]) -> list[Change]:
    """Keep the last occurrence of each doc id, in the order of those last occurrences."""
    last = {c.id: i for i, c in enumerate(chunk)}
    if len(last) == len(chunk):
        return chunk
    return [c for i, c in enumerate(chunk) if last[c.id] == i]


class ReferencePillow:
    """CommCare's ``ConstructedPillow`` over a ``KafkaChangeFeed`` (one process: all partitions)."""

    def __init__(
        self,
        name: str,
        topics: Sequence[str],
        processors: Sequence[PillowProcessor],
        *,
        checkpoint_id: str | None = None,
        chunk_size: int = 10,
        checkpoint_frequency: int = 100,
        max_checkpoint_delay: float | None = 300.0,
        retry_errors: bool = True,
    ) -> None:
        self.name = name
        self.topics = list(topics)
        self.processors = list(processors)
        self.checkpoint_id = checkpoint_id or name
        self.chunk_size = chunk_size
        self.checkpoint_frequency = checkpoint_frequency
        self.max_checkpoint_delay = max_checkpoint_delay
        self.retry_errors = retry_errors
        batch = chunk_size > 0
        self.batch_processors: list[BulkPillowProcessor] = [
            p
            for p in self.processors
            if batch and p.supports_batch_processing and isinstance(p, BulkPillowProcessor)
        ]
        self.serial_processors = [p for p in self.processors if p not in self.batch_processors]
        self.last_update: float | None = None

    # -- error handling -------------------------------------------------------------------

    def _handle_error(self, change: Change, exc: BaseException) -> None:
        self.summary.failed += 1
        change.increment_attempt_count()
        if self.retry_errors or isinstance(exc, DocumentMissingError):
            record_pillow_error(self.pg, self.name, change, exc)

    def _process_serially(self, change: Change, processor: PillowProcessor | None = None) -> None:
        try:
            if processor is not None:
                processor.process_change(change)
            else:
                for p in self.serial_processors:
                    p.process_change(change)
        except Exception as e:
            self._handle_error(change, e)

    def _flush(self, chunk: list[Change]) -> None:
        changes = dedupe(chunk)
        for processor in self.batch_processors:
            try:
                retry, errors = processor.process_changes_chunk(changes)
            except Exception:
                for change in changes:
                    self._process_serially(change, processor)
                continue
            for change, exc in errors:
                self._handle_error(change, exc)
            for change in retry:
                self._process_serially(change, processor)
        if self.serial_processors:
            for change in changes:
                self._process_serially(change)

    # -- checkpoints ----------------------------------------------------------------------

    def _current_offsets(self) -> dict[TP, int]:
        offsets = dict(self.since)
        for tp, offset in self.processed.items():
            offsets[tp] = offset + 1
        return offsets

    def _checkpoint(self) -> None:
        offsets = self._current_offsets()
        self.checkpoint.update_to(offsets)
        self.committed = offsets
        self.changes_seen = 0
        self.last_update = time.monotonic()
        self.summary.checkpoints += 1
        for p in self.processors:
            p.checkpoint_updated()

    def _update_checkpoint(self) -> None:
        """``PillowCheckpointEventHandler.update_checkpoint`` (when due)."""
        due = self.changes_seen >= self.checkpoint_frequency or (
            self.max_checkpoint_delay is not None
            and (
                self.last_update is None
                or time.monotonic() - self.last_update >= self.max_checkpoint_delay
            )
        )
        if due:
            self._checkpoint()

    def _checkpoint_on_idle(self) -> None:
        """``update_checkpoint_on_idle``: write only when a partition is ahead of the stored one."""
        if self._current_offsets() != self.committed:
            self._checkpoint()

    def _caught_up(self, consumer: Consumer) -> bool:
        position = self._current_offsets()
        for t, p in self.assignment:
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
            if position.get((t, p), 0) < high:
                return False
        return True

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        *,
        kafka: str,
        postgres: str,
        until_idle: bool = False,
        max_changes: int | None = None,
        idle_timeout: float = 10.0,
        consumer_config: dict[str, Any] | None = None,
    ) -> RunSummary:
        """``process_changes(since=<checkpoint>, forever=True)`` until a stop condition."""
        self.summary = RunSummary()
        self.pg = psycopg.connect(postgres, autocommit=True)
        config: dict[str, Any] = {
            "bootstrap.servers": kafka,
            "client.id": self.name,
            # librdkafka wants a group id; with assign() and no commits no group is joined.
            "group.id": f"reference-{self.name}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            # The same fetch settings as pillowtop's KafkaFeed, so both read alike.
            "queued.max.messages.kbytes": 16384,
            "fetch.wait.max.ms": 100,
            "fetch.queue.backoff.ms": 10,
        }
        config.update(consumer_config or {})
        consumer = Consumer(config)
        try:
            ensure_schema(self.pg)
            self.checkpoint = KafkaCheckpoint(self.pg, self.checkpoint_id)
            metadata = consumer.list_topics(timeout=30)
            assignment: list[TP] = []
            for topic in self.topics:
                tmd = metadata.topics.get(topic)
                if tmd is None or tmd.error is not None:
                    raise KafkaException(f"topic {topic} unknown: {tmd.error if tmd else ''}")
                assignment.extend((topic, p) for p in tmd.partitions)
            self.assignment = sorted(assignment)
            since = self.checkpoint.get_or_create(self.assignment)
            self.since = {tp: o for tp, o in since.items() if tp in set(self.assignment)}
            self.committed = dict(self.since)
            self.processed: dict[TP, int] = {}
            consumer.assign(
                [
                    TopicPartition(t, p, self.since.get((t, p), OFFSET_BEGINNING))
                    for t, p in self.assignment
                ]
            )
            self._loop(consumer, until_idle, max_changes, idle_timeout)
            return self.summary
        finally:
            consumer.close()
            self.pg.close()

    def _loop(
        self, consumer: Consumer, until_idle: bool, max_changes: int | None, idle_timeout: float
    ) -> None:
        self.changes_seen = 0
        self.last_update = None
        chunk: list[Change] = []
        last_flush = time.monotonic()
        chunk_size = self.chunk_size
        batch = bool(self.batch_processors)
        processed = self.processed
        summary = self.summary
        while True:
            want = FETCH_BATCH
            if max_changes is not None:
                want = min(want, max_changes - summary.changes)
                if want <= 0:
                    summary.stop_reason = "max_changes"
                    break
            messages: list[Any] = consumer.consume(want, idle_timeout)
            if not messages:
                # CommCare's None heartbeat: flush a partial chunk, else checkpoint on idle.
                if chunk:
                    self._flush(chunk)
                    chunk = []
                    last_flush = time.monotonic()
                    self._update_checkpoint()
                else:
                    self._checkpoint_on_idle()
                if until_idle and self._caught_up(consumer):
                    summary.stop_reason = "idle"
                    break
                continue
            for message in messages:
                err = message.error()
                if err is not None:
                    raise KafkaException(err)
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                processed[(topic, partition)] = offset
                summary.changes += 1
                try:
                    change = change_from_message(topic, partition, offset, message.value())
                except (ValueError, KeyError, TypeError, AttributeError):
                    summary.invalid += 1
                    continue
                self.changes_seen += 1
                if batch:
                    chunk.append(change)
                    if (
                        len(chunk) >= chunk_size
                        or time.monotonic() - last_flush > CHUNK_FLUSH_SECONDS
                    ):
                        self._flush(chunk)
                        chunk = []
                        last_flush = time.monotonic()
                        self._update_checkpoint()
                else:
                    self._process_serially(change)
                    self._update_checkpoint()
        if chunk:
            self._flush(chunk)
        # Final checkpoint on stop (CommCare's process would run on; we stop cleanly).
        self._checkpoint_on_idle()
