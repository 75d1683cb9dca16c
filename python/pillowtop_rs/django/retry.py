"""The retry queue (CommCare's ``pillow_retry/api.py`` for Kafka pillows).

Each due error row's change metadata is re-published, with ``publish_timestamp`` set to now and
``attempts`` carried as stored, to the topic the change came from (recorded in the row's
``change``; for rows written by CommCare, which lack it, the topic follows CommCare's
``get_topic_for_doc_type``). Once the message is delivered, **every** error row of that document
id is deleted, whatever the pillow, because every pillow on the topic sees the change again. A
failed delivery adds one attempt to the row (5, 20, 45 minutes, then parked). A row whose pillow
is no longer configured gets ``total_attempts = 10`` so it is never selected again.

All our pillows read Kafka, so CommCare's Couch path (calling ``process_change`` in the queue)
does not exist here. A document with rows for several pillows is published once per round.
"""

from __future__ import annotations

import datetime
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from pillowtop_rs import registry
from pillowtop_rs.django.models import MULTI_ATTEMPTS_CUTOFF, PillowError
from pillowtop_rs.exceptions import KafkaPublishingError
from pillowtop_rs.producer import ChangeProducer

log = logging.getLogger(__name__)

#: CommCare's ``BATCH_SIZE`` for one round.
BATCH_SIZE = 10000

CASE_DOC_TYPES = frozenset({"CommCareCase", "CommCareCase-Deleted", "CommCareCase-Archived"})
FORM_DOC_TYPES = frozenset(
    {
        "XFormInstance",
        "XFormArchived",
        "XFormDeprecated",
        "XFormDuplicate",
        "XFormError",
        "SubmissionErrorLog",
        "XFormInstance-Deleted",
        "HQSubmission",
    }
)
_FIXED_TOPICS = {
    "Domain": "domain",
    "Domain-Deleted": "domain",
    "Domain-DUPLICATE": "domain",
    "CommCareUser": "commcare-user",
    "CommCareUser-Deleted": "commcare-user",
    "WebUser": "web-user",
    "WebUser-Deleted": "web-user",
    "Group": "group",
    "Group-Deleted": "group",
    "SyncLog": "synclog-sql",
    "SimplifiedSyncLog": "synclog-sql",
    "Application": "app",
    "Application-Deleted": "app",
    "LinkedApplication": "app",
    "LinkedApplication-Deleted": "app",
    "RemoteApp": "app",
    "RemoteApp-Deleted": "app",
    "Location": "location",
}
_ALL_TOPICS = frozenset(
    {
        "case",
        "case-sql",
        "commcare-user",
        "domain",
        "form",
        "form-sql",
        "group",
        "meta",
        "sms",
        "web-user",
        "app",
        "location",
        "synclog-sql",
    }
)


def get_topic_for_doc_type(doc_type: str | None, data_source_type: str | None = None) -> str:
    """CommCare's ``topics.get_topic_for_doc_type`` (for rows without a recorded topic)."""
    if doc_type in CASE_DOC_TYPES:
        return "case-sql" if data_source_type == "sql" else "case"
    if doc_type in FORM_DOC_TYPES:
        return "form-sql" if data_source_type == "sql" else "form"
    if doc_type in _FIXED_TOPICS:
        return _FIXED_TOPICS[doc_type]
    if doc_type in _ALL_TOPICS:
        return str(doc_type)
    return "meta"


def topic_for(error: PillowError) -> str:
    """Return the topic to re-publish ``error``'s change to."""
    change = error.change if isinstance(error.change, Mapping) else {}
    if change.get("topic"):
        return str(change["topic"])
    meta = error.change_metadata if isinstance(error.change_metadata, Mapping) else {}
    return get_topic_for_doc_type(meta.get("document_type"), meta.get("data_source_type"))


def now_timestamp() -> str:
    """Now, as CommCare serialises timestamps (``2019-09-18T14:31:01.930921Z``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class RoundResult:
    """What one round did."""

    selected: int = 0
    published: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unknown_pillow: list[str] = field(default_factory=list)
    planned: list[tuple[str, str, str, int]] = field(default_factory=list)


def make_producer(bootstrap: str) -> ChangeProducer:
    """Return the retry queue's producer: CommCare's ``ChangeProducer(auto_flush=False)``.

    It connects with the project's Kafka client properties, as the pillows do.
    """
    return ChangeProducer(auto_flush=False, bootstrap=bootstrap)


def process_round(
    producer: ChangeProducer | None,
    *,
    batch_size: int = BATCH_SIZE,
    excluded_pillows: tuple[str, ...] = (),
    dry_run: bool = False,
) -> RoundResult:
    """Select up to ``batch_size`` due errors, re-publish them, update or delete the rows."""
    if producer is None and not dry_run:
        raise ValueError("process_round needs a producer unless dry_run")
    result = RoundResult()
    errors = list(PillowError.objects.due(timezone.now(), excluded_pillows)[:batch_size])
    result.selected = len(errors)
    known = {c.name for c in registry.get_all_pillow_configs()}
    pending: dict[str, PillowError] = {}
    for error in errors:
        if error.pillow not in known:
            log.error(
                "Could not find pillowtop class '%s' while attempting a retry. If this pillow "
                "was recently deleted then this will be automatically cleaned up eventually. If "
                "not, then this should be looked into.",
                error.pillow,
            )
            result.unknown_pillow.append(error.doc_id)
            if not dry_run:
                error.total_attempts = MULTI_ATTEMPTS_CUTOFF + 1
                error.save(update_fields=["total_attempts"])
            continue
        if error.doc_id in pending:
            continue
        pending[error.doc_id] = error

    outcomes: dict[str, str | None] = {}
    for doc_id, error in pending.items():
        meta = error.change_metadata
        topic = topic_for(error)
        if not isinstance(meta, Mapping) or not meta:
            outcomes[doc_id] = "ValueError: the error row has no change metadata to re-publish"
            continue
        body = dict(meta)
        body["publish_timestamp"] = now_timestamp()
        result.planned.append((doc_id, error.pillow, topic, int(body.get("attempts") or 0)))
        if dry_run or producer is None:
            continue

        def delivered(_meta: Any, _where: Any, err: Any, doc_id: str = doc_id) -> None:
            outcomes[doc_id] = None if err is None else f"{type(err).__qualname__}: {err}"

        try:
            producer.send_change(topic, body, on_delivery=delivered)
        except Exception as e:  # an invalid change, a full queue: recorded as an attempt
            outcomes[doc_id] = f"{type(e).__module__}.{type(e).__qualname__}: {e}"
    if dry_run or producer is None:
        return result
    try:
        producer.flush(30)
    except KafkaPublishingError:
        pass  # those not confirmed count as failed below

    for doc_id, error in pending.items():
        outcome = outcomes.get(doc_id, "KafkaPublishingError: delivery not confirmed within 30 s")
        if outcome is None:
            PillowError.objects.filter(doc_id=doc_id).delete()
            result.published.append(doc_id)
        else:
            error_type, _, message = outcome.partition(": ")
            error.add_attempt(error_type, f"{message}\n{''.join(traceback.format_stack(limit=1))}")
            error.save()
            result.failed.append(doc_id)
    return result


@dataclass
class SendResult:
    """What :func:`send_through_pillow` did."""

    selected: int = 0
    published: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def send_through_pillow(
    producer: ChangeProducer, pillow: str, *, page: int = 1000, timeout: float = 30.0
) -> SendResult:
    """Re-publish **every** error row of ``pillow``, due or not, and delete the delivered ones.

    CommCare's ``send_pillow_retry_queue_through_pillows``: pages of ``page`` rows ordered by
    ``date_next_attempt``; each row's change metadata goes back to its topic with
    ``publish_timestamp = now`` and its attempts kept; the rows of delivered documents are
    deleted by doc id. A row whose delivery failed keeps its schedule and gains an attempt.
    """
    result = SendResult()
    last_id = 0
    while True:
        rows = list(PillowError.objects.filter(pillow=pillow, id__gt=last_id).order_by("id")[:page])
        if not rows:
            return result
        last_id = rows[-1].id
        result.selected += len(rows)
        outcomes: dict[str, str | None] = {}
        for error in rows:
            meta = error.change_metadata
            if not isinstance(meta, Mapping) or not meta:
                outcomes[error.doc_id] = "ValueError: the error row has no change metadata"
                continue
            body = dict(meta)
            body["publish_timestamp"] = now_timestamp()

            def delivered(
                _m: Any,
                _w: Any,
                err: Any,
                doc_id: str = error.doc_id,
                outcomes: dict[str, str | None] = outcomes,
            ) -> None:
                outcomes[doc_id] = None if err is None else f"{type(err).__qualname__}: {err}"

            try:
                producer.send_change(topic_for(error), body, on_delivery=delivered)
            except Exception as e:  # an invalid change: recorded as an attempt
                outcomes[error.doc_id] = f"{type(e).__module__}.{type(e).__qualname__}: {e}"
        try:
            producer.flush(timeout)
        except KafkaPublishingError:
            pass  # those not confirmed count as failed below
        for error in rows:
            outcome = outcomes.get(error.doc_id, "KafkaPublishingError: delivery not confirmed")
            if outcome is None:
                PillowError.objects.filter(doc_id=error.doc_id, pillow=pillow).delete()
                result.published.append(error.doc_id)
            else:
                error_type, _, message = outcome.partition(": ")
                error.add_attempt(error_type, message)
                error.save()
                result.failed.append(error.doc_id)
