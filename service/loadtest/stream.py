"""`regionlock bench --mode stream`: bidirectional StreamCheckDevices from Python client processes.

h2load can't drive a bidirectional stream, so this mode uses grpcio: `--connections` client processes
(one channel each, each a fresh interpreter), each with `--streams` concurrent streams, each stream keeping
up to WINDOW requests in flight. A Python client costs CPU per message, on the same cores as the server:
the result says how much CPU the clients used, so a client-bound number is recognisable as one.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from regionlock.service.loadtest.mixes import METHOD_STREAM, Mix
from regionlock.service.loadtest.model import BenchError, Load, Result, metrics_url, percentiles_ms, scrape

WINDOW = 16  # requests in flight per stream
_START_DELAY = 3.0  # seconds for the spawned clients to import grpc and connect before they start together


def _one_stream(
    call: Callable[..., Iterator[bytes]],
    messages: list[bytes],
    deadline: float,
    limit: int | None,
    interval: float,
    timeout: float,
    out: dict[str, Any],
) -> None:
    """One stream: send until the deadline or the limit, WINDOW in flight; record latencies and errors."""
    import grpc

    from regionlock.v1 import device_check_pb2 as pb

    window = threading.Semaphore(WINDOW)
    sent: collections.deque[int] = collections.deque()
    start = time.monotonic()

    def requests() -> Iterator[bytes]:
        i = 0
        while (limit is None or i < limit) and time.monotonic() < deadline:
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if not window.acquire(timeout=0.1):
                continue
            sent.append(time.perf_counter_ns())
            yield messages[i % len(messages)]
            i += 1

    latencies, errors = out["latencies"], out["errors"]
    try:
        for raw in call(requests(), timeout=timeout):
            latencies.append((time.perf_counter_ns() - sent.popleft()) // 1000)
            window.release()
            response = pb.CheckDeviceResponse.FromString(raw)
            if response.HasField("error"):
                errors[f"ITEM_{response.error.code}"] += 1
            else:
                out["ok"] += 1
    except grpc.RpcError as exc:
        errors[exc.code().name] += max(1, len(sent))


def client_process(
    target: str,
    messages: list[bytes],
    streams: int,
    start_at: float,
    duration: float,
    limit: int | None,
    rate: float | None,
) -> dict[str, Any]:
    """The body of one client process: one channel, `streams` threads with one stream each."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        call: Callable[..., Iterator[bytes]] = channel.stream_stream(METHOD_STREAM)
        time.sleep(max(0.0, start_at - time.time()))
        cpu0, wall0 = os.times(), time.monotonic()
        deadline = wall0 + duration
        limits = (
            [None] * streams if limit is None else [limit // streams + (i < limit % streams) for i in range(streams)]
        )
        outs: list[dict[str, Any]] = [{"ok": 0, "latencies": [], "errors": Counter()} for _ in range(streams)]
        interval = streams / rate if rate else 0.0
        threads = [
            threading.Thread(
                target=_one_stream, args=(call, messages, deadline, limits[i], interval, duration + 15, outs[i])
            )
            for i in range(streams)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - wall0
        cpu1 = os.times()
    errors: Counter[str] = Counter()
    for out in outs:
        errors.update(out["errors"])
    return {
        "ok": sum(o["ok"] for o in outs),
        "latencies": [v for o in outs for v in o["latencies"]],
        "errors": dict(errors),
        "seconds": wall,
        "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }


def _run_clients(
    outdir: Path,
    target: str,
    messages: list[bytes],
    load: Load,
    limits: list[int | None],
    rate: float | None,
    processes: int,
) -> list[dict[str, Any]]:
    """Start the client processes together, wait for their JSON results (killing any that overrun)."""
    start_at = time.time() + _START_DELAY
    clients = []
    for i in range(processes):
        job = {
            "target": target,
            "messages": [base64.b64encode(m).decode() for m in messages],
            "streams": load.streams,
            "start_at": start_at,
            "duration": load.duration,
            "limit": limits[i],
            "rate": rate,
        }
        output = outdir / f"client-{i}.json"
        with open(output, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=out)
        assert process.stdin is not None  # (stdin=PIPE)
        process.stdin.write(json.dumps(job).encode())
        process.stdin.close()
        clients.append((process, output))
    outs: list[dict[str, Any]] = []
    deadline = time.monotonic() + _START_DELAY + load.duration + 60
    try:
        for process, output in clients:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError("a stream client process did not finish in time") from None
            if process.returncode != 0:
                raise BenchError(f"a stream client process failed (exit code {process.returncode})")
            outs.append(json.loads(output.read_text()))
    finally:
        for process, _ in clients:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outs


def run_stream(target: str, mix: Mix, load: Load, metrics: str | None) -> Result:
    processes = max(1, load.connections)
    result = Result(
        mode="stream",
        target=target,
        connections=processes,
        streams=load.streams,
        processes=processes,
        offered_rate=load.rate,
    )
    messages = mix.stream_messages()
    url = metrics_url(metrics) if metrics else None
    limits: list[int | None] = (
        [None] * processes
        if load.requests is None
        else [load.requests // processes + (i < load.requests % processes) for i in range(processes)]
    )
    rate = load.rate / processes if load.rate else None
    before = scrape(url) if url else None
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as outdir:
        outs = _run_clients(Path(outdir), target, messages, load, limits, rate, processes)
    time.sleep(0.2)
    after = scrape(url) if url else None
    errors: Counter[str] = Counter()
    for out in outs:
        errors.update(out["errors"])
    ok = sum(o["ok"] for o in outs)
    if before is not None and after is not None:
        delta = after - before
        decisions = round(delta.decisions)
        result.verification.update(server_decisions=decisions, expected_decisions=ok)
        if decisions < ok:
            errors["MISSING_DECISIONS"] += ok - decisions
            ok = decisions
        elif decisions > ok:
            result.notes.append(f"the server counted {decisions - ok} more decisions than this run received")
    else:
        result.notes.append("no --metrics: responses counted by the client only")
    result.seconds = max(o["seconds"] for o in outs)
    result.calls_ok = result.checks_ok = ok
    result.errors = {k: v for k, v in sorted(errors.items()) if v}
    result.latency_ms = percentiles_ms([v for o in outs for v in o["latencies"]])
    if result.seconds > 0:
        result.requests_per_s = result.checks_per_s = ok / result.seconds
        cores = sum(o["cpu"] for o in outs) / result.seconds
        result.verification["client_cpu_cores"] = round(cores, 2)
        result.notes.append(
            f"the Python clients used {cores:.2f} of {os.cpu_count()} cores; "
            "with the server on the same cores the number may be client-bound"
        )
    return result


def _main() -> None:
    """A client process: the job as JSON on stdin, the result as JSON on stdout."""
    job = json.load(sys.stdin)
    messages = [base64.b64decode(m) for m in job["messages"]]
    out = client_process(
        job["target"], messages, job["streams"], job["start_at"], job["duration"], job["limit"], job["rate"]
    )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    _main()
