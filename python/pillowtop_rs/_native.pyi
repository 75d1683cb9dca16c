"""Type stub for ``pillowtop_rs._native`` (hand-written; checked by stubtest)."""

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, final

from pillowtop_rs.processors import DocumentStore

__all__ = [
    "Change",
    "ChangeMeta",
    "KafkaProducer",
    "Pillow",
    "RunSummary",
    "RustProcessor",
    "SqlDocumentStore",
    "request_shutdown",
    "run_cli",
    "split_checkpoints",
    "merge_checkpoints",
    "reset_checkpoint",
    "add_partitions",
    "lag",
    "assignments",
    "validate",
    "next_attempt_delay_minutes",
    "parse_change_meta",
    "partition_assignment",
    "topic_partitions",
    "virtual_worker_layouts",
    "__version__",
]

__version__: str

def partition_assignment(
    partitions: Sequence[tuple[str, int]],
    num_processes: int,
    process_num: int,
    dedicated: bool = False,
) -> list[tuple[str, int]]:
    """Return the (topic, partition) pairs that process ``process_num`` of ``num_processes`` reads.

    Raises ``ConfigurationError`` for an impossible layout.
    """

def virtual_worker_layouts(
    num_processes: int,
    process_num: int,
    workers: int,
    dedicated: bool = False,
) -> list[tuple[int, int]] | None:
    """Return the (process_num, num_processes) layouts of ``workers`` virtual workers.

    ``None`` for the dedicated migration process. Raises ``ConfigurationError`` for an impossible
    layout or fewer than two workers.
    """

def parse_change_meta(body: bytes) -> dict[str, Any]:
    """Parse a Kafka message body as CommCare's ``ChangeMeta``.

    Unknown fields are kept; an embedded document is under ``"document"``. Raises
    ``InvalidChangeError`` when the body is not a valid change.
    """

def next_attempt_delay_minutes(current_attempt: int) -> int | None:
    """Return the minutes until the next retry after ``current_attempt`` attempts, or ``None``."""

@final
class Change:
    """A change, as CommCare's ``Change``: attributes and read-only mapping access."""

    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int:
        """CommCare's ``sequence_id``: the Kafka offset."""
    @property
    def offset(self) -> int: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def metadata(self) -> ChangeMeta: ...
    def get_document(self) -> Any:
        """Return the document (embedded, fetched in bulk, or set), or ``None``."""
    def set_document(self, document: Any) -> None:
        """Replace the document for the processors that follow."""
    def increment_attempt_count(self) -> None: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def get(self, key: str, default: Any | None = None) -> Any: ...
    def __contains__(self, key: str, /) -> bool: ...
    def keys(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class ChangeMeta:
    """CommCare's ``ChangeMeta``, read-only; unknown fields are attributes too."""

    @property
    def document_id(self) -> str: ...
    @property
    def document_rev(self) -> str | None: ...
    @property
    def data_source_type(self) -> str: ...
    @property
    def data_source_name(self) -> str: ...
    @property
    def document_type(self) -> str | None: ...
    @property
    def document_subtype(self) -> str | None: ...
    @property
    def domain(self) -> str | None: ...
    @property
    def is_deletion(self) -> bool: ...
    @property
    def publish_timestamp(self) -> datetime.datetime | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def original_publication_datetime(self) -> datetime.datetime | None: ...
    @property
    def associated_document_id(self) -> str | None: ...
    def __getattr__(self, name: str) -> Any: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def to_json(self) -> dict[str, Any]: ...

@final
class RunSummary:
    """What ``Pillow.run()`` did."""

    @property
    def stop_reason(self) -> str:
        """``"shutdown"``, ``"idle"``, ``"max_changes"`` or ``"feed_ended"``."""
    @property
    def partitions(self) -> list[tuple[str, int]]: ...
    @property
    def changes(self) -> int: ...
    @property
    def invalid(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def checkpoints(self) -> int: ...

@final
class RustProcessor:
    """A processor implemented in Rust: ``"elasticsearch"``, ``"postgres_table"`` or ``"noop"``.

    ``config`` is validated here (unknown keys are rejected); the processor is built by
    ``Pillow.run()``. For ``"elasticsearch"``: ``urls`` (or ``url``) and ``index`` are required;
    ``outage_budget_secs`` (300) is how long an unreachable or not-ready node is waited out,
    ``max_retries`` (4) how often other 5xx answers are retried, ``base_backoff_ms`` (1000) and
    ``max_backoff_ms`` (30000) the retry delays. ``transform(doc) -> doc | None``
    (elasticsearch only) runs on the ``run()`` thread; ``None`` skips the change.
    """

    def __new__(
        cls,
        kind: str,
        config: Mapping[str, Any] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    ) -> RustProcessor: ...
    @property
    def kind(self) -> str: ...

@final
class SqlDocumentStore:
    """Documents read in bulk by the Rust core from a table of the pillow's database.

    ``id_column`` is text, ``doc_column`` JSON, as the TOML runner's ``[[document_stores]]``.
    """

    def __new__(
        cls, table: str, *, id_column: str = "id", doc_column: str = "doc"
    ) -> SqlDocumentStore: ...
    @property
    def table(self) -> str: ...
    @property
    def id_column(self) -> str: ...
    @property
    def doc_column(self) -> str: ...

@final
class Pillow:
    """A pillow definition; building one connects to nothing.

    The whole definition is validated here (as ``pillowtop run`` validates a TOML file): at most
    one exactly-once ``postgres_table`` processor, document stores, topic names.
    """

    def __new__(
        cls,
        name: str,
        topics: Sequence[str],
        processors: Sequence[Any],
        *,
        checkpoint_id: str | None = None,
        chunk_size: int = 10,
        checkpoint_frequency: int = 100,
        max_checkpoint_delay: float | None = 300.0,
        start_policy: str = "earliest",
        strict: bool = False,
        retry_errors: bool = True,
        document_stores: Mapping[tuple[str, str], DocumentStore | SqlDocumentStore] | None = None,
        background_checkpoints: bool = True,
    ) -> Pillow: ...
    @property
    def name(self) -> str: ...
    @property
    def checkpoint_id(self) -> str: ...
    @property
    def topics(self) -> list[str]: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def processors(self) -> list[Any]: ...
    def run(
        self,
        *,
        kafka: str,
        postgres: str,
        process_number: int = 0,
        num_processes: int = 1,
        dedicated_migration_process: bool = False,
        until_idle: bool = False,
        max_changes: int | None = None,
        on_chunk: Callable[[], object] | None = None,
        idle_timeout: float = 10.0,
        stall_timeout: float | None = ...,  # 60.0 (PyO3 shows `Some(60.0)` as `...`)
        max_message_bytes: int | None = None,
        postgres_outage_budget: float = 300.0,
        kafka_setting: str | None = None,
    ) -> RunSummary:
        """Run until stopped, with the GIL released while waiting.

        ``stall_timeout``: seconds without a change, while the topic has changes for this
        process, before the Kafka client is probed and re-created if stuck (``None``: off).
        ``max_message_bytes``: larger messages become error rows without being parsed; ``None``
        uses each topic's ``max.message.bytes``. ``postgres_outage_budget``: seconds
        PostgreSQL is waited for (a warning per attempt) before the run fails.
        ``kafka_setting``: where ``kafka`` came from, named in Kafka errors (default
        ``"Pillow.run(kafka=...)"``).

        Python processors run on this thread, once per chunk. Ctrl-C is a graceful stop, as
        SIGTERM through ``request_shutdown()`` is: the chunk at hand finishes, the final
        checkpoint is written, and ``KeyboardInterrupt`` is re-raised with the run's
        ``RunSummary`` as its ``summary`` attribute; a second Ctrl-C stops at once.
        ``request_shutdown()`` stops and returns. A stop request ends every wait for a
        service (start-up, outages).
        """

@final
class KafkaProducer:
    """A Kafka producer configured as CommCare's (see ``pillowtop_rs.producer``)."""

    def __new__(
        cls,
        bootstrap: str,
        *,
        timeout: float = 5.0,
        properties: Sequence[tuple[str, str]] = ...,
    ) -> KafkaProducer: ...
    @property
    def timeout(self) -> float:
        """The delivery bound in seconds."""
    @property
    def bootstrap(self) -> str:
        """The bootstrap servers."""
    @property
    def pending(self) -> int:
        """How many deliveries are not reported yet."""
    def send(self, topic: str, body: str) -> tuple[int, int]:
        """Publish a change's JSON and wait for the broker; return (partition, offset)."""
    def enqueue(self, topic: str, body: str) -> int:
        """Hand a change's JSON to librdkafka without waiting; return a ticket."""
    def poll(self) -> list[tuple[int, int, int, BaseException | None]]:
        """Return the finished deliveries: (ticket, partition, offset, error)."""
    def flush(
        self, timeout: float | None = None
    ) -> list[tuple[int, int, int, BaseException | None]]:
        """Wait up to ``timeout`` seconds for the pending deliveries; return the finished ones."""

def topic_partitions(
    kafka_bootstrap: str, topics: Sequence[str], *, properties: Sequence[tuple[str, str]] = ...
) -> list[tuple[str, int]]:
    """Return every (topic, partition) of ``topics``, sorted, as Kafka reports them."""

def request_shutdown() -> int:
    """Ask every running pillow of this process to stop after a final checkpoint."""

def run_cli(argv: list[str]) -> int:
    """Run the ``pillowtop`` operator CLI in-process; return its exit status."""

class _Ui(Protocol):
    def out(self, line: str, /) -> None: ...
    def err(self, line: str, /) -> None: ...
    def read_answer(self) -> str: ...

def split_checkpoints(
    ui: _Ui,
    source: str,
    targets: list[str],
    *,
    postgres_url: str,
    target_topics: list[str] = ...,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop split``: copies every checkpoint row of ``source`` to each of ``targets``."""

def merge_checkpoints(
    ui: _Ui,
    sources: list[str],
    target: str,
    *,
    postgres_url: str,
    topics: list[str] | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop merge``: the minimum offset of each partition of ``sources`` into ``target``."""

def reset_checkpoint(
    ui: _Ui,
    checkpoint_id: str,
    *,
    postgres_url: str,
    kafka_bootstrap: str,
    earliest: bool = False,
    latest: bool = False,
    offset: int | None = None,
    timestamp: str | None = None,
    partition: tuple[str, int] | None = None,
    topics: list[str] | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop reset``: moves a checkpoint to ``earliest``, ``latest``, an offset or a time."""

def add_partitions(
    ui: _Ui,
    topic: str,
    num_partitions: int,
    *,
    postgres_url: str,
    kafka_bootstrap: str | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop add-partitions``: offset-0 rows for the new partitions of ``topic``."""

def lag(
    ui: _Ui,
    checkpoint_ids: list[str],
    *,
    postgres_url: str,
    kafka_bootstrap: str,
    json: bool = False,
    interval: int | None = None,
    metrics_port: int | None = None,
    rounds: int | None = None,
    topics: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """``pillowtop lag``: prints the lag table (or JSON) of ``checkpoint_ids`` (all when empty).

    ``topics`` (checkpoint id to its topics) lists the partitions of a checkpoint without rows.
    """

def assignments(
    ui: _Ui,
    topics: list[str],
    num_processes: int,
    *,
    kafka_bootstrap: str | None = None,
    partitions: int | None = None,
    dedicated: bool = False,
    workers: int | None = None,
    json: bool = False,
) -> None:
    """``pillowtop assignments``: prints which process (and worker) reads which partitions."""

def validate(
    ui: _Ui,
    checkpoint_ids: list[str],
    *,
    postgres_url: str,
    kafka_bootstrap: str,
    skip_zero: bool = False,
    json: bool = False,
) -> list[dict[str, Any]]:
    """``pillowtop validate``: prints and returns the checkpoints Kafka can no longer serve."""
