"""CommCare's checkpoint-id naming.

A pillow built with these ids finds the existing ``pillowtop_kafkacheckpoint`` rows of the
CommCare pillow it replaces. The names follow docs/commcare-pillowtop.md §1.5 "Checkpoint
ids". CommCare builds most ids inline in each pillow factory;
:func:`get_checkpoint_for_elasticsearch_pillow` is its one named helper
(``pillowtop/checkpoints/manager.py``), kept with its name and result. Pass the ids as
``Pillow(..., checkpoint_id=...)``. Renaming an index changes the id, as in CommCare: copy the
rows (``split_pillow_checkpoints``) or the pillow starts again from the beginning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

#: ``FormSubmissionMetadataTrackerPillow``'s constant checkpoint id.
FORM_SUBMISSION_METADATA_TRACKER_CHECKPOINT_ID = "form-submission-metadata-tracker"

#: ``LedgerToElasticsearchPillow``'s fixed pseudo-index (id ``{pillow_id}-ledgers_2016-03-15``).
LEDGER_INDEX = "ledgers_2016-03-15"


@runtime_checkable
class _IndexInfo(Protocol):
    """CommCare's older ``ElasticsearchIndexInfo`` (``.index``)."""

    index: str


@runtime_checkable
class _Adapter(Protocol):
    """CommCare's newer index adapters (``.index_name``)."""

    index_name: str


#: An index: its name, an ``index_info`` or an adapter.
Index = Union[str, _IndexInfo, _Adapter]


def _index_name(index: Index) -> str:
    """Return the index name of a string, an ``index_info`` (``.index``) or an adapter.

    Adapters have ``.index_name``.
    """
    if isinstance(index, str):
        name = index
    elif isinstance(index, _Adapter):
        name = str(index.index_name)
    elif isinstance(index, _IndexInfo):
        name = str(index.index)
    else:
        raise TypeError(
            f"expected an index name, an index_info (.index) or an adapter (.index_name), "
            f"not {index!r}"
        )
    if not name:
        raise ValueError("the index name is empty")
    return name


@dataclass(frozen=True)
class KafkaPillowCheckpoint:
    """CommCare's ``KafkaPillowCheckpoint(checkpoint_id, topics)``: the id and the topics."""

    checkpoint_id: str
    topics: tuple[str, ...] = ()


def get_checkpoint_for_elasticsearch_pillow(
    pillow_id: str, index_name: Index, topics: Iterable[str] = ()
) -> KafkaPillowCheckpoint:
    """Return CommCare's checkpoint ``{pillow_id}-{index_name}`` of a single-index ES pillow.

    ``index_name`` may also be an ``index_info`` or an adapter.
    """
    return KafkaPillowCheckpoint(f"{pillow_id}-{_index_name(index_name)}", tuple(topics))


def case_pillow_checkpoint_id(pillow_id: str, case_index: Index, case_search_index: Index) -> str:
    """``case-pillow``: ``{pillow_id}-{case index}-{case_search index}-messaging-sync``."""
    return f"{pillow_id}-{_index_name(case_index)}-{_index_name(case_search_index)}-messaging-sync"


def xform_pillow_checkpoint_id(
    pillow_id: str,
    xform_index: Index,
    user_index: Index,
    report_xform_index: Index | None = None,
) -> str:
    """``xform-pillow``: ``{pillow_id}-{xforms}-{users}`` (current CommCare).

    With ``report_xform_index``: ``{pillow_id}-{xforms}-{report_xforms}-{users}`` (2020 code).
    """
    parts = [pillow_id, _index_name(xform_index)]
    if report_xform_index is not None:
        parts.append(_index_name(report_xform_index))
    parts.append(_index_name(user_index))
    return "-".join(parts)


def group_pillow_checkpoint_id(pillow_id: str, user_index: Index, group_index: Index) -> str:
    """``group-pillow``: ``{pillow_id}-{users index}-{groups index}``."""
    return f"{pillow_id}-{_index_name(user_index)}-{_index_name(group_index)}"


def ucr_pillow_checkpoint_id(pillow_id: str) -> str:
    """Return the pillow id itself, as the UCR pillows use it.

    So do ``kafka-ucr-main``, ``kafka-ucr-static``, ``location-ucr-pillow``,
    ``case_messaging_sync_pillow`` and ``UpdateUserSyncHistoryPillow``.
    """
    if not pillow_id:
        raise ValueError("the pillow id is empty")
    return pillow_id


__all__ = [
    "Index",
    "FORM_SUBMISSION_METADATA_TRACKER_CHECKPOINT_ID",
    "LEDGER_INDEX",
    "KafkaPillowCheckpoint",
    "case_pillow_checkpoint_id",
    "get_checkpoint_for_elasticsearch_pillow",
    "group_pillow_checkpoint_id",
    "ucr_pillow_checkpoint_id",
    "xform_pillow_checkpoint_id",
]
