"""Connection settings for pillowtop_rs, derived from the Django settings.

CommCare's setting names keep their meaning (``KAFKA_BROKERS``, ``DATABASES``,
``PTOP_CHECKPOINT_DELAY_OVERRIDE``, ``PILLOW_RETRY_QUEUE_ENABLED``...). Everything new lives in one
dict, ``settings.PILLOWTOP_RS``:

=============================  ===================================================================
``KAFKA_BOOTSTRAP``            bootstrap servers (string or list); default ``KAFKA_BROKERS``
``POSTGRES_URL``               libpq URL for checkpoints and errors; default: derived from
                               ``DATABASES[DATABASE]``
``DATABASE``                   the ``DATABASES`` alias to derive the URL from (``"default"``)
``RETRY_QUEUE_EXCLUDED_PILLOWS``  pillow names the retry queue skips (default none)
``MAX_MESSAGE_BYTES``          larger change messages become error rows unparsed (default: each
                               topic's ``max.message.bytes``); ``run_ptop --max-message-bytes``
``POSTGRES_OUTAGE_BUDGET``     seconds PostgreSQL is waited for before ``run_ptop`` fails (300)
``PRODUCER_TIMEOUT``           seconds a ``pillowtop_rs.producer`` send may take (5)
=============================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: CommCare's ``MAX_CHECKPOINT_DELAY`` (seconds).
MAX_CHECKPOINT_DELAY = 300.0

_KNOWN_KEYS = frozenset(
    {
        "KAFKA_BOOTSTRAP",
        "POSTGRES_URL",
        "DATABASE",
        "RETRY_QUEUE_EXCLUDED_PILLOWS",
        "MAX_MESSAGE_BYTES",
        "POSTGRES_OUTAGE_BUDGET",
        "PRODUCER_TIMEOUT",
    }
)

#: ``DATABASES[...]["OPTIONS"]`` keys passed on as libpq URL parameters.
_LIBPQ_OPTIONS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "options",
    "target_session_attrs",
    "passfile",
)


def pillowtop_rs_settings() -> Mapping[str, Any]:
    """``settings.PILLOWTOP_RS`` (validated: unknown keys are an error)."""
    value = getattr(settings, "PILLOWTOP_RS", {}) or {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"PILLOWTOP_RS must be a dict, got {type(value).__name__}")
    unknown = sorted(set(value) - _KNOWN_KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS has unknown key(s) {unknown}; known: {sorted(_KNOWN_KEYS)}"
        )
    return value


def kafka_bootstrap_setting() -> str:
    """Which setting :func:`kafka_bootstrap` reads, for error messages."""
    if pillowtop_rs_settings().get("KAFKA_BOOTSTRAP"):
        return "settings.PILLOWTOP_RS['KAFKA_BOOTSTRAP']"
    return "settings.KAFKA_BROKERS"


def kafka_bootstrap() -> str:
    """Kafka bootstrap servers: ``PILLOWTOP_RS["KAFKA_BOOTSTRAP"]``, else ``KAFKA_BROKERS``."""
    value = pillowtop_rs_settings().get("KAFKA_BOOTSTRAP") or getattr(
        settings, "KAFKA_BROKERS", None
    )
    if not value:
        raise ImproperlyConfigured(
            "no Kafka address: set KAFKA_BROKERS or PILLOWTOP_RS['KAFKA_BOOTSTRAP']"
        )
    if isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)


def postgres_url() -> str:
    """Return the libpq URL of the checkpoint database (``PILLOWTOP_RS`` or ``DATABASES``)."""
    explicit = pillowtop_rs_settings().get("POSTGRES_URL")
    if explicit:
        return str(explicit)
    alias = pillowtop_rs_settings().get("DATABASE", "default")
    try:
        db = settings.DATABASES[alias]
    except KeyError:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['DATABASE'] names {alias!r}, which is not in DATABASES"
        ) from None
    return database_url(db, alias)


def database_url(db: Mapping[str, Any], alias: str = "default") -> str:
    """Return a libpq URL for a Django ``DATABASES`` entry (each component percent-encoded).

    A ``HOST`` starting with ``/`` is a Unix socket directory and goes into the ``host``
    parameter; an IPv6 address is bracketed.
    """
    engine = str(db.get("ENGINE", ""))
    if "postgresql" not in engine and "postgis" not in engine:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] uses {engine or 'no ENGINE'}; pillowtop needs PostgreSQL "
            f"(or set PILLOWTOP_RS['POSTGRES_URL'])"
        )
    user = str(db.get("USER") or "")
    password = str(db.get("PASSWORD") or "")
    host = str(db.get("HOST") or "")
    port = str(db.get("PORT") or "")
    name = str(db.get("NAME") or "")
    options: Mapping[str, Any] = db.get("OPTIONS") or {}
    params: list[tuple[str, str]] = []

    auth = ""
    if user:
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    netloc = ""
    if host.startswith("/"):
        params.append(("host", host))
    elif host:
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if port:
        netloc += f":{port}"
    for key in _LIBPQ_OPTIONS:
        if options.get(key) is not None:
            params.append((key, str(options[key])))
    url = f"postgresql://{auth}{netloc}/{quote(name, safe='')}"
    if params:
        url += "?" + urlencode(params, quote_via=quote, safe="/")
    return url


def checkpoint_delay() -> float | None:
    """``PTOP_CHECKPOINT_DELAY_OVERRIDE`` when defined at all (even ``None``), else 300 s."""
    if hasattr(settings, "PTOP_CHECKPOINT_DELAY_OVERRIDE"):
        value = settings.PTOP_CHECKPOINT_DELAY_OVERRIDE
        return None if value is None else float(value)
    return MAX_CHECKPOINT_DELAY


def retry_queue_excluded_pillows() -> tuple[str, ...]:
    """Pillow names the retry queue skips (CommCare's broken UCR exclusion, made explicit)."""
    return tuple(str(p) for p in pillowtop_rs_settings().get("RETRY_QUEUE_EXCLUDED_PILLOWS", ()))


def max_message_bytes() -> int | None:
    """``PILLOWTOP_RS["MAX_MESSAGE_BYTES"]``, or ``None``: each topic's ``max.message.bytes``."""
    value = pillowtop_rs_settings().get("MAX_MESSAGE_BYTES")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['MAX_MESSAGE_BYTES'] must be a positive number of bytes, not {value!r}"
        )
    return value


def postgres_outage_budget() -> float | None:
    """``PILLOWTOP_RS["POSTGRES_OUTAGE_BUDGET"]`` in seconds, or ``None`` (the default, 300 s)."""
    value = pillowtop_rs_settings().get("POSTGRES_OUTAGE_BUDGET")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ImproperlyConfigured(
            "PILLOWTOP_RS['POSTGRES_OUTAGE_BUDGET'] must be a non-negative number of seconds, "
            f"not {value!r}"
        )
    return float(value)


def producer_timeout() -> float:
    """``PILLOWTOP_RS["PRODUCER_TIMEOUT"]``: seconds a producer send may take (default 5)."""
    value = pillowtop_rs_settings().get("PRODUCER_TIMEOUT")
    if value is None:
        return 5.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['PRODUCER_TIMEOUT'] must be a positive number of seconds, not {value!r}"
        )
    return float(value)
