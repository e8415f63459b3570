"""Instance directories in /dev/shm (metrics, shared data files) left by a killed server go at the next start."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from regionlock.service.server.leftovers import DATA_PREFIX, METRICS_PREFIX, instance_dir, remove_leftovers
from regionlock.service.server.workers import _memory_backed_dir

from support.service import start_server_process, stop_server_process


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_directories_of_gone_processes_are_removed(tmp_path, caplog):
    dead = _dead_pid()
    mine = Path(instance_dir(METRICS_PREFIX, str(tmp_path)))
    gone = [tmp_path / f"{METRICS_PREFIX}{dead}-abc", tmp_path / f"{DATA_PREFIX}{dead}-def"]
    unrelated = [tmp_path / "regionlock-metrics-old_style", tmp_path / f"other-{dead}-x"]
    for directory in [*gone, *unrelated]:
        directory.mkdir()
    (gone[0] / "counter_123.db").write_bytes(b"x")
    with caplog.at_level("INFO", logger="regionlock.service.server.leftovers"):
        assert sorted(remove_leftovers(str(tmp_path))) == sorted(str(d) for d in gone)
    assert "removed 2 directories left by killed instances" in caplog.text
    assert mine.is_dir() and all(d.is_dir() for d in unrelated)
    assert not any(d.exists() for d in gone)


def _instance_dirs(pid: int) -> list[str]:
    parent = _memory_backed_dir() or "/tmp"
    return sorted(glob.glob(f"{parent}/{METRICS_PREFIX}{pid}-*") + glob.glob(f"{parent}/{DATA_PREFIX}{pid}-*"))


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {pids} still running")


def test_a_sigkilled_servers_directories_are_removed_at_the_next_start(world, tmp_path):
    killed = start_server_process(world, tmp_path, "--workers", "2", "--metrics-addr", "")
    children = [int(p) for p in re.findall(r"started \w+ process (\d+)", killed.log())]
    left = _instance_dirs(killed.process.pid)
    assert len(left) == 2, killed.log()
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait()
    _wait_gone(children)  # the children follow the supervisor's death (SIGTERM), leaving the directories
    # (that they are still there is not asserted: on two xdist workers another test's server may start now and
    # remove them, which is the behaviour under test; the unit test above holds that only dead ones go)

    server = start_server_process(world, tmp_path, "--workers", "2", "--metrics-addr", "")
    try:
        # gone by the time it serves: its own start removed them, or (the suite runs on two workers) another
        # test's server starting meanwhile did; which one logged it is the unit test's business
        assert not any(os.path.exists(d) for d in left), server.log()
        assert len(_instance_dirs(server.process.pid)) == 2  # its own stay while it runs
    finally:
        assert stop_server_process(server) == 0, server.log()
    assert _instance_dirs(server.process.pid) == []  # and go when it stops
