"""Publishing changes as CommCare's ``corehq.apps.change_feed.producer`` does.

``send_change(topic, change_meta)`` publishes one change and waits for the broker; the message
key is ``str(document_id)``, the body CommCare's ``ChangeMeta.to_json()`` wire form (timestamps
ISO 8601 UTC with microseconds and ``Z``), the client ``cchq-producer`` with ``acks=1`` and 3
retries, and documents are placed by murmur2 key hashing, as CommCare's (and the Java client's)
producer places them. A send that is not delivered within the producer's timeout raises
:class:`~pillowtop_rs.exceptions.KafkaPublishingError` naming the topic, the document id and
librdkafka's error, so a Django request never waits longer than that bound.

``change_meta`` may be our :class:`~pillowtop_rs.ChangeMeta`, any object with a ``to_json()``
method returning a dict (CommCare's jsonobject ``ChangeMeta``), or a mapping of its fields.
``document_id``, ``data_source_type`` and ``data_source_name`` are required;
``publish_timestamp`` and ``original_publication_datetime`` default to now; ``datetime`` values
are written in UTC (naive ones are taken as UTC, as CommCare's ``utcnow()`` values are).

Every send writes CommCare's audit lines at DEBUG to the logger ``kafka_producer_audit``:
``PRE-SEND``, then ``SENT`` or ``ERROR``, each ``stage,doc_type,doc_id,transaction_id``.

Settings: with Django configured, the broker is ``settings.KAFKA_BROKERS`` (or
``PILLOWTOP_RS['KAFKA_BOOTSTRAP']``) and the timeout ``PILLOWTOP_RS['PRODUCER_TIMEOUT']``
(seconds, default 5); without Django, ``PILLOWTOP_KAFKA_BOOTSTRAP`` and
``PILLOWTOP_PRODUCER_TIMEOUT`` in the environment, or the constructor's arguments.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

from pillowtop_rs._native import KafkaProducer
from pillowtop_rs.exceptions import ConfigurationError, KafkaPublishingError

CHANGE_PRE_SEND = "PRE-SEND"
CHANGE_SENT = "SENT"
CHANGE_ERROR = "ERROR"
KAFKA_AUDIT_LOGGER = "kafka_producer_audit"

#: The delivery bound when nothing else is configured (seconds).
DEFAULT_TIMEOUT = 5.0

audit_logger = logging.getLogger(KAFKA_AUDIT_LOGGER)


class Delivery(NamedTuple):
    """Where a change was written."""

    topic: str
    partition: int
    offset: int
    document_id: str


#: ``on_delivery(change_meta, delivery, error)``: exactly one of ``delivery`` and ``error`` is set.
DeliveryCallback = Callable[[Any, Optional[Delivery], Optional[KafkaPublishingError]], None]


def _datetime_json(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def change_json(change_meta: Any) -> dict[str, Any]:
    """Return the fields of ``change_meta`` as a dict (``to_json()`` or a mapping)."""
    to_json = getattr(change_meta, "to_json", None)
    if callable(to_json):
        value = to_json()
    elif isinstance(change_meta, Mapping):
        value = change_meta
    else:
        raise TypeError(
            "change_meta must be a ChangeMeta, an object with a to_json() method or a mapping "
            f"of ChangeMeta's fields, not {type(change_meta).__name__}"
        )
    if not isinstance(value, Mapping):
        raise TypeError(f"change_meta.to_json() must return a dict, not {type(value).__name__}")
    body = dict(value)
    if body.get("document_id") is not None and not isinstance(body["document_id"], (str, int)):
        body["document_id"] = str(body["document_id"])  # the key is str(document_id)
    return body


def _audit(stage: str, body: Mapping[str, Any], transaction_id: str) -> None:
    audit_logger.debug(
        "%s,%s,%s,%s", stage, body.get("document_type"), body.get("document_id"), transaction_id
    )


def _settings_bootstrap() -> str | None:
    if "django" in sys.modules:
        from django.conf import settings

        if settings.configured:
            from pillowtop_rs.django.settings import kafka_bootstrap

            return kafka_bootstrap()
    return os.environ.get("PILLOWTOP_KAFKA_BOOTSTRAP") or None


def _settings_properties() -> list[tuple[str, str]]:
    """Return the Django project's Kafka client properties, so the producer connects as pillows do.

    ``PILLOWTOP_RS['KAFKA_OPTIONS']`` mapped, then ``PILLOWTOP_RS['KAFKA_CONFIG']``.
    """
    if "django" in sys.modules:
        from django.conf import settings

        if settings.configured:
            from pillowtop_rs.django.settings import kafka_client_config

            return sorted(kafka_client_config().items())
    return []


def _settings_timeout() -> float:
    if "django" in sys.modules:
        from django.conf import settings

        if settings.configured:
            from pillowtop_rs.django.settings import producer_timeout

            return producer_timeout()
    value = os.environ.get("PILLOWTOP_PRODUCER_TIMEOUT")
    if not value:
        return DEFAULT_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(
            f"PILLOWTOP_PRODUCER_TIMEOUT must be a number of seconds, not {value!r}"
        ) from None


class ChangeProducer:
    """CommCare's ``ChangeProducer``: lazily connected, synchronous unless ``auto_flush=False``.

    With ``auto_flush`` (the default) :meth:`send_change` blocks (the GIL released) until the
    broker confirms, up to ``timeout`` seconds, and raises ``KafkaPublishingError`` on failure.
    Without it, :meth:`send_change` only queues the change; :meth:`flush` waits for the queued
    ones, and each delivery's outcome goes to ``on_delivery`` and to the audit log. Callbacks run
    on the thread calling :meth:`send_change` or :meth:`flush`, never on librdkafka's threads.

    A process that forks gets a fresh client in the child (librdkafka's threads do not survive a
    fork); the parent's is left alone.
    """

    def __init__(
        self,
        auto_flush: bool = True,
        *,
        bootstrap: str | Sequence[str] | None = None,
        timeout: float | None = None,
        properties: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        self.auto_flush = auto_flush
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._properties: list[tuple[str, str]] = (
            [(str(k), str(v)) for k, v in properties.items()]
            if isinstance(properties, Mapping)
            else [(str(k), str(v)) for k, v in (properties or ())]
        )
        self._on_delivery = on_delivery
        self._producer: KafkaProducer | None = None
        self._pid = 0
        self._lock = threading.Lock()
        # ticket -> (change_meta, body, transaction id, topic, callback)
        self._inflight: dict[
            int, tuple[Any, dict[str, Any], str, str, DeliveryCallback | None]
        ] = {}
        self._forked_away: list[KafkaProducer] = []

    @property
    def producer(self) -> KafkaProducer:
        """Return the native client, created on first use (and again in a forked child)."""
        with self._lock:
            pid = os.getpid()
            if self._producer is not None and self._pid == pid:
                return self._producer
            if self._producer is not None:
                # Dropping a parent's client in a child would wait for threads that do not exist
                # here: keep it, unused.
                self._forked_away.append(self._producer)
                self._inflight.clear()
            bootstrap = self._bootstrap if self._bootstrap is not None else _settings_bootstrap()
            if not bootstrap:
                raise ConfigurationError(
                    "no Kafka address for the producer: set KAFKA_BROKERS (Django), "
                    "PILLOWTOP_KAFKA_BOOTSTRAP, or pass bootstrap="
                )
            if not isinstance(bootstrap, str):
                bootstrap = ",".join(str(b) for b in bootstrap)
            timeout = self._timeout if self._timeout is not None else _settings_timeout()
            properties = _settings_properties() + self._properties  # the caller's win
            self._producer = KafkaProducer(bootstrap, timeout=timeout, properties=properties)
            self._pid = pid
            return self._producer

    def send_change(
        self, topic: str, change_meta: Any, on_delivery: DeliveryCallback | None = None
    ) -> Delivery | None:
        """Publish ``change_meta`` to ``topic``.

        Returns where it was written when ``auto_flush`` is on, else ``None`` (the outcome goes
        to ``on_delivery``, this call's or the producer's, when :meth:`flush` or a later send
        sees it). Raises ``InvalidChangeError`` for a change lacking a required field and
        ``KafkaPublishingError`` when the change could not be published.
        """
        body = change_json(change_meta)
        transaction_id = uuid.uuid4().hex
        try:
            change_meta._transaction_id = transaction_id  # CommCare's attribute, where settable
        except (AttributeError, TypeError):
            pass
        text = json.dumps(body, default=_datetime_json)
        _audit(CHANGE_PRE_SEND, body, transaction_id)
        producer = self.producer
        try:
            if self.auto_flush:
                partition, offset = producer.send(topic, text)
                _audit(CHANGE_SENT, body, transaction_id)
                return Delivery(topic, partition, offset, str(body["document_id"]))
            ticket = producer.enqueue(topic, text)
        except Exception:
            _audit(CHANGE_ERROR, body, transaction_id)
            raise
        self._inflight[ticket] = (
            change_meta,
            body,
            transaction_id,
            topic,
            on_delivery or self._on_delivery,
        )
        self._report(producer.poll())
        return None

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (the producer's bound by default) for queued changes.

        Reports each outcome (audit line, ``on_delivery``) and returns how many failed. Raises
        ``KafkaPublishingError`` if some are still unconfirmed when the time is up.
        """
        if self._producer is None or self._pid != os.getpid():
            return 0
        failed = self._report(self._producer.flush(timeout))
        left = self._producer.pending
        if left:
            raise KafkaPublishingError(
                f"kafka producer: {left} change(s) not confirmed within the flush timeout "
                f"({timeout if timeout is not None else self._producer.timeout} s); they stay "
                "queued"
            )
        return failed

    def _report(self, outcomes: list[tuple[int, int, int, BaseException | None]]) -> int:
        failed = 0
        for ticket, partition, offset, error in outcomes:
            entry = self._inflight.pop(ticket, None)
            if entry is None:
                continue
            change_meta, body, transaction_id, topic, callback = entry
            if error is None:
                _audit(CHANGE_SENT, body, transaction_id)
                if callback is not None:
                    callback(
                        change_meta,
                        Delivery(topic, partition, offset, str(body["document_id"])),
                        None,
                    )
            else:
                failed += 1
                _audit(CHANGE_ERROR, body, transaction_id)
                audit_logger.warning("Problem sending change to Kafka (async): %s", error)
                if callback is not None:
                    assert isinstance(error, KafkaPublishingError), error
                    callback(change_meta, None, error)
        return failed


_default: ChangeProducer | None = None
_default_lock = threading.Lock()


def get_producer() -> ChangeProducer:
    """Return the process-wide synchronous producer (CommCare's module-level ``producer``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ChangeProducer()
        return _default


def send_change(topic: str, change_meta: Any) -> Delivery:
    """Publish one change with the process-wide producer and wait for the broker.

    See the module docstring for what ``change_meta`` may be and what is written.
    """
    delivery = get_producer().send_change(topic, change_meta)
    assert delivery is not None  # the process-wide producer is synchronous
    return delivery


__all__ = [
    "CHANGE_ERROR",
    "CHANGE_PRE_SEND",
    "CHANGE_SENT",
    "KAFKA_AUDIT_LOGGER",
    "ChangeProducer",
    "Delivery",
    "DeliveryCallback",
    "change_json",
    "get_producer",
    "send_change",
]
