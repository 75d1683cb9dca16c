"""Checkpoint operations from Python, over the same Rust code as the ``pillowtop`` CLI.

Each function runs the CLI's operation in this process through the typed native API (no command
line is built): the same plan, the same printed lines, the same questions, one transaction.
Lines and questions go through a :class:`Ui`: by default :class:`StdioUi` (``sys.stdout``,
``sys.stderr`` and ``sys.stdin``); a Django command passes its own (``self.stdout`` and its input
function). The functions that read Kafka take ``kafka_config``: extra librdkafka properties
(security) for their clients, as ``--kafka-config`` on the command line.

The changing operations return a dict: ``outcome`` (``"applied"``, ``"dry_run"`` or
``"nothing_to_do"``), ``plan`` (as ``--json`` prints it) and, once applied, ``result`` (what was
written). A declined question or an inconsistent merge raises
:class:`~pillowtop_rs.exceptions.OperationAborted` carrying CommCare's exit status (1 declined,
2 inconsistent merge sources, 3 reprocessing declined); a refusal (a running pillow without
``force``, a source without rows, a stale plan) raises
:class:`~pillowtop_rs.exceptions.OperationRefused`; bad arguments raise
:class:`~pillowtop_rs.exceptions.ConfigurationError`; a service failure its ``ServiceError``.
"""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pillowtop_rs import _native
from pillowtop_rs.exceptions import ConfigurationError, OperationAborted

__all__ = [
    "StdioUi",
    "Ui",
    "add_partitions",
    "assignments",
    "create_kafka_topics",
    "doctor",
    "dump_remaining_changes",
    "fix_checkpoint_after_rewind",
    "fix_checkpoints",
    "fix_checkpoints_from_date",
    "fix_checkpoints_from_file",
    "lag",
    "list_kafka_topics",
    "merge_checkpoints",
    "processed",
    "reindex",
    "reset_checkpoint",
    "search_kafka_changes",
    "split_checkpoints",
    "tail_kafka",
    "validate",
    "wait_delivered",
    "wait_processed",
]


class Ui(Protocol):
    """Where an operation's lines go and where its answers come from."""

    def out(self, line: str) -> None:
        """Write a line of output (the plan, tables, JSON)."""

    def err(self, line: str) -> None:
        """Write a message line while the output carries JSON."""

    def read_answer(self) -> str:
        """Read one answer to the question just written (``EOFError``: no more input)."""


class StdioUi:
    """The process's ``sys.stdout``, ``sys.stderr`` and ``sys.stdin``."""

    def out(self, line: str) -> None:
        """Print ``line`` on ``sys.stdout``."""
        print(line, flush=True)

    def err(self, line: str) -> None:
        """Print ``line`` on ``sys.stderr``."""
        print(line, file=sys.stderr, flush=True)

    def read_answer(self) -> str:
        """Read a line of ``sys.stdin`` (``""`` at its end)."""
        return sys.stdin.readline()


def split_checkpoints(
    source: str,
    targets: Sequence[str],
    *,
    postgres_url: str,
    target_topics: Mapping[str, Sequence[str]] | None = None,
    processor: str | None = None,
    online: bool = False,
    timeout: int = 60,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Copy every checkpoint row of ``source`` to each of ``targets`` (CommCare's split).

    ``target_topics`` maps a target to the topics its pillow reads, to report mismatches.

    With ``processor`` (ours), only that processor moves, to the one target, with its own
    position: the target starts exactly where the processor stopped and the source skips it
    from then on. ``online=True`` does it while the source runs (either
    ``processor_checkpoints`` mode), waiting up to ``timeout`` seconds for its live processes
    to hand the processor over; without it the source must be stopped.
    """
    specs = [f"{t}={','.join(topics)}" for t, topics in (target_topics or {}).items()]
    return _native.split_checkpoints(
        ui or StdioUi(),
        source,
        list(targets),
        postgres_url=postgres_url,
        target_topics=specs,
        processor=processor,
        online=online,
        timeout=timeout,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )


def merge_checkpoints(
    sources: Sequence[str],
    target: str,
    *,
    postgres_url: str,
    topics: Sequence[str] | None = None,
    processor: str | None = None,
    online: bool = False,
    timeout: int = 60,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Merge ``sources`` into ``target``: the minimum offset of each partition.

    ``topics`` (the target pillow's topics) restricts what is checked and written.

    With ``processor`` (ours), the reverse of ``split_checkpoints(..., processor=...)``: that
    processor, split out of ``target`` into the one source, goes back into ``target``, which
    runs it again from the lower of its rows and the processor's position (with one shared
    checkpoint its other processors see the difference again; with independent processor
    checkpoints nothing is seen twice). ``online=True`` does it while both pillows run,
    waiting up to ``timeout`` seconds for their live processes; without it both must be
    stopped.
    """
    if not sources:
        raise OperationAborted("no source checkpoints given: nothing was changed", exit_status=2)
    return _native.merge_checkpoints(
        ui or StdioUi(),
        list(sources),
        target,
        postgres_url=postgres_url,
        topics=None if topics is None else list(topics),
        processor=processor,
        online=online,
        timeout=timeout,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )


def reset_checkpoint(
    checkpoint_id: str,
    *,
    to: str | int,
    postgres_url: str,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    partition: tuple[str, int] | None = None,
    topics: Sequence[str] | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Move a checkpoint to ``to``: ``"earliest"``, ``"latest"``, an offset, or a time.

    A time is RFC 3339 text (the first message at or after it); an offset is an integer (or its
    text). ``partition`` moves only that partition; ``topics`` every partition of those topics.
    """
    where: dict[str, Any] = {}
    if to in ("earliest", "latest"):
        where[str(to)] = True
    elif isinstance(to, int) or to.lstrip("-").isdigit():
        where["offset"] = int(to)
    else:
        where["timestamp"] = to
    return _native.reset_checkpoint(
        ui or StdioUi(),
        checkpoint_id,
        postgres_url=postgres_url,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        partition=partition,
        topics=None if topics is None else list(topics),
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
        **where,
    )


def add_partitions(
    topic: str,
    num_partitions: int,
    *,
    postgres_url: str,
    kafka: str | None = None,
    kafka_config: Mapping[str, str] | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Create offset-0 rows for the new partitions of ``topic`` (CommCare's add_kafka_partition).

    With ``kafka``, the topic must have ``num_partitions`` partitions.
    """
    return _native.add_partitions(
        ui or StdioUi(),
        topic,
        num_partitions,
        postgres_url=postgres_url,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        noinput=noinput,
        dry_run=dry_run,
        json=json,
    )


def lag(
    checkpoint_ids: Sequence[str] = (),
    *,
    postgres_url: str,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    json: bool = False,
    interval: int | None = None,
    metrics_port: int | None = None,
    rounds: int | None = None,
    ui: Ui | None = None,
    topics: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Print the lag table (or JSON) of ``checkpoint_ids`` (every checkpoint when empty).

    With ``interval`` (seconds) it repeats, ``rounds`` times or until Ctrl-C; ``metrics_port``
    serves CommCare's lag gauges in Prometheus format meanwhile (every 120 s by default).
    ``topics`` maps a checkpoint id to its pillow's topics: a pillow that never ran is shown
    with those topics' partitions as "no checkpoint yet".
    """
    _native.lag(
        ui or StdioUi(),
        list(checkpoint_ids),
        postgres_url=postgres_url,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        json=json,
        interval=interval,
        metrics_port=metrics_port,
        rounds=rounds,
        topics={k: list(v) for k, v in (topics or {}).items()},
    )


def processed(
    checkpoint_id: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    postgres_url: str,
    processor: str | None = None,
) -> bool:
    """Return whether the pillow of ``checkpoint_id`` has handled the change at ``offset``.

    A checkpoint row holds the next offset to read, so the change is handled once the row of
    its partition is past it. With ``processor`` (a processor's name), once that processor has:
    its own row (independent processors) or the pillow's row (the minimum over its processors)
    is past it. A change that failed and has an error row counts as handled.
    """
    return _native.processed(
        checkpoint_id, topic, partition, offset, postgres_url=postgres_url, processor=processor
    )


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
    """Wait until :func:`processed` is true, at most ``timeout`` seconds: ``False`` if it is not.

    Web code that just published a change waits for "this form is in the case-search index"
    instead of writing to Elasticsearch synchronously or sleeping. Ctrl-C interrupts the wait.
    """
    return _native.wait_processed(
        checkpoint_id,
        topic,
        partition,
        offset,
        postgres_url=postgres_url,
        processor=processor,
        timeout=timeout,
        poll=poll,
    )


def wait_delivered(
    checkpoint_id: str,
    delivery: Any,
    *,
    postgres_url: str,
    processor: str | None = None,
    timeout: float = 30.0,
) -> bool:
    """:func:`wait_processed` for what ``send_change`` returned (its topic, partition, offset)."""
    return wait_processed(
        checkpoint_id,
        delivery.topic,
        delivery.partition,
        delivery.offset,
        postgres_url=postgres_url,
        processor=processor,
        timeout=timeout,
    )


def validate(
    checkpoint_ids: Sequence[str] = (),
    *,
    postgres_url: str,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    skip_zero: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> list[dict[str, Any]]:
    """Print and return the checkpoints Kafka can no longer serve (CommCare's validate command).

    Each problem names the checkpoint, the partition, the offset needed and the first one
    available; ``skip_zero`` skips rows at offset 0, as CommCare does.
    """
    problems: list[dict[str, Any]] = _native.validate(
        ui or StdioUi(),
        list(checkpoint_ids),
        postgres_url=postgres_url,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        skip_zero=skip_zero,
        json=json,
    )
    return problems


def doctor(
    checkpoint_ids: Sequence[str],
    *,
    postgres_url: str,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    interval: float = 15.0,
    max_time_lag: int = 60,
    json: bool = False,
    django: bool = False,
    names: Mapping[str, str] | None = None,
    ui: Ui | None = None,
) -> list[dict[str, Any]]:
    """Say which processor holds each pillow back and what a split gives (``pillowtop doctor``).

    Samples every checkpoint twice, ``interval`` seconds apart (the processes report each
    processor's cost with their heartbeats, every 5 s), prints the diagnosis (JSON with
    ``json``) and returns it: per pillow its ``verdict`` (``keeping_up``, ``catching_up``,
    ``falling_behind``, ``stalled``, ``never_run``), rates, backlog, catch-up time, a report per
    processor, the ``holder`` and a ``split`` with its estimates and commands. ``names`` maps a
    checkpoint id to its pillow's name; ``django`` spells the commands for ``manage.py``.
    """
    found: list[dict[str, Any]] = _native.doctor(
        ui or StdioUi(),
        list(checkpoint_ids),
        postgres_url=postgres_url,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        interval=float(interval),
        max_time_lag=max_time_lag,
        json=json,
        django=django,
        names=dict(names or {}),
    )
    return found


def assignments(
    topics: Sequence[str],
    num_processes: int,
    *,
    kafka: str | None = None,
    kafka_config: Mapping[str, str] | None = None,
    partitions: int | None = None,
    dedicated: bool = False,
    workers: int | None = None,
    json: bool = False,
    ui: Ui | None = None,
) -> None:
    """Print which process (and virtual worker) reads which partitions.

    The partitions per topic come from ``kafka``, or are ``partitions`` when given.
    """
    _native.assignments(
        ui or StdioUi(),
        list(topics),
        num_processes,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        partitions=partitions,
        dedicated=dedicated,
        workers=workers,
        json=json,
    )


def fix_checkpoint_after_rewind(
    checkpoint_id: str,
    *,
    postgres_url: str,
    by_partition: bool = False,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Set a checkpoint to its historical maximum (CommCare's fix_checkpoint_after_rewind).

    The history snapshot with the largest sum of offsets, or with ``by_partition`` the maximum of
    each partition over the newest 10 snapshots.
    """
    return _native.fix_checkpoint_after_rewind(
        ui or StdioUi(),
        checkpoint_id,
        postgres_url=postgres_url,
        by_partition=by_partition,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )


def fix_checkpoints_from_date(
    date: str,
    checkpoint_ids: Sequence[str] = (),
    *,
    postgres_url: str,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Set checkpoints to their newest history snapshot before ``date`` (``YYYY-MM-DD``).

    Every checkpoint with a snapshot before the date when ``checkpoint_ids`` is empty (after an
    extra question).
    """
    return _native.fix_checkpoints_from_date(
        ui or StdioUi(),
        date,
        list(checkpoint_ids),
        postgres_url=postgres_url,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )


def fix_checkpoints(
    checkpoints: Mapping[str, Mapping[str, int] | str],
    *,
    postgres_url: str,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Set checkpoints to given offsets: ``{checkpoint_id: {"topic,partition": offset}}``.

    A checkpoint may also be CommCare's sequence text (that object as a JSON string).
    """
    return _native.fix_checkpoints_from_json(
        ui or StdioUi(),
        _json.dumps(dict(checkpoints)),
        postgres_url=postgres_url,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )


def fix_checkpoints_from_file(
    path: str,
    *,
    postgres_url: str,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Set checkpoints to the offsets of a JSON file (CommCare's fix_checkpoints_from_file)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return _native.fix_checkpoints_from_json(
        ui or StdioUi(),
        text,
        postgres_url=postgres_url,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )


def tail_kafka(
    topics: Sequence[str],
    *,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    doc_type: str | None = None,
    doc_subtype: str | None = None,
    limit: int | None = None,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Print the changes published to ``topics`` from now on, one JSON line each.

    Runs until Ctrl-C (a clean stop: ``interrupted`` is true in the returned summary) or
    ``limit`` changes.
    """
    return _native.tail_kafka(
        ui or StdioUi(),
        list(topics),
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        doc_type=doc_type,
        doc_subtype=doc_subtype,
        limit=limit,
    )


def search_kafka_changes(
    topics: Sequence[str],
    *,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    doc_ids: Sequence[str] | None = None,
    doc_id_file: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    doc_type: str | None = None,
    doc_subtype: str | None = None,
    limit: int | None = None,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Print the changes of ``topics`` that match, one JSON line each (CommCare's search).

    Dates are ``YYYY-MM-DD`` (UTC) or RFC 3339; the scan starts at ``start_date`` and ends at
    the high-water marks of its start. Returns the summary (``interrupted`` after Ctrl-C).
    """
    return _native.search_kafka_changes(
        ui or StdioUi(),
        list(topics),
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        doc_ids=None if doc_ids is None else list(doc_ids),
        doc_id_file=doc_id_file,
        start_date=start_date,
        end_date=end_date,
        doc_type=doc_type,
        doc_subtype=doc_subtype,
        limit=limit,
    )


def dump_remaining_changes(
    checkpoint_id: str,
    *,
    postgres_url: str,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    output: str | None = None,
    limit: int | None = None,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Write the changes ``checkpoint_id`` has not processed as JSON lines.

    To ``output`` (gzipped when it ends in ``.gz``; ``"-"`` prints them), by default CommCare's
    ``pillow_changes_<checkpoint>_<time>.gz``. Returns the summary.
    """
    return _native.dump_remaining_changes(
        ui or StdioUi(),
        checkpoint_id,
        postgres_url=postgres_url,
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        output=output,
        limit=limit,
    )


def create_kafka_topics(
    topics: Sequence[str],
    *,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    partitions: int = 1,
    replication_factor: int = 1,
    noinput: bool = False,
    dry_run: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Create the missing ones of ``topics`` (CommCare's create_kafka_topics)."""
    return _native.create_kafka_topics(
        ui or StdioUi(),
        list(topics),
        kafka_bootstrap=kafka,
        kafka_config=kafka_config,
        partitions=partitions,
        replication_factor=replication_factor,
        noinput=noinput,
        dry_run=dry_run,
        json=json,
    )


def list_kafka_topics(
    topics: Sequence[str] = (),
    *,
    kafka: str,
    kafka_config: Mapping[str, str] | None = None,
    json: bool = False,
    ui: Ui | None = None,
) -> list[dict[str, Any]]:
    """Print and return ``topics`` (every topic of the cluster when empty) with partitions."""
    listed: list[dict[str, Any]] = _native.list_kafka_topics(
        ui or StdioUi(), list(topics), kafka_bootstrap=kafka, kafka_config=kafka_config, json=json
    )
    return listed


def _reindex_names(p: Any) -> tuple[str | None, ...]:
    """Return the names a rebuildable ``RustProcessor`` goes by (index, alias, table, name)."""
    c = p.config or {}
    if p.kind == "postgres_table":
        label = f"{c['schema']}.{c.get('table')}" if c.get("schema") else c.get("table")
        return (c.get("table"), label, f"postgres-table:{label}")
    return (c.get("index"), c.get("alias"), f"ElasticsearchProcessor({c.get('index')})")


def reindex(
    pillow: Any,
    action: str = "start",
    *,
    postgres_url: str,
    kafka_bootstrap: str | None = None,
    kafka_config: Mapping[str, str] | None = None,
    processor: str | None = None,
    source: tuple[str, str, str] | None = None,
    from_kafka: bool = False,
    since_ms: int | None = None,
    chunk_size: int = 1000,
    slices: int = 1,
    domain: str | None = None,
    date_field: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    keep_old: int = 48 * 3600,
    ack_timeout: int = 120,
    new_index: str | None = None,
    sample_size: int = 200,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> int:
    """Rebuild an index or a reporting table of ``pillow`` while it runs.

    The index of an Elasticsearch ``RustProcessor``, or the table of a ``postgres_table`` one.

    ``action``: ``"start"`` (preflight, a new index, dual-write by the live pillow, a backfill
    from ``source`` = ``(table, id_column, doc_column)``, verification, the alias swap; the old
    index is kept ``keep_old`` seconds for a rollback; ``from_kafka=True`` copies the newest
    change of each document from the pillow's topics instead, from ``since_ms`` or the earliest
    retained, for changes that embed their documents), ``"resume"`` (carry the unfinished run
    on, after a crash or once the keep window has passed), ``"rollback"``, ``"abort"`` or
    ``"status"``. A table is rebuilt as a new table beside it, swapped in by renames in one
    transaction (the configured name stays; the old version is kept as ``{table}_o{timestamp}``),
    from a source table or from the topics alike. ``processor`` chooses among several such
    processors (by index, alias, table or the name the pillow reports). Returns the exit
    status: 0 done, dry run or waiting for the keep window; 1 a question was declined; 7 the
    verification found differences (the old version still serves).
    Refusals raise :class:`~pillowtop_rs.exceptions.OperationRefused`.
    """
    candidates = [
        p
        for p in pillow.processors
        if isinstance(p, _native.RustProcessor) and p.kind in ("elasticsearch", "postgres_table")
    ]
    if processor is not None:
        candidates = [p for p in candidates if processor in _reindex_names(p)]
    if len(candidates) != 1:
        raise ConfigurationError(
            f"pillow {pillow.name} has {len(candidates)} matching elasticsearch or postgres_table"
            f" RustProcessors{'' if processor is None else f' for {processor!r}'}:"
            " reindex needs exactly one"
        )
    return _native.reindex(
        ui or StdioUi(),
        action,
        pillow=pillow.name,
        processor=candidates[0],
        topics=list(pillow.topics),
        postgres_url=postgres_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_config=None if kafka_config is None else dict(kafka_config),
        source=source,
        from_kafka=from_kafka,
        since_ms=since_ms,
        chunk_size=chunk_size,
        slices=slices,
        domain=domain,
        date_field=date_field,
        start_date=start_date,
        end_date=end_date,
        keep_old=keep_old,
        ack_timeout=ack_timeout,
        new_index=new_index,
        sample_size=sample_size,
        noinput=noinput,
        dry_run=dry_run,
        force=force,
        json=json,
    )
