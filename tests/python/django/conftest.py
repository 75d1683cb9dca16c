"""The Django test project: Django is configured when this directory is collected.

pytest-django creates the test database (``PTDJ_TEST_DB_NAME``, unique per session) on the
``TEST_POSTGRES_URL`` server and drops it at the end; tests that run ``manage.py`` subprocesses
use ``transaction=True`` so both sides see committed rows, and pass the database name on with
``PTDJ_DB_NAME``. Per-test resources (topic, search index, checkpoint prefix) are unique and
deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
os.environ.setdefault("PTDJ_TEST_DB_NAME", f"test_ptdj_{secrets.token_hex(4)}")

import django  # noqa: E402

django.setup()

from support import Project  # noqa: E402

NATIVE_API = ("Pillow", "PillowProcessor", "BulkPillowProcessor", "request_shutdown", "run_cli")


@pytest.fixture
def native() -> None:
    """Fail (never skip) when the installed wheel lacks the native Pillow API."""
    import pillowtop_rs

    missing = [n for n in NATIVE_API if not hasattr(pillowtop_rs, n)]
    if missing:
        pytest.fail(
            f"the installed pillowtop_rs lacks {missing}: build and install a wheel with the "
            f"native Pillow API",
            pytrace=False,
        )


@pytest.fixture
def project(
    kafka_bootstrap: str,
    postgres_url: str,
    elasticsearch_url: str,
    unique_name: str,
    django_db_setup: None,
    django_db_blocker: Any,
) -> Iterator[Project]:
    """A unique topic (2 partitions), search index and checkpoint prefix; deleted afterwards."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic
    from django.db import connection

    topic = unique_name
    # A short index name and checkpoint prefix: CommCare's checkpoint ids embed the index name,
    # and checkpoint ids are limited to 126 characters.
    short = f"t{secrets.token_hex(5)}"
    index = short
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "settings",
            "PTDJ_DB_NAME": str(connection.settings_dict["NAME"]),
            "PTDJ_TOPIC": topic,
            "PTDJ_ES_INDEX": index,
            "PTDJ_CHECKPOINT_PREFIX": f"{short}-",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
    )
    try:
        yield Project(env, topic, index, f"{short}-")
    finally:
        admin.delete_topics([topic])[topic].result(30)
        try:
            from elasticsearch import Elasticsearch

            Elasticsearch(elasticsearch_url).indices.delete(index=index, ignore_unavailable=True)
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass
