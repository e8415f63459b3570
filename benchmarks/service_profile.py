"""Helpers of benchmarks/service.py: the server's processes, their memory, and a py-spy profile of the busiest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# the service's own code on the check path, reported by share of samples whatever its rank
FOCUS = ("DeviceCheckServicer.", "decide (", "count_decisions", "versions_message", "edge.py", "Metrics.observe_rpc")


def cpu_ticks(pids: list[int]) -> dict[int, int]:
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
    first = cpu_ticks(pids)
    time.sleep(interval)
    second = cpu_ticks(pids)
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
    focus = {f: n for f, n in anywhere.items() if any(name in f for name in FOCUS)}
    return {"samples": total, "self": own.most_common(top), "inclusive": anywhere.most_common(top), "focus": focus}


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
                "--gil",
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
