"""Service throughput: regionlock against a bare grpcio echo baseline, side by side in one run, with h2load.

    .venv/bin/python -m benchmarks.service [--rounds 3] [--seconds 5] [--soak 60] [--no-write]

Serves the embedded demo data (GeoLite2-City, 1,000,000 demo serials, the default policy; built once in
benchmarks/data/service/) with `regionlock serve --workers 2`, and benchmarks/echo_server.py with the same
worker count, the same server model and the same response sizes. Measures, interleaved, medians of
--rounds runs: unary max rps at the same concurrency, batch of 1,000 decisions/s, p99 at a fixed offered
load of half the measured max (beside the echo under grpc.aio and the machine's floor, nghttpd: see
service_floor.py; with each server's CPU and context switches per call), a soak at 80% of max (errors, RSS
of all server processes), a py-spy profile of a worker during the batch and unary runs, and the echo service
under each server model. Writes the "## Service throughput" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc

from benchmarks.service_floor import floor_once, floor_server, median_cost, nghttpd_path, per_call_cost
from benchmarks.service_profile import profile_worker, rss_kib, server_pids
from benchmarks.service_report import write_section
from regionlock.service.loadtest import model as bench
from regionlock.service.loadtest.mixes import build_mix, open_snapshot
from regionlock.service.loadtest.runner import run

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "service"
UNARY = {"connections": 10, "streams": 10}
BATCH = {"connections": 4, "streams": 2}
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(address: str, process: subprocess.Popen, health: bool, timeout: float = 300.0) -> None:
    """Connected, and with `health`, SERVING (regionlock answers UNAVAILABLE until its data is loaded)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        ready = grpc.channel_ready_future(channel)
        try:
            while True:
                try:
                    ready.result(timeout=1)
                    if not health:
                        return
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    time.sleep(0.2)
                except (grpc.FutureTimeoutError, grpc.RpcError):
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server at {address} did not start (exit {process.poll()})")
        finally:
            ready.cancel()


@contextmanager
def server(args: list[str], address: str, log: Path, health: bool = False):
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_ready(address, process, health)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def regionlock_server(tmp: Path, workers: int = 2):
    check, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = [
        str(BIN / "regionlock"),
        "serve",
        "--data-dir",
        str(DATA),
        "--check-addr",
        check,
        "--admin-addr",
        f"127.0.0.1:{free_port()}",
        "--metrics-addr",
        metrics,
        "--workers",
        str(workers),
        "--log-level",
        "WARNING",
    ]
    return server(args, check, tmp / "regionlock.log", health=True), check, metrics


def echo_server(tmp: Path, responses: Path, workers: int = 2, model: str = "sync", pin: str | None = None):
    address = f"127.0.0.1:{free_port()}"
    args = ["taskset", "-c", pin] if pin else []
    args += [
        sys.executable,
        "-m",
        "benchmarks.echo_server",
        "--addr",
        address,
        "--workers",
        str(workers),
        "--model",
        model,
        "--responses",
        str(responses),
    ]
    return server(args, address, tmp / f"echo-{model}-{workers}.log"), address


def prepare_data() -> None:
    from regionlock.service.server.embedded import prepare_embedded_data
    from regionlock.service.server.settings import Settings

    DATA.mkdir(parents=True, exist_ok=True)
    prepare_embedded_data(Settings(data_dir=DATA))


def echo_responses(target: str, mix, path: Path) -> int:
    """The real server's response size for every request the runs send: the echo answers the same sizes.

    Returns the median unary response frame's length (the floor server answers every call with that many)."""
    unary = bench.probe(target, bench.bodies_for(mix, "unary", 1))
    bodies = unary + bench.probe(target, bench.bodies_for(mix, "batch", 1000))
    sizes = {base64.b64encode(b.frame[5:]).decode(): b.response_frame_len - 5 for b in bodies}
    path.write_text(json.dumps({"responses": sizes, "default": 140}))
    return round(statistics.median(b.response_frame_len for b in unary))


def once(target, mode, mix, metrics=None, **load) -> bench.Result:
    result = run(target, mode, mix, bench.Load(**load), metrics, batch_size=1000)
    print(
        f"  {mode:6} {target:22} {result.requests_per_s:10,.0f} req/s {result.checks_per_s:12,.0f} checks/s "
        f"p99 {result.latency_ms.get('p99', float('nan')):7.2f} ms  errors {result.error_count}",
        flush=True,
    )
    return result


def fixed_load_runs(tmp: Path, servers: dict, responses: Path, floor_len: int, mix, rate, secs, rounds) -> dict:
    """p99 at a fixed rate, interleaved per round: the HTTP/2 floor (nghttpd, when installed), the echo under
    grpc.aio, the echo and regionlock; with each server's CPU and context switches per call."""
    print(f"latency at half of the max ({rate:,.0f} req/s):", flush=True)
    aio_ctx, aio = echo_server(tmp, responses, model="aio")
    out: dict = {}
    with ExitStack() as stack:
        servers = {**servers, "aio": (aio, None, stack.enter_context(aio_ctx))}
        runs = {
            name: (lambda t=target, m=met: once(t, "unary", mix, m, duration=secs, rate=rate, **UNARY))
            for name, (target, met, _) in servers.items()
        }
        if nghttpd_path() is None:
            print("  (no nghttpd: apt-get install nghttp2-server for the machine's floor)", flush=True)
        else:
            port = free_port()
            floor = stack.enter_context(floor_server(tmp, floor_len, port))
            servers["floor"] = (f"127.0.0.1:{port}", None, floor)
            runs["floor"] = lambda: floor_once(f"127.0.0.1:{port}", mix, rate, secs, UNARY)
        costs: dict[str, list] = {name: [] for name in runs}
        for _ in range(rounds):
            for name in ("floor", "aio", "echo", "rl"):
                if name in runs:
                    pids = server_pids(servers[name][2].pid)
                    result, cost = per_call_cost(pids, runs[name], rate, settle=2.0, window=max(0.5, secs - 1.0))
                    out.setdefault(f"{name}_half", []).append(result)
                    costs[name].append(cost)
    out["costs"] = {name: median_cost(c) for name, c in costs.items()}
    return out


def median(results: list[bench.Result], key) -> float:
    return statistics.median(key(r) for r in results)


def machine() -> str:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem = int(next(ln.split()[1] for ln in meminfo.splitlines() if ln.startswith("MemTotal"))) // 1024
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (
        f"{os.cpu_count()} x {cpu}, {mem:,} MiB, Linux {platform.release()}, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, {h2load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--soak", type=float, default=60.0, help="soak seconds (0 skips)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("benchmarks.service: h2load not found (apt-get install nghttp2-client); skipped", file=sys.stderr)
        return 0
    prepare_data()
    load_start = Path("/proc/loadavg").read_text().split()[0]
    mix = build_mix(open_snapshot(DATA / "geo.rlgeo", DATA / "allowlist.rlallow", DATA / "policy.toml"))
    secs, r = args.seconds, {}
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rl_ctx, rl, metrics = regionlock_server(tmp)
        with rl_ctx as rl_process:
            responses = tmp / "responses.json"
            floor_len = echo_responses(rl, mix, responses)
            echo_ctx, echo = echo_server(tmp, responses)
            with echo_ctx as echo_process:
                print("unary and batch, interleaved:", flush=True)
                for key in ("echo_unary", "rl_unary", "echo_batch", "rl_batch"):
                    r[key] = []
                # each round runs echo, regionlock, regionlock, echo (ABBA): a pair's ratio then cancels the
                # machine's drift whichever way it goes, and the ratio quoted is the median over the pairs
                for _ in range(args.rounds):
                    for mode, load, key in (("unary", UNARY, "unary"), ("batch", BATCH, "batch")):
                        e1 = once(echo, mode, mix, duration=secs, **load)
                        r1 = once(rl, mode, mix, metrics, duration=secs, **load)
                        r2 = once(rl, mode, mix, metrics, duration=secs, **load)
                        e2 = once(echo, mode, mix, duration=secs, **load)
                        r[f"echo_{key}"] += [e1, e2]
                        r[f"rl_{key}"] += [r1, r2]
                max_rps = median(r["rl_unary"], lambda x: x.requests_per_s)
                servers = {"rl": (rl, metrics, rl_process), "echo": (echo, None, echo_process)}
                r.update(fixed_load_runs(tmp, servers, responses, floor_len, mix, max_rps / 2, secs, args.rounds))
            print("profiles (py-spy on the busiest worker):", flush=True)
            r["profile_batch"] = profile_worker(
                rl_process.pid, lambda: once(rl, "batch", mix, metrics, duration=secs + 3, **BATCH)
            )
            r["profile_unary"] = profile_worker(
                rl_process.pid, lambda: once(rl, "unary", mix, metrics, duration=secs + 3, **UNARY)
            )
            if args.soak > 0:
                print(f"soak: {args.soak:.0f} s at 80% of the max ({0.8 * max_rps:,.0f} req/s):", flush=True)
                once(rl, "unary", mix, metrics, duration=3, rate=0.8 * max_rps, **UNARY)  # settle first
                pids = server_pids(rl_process.pid)
                rss_before = rss_kib(pids)
                r["soak"] = once(rl, "unary", mix, metrics, duration=args.soak, rate=0.8 * max_rps, **UNARY)
                r["soak_rss"] = (rss_before, rss_kib(server_pids(rl_process.pid)), len(pids))
        print("server models on the echo service:", flush=True)
        models = [
            ("sync, 1 process pinned to core 0", "sync", 1, "0"),
            ("grpc.aio, pinned", "aio", 1, "0"),
            ("grpc.aio + uvloop, pinned", "uvloop", 1, "0"),
            ("sync, 2 processes (SO_REUSEPORT)", "sync", 2, None),
        ]
        if importlib.util.find_spec("uvloop") is None:
            models = [m for m in models if m[1] != "uvloop"]
            print("  (uvloop not installed: pip install uvloop, or the bench extra)", flush=True)
        r["models"] = {name: [] for name, *_ in models}
        for _ in range(args.rounds):
            for name, model, workers, pin in models:
                ctx, address = echo_server(tmp, responses, workers, model, pin)
                with ctx:
                    pin_load = "1" if pin else None
                    r["models"][name].append(once(address, "unary", mix, duration=secs, pin=pin_load, **UNARY))
    load_end = Path("/proc/loadavg").read_text().split()[0]
    where = f"{machine()}; load average {load_start} at the start, {load_end} at the end"
    text = write_section(r, args, where, mix, UNARY, BATCH, write=not args.no_write)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
