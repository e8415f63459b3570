"""h2load for `regionlock bench`: one process per request body, gRPC headers, its summary and its log."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from regionlock.service.bench import BenchError, Body, Load

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_EXTRA_SECONDS = 30.0  # beyond the requested duration before an h2load process is killed


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


def _h2load_args(target, body_path, body: Body, clients, total_clients, load: Load, duration, requests, log_path):
    args = ["taskset", "-c", load.pin] if load.pin else []
    args += [h2load_path(), "-c", str(clients), "-m", str(load.streams), "-t", "1", "-d", str(body_path)]
    for header in GRPC_HEADERS:
        args += ["-H", header]
    if requests is not None:
        args += ["-n", str(max(requests, clients))]
    else:
        args += ["-D", f"{max(1, round(duration * 1000))}ms"]
    if load.rate:
        args += ["--rps", f"{load.rate / total_clients:.3f}"]
    if log_path is not None:
        args += ["--log-file", str(log_path)]
    return [*args, f"http://{target}{body.method}"]


def run_h2load(
    target: str,
    bodies: list[Body],
    load: Load,
    workdir: Path,
    duration: float,
    requests: int | None,
    keep_logs: bool = True,
) -> list[tuple[Body, dict[str, float], Path | None]]:
    """One h2load process per body, all at once, the connections split among them; killed if they overrun."""
    total_clients = max(load.connections, len(bodies))
    clients = _split(total_clients, len(bodies))
    counts = _split(requests, len(bodies)) if requests is not None else [None] * len(bodies)
    running = []
    for i, (body, n_clients, n_requests) in enumerate(zip(bodies, clients, counts, strict=True)):
        body_path = workdir / f"body-{i}.bin"
        body_path.write_bytes(body.frame)
        log_path = workdir / f"h2load-{i}.log" if keep_logs else None
        args = _h2load_args(target, body_path, body, n_clients, total_clients, load, duration, n_requests, log_path)
        out_path = workdir / f"h2load-{i}.out"
        with open(out_path, "wb") as out:
            running.append((body, subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), out_path, log_path))
    deadline = time.monotonic() + (duration if requests is None else load.duration) + _EXTRA_SECONDS
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
        raise BenchError(
            f"h2load did not finish within {load.duration + _EXTRA_SECONDS:.0f}s; lower --requests or raise --duration"
        )
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
