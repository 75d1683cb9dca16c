"""``ptop_reset_checkpoint <pillow_name> [--noinput]`` (CommCare's command).

CommCare deletes a Kafka checkpoint's rows, which the next start recreates at offset 0: a replay
from the earliest retained offset. Here the rows are moved to the earliest retained offset
explicitly (``pillowtop_rs.ops.reset_checkpoint``, the CLI's ``reset --earliest``), which is the
same replay without relying on the construction side effect (docs/commcare-pillowtop.md §9 #6).
``--latest``, ``--offset`` and ``--timestamp`` are additions.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Reset a pillow's checkpoint (replay from the earliest retained offset)"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("pillow_name", help="the pillow whose checkpoint is reset")
        cli.add_confirm_arguments(parser, "the pillow is running")
        to = parser.add_mutually_exclusive_group()
        to.add_argument("--latest", action="store_true", help="skip to the high-water mark")
        to.add_argument("--offset", type=int, help="move every partition to this offset")
        to.add_argument("--timestamp", help="first message at or after this time (RFC 3339)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        (pillow,) = cli.get_pillows([options["pillow_name"]])
        to: str | int = "earliest"
        if options["latest"]:
            to = "latest"
        elif options["offset"] is not None:
            to = int(options["offset"])
        elif options["timestamp"]:
            to = str(options["timestamp"])
        with cli.operation("ptop_reset_checkpoint"):
            ops.reset_checkpoint(
                cli.checkpoint_id(pillow),
                to=to,
                postgres_url=cli.postgres_url(),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                partition=None,
                topics=cli.topics(pillow),
                ui=cli.CommandUi(self),
                **cli.confirm_options(options),
            )
