"""``send_pillow_retry_queue_through_pillows <pillow>``: re-publish every error of one pillow now.

CommCare's command: every ``pillow_retry_pillowerror`` row of the pillow, due or not, in pages of
1000, goes back to its topic (``publish_timestamp`` now, attempts kept) and the rows of delivered
documents are deleted. Every pillow on the topic sees the change again, so processors must be
idempotent. Additions: the plan is printed and confirmed first (``--noinput`` skips the
question), ``--dry-run`` prints it only, ``--json`` prints the outcome as JSON. Exit status: 0
done or dry run, 1 the question was declined, 4 some deliveries failed (their rows keep an extra
attempt) or the pillow is unknown.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import registry
from pillowtop_rs.django import cli, retry
from pillowtop_rs.django.models import PillowError
from pillowtop_rs.exceptions import PillowtopError


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Re-publish every error row of a Kafka pillow to its topic now, and delete them"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("pillow_name", help="the pillow whose error rows are re-published")
        parser.add_argument("--noinput", action="store_true", help="answer the question yes")
        parser.add_argument("--dry-run", action="store_true", help="show the plan, send nothing")
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
        parser.add_argument(
            "--page-size", type=int, default=1000, help="error rows per page (default 1000)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        name: str = options["pillow_name"]
        try:
            registry.get_pillow_config_by_name(name)
        except PillowtopError as e:
            raise CommandError(str(e), returncode=4) from e
        rows = PillowError.objects.filter(pillow=name)
        count = rows.count()
        topics = sorted({retry.topic_for(e) for e in rows[:1000]})
        self.stdout.write(
            f"{count} error rows of pillow {name} would be re-published (topics: "
            f"{', '.join(topics) or 'none'}) and deleted once delivered"
        )
        if options["dry_run"] or count == 0:
            return
        if not options["noinput"]:
            answer = input(f"Re-publish {count} changes of {name} now? [y/n] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("aborted: nothing was sent", returncode=1)
        producer = retry.make_producer(cli.kafka_bootstrap())
        try:
            result = retry.send_through_pillow(producer, name, page=options["page_size"])
        except PillowtopError as e:
            raise CommandError(str(e), returncode=4) from e
        if options["json"]:
            self.stdout.write(json.dumps(result.__dict__))
        else:
            self.stdout.write(
                f"{len(result.published)} re-published and deleted, {len(result.failed)} failed"
            )
        if result.failed:
            raise CommandError(
                f"{len(result.failed)} deliveries failed (their rows keep an extra attempt): "
                f"{result.failed[:10]}",
                returncode=4,
            )
