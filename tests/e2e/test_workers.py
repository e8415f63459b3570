"""Multi-process serving: two DeviceCheck workers share a port, both answer and count, overrides reach both."""

import os
import re
import signal
import time
import urllib.request

import grpc

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.server.auth import create_token
from regionlock.service.server.workers import worker_cpu
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.service import IP_CRIMEA, free_port, start_server_process, stop_server_process


def _check_on_fresh_connections(address: str, serial: str, n: int) -> list[pb.CheckDeviceResponse]:
    responses = []
    for _ in range(n):
        # a new channel is a new TCP connection, which SO_REUSEPORT hands to one of the workers
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.DeviceCheckServiceStub(channel)
            responses.append(stub.CheckDevice(pb.CheckDeviceRequest(serial=serial, ip=IP_CRIMEA), timeout=5))
    return responses


def _process_of(response: pb.CheckDeviceResponse) -> str:
    return response.decision_id.split("-")[0]  # the per-process prefix of decision ids


def test_two_workers(world, tmp_path):
    token = create_token(world.tokens_path, "alice", "operator")
    metrics_port = free_port()
    server = start_server_process(world, tmp_path, "--workers", "2", "--metrics-addr", f"127.0.0.1:{metrics_port}")
    try:
        pids = [int(p) for p in re.findall(r"started check process (\d+)", server.log())]
        assert len(pids) == 2, server.log()
        responses = _check_on_fresh_connections(server.check_addr, "GLOBAL-0001", 40)
        assert {r.reason for r in responses} == {pb.REASON_REGION_RESTRICTED}
        assert len({_process_of(r) for r in responses}) == 2, "both workers should have answered"

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        counted = sum(
            float(value)
            for value in re.findall(r'regionlock_decisions_total\{[^}]*reason="REGION_RESTRICTED"[^}]*\} (\S+)', text)
        )
        assert counted == 40, "the metrics of both workers are aggregated"

        with grpc.insecure_channel(server.admin_addr) as channel:
            apb_grpc.AdminServiceStub(channel).SetOverride(
                apb.SetOverrideRequest(serial="GLOBAL-0001", action=apb.OVERRIDE_ACTION_UNLOCK, reason="trip"),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=5,
            )
        written = time.monotonic()
        seen = set()
        while time.monotonic() - written < 1.0 and len(seen) < 2:
            for response in _check_on_fresh_connections(server.check_addr, "GLOBAL-0001", 4):
                if response.reason == pb.REASON_OVERRIDE_UNLOCK:
                    seen.add(_process_of(response))
        assert len(seen) == 2, "the override reached both workers within 1 second"
    finally:
        assert stop_server_process(server) == 0, server.log()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} still running after SIGTERM")


def test_a_worker_that_dies_is_restarted(world, tmp_path):
    server = start_server_process(world, tmp_path, "--workers", "2")
    try:
        pids = [int(p) for p in re.findall(r"started check process (\d+)", server.log())]
        affinity = [os.sched_getaffinity(pid) for pid in pids]
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(re.findall(r"started check process", server.log())) < 3:
            time.sleep(0.1)
        log = server.log()
        assert f"check process {pids[0]} died (signal SIGKILL)" in log
        assert len(re.findall(r"started check process", log)) == 3
        replacement = int(re.findall(r"started check process (\d+)", log)[-1])
        assert os.sched_getaffinity(replacement) == affinity[0], "the restarted worker takes the dead one's CPU"
        responses = _check_on_fresh_connections(server.check_addr, "GLOBAL-0001", 10)
        assert all(r.reason == pb.REASON_REGION_RESTRICTED for r in responses)
    finally:
        assert stop_server_process(server) == 0, server.log()


def _worker_affinities(world, tmp_path, *flags: str) -> list[set[int]]:
    server = start_server_process(world, tmp_path, "--workers", "2", *flags)
    try:
        pids = [int(p) for p in re.findall(r"started check process (\d+)", server.log())]
        return [os.sched_getaffinity(pid) for pid in pids]
    finally:
        assert stop_server_process(server) == 0, server.log()


def test_workers_run_on_a_cpu_each_unless_told_not_to(world, tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    pinned = _worker_affinities(world, tmp_path)
    if len(allowed) >= 2:
        assert pinned == [{allowed[0]}, {allowed[1]}]
    else:  # fewer CPUs than workers: none is pinned
        assert pinned == [set(allowed)] * 2
    assert _worker_affinities(world, tmp_path, "--cpu-affinity", "none") == [set(allowed)] * 2


def test_worker_cpu_rule():
    allowed = sorted(os.sched_getaffinity(0))
    assert worker_cpu(None, 1, "auto") is None  # the Admin process floats
    assert worker_cpu(0, 1, "none") is None
    assert worker_cpu(0, 1, "auto") == allowed[0]
    assert worker_cpu(len(allowed) - 1, len(allowed), "auto") == allowed[-1]
    assert worker_cpu(0, len(allowed) + 1, "auto") is None  # more workers than CPUs: leave them to the kernel


def test_worker_metrics_live_in_memory_and_go_with_the_server(world, tmp_path):
    server = start_server_process(world, tmp_path, "--workers", "2")
    try:
        _check_on_fresh_connections(server.check_addr, "GLOBAL-0001", 4)
        metrics_dir = re.findall(r"their metrics in (\S+)", server.log())[0]
        assert metrics_dir.startswith("/dev/shm/regionlock-metrics-"), "a tmpfs, where there is one (Linux)"
        assert any(name.endswith(".db") for name in os.listdir(metrics_dir))
    finally:
        assert stop_server_process(server) == 0, server.log()
    assert not os.path.exists(metrics_dir), "the metrics directory is removed at stop"
