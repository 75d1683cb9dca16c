"""Test processors mirroring xform-pillow's: search index, SQL table, form metadata tracker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from pillowtop_rs import BulkPillowProcessor, Change, PillowProcessor

UPSERT = """
INSERT INTO testapp_processedchange (processor, doc_id, domain, times) VALUES (%s, %s, %s, 1)
ON CONFLICT (processor, doc_id) DO UPDATE SET times = testapp_processedchange.times + 1
"""


def _domain(change: Change) -> str:
    return str(change.metadata.domain or "")


def record(processor: str, changes: Sequence[Change]) -> None:
    """Count one delivery of each change for ``processor`` (one transaction)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(UPSERT, [(processor, c.id, _domain(c)) for c in changes])


class FormSqlProcessor(BulkPillowProcessor):
    """Writes forms to a SQL table, a chunk at a time (like CommCare's UCR processor)."""

    name = "xform-sql"

    def process_change(self, change: Change) -> None:
        record(self.name, [change])

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        record(self.name, changes_chunk)
        return [], []


class FormElasticProcessor(BulkPillowProcessor):
    """Indexes forms into the search engine with one bulk request per chunk."""

    def __init__(self, index: str) -> None:
        from elasticsearch import Elasticsearch

        self.index = index
        self.es = Elasticsearch(settings.ELASTICSEARCH_URL)

    def _action(self, change: Change) -> dict[str, Any]:
        if change.deleted:
            return {"_op_type": "delete", "_index": self.index, "_id": change.id}
        source = {"domain": _domain(change), "xmlns": change.metadata.document_subtype}
        return {"_op_type": "index", "_index": self.index, "_id": change.id, "_source": source}

    def process_change(self, change: Change) -> None:
        from elasticsearch import helpers

        helpers.bulk(self.es, [self._action(change)])

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        from elasticsearch import helpers

        by_id = {c.id: c for c in changes_chunk}
        _, errors = helpers.bulk(
            self.es, [self._action(c) for c in changes_chunk], raise_on_error=False
        )
        failed: list[tuple[Change, BaseException]] = []
        for item in errors if isinstance(errors, list) else []:
            (result,) = item.values()
            failed.append((by_id[result["_id"]], RuntimeError(f"bulk item failed: {result}")))
        return [], failed


class FormSubmissionMetadataTrackerProcessor(PillowProcessor):
    """Records form submission metadata per change (CommCare's processor of the same name)."""

    name = "form-meta"

    def process_change(self, change: Change) -> None:
        record(self.name, [change])


class FailingProcessor(PillowProcessor):
    """Fails every change whose id starts with ``fail-``; records the others."""

    name = "failing"

    def process_change(self, change: Change) -> None:
        if change.id.startswith("fail-"):
            raise ValueError(f"cannot process {change.id}")
        record(self.name, [change])


class CommCareStyleFormProcessor:
    """Written exactly as CommCare writes processors: a plain class, no pillowtop_rs import.

    Reads each change's document (a ``FormDocument`` fetched in bulk by the model store) and
    counts it under the document's own domain; a missing form raises CommCare's way.
    """

    supports_batch_processing = False
    name = "commcare-style"

    def process_change(self, change: Any) -> None:
        doc = change.get_document()
        if doc is None:
            from pillowtop_rs.utils import ensure_document_exists

            ensure_document_exists(change)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(UPSERT, (self.name, change.id, doc["domain"]))

    def checkpoint_updated(self) -> None:
        """CommCare's hook (UCR logs its slowest domains here)."""
