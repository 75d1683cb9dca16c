"""Checkpoint operations from Python, over the same Rust code as the ``pillowtop`` CLI.

Each function runs the CLI's operation in this process through the typed native API (no command
line is built): the same plan, the same printed lines, the same questions, one transaction.
Lines and questions go through a :class:`Ui`: by default :class:`StdioUi` (``sys.stdout``,
``sys.stderr`` and ``sys.stdin``); a Django command passes its own (``self.stdout`` and its input
function).

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

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pillowtop_rs import _native
from pillowtop_rs.exceptions import OperationAborted

__all__ = [
    "StdioUi",
    "Ui",
    "add_partitions",
    "assignments",
    "lag",
    "merge_checkpoints",
    "reset_checkpoint",
    "split_checkpoints",
    "validate",
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
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Copy every checkpoint row of ``source`` to each of ``targets`` (CommCare's split).

    ``target_topics`` maps a target to the topics its pillow reads, to report mismatches.
    """
    specs = [f"{t}={','.join(topics)}" for t, topics in (target_topics or {}).items()]
    return _native.split_checkpoints(
        ui or StdioUi(),
        source,
        list(targets),
        postgres_url=postgres_url,
        target_topics=specs,
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
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
    json: bool = False,
    ui: Ui | None = None,
) -> dict[str, Any]:
    """Merge ``sources`` into ``target``: the minimum offset of each partition.

    ``topics`` (the target pillow's topics) restricts what is checked and written.
    """
    if not sources:
        raise OperationAborted("no source checkpoints given: nothing was changed", exit_status=2)
    return _native.merge_checkpoints(
        ui or StdioUi(),
        list(sources),
        target,
        postgres_url=postgres_url,
        topics=None if topics is None else list(topics),
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
        noinput=noinput,
        dry_run=dry_run,
        json=json,
    )


def lag(
    checkpoint_ids: Sequence[str] = (),
    *,
    postgres_url: str,
    kafka: str,
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
        json=json,
        interval=interval,
        metrics_port=metrics_port,
        rounds=rounds,
        topics={k: list(v) for k, v in (topics or {}).items()},
    )


def validate(
    checkpoint_ids: Sequence[str] = (),
    *,
    postgres_url: str,
    kafka: str,
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
        skip_zero=skip_zero,
        json=json,
    )
    return problems


def assignments(
    topics: Sequence[str],
    num_processes: int,
    *,
    kafka: str | None = None,
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
        partitions=partitions,
        dedicated=dedicated,
        workers=workers,
        json=json,
    )
