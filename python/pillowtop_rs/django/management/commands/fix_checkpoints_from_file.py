"""``fix_checkpoints_from_file <json> [--noinput]`` (CommCare's hqadmin command).

The file maps pillow names to checkpoints: ``{pillow_name: {"topic,partition": offset}}`` (or
CommCare's sequence text, that object as a JSON string). The plan shows every partition's current
and new offset; one question (CommCare asks per pillow); each checkpoint in one transaction;
refused while a pillow involved has a live process unless ``--force``.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Set pillow checkpoints to the offsets of a JSON file"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("filename")
        cli.add_confirm_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print the plan as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        path = str(options["filename"])
        try:
            with open(path, encoding="utf-8") as f:
                by_pillow = json.load(f)
        except (OSError, ValueError) as e:
            raise CommandError(f"cannot read the checkpoint file {path}: {e}") from e
        if not isinstance(by_pillow, dict) or not by_pillow:
            raise CommandError(f"{path}: expected an object {{pillow_name: checkpoint}}")
        pillows = cli.get_pillows(list(by_pillow))
        checkpoints = {cli.checkpoint_id(p): by_pillow[p.name] for p in pillows}
        with cli.operation("fix_checkpoints_from_file"):
            ops.fix_checkpoints(
                checkpoints,
                postgres_url=cli.postgres_url(),
                json=bool(options["json"]),
                ui=cli.CommandUi(self),
                **cli.confirm_options(options),
            )
