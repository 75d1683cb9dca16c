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
    re-publishes the change later, as CommCare's does. CommCare's version re-raises only a
    ``DocumentMissingError`` its store raised; this one also raises when the store simply has
    no such document (``get_document()`` is ``None``), which CommCare's stores reported that way.
    """
    if change.get_document() is None:
        logger.warning("Unable to get document from change: %r", change)
        raise DocumentMissingError(f"document {change.id} of {change!r} was not found")


def _rev_number(rev: Any) -> int:
    try:
        return int(str(rev).split("-", 1)[0])
    except ValueError:
        return -1


def ensure_matched_revisions(change: Any) -> None:
    """Raise ``DocumentMismatchError`` when the fetched Couch document is older than the change.

    CommCare's rule: when both the document's ``_rev`` and ``change.metadata.document_rev``
    are known and differ, the change is retried later if the fetched revision number is lower
    (or the change's cannot be read).
    """
    doc = change.get_document()
    change_rev = change.metadata.document_rev if change.metadata else None
    if not doc or "_rev" not in doc or change_rev is None:
        return
    doc_rev = doc["_rev"]
    if doc_rev == change_rev:
        return
    fetched, stored = _rev_number(doc_rev), _rev_number(change_rev)
    if fetched < stored or stored == -1:
        message = (
            f"Mismatched revs for {change.id}: fetched rev {doc_rev} vs. changes feed rev "
            f"{change_rev}"
        )
        logger.warning(message)
        raise DocumentMismatchError(message)


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
