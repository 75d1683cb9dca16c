"""Helpers of the Django tests: a test's project (env for ``manage.py``), changes, polling."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def change_meta(doc_id: str, domain: str = "demo", attempts: int = 0) -> dict[str, Any]:
    """A change as CommCare's producer writes it."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "document_id": doc_id,
        "data_source_type": "sql",
        "data_source_name": "form-sql",
        "document_type": "XFormInstance",
        "document_subtype": "http://commcarehq.org/case",
        "domain": domain,
        "is_deletion": False,
        "document_rev": None,
        "publish_timestamp": now,
        "attempts": attempts,
    }


class Project:
    """One test's view of the project: env for ``manage.py`` and helpers."""

    def __init__(self, env: dict[str, str], topic: str, index: str, prefix: str) -> None:
        self.env = env
        self.topic = topic
        self.index = index
        self.prefix = prefix

    def manage(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``manage.py <args>`` to completion."""
        return subprocess.run(
            [sys.executable, str(HERE / "manage.py"), *args],
            cwd=HERE,
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``manage.py <args>`` in the background."""
        return subprocess.Popen(
            [sys.executable, str(HERE / "manage.py"), *args],
            cwd=HERE,
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def produce(self, doc_ids: list[str]) -> None:
        """Publish one CommCare-style change per id (keyed by document id)."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.env["TEST_KAFKA_BOOTSTRAP"]})
        for doc_id in doc_ids:
            producer.produce(self.topic, json.dumps(change_meta(doc_id)).encode(), doc_id.encode())
        assert producer.flush(30) == 0

    def checkpoint_id(self, name: str) -> str:
        """The prefixed checkpoint id."""
        return f"{self.prefix}{name}"


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    """Poll ``predicate`` until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
