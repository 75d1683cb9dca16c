"""The ``pillowtop`` console script of the wheel: the operator CLI, in this process."""

from __future__ import annotations

import sys

from pillowtop_rs._native import run_cli


def main() -> None:
    """Run ``pillowtop <argv>`` and exit with its status (see ``pillowtop --help``)."""
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
