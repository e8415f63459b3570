"""The `regionlock geo` command: build a region database, look addresses up, print its header."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from regionlock.core.errors import BuildError, DataFileError
from regionlock.service.cli.errors import exit_usage

_PROG = "regionlock geo"


def register(subparsers: Any) -> None:
    """Add the `geo` command and its subcommands to an argparse subparsers object."""
    parser = subparsers.add_parser("geo", help="build and query IP-to-region databases")
    sub = parser.add_subparsers(dest="geo_command", metavar="COMMAND", required=True)

    build = sub.add_parser(
        "build",
        help="compile MaxMind DB and CSV (network,country,subdivision or start,end,country,subdivision) sources; "
        "later sources override",
    )
    build.add_argument("sources", nargs="+", metavar="SOURCE")
    build.add_argument("-o", "--output", required=True, metavar="OUT")
    build.add_argument(
        "--country-field",
        metavar="FIELD",
        help="read the country of MaxMind DB records from this field (a string; dots for nested fields, "
        "e.g. country_code) instead of GeoIP2's country.iso_code",
    )
    build.add_argument(
        "--subdivision-field",
        metavar="FIELD",
        help="with --country-field: read the subdivision (full UA-43 or bare 43) from this field",
    )
    build.set_defaults(func=_build)

    lookup = sub.add_parser("lookup", help="print the region of each address as JSON lines")
    lookup.add_argument("db", metavar="DB")
    lookup.add_argument("ips", nargs="+", metavar="IP")
    lookup.set_defaults(func=_lookup)

    info = sub.add_parser("info", help="print the header of a region database as JSON")
    info.add_argument("db", metavar="DB")
    info.set_defaults(func=_info)


class _TtyProgress:
    """Build steps on stderr when it is a terminal, once the build has run for more than a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        if self.enabled and time.monotonic() - self.started > 1.0:
            print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


def _open(path: str) -> Any:
    from regionlock.core.geo import GeoDatabase

    try:
        return GeoDatabase.open(path)
    except DataFileError as exc:
        exit_usage(_PROG, str(exc))
    except OSError as exc:
        exit_usage(_PROG, f"{path}: {exc.strerror or exc}")


def _build(args: argparse.Namespace) -> int:
    from regionlock.core.geo_build import build_geo_database
    from regionlock.core.geo_mmdb import RecordLayout

    try:
        layout = RecordLayout(args.country_field, args.subdivision_field)
        header = build_geo_database(args.sources, args.output, progress=_TtyProgress(), layout=layout)
    except BuildError as exc:
        exit_usage(_PROG, str(exc))
    except OSError as exc:
        exit_usage(_PROG, f"{exc.filename or args.output}: {exc.strerror or exc}")
    networks = header.metadata["networks"]
    stale = header.metadata["regions_not_current_iso"]
    print(
        f"wrote {args.output}: {networks['ipv4']} IPv4 and {networks['ipv6']} IPv6 networks, "
        f"{len(header.metadata['regions'])} regions ({stale} codes not in current ISO 3166), "
        f"{os.path.getsize(args.output):,} bytes, build {header.build_id}"
    )
    return 0


def _lookup(args: argparse.Namespace) -> int:
    db = _open(args.db)
    lines = []
    for ip in args.ips:
        try:
            region = db.lookup(ip)
        except ValueError as exc:
            exit_usage(_PROG, str(exc))
        lines.append(
            json.dumps(
                {
                    "ip": ip,
                    "country": region.country if region else None,
                    "subdivision": region.subdivision if region else None,
                    "network": region.network if region else None,
                }
            )
        )
    print("\n".join(lines))
    return 0


def _info(args: argparse.Namespace) -> int:
    db = _open(args.db)
    print(json.dumps(db.info, indent=2, sort_keys=True))
    return 0
