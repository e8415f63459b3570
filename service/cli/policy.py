"""The `regionlock policy` command: validate a policy file offline, print the default."""

from __future__ import annotations

import argparse
import json
from typing import Any

from regionlock.service.cli.errors import fail


def register(subparsers: Any) -> None:
    """Add the `policy` command and its subcommands to an argparse subparsers object."""
    parser = subparsers.add_parser("policy", help="validate and show policies")
    commands = parser.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a policy file offline",
        description=(
            "Validate a policy file offline. With --geo, also against that region database, as the server does: "
            "codes it carries may be named, and a restricted region it never carries is an error unless the rule "
            "sets allow_absent_regions = true (then it is reported in absent_regions). With --allowlist, every "
            "market of that allowlist must be defined."
        ),
    )
    check.add_argument("file")
    check.add_argument("--geo", metavar="DB", help="the region database the policy will serve with")
    check.add_argument("--allowlist", metavar="FILE", help="the allowlist the policy will serve with")
    check.set_defaults(func=_policy_check)
    show = commands.add_parser("default", help="print the commented default policy")
    show.set_defaults(func=lambda args: print(default_policy_text(), end="") or 0)


def default_policy_text() -> str:
    from regionlock.service.policy import default_policy_text as text

    return text()


def _policy_check(args: argparse.Namespace) -> int:
    from regionlock.core.allowlist import Allowlist
    from regionlock.core.errors import DataFileError
    from regionlock.core.geo import GeoDatabase
    from regionlock.service.policy import DataRegions, PolicyError, absent_regions, load_policy, require_markets_defined

    try:
        data = DataRegions.of(args.geo, GeoDatabase.open(args.geo).regions) if args.geo else None
        markets = Allowlist.open(args.allowlist).markets if args.allowlist else []
        policy = load_policy(args.file, data)
        require_markets_defined(policy, markets, args.file, str(args.allowlist))
    except OSError as exc:
        fail(f"can't read {exc.filename}: {exc.strerror}")
    except (DataFileError, PolicyError) as exc:
        fail(str(exc))
    summary = {
        "file": args.file,
        "version": policy.version,
        "mode": policy.mode,
        "restricted": [{"id": r.id, "regions": sorted(r.regions)} for r in policy.restricted],
        "markets": {name: sorted(regions) for name, regions in policy.markets.items()},
    }
    if data is not None:
        # only rules with allow_absent_regions get here with absent regions: say which, every time
        summary["absent_regions"] = {r.id: absent_regions(r.regions, data) for r in policy.restricted}
    print(json.dumps(summary))
    return 0
