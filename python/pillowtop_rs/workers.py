"""Virtual workers: ``W`` pillows in one OS process (CommCare's ``run_ptop --gevent-workers W``).

CommCare (PR #36902, 2025) turns each OS process into ``W`` independent pillow instances, each
with its own consumer, partitions and checkpoint rows. Here each worker is its own
:class:`~pillowtop_rs.Pillow` (built by ``make_pillow(process_num, num_processes)``, as
CommCare's factory is called once per worker) run by its own thread: the Kafka and PostgreSQL
I/O of all workers runs on one runtime of the process (``Pillow.run(shared_runtime=True)``) with
the GIL released, and each worker calls its
Python processors once per chunk on its own thread, so I/O-bound processors of different workers
overlap.

Numbering is CommCare's (:func:`pillowtop_rs.virtual_worker_layouts`): worker ``w`` of process
``k`` of ``N`` runs as ``k·W + w`` of ``N·W``; with a dedicated migration process, process 0
runs the migration process alone and worker ``w`` of process ``k ≥ 1`` runs as
``(k-1)·W + 1 + w`` of ``(N-1)·W + 1``.

Stopping: ``request_shutdown()`` (``run_ptop``'s SIGTERM handler) or Ctrl-C stops every worker
after its current chunk and its own final checkpoint. A worker that fails stops the others the
same way, and :func:`run_virtual_workers` raises :class:`WorkerFailed` naming it (CommCare
restarted a failed worker in place; here the process exits and its supervisor restarts it, the
crash-only rule every other failure follows).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pillowtop_rs._native import Pillow, RunSummary, request_shutdown, virtual_worker_layouts
from pillowtop_rs.exceptions import PillowtopError

__all__ = ["WorkerFailed", "WorkerResult", "run_virtual_workers", "worker_layouts"]

#: ``Pillow.run()`` warns when called off the main thread (signals cannot reach it); here the
#: main thread handles signals for every worker.
_OFF_MAIN = r"Pillow\.run\(\) called off the main thread"


class WorkerFailed(PillowtopError):
    """A virtual worker stopped with an error; the others were stopped after a final checkpoint."""


@dataclass
class WorkerResult:
    """One worker's layout and how its run ended."""

    process_num: int
    num_processes: int
    summary: RunSummary | None = None
    error: BaseException | None = None


def worker_layouts(
    num_processes: int, process_number: int, workers: int, dedicated: bool = False
) -> list[tuple[int, int]] | None:
    """Return each worker's ``(process_num, num_processes)`` (``None``: the migration process).

    Raises ``ConfigurationError`` for fewer than two workers or an impossible layout.
    """
    return virtual_worker_layouts(num_processes, process_number, workers, dedicated)


def run_virtual_workers(
    make_pillow: Callable[[int, int], Pillow],
    layouts: list[tuple[int, int]],
    *,
    poll: float = 0.1,
    **run_options: Any,
) -> list[WorkerResult]:
    """Run one pillow per layout, each on its own thread, until all have stopped.

    ``make_pillow(process_num, num_processes)`` builds each worker's pillow (on the calling
    thread, before any starts: a factory error starts nothing). ``run_options`` go to every
    ``Pillow.run()`` (``kafka``, ``postgres``, ``until_idle``, ...). Returns the workers' results
    in layout order; raises :class:`WorkerFailed` if any worker failed, after the others stopped.
    """
    pillows = [make_pillow(p, n) for p, n in layouts]
    results = [WorkerResult(p, n) for p, n in layouts]
    warnings.filterwarnings("ignore", message=_OFF_MAIN, category=RuntimeWarning)

    def work(pillow: Pillow, result: WorkerResult) -> None:
        try:
            result.summary = pillow.run(
                process_number=result.process_num,
                num_processes=result.num_processes,
                shared_runtime=True,
                **run_options,
            )
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            result.error = e
            request_shutdown()

    threads = [
        threading.Thread(
            target=work,
            args=(pillow, result),
            name=f"pillowtop-worker-{result.process_num}-of-{result.num_processes}",
            daemon=True,
        )
        for pillow, result in zip(pillows, results)
    ]
    for t in threads:
        t.start()
    try:
        # The main thread keeps handling signals (SIGTERM → request_shutdown()) while it waits.
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(poll)
    except KeyboardInterrupt:
        # Ctrl-C: every worker finishes its chunk and writes its final checkpoint.
        request_shutdown()
        for t in threads:
            t.join()
        raise
    bad = [r for r in results if r.error is not None]
    if bad:
        first = bad[0]
        raise WorkerFailed(
            f"virtual worker {first.process_num} of {first.num_processes} failed "
            f"({type(first.error).__name__}: {first.error}); the other workers stopped after "
            "their final checkpoint"
        ) from first.error
    return results
