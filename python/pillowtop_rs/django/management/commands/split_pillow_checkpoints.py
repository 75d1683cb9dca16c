"""``split_pillow_checkpoints <source_pillow> <target_pillow> [...]`` (CommCare's command).

Copies every checkpoint row of the source pillow to each target, through ``pillowtop split``:
CommCare's prompts and exit status 1 when one is declined; plus the fixes of reference §9 #14
(topic mismatches reported against the targets' topics, one transaction, refusal while a pillow
involved has a live process unless ``--force``). ``--noinput``, ``--dry-run`` and ``--force`` are
additions.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Split a pillow's checkpoint into checkpoints for one or more new pillows"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("pillow_names", nargs="+", metavar="pillow_name")
        cli.add_confirm_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        names: list[str] = options["pillow_names"]
        if len(names) < 2:
            raise CommandError("give the source pillow and at least one target pillow")
        source, *targets = cli.get_pillows(names)
        argv = ["split", cli.checkpoint_id(source)]
        argv += [cli.checkpoint_id(t) for t in targets]
        for target in targets:
            topics = ",".join(cli.topics(target))
            argv += ["--target-topics", f"{cli.checkpoint_id(target)}={topics}"]
        argv += cli.confirm_flags(options)
        cli.run_cli(argv + cli.postgres_args())
