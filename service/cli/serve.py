"""The `regionlock serve` command: settings from flags, environment and config file, then the server."""

from __future__ import annotations

import argparse
from typing import Any

from regionlock.service.server.settings import FIELDS


def register(subparsers: Any) -> None:
    """Add the `serve` command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "serve",
        help="serve DeviceCheck and Admin",
        description=(
            "Serve DeviceCheck and Admin. Settings come from flags, REGIONLOCK_* environment variables and a TOML "
            "config file, in that order. With no data paths given, the embedded defaults (GeoLite2 demo data, a "
            "demo allowlist and the default policy) are built in the data directory on first start."
        ),
    )
    parser.add_argument("--config", help="TOML config file (keys are the setting names)")
    help_texts = {
        "data_dir": "data directory (default ./var)",
        "geo": "region database (default DATA_DIR/geo.rlgeo)",
        "allowlist": "serial allowlist (default DATA_DIR/allowlist.rlallow)",
        "policy": "policy TOML (default DATA_DIR/policy.toml)",
        "store": "override store URL: sqlite:///path (default in DATA_DIR) or postgresql://...",
        "tokens": "Admin token file (default DATA_DIR/tokens.json)",
        "check_addr": "DeviceCheck listener (default [::]:50051)",
        "admin_addr": "Admin listener (default 127.0.0.1:50052)",
        "metrics_addr": "Prometheus /metrics listener; empty to disable (default 127.0.0.1:9464)",
        "workers": "DeviceCheck worker processes (default: one per core)",
        "cpu_affinity": "auto: each worker on a CPU of its own when there are as many CPUs; none (default auto)",
        "log_level": "DEBUG, INFO, WARNING or ERROR (default INFO)",
        "max_streams": "open StreamCheckDevices streams per worker; more are refused (default 64)",
        "max_pending_calls": "calls a worker's grpc-core queues before it starts refusing some (default 10000)",
        "geo_max_age_days": "warn when the region data is older than this many days; 0 never (default 35)",
    }
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=help_texts.get(name, argparse.SUPPRESS))
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from regionlock.service.server.run import serve_from_flags

    flags = {name: getattr(args, name) for name in FIELDS}
    flags["config"] = args.config
    return serve_from_flags(flags)
