"""The README's Django section, run as written, from a fresh venv with only ``wheel[django]``.

The blocks of the section marked ``<!-- readme-test: ... -->`` are extracted: ``setup`` (the venv,
``pip install``, ``startproject``/``startapp``), ``append FILE`` and ``file FILE`` (the project's
files), ``run`` (the commands, in order). The only changes are the addresses: the settings get
the test services, a unique database and a unique topic appended, and the commands' literal
addresses are replaced by the test's. Then every management command's ``--help`` runs in that
venv, one real invocation of the commands the README does not run, ``pillowtop --help`` is on
the PATH, and a malformed ``PILLOWTOPS`` is reported in one line.

The wheel is the one ``tests/run`` built (``target/wheels``), or ``PILLOWTOP_WHEEL``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
README = REPO_ROOT / "README.md"
MARKER = re.compile(
    r"<!-- readme-test: (?P<what>[a-z]+)(?: (?P<arg>\S+))? -->\s*\n```\w*\n(?P<body>.*?)```", re.S
)

COMMANDS = [
    "run_ptop",
    "pillow_lag",
    "pillow_doctor",
    "split_pillow_checkpoints",
    "merge_pillow_checkpoints",
    "ptop_reset_checkpoint",
    "ptop_reindexer_v2",
    "add_kafka_partition",
    "validate_kafka_pillow_checkpoints",
    "pillow_topic_assignments",
    "run_pillow_retry_queue",
    "fix_checkpoint_after_rewind",
    "fix_checkpoints_from_date",
    "fix_checkpoints_from_file",
    "tail_kafka",
    "search_kafka_changes",
    "ptop_dump_remaining_changes",
    "create_kafka_topics",
    "list_kafka_topics",
    "send_pillow_retry_queue_through_pillows",
]
COMMANDS_DIR = REPO_ROOT / "python" / "pillowtop_rs" / "django" / "management" / "commands"


def wheel() -> Path:
    explicit = os.environ.get("PILLOWTOP_WHEEL")
    if explicit:
        return Path(explicit)
    found = sorted((REPO_ROOT / "target" / "wheels").glob("pillowtop_rs-*.whl"))
    if not found:
        message = "no wheel in target/wheels (tests/run builds it) and PILLOWTOP_WHEEL unset"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1]


def blocks() -> list[tuple[str, str | None, str]]:
    text = README.read_text()
    section = text[text.index("## Django: from an empty project") :]
    section = section[: section.index("\n## ", 1)]
    return [(m["what"], m["arg"], m["body"]) for m in MARKER.finditer(section)]


@pytest.fixture
def database(postgres_url: str, unique_name: str) -> Iterator[str]:
    """A fresh database (the README's project migrates into it), dropped afterwards."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{unique_name}"')
    parts = urlsplit(postgres_url)
    yield urlunsplit(parts._replace(path=f"/{unique_name}"))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{unique_name}" WITH (FORCE)')


@pytest.fixture
def form_topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for f in admin.create_topics([NewTopic(unique_name, num_partitions=4)]).values():
        f.result(30)
    yield unique_name
    for f in admin.delete_topics([unique_name]).values():
        f.result(30)


def run(
    cmd: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (
        f"README step failed (exit {done.returncode}):\n{cmd}\n--- stdout\n{done.stdout}"
        f"\n--- stderr\n{done.stderr}"
    )
    return done


@pytest.mark.timeout(400)
def test_the_readme_django_section_runs_as_written_from_a_fresh_venv(
    tmp_path: Path,
    kafka_bootstrap: str,
    database: str,
    form_topic: str,
) -> None:
    steps = blocks()
    assert [w for w, _, _ in steps][:1] == ["setup"], steps
    home = tmp_path / "project"
    home.mkdir()
    venv = tmp_path / "venv"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PILLOWTOP_", "DJANGO_", "PYTHON"))
    }
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("NO_COLOR", None)

    # setup: the README's lines, with the venv here and the wheel under test for the package.
    setup = steps[0][2]
    assert "python -m venv venv && . venv/bin/activate\n" in setup
    assert 'pip install "pillowtop-rs[django]"' in setup
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for line in setup.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("python -m venv"):
            continue
        line = line.replace('"pillowtop-rs[django]"', f'"{wheel()}[django]"')
        run(line, home, env, timeout=300)
    run("pip check", home, env)

    pg = urlsplit(database)
    overrides = (
        "\n# --- the README test's services (only addresses differ) ---\n"
        f"KAFKA_BROKERS = [{kafka_bootstrap!r}]\n"
        f"FORM_TOPIC = {form_topic!r}\n"
        f"DATABASES['default'].update(NAME={pg.path.lstrip('/')!r}, USER={pg.username or ''!r}, "
        f"PASSWORD={pg.password or ''!r}, HOST={pg.hostname!r}, PORT={str(pg.port or 5432)!r})\n"
    )
    replacements = {
        "127.0.0.1:9092": kafka_bootstrap,
        "postgresql://postgres@127.0.0.1:5432/commcarehq": database,
    }
    outputs: list[str] = []
    for what, arg, body in steps[1:]:
        if what == "append":
            assert arg is not None
            with open(home / arg, "a") as f:
                f.write("\n" + body + overrides)
        elif what == "file":
            assert arg is not None
            (home / arg).write_text(body)
        elif what == "run":
            for literal, actual in replacements.items():
                body = body.replace(literal, actual)
            done = run(body, home, env)
            outputs.append(done.stdout)
            assert "\x1b[" not in done.stderr, "colour codes on a non-terminal stderr"
        else:
            pytest.fail(f"unknown readme-test marker {what!r}")
    text = "\n".join(outputs)
    assert "30 forms, 30 handled once" in text, text
    assert "Usage: pillowtop" in text or "usage: pillowtop" in text.lower(), text

    # Every management command's --help, in the fresh venv.
    shipped = sorted(p.stem for p in COMMANDS_DIR.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(COMMANDS) == shipped, "every shipped management command is checked here"
    for command in COMMANDS:
        done = run(f"python manage.py {command} --help", home, env)
        assert command in done.stdout
    # One real invocation of those the README does not run.
    csv_rows = run("python manage.py pillow_topic_assignments xform-pillow 2 --csv", home, env)
    assert csv_rows.stdout.splitlines()[0] == "process,topic,partition"
    assert len(csv_rows.stdout.splitlines()) == 1 + 4
    retry = run("python manage.py run_pillow_retry_queue --once", home, env)
    assert "0 due" in retry.stdout, retry.stdout
    run("python manage.py pillow_lag", home, env)
    # The README's pillows have handled all 30 forms and stopped: each keeps up (exit 0).
    doctor_run = run("python manage.py pillow_doctor --interval 0.5 --json", home, env)
    doctor = json.loads(doctor_run.stdout)
    assert doctor and {p["verdict"] for p in doctor} == {"keeping_up"}, doctor
    run("python manage.py validate_kafka_pillow_checkpoints", home, env)
    run(
        "python manage.py merge_pillow_checkpoints xform-pillow form-meta-pillow --dry-run",
        home,
        env,
    )

    # A malformed PILLOWTOPS: one line, no traceback.
    (home / "myproject" / "bad_settings.py").write_text(
        "from myproject.settings import *  # noqa\n"
        "PILLOWTOPS = {'core': {'name': 'x', 'class': 'pillowtop_rs.Pillow'}}\n"
    )
    bad = subprocess.run(
        ["python", "manage.py", "pillow_lag", "--settings", "myproject.bad_settings"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "PILLOWTOPS section 'core' must be a list" in bad.stderr
