"""How every `regionlock` command reports bad usage or bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from typing import NoReturn


class UsageError(Exception):
    """Bad usage or bad input: reported as one line on stderr, exit code 2."""


def fail(message: str) -> NoReturn:
    """Report bad input the way every subcommand does: one line on stderr, exit code 2 (by cli.main)."""
    raise UsageError(message)


def report(prog: str, message: object) -> int:
    """Print `prog: message` as the one line on stderr; the exit code of bad usage."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def exit_usage(prog: str, message: object) -> NoReturn:
    """Report bad input at once, for subcommands that also run without cli.main (their tests call them)."""
    raise SystemExit(report(prog, message)) from None
