"""The `regionlock` command: the parser of every subcommand, and the one error path (exit code 2, one line)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from regionlock.service.cli.errors import UsageError, report
from regionlock.service.server.settings import SettingsError

log = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """argparse with bad usage reported as one line on stderr (exit code 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _version() -> str:
    """The installed package's version, from its metadata (pyproject.toml's at install time)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("regionlock")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from regionlock.service.cli import allowlist, bench, check, geo, policy, serve, token

    parser = OneLineParser(prog="regionlock", description="Region-lock decisions for device gateways.")
    parser.add_argument("--version", action="version", version=f"regionlock {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (serve, check, policy, geo, allowlist, token, bench):
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except (UsageError, SettingsError) as exc:
        return report("regionlock: error", exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`regionlock ... | head`): not an error, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
