"""``add_kafka_partition <topic> <num_partitions>`` (CommCare's command).

Creates offset-0 rows for the new partitions of ``topic`` for every checkpoint that has rows on it,
through ``pillowtop_rs.ops.add_partitions`` (the CLI's ``add-partitions``). Unlike CommCare, it
aborts (exit status 1) unless both questions are answered ``y`` or ``yes``
(docs/commcare-pillowtop.md §9 #19), and checks the topic's partition count in Kafka. ``--noinput``
and ``--dry-run`` are additions.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Add checkpoint rows for new partitions of a Kafka topic"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("topic", help="the Kafka topic that gained partitions")
        parser.add_argument(
            "num_partitions", type=int, help="the number of partitions the topic has now"
        )
        cli.add_confirm_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        confirm = cli.confirm_options(options)
        with cli.operation("add_kafka_partition"):
            ops.add_partitions(
                options["topic"],
                int(options["num_partitions"]),
                postgres_url=cli.postgres_url(),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                noinput=confirm["noinput"],
                dry_run=confirm["dry_run"],
                ui=cli.CommandUi(self),
            )
