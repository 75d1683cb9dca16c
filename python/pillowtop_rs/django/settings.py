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
``KAFKA_OPTIONS``              kafka-python style client options (``security_protocol``,
                               ``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile``...),
                               mapped to librdkafka properties (:data:`KAFKA_OPTION_PROPERTIES`)
``KAFKA_CONFIG``               raw librdkafka properties, applied after ``KAFKA_OPTIONS``
``BACKGROUND_CHECKPOINTS``     write checkpoints off the pillow's thread (default: the pillow's
                               own setting, ``True``); ``run_ptop --[no-]background-checkpoints``
``METRICS_SINK``               dotted path of a metrics sink (an object, or a class or factory
                               called with no argument), see ``pillowtop_rs.metrics``
``METRICS_PORT``               serve Prometheus metrics on this port (``run_ptop --metrics-port``)
``LOG_OUTPUT``                 ``"logging"`` (default), ``"stderr"`` or ``"both"``: where the
                               core's log lines go while ``run_ptop`` runs a pillow
``PRODUCER_TIMEOUT``           seconds a ``pillowtop_rs.producer`` send may take (5)
=============================  ===================================================================

CommCare's settings applied by ``run_ptop``: ``PTOP_CHECKPOINT_DELAY_OVERRIDE`` (when defined at
all, even as ``None``, it replaces every pillow's ``max_checkpoint_delay``; ``None`` turns the time
rule off), ``KAFKA_BROKERS`` (the bootstrap servers unless ``PILLOWTOP_RS["KAFKA_BOOTSTRAP"]`` is
set, which wins), ``KAFKA_API_VERSION`` (accepted and ignored: librdkafka negotiates the protocol
versions with the broker; said once in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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
        "KAFKA_OPTIONS",
        "KAFKA_CONFIG",
        "BACKGROUND_CHECKPOINTS",
        "METRICS_SINK",
        "METRICS_PORT",
        "LOG_OUTPUT",
        "PRODUCER_TIMEOUT",
    }
)

#: kafka-python client options (as CommCare passes them to ``KafkaConsumer``) and the
#: librdkafka property each one becomes. ``ssl_check_hostname`` becomes
#: ``ssl.endpoint.identification.algorithm`` (``https`` or ``none``); ``api_version`` is ignored
#: (see ``KAFKA_API_VERSION``).
KAFKA_OPTION_PROPERTIES: Mapping[str, str] = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
}

_logger = logging.getLogger("pillowtop_rs.django")
_api_version_logged = False

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


def retry_queue_enabled() -> bool:
    """CommCare's ``PILLOW_RETRY_QUEUE_ENABLED``: ``False`` stops the retry queue from processing.

    Unlike CommCare, whose own default is ``False``, an undefined setting means enabled: a
    project that runs ``run_pillow_retry_queue`` without the setting wants it to work.
    """
    return bool(getattr(settings, "PILLOW_RETRY_QUEUE_ENABLED", True))


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


def _property_value(value: object, where: str) -> str:
    """Return a librdkafka property value: ``true``/``false`` for booleans, numbers as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ImproperlyConfigured(f"{where} must be a string, number or boolean, not {value!r}")


def kafka_options_config(options: Mapping[str, Any]) -> dict[str, str]:
    """kafka-python style options (``{"security_protocol": "SSL", ...}``) as librdkafka properties.

    Unknown options are refused with the known ones listed, so a typo never silently connects
    without TLS.
    """
    unknown = sorted(set(options) - set(KAFKA_OPTION_PROPERTIES) - {"api_version"})
    if unknown:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['KAFKA_OPTIONS'] has unknown kafka-python option(s) {unknown}; "
            f"known: {sorted(KAFKA_OPTION_PROPERTIES)} (or give librdkafka properties in "
            f"PILLOWTOP_RS['KAFKA_CONFIG'])"
        )
    config: dict[str, str] = {}
    for key, value in options.items():
        if key == "api_version" or value is None:
            continue
        where = f"PILLOWTOP_RS['KAFKA_OPTIONS'][{key!r}]"
        if key == "ssl_check_hostname":
            if not isinstance(value, bool):
                raise ImproperlyConfigured(f"{where} must be True or False, not {value!r}")
            config[KAFKA_OPTION_PROPERTIES[key]] = "https" if value else "none"
        else:
            config[KAFKA_OPTION_PROPERTIES[key]] = _property_value(value, where)
    return config


def kafka_client_config() -> dict[str, str]:
    """Return the librdkafka properties every Kafka client of ``run_ptop`` gets.

    ``PILLOWTOP_RS["KAFKA_OPTIONS"]`` mapped, then ``PILLOWTOP_RS["KAFKA_CONFIG"]`` over them.
    Also says once, in the log, that ``KAFKA_API_VERSION`` is ignored.
    """
    global _api_version_logged
    version = getattr(settings, "KAFKA_API_VERSION", None)
    if version is not None and not _api_version_logged:
        _api_version_logged = True
        _logger.info(
            "settings.KAFKA_API_VERSION = %r is ignored: librdkafka negotiates the protocol "
            "versions with the broker",
            version,
        )
    ours = pillowtop_rs_settings()
    options = ours.get("KAFKA_OPTIONS") or {}
    raw = ours.get("KAFKA_CONFIG") or {}
    for name, value in (("KAFKA_OPTIONS", options), ("KAFKA_CONFIG", raw)):
        if not isinstance(value, Mapping):
            raise ImproperlyConfigured(
                f"PILLOWTOP_RS[{name!r}] must be a dict, not {type(value).__name__}"
            )
    config = kafka_options_config(options)
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise ImproperlyConfigured(
                f"PILLOWTOP_RS['KAFKA_CONFIG'] keys must be librdkafka property names, not {key!r}"
            )
        config[key] = _property_value(value, f"PILLOWTOP_RS['KAFKA_CONFIG'][{key!r}]")
    return config


def checkpoint_delay_override() -> float | None:
    """Return ``PTOP_CHECKPOINT_DELAY_OVERRIDE`` as ``Pillow.run(max_checkpoint_delay=)`` takes it.

    ``None`` when the setting is not defined (each pillow keeps its own), ``math.inf`` when it
    is ``None`` (the time rule off), else its seconds.
    """
    if not hasattr(settings, "PTOP_CHECKPOINT_DELAY_OVERRIDE"):
        return None
    value = settings.PTOP_CHECKPOINT_DELAY_OVERRIDE
    if value is None:
        return float("inf")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ImproperlyConfigured(
            "PTOP_CHECKPOINT_DELAY_OVERRIDE must be None or a non-negative number of seconds, "
            f"not {value!r}"
        )
    return float(value)


def background_checkpoints() -> bool | None:
    """``PILLOWTOP_RS["BACKGROUND_CHECKPOINTS"]``, or ``None``: each pillow's own setting."""
    value = pillowtop_rs_settings().get("BACKGROUND_CHECKPOINTS")
    if value is None or isinstance(value, bool):
        return value
    raise ImproperlyConfigured(
        f"PILLOWTOP_RS['BACKGROUND_CHECKPOINTS'] must be True or False, not {value!r}"
    )


def metrics_port() -> int | None:
    """``PILLOWTOP_RS["METRICS_PORT"]``, or ``None`` (no endpoint)."""
    value = pillowtop_rs_settings().get("METRICS_PORT")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['METRICS_PORT'] must be a TCP port number, not {value!r}"
        )
    return value


def metrics_sink() -> object | None:
    """Return the object ``PILLOWTOP_RS["METRICS_SINK"]`` names, or ``None``.

    The setting is a dotted path; a class or factory is called with no argument.
    """
    path = pillowtop_rs_settings().get("METRICS_SINK")
    if not path:
        return None
    if not isinstance(path, str):
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['METRICS_SINK'] must be a dotted path, not {path!r}"
        )
    from django.utils.module_loading import import_string

    try:
        target: object = import_string(path)
    except ImportError as e:
        raise ImproperlyConfigured(f"PILLOWTOP_RS['METRICS_SINK'] = {path!r}: {e}") from e
    if isinstance(target, type) or (callable(target) and not hasattr(target, "counter")):
        factory: Callable[[], object] = target
        target = factory()
    missing = [m for m in ("counter", "gauge", "histogram") if not hasattr(target, m)]
    if missing:
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['METRICS_SINK'] = {path!r} has no {', '.join(missing)} method(s); "
            "a sink has counter/gauge/histogram(name, value, tags)"
        )
    return target


def log_output() -> str:
    """``PILLOWTOP_RS["LOG_OUTPUT"]``: ``"logging"`` (default), ``"stderr"`` or ``"both"``."""
    value = pillowtop_rs_settings().get("LOG_OUTPUT", "logging")
    if value not in ("logging", "stderr", "both"):
        raise ImproperlyConfigured(
            f"PILLOWTOP_RS['LOG_OUTPUT'] must be 'logging', 'stderr' or 'both', not {value!r}"
        )
    return str(value)


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
