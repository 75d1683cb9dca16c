"""``run_pillow_retry_queue``: re-publish due pillow errors to Kafka, forever (CommCare's loop).

Each round takes up to 10000 due errors (``date_next_attempt <= now`` and ``current_attempt == 0``
or ``total_attempts <= 9 and current_attempt <= 3``), re-publishes their changes with the attempt
count carried, deletes the rows of delivered documents, and sleeps 10 s when the round was not
full. ``--once`` (one round) and ``--dry-run`` (one round, print, write nothing) are additions.
SIGTERM stops between rounds. ``PILLOW_RETRY_QUEUE_ENABLED = False`` makes it process nothing (an
undefined setting means enabled, where CommCare's own default is ``False``).
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from pillowtop_rs.django import cli, retry
from pillowtop_rs.django import settings as pt_settings
from pillowtop_rs.exceptions import PillowtopError


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Re-publish due pillow errors to their Kafka topics"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("--once", action="store_true", help="run one round and stop")
        parser.add_argument(
            "--dry-run", action="store_true", help="print what one round would do; write nothing"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=retry.BATCH_SIZE,
            help=f"error rows per round (default {retry.BATCH_SIZE})",
        )
        parser.add_argument("--sleep", type=float, default=10.0, help="seconds between rounds")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        if not pt_settings.retry_queue_enabled():
            self.stdout.write(
                "PILLOW_RETRY_QUEUE_ENABLED is False: the retry queue processes nothing "
                "(set it to True, or remove it, to re-publish due errors)"
            )
            return
        stop = False

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            nonlocal stop
            stop = True

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        producer = None
        if not options["dry_run"]:
            producer = retry.make_producer(cli.kafka_bootstrap())
        excluded = pt_settings.retry_queue_excluded_pillows()
        try:
            while not stop:
                close_old_connections()
                try:
                    result = retry.process_round(
                        producer,
                        batch_size=options["batch_size"],
                        excluded_pillows=excluded,
                        dry_run=options["dry_run"],
                    )
                except PillowtopError as e:
                    raise CommandError(str(e)) from e
                if options["dry_run"]:
                    for doc_id, pillow, topic, attempts in result.planned:
                        self.stdout.write(
                            f"would re-publish {doc_id} (pillow {pillow}) to {topic} "
                            f"with attempts={attempts}"
                        )
                    for doc_id in result.unknown_pillow:
                        self.stdout.write(f"would park {doc_id}: its pillow is not configured")
                    return
                self.stdout.write(
                    f"{result.selected} due, {len(result.published)} re-published, "
                    f"{len(result.failed)} failed, {len(result.unknown_pillow)} unknown pillow"
                )
                if options["once"]:
                    return
                if result.selected < options["batch_size"]:
                    deadline = time.monotonic() + options["sleep"]
                    while not stop and time.monotonic() < deadline:
                        time.sleep(0.2)
        finally:
            signal.signal(signal.SIGTERM, previous)
