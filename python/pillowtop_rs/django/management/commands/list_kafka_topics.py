"""``list_kafka_topics [--all] [--json]`` (CommCare's change_feed command).

Lists the topics the configured pillows read (CommCare: its fixed ``topics.ALL``) with their
partition counts (``(missing)`` for a topic Kafka does not have); ``--all`` lists every topic of
the cluster instead.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli
from pillowtop_rs.django.management.commands.create_kafka_topics import configured_topics


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "List the Kafka topics the pillows read"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("--all", action="store_true", help="every topic of the cluster")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        topics = [] if options["all"] else configured_topics()
        with cli.operation("list_kafka_topics"):
            ops.list_kafka_topics(
                topics,
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                json=bool(options["json"]),
                ui=cli.CommandUi(self),
            )
