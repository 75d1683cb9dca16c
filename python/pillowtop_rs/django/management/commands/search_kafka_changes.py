"""``search_kafka_changes --topic T [options]`` (CommCare's command).

Options: ``--doc-ids a,b`` or ``--doc-id-file F``, ``--doc-type``, ``--doc-subtype``,
``--start-date``, ``--end-date``, ``--limit N``. Scans the topic (from ``--start-date`` by
Kafka's offsets for times, else from the first retained offset, up to the high-water marks at
the start) and prints the matching changes' metadata as JSON lines. Dates are ``YYYY-MM-DD``
(UTC) or RFC 3339. Ctrl-C stops cleanly (exit status 130); ``--limit`` bounds the output.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli

#: The exit status of a search cut short by Ctrl-C.
INTERRUPTED = 130


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Find changes in a Kafka topic by document id, type and time"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("--topic", nargs="+", required=True, dest="topics")
        ids = parser.add_mutually_exclusive_group()
        ids.add_argument("--doc-ids", help="comma-separated document ids")
        ids.add_argument("--doc-id-file", help="a file of document ids, one per line")
        parser.add_argument("--doc-type", help="only changes of this document_type")
        parser.add_argument("--doc-subtype", help="only changes of this document_subtype")
        parser.add_argument("--start-date", help="published on or after (YYYY-MM-DD)")
        parser.add_argument("--end-date", help="published before (YYYY-MM-DD)")
        parser.add_argument("--limit", type=int, help="stop after this many changes")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        doc_ids = options["doc_ids"]
        with cli.operation("search_kafka_changes"):
            summary = ops.search_kafka_changes(
                list(options["topics"]),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                doc_ids=[i for i in doc_ids.split(",") if i] if doc_ids else None,
                doc_id_file=options["doc_id_file"],
                start_date=options["start_date"],
                end_date=options["end_date"],
                doc_type=options["doc_type"],
                doc_subtype=options["doc_subtype"],
                limit=options["limit"],
                ui=cli.CommandUi(self),
            )
        if summary["interrupted"]:
            raise CommandError("search_kafka_changes: interrupted", returncode=INTERRUPTED)
