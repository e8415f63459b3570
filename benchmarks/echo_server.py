"""The transport's ceiling: a bare grpcio service answering DeviceCheck methods with fixed bytes.

    .venv/bin/python -m benchmarks.echo_server --addr 127.0.0.1:50061 [--workers N] [--model sync|aio|uvloop]
        [--responses FILE.json]

Identity (bytes) serializers, no decision: each request gets a fixed byte string of the size the real
server answers that same request with (FILE maps base64 request -> response size, as benchmarks/service.py
measured them; unknown requests get `default`). Same server model as regionlock (sync server, a
ThreadPoolExecutor of 16, the same channel options) and the same process model: with --workers N > 1, N
forked processes share the port with SO_REUSEPORT, each on a CPU of its own as regionlock's workers are
(`--cpu-affinity`). `--model aio` and `--model uvloop` serve the same with
grpc.aio (for the server-model comparison). SIGTERM/SIGINT stop all.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import threading
from concurrent import futures

SERVICE = "regionlock.v1.DeviceCheckService"
METHODS = ("CheckDevice", "CheckDevices")


def load_responses(path: str | None) -> tuple[dict[bytes, bytes], bytes]:
    if not path:
        return {}, b"\0" * 140
    with open(path) as f:
        spec = json.load(f)
    table = {base64.b64decode(k): b"\0" * v for k, v in spec.get("responses", {}).items()}
    return table, b"\0" * spec.get("default", 140)


def _options(reuse_port: bool) -> list[tuple[str, int]]:
    from regionlock.service.server.lifecycle import grpc_options
    from regionlock.service.server.settings import Settings

    return grpc_options(Settings(), reuse_port)


def serve_sync(address: str, reuse_port: bool, table: dict[bytes, bytes], default: bytes) -> None:
    import grpc

    def answer(request: bytes, context) -> bytes:
        return table.get(request, default)

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {m: grpc.unary_unary_rpc_method_handler(answer) for m in METHODS}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=_options(reuse_port))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"echo_server: can't listen on {address}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop(1).wait()


def serve_aio(address: str, reuse_port: bool, table: dict[bytes, bytes], default: bytes, use_uvloop: bool) -> None:
    import asyncio

    import grpc

    async def answer(request: bytes, context) -> bytes:
        return table.get(request, default)

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {m: grpc.unary_unary_rpc_method_handler(answer) for m in METHODS}
        )
        server = grpc.aio.server(options=_options(reuse_port))
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port(address) == 0:
            raise SystemExit(f"echo_server: can't listen on {address}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        await stop.wait()
        await server.stop(1)

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def serve(address: str, model: str, reuse_port: bool, table, default) -> None:
    if model == "sync":
        serve_sync(address, reuse_port, table, default)
    else:
        serve_aio(address, reuse_port, table, default, use_uvloop=model == "uvloop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", choices=("sync", "aio", "uvloop"), default="sync")
    parser.add_argument("--responses", help="JSON: {responses: {base64 request: size}, default: size}")
    parser.add_argument("--cpu-affinity", choices=("auto", "none"), default="auto", help="as regionlock serve's")
    args = parser.parse_args(argv)
    table, default = load_responses(args.responses)
    if args.workers <= 1:
        serve(args.addr, args.model, False, table, default)
        return 0
    # fork before any gRPC object exists, as service/workers.py does; the children share the port
    from regionlock.service.server.workers import pin_worker

    children = []
    for slot in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                pin_worker(slot, args.workers, args.cpu_affinity)
                serve(args.addr, args.model, True, table, default)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum, _frame) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = code or (0 if os.waitstatus_to_exitcode(status) == 0 else 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
