"""Helpers of benchmarks/service.py: a py-spy profile of the busiest worker, and the RESULTS.md section."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Service throughput"


def _cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks


def busiest(root_pid: int, interval: float = 0.5) -> int:
    pids = server_pids(root_pid)
    first = _cpu_ticks(pids)
    time.sleep(interval)
    second = _cpu_ticks(pids)
    return max(second, key=lambda pid: second[pid] - first.get(pid, 0))


def summarize(raw: str, top: int = 12) -> dict:
    """py-spy's raw (collapsed) stacks -> the functions with the most samples on top (self) and anywhere."""
    own, anywhere, total = Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((?:.*/)?([^/]+:\d+)\)$", r" (\1)", f) for f in stack.split(";")]
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    return {"samples": total, "self": own.most_common(top), "inclusive": anywhere.most_common(top)}


def profile_worker(root_pid: int, load, seconds: float = 4.0) -> dict:
    """Run `load()` in a thread and record py-spy on the busiest server process meanwhile."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("run", load()))
    thread.start()
    if spy is None:
        thread.join()
        return {**result, "error": "py-spy not installed (pip install py-spy)"}
    time.sleep(1.5)
    pid = busiest(root_pid)
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        done = subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(seconds)),
                "-r",
                "200",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                out.name,
            ],
            capture_output=True,
            text=True,
        )
        raw = Path(out.name).read_text() if done.returncode == 0 else ""
    thread.join()
    if done.returncode != 0:
        return {**result, "error": done.stderr.strip().splitlines()[-1:] or "py-spy failed"}
    return {**result, **summarize(raw), "pid": pid}


def server_pids(root_pid: int) -> list[int]:
    """A process and all its descendants, from /proc (for RSS of multi-process servers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# --- the section ------------------------------------------------------------------------------------------------


def _med(results, key):
    return statistics.median(key(x) for x in results)


def _pct(results, name):
    return _med(results, lambda x: x.latency_ms.get(name, float("nan")))


def _profile_lines(profile: dict) -> list[str]:
    if "error" in profile:
        return [f"(no profile: {profile['error']})"]
    total = profile["samples"] or 1
    lines = [
        f"{profile['samples']} samples of the busiest worker (pid {profile['pid']}), 200 Hz; "
        "share of samples with the function on top / anywhere on the stack:",
        "",
    ]
    lines += [f"- on top {100 * n / total:4.1f}%: `{f}`" for f, n in profile["self"][:8]]
    lines += [f"- anywhere {100 * n / total:4.1f}%: `{f}`" for f, n in profile["inclusive"][:10]]
    return lines


def render(r: dict, args, machine: str, mix, unary: dict, batch: dict) -> str:
    e_u, r_u = _med(r["echo_unary"], lambda x: x.requests_per_s), _med(r["rl_unary"], lambda x: x.requests_per_s)
    e_b, r_b = _med(r["echo_batch"], lambda x: x.checks_per_s), _med(r["rl_batch"], lambda x: x.checks_per_s)
    half = r["rl_half"]
    p99_half = _pct(half, "p99")
    errors = sum(x.error_count for k in ("rl_unary", "rl_batch", "rl_half") for x in r[k])
    lines = [
        HEADING + " (`benchmarks/service.py`)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine}. Server and load generator (h2load) share the "
        f"2 cores; other work on the machine adds noise, so every figure is the median of {args.rounds} runs of "
        f"{args.seconds:g} s, regionlock and the echo baseline interleaved in one run. `regionlock serve --workers 2` "
        f"serves the embedded demo data (GeoLite2-City, 1,000,000 demo serials, the default policy); the echo "
        f"baseline (`benchmarks/echo_server.py`) is the same sync grpcio server (thread pool of 16, same options, "
        f"2 forked workers with SO_REUSEPORT) answering each request with fixed bytes of the real response's "
        f"size. Request mix: every reason the data gives ({', '.join(x.name for x in mix.reasons)}); unary runs "
        f"one h2load process per reason. Every run is verified against the response sizes and the server's "
        f"`regionlock_decisions_total`: {errors} errors in all measured regionlock runs.",
        "",
        "```sh",
        "make bench                                    # everything: installs h2load if it can, all benchmarks",
        ".venv/bin/python -m benchmarks.service       # this section only (--rounds, --seconds, --soak)",
        "# one run by hand against a running server:",
        f".venv/bin/regionlock bench --target 127.0.0.1:50051 --metrics 127.0.0.1:9464 --mode unary "
        f"--connections {unary['connections']} --streams {unary['streams']} --duration 5",
        f".venv/bin/regionlock bench --target 127.0.0.1:50051 --metrics 127.0.0.1:9464 --mode batch "
        f"--batch-size 1000 --connections {batch['connections']} --streams {batch['streams']} --duration 5",
        "```",
        "",
        "| measurement | regionlock | echo baseline | ratio | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| unary `CheckDevice`, {unary['connections']} connections x {unary['streams']} streams: req/s | {r_u:,.0f} "
        f"| {e_u:,.0f} | {r_u / e_u:.0%} | ≥ 85% of echo | {'yes' if r_u >= 0.85 * e_u else 'no'} |",
        f"| batch `CheckDevices` of 1,000 ({batch['connections']} x {batch['streams']}): decisions/s | {r_b:,.0f} "
        f"| {e_b:,.0f} | {r_b / e_b:.0%} | ≥ 1,000,000 | {'yes' if r_b >= 1e6 else 'no'} |",
        f"| unary p99 at half the max ({r_u / 2:,.0f} req/s offered) | {p99_half:.2f} ms "
        f"| {_pct(r['echo_half'], 'p99'):.2f} ms | | < 2 ms | {'yes' if p99_half < 2 else 'no'} |",
    ]
    if "soak" in r:
        soak, (before, after, nproc) = r["soak"], r["soak_rss"]
        growth = (after - before) / before
        lines.append(
            f"| soak {args.soak:g} s at 80% of the max ({0.8 * r_u:,.0f} req/s offered; {soak.calls_ok:,} calls) "
            f"| {soak.error_count} errors, RSS {before / 1024:,.0f} → {after / 1024:,.0f} MiB ({growth:+.1%}, "
            f"{nproc} processes) | | | 0 errors, < 5% | {'yes' if not soak.error_count and growth < 0.05 else 'no'} |"
        )
    lines += [
        "",
        "Latency (ms, medians over runs):",
        "",
        "| run | p50 | p90 | p99 | p99.9 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key in (
        ("echo unary, max load", "echo_unary"),
        ("regionlock unary, max load", "rl_unary"),
        ("echo batch of 1,000, max load", "echo_batch"),
        ("regionlock batch of 1,000", "rl_batch"),
        ("echo unary, half of regionlock's max", "echo_half"),
        ("regionlock unary, half max", "rl_half"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(f"{_pct(r[key], p):.2f}" for p in ("p50", "p90", "p99", "p99.9")) + " |"
        )
    lines += [
        "",
        "Server models, on the echo service (unary req/s, same h2load load; pinned runs put h2load on core 1):",
        "",
        "| model | req/s |",
        "| --- | ---: |",
    ]
    for name, results in r["models"].items():
        lines.append(f"| {name} | {_med(results, lambda x: x.requests_per_s):,.0f} |")
    lines += [
        "",
        "### Profile of a worker during the batch run",
        "",
        *_profile_lines(r["profile_batch"]),
        "",
        "### Profile of a worker during the unary run",
        "",
        *_profile_lines(r["profile_unary"]),
        "",
    ]
    return "\n".join(lines)


def write_section(
    r: dict, args, machine: str, mix, unary: dict, batch: dict, write: bool = True, notes: str = ""
) -> str:
    """Render the section and put it in place of the old one in RESULTS.md (other sections untouched)."""
    text = render(r, args, machine, mix, unary, batch) + (("\n" + notes.strip() + "\n") if notes else "")
    if write:
        current = RESULTS.read_text()
        start = current.index(HEADING)
        end = current.find("\n## ", start + len(HEADING))
        tail = current[end + 1 :] if end != -1 else ""
        RESULTS.write_text(current[:start] + text.rstrip() + "\n" + ("\n" + tail if tail else ""))
    return text
