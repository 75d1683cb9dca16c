"""``merge_pillow_checkpoints <source_pillow> [...] <target_pillow>`` (CommCare's command).

The target gets the minimum offset of every partition over the sources, through
``pillowtop_rs.ops.merge_checkpoints`` (the CLI's ``merge``): CommCare's prompts and exit statuses
(1 declined, 2 the sources' partitions disagree, 3 reprocessing declined), with the fixes of
docs/commcare-pillowtop.md §9 #15-#17 (answering ``y`` to the reprocessing question proceeds; only
the target's topics are checked and written; one transaction). ``--noinput``, ``--dry-run`` and
``--force`` are additions.

``--processor NAME [--online] [--timeout S]`` (ours) is the reverse of
``split_pillow_checkpoints --processor``: the one source pillow (the processor was split into it)
hands the processor back to the target pillow (it was split out of), which runs it again from
its position; ``--online`` while both run.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Merge the checkpoints of several pillows into a new pillow's checkpoint"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument(
            "pillow_names",
            nargs="+",
            metavar="pillow_name",
            help="the source pillows, then the target pillow (last)",
        )
        parser.add_argument(
            "--processor",
            metavar="NAME",
            help="take back only this processor, split out of the target into the one source",
        )
        parser.add_argument(
            "--online",
            action="store_true",
            help="with --processor: while both pillows run",
        )
        parser.add_argument(
            "--timeout",
            type=int,
            default=60,
            help="with --online: seconds to wait for the running processes (default 60)",
        )
        cli.add_confirm_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        names: list[str] = options["pillow_names"]
        if len(names) < 2:
            raise CommandError(
                "give at least one source pillow and the target pillow", returncode=2
            )
        processor: str | None = options["processor"]
        if options["online"] and processor is None:
            raise CommandError("--online needs --processor NAME: it takes back one processor")
        if processor is not None and len(names) != 2:
            raise CommandError("--processor takes one processor back from one source pillow")
        pillows = cli.get_pillows(names)
        *sources, target = pillows
        with cli.operation("merge_pillow_checkpoints"):
            ops.merge_checkpoints(
                [cli.checkpoint_id(p) for p in sources],
                cli.checkpoint_id(target),
                postgres_url=cli.postgres_url(),
                topics=None if processor else cli.topics(target),
                processor=processor,
                online=options["online"],
                timeout=options["timeout"],
                ui=cli.CommandUi(self),
                **cli.confirm_options(options),
            )
