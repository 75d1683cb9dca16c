"""``pillow_topic_assignments <pillow> <process_count> [--csv]`` (CommCare's command).

Prints which process reads which partitions, through ``pillowtop assignments``; additions:
``--dedicated-migration-process`` and ``--gevent-workers`` use the same layout function as the
runner (docs/commcare-pillowtop.md §9 #20). ``--csv`` prints ``process,topic,partition`` rows.
"""

from __future__ import annotations

import csv
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Print the partitions each process of a pillow reads"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("pillow_name", help="a pillow of settings.PILLOWTOPS")
        parser.add_argument("process_count", type=int, help="how many processes run the pillow")
        parser.add_argument("--csv", action="store_true", help="process,topic,partition rows")
        parser.add_argument(
            "--dedicated-migration-process",
            action="store_true",
            help="process 0 only runs migrations and reads nothing (run_ptop's option)",
        )
        parser.add_argument(
            "--gevent-workers",
            type=int,
            default=None,
            help="virtual workers per process (run_ptop's option)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        (pillow,) = cli.get_pillows([options["pillow_name"]])
        count: int = options["process_count"]
        dedicated: bool = options["dedicated_migration_process"]
        if options["csv"]:
            self.write_csv(cli.topics(pillow), count, dedicated)
            return
        with cli.operation("pillow_topic_assignments"):
            ops.assignments(
                cli.topics(pillow),
                count,
                kafka=cli.kafka_bootstrap(),
                kafka_config=cli.kafka_config(),
                dedicated=dedicated,
                workers=options["gevent_workers"],
                ui=cli.CommandUi(self),
            )

    def write_csv(self, topics: list[str], count: int, dedicated: bool) -> None:
        """Print the layout as CSV (partition counts from Kafka)."""
        from pillowtop_rs import partition_assignment, topic_partitions
        from pillowtop_rs.exceptions import PillowtopError

        try:
            partitions = topic_partitions(
                cli.kafka_bootstrap(), topics, properties=sorted(cli.kafka_config().items())
            )
        except PillowtopError as e:
            raise CommandError(f"pillow_topic_assignments: {e}") from e
        writer = csv.writer(self.stdout)
        writer.writerow(["process", "topic", "partition"])
        for process in range(count):
            try:
                mine = partition_assignment(partitions, count, process, dedicated)
            except PillowtopError as e:
                raise CommandError(str(e)) from e
            for topic, partition in mine:
                writer.writerow([process, topic, partition])
