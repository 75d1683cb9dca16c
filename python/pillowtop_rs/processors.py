"""Processor base classes, with CommCare's names and return contract.

Subclassing them is optional: a pillow takes any object with CommCare's processor interface
(``process_change``; ``process_changes_chunk`` when ``supports_batch_processing`` is true;
optional ``checkpoint_updated`` and ``bootstrap_if_needed``), so processors written against
CommCare's ``pillowtop.processors`` run unchanged.

A pillow calls its processors on the thread that called :meth:`pillowtop_rs.Pillow.run`,
holding the GIL, once per chunk: batch processors first (``process_changes_chunk`` with the
whole de-duplicated chunk), then the others change by change (``process_change``), in the
order they were given.

An exception raised by a processor (a subclass of :class:`Exception`) fails that change: it is
recorded in ``pillow_retry_pillowerror`` with its traceback and the pillow goes on. A
``KeyboardInterrupt`` or ``SystemExit`` stops the pillow after the checkpoint of the chunks
already completed, and is re-raised by ``run()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from pillowtop_rs._native import Change

__all__ = ["BulkPillowProcessor", "DocumentStore", "PillowProcessor"]


class DocumentStore(Protocol):
    """A document store written in Python, passed to ``Pillow(document_stores=...)``.

    Called once per chunk and data source, on the thread that called ``Pillow.run()``. CommCare's
    ``DocumentStore`` objects work too: the pillow calls ``iter_documents(ids)`` (documents keyed
    by their ``_id``) when there is no ``get_documents``, else ``get_document(id)`` for each id
    (a ``DocumentNotFoundError`` meaning missing).
    """

    def get_documents(self, ids: list[str]) -> Mapping[str, Any]:
        """Return the documents of ``ids`` that exist, by id (missing ids are left out)."""
        ...


class PillowProcessor(ABC):
    """Processes changes one at a time (CommCare's ``PillowProcessor``)."""

    #: When true the pillow calls :meth:`BulkPillowProcessor.process_changes_chunk`.
    supports_batch_processing: ClassVar[bool] = False

    @abstractmethod
    def process_change(self, change: Change) -> None:
        """Process one change; raise to fail it.

        Called on the thread that called ``Pillow.run()``, holding the GIL.
        """

    def checkpoint_updated(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """React to a checkpoint write (called on the ``run()`` thread)."""

    def bootstrap_if_needed(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Create tables or indices, run migrations.

        Called once before process 0 starts consuming, and about every 10 seconds by the
        dedicated migration process (on the ``run()`` thread).
        """


class BulkPillowProcessor(PillowProcessor):
    """Processes whole chunks (CommCare's ``BulkPillowProcessor``)."""

    supports_batch_processing: ClassVar[bool] = True

    @abstractmethod
    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        """Process a de-duplicated chunk.

        Returns ``(retry, errors)``: the changes to retry one by one with
        :meth:`PillowProcessor.process_change`, and ``(change, exception)`` pairs for changes
        that failed. Raising fails the whole call, and the pillow then processes every change of
        the chunk with ``process_change`` (CommCare's fallback). Called on the thread that
        called ``Pillow.run()``, holding the GIL.
        """
