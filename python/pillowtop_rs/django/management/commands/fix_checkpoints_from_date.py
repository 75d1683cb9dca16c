"""``fix_checkpoints_from_date <YYYY-MM-DD> [--pillows REGEX ...]`` (CommCare's hqadmin command).

Sets each matching pillow's checkpoint to its newest history snapshot before the date. With no
``--pillows``, every checkpoint that has a snapshot before the date, after CommCare's extra
question (CommCare takes every configured pillow; one without a snapshot could not be fixed
anyway). One question for the whole plan (CommCare asks per pillow); each checkpoint in one
transaction; refused while a pillow involved has a live process unless ``--force``.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops, registry
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Set pillow checkpoints to their history snapshot before a date"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("date", help="YYYY-MM-DD")
        parser.add_argument(
            "--pillows",
            nargs="+",
            default=[],
            metavar="REGEX",
            help="only the pillows whose name matches one of these regular expressions",
        )
        cli.add_confirm_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print the plan as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        patterns: list[str] = options["pillows"]
        ids: list[str] = []
        if patterns:
            try:
                regexes = [re.compile(p) for p in patterns]
            except re.error as e:
                raise CommandError(f"invalid --pillows pattern: {e}") from e
            names = [
                c.name
                for c in registry.get_all_pillow_configs()
                if any(r.search(c.name) for r in regexes)
            ]
            if not names:
                raise CommandError(f"no configured pillow matches {patterns}")
            ids = list(dict.fromkeys(cli.checkpoint_id(p) for p in cli.get_pillows(names)))
        with cli.operation("fix_checkpoints_from_date"):
            ops.fix_checkpoints_from_date(
                str(options["date"]),
                ids,
                postgres_url=cli.postgres_url(),
                json=bool(options["json"]),
                ui=cli.CommandUi(self),
                **cli.confirm_options(options),
            )
