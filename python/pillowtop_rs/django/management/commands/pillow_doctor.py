"""``pillow_doctor [pillow_name ...]``: which processor holds a pillow back (``pillowtop doctor``).

Samples each pillow's checkpoints, Kafka's high-water marks and its live processes' heartbeats
twice, ``--interval`` seconds apart, and prints per pillow: the input and processing rates, the
backlog and catch-up time, each processor's time per change and share of the pillow's time (or,
with independent processors, its own backlog and rate), the processor that holds the pillow back,
the catch-up times once it is split out, and the ``split_pillow_checkpoints`` / ``run_ptop``
commands of that split. Ours: CommCare has no such command. Exit status 6 when a pillow falls
behind, catches up or is stalled; 0 when every pillow keeps up.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Say which processor holds each pillow back, and how to split it out"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument(
            "pillow_names",
            nargs="*",
            metavar="pillow_name",
            help="pillows of settings.PILLOWTOPS (default: every configured pillow)",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=15.0,
            help="seconds between the two samples (default 15; heartbeats come every 5 s)",
        )
        parser.add_argument(
            "--max-time-lag",
            type=int,
            default=60,
            help="a time lag up to this many seconds that does not grow is keeping up",
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        names = options["pillow_names"] or cli.all_pillow_names()
        pillows = cli.get_pillows(names)
        if not pillows:
            self.stdout.write("no pillows configured")
            return
        by_id = {cli.checkpoint_id(p): p.name for p in pillows}
        with cli.operation("pillow_doctor"):
            found = ops.doctor(
                list(by_id),
                postgres_url=cli.postgres_url(),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                interval=options["interval"],
                max_time_lag=options["max_time_lag"],
                json=bool(options["json"]),
                django=True,
                names=by_id,
                ui=cli.CommandUi(self),
            )
        behind = [d["pillow_name"] for d in found if d["verdict"] in FINDINGS]
        if behind:
            raise CommandError(f"{', '.join(behind)}: behind (see above)", returncode=cli.FINDING)


#: The verdicts that make the command exit with ``cli.FINDING``.
FINDINGS = frozenset({"falling_behind", "catching_up", "stalled"})
