"""The `regionlock serve` command: settings from flags, environment and config file, then the server."""

from __future__ import annotations

import argparse
from typing import Any

from regionlock.service.server.settings import DECLARED, ENV_PREFIX, help_text


def register(subparsers: Any) -> None:
    """Add the `serve` command to an argparse subparsers object: one flag per declared setting."""
    parser = subparsers.add_parser(
        "serve",
        help="serve DeviceCheck and Admin",
        description=(
            "Serve DeviceCheck and Admin. Settings come from flags, REGIONLOCK_* environment variables and a TOML "
            "config file, in that order. With no data paths given, the embedded defaults (GeoLite2 demo data, a "
            "demo allowlist and the default policy) are built in the data directory on first start."
        ),
    )
    parser.add_argument("--config", help=f"TOML config file (keys are the setting names) [env: {ENV_PREFIX}CONFIG]")
    for declared in DECLARED:
        parser.add_argument(
            declared.flag, dest=declared.name, metavar=declared.name.upper(), default=None, help=help_text(declared)
        )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from regionlock.service.server.run import serve_from_flags

    flags = {declared.name: getattr(args, declared.name) for declared in DECLARED}
    flags["config"] = args.config
    return serve_from_flags(flags)
