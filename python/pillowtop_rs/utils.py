"""CommCare's processor helpers (``pillowtop/utils.py``), for processors ported unchanged."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pillowtop_rs.exceptions import DocumentMismatchError, DocumentMissingError

__all__ = ["bulk_fetch_changes_docs", "ensure_document_exists", "ensure_matched_revisions"]

logger = logging.getLogger("pillowtop_rs")


def ensure_document_exists(change: Any) -> None:
    """Raise ``DocumentMissingError`` when the change's document cannot be found.

    The error row is always recorded (also with ``retry_errors=False``) and the retry queue
    re-publishes the change later, as CommCare's does.
    """
    if change.get_document() is None:
        logger.warning("Unable to get document from change: %r", change)
        raise DocumentMissingError(f"document {change.id} of {change!r} was not found")


def ensure_matched_revisions(change: Any, fetched_document: dict[str, Any] | None) -> None:
    """Raise ``DocumentMismatchError`` when the fetched Couch document is older than the change.

    Compares the revision number (the part of ``_rev`` before the dash) of the document with
    ``change.metadata.document_rev``; either missing means there is nothing to compare.
    """
    change_rev = getattr(change.metadata, "document_rev", None) if change.metadata else None
    doc_rev = (fetched_document or {}).get("_rev")
    if not change_rev or not doc_rev:
        return

    def number(rev: str) -> int:
        try:
            return int(str(rev).split("-", 1)[0])
        except ValueError:
            return 0

    if number(doc_rev) < number(change_rev):
        raise DocumentMismatchError(
            f"document {change.id}: fetched revision {doc_rev} is older than the change's"
            f" {change_rev}"
        )


def bulk_fetch_changes_docs(changes: Iterable[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Return ``(bad_changes, docs)``: the changes without a document, and the others' documents.

    In a pillow the documents were already fetched in bulk, once per chunk and data source, so
    this reads them; a bulk processor sends the bad changes back as its retry set.
    """
    bad: list[Any] = []
    docs: list[dict[str, Any]] = []
    for change in changes:
        try:
            doc = change.get_document()
        except DocumentMissingError:
            doc = None
        if doc is None:
            bad.append(change)
        else:
            docs.append(doc)
    return bad, docs
