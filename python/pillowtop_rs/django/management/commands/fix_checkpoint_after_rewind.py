"""``fix_checkpoint_after_rewind <pillow_name> [--by-partition]`` (CommCare's hqadmin command).

Sets the pillow's checkpoint to its historical maximum from the daily checkpoint history (which
the running pillows record themselves): the snapshot with the largest sum of offsets, or with
``--by-partition`` the maximum of each partition over the newest 10 snapshots. CommCare's two
questions (``y`` or ``yes``); one transaction; refused while the pillow has a live process unless
``--force``. ``--noinput``, ``--dry-run``, ``--force`` and ``--json`` are additions.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Update the checkpoint of a pillow that has been rewound to its historical maximum"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("pillow_name")
        parser.add_argument(
            "--by-partition",
            action="store_true",
            help="the maximum of each partition over the newest 10 snapshots",
        )
        cli.add_confirm_arguments(parser, "the pillow is running")
        parser.add_argument("--json", action="store_true", help="print the plan as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        (pillow,) = cli.get_pillows([options["pillow_name"]])
        with cli.operation("fix_checkpoint_after_rewind"):
            ops.fix_checkpoint_after_rewind(
                cli.checkpoint_id(pillow),
                postgres_url=cli.postgres_url(),
                by_partition=bool(options["by_partition"]),
                json=bool(options["json"]),
                ui=cli.CommandUi(self),
                **cli.confirm_options(options),
            )
