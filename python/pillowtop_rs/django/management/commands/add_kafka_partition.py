"""``add_kafka_partition <topic> <num_partitions>`` (CommCare's command).

Creates offset-0 rows for the new partitions of ``topic`` for every checkpoint that has rows on
it, through ``pillowtop add-partitions``. Unlike CommCare, it aborts (exit status 1) unless both
questions are answered ``y`` or ``yes`` (reference §9 #19), and checks the topic's partition count
in Kafka. ``--noinput`` and ``--dry-run`` are additions.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Add checkpoint rows for new partitions of a Kafka topic"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("topic")
        parser.add_argument("num_partitions", type=int)
        cli.add_confirm_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        argv = ["add-partitions", options["topic"], str(options["num_partitions"])]
        argv += cli.confirm_flags(options)
        cli.run_cli(argv + cli.postgres_args() + cli.kafka_args())
