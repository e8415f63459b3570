"""Start-up fails fast with any worker count: one line and exit code 2; a crash loop stops the supervisor."""

import os
import re
import signal
import subprocess
import time

import pytest

from regionlock.service.server.workers import CRASH_LOOP_DEATHS

from support.service import free_port, serve_command, start_server_process


def _serve(world, *extra: str) -> subprocess.CompletedProcess[str]:
    addresses = (f"127.0.0.1:{free_port()}" for _ in range(3))
    args = [*serve_command(world, *addresses), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


@pytest.mark.parametrize(
    "store",
    [
        "bogus://nowhere",
        "sqlite://relative/path",
        "postgresql://nobody@127.0.0.1:{port}/nodb?start_timeout=1&connect_timeout=1",
    ],
)
def test_a_store_that_cannot_open_stops_the_start_in_one_line(world, store):
    store = store.format(port=free_port())
    lines = {}
    for workers in (1, 2, 3):
        started = time.monotonic()
        result = _serve(world, "--store", store, "--workers", str(workers))
        assert result.returncode == 2, (workers, result.stderr)
        errors = _error_lines(result.stderr)
        assert len(errors) == 1, (workers, result.stderr)
        assert errors[0].startswith("regionlock: error: "), errors
        assert time.monotonic() - started < 60
        lines[workers] = errors[0]
    assert len(set(lines.values())) == 1, lines


def test_a_crash_loop_stops_the_supervisor(world, tmp_path):
    server = start_server_process(world, tmp_path, "--workers", "2")
    killed = 0
    try:
        deadline = time.monotonic() + 60
        while server.process.poll() is None and time.monotonic() < deadline:
            pids = [int(p) for p in re.findall(r"started check process (\d+)", server.log())]
            if len(pids) == 2 + killed:
                try:
                    os.kill(pids[-1], signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed += 1
            time.sleep(0.05)
        assert server.process.wait(30) == 1, server.log()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert killed == CRASH_LOOP_DEATHS, server.log()
    assert re.search(rf"regionlock: error: check processes died {CRASH_LOOP_DEATHS} times within", server.log())
