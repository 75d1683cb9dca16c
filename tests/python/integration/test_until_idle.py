"""``Pillow.run(until_idle=True)`` stops once caught up, without waiting a full idle timeout.

The feed ticks as soon as every partition is read up to its high-water mark; before, a run on a
feed already at its end waited ``idle_timeout`` (10 s by default) for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from pillowtop_rs import BulkPillowProcessor, Change, Pillow

Publish = Callable[..., list[str]]


class Seen(BulkPillowProcessor):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def process_change(self, change: Change) -> None:
        self.ids.append(change.id)

    def process_changes_chunk(
        self, changes_chunk: list[Change]
    ) -> tuple[list[Change], list[tuple[Change, BaseException]]]:
        self.ids.extend(c.id for c in changes_chunk)
        return [], []


def test_until_idle_stops_at_the_end_of_the_feed_without_a_full_idle_timeout(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    unique_name: str,
    publish: Publish,
    kit: Any,
    db: psycopg.Connection[Any],
) -> None:
    publish(topic, [(f"d-{i}", kit.change_message(f"d-{i}")) for i in range(5)])
    for expected in (5, 0):  # a backlog, then a feed already at its end
        seen = Seen()
        started = time.monotonic()
        Pillow(unique_name, [topic], [seen]).run(
            kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=20.0
        )
        elapsed = time.monotonic() - started
        assert len(seen.ids) == expected
        assert elapsed < 8, f"took {elapsed:.1f} s: waited for the idle timeout (20 s)"
    assert (
        kit.checkpoint_offsets(db, unique_name)
        and sum(kit.checkpoint_offsets(db, unique_name).values()) == 5
    )
