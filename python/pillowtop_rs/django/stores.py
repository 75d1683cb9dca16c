"""Document stores over Django models, for ``Pillow(document_stores=...)``.

A pillow fetches a chunk's documents once per chunk and data source, before its processors
run, so a processor's ``change.get_document()`` costs no query::

    Pillow(..., document_stores={("sql", "form-sql"): ModelDocumentStore(XFormInstance,
                                                                       id_field="form_id")})

The store runs on the thread that runs the pillow (``run_ptop``'s), with Django's connection
for that thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.db.models import Model, QuerySet
from django.forms.models import model_to_dict

from pillowtop_rs.exceptions import DocumentNotFoundError

__all__ = ["ModelDocumentStore"]


def _default_to_json(obj: Model) -> dict[str, Any]:
    doc = model_to_dict(obj)
    for key, value in list(doc.items()):
        if hasattr(value, "isoformat"):
            doc[key] = value.isoformat()
        elif not isinstance(value, (str, int, float, bool, list, dict, type(None))):
            doc[key] = str(value)
    return doc


class ModelDocumentStore:
    """Documents from a Django model or queryset, looked up by ``id_field``.

    ``to_json(obj)`` makes the document (default: ``model_to_dict`` with dates as ISO strings
    and other values as text); ``_id`` is set to the id when the document has none, as
    CommCare's documents carry it. Has CommCare's ``DocumentStore`` reading interface
    (``get_document``, ``iter_documents``) and the bulk ``get_documents`` the pillow calls.
    """

    def __init__(
        self,
        model_or_queryset: type[Model] | QuerySet[Any],
        id_field: str = "pk",
        to_json: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        if isinstance(model_or_queryset, QuerySet):
            self._queryset: QuerySet[Any] = model_or_queryset
        else:
            self._queryset = model_or_queryset._default_manager.all()
        self.id_field = id_field
        self.to_json = to_json or _default_to_json

    def __repr__(self) -> str:
        return f"ModelDocumentStore({self._queryset.model.__name__}, id_field={self.id_field!r})"

    def _doc(self, obj: Any) -> tuple[str, dict[str, Any]]:
        doc_id = str(getattr(obj, self.id_field))
        doc = self.to_json(obj)
        doc.setdefault("_id", doc_id)
        return doc_id, doc

    def get_documents(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Return the documents of ``ids`` that exist, by id: one query."""
        rows = self._queryset.filter(**{f"{self.id_field}__in": ids})
        return dict(self._doc(obj) for obj in rows)

    def iter_documents(self, ids: list[str]) -> Iterator[dict[str, Any]]:
        """CommCare's ``iter_documents``: the documents that exist."""
        yield from self.get_documents(ids).values()

    def get_document(self, doc_id: str) -> dict[str, Any]:
        """CommCare's ``get_document``; raises ``DocumentNotFoundError`` when missing."""
        found = self.get_documents([doc_id])
        if doc_id not in found:
            raise DocumentNotFoundError(
                f"{self._queryset.model.__name__} with {self.id_field}={doc_id!r} does not exist"
            )
        return found[doc_id]
