"""Settings of the Django test project (tests/python/django).

Everything that varies per test comes from the environment, so that ``manage.py`` subprocesses
started by a test see the same topic, index and database as the test:

* ``TEST_POSTGRES_URL``, ``TEST_KAFKA_BOOTSTRAP``, ``TEST_ELASTICSEARCH_URL``: the services;
* ``PTDJ_DB_NAME``: the database to use (the per-session test database); in the pytest process
  pytest-django creates ``PTDJ_TEST_DB_NAME`` (unique per session) and drops it afterwards;
* ``PTDJ_TOPIC``, ``PTDJ_ES_INDEX``, ``PTDJ_CHECKPOINT_PREFIX``: per-test Kafka topic, search
  index and checkpoint-id prefix; ``PTDJ_SOURCE_TABLE``: the document table of ``rust-es-pillow``;
* ``RUN_FORM_META_PILLOW``: ``False`` disables the form metadata processor in ``xform-pillow``;
* ``PTDJ_BROKEN_PILLOWTOPS``: adds a malformed ``PILLOWTOPS`` entry.
"""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

_pg = urlsplit(os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))

SECRET_KEY = "pillowtop-rs-django-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "testapp.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "pillowtop_rs.django",
    "testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PTDJ_DB_NAME") or unquote(_pg.path.lstrip("/")) or "postgres",
        "USER": unquote(_pg.username or ""),
        "PASSWORD": unquote(_pg.password or ""),
        "HOST": _pg.hostname or "",
        "PORT": str(_pg.port or ""),
        "TEST": {
            "NAME": os.environ.get("PTDJ_TEST_DB_NAME") or f"test_ptdj_{secrets.token_hex(4)}"
        },
    }
}

KAFKA_BROKERS = [os.environ.get("TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")]
ELASTICSEARCH_URL = os.environ.get("TEST_ELASTICSEARCH_URL", "http://127.0.0.1:9200")

# CommCare's flag: the documented split turns it off in the combined pillow.
RUN_FORM_META_PILLOW = os.environ.get("RUN_FORM_META_PILLOW", "True") != "False"
PTOP_CHECKPOINT_DELAY_OVERRIDE = None

TESTAPP = {
    "TOPIC": os.environ.get("PTDJ_TOPIC", "form-sql"),
    "ES_INDEX": os.environ.get("PTDJ_ES_INDEX", "xforms_2016-07-07"),
    "USERS_INDEX": "hqusers_2017-09-07",
    "CHECKPOINT_PREFIX": os.environ.get("PTDJ_CHECKPOINT_PREFIX", ""),
    # The document table of ``rust-es-pillow`` (``ptop_reindexer_v2``'s tests).
    "SOURCE_TABLE": os.environ.get("PTDJ_SOURCE_TABLE", "forms"),
}

PILLOWTOPS: dict[str, list[Any]] = {
    "core": [
        {
            "name": "xform-pillow",
            "class": "pillowtop_rs.Pillow",
            "instance": "testapp.pillows.get_xform_pillow",
            "params": {"ucr_division": "0f"},
        },
        {
            "name": "FormSubmissionMetadataTrackerPillow",
            "class": "pillowtop_rs.Pillow",
            "instance": "testapp.pillows.get_form_submission_metadata_tracker_pillow",
        },
    ],
    "test": [
        {
            "name": "failing-pillow",
            "class": "pillowtop_rs.Pillow",
            "instance": "testapp.pillows.get_failing_pillow",
        },
        {
            "name": "model-store-pillow",
            "class": "pillowtop_rs.Pillow",
            "instance": "testapp.pillows.get_model_store_pillow",
        },
        {
            "name": "rust-es-pillow",
            "class": "pillowtop_rs.Pillow",
            "instance": "testapp.pillows.get_rust_es_pillow",
        },
    ],
}
if os.environ.get("PTDJ_RETRY_QUEUE_ENABLED") == "0":
    PILLOW_RETRY_QUEUE_ENABLED = False
if os.environ.get("PTDJ_BROKEN_PILLOWTOPS"):
    PILLOWTOPS["test"].append({"name": "broken-pillow", "instance": "testapp.pillows.nothing"})

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
