"""h2load for `regionlock bench`: one process per request body, gRPC headers, its summary and its log."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from regionlock.service.loadtest.model import BenchError, Body, Load

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_EXTRA_SECONDS = 30.0  # beyond the requested duration before an h2load process is killed
MAX_CONNECTION_RATE = 90.0  # calls per second per connection at a fixed rate (see _jobs)


def h2load_path() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise BenchError("h2load not found: install it (Debian/Ubuntu: apt-get install nghttp2-client)")
    return path


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _parse_h2load(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if m := re.search(r"finished in ([\d.]+)(ms|s|us)", text):
        out["seconds"] = float(m[1]) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m[2]]
    if m := re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    ):
        for key, value in zip(
            ("total", "started", "done", "succeeded", "failed", "errored", "timeout"), m.groups(), strict=True
        ):
            out[key] = int(value)
    if m := re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text):
        for key, value in zip(("2xx", "3xx", "4xx", "5xx"), m.groups(), strict=True):
            out[key] = int(value)
    if m := re.search(r"traffic: .*, \S+ \((\d+)\) data", text):
        out["data_bytes"] = int(m[1])
    if "seconds" not in out or "done" not in out or "data_bytes" not in out:
        raise BenchError("unexpected h2load output:\n" + text[-2000:])
    return out


def _h2load_args(
    target: str,
    body_path: Path,
    body: Body,
    clients: int,
    load: Load,
    duration: float,
    requests: int | None,
    log_path: Path | None,
    rate: float | None = None,
) -> list[str]:
    """One h2load process: `clients` connections of `load.streams` streams each, for a time or a count.

    With `rate` (calls per second per connection) the connections open one per millisecond, so that their
    send timers, which fire every 1/rate seconds, are spread over the period instead of firing together.
    """
    args = ["taskset", "-c", load.pin] if load.pin else []
    args += [h2load_path(), "-c", str(clients), "-m", str(load.streams), "-t", "1", "-d", str(body_path)]
    for header in GRPC_HEADERS:
        args += ["-H", header]
    if rate is not None:
        args += ["--rps", f"{rate:.3f}", "-r", "1", "--rate-period", "1ms"]  # -r excludes -D: a count
    if requests is not None:
        args += ["-n", str(max(requests, clients))]
    else:
        args += ["-D", f"{max(1, round(duration * 1000))}ms"]
    if log_path is not None:
        args += ["--log-file", str(log_path)]
    return [*args, f"http://{target}{body.method}"]


def connection_plan(load: Load, n_bodies: int) -> tuple[int, float | None]:
    """How many connections a run opens (every body needs one; see _jobs for a fixed rate), and the calls per
    second each sends at a fixed rate."""
    clients = max(load.connections, n_bodies)
    if not load.rate:
        return clients, None
    clients = max(clients, math.ceil(load.rate / MAX_CONNECTION_RATE))
    return clients, load.rate / clients


def _jobs(
    target: str,
    bodies: list[Body],
    load: Load,
    workdir: Path,
    duration: float,
    requests: int | None,
    keep_logs: bool,
) -> list[tuple[Body, list[str], Path | None]]:
    """The h2load command lines, one process per body, the connections (and calls) split among them.

    At a fixed rate, each connection sends at most MAX_CONNECTION_RATE calls per second (more connections if
    needed): h2load's --rps timer fires at most every 10 ms and sends what is due at once, so a faster
    connection would send bursts that queue in the server and measure the burst, not the load.
    """
    clients, per_client = connection_plan(load, len(bodies))
    if load.rate and requests is None:
        requests = max(clients, round(duration * load.rate))
    jobs = []
    counts: Sequence[int | None]
    split_clients = _split(clients, len(bodies))
    if load.rate:  # every connection the same number of calls, so that all finish together
        counts = [math.ceil((requests or 0) / clients) * n for n in split_clients]
    elif requests is not None:
        counts = _split(requests, len(bodies))
    else:
        counts = [None] * len(bodies)
    for i, (body, n_clients, n_calls) in enumerate(zip(bodies, split_clients, counts, strict=True)):
        body_path = workdir / f"body-{i}.bin"
        body_path.write_bytes(body.frame)
        log_path = workdir / f"h2load-{i}.log" if keep_logs else None
        args = _h2load_args(target, body_path, body, n_clients, load, duration, n_calls, log_path, per_client)
        jobs.append((body, args, log_path))
    return jobs


def run_h2load(
    target: str,
    bodies: list[Body],
    load: Load,
    workdir: Path,
    duration: float,
    requests: int | None,
    keep_logs: bool = True,
) -> list[tuple[Body, dict[str, float], Path | None]]:
    """Run the h2load processes (see _jobs) all at once; killed if they overrun."""
    running = []
    for i, (body, args, log_path) in enumerate(_jobs(target, bodies, load, workdir, duration, requests, keep_logs)):
        out_path = workdir / f"h2load-{i}.out"
        with open(out_path, "wb") as out:
            running.append((body, subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), out_path, log_path))
    limit = (duration if requests is None else load.duration) + _EXTRA_SECONDS
    deadline = time.monotonic() + limit
    results, overran = [], False
    for body, process, out_path, log_path in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            overran = True
            process.kill()
            process.wait()
        text = out_path.read_text(errors="replace")
        if not overran:
            results.append((body, _parse_h2load(text), log_path))
    if overran:
        raise BenchError(f"h2load did not finish within {limit:.0f}s; lower --requests or raise --duration")
    return results


def latencies_us(log_paths: list[Path]) -> list[int]:
    """Per-request latency (µs) of the calls that got HTTP 200, from h2load's --log-file."""
    values: list[int] = []
    for path in log_paths:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1] == "200":
                    values.append(int(parts[2]))
    return values
