"""``ptop_reindexer_v2 <pillow_name>``: rebuild a pillow's index or reporting table while it runs.

The index of an Elasticsearch processor, or the table of a ``postgres_table`` processor.

CommCare's ``ptop_reindexer_v2`` rebuilds an index from the primary database, resumably
(``--reset`` starts over), in chunks (``--chunksize``), restricted by ``--domain`` and
``--start-date``/``--end-date``; its twelve-step ``REINDEX_PROCESS.md`` around it (a new index,
dual writes, verification, stopping pillows, copying checkpoints, the alias swap, a rollback
window) is manual. Here it is one command over ``pillowtop_rs.ops.reindex`` (the CLI's
``pillowtop reindex``): the live pillow writes to both indices during the rebuild, nothing is
stopped, and ``--rollback`` / ``--abort`` / ``--status`` act on the run.

The positional argument is the pillow's name (CommCare's is a reindexer's name: each reindexer
there belongs to one pillow's index). The source is the table the documents are copied from:
``--source-table`` with ``--id-column`` and ``--doc-column`` (a JSON column), or ``--model
app_label.ModelName`` (``--id-field``, default the primary key): each row's fields are the
document, as ``ModelDocumentStore`` reads them. As in CommCare, a run that has not
ended is resumed, not started again; ``--reset`` abandons it and starts anew. A reporting table
is rebuilt beside itself and swapped in by renames in one transaction: its name stays.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pillowtop_rs import ops
from pillowtop_rs.django import cli


class Command(BaseCommand):
    """The management command (see the module docstring)."""

    help = "Rebuild a pillow's Elasticsearch index or reporting table without stopping the pillow"

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command line."""
        parser.add_argument("pillow_name")
        parser.add_argument(
            "--processor",
            help="the Elasticsearch processor (index or alias) or postgres_table processor "
            "(table), if several",
        )
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--source-table", help="the table the documents are copied from")
        source.add_argument(
            "--model",
            help="app_label.ModelName: its table, each row's fields the document "
            "(as ModelDocumentStore reads them)",
        )
        source.add_argument(
            "--from-kafka",
            action="store_true",
            help="copy the newest change of each document from the pillow's topics "
            "(changes that embed their documents)",
        )
        parser.add_argument("--since", help="with --from-kafka: from this date or ISO time")
        parser.add_argument("--id-column", default="id", help="with --source-table")
        parser.add_argument("--doc-column", default="doc", help="with --source-table")
        parser.add_argument("--id-field", default="pk", help="with --model: the id's field")
        parser.add_argument("--chunksize", type=int, default=1000, help="documents per chunk")
        parser.add_argument("--slices", type=int, default=1, help="concurrent backfill slices")
        parser.add_argument("--domain")
        parser.add_argument("--date-field", help="a (dotted) document field for the dates")
        parser.add_argument("--start-date")
        parser.add_argument("--end-date")
        parser.add_argument(
            "--keep-old", type=int, default=48 * 3600, help="seconds the old index is kept"
        )
        parser.add_argument("--new-index", help="the new index's name")
        parser.add_argument(
            "--reset", action="store_true", help="abandon an unfinished run and start anew"
        )
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--status", action="store_true", help="show the pillow's runs")
        action.add_argument("--rollback", action="store_true", help="undo the swap")
        action.add_argument("--abort", action="store_true", help="abandon the run")
        cli.add_confirm_arguments(parser, force_help="the node's free disk looks too small")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the command."""
        pillow = cli.get_pillow(options["pillow_name"])
        common: dict[str, Any] = {
            "postgres_url": cli.postgres_url(),
            "kafka_bootstrap": cli.kafka_bootstrap(),
            "kafka_config": cli.kafka_config(),
            "processor": options["processor"],
            "ui": cli.CommandUi(self),
        }
        confirm = cli.confirm_options(options)
        with cli.operation("ptop_reindexer_v2"):
            if options["status"] or options["rollback"] or options["abort"]:
                action = next(a for a in ("status", "rollback", "abort") if options[a])
                self._exit(ops.reindex(pillow, action, noinput=confirm["noinput"], **common))
                return
            unfinished = _unfinished(pillow, common)
            if unfinished and not options["reset"]:
                self._exit(ops.reindex(pillow, "resume", noinput=True, **common))
                return
            if unfinished:
                self._exit(ops.reindex(pillow, "abort", noinput=True, **common))
            source: tuple[str, str, str] | None = None
            since_ms = _since_ms(options["since"]) if options["since"] else None
            if options["model"]:
                source = _model_source(options["model"], options["id_field"])
            elif options["source_table"]:
                source = (options["source_table"], options["id_column"], options["doc_column"])
            elif not options["from_kafka"]:
                raise CommandError(
                    "give the source: --model, --source-table (and its columns) or --from-kafka"
                )
            self._exit(
                ops.reindex(
                    pillow,
                    "start",
                    source=source,
                    from_kafka=options["from_kafka"],
                    since_ms=since_ms,
                    chunk_size=options["chunksize"],
                    slices=options["slices"],
                    domain=options["domain"],
                    date_field=options["date_field"],
                    start_date=options["start_date"],
                    end_date=options["end_date"],
                    keep_old=options["keep_old"],
                    new_index=options["new_index"],
                    noinput=confirm["noinput"],
                    dry_run=confirm["dry_run"],
                    force=confirm["force"],
                    **common,
                )
            )

    @staticmethod
    def _exit(status: int) -> None:
        if status != 0:
            raise CommandError(f"ptop_reindexer_v2 exited with status {status}", returncode=status)


class _Quiet:
    """A ui that keeps what it is given (to read ``status`` as JSON)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def out(self, line: str) -> None:
        self.lines.append(line)

    def err(self, line: str) -> None:
        self.lines.append(line)

    def read_answer(self) -> str:
        return ""


def _since_ms(text: str) -> int:
    """Return ``--since`` (a date or an ISO time; naive means UTC) in ms since the epoch."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError as e:
        raise CommandError(f"--since {text!r}: {e}") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def _model_source(label: str, id_field: str) -> tuple[str, str, str]:
    """Return the table of model ``label``, its id column, and ``*`` (each row a document)."""
    from django.apps import apps

    try:
        model = apps.get_model(label)
    except (LookupError, ValueError) as e:
        raise CommandError(f"--model {label}: {e}") from e
    meta = model._meta
    field = meta.pk if id_field == "pk" else meta.get_field(id_field)
    column = getattr(field, "column", None)
    if not column:
        raise CommandError(f"--model {label}: {id_field} is not a column of the model")
    return (meta.db_table, column, "*")


def _no_ui(common: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in common.items() if k != "ui"}


def _unfinished(pillow: Any, common: dict[str, Any]) -> bool:
    """Whether the pillow has a run that has not ended."""
    quiet = _Quiet()
    ops.reindex(pillow, "status", json=True, ui=quiet, **_no_ui(common))
    text = "\n".join(quiet.lines)
    runs = json.loads(text) if text.strip().startswith("[") else []
    return any(r.get("finished_at") is None for r in runs)
