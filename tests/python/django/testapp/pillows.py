"""Pillow factories, called by the registry as ``instance(name, **params)`` (CommCare's shape).

Checkpoint ids follow CommCare's naming (``xform-pillow-<xforms index>-<users index>``, the
constant ``form-submission-metadata-tracker``), behind a per-test prefix.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from pillowtop_rs import Pillow, PillowProcessor
from pillowtop_rs.django.settings import checkpoint_delay

from testapp.processors import (
    CommCareStyleFormProcessor,
    FailingProcessor,
    FormElasticProcessor,
    FormSqlProcessor,
    FormSubmissionMetadataTrackerProcessor,
)


def _prefixed(checkpoint_id: str) -> str:
    return f"{settings.TESTAPP['CHECKPOINT_PREFIX']}{checkpoint_id}"


def xform_checkpoint_id(pillow_id: str) -> str:
    """CommCare's newer naming: ``{pillow_id}-{xforms index}-{users index}``."""
    return f"{pillow_id}-{settings.TESTAPP['ES_INDEX']}-{settings.TESTAPP['USERS_INDEX']}"


def get_xform_pillow(
    pillow_id: str = "xform-pillow",
    ucr_division: str | None = None,
    include_ucrs: list[str] | None = None,
    exclude_ucrs: list[str] | None = None,
    num_processes: int = 1,
    process_num: int = 0,
    processor_chunk_size: int = 10,
    **kwargs: Any,
) -> Pillow:
    """Search index + SQL processors, and the metadata tracker if ``RUN_FORM_META_PILLOW``."""
    processors: list[PillowProcessor] = [
        FormElasticProcessor(settings.TESTAPP["ES_INDEX"]),
        FormSqlProcessor(),
    ]
    if settings.RUN_FORM_META_PILLOW:
        processors.append(FormSubmissionMetadataTrackerProcessor())
    return Pillow(
        pillow_id,
        [settings.TESTAPP["TOPIC"]],
        processors,
        checkpoint_id=_prefixed(xform_checkpoint_id(pillow_id)),
        chunk_size=processor_chunk_size,
        checkpoint_frequency=1000,
        max_checkpoint_delay=checkpoint_delay(),
    )


def get_form_submission_metadata_tracker_pillow(
    pillow_id: str = "FormSubmissionMetadataTrackerPillow",
    num_processes: int = 1,
    process_num: int = 0,
    processor_chunk_size: int = 10,
    **kwargs: Any,
) -> Pillow:
    """Only the metadata tracker; checkpoint id ``form-submission-metadata-tracker``."""
    return Pillow(
        pillow_id,
        [settings.TESTAPP["TOPIC"]],
        [FormSubmissionMetadataTrackerProcessor()],
        checkpoint_id=_prefixed("form-submission-metadata-tracker"),
        chunk_size=processor_chunk_size,
        checkpoint_frequency=100,
        max_checkpoint_delay=checkpoint_delay(),
    )


def get_failing_pillow(
    pillow_id: str = "failing-pillow", processor_chunk_size: int = 10, **kwargs: Any
) -> Pillow:
    """A pillow whose processor raises for ``fail-*`` documents."""
    return Pillow(
        pillow_id,
        [settings.TESTAPP["TOPIC"]],
        [FailingProcessor()],
        checkpoint_id=_prefixed(pillow_id),
        chunk_size=processor_chunk_size,
        checkpoint_frequency=100,
        max_checkpoint_delay=checkpoint_delay(),
    )


def get_model_store_pillow(
    pillow_id: str = "model-store-pillow", processor_chunk_size: int = 10, **kwargs: Any
) -> Pillow:
    """A CommCare-style processor reading documents from a Django model store."""
    from pillowtop_rs.django.stores import ModelDocumentStore

    from testapp.models import FormDocument

    return Pillow(
        pillow_id,
        [settings.TESTAPP["TOPIC"]],
        [CommCareStyleFormProcessor()],
        checkpoint_id=_prefixed(pillow_id),
        chunk_size=processor_chunk_size,
        document_stores={("sql", "form-sql"): ModelDocumentStore(FormDocument, "form_id")},
        max_checkpoint_delay=checkpoint_delay(),
    )


def get_rust_es_pillow(
    pillow_id: str = "rust-es-pillow", processor_chunk_size: int = 100, **kwargs: Any
) -> Pillow:
    """The Rust Elasticsearch processor writing ``{ES_INDEX}_v1`` behind the alias ``ES_INDEX``,
    documents from the table ``TESTAPP["SOURCE_TABLE"]`` (``ptop_reindexer_v2``'s tests)."""
    from pillowtop_rs import RustProcessor, SqlDocumentStore

    index = settings.TESTAPP["ES_INDEX"]
    es = RustProcessor(
        "elasticsearch",
        {
            "url": settings.ELASTICSEARCH_URL,
            "index": f"{index}_v1",
            "alias": index,
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"domain": {"type": "keyword"}}},
        },
    )
    return Pillow(
        pillow_id,
        [settings.TESTAPP["TOPIC"]],
        [es],
        checkpoint_id=_prefixed(pillow_id),
        chunk_size=processor_chunk_size,
        document_stores={
            ("sql", "*"): SqlDocumentStore(
                settings.TESTAPP["SOURCE_TABLE"], id_column="doc_id", doc_column="doc"
            )
        },
        max_checkpoint_delay=checkpoint_delay(),
    )
