"""Models, the create-if-missing migration and the admin over CommCare's tables."""

from __future__ import annotations

import importlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from pillowtop_rs.django.models import PillowError

SCHEMA_RS = Path(__file__).resolve().parents[3] / "src" / "store" / "schema.rs"
migration = importlib.import_module("pillowtop_rs.django.migrations.0001_initial")


def squash(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def test_migration_ddl_is_the_rust_schema_ddl() -> None:
    rust = squash(SCHEMA_RS.read_text())
    for statement in migration.SCHEMA_STATEMENTS:
        assert squash(statement) in rust, statement[:80]


def columns(table: str) -> list[tuple[str, str, str]]:
    with connection.cursor() as c:
        c.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            [table],
        )
        return [tuple(r) for r in c.fetchall()]


def constraints(table: str) -> set[str]:
    with connection.cursor() as c:
        c.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'u'",
            [table],
        )
        return {r[0] for r in c.fetchall()}


@pytest.mark.django_db
def test_tables_have_commcare_columns_and_constraints() -> None:
    ts = "timestamp with time zone"
    assert columns("pillowtop_kafkacheckpoint") == [
        ("id", "integer", "NO"),
        ("checkpoint_id", "character varying", "NO"),
        ("topic", "character varying", "NO"),
        ("partition", "integer", "NO"),
        ("offset", "bigint", "NO"),
        ("doc_modification_time", ts, "YES"),
        ("last_modified", ts, "NO"),
    ]
    assert constraints("pillowtop_kafkacheckpoint") == {
        "pillowtop_kafkacheckpoint_checkpoint_id_topic_partition_uniq"
    }
    assert [c[0] for c in columns("pillowtop_djangopillowcheckpoint")] == [
        "checkpoint_id",
        "sequence",
        "timestamp",
        "old_sequence",
        "sequence_format",
    ]
    assert [c[:2] for c in columns("pillow_retry_pillowerror")][-2:] == [
        ("change", "jsonb"),
        ("change_metadata", "jsonb"),
    ]
    assert constraints("pillow_retry_pillowerror") == {
        "pillow_retry_pillowerror_doc_id_pillow_uniq"
    }


@pytest.mark.django_db
def test_migration_sql_leaves_existing_tables_alone() -> None:
    PillowError.objects.create(
        doc_id="d", pillow="p", date_created=timezone.now(), date_last_attempt=timezone.now()
    )
    with connection.cursor() as c:  # a database where the tables exist already (CommCare's)
        for statement in migration.SCHEMA_STATEMENTS:
            c.execute(statement)
    assert PillowError.objects.filter(doc_id="d").count() == 1


def error(doc_id: str, **kw: Any) -> PillowError:
    now = timezone.now()
    fields: dict[str, Any] = {
        "pillow": "xform-pillow",
        "date_created": now,
        "date_last_attempt": now,
        "date_next_attempt": now - timedelta(seconds=1),
    }
    fields.update(kw)
    return PillowError.objects.create(doc_id=doc_id, **fields)


@pytest.mark.django_db
def test_due_selection_matches_commcare() -> None:
    later = timezone.now() + timedelta(hours=1)
    error("fresh", current_attempt=0, total_attempts=20)  # reset by an admin: due
    error("second", current_attempt=2, total_attempts=2)
    error("third", current_attempt=3, total_attempts=9)
    error("parked", current_attempt=4, total_attempts=4, date_next_attempt=None)
    error("over-cutoff", current_attempt=1, total_attempts=10)
    error("not-yet", current_attempt=1, total_attempts=1, date_next_attempt=later)
    error("excluded", pillow="kafka-ucr-main", current_attempt=1, total_attempts=1)
    due = PillowError.objects.due(excluded_pillows=("kafka-ucr-main",))
    assert sorted(e.doc_id for e in due) == ["fresh", "second", "third"]


@pytest.mark.django_db
def test_add_attempt_backoff_5_20_45_then_parked() -> None:
    e = error("x")
    delays = []
    for _ in range(4):
        e.add_attempt("builtins.ValueError", "tb")
        nxt = e.date_next_attempt
        delays.append(None if nxt is None else round((nxt - e.date_last_attempt).seconds / 60))
    assert delays == [5, 20, 45, None]
    assert (e.current_attempt, e.total_attempts) == (4, 4)


@pytest.mark.django_db
def test_admin_reset_attempts(admin_client: Client) -> None:
    parked = error("parked", current_attempt=4, total_attempts=4, date_next_attempt=None)
    url = "/admin/pillowtop_rs/pillowerror/"
    page = admin_client.get(url, {"q": "parked"})
    assert page.status_code == 200
    assert b"parked" in page.content
    assert admin_client.get(url, {"pillow": "xform-pillow"}).status_code == 200
    response = admin_client.post(url, {"action": "reset_attempts", "_selected_action": [parked.pk]})
    assert response.status_code == 302
    parked.refresh_from_db()
    assert parked.current_attempt == 0
    assert parked.date_next_attempt is not None
    assert parked.date_next_attempt <= timezone.now()
    assert [e.doc_id for e in PillowError.objects.due()] == ["parked"]
