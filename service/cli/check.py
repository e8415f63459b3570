"""The `regionlock check` command: ask a running server about one device; print JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from regionlock.service.cli.errors import fail


def register(subparsers: Any) -> None:
    """Add the `check` command to an argparse subparsers object."""
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
                fail(exc.details() or code.name)
            print(f"regionlock check: {code.name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(response, indent=2))
    return 0
