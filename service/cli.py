"""The `regionlock` command: serve, check, policy, geo, allowlist, token (and bench) subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from regionlock.service.cli_errors import UsageError, fail, report
from regionlock.service.settings import FIELDS, SettingsError

log = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """argparse with bad usage reported as one line on stderr (exit code 2), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_serve(subparsers) -> None:
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
    from regionlock.service.run import serve_from_flags

    flags = {name: getattr(args, name) for name in FIELDS}
    flags["config"] = args.config
    return serve_from_flags(flags)


def _add_check(subparsers) -> None:
    parser = subparsers.add_parser("check", help="ask a running server about one device; print JSON")
    parser.add_argument("serial")
    parser.add_argument("ip")
    parser.add_argument("--target", default="127.0.0.1:50051", help="DeviceCheck address (default %(default)s)")
    parser.add_argument("--explain", action="store_true", help="include the decision trace")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default %(default)s)")
    parser.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from regionlock.v1 import device_check_pb2, device_check_pb2_grpc

    with grpc.insecure_channel(args.target) as channel:
        stub = device_check_pb2_grpc.DeviceCheckServiceStub(channel)
        request = device_check_pb2.CheckDeviceRequest(serial=args.serial, ip=args.ip, explain=args.explain)
        try:
            response = stub.CheckDevice(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                fail(exc.details())
            print(f"regionlock check: {code.name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(response, indent=2))
    return 0


def _add_policy(subparsers) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from regionlock.service import cli_allowlist, cli_bench, cli_geo, cli_token

    parser = OneLineParser(prog="regionlock", description="Region-lock decisions for device gateways.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(subparsers)
    _add_check(subparsers)
    _add_policy(subparsers)
    cli_geo.register(subparsers)
    cli_allowlist.register(subparsers)
    cli_token.register(subparsers)
    cli_bench.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
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
