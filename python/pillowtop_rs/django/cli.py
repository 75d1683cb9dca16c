"""Helpers shared by the management commands: the operations' ``Ui``, exit statuses, pillow lookup.

The commands call ``pillowtop_rs.ops`` (the Rust operations, in this process); no command line is
built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser

from pillowtop_rs import registry
from pillowtop_rs.django import settings as pt_settings
from pillowtop_rs.exceptions import OperationAborted, PillowtopError

if TYPE_CHECKING:
    from django.core.management.base import BaseCommand

    from pillowtop_rs import Pillow

#: The exit status of a failed operation (the CLI's 4).
FAILED = 4
#: The exit status of ``validate_kafka_pillow_checkpoints`` when a checkpoint is invalid (5).
INVALID = 5
#: The exit status of ``pillow_doctor`` when a pillow falls behind, catches up or is stalled (6).
FINDING = 6


class CommandUi:
    """A management command as the operations' ``Ui``.

    Lines go to its ``self.stdout`` and ``self.stderr`` and answers come from an input function
    (``input`` unless given), so ``call_command(..., stdout=buf)`` captures the plan, the messages
    and the questions.
    """

    def __init__(self, command: BaseCommand, read: Callable[[], str] | None = None) -> None:
        self.command = command
        self.read = read

    def out(self, line: str) -> None:
        """Write ``line`` to the command's stdout."""
        self.command.stdout.write(line)
        self.command.stdout.flush()

    def err(self, line: str) -> None:
        """Write ``line`` to the command's stderr."""
        self.command.stderr.write(line)
        self.command.stderr.flush()

    def read_answer(self) -> str:
        """Read one answer with the input function (``EOFError`` at the end of input)."""
        return (self.read or input)()


@contextmanager
def operation(what: str) -> Iterator[None]:
    """Turn the operation's exceptions into ``CommandError`` with the CLI's exit statuses.

    ``OperationAborted`` keeps CommCare's status (1 declined, 2 inconsistent merge sources,
    3 reprocessing declined); any other ``PillowtopError`` is status 4.
    """
    try:
        yield
    except OperationAborted as e:
        raise CommandError(f"{what}: {e}", returncode=e.exit_status) from e
    except PillowtopError as e:
        raise CommandError(f"{what} failed: {e}", returncode=FAILED) from e


def postgres_url() -> str:
    """Return the checkpoint database URL; a settings problem becomes ``CommandError``."""
    try:
        return pt_settings.postgres_url()
    except ImproperlyConfigured as e:
        raise CommandError(str(e)) from e


def kafka_bootstrap() -> str:
    """Return the Kafka bootstrap servers; a settings problem becomes ``CommandError``."""
    try:
        return pt_settings.kafka_bootstrap()
    except ImproperlyConfigured as e:
        raise CommandError(str(e)) from e


def kafka_config() -> dict[str, str]:
    """Return the librdkafka properties of ``PILLOWTOP_RS["KAFKA_OPTIONS"]`` / ``["KAFKA_CONFIG"]``.

    A settings problem becomes ``CommandError``.
    """
    try:
        return pt_settings.kafka_client_config()
    except ImproperlyConfigured as e:
        raise CommandError(str(e)) from e


def get_pillow(name: str, **options: Any) -> Pillow:
    """Return the pillow named ``name``; configuration problems become ``CommandError``."""
    try:
        return registry.get_pillow_by_name(name, **options)
    except PillowtopError as e:
        raise CommandError(str(e)) from e


def all_pillow_names() -> list[str]:
    """Return every configured pillow's name; a bad ``PILLOWTOPS`` becomes ``CommandError``."""
    try:
        return [c.name for c in registry.get_all_pillow_configs()]
    except PillowtopError as e:
        raise CommandError(str(e)) from e


def get_pillows(names: Sequence[str]) -> list[Pillow]:
    """Return the pillows named ``names`` (the whole registry is validated first)."""
    try:
        registry.get_all_pillow_configs()
    except PillowtopError as e:
        raise CommandError(str(e)) from e
    return [get_pillow(n) for n in names]


def checkpoint_id(pillow: Pillow) -> str:
    """Return the pillow's checkpoint id."""
    return str(pillow.checkpoint_id)


def topics(pillow: Pillow) -> list[str]:
    """Return the pillow's topics."""
    return [str(t) for t in pillow.topics]


def add_confirm_arguments(
    parser: CommandParser, force_help: str = "a pillow involved is running"
) -> None:
    """Declare ``--noinput``, ``--dry-run`` and ``--force`` (the operator CLI's switches)."""
    parser.add_argument("--noinput", action="store_true", help="answer every question yes")
    parser.add_argument("--dry-run", action="store_true", help="show the plan, write nothing")
    parser.add_argument("--force", action="store_true", help=f"proceed although {force_help}")


def confirm_options(options: dict[str, Any]) -> dict[str, bool]:
    """Return the ``noinput``, ``dry_run`` and ``force`` keywords of an operation."""
    return {n: bool(options.get(n)) for n in ("noinput", "dry_run", "force")}
