"""``run_ptop`` through ``call_command`` with a processor written as CommCare writes them (a plain
class, no pillowtop_rs base) reading its documents from a Django model store
(``pillowtop_rs.django.stores.ModelDocumentStore``), against the real broker and database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from pillowtop_rs.django.models import KafkaCheckpoint, PillowError
from support import Project

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture
def app(project: Project, settings: Any) -> Iterator[Project]:
    settings.TESTAPP = {
        **settings.TESTAPP,
        "TOPIC": project.topic,
        "ES_INDEX": project.index,
        "CHECKPOINT_PREFIX": project.prefix,
    }
    yield project
    KafkaCheckpoint.objects.filter(checkpoint_id__startswith=project.prefix).delete()
    PillowError.objects.filter(pillow="model-store-pillow").delete()


def test_run_ptop_runs_a_commcare_style_processor_on_model_documents(
    app: Project, native: None
) -> None:
    from testapp.models import FormDocument, ProcessedChange

    received = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    for i in range(4):
        FormDocument.objects.create(
            form_id=f"form-{i}", domain=f"domain-{i}", xmlns="x", received_on=received
        )
    app.produce([f"form-{i}" for i in range(4)] + ["form-missing"])
    out = StringIO()
    call_command(
        "run_ptop",
        "--pillow-name",
        "model-store-pillow",
        "--until-idle",
        "--idle-timeout",
        "1",
        stdout=out,
        stderr=StringIO(),
    )
    rows = {r.doc_id: r.domain for r in ProcessedChange.objects.filter(processor="commcare-style")}
    # The domain comes from each model row, not from the change: the document was read.
    assert rows == {f"form-{i}": f"domain-{i}" for i in range(4)}
    (error,) = PillowError.objects.filter(pillow="model-store-pillow")
    assert error.doc_id == "form-missing"
    assert error.error_type == "pillowtop_rs.exceptions.DocumentMissingError"
    cid = f"{app.prefix}model-store-pillow"
    assert sum(r.offset for r in KafkaCheckpoint.objects.filter(checkpoint_id=cid)) == 5


def test_the_admin_status_view_serves_the_page_and_every_pillows_json(
    app: Project, native: None, admin_client: Any
) -> None:
    import json

    app.produce([f"form-{i}" for i in range(3)])
    call_command(
        "run_ptop",
        "--pillow-name",
        "model-store-pillow",
        "--until-idle",
        "--idle-timeout",
        "1",
        stdout=StringIO(),
        stderr=StringIO(),
    )
    page = admin_client.get("/admin/pillowtop/")
    assert page.status_code == 200
    assert b'data-api="/admin/pillowtop/api/pillows"' in page.content
    api = admin_client.get("/admin/pillowtop/api/pillows")
    assert api.status_code == 200
    status = json.loads(api.content)
    cid = f"{app.prefix}model-store-pillow"
    (pillow,) = [p for p in status["pillows"] if p["checkpoint_id"] == cid]
    assert sum(pillow["seq"].values()) == 3
    assert pillow["need_processing"] == 0
    assert pillow["errors"] == {"pillowtop_rs.exceptions.DocumentMissingError": 3}
    for key in ("seq_format", "offsets", "seconds_since_last", "time_since_last"):
        assert key in pillow  # CommCare's get_all_pillows_json fields


def test_the_status_view_is_for_staff_only(client: Any) -> None:
    response = client.get("/admin/pillowtop/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
