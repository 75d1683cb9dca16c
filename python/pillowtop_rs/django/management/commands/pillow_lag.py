"""``pillow_lag [pillow_name ...]``: checkpoint lag and status (``pillowtop lag``).

Per checkpoint partition: offset, high-water mark, lag, seconds since the last checkpoint, age of
the oldest unprocessed change, and the live process that owns it. With no names, every configured
pillow. ``--metrics-port`` serves CommCare's lag gauges (``need_processing``...) in Prometheus
format, refreshed every ``--interval`` seconds (the equivalent of CommCare's
``pillow_datadog_metrics`` task).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Show how far behind each pillow's checkpoint is"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument(
            "pillow_names",
            nargs="*",
            metavar="pillow_name",
            help="pillows of settings.PILLOWTOPS (default: every configured pillow)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--interval", type=int, help="repeat every this many seconds")
        parser.add_argument("--metrics-port", type=int, help="serve Prometheus gauges here")
        parser.add_argument("--rounds", type=int, help="stop after this many rounds")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        names = options["pillow_names"] or cli.all_pillow_names()
        pillows = cli.get_pillows(names)
        with cli.operation("pillow_lag"):
            ops.lag(
                list(dict.fromkeys(cli.checkpoint_id(p) for p in pillows)),
                postgres_url=cli.postgres_url(),
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                json=bool(options["json"]),
                interval=options["interval"],
                metrics_port=options["metrics_port"],
                rounds=options["rounds"],
                ui=cli.CommandUi(self),
                topics={cli.checkpoint_id(p): cli.topics(p) for p in pillows},
            )
