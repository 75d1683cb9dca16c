"""The management commands through ``manage.py`` subprocesses, against the real services.

Every test that runs a pillow needs the native ``Pillow`` (the ``native`` fixture fails, never
skips, when the installed wheel lacks it).
"""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone
from pillowtop_rs.django.models import KafkaCheckpoint, PillowError
from support import Project, wait_for
from testapp.models import ProcessedChange

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

IDLE = ("--until-idle", "--idle-timeout", "2")


def seen(processor: str) -> dict[str, int]:
    return dict(ProcessedChange.objects.filter(processor=processor).values_list("doc_id", "times"))


def es_ids(project: Project) -> set[str]:
    from django.conf import settings
    from elasticsearch import Elasticsearch

    es = Elasticsearch(settings.ELASTICSEARCH_URL)
    es.indices.refresh(index=project.index)
    hits = es.search(index=project.index, query={"match_all": {}}, size=10000)
    return {h["_id"] for h in hits["hits"]["hits"]}


def ok(result: subprocess.CompletedProcess[str]) -> None:
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{out}\nstderr:\n{err}"


def test_unknown_pillow_name_fails_before_anything_runs(project: Project) -> None:
    result = project.manage("run_ptop", "--pillow-name", "no-such-pillow")
    assert result.returncode != 0
    assert "No pillow found with name no-such-pillow" in result.stderr
    assert "xform-pillow" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_pillowtops_fails_before_anything_runs(project: Project) -> None:
    result = project.manage(
        "run_ptop", "--pillow-name", "xform-pillow", extra_env={"PTDJ_BROKEN_PILLOWTOPS": "1"}
    )
    assert result.returncode != 0
    assert "PILLOWTOPS section 'test' entry 3" in result.stderr
    assert "no 'class'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not KafkaCheckpoint.objects.exists()


def test_impossible_layouts_are_refused(project: Project) -> None:
    bad = project.manage("run_ptop", "--pillow-name", "xform-pillow", "--process-number", "2")
    assert bad.returncode != 0
    assert "--process-number 2 must be between 0 and --num-processes 1" in bad.stderr
    dedicated = project.manage(
        "run_ptop", "--pillow-name", "xform-pillow", "--dedicated-migration-process"
    )
    assert dedicated.returncode != 0
    assert "needs --num-processes of at least 2" in dedicated.stderr
    key = project.manage("run_ptop", "--pillow-key", "nope")
    assert key.returncode != 0
    assert "legal keys are: ['core', 'test']" in key.stderr


def test_list_and_list_checkpoints(project: Project, native: None) -> None:
    listed = project.manage("run_ptop", "--list")
    ok(listed)
    assert (
        "core: xform-pillow\ncore: FormSubmissionMetadataTrackerPillow\ntest: failing-pillow\n"
        "test: model-store-pillow\ntest: rust-es-pillow" in (listed.stdout)
    )
    checkpoints = project.manage("run_ptop", "--list-checkpoints")
    ok(checkpoints)
    assert checkpoints.stdout.split() == [
        project.checkpoint_id("xform-pillow-" + project.index + "-hqusers_2017-09-07"),
        project.checkpoint_id("form-submission-metadata-tracker"),
        project.checkpoint_id("failing-pillow"),
        project.checkpoint_id("model-store-pillow"),
        project.checkpoint_id("rust-es-pillow"),
    ]


def test_split_procedure_end_to_end(project: Project, native: None) -> None:
    """CommCare's documented split of the form metadata processor out of xform-pillow."""
    batch_a = [f"a-{i}" for i in range(40)]
    batch_b = [f"b-{i}" for i in range(40)]
    batch_c = [f"c-{i}" for i in range(40)]
    batch_d = [f"d-{i}" for i in range(40)]
    project.produce(batch_a)
    ok(project.manage("run_ptop", "--pillow-name", "xform-pillow", *IDLE))
    assert set(seen("form-meta")) == set(batch_a)

    # Stopped: changes keep arriving; the split must carry them to the new pillow.
    project.produce(batch_b)
    split = project.manage(
        "split_pillow_checkpoints",
        "xform-pillow",
        "FormSubmissionMetadataTrackerPillow",
        "--noinput",
    )
    ok(split)
    xform_id = project.checkpoint_id(f"xform-pillow-{project.index}-hqusers_2017-09-07")
    meta_id = project.checkpoint_id("form-submission-metadata-tracker")
    offsets = {
        cid: dict(
            KafkaCheckpoint.objects.filter(checkpoint_id=cid).values_list("partition", "offset")
        )
        for cid in (xform_id, meta_id)
    }
    assert offsets[meta_id] == offsets[xform_id]
    assert sum(offsets[xform_id].values()) == len(batch_a)

    # RUN_FORM_META_PILLOW = False; start both, keep producing.
    project.produce(batch_c)
    env = {"RUN_FORM_META_PILLOW": "False"}
    xform = project.start("run_ptop", "--pillow-name", "xform-pillow", *IDLE, extra_env=env)
    meta = project.start(
        "run_ptop", "--pillow-name", "FormSubmissionMetadataTrackerPillow", *IDLE, extra_env=env
    )
    project.produce(batch_d)
    for proc in (xform, meta):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    # Anything produced after an until-idle stop is picked up by the next run.
    ok(
        project.manage(
            "run_ptop", "--pillow-name", "FormSubmissionMetadataTrackerPillow", *IDLE, extra_env=env
        )
    )
    ok(project.manage("run_ptop", "--pillow-name", "xform-pillow", *IDLE, extra_env=env))

    everything = set(batch_a + batch_b + batch_c + batch_d)
    assert set(seen("xform-sql")) == everything, "SQL processor missed changes"
    assert es_ids(project) == everything, "search index missed changes"
    meta_seen = seen("form-meta")
    assert set(meta_seen) == everything, "form metadata processor missed changes"
    # The split copied the checkpoint: the new pillow did not replay batch A from the start.
    assert {meta_seen[d] for d in batch_a} == {1}
    assert not PillowError.objects.exists()


def test_sigterm_stops_with_a_final_checkpoint(project: Project, native: None) -> None:
    docs = [f"t-{i}" for i in range(3000)]
    project.produce(docs)
    proc = project.start(
        "run_ptop", "--pillow-name", "failing-pillow", "--processor-chunk-size", "10"
    )
    wait_for(lambda: ProcessedChange.objects.filter(processor="failing").exists(), what="progress")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "(shutdown)" in out
    processed = ProcessedChange.objects.filter(processor="failing").count()
    checkpointed = KafkaCheckpoint.objects.filter(
        checkpoint_id=project.checkpoint_id("failing-pillow")
    ).aggregate(total=Sum("offset"))["total"]
    # The final checkpoint covers exactly the changes processed (each once, by unique id).
    assert checkpointed == processed
    assert 0 < processed <= len(docs)


def test_processor_error_is_recorded_with_traceback_and_retried(
    project: Project, native: None
) -> None:
    project.produce(["ok-1", "fail-1", "ok-2"])
    ok(project.manage("run_ptop", "--pillow-name", "failing-pillow", *IDLE))
    assert set(seen("failing")) == {"ok-1", "ok-2"}
    (row,) = PillowError.objects.all()
    assert (row.doc_id, row.pillow) == ("fail-1", "failing-pillow")
    assert row.error_type == "builtins.ValueError"
    assert row.error_traceback is not None
    assert "Traceback" in row.error_traceback
    assert "in process_change" in row.error_traceback
    assert "cannot process fail-1" in row.error_traceback
    assert (row.current_attempt, row.total_attempts) == (1, 1)
    assert row.date_next_attempt is not None

    # Not due yet: the queue leaves it alone.
    dry = project.manage("run_pillow_retry_queue", "--dry-run")
    ok(dry)
    assert "would re-publish" not in dry.stdout

    PillowError.objects.update(date_next_attempt=timezone.now() - timedelta(seconds=1))
    dry = project.manage("run_pillow_retry_queue", "--dry-run")
    ok(dry)
    assert (
        f"would re-publish fail-1 (pillow failing-pillow) to {project.topic} with attempts=1"
        in (dry.stdout)
    )
    assert PillowError.objects.count() == 1

    ok(project.manage("run_pillow_retry_queue", "--once"))
    assert not PillowError.objects.exists()
    message = last_message(project)
    assert message["document_id"] == "fail-1"
    assert message["attempts"] == 1

    # The pillow sees the re-published change, fails again: attempts carried (1 + 1).
    ok(project.manage("run_ptop", "--pillow-name", "failing-pillow", *IDLE))
    (row,) = PillowError.objects.all()
    assert row.current_attempt == 2


def test_send_pillow_retry_queue_through_pillows_republishes_every_row_now(
    project: Project, native: None
) -> None:
    project.produce(["ok-1", "fail-1", "fail-2"])
    ok(project.manage("run_ptop", "--pillow-name", "failing-pillow", *IDLE))
    assert sorted(PillowError.objects.values_list("doc_id", flat=True)) == ["fail-1", "fail-2"]
    # Not due (5 minutes away), but this command sends them all, after a plan and a question.
    dry = project.manage("send_pillow_retry_queue_through_pillows", "failing-pillow", "--dry-run")
    ok(dry)
    assert "2 error rows of pillow failing-pillow would be re-published" in dry.stdout
    assert PillowError.objects.count() == 2
    declined = project.manage("send_pillow_retry_queue_through_pillows", "failing-pillow")
    assert declined.returncode == 1, declined.stderr  # stdin is empty: not a yes
    assert PillowError.objects.count() == 2
    unknown = project.manage("send_pillow_retry_queue_through_pillows", "no-such-pillow")
    assert unknown.returncode == 4 and "no-such-pillow" in unknown.stderr
    sent = project.manage(
        "send_pillow_retry_queue_through_pillows", "failing-pillow", "--noinput", "--json"
    )
    ok(sent)
    outcome = json.loads(sent.stdout.strip().splitlines()[-1])
    assert (outcome["selected"], sorted(outcome["published"]), outcome["failed"]) == (
        2,
        ["fail-1", "fail-2"],
        [],
    )
    assert not PillowError.objects.exists()
    assert last_message(project)["document_id"] in ("fail-1", "fail-2")


def test_the_retry_queue_honours_pillow_retry_queue_enabled(project: Project, native: None) -> None:
    project.produce(["fail-1"])
    ok(project.manage("run_ptop", "--pillow-name", "failing-pillow", *IDLE))
    PillowError.objects.update(date_next_attempt=timezone.now() - timedelta(seconds=1))
    off = project.manage(
        "run_pillow_retry_queue", "--once", extra_env={"PTDJ_RETRY_QUEUE_ENABLED": "0"}
    )
    ok(off)
    assert "PILLOW_RETRY_QUEUE_ENABLED is False" in off.stdout
    assert PillowError.objects.count() == 1
    ok(project.manage("run_pillow_retry_queue", "--once"))
    assert not PillowError.objects.exists()


def last_message(project: Project) -> dict[str, object]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": project.env["TEST_KAFKA_BOOTSTRAP"], "group.id": "unused"}
    )
    try:
        newest: tuple[int, dict[str, object]] | None = None
        for partition in (0, 1):
            low, high = consumer.get_watermark_offsets(TopicPartition(project.topic, partition))
            if high == low:
                continue
            consumer.assign([TopicPartition(project.topic, partition, high - 1)])
            msg = consumer.poll(10)
            assert msg is not None and msg.error() is None
            value = msg.value()
            assert value is not None
            body = json.loads(value)
            stamp = msg.timestamp()[1]
            if newest is None or stamp > newest[0]:
                newest = (stamp, body)
        assert newest is not None
        return newest[1]
    finally:
        consumer.close()


def test_checkpoint_commands_exit_statuses(project: Project, native: None) -> None:
    project.produce(["x-1"])
    ok(project.manage("run_ptop", "--pillow-name", "xform-pillow", *IDLE))
    lag = project.manage("pillow_lag", "xform-pillow")
    ok(lag)
    assert project.checkpoint_id("xform-pillow") in lag.stdout
    # The doctor: caught up is exit 0; a backlog nobody reads is a finding (exit 6) that says
    # no process is alive.
    doctor = project.manage("pillow_doctor", "xform-pillow", "--interval", "0.5", "--json")
    ok(doctor)
    [found] = json.loads(doctor.stdout)
    assert (found["pillow_name"], found["verdict"], found["backlog"]) == (
        "xform-pillow",
        "keeping_up",
        0,
    ), found
    project.produce(["x-2"])
    behind = project.manage("pillow_doctor", "xform-pillow", "--interval", "0.5")
    assert behind.returncode == 6, behind
    assert "stalled" in behind.stdout and "no process of it is alive" in behind.stdout, behind
    assignments = project.manage("pillow_topic_assignments", "xform-pillow", "2", "--csv")
    ok(assignments)
    assert assignments.stdout.splitlines() == [
        "process,topic,partition",
        f"0,{project.topic},0",
        f"1,{project.topic},1",
    ]
    ok(project.manage("pillow_topic_assignments", "xform-pillow", "2"))
    ok(project.manage("validate_kafka_pillow_checkpoints", "--print-only"))
    # A declined prompt keeps CommCare's exit status 1 (no stdin: the answer is empty).
    declined = project.manage("ptop_reset_checkpoint", "xform-pillow")
    assert declined.returncode == 1, declined.stderr
    ok(project.manage("ptop_reset_checkpoint", "xform-pillow", "--noinput"))
    merged = project.manage("merge_pillow_checkpoints", "xform-pillow")
    assert merged.returncode == 2


def test_ptop_reindexer_v2_rebuilds_while_run_ptop_runs_and_changes_keep_coming(
    project: Project, native: None
) -> None:
    """A running ``run_ptop`` (the Rust Elasticsearch processor, documents from a table) writes
    to both indices while ``ptop_reindexer_v2`` rebuilds; the alias then serves the new index,
    equal to the table, and the pillow never stopped."""
    import threading

    from django.conf import settings
    from django.db import connection
    from elasticsearch import Elasticsearch

    table = f"src_{project.index}"
    env = {"PTDJ_SOURCE_TABLE": table}
    es = Elasticsearch(settings.ELASTICSEARCH_URL)
    v1, v2 = f"{project.index}_v1", f"{project.index}_v2"
    with connection.cursor() as c:
        c.execute(f"CREATE TABLE {table} (doc_id text PRIMARY KEY, doc jsonb NOT NULL)")
        c.execute(
            f"INSERT INTO {table} SELECT 'r' || i, jsonb_build_object('_id', 'r' || i, "
            f"'doc_type', 'XFormInstance', 'domain', 'demo', 'n', 0) FROM generate_series(1, 400) i"
        )
    ids = [f"r{i}" for i in range(1, 401)]

    def source() -> dict[str, dict[str, object]]:
        with connection.cursor() as c:
            c.execute(f"SELECT doc_id, doc FROM {table}")
            rows = {r[0]: json.loads(r[1]) if isinstance(r[1], str) else r[1] for r in c.fetchall()}
        for d in rows.values():
            d.pop("_id", None)
        return rows

    def indexed(index: str) -> dict[str, dict[str, object]]:
        if not es.indices.exists(index=index):
            return {}
        es.indices.refresh(index=index)
        hits = es.search(index=index, query={"match_all": {}}, size=10000)["hits"]["hits"]
        return {h["_id"]: h["_source"] for h in hits}

    project.produce(ids)
    pillow = project.start("run_ptop", "--pillow-name", "rust-es-pillow", extra_env=env)
    stop = threading.Event()
    try:
        wait_for(lambda: indexed(v1) == source(), timeout=90, what="the first index")

        def write() -> None:
            from django.db import connections

            i = 0
            while not stop.is_set():
                doc_id = ids[i % len(ids)]
                with connections["default"].cursor() as c:
                    c.execute(
                        f"UPDATE {table} SET doc = jsonb_set(doc, '{{n}}', "
                        "to_jsonb((doc->>'n')::int + 1)) WHERE doc_id = %s",
                        [doc_id],
                    )
                project.produce([doc_id])
                i += 7
            connections["default"].close()

        writer = threading.Thread(target=write)
        writer.start()
        result = project.manage(
            "ptop_reindexer_v2", "rust-es-pillow", "--source-table", table, "--id-column",
            "doc_id", "--doc-column", "doc", "--chunksize", "20", "--new-index", v2,
            "--noinput", extra_env=env, timeout=300,
        )  # fmt: skip
        stop.set()
        writer.join()
        ok(result)
        assert list(es.indices.get_alias(name=project.index)) == [v2], result.stdout
        wait_for(
            lambda: indexed(project.index) == source(), timeout=90, what="the new index = source"
        )
        wait_for(lambda: indexed(v1) == source(), timeout=30, what="the kept old index = source")
        assert pillow.poll() is None, "the pillow stopped"
    finally:
        stop.set()
        pillow.send_signal(signal.SIGTERM)
        out, err = pillow.communicate(timeout=120)
        es.indices.delete(index=f"{project.index}_v*", ignore_unavailable=True)
        with connection.cursor() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
            c.execute("DELETE FROM pillowtop_rs_reindex WHERE pillow = 'rust-es-pillow'")
    assert pillow.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
