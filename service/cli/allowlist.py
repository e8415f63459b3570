"""The `regionlock allowlist` command: build, lookup, info and demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from regionlock.core.errors import BuildError, DataFileError
from regionlock.service.cli.errors import exit_usage

_PROG = "regionlock allowlist"


def register(subparsers: Any) -> None:
    """Add the `allowlist` command and its subcommands to an argparse subparsers object."""
    parser = subparsers.add_parser("allowlist", help="build and query serial allowlist files")
    sub = parser.add_subparsers(dest="allowlist_command", metavar="COMMAND", required=True)

    build = sub.add_parser("build", help="build an allowlist file from CSV files with the header serial,market")
    build.add_argument("csv", nargs="+", metavar="CSV")
    build.add_argument("-o", "--output", required=True, metavar="OUT")
    build.add_argument("--memory", default="1G", metavar="SIZE", help="sort memory budget, e.g. 512M, 1G")
    build.add_argument("--skip-invalid", action="store_true", help="skip and count invalid rows")
    build.set_defaults(func=_build)

    lookup = sub.add_parser("lookup", help="print the market of each serial as JSON lines")
    lookup.add_argument("file", metavar="FILE")
    lookup.add_argument("serials", nargs="+", metavar="SERIAL")
    lookup.set_defaults(func=_lookup)

    info = sub.add_parser("info", help="print the header of an allowlist file as JSON")
    info.add_argument("file", metavar="FILE")
    info.set_defaults(func=_info)

    demo = sub.add_parser("demo", help="write a deterministic demo allowlist (or its CSV)")
    demo.add_argument("-n", type=int, required=True, metavar="N", help="number of serials")
    demo.add_argument("-o", "--output", required=True, metavar="OUT")
    demo.add_argument("--seed", type=int, default=0, metavar="S")
    demo.add_argument("--csv", action="store_true", help="write the CSV instead of the allowlist file")
    demo.set_defaults(func=_demo)


class _TtyProgress:
    """Progress on stderr when it is a terminal, once the build has run for more than a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()
        self.shown = False

    def __call__(self, rows: int, rate: float, phase: str) -> None:
        if self.enabled and time.monotonic() - self.started > 1.0:
            sys.stderr.write(f"\r{phase}: {rows:,} rows, {rate:,.0f} rows/s   ")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _build(args: argparse.Namespace) -> int:
    from regionlock.core.allowlist_build import build_allowlist, parse_size

    try:
        memory = parse_size(args.memory)
    except ValueError as exc:
        exit_usage(_PROG, str(exc))
    logging.basicConfig(level=logging.WARNING, format=f"{_PROG}: warning: %(message)s")
    progress = _TtyProgress()
    try:
        report = build_allowlist(
            args.csv, args.output, memory=memory, skip_invalid=args.skip_invalid, progress=progress
        )
    except (BuildError, ValueError, OSError) as exc:
        progress.done()
        exit_usage(_PROG, str(exc).replace("\n", " "))
    progress.done()
    for line in report.skipped_examples:
        print(f"skipped: {line}", file=sys.stderr)
    print(
        f"wrote {report.output}: {report.count} serials from {report.rows_read} rows "
        f"({report.duplicates} duplicates, {report.rows_skipped} invalid rows skipped) "
        f"in {report.seconds:.1f} s, build {report.header.build_id}"
    )
    return 0


def _open(path: str, verify: bool) -> Any:
    from regionlock.core.allowlist import Allowlist

    try:
        return Allowlist.open(path, verify=verify)
    except (DataFileError, OSError) as exc:
        exit_usage(_PROG, str(exc))


def _lookup(args: argparse.Namespace) -> int:
    allowlist = _open(args.file, verify=True)
    for serial in args.serials:
        try:
            market = allowlist.get(serial)
        except ValueError as exc:
            exit_usage(_PROG, str(exc))
        print(json.dumps({"serial": serial, "market": market}))
    return 0


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(_open(args.file, verify=False).info, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from regionlock.core.allowlist_demo import build_demo, write_demo_csv

    try:
        if args.csv:
            write_demo_csv(args.n, args.output, args.seed)
            print(f"wrote {args.output}: {args.n} demo rows (seed {args.seed})")
        else:
            progress = _TtyProgress()
            report = build_demo(args.n, args.output, args.seed, progress=progress)
            progress.done()
            print(
                f"wrote {report.output}: {report.count} demo serials (seed {args.seed}), build {report.header.build_id}"
            )
    except (ValueError, OSError) as exc:
        exit_usage(_PROG, str(exc))
    return 0
