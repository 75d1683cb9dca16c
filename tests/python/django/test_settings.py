"""pillowtop_rs.django.settings: connection settings derived from Django's."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from pillowtop_rs.django import settings as pt_settings
from psycopg.conninfo import conninfo_to_dict

PG = "django.db.backends.postgresql"


def test_database_url_quotes_every_component() -> None:
    url = pt_settings.database_url(
        {
            "ENGINE": PG,
            "NAME": "my db/x",
            "USER": "us@er",
            "PASSWORD": "p:w/ d%?#",
            "HOST": "db.example",
            "PORT": 5433,
            "OPTIONS": {"sslmode": "require", "application_name": "pillow top"},
        }
    )
    assert conninfo_to_dict(url) == {
        "dbname": "my db/x",
        "user": "us@er",
        "password": "p:w/ d%?#",
        "host": "db.example",
        "port": "5433",
        "sslmode": "require",
        "application_name": "pillow top",
    }


def test_database_url_unix_socket_and_ipv6() -> None:
    socket = pt_settings.database_url({"ENGINE": PG, "NAME": "hq", "HOST": "/var/run/postgresql"})
    assert conninfo_to_dict(socket) == {"dbname": "hq", "host": "/var/run/postgresql"}
    v6 = pt_settings.database_url({"ENGINE": PG, "NAME": "hq", "HOST": "::1", "PORT": "5432"})
    assert v6 == "postgresql://[::1]:5432/hq"


def test_database_url_rejects_other_engines() -> None:
    with pytest.raises(ImproperlyConfigured, match="pillowtop needs PostgreSQL"):
        pt_settings.database_url({"ENGINE": "django.db.backends.sqlite3", "NAME": "x"})


def test_postgres_url_from_databases_or_explicit() -> None:
    assert conninfo_to_dict(pt_settings.postgres_url())["dbname"]
    with override_settings(PILLOWTOP_RS={"POSTGRES_URL": "postgresql://h/x"}):
        assert pt_settings.postgres_url() == "postgresql://h/x"
    with override_settings(PILLOWTOP_RS={"DATABASE": "other"}):
        with pytest.raises(ImproperlyConfigured, match="'other', which is not in DATABASES"):
            pt_settings.postgres_url()


def test_kafka_bootstrap_falls_back_to_kafka_brokers() -> None:
    with override_settings(KAFKA_BROKERS=["k1:9092", "k2:9092"], PILLOWTOP_RS={}):
        assert pt_settings.kafka_bootstrap() == "k1:9092,k2:9092"
    with override_settings(KAFKA_BROKERS=["k1:9092"], PILLOWTOP_RS={"KAFKA_BOOTSTRAP": "x:1"}):
        assert pt_settings.kafka_bootstrap() == "x:1"
    with override_settings(KAFKA_BROKERS=None, PILLOWTOP_RS={}):
        with pytest.raises(ImproperlyConfigured, match="no Kafka address"):
            pt_settings.kafka_bootstrap()


def test_unknown_pillowtop_rs_keys_are_an_error() -> None:
    with override_settings(PILLOWTOP_RS={"KAFKA": "x"}):
        with pytest.raises(ImproperlyConfigured, match="unknown key\\(s\\) \\['KAFKA'\\]"):
            pt_settings.kafka_bootstrap()


def test_checkpoint_delay_override_even_when_none() -> None:
    with override_settings(PTOP_CHECKPOINT_DELAY_OVERRIDE=None):
        assert pt_settings.checkpoint_delay() is None
    with override_settings(PTOP_CHECKPOINT_DELAY_OVERRIDE=5):
        assert pt_settings.checkpoint_delay() == 5.0
