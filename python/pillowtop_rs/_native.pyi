"""Type stub for ``pillowtop_rs._native`` (hand-written; checked by stubtest)."""

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, final

from pillowtop_rs.metrics import MetricsSink
from pillowtop_rs.processors import DocumentStore

__all__ = [
    "Change",
    "ChangeMeta",
    "KafkaProducer",
    "Pillow",
    "ProcessResult",
    "RunSummary",
    "kafka_offsets",
    "read_kafka_changes",
    "processed",
    "status_json",
    "wait_processed",
    "status_page",
    "RustProcessor",
    "SqlDocumentStore",
    "request_shutdown",
    "run_cli",
    "reindex",
    "split_checkpoints",
    "merge_checkpoints",
    "reset_checkpoint",
    "add_partitions",
    "lag",
    "assignments",
    "doctor",
    "validate",
    "fix_checkpoint_after_rewind",
    "fix_checkpoints_from_date",
    "fix_checkpoints_from_json",
    "tail_kafka",
    "search_kafka_changes",
    "dump_remaining_changes",
    "create_kafka_topics",
    "list_kafka_topics",
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
    """CommCare's ``Change``: attributes, a read-only mapping, the document lazily.

    Mapping keys: ``id``, ``seq``, ``doc``, ``deleted``.
    """

    def __new__(
        cls,
        id: Any,
        sequence_id: Any,
        document: Any = None,
        deleted: bool = False,
        metadata: Any = None,
        document_store: Any = None,
        topic: str | None = None,
        partition: int | None = None,
    ) -> Change: ...
    @property
    def id(self) -> str: ...
    @property
    def sequence_id(self) -> Any:
        """The Kafka offset (or the sequence a constructed change was given)."""
    @property
    def seq(self) -> Any: ...
    @property
    def offset(self) -> int: ...
    @property
    def deleted(self) -> bool: ...
    @deleted.setter
    def deleted(self, value: bool) -> None: ...
    @property
    def topic(self) -> str | None: ...
    @property
    def partition(self) -> int | None: ...
    @property
    def metadata(self) -> ChangeMeta:
        """The change's ``ChangeMeta`` (``None`` only for a ``Change(...)`` built without one)."""
    @metadata.setter
    def metadata(self, value: Any) -> None: ...
    @property
    def document_store(self) -> Any: ...
    @document_store.setter
    def document_store(self, value: Any) -> None: ...
    @property
    def document(self) -> Any:
        """The document as it stands, without fetching (``None`` when not known yet)."""
    @document.setter
    def document(self, value: Any) -> None: ...
    @property
    def error_raised(self) -> BaseException | None: ...
    def get_document(self) -> Any:
        """Return the document (embedded, fetched in bulk, or set), or ``None`` if not found.

        Raises ``DocumentMissingError`` for a change read by a pillow whose data source has no
        document store.
        """
    def set_document(self, document: Any) -> None:
        """Replace the document for the processors that follow."""
    def should_fetch_document(self) -> bool: ...
    def increment_attempt_count(self) -> None: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def __setitem__(self, key: Any, value: Any, /) -> None: ...
    def __delitem__(self, key: Any, /) -> None: ...
    def pop(self, *_args: Any) -> None: ...
    def get(self, key: str, default: Any | None = None) -> Any: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __iter__(self) -> Any: ...
    def keys(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class ChangeMeta:
    """CommCare's ``ChangeMeta``: keyword-constructible, fields assignable, unknown fields kept."""

    def __new__(cls, **fields: Any) -> ChangeMeta: ...
    @staticmethod
    def wrap(data: dict[str, Any]) -> ChangeMeta: ...
    document_id: str
    document_rev: str | None
    data_source_type: str
    data_source_name: str
    document_type: str | None
    document_subtype: str | None
    domain: str | None
    is_deletion: bool
    publish_timestamp: datetime.datetime | None
    attempts: int
    original_publication_datetime: datetime.datetime | None
    associated_document_id: str | None
    def __getattr__(self, name: str) -> Any: ...
    def __setattr__(self, name: str, value: Any, /) -> None: ...
    def __delattr__(self, name: str, /) -> None: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def __contains__(self, key: str, /) -> bool: ...
    def to_json(self) -> dict[str, Any]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __copy__(self) -> ChangeMeta: ...
    def __deepcopy__(self, _memo: Any = None) -> ChangeMeta: ...
    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]: ...

@final
class ProcessResult:
    """What ``Pillow.process_changes()`` did."""

    @property
    def summary(self) -> RunSummary: ...
    @property
    def checkpoint(self) -> dict[tuple[str, int], int]:
        """The checkpoint written, by (topic, partition): the next offset to read."""

def status_page(api_url: str) -> str:
    """Return the status page's HTML, reading its JSON from ``api_url``."""

def status_json(
    postgres_url: str, kafka_bootstrap: str, names: Mapping[str, str] | None = None
) -> str:
    """Return every pillow's status as JSON (``pillowtop serve``'s ``/api/pillows``)."""

def processed(
    checkpoint_id: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    postgres_url: str,
    processor: str | None = None,
) -> bool:
    """Return whether the pillow (or its ``processor``) has handled the change at ``offset``."""

def wait_processed(
    checkpoint_id: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    postgres_url: str,
    processor: str | None = None,
    timeout: float = 30.0,
    poll: float = 0.05,
) -> bool:
    """Wait until the change at ``offset`` is handled; ``False`` when ``timeout`` is up."""

def kafka_offsets(kafka: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Return the high-water mark of every partition of ``topics``."""

def read_kafka_changes(
    kafka: str,
    topics: list[str],
    start: Mapping[tuple[str, int], int],
    end: Mapping[tuple[str, int], int],
    *,
    timeout: float = 30.0,
) -> list[Change]:
    """Return the changes of ``topics`` from ``start`` up to ``end``."""

@final
class RunSummary:
    """What ``Pillow.run()`` did."""

    @property
    def stop_reason(self) -> str:
        """Why the run ended: ``"shutdown"``, ``"idle"``, ``"max_changes"`` or ``"feed_ended"``.

        ``"nothing_to_run"``: every processor was handed over to another pillow (online split
        or merge).
        """
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
    @property
    def config(self) -> dict[str, Any] | None:
        """The configuration as validated (defaults filled in); ``None`` for ``"noop"``."""

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
        document_stores: Mapping[tuple[str, str], DocumentStore | SqlDocumentStore | Any]
        | None = None,
        background_checkpoints: bool = True,
        on_processor_error: Callable[[str, Change, BaseException], object] | None = None,
        processor_checkpoints: Literal["shared", "independent"] = "shared",
        lane_max_lead_changes: int = 10000,
        lane_max_lead_bytes: int = 67108864,
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
    def processor_checkpoints(self) -> Literal["shared", "independent"]: ...
    @property
    def lane_max_lead_changes(self) -> int: ...
    @property
    def lane_max_lead_bytes(self) -> int: ...
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
        since: Mapping[tuple[str, int], int] | None = None,
        kafka_config: Mapping[str, str | int | float | bool] | None = None,
        metrics_port: int | None = None,
        metrics_sink: MetricsSink | None = None,
        log_output: str = "logging",
        max_checkpoint_delay: float | None = None,
        background_checkpoints: bool | None = None,
        shared_runtime: bool = False,
    ) -> RunSummary:
        """Run until stopped, with the GIL released while waiting.

        ``stall_timeout``: seconds without a change, while the topic has changes for this
        process, before the Kafka client is probed and re-created if stuck (``None``: off).
        ``max_message_bytes``: larger messages become error rows without being parsed; ``None``
        uses each topic's ``max.message.bytes``. ``postgres_outage_budget``: seconds
        PostgreSQL is waited for (a warning per attempt) before the run fails.
        ``kafka_setting``: where ``kafka`` came from, named in Kafka errors (default
        ``"Pillow.run(kafka=...)"``). ``kafka_config``: extra librdkafka properties (e.g.
        ``{"security.protocol": "SSL"}``) for every Kafka client of the run.

        ``log_output``: ``"logging"`` (the default: the core's log lines go to Python logging,
        loggers ``pillowtop_rs.*``, emitted on this thread), ``"stderr"`` (the CLI's output) or
        ``"both"``. ``metrics_port``: serve CommCare's metrics in Prometheus text format at
        ``/metrics`` on this port while the run lasts. ``metrics_sink``: an object whose
        ``counter``/``gauge``/``histogram(name, value, tags)`` get the metrics in batches, on
        this thread (see ``pillowtop_rs.metrics``). ``max_checkpoint_delay`` and
        ``background_checkpoints`` override the pillow's own settings for this run (``None``:
        keep them; ``math.inf``: no time rule), as ``run_ptop`` does for
        ``PTOP_CHECKPOINT_DELAY_OVERRIDE``.

        Python processors run on this thread, once per chunk. Ctrl-C is a graceful stop, as
        SIGTERM through ``request_shutdown()`` is: the chunk at hand finishes, the final
        checkpoint is written, and ``KeyboardInterrupt`` is re-raised with the run's
        ``RunSummary`` as its ``summary`` attribute; a second Ctrl-C stops at once.
        ``request_shutdown()`` stops and returns. A stop request ends every wait for a
        service (start-up, outages).
        """

    def process_changes(self, changes: Iterable[Any]) -> ProcessResult:
        """Run ``changes`` through the pillow in memory (no Kafka, no PostgreSQL).

        The real loop: chunking, de-duplication, the serial fallback, error recording and the
        checkpoint rules, over an in-memory feed, checkpoint store and error store. Changes
        without a topic go to the pillow's first topic, partition 0.
        """
    def process_change(self, change: Any) -> ProcessResult:
        """``process_changes([change])``."""
    def error_rows(self) -> list[dict[str, Any]]:
        """Return the error rows ``process_changes`` recorded (``PillowError``'s fields)."""

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

def reindex(
    ui: _Ui,
    action: str,
    *,
    pillow: str,
    processor: RustProcessor,
    topics: list[str],
    postgres_url: str,
    kafka_bootstrap: str | None = None,
    kafka_config: dict[str, str] | None = None,
    source: tuple[str, str, str] | None = None,
    from_kafka: bool = False,
    since_ms: int | None = None,
    chunk_size: int = 1000,
    slices: int = 1,
    domain: str | None = None,
    date_field: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    keep_old: int = 172800,
    ack_timeout: int = 120,
    new_index: str | None = None,
    sample_size: int = 200,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> int:
    """``pillowtop reindex``: rebuild an Elasticsearch processor's index; the exit status."""

def split_checkpoints(
    ui: _Ui,
    source: str,
    targets: list[str],
    *,
    postgres_url: str,
    target_topics: list[str] = ...,
    processor: str | None = None,
    online: bool = False,
    timeout: int = 60,
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
    processor: str | None = None,
    online: bool = False,
    timeout: int = 60,
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
    kafka_config: Mapping[str, str] | None = None,
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
    kafka_config: Mapping[str, str] | None = None,
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
    kafka_config: Mapping[str, str] | None = None,
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
    kafka_config: Mapping[str, str] | None = None,
    partitions: int | None = None,
    dedicated: bool = False,
    workers: int | None = None,
    json: bool = False,
) -> None:
    """``pillowtop assignments``: prints which process (and worker) reads which partitions."""

def doctor(
    ui: _Ui,
    checkpoint_ids: list[str],
    *,
    postgres_url: str,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    interval: float = 15.0,
    max_time_lag: int = 60,
    json: bool = False,
    django: bool = False,
    names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``pillowtop doctor``: prints and returns which processor holds each pillow back."""

def validate(
    ui: _Ui,
    checkpoint_ids: list[str],
    *,
    postgres_url: str,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    skip_zero: bool = False,
    json: bool = False,
) -> list[dict[str, Any]]:
    """``pillowtop validate``: prints and returns the checkpoints Kafka can no longer serve."""

def fix_checkpoint_after_rewind(
    ui: _Ui,
    checkpoint_id: str,
    *,
    postgres_url: str,
    by_partition: bool = False,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop fix-checkpoint-after-rewind``: the checkpoint's historical maximum."""

def fix_checkpoints_from_date(
    ui: _Ui,
    date: str,
    checkpoint_ids: list[str],
    *,
    postgres_url: str,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop fix-checkpoints-from-date``: the newest snapshots before ``date``."""

def fix_checkpoints_from_json(
    ui: _Ui,
    checkpoints_json: str,
    *,
    postgres_url: str,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop fix-checkpoints-from-file`` with the file's JSON text."""

def tail_kafka(
    ui: _Ui,
    topics: list[str],
    *,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    doc_type: str | None = None,
    doc_subtype: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """``pillowtop tail-kafka``: prints new changes until Ctrl-C or ``limit``; the summary."""

def search_kafka_changes(
    ui: _Ui,
    topics: list[str],
    *,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    doc_ids: list[str] | None = None,
    doc_id_file: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    doc_type: str | None = None,
    doc_subtype: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """``pillowtop search-kafka-changes``: prints the matching changes; the summary."""

def dump_remaining_changes(
    ui: _Ui,
    checkpoint_id: str,
    *,
    postgres_url: str,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    output: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """``pillowtop dump-remaining-changes``: writes what the checkpoint has not processed."""

def create_kafka_topics(
    ui: _Ui,
    topics: list[str],
    *,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    partitions: int = 1,
    replication_factor: int = 1,
    noinput: bool = False,
    dry_run: bool = False,
    json: bool = False,
) -> dict[str, Any]:
    """``pillowtop create-kafka-topics``: creates the missing ones of ``topics``."""

def list_kafka_topics(
    ui: _Ui,
    topics: list[str],
    *,
    kafka_bootstrap: str,
    kafka_config: Mapping[str, str] | None = None,
    json: bool = False,
) -> list[dict[str, Any]]:
    """``pillowtop list-kafka-topics``: prints and returns the topics and their partitions."""
