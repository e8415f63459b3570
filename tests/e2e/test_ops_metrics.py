"""Metrics scraped from a real server: build info, reloads counted once per reload (not the load at start, not
once per worker), and each process's own memory, CPU and file descriptors labelled with its pid."""

from __future__ import annotations

import os
import re
import time
import urllib.request

import grpc

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.server.auth import create_token
from regionlock.service.server.metrics import package_version

from support.service import free_port, start_server_process, stop_server_process

PROCESS_METRICS = ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def _reloads(text: str, result: str) -> float:
    match = re.search(rf'^regionlock_reloads_total\{{result="{result}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _until(port: int, condition, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = _scrape(port)
        if condition(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_in_process_server_exports_build_info_and_does_not_count_the_load_at_start(running):
    text = _scrape(running.service.metrics_port)
    assert f'regionlock_build_info{{version="{package_version()}"}} 1.0' in text
    assert package_version() != "unknown"
    assert _reloads(text, "ok") == 0.0
    running.service.reload("test")
    text = _until(running.service.metrics_port, lambda t: f'pid="{os.getpid()}"' in t)
    assert _reloads(text, "ok") == 1.0
    for name in PROCESS_METRICS:
        assert re.search(rf'^{name}{{pid="{os.getpid()}"}} \S+$', text, re.MULTILINE), name


def test_workers_count_a_reload_once_and_publish_their_process_metrics(world, tmp_path):
    token = create_token(world.tokens_path, "alice", "operator")
    port = free_port()
    server = start_server_process(world, tmp_path, "--workers", "2", "--metrics-addr", f"127.0.0.1:{port}")
    try:
        pids = {int(p) for p in re.findall(r"started (?:check|admin) process (\d+)", server.log())}
        assert len(pids) == 3, server.log()

        def every_process(text: str) -> bool:
            return all(f'process_resident_memory_bytes{{pid="{pid}"}}' in text for pid in pids)

        text = _until(port, every_process)
        assert every_process(text), text
        assert f'regionlock_build_info{{version="{package_version()}"}} 1.0' in text
        assert _reloads(text, "ok") == 0.0  # the load at start of each of the three processes is no reload
        for name in PROCESS_METRICS:
            for pid in pids:
                assert re.search(rf'^{name}{{pid="{pid}"}} [0-9.e+]+$', text, re.MULTILINE), (name, pid)

        with grpc.insecure_channel(server.admin_addr) as channel:
            apb_grpc.AdminServiceStub(channel).ReloadData(
                apb.ReloadDataRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=30
            )
        time.sleep(1.0)  # the workers reload after the Admin process: they must not add to the count
        assert _reloads(_scrape(port), "ok") == 1.0

    finally:
        assert stop_server_process(server) == 0, server.log()
