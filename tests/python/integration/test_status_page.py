"""The status page of ``pillowtop serve`` in a real headless Chromium (Debian's ``chromium``),
against the real services with a running pillow: the rendered numbers are checked against the
database, and a screenshot is kept at ``target/test-artifacts/status-page.png``."""

from __future__ import annotations

import html.parser
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

Publish = Callable[..., list[str]]
Conn = psycopg.Connection[Any]
ARTIFACTS = Path(__file__).resolve().parents[3] / "target" / "test-artifacts"

PILLOW = textwrap.dedent(
    """
    import signal, sys
    from pillowtop_rs import Pillow, request_shutdown
    kafka, postgres, topic, name = sys.argv[1:5]
    class Proc:
        def process_change(self, change):
            if change.id.startswith("bad"):
                raise ValueError("bad document " + change.id)
    signal.signal(signal.SIGTERM, lambda *_: request_shutdown())
    Pillow(name, [topic], [Proc()], chunk_size=10).run(kafka=kafka, postgres=postgres,
                                                       idle_timeout=1.0)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Elements(html.parser.HTMLParser):
    """``data-testid`` elements of one pillow section: their text, in order."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.inside = 0
        self.current: list[tuple[str, str]] = []  # open (testid, tag) elements
        self.found: dict[str, list[str]] = {}
        self.attrs: dict[str, list[dict[str, str | None]]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-testid") == "pillow" and a.get("data-checkpoint") == self.checkpoint:
            self.inside = 1
            return
        if self.inside:
            if tag == "section":
                self.inside += 1
            testid = a.get("data-testid")
            if testid:
                self.current.append((testid, tag))
                self.found.setdefault(testid, []).append("")
                self.attrs.setdefault(testid, []).append(a)

    def handle_endtag(self, tag: str) -> None:
        if self.current and self.current[-1][1] == tag:
            self.current.pop()
        if self.inside and tag == "section":
            self.inside -= 1

    def handle_data(self, data: str) -> None:
        if self.inside and self.current:
            testid = self.current[-1][0]
            self.found[testid][-1] += data


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: tests/bootstrap installs it")
    return path


@pytest.fixture
def running(
    kafka_bootstrap: str, postgres_url: str, topic: str, unique_name: str, db: Conn
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PILLOW, kafka_bootstrap, postgres_url, topic, unique_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PILLOWTOP_LOG": "warn"},
    )
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_the_status_page_shows_a_running_pillow_in_a_real_browser(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    unique_name: str,
    publish: Publish,
    kit: Any,
    db: Conn,
    running: subprocess.Popen[str],
    chromium: str,
) -> None:
    good = [(f"doc-{i}", kit.change_message(f"doc-{i}")) for i in range(57)]
    bad = [(f"bad-{i}", kit.change_message(f"bad-{i}")) for i in range(3)]
    publish(topic, good + bad)
    deadline = time.monotonic() + 60
    while sum(kit.checkpoint_offsets(db, unique_name).values()) < 60:
        assert time.monotonic() < deadline, "the pillow did not catch up"
        assert running.poll() is None, running.communicate()
        time.sleep(0.3)
    port = free_port()
    serve = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pillowtop_rs; sys.exit(pillowtop_rs.run_cli(sys.argv[1:]))",
            "serve",
            "--port",
            str(port),
            "--interval",
            "1",
            "--postgres-url",
            postgres_url,
            "--kafka",
            kafka_bootstrap,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/pillows", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "pillowtop serve did not start"
                assert serve.poll() is None, serve.communicate()
                time.sleep(0.3)
        time.sleep(2.5)  # two rate samples at --interval 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "status-page.png"
        with tempfile.TemporaryDirectory() as profile:
            flags = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
            ]
            dom = subprocess.run(
                [chromium, *flags, "--dump-dom", url],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            subprocess.run(
                [chromium, *flags, f"--screenshot={screenshot}", "--window-size=1280,1600", url],
                capture_output=True,
                timeout=120,
                check=True,
            )
        assert 'data-loaded="1"' in dom, dom[:2000]
        parsed = Elements(unique_name)
        parsed.feed(dom)
        found = parsed.found
        assert found, f"no section for {unique_name} in the rendered page"
        assert found["processes-alive"] == ["1"]
        assert found["need-processing"] == ["0"]
        assert found["error-rows"] == ["3"]
        offsets = kit.checkpoint_offsets(db, unique_name)
        rendered = {
            int(str(a["data-partition"]).rsplit("-", 1)[1]): int(o.replace(",", ""))
            for a, o in zip(parsed.attrs["partition"], found["offset"])
        }
        assert rendered == offsets
        assert [" ".join(t.split()) for t in found["error-type"]] == ["builtins.ValueError3"]
        assert screenshot.stat().st_size > 10_000
        print(f"status page screenshot: {screenshot}")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    assert serve.returncode == 0
