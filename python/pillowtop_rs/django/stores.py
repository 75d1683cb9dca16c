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

from pillowtop_rs.exceptions import DocumentNotFoundError

__all__ = ["ModelDocumentStore"]


_JSON_TYPES = (str, int, float, bool, list, dict, type(None))


class ModelDocumentStore:
    """Documents from a Django model or queryset, looked up by ``id_field``.

    ``to_json(obj)`` makes the document from a model instance; by default the rows are read as
    dicts of their concrete fields (``QuerySet.values()``: no model instances, about 3 µs per
    document less than ``model_to_dict`` in ``benches/e2e/dropin.py``), with dates as ISO
    strings and other non-JSON values as text. ``_id`` is set to the id when the document has
    none, as CommCare's documents carry it. Has CommCare's ``DocumentStore`` reading interface
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
        self.to_json = to_json

    def __repr__(self) -> str:
        return f"ModelDocumentStore({self._queryset.model.__name__}, id_field={self.id_field!r})"

    def get_documents(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Return the documents of ``ids`` that exist, by id: one query."""
        rows = self._queryset.filter(**{f"{self.id_field}__in": ids})
        out: dict[str, dict[str, Any]] = {}
        if self.to_json is not None:
            for obj in rows:
                doc = self.to_json(obj)
                doc_id = str(getattr(obj, self.id_field))
                doc.setdefault("_id", doc_id)
                out[doc_id] = doc
            return out
        key = self._queryset.model._meta.pk.attname if self.id_field == "pk" else self.id_field
        for doc in rows.values():
            for name, value in doc.items():
                if not isinstance(value, _JSON_TYPES):
                    doc[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
            doc_id = str(doc[key])
            doc.setdefault("_id", doc_id)
            out[doc_id] = doc
        return out

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
