"""The checkpoint commands in this process with ``call_command``: they run the Rust operations
through ``pillowtop_rs.ops``, print through the command's ``self.stdout`` (so ``stdout=buf``
captures the plan, the messages and the questions) and ask through ``input``.

Each test points the test app at the ``project`` fixture's unique topic and checkpoint prefix and
writes its own checkpoint rows; the project fixture deletes the topic afterwards and the test
database is dropped at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pillowtop_rs.django.models import KafkaCheckpoint
from support import Project

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

XFORM = "xform-pillow"
META = "FormSubmissionMetadataTrackerPillow"


@pytest.fixture
def app(project: Project, settings: Any) -> Iterator[Project]:
    """The test app's pillows read the project's topic under its checkpoint prefix; the engine's
    own tables (liveness, history) exist, as after a first pillow run."""
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


def checkpoint_id(name: str) -> str:
    from pillowtop_rs import registry

    return str(registry.get_pillow_by_name(name).checkpoint_id)


def put(checkpoint: str, topic: str, offsets: dict[int, int]) -> None:
    for partition, offset in offsets.items():
        KafkaCheckpoint.objects.update_or_create(
            checkpoint_id=checkpoint,
            topic=topic,
            partition=partition,
            defaults={"offset": offset},
        )


def offsets(checkpoint: str) -> dict[int, int]:
    rows = KafkaCheckpoint.objects.filter(checkpoint_id=checkpoint)
    return {r.partition: r.offset for r in rows}


def answers(monkeypatch: pytest.MonkeyPatch, *replies: str) -> list[str]:
    """Answer ``input()`` with ``replies`` in turn; returns the list of prompts it was given."""
    asked: list[str] = []
    queue = list(replies)

    def fake_input(prompt: str = "") -> str:
        asked.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    monkeypatch.setattr("builtins.input", fake_input)
    return asked


def test_split_with_noinput_copies_the_rows_and_prints_into_stdout(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = checkpoint_id(XFORM), checkpoint_id(META)
    put(source, app.topic, {0: 7, 1: 9})
    put(target, app.topic, {0: 1})
    asked = answers(monkeypatch)
    out = StringIO()
    call_command("split_pillow_checkpoints", XFORM, META, "--noinput", stdout=out)
    assert offsets(target) == {0: 7, 1: 9}
    assert offsets(source) == {0: 7, 1: 9}
    text = out.getvalue()
    assert f"split checkpoint {source} into ['{target}']: 2 rows copied to each target" in text
    assert f"copied 2 rows of {source} to ['{target}'] (2 rows written in one transaction)" in text
    assert "Do you want to continue" not in text
    assert asked == [], "--noinput asks nothing"


def test_split_with_a_declined_prompt_exits_1_and_writes_nothing(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = checkpoint_id(XFORM), checkpoint_id(META)
    put(source, app.topic, {0: 7, 1: 9})
    put(target, app.topic, {0: 1})
    asked = answers(monkeypatch, "y", "n")
    out = StringIO()
    with pytest.raises(CommandError) as info:
        call_command("split_pillow_checkpoints", XFORM, META, stdout=out)
    assert info.value.returncode == 1
    assert offsets(target) == {0: 1}, "declined: nothing written"
    text = out.getvalue()
    assert f"Some of ['{target}'] already exist:" in text
    assert "Do you want to continue and overwrite existing checkpoints? [y/n]" in text
    assert "Are you sure you want to DELETE existing checkpoints? [y/n]" in text
    assert "rows written in one transaction" not in text
    assert len(asked) == 2


def test_split_answered_yes_twice_overwrites_the_target(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = checkpoint_id(XFORM), checkpoint_id(META)
    put(source, app.topic, {0: 7, 1: 9})
    put(target, app.topic, {0: 1})
    answers(monkeypatch, "y", "y")
    call_command("split_pillow_checkpoints", XFORM, META, stdout=StringIO())
    assert offsets(target) == {0: 7, 1: 9}


def test_split_of_one_processor_hands_its_own_position_to_the_target(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection

    source, target = checkpoint_id(XFORM), checkpoint_id(META)
    lane = f"{source}/processor/form_meta"
    put(source, app.topic, {0: 7, 1: 9})
    put(lane, app.topic, {0: 8})  # ahead of the pillow's minimum on partition 0
    with pytest.raises(CommandError, match="--online needs --processor"):
        call_command("split_pillow_checkpoints", XFORM, META, "--online", stdout=StringIO())
    answers(monkeypatch)
    out = StringIO()
    try:
        call_command(
            "split_pillow_checkpoints",
            XFORM,
            META,
            "--processor",
            "form_meta",
            "--noinput",
            stdout=out,
        )
        text = out.getvalue()
        assert f"split processor form_meta out of {source} into {target}" in text
        assert f"processor form_meta of {source} now belongs to {target}" in text
        assert offsets(target) == {0: 8, 1: 9}, "the processor's own row wins"
        assert offsets(lane) == {}
        assert offsets(source) == {0: 7, 1: 9}
        with connection.cursor() as c:
            c.execute(
                "SELECT processor, target_checkpoint_id FROM pillowtop_rs_handover"
                " WHERE checkpoint_id = %s",
                [source],
            )
            assert c.fetchall() == [("form_meta", target)]
    finally:
        with connection.cursor() as c:
            c.execute("DELETE FROM pillowtop_rs_handover WHERE checkpoint_id = %s", [source])


def test_merge_of_one_processor_takes_it_back_with_the_lower_position(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection

    source, target = checkpoint_id(XFORM), checkpoint_id(META)
    put(source, app.topic, {0: 7, 1: 9})
    answers(monkeypatch)
    try:
        call_command(
            "split_pillow_checkpoints",
            XFORM,
            META,
            "--processor",
            "form_meta",
            "--noinput",
            stdout=StringIO(),
        )
        # Both ran on; the processor's pillow is behind on partition 0.
        put(source, app.topic, {0: 30, 1: 12})
        put(target, app.topic, {0: 20, 1: 15})
        with pytest.raises(CommandError, match="--online needs --processor"):
            call_command("merge_pillow_checkpoints", META, XFORM, "--online", stdout=StringIO())
        out = StringIO()
        call_command(
            "merge_pillow_checkpoints",
            META,
            XFORM,
            "--processor",
            "form_meta",
            "--noinput",
            stdout=out,
        )
        text = out.getvalue()
        assert f"merge processor form_meta of {target} back into {source}" in text
        assert f"processor form_meta runs in {source} again" in text
        assert offsets(source) == {0: 20, 1: 12}, "the lower of the two on each partition"
        with connection.cursor() as c:
            c.execute(
                "SELECT checkpoint_id, kind FROM pillowtop_rs_handover"
                " WHERE checkpoint_id IN (%s, %s) ORDER BY 1",
                [source, target],
            )
            assert c.fetchall() == [(target, "merge")], "the split's record is gone"
    finally:
        with connection.cursor() as c:
            c.execute(
                "DELETE FROM pillowtop_rs_handover WHERE checkpoint_id IN (%s, %s)",
                [source, target],
            )


def test_reset_checkpoint_asks_for_yes_then_moves_to_the_earliest_offset(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = checkpoint_id(XFORM)
    put(cid, app.topic, {0: 3, 1: 4})
    question = f"Reset checkpoint {cid} as shown? Type 'yes' to continue:"

    answers(monkeypatch, "y")
    out = StringIO()
    with pytest.raises(CommandError) as info:
        call_command("ptop_reset_checkpoint", XFORM, stdout=out)
    assert info.value.returncode == 1
    assert question in out.getvalue()
    assert f"reset checkpoint {cid} to earliest" in out.getvalue()
    assert offsets(cid) == {0: 3, 1: 4}, "only 'yes' proceeds"

    out = StringIO()
    call_command("ptop_reset_checkpoint", XFORM, "--noinput", stdout=out)
    assert offsets(cid) == {0: 0, 1: 0}
    assert f"checkpoint {cid}: 2 rows written" in out.getvalue()
    assert question not in out.getvalue()


def test_reset_of_a_running_pillow_is_refused_with_status_4_unless_forced(
    app: Project, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import socket

    from django.db import connection

    cid = checkpoint_id(XFORM)
    put(cid, app.topic, {0: 3, 1: 4})
    answers(monkeypatch)
    with connection.cursor() as c:
        c.execute(
            "INSERT INTO pillowtop_rs_process (pillow_name, process_num, num_processes,"
            " checkpoint_id, hostname, pid, started_at, heartbeat_at)"
            " VALUES (%s, 0, 1, %s, %s, %s, now(), now())",
            [XFORM, cid, socket.gethostname(), os.getpid()],
        )
    try:
        with pytest.raises(CommandError) as info:
            call_command("ptop_reset_checkpoint", XFORM, "--noinput", stdout=StringIO())
        assert info.value.returncode == 4
        assert f"pillow {cid} is running" in str(info.value)
        assert offsets(cid) == {0: 3, 1: 4}

        out = StringIO()
        call_command("ptop_reset_checkpoint", XFORM, "--noinput", "--force", stdout=out)
        assert offsets(cid) == {0: 0, 1: 0}
        assert "proceeding because of --force" in out.getvalue()
    finally:
        with connection.cursor() as c:
            c.execute("DELETE FROM pillowtop_rs_process WHERE checkpoint_id = %s", [cid])


def test_lag_and_assignments_print_into_stdout(app: Project, native: None) -> None:
    cid = checkpoint_id(XFORM)
    put(cid, app.topic, {0: 0, 1: 0})
    out = StringIO()
    call_command("pillow_lag", XFORM, stdout=out)
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines[0][:3] == ["checkpoint", "topic", "partition"]
    assert [r[:3] for r in lines[1:]] == [[cid, app.topic, "0"], [cid, app.topic, "1"]]

    # A pillow that never ran: its partitions, "no checkpoint yet".
    out = StringIO()
    call_command("pillow_lag", XFORM, META, stdout=out)
    never = [line for line in out.getvalue().splitlines() if "no checkpoint yet" in line]
    assert [line.split()[:3] for line in never] == [
        [checkpoint_id(META), app.topic, "0"],
        [checkpoint_id(META), app.topic, "1"],
    ], out.getvalue()

    out = StringIO()
    call_command("pillow_topic_assignments", XFORM, "2", stdout=out)
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert rows == [
        ["process", "worker", "partitions"],
        ["0", "-", f"{app.topic},0"],
        ["1", "-", f"{app.topic},1"],
    ]
