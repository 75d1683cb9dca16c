"""``ptop_dump_remaining_changes [-p PILLOW] [--output FILE] [--limit N]`` (CommCare's command).

Writes the changes a pillow has not processed yet (from its checkpoint, or the first retained
offset if older, to the high-water marks) as JSON lines (``id``, ``seq``, ``deleted``,
``metadata``, plus ``topic`` and ``partition``), gzipped into CommCare's
``pillow_changes_<checkpoint>_<time>.gz``. Without ``-p``, every configured pillow, a file each.
``--output`` (``-`` prints the lines) and ``--limit`` are additions. Read-only. Ctrl-C stops
cleanly (exit status 130).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops, registry
from pillowtop_rs.django import cli

#: The exit status of a dump cut short by Ctrl-C.
INTERRUPTED = 130


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Write the changes a pillow has not processed yet to a gzipped file"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("-p", "--pillow", help="the pillow (default: every configured one)")
        parser.add_argument("-o", "--output", help="the file (with -p); '-' prints the lines")
        parser.add_argument("--limit", type=int, help="stop after this many changes per pillow")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        if options["output"] and not options["pillow"]:
            raise CommandError("--output needs -p/--pillow")
        names = (
            [options["pillow"]]
            if options["pillow"]
            else [c.name for c in registry.get_all_pillow_configs()]
        )
        ids = list(dict.fromkeys(cli.checkpoint_id(p) for p in cli.get_pillows(names)))
        for checkpoint in ids:
            with cli.operation("ptop_dump_remaining_changes"):
                summary = ops.dump_remaining_changes(
                    checkpoint,
                    postgres_url=cli.postgres_url(),
                    kafka=cli.kafka_bootstrap(),
                    kafka_config=cli.kafka_config(),
                    output=options["output"],
                    limit=options["limit"],
                    ui=cli.CommandUi(self),
                )
            if summary["interrupted"]:
                raise CommandError(
                    "ptop_dump_remaining_changes: interrupted", returncode=INTERRUPTED
                )
