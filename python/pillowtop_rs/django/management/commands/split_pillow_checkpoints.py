"""``split_pillow_checkpoints <source_pillow> <target_pillow> [...]`` (CommCare's command).

Copies every checkpoint row of the source pillow to each target, through
``pillowtop_rs.ops.split_checkpoints`` (the CLI's ``split``): CommCare's prompts and exit status 1
when one is declined; plus the fixes of docs/commcare-pillowtop.md §9 #14 (topic mismatches reported
against the targets' topics, one transaction, refusal while a pillow involved has a live process
unless ``--force``). ``--noinput``, ``--dry-run`` and ``--force`` are additions.

``--processor NAME [--online] [--timeout S]`` (ours) moves one processor of the source to the one
target with the processor's own position; ``--online`` while the source runs (either
``processor_checkpoints`` mode): no stop, nothing handled twice.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Split a pillow's checkpoint into checkpoints for one or more new pillows"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument(
            "pillow_names",
            nargs="+",
            metavar="pillow_name",
            help="the source pillow, then one or more target pillows",
        )
        parser.add_argument(
            "--processor",
            metavar="NAME",
            help="move only this processor, with its own position, to the one target pillow",
        )
        parser.add_argument(
            "--online",
            action="store_true",
            help="with --processor: hand it over while the source pillow runs",
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
            raise CommandError("give the source pillow and at least one target pillow")
        processor: str | None = options["processor"]
        if options["online"] and processor is None:
            raise CommandError("--online needs --processor NAME: it moves one processor")
        if processor is not None and len(names) != 2:
            raise CommandError("--processor moves one processor to one target pillow")
        source, *targets = cli.get_pillows(names)
        with cli.operation("split_pillow_checkpoints"):
            ops.split_checkpoints(
                cli.checkpoint_id(source),
                [cli.checkpoint_id(t) for t in targets],
                postgres_url=cli.postgres_url(),
                target_topics=None
                if processor
                else {cli.checkpoint_id(t): cli.topics(t) for t in targets},
                processor=processor,
                online=options["online"],
                timeout=options["timeout"],
                ui=cli.CommandUi(self),
                **cli.confirm_options(options),
            )
