"""CommCare's remaining management commands with ``call_command`` against the real services:
the checkpoint fixes (after a rewind, from a date, from a file), the topic commands, and the
Kafka inspection commands (``tail_kafka`` with ``--limit`` and Ctrl-C in a ``manage.py``
subprocess, ``search_kafka_changes``, ``ptop_dump_remaining_changes``). Every write command is run
dry, declined and applied.

History rows are written directly (dated 1990, deleted afterwards); the project fixture's topic
and checkpoint prefix are unique and removed after each test.
"""

from __future__ import annotations

import gzip
import json
import signal
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from pillowtop_rs.django.models import KafkaCheckpoint
from support import Project

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

XFORM = "xform-pillow"
META = "FormSubmissionMetadataTrackerPillow"


@pytest.fixture
def app(project: Project, settings: Any) -> Iterator[Project]:
    """The test app's pillows read the project's topic under its checkpoint prefix."""
    from pillowtop_rs import run_cli
    from pillowtop_rs.django import cli

    assert run_cli(["schema", "--postgres-url", cli.postgres_url()]) == 0
    settings.TESTAPP = {
        **settings.TESTAPP,
        "TOPIC": project.topic,
        "ES_INDEX": project.index,
        "CHECKPOINT_PREFIX": project.prefix,
    }
    yield project
    KafkaCheckpoint.objects.filter(checkpoint_id__startswith=project.prefix).delete()
    with connection.cursor() as c:
        c.execute(
            "DELETE FROM pillowtop_rs_checkpoint_history WHERE checkpoint_id LIKE %s",
            [project.prefix + "%"],
        )


def checkpoint_id(name: str) -> str:
    from pillowtop_rs import registry

    return str(registry.get_pillow_by_name(name).checkpoint_id)


def put(checkpoint: str, topic: str, offsets: dict[int, int]) -> None:
    for partition, offset in offsets.items():
        KafkaCheckpoint.objects.update_or_create(
            checkpoint_id=checkpoint, topic=topic, partition=partition, defaults={"offset": offset}
        )


def offsets(checkpoint: str) -> dict[int, int]:
    return {r.partition: r.offset for r in KafkaCheckpoint.objects.filter(checkpoint_id=checkpoint)}


def history(checkpoint: str, topic: str, day: str, by_partition: dict[int, int]) -> None:
    with connection.cursor() as c:
        for partition, offset in by_partition.items():
            c.execute(
                "INSERT INTO pillowtop_rs_checkpoint_history"
                ' (date_updated, checkpoint_id, topic, "partition", "offset", recorded_at)'
                " VALUES (%s, %s, %s, %s, %s, now())",
                [day, checkpoint, topic, partition, offset],
            )


def answers(monkeypatch: pytest.MonkeyPatch, *replies: str) -> list[str]:
    """Answer ``input()`` with ``replies`` in turn; returns the prompts it was given."""
    asked: list[str] = []
    queue = list(replies)

    def fake_input(prompt: str = "") -> str:
        asked.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    monkeypatch.setattr("builtins.input", fake_input)
    return asked


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_fix_checkpoint_after_rewind(app: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = checkpoint_id(XFORM)
    history(cp, app.topic, "1990-01-01", {0: 40, 1: 70})
    history(cp, app.topic, "1990-01-02", {0: 50, 1: 60})
    history(cp, app.topic, "1990-01-03", {0: 10, 1: 90})
    put(cp, app.topic, {0: 10, 1: 90})

    out, _ = run("fix_checkpoint_after_rewind", XFORM, "--dry-run")
    assert "the historical maximum: the snapshot of 1990-01-02" in out
    assert "dry run: nothing was written" in out
    assert offsets(cp) == {0: 10, 1: 90}

    asked = answers(monkeypatch, "y", "no")
    with pytest.raises(CommandError) as e:
        run("fix_checkpoint_after_rewind", XFORM)
    assert e.value.returncode == 1
    assert offsets(cp) == {0: 10, 1: 90}, "declined: nothing written"
    assert len(asked) == 2

    answers(monkeypatch, "yes", "y")
    out, _ = run("fix_checkpoint_after_rewind", XFORM)
    assert (
        f"Are you sure you want to reset the checkpoint for the '{cp}' pillow? "
        "Type ['y', 'yes'] to continue." in out
    )
    assert offsets(cp) == {0: 50, 1: 60}
    run("fix_checkpoint_after_rewind", XFORM, "--by-partition", "--noinput")
    assert offsets(cp) == {0: 50, 1: 90}

    with pytest.raises(CommandError) as e:
        run("fix_checkpoint_after_rewind", META, "--noinput")
    assert e.value.returncode == 4
    assert "cannot be fixed from its history" in str(e.value)


def test_fix_checkpoints_from_date_matches_pillows_by_regex(
    app: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    xform, meta = checkpoint_id(XFORM), checkpoint_id(META)
    history(xform, app.topic, "1990-01-01", {0: 5, 1: 6})
    history(meta, app.topic, "1990-01-01", {0: 7, 1: 8})
    put(xform, app.topic, {0: 50, 1: 60})
    put(meta, app.topic, {0: 70, 1: 80})

    out, err = run(
        "fix_checkpoints_from_date", "1990-01-02", "--pillows", "^xform", "--dry-run", "--json"
    )
    plan = json.loads(out)
    assert [p["checkpoint_id"] for p in plan] == [xform], "only the matching pillow"
    answers(monkeypatch, "n")
    with pytest.raises(CommandError) as e:
        run("fix_checkpoints_from_date", "1990-01-02", "--pillows", "^xform")
    assert e.value.returncode == 1
    assert offsets(xform) == {0: 50, 1: 60}
    answers(monkeypatch, "y")
    run("fix_checkpoints_from_date", "1990-01-02", "--pillows", "^xform", "Tracker")
    assert (offsets(xform), offsets(meta)) == ({0: 5, 1: 6}, {0: 7, 1: 8})
    with pytest.raises(CommandError):
        run("fix_checkpoints_from_date", "1990-01-02", "--pillows", "^nomatch")


def test_fix_checkpoints_from_file_maps_pillow_names(
    app: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    xform = checkpoint_id(XFORM)
    put(xform, app.topic, {0: 1, 1: 2})
    f = tmp_path / "checkpoints.json"
    f.write_text(json.dumps({XFORM: {f"{app.topic},0": 11, f"{app.topic},1": 12}}))
    out, _ = run("fix_checkpoints_from_file", str(f), "--dry-run")
    assert f"set checkpoint {xform} from the given offsets" in out
    answers(monkeypatch, "nope")
    with pytest.raises(CommandError) as e:
        run("fix_checkpoints_from_file", str(f))
    assert e.value.returncode == 1
    assert offsets(xform) == {0: 1, 1: 2}
    answers(monkeypatch, "yes")
    run("fix_checkpoints_from_file", str(f))
    assert offsets(xform) == {0: 11, 1: 12}
    f.write_text(json.dumps({"no-such-pillow": {}}))
    with pytest.raises(CommandError):
        run("fix_checkpoints_from_file", str(f), "--noinput")


def test_create_and_list_kafka_topics(
    app: Project, monkeypatch: pytest.MonkeyPatch, unique_name: str
) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": app.env["TEST_KAFKA_BOOTSTRAP"]})
    new = f"{unique_name}_new"

    def exists(topic: str) -> bool:
        return topic in admin.list_topics(timeout=10).topics

    out, _ = run("list_kafka_topics", "--json")
    assert json.loads(out) == [{"topic": app.topic, "partitions": 2}], "the configured topics"
    out, _ = run("create_kafka_topics")
    assert "nothing to do: every topic exists" in out
    try:
        out, _ = run(
            "create_kafka_topics", "--topics", app.topic, new, "--partitions", "3", "--dry-run"
        )
        assert f"create topic {new} with 3 partitions" in out
        assert not exists(new)
        answers(monkeypatch, "n")
        with pytest.raises(CommandError) as e:
            run("create_kafka_topics", "--topics", new)
        assert e.value.returncode == 1
        assert not exists(new)
        run("create_kafka_topics", "--topics", app.topic, new, "--partitions", "3", "--noinput")
        assert exists(new)
        assert len(admin.list_topics(timeout=10).topics[new].partitions) == 3
        out, _ = run("list_kafka_topics", "--all")
        assert new in out
    finally:
        if exists(new):
            admin.delete_topics([new])[new].result(30)


def test_search_kafka_changes_and_dump_remaining_changes(app: Project, tmp_path: Path) -> None:
    app.produce([f"doc-{i}" for i in range(12)])
    out, err = run("search_kafka_changes", "--topic", app.topic, "--doc-ids", "doc-3,doc-7")
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ["doc-3", "doc-7"]
    assert "12 messages read, 2 changes printed" in err
    out, err = run("search_kafka_changes", "--topic", app.topic, "--limit", "5")
    assert len(out.splitlines()) == 5
    assert "limit reached" in err

    xform = checkpoint_id(XFORM)
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": app.env["TEST_KAFKA_BOOTSTRAP"], "group.id": "x"})
    highs = [c.get_watermark_offsets(TopicPartition(app.topic, p), timeout=10)[1] for p in (0, 1)]
    c.close()
    put(xform, app.topic, {0: 1, 1: 0})
    target = tmp_path / "remaining.gz"
    _, err = run("ptop_dump_remaining_changes", "-p", XFORM, "--output", str(target))
    remaining = highs[0] - 1 + highs[1]
    assert f"{remaining} remaining changes on 2 partitions" in err
    with gzip.open(target, "rt") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == remaining == 11
    assert {"id", "seq", "deleted", "metadata"} <= set(lines[0])
    with pytest.raises(CommandError) as e:
        run("ptop_dump_remaining_changes", "-p", META, "--output", "-")
    assert e.value.returncode == 4, "no checkpoint rows"


def test_tail_kafka_limit_in_process_and_ctrl_c_in_manage_py(app: Project) -> None:
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.is_set():
            app.produce([f"tail-{i}"])
            i += 1
            time.sleep(0.2)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        out, err = run("tail_kafka", "--topics", app.topic, "--limit", "2")
        assert len(out.splitlines()) == 2
        assert all(json.loads(line)["id"].startswith("tail-") for line in out.splitlines())
        assert "tail-kafka: limit reached" in err

        p = app.start("tail_kafka", "--topics", app.topic)
        assert p.stdout is not None
        first = p.stdout.readline()
        assert json.loads(first)["id"].startswith("tail-"), first
        p.send_signal(signal.SIGINT)
        _, rest = p.communicate(timeout=20)
        code = p.returncode
        assert code == 0, rest
        assert "tail-kafka: interrupted:" in rest, rest
        assert "Traceback" not in rest, rest
    finally:
        stop.set()
        t.join(10)


def test_ptop_reindexer_v2_rebuilds_the_index_behind_its_alias_and_again_from_the_new_one(
    app: Project, settings: Any
) -> None:
    """A new index filled from the source table, verified, behind the alias; the old deleted
    (``--keep-old 0``); a second run rebuilds from the index the first one made."""
    from elasticsearch import Elasticsearch

    table = f"src_{app.index}"
    settings.TESTAPP = {**settings.TESTAPP, "SOURCE_TABLE": table}
    es = Elasticsearch(settings.ELASTICSEARCH_URL)
    alias, v1, v2, v3 = app.index, f"{app.index}_v1", f"{app.index}_v2", f"{app.index}_v3"
    with connection.cursor() as c:
        c.execute(f"CREATE TABLE {table} (doc_id text PRIMARY KEY, doc jsonb NOT NULL)")
        c.execute(
            f"INSERT INTO {table} SELECT 'f' || i, jsonb_build_object('_id', 'f' || i, "
            f"'doc_type', 'XFormInstance', 'domain', 'd' || (i % 2), 'n', i) "
            f"FROM generate_series(1, 120) i"
        )
    es.indices.create(index=v1, aliases={alias: {}})
    es.index(index=v1, id="stale", document={"domain": "d0"}, refresh=True)
    try:
        out = StringIO()
        call_command(
            "ptop_reindexer_v2",
            "rust-es-pillow",
            "--source-table",
            table,
            "--id-column",
            "doc_id",
            "--doc-column",
            "doc",
            "--chunksize",
            "25",
            "--keep-old",
            "0",
            "--new-index",
            v2,
            "--noinput",
            stdout=out,
            stderr=out,
        )
        text = out.getvalue()
        assert "step done" in text, text
        assert list(es.indices.get_alias(name=alias)) == [v2]
        es.indices.refresh(index=v2)
        assert es.count(index=alias)["count"] == 120, text
        doc = es.get(index=alias, id="f7")["_source"]
        assert doc == {"doc_type": "XFormInstance", "domain": "d1", "n": 7}
        assert not es.indices.exists(index=v1), "the old index is deleted after --keep-old 0"
        assert not es.exists(index=alias, id="stale"), "a document not in the source is gone"

        call_command(
            "ptop_reindexer_v2", "rust-es-pillow", "--source-table", table, "--id-column",
            "doc_id", "--doc-column", "doc", "--keep-old", "0", "--new-index", v3, "--noinput",
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
        assert list(es.indices.get_alias(name=alias)) == [v3]
        status = StringIO()
        call_command("ptop_reindexer_v2", "rust-es-pillow", "--status", stdout=status)
        lines = status.getvalue()
        assert lines.count("done") >= 2 and v2 in lines and v3 in lines, lines
    finally:
        es.indices.delete(index=f"{app.index}_v*", ignore_unavailable=True)
        with connection.cursor() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
            c.execute("DELETE FROM pillowtop_rs_reindex WHERE pillow = 'rust-es-pillow'")


def test_ptop_reindexer_v2_copies_a_django_models_rows_as_documents(
    app: Project, settings: Any
) -> None:
    """``--model``: each row's fields are the document, as ``ModelDocumentStore`` reads them."""
    import datetime

    from elasticsearch import Elasticsearch
    from testapp.models import FormDocument

    es = Elasticsearch(settings.ELASTICSEARCH_URL)
    alias, v1, v2 = app.index, f"{app.index}_v1", f"{app.index}_v2"
    when = datetime.datetime(2026, 11, 30, 8, 15, tzinfo=datetime.timezone.utc)
    FormDocument.objects.bulk_create(
        FormDocument(form_id=f"m{i}", domain="dm", xmlns="x", received_on=when) for i in range(30)
    )
    es.indices.create(index=v1, aliases={alias: {}})
    try:
        out = StringIO()
        call_command(
            "ptop_reindexer_v2", "rust-es-pillow", "--model", "testapp.FormDocument",
            "--keep-old", "0", "--new-index", v2, "--noinput", stdout=out, stderr=out,
        )  # fmt: skip
        assert "step done" in out.getvalue(), out.getvalue()
        es.indices.refresh(index=alias)
        assert es.count(index=alias)["count"] == 30
        doc = es.get(index=alias, id="m3")["_source"]
        assert doc == {
            "form_id": "m3",
            "domain": "dm",
            "xmlns": "x",
            "received_on": "2026-11-30T08:15:00+00:00",
        }, doc
    finally:
        FormDocument.objects.filter(form_id__startswith="m").delete()
        es.indices.delete(index=f"{app.index}_v*", ignore_unavailable=True)
        with connection.cursor() as c:
            c.execute("DELETE FROM pillowtop_rs_reindex WHERE pillow = 'rust-es-pillow'")
