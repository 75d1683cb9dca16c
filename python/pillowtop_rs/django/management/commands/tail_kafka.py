"""``tail_kafka --topics T [T ...] [--doc-type] [--doc-subtype] [--limit N]`` (CommCare's command).

Follows the topics from their ends and prints each change's metadata with its partition and
offset, one JSON line each, until Ctrl-C (a clean stop with a summary, exit 0) or ``--limit``
changes (an addition, so the output is bounded).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Print the changes published to Kafka topics from now on"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("--topics", nargs="+", required=True)
        parser.add_argument("--doc-type", help="only changes of this document_type")
        parser.add_argument("--doc-subtype", help="only changes of this document_subtype")
        parser.add_argument("--limit", type=int, help="stop after this many changes")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        with cli.operation("tail_kafka"):
            ops.tail_kafka(
                list(options["topics"]),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                doc_type=options["doc_type"],
                doc_subtype=options["doc_subtype"],
                limit=options["limit"],
                ui=cli.CommandUi(self),
            )
