"""`regionlock bench`: load a running server and print throughput, latency percentiles and verified errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODES = ("unary", "batch", "stream")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` command."""
    parser = subparsers.add_parser(
        "bench",
        help="load-test a running server (h2load for unary and batch, Python clients for the stream)",
        description=(
            "Load a running DeviceCheck server for a bounded time (or number of calls) and print requests/s, "
            "checks/s, latency p50/p90/p99/p99.9 and errors by status code. The request mix is drawn from the "
            "server's own data files so that every reason occurs; responses are verified against the response "
            "size and the server's own regionlock_decisions_total (give --metrics). Exit code 1 if any call failed."
        ),
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="DeviceCheck address (default %(default)s)")
    parser.add_argument("--metrics", help="the server's metrics: URL or HOST:PORT (e.g. 127.0.0.1:9464)")
    parser.add_argument("--mode", choices=MODES, default="unary", help="unary CheckDevice (default), batch, stream")
    parser.add_argument("--batch-size", type=int, default=1000, help="items per CheckDevices call (default 1000)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds to run (default 10); with --requests, the most a run may take (default 120)",
    )
    parser.add_argument("--requests", type=int, default=None, help="stop after this many calls instead")
    parser.add_argument("--connections", type=int, default=10, help="HTTP/2 connections in all (default 10)")
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per connection (default 10)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="fixed offered load, calls per second in all, sent at evenly spaced times (an open-loop schedule)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first (default 1)")
    parser.add_argument("--data-dir", default="./var", help="the server's data directory (default ./var)")
    parser.add_argument("--geo", help="region database (default DATA_DIR/geo.rlgeo)")
    parser.add_argument("--allowlist", help="allowlist (default DATA_DIR/allowlist.rlallow)")
    parser.add_argument("--policy", help="policy TOML (default DATA_DIR/policy.toml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_bench)


def _bad(message: str) -> None:
    print(f"regionlock bench: {message}", file=sys.stderr)
    raise SystemExit(2)


def _check_args(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    for name in ("batch_size", "connections", "streams", "requests"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _bad(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    for name in ("duration", "rate"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            _bad(f"--{name}: expected a positive number, got {value}")
    if args.warmup < 0:
        _bad(f"--warmup: expected zero or more seconds, got {args.warmup}")
    if ":" not in args.target:
        _bad(f"--target: expected HOST:PORT, got {args.target!r}")
    data = Path(args.data_dir)
    paths = (
        Path(args.geo or data / "geo.rlgeo"),
        Path(args.allowlist or data / "allowlist.rlallow"),
        Path(args.policy or data / "policy.toml"),
    )
    for flag, path in zip(("--geo", "--allowlist", "--policy"), paths, strict=True):
        if not path.is_file():
            _bad(f"{flag}: no such file: {path} (the request mix is drawn from the server's data; see --data-dir)")
    return paths


def _bench(args: argparse.Namespace) -> int:
    from regionlock.service.loadtest.h2load import h2load_path
    from regionlock.service.loadtest.mixes import build_mix, open_snapshot
    from regionlock.service.loadtest.model import BenchError, Load, format_table
    from regionlock.service.loadtest.runner import run

    geo, allowlist, policy = _check_args(args)
    try:
        snapshot = open_snapshot(geo, allowlist, policy)
    except Exception as exc:  # a data file or policy the server could not load either
        _bad(f"can't read the data: {exc}")
    mix = build_mix(snapshot, seed=args.seed)
    if not mix.reasons:
        _bad("the data gives no decidable checks")
    duration = args.duration or (120.0 if args.requests else 10.0)
    load = Load(
        connections=args.connections,
        streams=args.streams,
        duration=duration,
        requests=args.requests,
        rate=args.rate,
        warmup=args.warmup,
    )
    try:
        if args.mode != "stream":
            h2load_path()
        result = run(args.target, args.mode, mix, load, args.metrics, batch_size=args.batch_size)
    except BenchError as exc:
        print(f"regionlock bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_json(), indent=2) if args.json else format_table(result))
    return 1 if result.error_count or result.calls_ok == 0 else 0
