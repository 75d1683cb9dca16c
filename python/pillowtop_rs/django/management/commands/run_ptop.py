"""``run_ptop``: run pillows (CommCare's command line, plus ``--until-idle`` and ``--max-changes``).

Differences from CommCare, on purpose:

* every problem (unknown pillow or key, malformed ``PILLOWTOPS``, impossible process layout)
  exits non-zero with a message before anything runs (CommCare exited 0 for an unknown key and
  raised ``AssertionError`` for a bad layout);
* ``--processor-chunk-size 0`` is accepted and means "every processor serially";
* ``--all`` / ``--pillow-key`` start one child process per pillow with ``subprocess`` (a fresh
  interpreter, never a fork) and forward SIGTERM to them; there is no restart loop (the process
  supervisor restarts what exits);
* ``--gevent-workers W`` runs the ``W`` virtual workers (CommCare's numbering) as threads of
  this process, each with its own pillow, consumer and checkpoint rows; a worker that fails stops
  the others after their final checkpoint and the command exits non-zero (CommCare restarted the
  worker in place);
* SIGTERM stops cleanly: the chunk in progress finishes, a final checkpoint is written, and the
  command exits 0. A second SIGTERM raises ``ShutdownRequested`` at once (exit status 1, the
  unfinished chunk is not checkpointed). SIGINT exits with status 130 after the same cleanup.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from pillowtop_rs import Pillow, RunSummary, registry
from pillowtop_rs.django import cli
from pillowtop_rs.django import settings as pt_settings
from pillowtop_rs.exceptions import PillowtopError, ShutdownRequested
from pillowtop_rs.workers import WorkerFailed, run_virtual_workers, worker_layouts

#: CommCare's ``DEFAULT_PROCESSOR_CHUNK_SIZE``.
DEFAULT_PROCESSOR_CHUNK_SIZE = 10


@contextmanager
def sigterm_requests_shutdown() -> Iterator[None]:
    """SIGTERM → ``pillowtop_rs.request_shutdown()``; a second one raises ``ShutdownRequested``."""
    from pillowtop_rs import request_shutdown

    received = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received > 1:
            raise ShutdownRequested("a second SIGTERM: stopping at once")
        request_shutdown()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Run pillows listed in settings."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument(
            "--all",
            action="store_true",
            dest="run_all",
            default=False,
            help="Run all pillows from settings - use for local dev",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            dest="list_all",
            default=False,
            help="List pillowtop names",
        )
        parser.add_argument(
            "--list-checkpoints",
            action="store_true",
            dest="list_checkpoints",
            default=False,
            help="Print all pillow doc ids.",
        )
        parser.add_argument(
            "--pillow-key",
            dest="pillow_key",
            default=None,
            help="Run a specific key of a group of pillows from settings.PILLOWTOPS list",
        )
        parser.add_argument(
            "--pillow-name",
            dest="pillow_name",
            default=None,
            help="Run a single specific pillow name from settings.PILLOWTOPS list",
        )
        parser.add_argument(
            "--num-processes",
            dest="num_processes",
            default=1,
            type=int,
            help="The number of processes that are expected to be run for this pillow",
        )
        parser.add_argument(
            "--process-number",
            dest="process_number",
            default=0,
            type=int,
            help="The process number of this pillow process. Should be between 0 and "
            "num-processes. It's expected that there will only be one process for each number "
            "running at once",
        )
        parser.add_argument(
            "--gevent-workers",
            dest="gevent_workers",
            default=0,
            type=int,
            help="Run this many virtual workers in this process (at least 2), each with its own "
            "consumer, partitions and checkpoint rows (CommCare's numbering); threads here, not "
            "gevent",
        )
        parser.add_argument(
            "--processor-chunk-size",
            dest="processor_chunk_size",
            default=DEFAULT_PROCESSOR_CHUNK_SIZE,
            type=int,
            help="The batch size for this pillow. Some pillows process changes in bulk, "
            "setting this value to 1 will process each change as it comes in (0: serially).",
        )
        parser.add_argument(
            "--dedicated-migration-process",
            action="store_true",
            dest="dedicated_migration_process",
            default=False,
            help="Set if you want to Move migrations on to side process",
        )
        parser.add_argument(
            "--exclude-ucrs",
            dest="exclude_ucrs",
            default="",
            type=str,
            help="comma-separated UCR tables IDs to exclude. Applicable for form/case/ucr pillows",
        )
        parser.add_argument(
            "--until-idle",
            action="store_true",
            default=False,
            help="Stop at the first idle tick once caught up (CommCare's forever=False)",
        )
        parser.add_argument(
            "--idle-timeout",
            type=float,
            default=None,
            help="Seconds without a message that make a feed tick (default 10, CommCare's)",
        )
        parser.add_argument(
            "--max-changes",
            type=int,
            default=None,
            help="Stop after this many changes",
        )
        parser.add_argument(
            "--max-message-bytes",
            type=int,
            default=None,
            help="Larger change messages become error rows without being parsed (default: "
            "PILLOWTOP_RS['MAX_MESSAGE_BYTES'], else each topic's max.message.bytes)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve the pillow's metrics (CommCare's names) in Prometheus text format at "
            "/metrics on this port (default: PILLOWTOP_RS['METRICS_PORT'], else none)",
        )
        parser.add_argument(
            "--background-checkpoints",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Write checkpoints off the pillow's thread, or in line (default: "
            "PILLOWTOP_RS['BACKGROUND_CHECKPOINTS'], else the pillow's own setting)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        num_processes: int = options["num_processes"]
        process_number: int = options["process_number"]
        chunk_size: int = options["processor_chunk_size"]
        dedicated: bool = options["dedicated_migration_process"]
        if not 0 <= process_number < num_processes:
            raise CommandError(
                f"--process-number {process_number} must be between 0 and "
                f"--num-processes {num_processes} (exclusive)"
            )
        if dedicated and num_processes < 2:
            raise CommandError(
                "--dedicated-migration-process needs --num-processes of at least 2: process 0 "
                "only runs migrations, so with one process nothing would consume"
            )
        if chunk_size < 0:
            raise CommandError(f"--processor-chunk-size must be 0 or more, got {chunk_size}")
        if options["gevent_workers"] and options["gevent_workers"] < 2:
            raise CommandError(
                f"--gevent-workers must be at least 2 (got {options['gevent_workers']}); leave "
                "it out to run one pillow in this process"
            )
        if options["max_changes"] is not None and options["max_changes"] < 1:
            raise CommandError("--max-changes must be at least 1")
        try:
            sections = registry.get_pillow_configs_by_section()
        except PillowtopError as e:
            raise CommandError(str(e)) from e

        if options["list_all"]:
            self.stdout.write("\nPillows registered in system:")
            for section, configs in sections.items():
                for config in configs:
                    self.stdout.write(f"{section}: {config.name}")
            self.stdout.write("\n\tRun with --pillow-name <name> to run a pillow")
            self.stdout.write(
                "\n\tRun with --pillow-key <key> to run a group of pillows together\n"
            )
            return

        run_all = options["run_all"]
        pillow_name = options["pillow_name"]
        pillow_key = options["pillow_key"]
        if sum(bool(x) for x in (run_all, pillow_name, pillow_key)) > 1:
            raise CommandError("give only one of --all, --pillow-key and --pillow-name")
        if pillow_name:
            self.run_one(pillow_name, options)
        elif run_all or pillow_key:
            if pillow_key and pillow_key not in sections:
                raise CommandError(
                    f"key {pillow_key} is not in settings.PILLOWTOPS, legal keys are: "
                    f"{list(sections)}"
                )
            configs = [c for s, cs in sections.items() for c in cs if run_all or s == pillow_key]
            for config in configs:  # every pillow must build before any starts
                try:
                    registry.build_pillow(config)
                except PillowtopError as e:
                    raise CommandError(str(e)) from e
            self.run_children([c.name for c in configs], options)
        elif options["list_checkpoints"]:
            for configs in sections.values():
                for config in configs:
                    try:
                        pillow = registry.build_pillow(config)
                    except PillowtopError as e:
                        raise CommandError(str(e)) from e
                    self.stdout.write(cli.checkpoint_id(pillow))
        else:
            raise CommandError("No command set, please see --help for runtime instructions")

    def run_one(self, name: str, options: dict[str, Any]) -> None:
        """Run one pillow in this process until it stops."""
        factory_options: dict[str, Any] = {
            "num_processes": options["num_processes"],
            "process_num": options["process_number"],
            "processor_chunk_size": options["processor_chunk_size"],
            "dedicated_migration_process": options["dedicated_migration_process"],
        }
        if options["exclude_ucrs"]:
            factory_options["exclude_ucrs"] = options["exclude_ucrs"].split(",")
        pillow = cli.get_pillow(name, **factory_options)
        kafka = cli.kafka_bootstrap()
        postgres = cli.postgres_url()
        until_idle: bool = options["until_idle"]
        max_changes: int | None = options["max_changes"]
        extra: dict[str, Any] = {"kafka_setting": pt_settings.kafka_bootstrap_setting()}
        if options["idle_timeout"] is not None:
            extra["idle_timeout"] = options["idle_timeout"]
        max_message_bytes = options["max_message_bytes"] or pt_settings.max_message_bytes()
        if max_message_bytes is not None:
            extra["max_message_bytes"] = max_message_bytes
        budget = pt_settings.postgres_outage_budget()
        if budget is not None:
            extra["postgres_outage_budget"] = budget
        extra.update(self.observability_options(options))
        workers: int = options.get("gevent_workers") or 0
        try:
            layouts = (
                worker_layouts(
                    options["num_processes"],
                    options["process_number"],
                    workers,
                    options["dedicated_migration_process"],
                )
                if workers
                else None
            )
        except PillowtopError as e:
            raise CommandError(str(e)) from e
        if layouts is not None:
            self.run_workers(name, factory_options, layouts, kafka, postgres, extra, options)
            return
        try:
            with sigterm_requests_shutdown():
                while True:
                    self.stdout.write(f"Starting pillow {name}.run()")
                    self.stdout.flush()
                    summary = pillow.run(
                        kafka=kafka,
                        postgres=postgres,
                        process_number=options["process_number"],
                        num_processes=options["num_processes"],
                        dedicated_migration_process=options["dedicated_migration_process"],
                        until_idle=until_idle,
                        max_changes=max_changes,
                        on_chunk=close_old_connections,
                        **extra,
                    )
                    self.write_summary(name, summary)
                    if summary.stop_reason != "feed_ended" or until_idle or max_changes:
                        return
                    time.sleep(1)
        except PillowtopError as e:
            raise CommandError(f"pillow {name} failed: {e}") from e
        except ShutdownRequested as e:
            raise CommandError(
                f"pillow {name} stopped at once ({e}); the chunk in progress was not checkpointed"
            ) from e
        except KeyboardInterrupt as e:
            # Ctrl-C is a graceful stop (the final checkpoint is written) with the same summary
            # line as SIGTERM; the exit status stays the shell's 130 for an interrupt.
            interrupted: RunSummary | None = getattr(e, "summary", None)
            if interrupted is not None:
                self.write_summary(name, interrupted)
                self.stdout.flush()
            raise CommandError(f"pillow {name} interrupted", returncode=130) from e

    def run_workers(
        self,
        name: str,
        factory_options: dict[str, Any],
        layouts: list[tuple[int, int]],
        kafka: str,
        postgres: str,
        extra: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        """``--gevent-workers``: one pillow per virtual worker, all in this process."""
        if "metrics_port" in extra:
            raise CommandError(
                "--metrics-port (PILLOWTOP_RS['METRICS_PORT']) serves one pillow's metrics and "
                "cannot yet be shared by virtual workers: use PILLOWTOP_RS['METRICS_SINK'] (one "
                "sink, called by every worker's thread) or run without --gevent-workers"
            )

        def make(process_num: int, num_processes: int) -> Pillow:
            # CommCare calls the factory once per worker with the worker's own numbering.
            return cli.get_pillow(
                name,
                **{**factory_options, "num_processes": num_processes, "process_num": process_num},
            )

        self.stdout.write(
            f"Starting pillow {name} as {len(layouts)} virtual workers: "
            + ", ".join(f"{p} of {n}" for p, n in layouts)
        )
        self.stdout.flush()
        try:
            with sigterm_requests_shutdown():
                results = run_virtual_workers(
                    make,
                    layouts,
                    kafka=kafka,
                    postgres=postgres,
                    dedicated_migration_process=options["dedicated_migration_process"],
                    until_idle=options["until_idle"],
                    max_changes=options["max_changes"],
                    on_chunk=close_old_connections,
                    **extra,
                )
        except WorkerFailed as e:
            raise CommandError(f"pillow {name}: {e}") from e
        except KeyboardInterrupt as e:
            raise CommandError(f"pillow {name} interrupted", returncode=130) from e
        for r in results:
            if r.summary is not None:
                self.write_summary(f"{name}[{r.process_num} of {r.num_processes}]", r.summary)

    @staticmethod
    def observability_options(options: dict[str, Any]) -> dict[str, Any]:
        """Return ``Pillow.run()`` keywords from the settings and the flags.

        Kafka client properties, ``PTOP_CHECKPOINT_DELAY_OVERRIDE``, background checkpoints,
        metrics and log output; a settings problem becomes ``CommandError``.
        """
        try:
            extra: dict[str, Any] = {"log_output": pt_settings.log_output()}
            kafka_config = pt_settings.kafka_client_config()
            if kafka_config:
                extra["kafka_config"] = kafka_config
            delay = pt_settings.checkpoint_delay_override()
            if delay is not None:
                extra["max_checkpoint_delay"] = delay
            background = options.get("background_checkpoints")
            if background is None:
                background = pt_settings.background_checkpoints()
            if background is not None:
                extra["background_checkpoints"] = background
            port = options.get("metrics_port")
            if port is None:
                port = pt_settings.metrics_port()
            if port is not None:
                extra["metrics_port"] = port
            sink = pt_settings.metrics_sink()
            if sink is not None:
                extra["metrics_sink"] = sink
        except ImproperlyConfigured as e:
            raise CommandError(str(e)) from e
        return extra

    def write_summary(self, name: str, summary: RunSummary) -> None:
        """Write the line a stopped run ends with (SIGTERM and Ctrl-C alike)."""
        self.stdout.write(
            f"Pillow {name}.run() stopped ({summary.stop_reason}): "
            f"{summary.changes} changes, {summary.failed} failed, "
            f"{summary.invalid} invalid, {summary.checkpoints} checkpoints"
        )

    def run_children(self, names: list[str], options: dict[str, Any]) -> None:
        """One child process per pillow (a fresh interpreter: never a fork); wait for all."""
        argv_tail = ["--processor-chunk-size", str(options["processor_chunk_size"])]
        if options["exclude_ucrs"]:
            argv_tail += ["--exclude-ucrs", options["exclude_ucrs"]]
        if options["until_idle"]:
            argv_tail.append("--until-idle")
        if options["max_changes"] is not None:
            argv_tail += ["--max-changes", str(options["max_changes"])]
        if options["idle_timeout"] is not None:
            argv_tail += ["--idle-timeout", str(options["idle_timeout"])]
        if options["max_message_bytes"] is not None:
            argv_tail += ["--max-message-bytes", str(options["max_message_bytes"])]
        if options.get("background_checkpoints") is not None:
            argv_tail.append(
                "--background-checkpoints"
                if options["background_checkpoints"]
                else "--no-background-checkpoints"
            )
        if options.get("metrics_port") is not None:
            raise CommandError(
                "--metrics-port serves one pillow: give it with --pillow-name (each child of "
                "--all / --pillow-key would need a port of its own)"
            )
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        children: dict[str, subprocess.Popen[bytes]] = {}

        def forward(signum: int, frame: FrameType | None) -> None:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            for name in names:
                argv = [sys.executable, "-m", "django", "run_ptop", "--pillow-name", name]
                children[name] = subprocess.Popen(argv + argv_tail, env=env)
            self.stdout.write(
                f"[pillowtop] all processes started, pids: {[c.pid for c in children.values()]}"
            )
            self.stdout.flush()
            failed = {name: child.wait() for name, child in children.items()}
        except KeyboardInterrupt as e:
            forward(signal.SIGINT, None)
            for child in children.values():
                child.wait()
            raise CommandError("interrupted", returncode=130) from e
        finally:
            signal.signal(signal.SIGTERM, previous)
        bad = {n: s for n, s in failed.items() if s}
        if bad:
            raise CommandError(f"pillow processes failed (name: exit status): {bad}")
