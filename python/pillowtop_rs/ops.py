"""Checkpoint operations from Python, with the operator CLI's semantics.

Each function runs the ``pillowtop`` command line in this process (``run_cli``): the same plan,
the same printed output (on the process's stdout), the same questions (read from stdin unless
``noinput``), one transaction. A declined question or an inconsistent merge raises
:class:`~pillowtop_rs.exceptions.OperationAborted` carrying CommCare's exit status (1 declined,
2 inconsistent merge sources or invalid usage, 3 reprocessing declined); any other failure
raises :class:`~pillowtop_rs.exceptions.PillowtopError` naming the status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pillowtop_rs._native import run_cli
from pillowtop_rs.exceptions import OperationAborted, PillowtopError

__all__ = [
    "assignments",
    "lag",
    "merge_checkpoints",
    "reset_checkpoint",
    "split_checkpoints",
]

_ABORTED = {
    1: "a question was declined",
    2: "invalid usage or inconsistent merge sources",
    3: "the reprocessing was declined",
}


def _run(argv: list[str]) -> None:
    status = run_cli(argv)
    if status == 0:
        return
    if status in _ABORTED:
        raise OperationAborted(f"pillowtop {argv[0]}: {_ABORTED[status]}", exit_status=status)
    what = "found invalid checkpoints" if status == 5 else "failed (see the message above)"
    raise PillowtopError(f"pillowtop {argv[0]} {what} (exit status {status})")


def _flags(**flags: bool) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]


def split_checkpoints(
    source: str,
    targets: Sequence[str],
    *,
    postgres_url: str,
    target_topics: Mapping[str, Sequence[str]] | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
) -> None:
    """Copy every checkpoint row of ``source`` to each of ``targets`` (CommCare's split)."""
    argv = ["split", source, *targets]
    for target, topics in (target_topics or {}).items():
        argv += ["--target-topics", f"{target}={','.join(topics)}"]
    _run(
        argv
        + _flags(noinput=noinput, dry_run=dry_run, force=force)
        + ["--postgres-url", postgres_url]
    )


def merge_checkpoints(
    sources: Sequence[str],
    target: str,
    *,
    postgres_url: str,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
) -> None:
    """Merge ``sources`` into ``target``: the minimum offset of each partition."""
    if not sources:
        raise OperationAborted("no source checkpoints given: nothing was changed", exit_status=2)
    argv = ["merge", *sources, target]
    _run(
        argv
        + _flags(noinput=noinput, dry_run=dry_run, force=force)
        + ["--postgres-url", postgres_url]
    )


def reset_checkpoint(
    checkpoint_id: str,
    *,
    to: str,
    postgres_url: str,
    kafka: str,
    partition: tuple[str, int] | None = None,
    noinput: bool = False,
    dry_run: bool = False,
    force: bool = False,
) -> None:
    """Move a checkpoint to ``to``: ``"earliest"``, ``"latest"``, an offset, or a time.

    A time is RFC 3339 text (the first message at or after it); an offset is an integer string.
    """
    if to in ("earliest", "latest"):
        where = [f"--{to}"]
    elif to.lstrip("-").isdigit():
        where = ["--offset", to]
    else:
        where = ["--timestamp", to]
    argv = ["reset", checkpoint_id, *where]
    if partition is not None:
        argv += ["--partition", f"{partition[0]},{partition[1]}"]
    argv += _flags(noinput=noinput, dry_run=dry_run, force=force)
    _run(argv + ["--postgres-url", postgres_url, "--kafka", kafka])


def lag(
    checkpoint_ids: Sequence[str] = (), *, postgres_url: str, kafka: str, json: bool = False
) -> None:
    """Print the lag table (or JSON) of ``checkpoint_ids`` (every checkpoint when empty)."""
    _run(
        [
            "lag",
            *checkpoint_ids,
            *_flags(json=json),
            "--postgres-url",
            postgres_url,
            "--kafka",
            kafka,
        ]
    )


def assignments(
    topics: Sequence[str],
    num_processes: int,
    *,
    kafka: str,
    dedicated: bool = False,
    workers: int | None = None,
    json: bool = False,
) -> None:
    """Print which process (and virtual worker) reads which partitions."""
    argv = ["assignments", str(num_processes), "--topics", ",".join(topics)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    _run(argv + _flags(dedicated=dedicated, json=json) + ["--kafka", kafka])
