"""``validate_kafka_pillow_checkpoints [--print-only]`` (CommCare's command).

Checks that Kafka still retains every offset the active pillows' checkpoints need (zero offsets
skipped, as CommCare does), through ``pillowtop_rs.ops.validate``. Active pillows are
``settings.ACTIVE_PILLOW_NAMES`` when set, else every configured pillow. Exit status 5 names each
invalid checkpoint partition (CommCare raised an exception); ``--print-only`` reports and exits 0.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Validate that the pillows' Kafka checkpoints are within Kafka's retention"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("--print-only", action="store_true", help="report only; exit 0")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        active = getattr(settings, "ACTIVE_PILLOW_NAMES", None)
        names = list(active) if active else cli.all_pillow_names()
        pillows = cli.get_pillows(names)
        if not pillows:
            self.stdout.write("no pillows configured")
            return
        with cli.operation("validate_kafka_pillow_checkpoints"):
            problems = ops.validate(
                sorted({cli.checkpoint_id(p) for p in pillows}),
                postgres_url=cli.postgres_url(),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                skip_zero=True,
                ui=cli.CommandUi(self),
            )
        if problems and not options["print_only"]:
            raise CommandError(
                f"{len(problems)} checkpoints are outside what Kafka retains",
                returncode=cli.INVALID,
            )
