"""The machine's floor at a fixed load: a C HTTP/2 server (nghttpd) answering the same calls, and per-call costs.

A fixed-load p99 mixes three things: the machine (its cores, the VM, the load generator beside the server),
the gRPC transport, and the service. nghttpd (Debian package `nghttp2-server`, from the same project as
h2load) answers every unary call with a static body of the real response's size from 2 worker threads, in
C, with one thread per connection event and no hand-off: what h2load measures against it is the machine's
share. `per_call_cost` reads every thread of a server's processes from /proc so that a run can say how
much CPU and how many context switches each call costs in each server.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.service_profile import cpu_ticks
from regionlock.service.loadtest import model as bench
from regionlock.service.loadtest.h2load import latencies_us, run_h2load

UNARY_PATH = "regionlock.v1.DeviceCheckService/CheckDevice"


def nghttpd_path() -> str | None:
    return shutil.which("nghttpd") or next((p for p in ("/usr/sbin/nghttpd",) if os.access(p, os.X_OK)), None)


@contextmanager
def floor_server(tmp: Path, response_frame_len: int, port: int, workers: int = 2):
    """nghttpd on 127.0.0.1:port serving `response_frame_len` bytes at the unary method's path."""
    htdocs = tmp / "floor-htdocs"
    (htdocs / UNARY_PATH).parent.mkdir(parents=True, exist_ok=True)
    (htdocs / UNARY_PATH).write_bytes(b"\0" * response_frame_len)
    args = [nghttpd_path() or "nghttpd", "--no-tls", "-n", str(workers), "-a", "127.0.0.1", "-d", str(htdocs)]
    with open(tmp / "nghttpd.log", "wb") as out:
        process = subprocess.Popen([*args, str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nghttpd did not start (exit {process.poll()})") from None
                time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class FloorResult:
    requests_per_s: float
    latency_ms: dict[str, float]
    error_count: int


def floor_once(target: str, mix, rate: float, seconds: float, load: dict) -> FloorResult:
    """One fixed-rate unary run against the floor server, with the same h2load command lines as `once`."""
    bodies = bench.bodies_for(mix, "unary", 1)
    plan = bench.Load(rate=rate, duration=seconds, **load)
    with tempfile.TemporaryDirectory(prefix="regionlock-floor-") as workdir:
        run_h2load(target, bodies, plan, Path(workdir), plan.warmup, None, keep_logs=False)
        runs = run_h2load(target, bodies, plan, Path(workdir), seconds, None)
        latency = bench.percentiles_ms(latencies_us([log for _, _, log in runs if log is not None]))
    done = sum(int(summary["2xx"]) for _, summary, _ in runs)
    total = sum(int(summary["total"]) for _, summary, _ in runs)
    elapsed = max(summary["seconds"] for _, summary, _ in runs)
    result = FloorResult(done / elapsed, latency, total - done)
    print(
        f"  floor  {target:22} {result.requests_per_s:10,.0f} req/s p99 {latency.get('p99', float('nan')):7.2f} ms"
        f"  errors {result.error_count}",
        flush=True,
    )
    return result


def _counters(pids: list[int]) -> tuple[int, int, int]:
    """CPU ticks (a process's own stat sums its threads), and voluntary and involuntary context switches,
    which /proc keeps per thread only, summed over every thread of the processes."""
    voluntary = involuntary = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
            except (OSError, ValueError):
                continue  # a thread that ended between the listing and the read
            voluntary += int(status["voluntary_ctxt_switches"])
            involuntary += int(status["nonvoluntary_ctxt_switches"])
    return sum(cpu_ticks(pids).values()), voluntary, involuntary


@dataclass
class CallCost:
    cpu_us: float
    voluntary_switches: float
    involuntary_switches: float


def per_call_cost(pids: list[int], load, rate: float, settle: float, window: float):
    """Run `load()` (a fixed-rate run) and read the server's threads over `window` seconds after `settle`.

    At a fixed rate the calls in the window are rate x window, so no count from the server is needed; the
    settle time skips the probe and the warm-up. Returns (load's result, CallCost).
    """
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("run", load()))
    thread.start()
    time.sleep(settle)
    first, started = _counters(pids), time.monotonic()
    time.sleep(window)
    second, elapsed = _counters(pids), time.monotonic() - started
    thread.join()
    calls = rate * elapsed
    hz = os.sysconf("SC_CLK_TCK")
    cost = CallCost(
        1e6 * (second[0] - first[0]) / hz / calls, (second[1] - first[1]) / calls, (second[2] - first[2]) / calls
    )
    return result["run"], cost


def median_cost(costs: list[CallCost]) -> CallCost:
    return CallCost(*(statistics.median(getattr(c, f) for c in costs) for f in CallCost.__dataclass_fields__))
