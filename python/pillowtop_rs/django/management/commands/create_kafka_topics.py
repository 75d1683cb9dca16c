"""``create_kafka_topics [--topics T ...] [--partitions N]`` (CommCare's change_feed command).

``--replication-factor R`` sets the replicas of each new topic.
Creates the topics the configured pillows read (CommCare: its fixed ``topics.ALL``), or the
``--topics`` given, that Kafka does not have yet; existing topics are never altered. Prints the
plan and asks (``y`` or ``yes``) before creating; ``--noinput``, ``--dry-run`` and ``--json`` as
the checkpoint commands.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


def configured_topics() -> list[str]:
    """Return the topics of every configured pillow, in order, once each."""
    from pillowtop_rs import registry

    names = [c.name for c in registry.get_all_pillow_configs()]
    topics: dict[str, None] = {}
    for pillow in cli.get_pillows(names):
        topics.update(dict.fromkeys(cli.topics(pillow)))
    return list(topics)


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Create the Kafka topics the pillows read that are missing"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("--topics", nargs="+", help="default: the configured pillows' topics")
        parser.add_argument("--partitions", type=int, default=1, help="of each new topic")
        parser.add_argument("--replication-factor", type=int, default=1, help="of each new topic")
        parser.add_argument("--noinput", action="store_true", help="answer every question yes")
        parser.add_argument("--dry-run", action="store_true", help="show the plan, create nothing")
        parser.add_argument("--json", action="store_true", help="print the plan as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        topics = list(options["topics"] or configured_topics())
        with cli.operation("create_kafka_topics"):
            ops.create_kafka_topics(
                topics,
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                partitions=int(options["partitions"]),
                replication_factor=int(options["replication_factor"]),
                noinput=bool(options["noinput"]),
                dry_run=bool(options["dry_run"]),
                json=bool(options["json"]),
                ui=cli.CommandUi(self),
            )
