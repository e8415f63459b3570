"""INVALID_ARGUMENT carries its field as a google.rpc.BadRequest field violation, on DeviceCheck and Admin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from regionlock.admin.v1 import admin_pb2, admin_pb2_grpc
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.service import IP_BERLIN, Running, run_service, write_world


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Running]:
    """One Service for the module (no test changes its data), with max_batch 2."""
    world = replace(write_world(tmp_path_factory.mktemp("details") / "world"), max_batch=2)
    with run_service(world) as running:
        yield running


def bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest:
    """The BadRequest packed in the call's google.rpc.Status (grpc-status-details-bin), as a client reads it."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailing metadata"
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], error.details())
    [detail] = status.details
    assert detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
    found = error_details_pb2.BadRequest()
    detail.Unpack(found)
    return found


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    found = [(v.field, v.description) for v in bad_request(error).field_violations]
    assert [f"{field}: {description}" for field, description in found] == [error.details()], "and in the message"
    return found


@pytest.mark.parametrize(
    ("serial", "ip", "field"),
    [("eea-0001", "not-an-ip", "ip"), ("", IP_BERLIN, "serial"), ("bad serial!", IP_BERLIN, "serial")],
)
def test_check_device_names_the_field(server, serial, ip, field):
    check = server.check
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.DeviceCheckServiceStub(check).CheckDevice(pb.CheckDeviceRequest(serial=serial, ip=ip), timeout=5)
    [(named, _)] = violations(info.value)
    assert named == field


def test_malformed_bytes_name_the_request(server):
    check = server.check
    raw = check.unary_unary(
        "/regionlock.v1.DeviceCheckService/CheckDevice", request_serializer=bytes, response_deserializer=bytes
    )
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff", timeout=5)
    assert violations(info.value)[0][0] == "request"


def test_a_batch_over_max_batch_names_checks_and_its_items_errors_stay_in_the_response(server):
    check = server.check
    stub = pb_grpc.DeviceCheckServiceStub(check)
    item = pb.CheckDeviceRequest(serial="eea-0001", ip=IP_BERLIN)
    with pytest.raises(grpc.RpcError) as info:
        stub.CheckDevices(pb.CheckDevicesRequest(checks=[item] * 3), timeout=5)
    assert violations(info.value) == [("checks", "at most 2 items per call, got more")]
    # per item: the error names its field in the result, and the call succeeds
    response = stub.CheckDevices(pb.CheckDevicesRequest(checks=[item, pb.CheckDeviceRequest(serial="x")]), timeout=5)
    assert response.results[0].HasField("response")
    assert response.results[1].error.message.startswith("ip: ")


def test_admin_names_the_field(server):
    admin, auth = server.admin, server.auth()
    stub = admin_pb2_grpc.AdminServiceStub(admin)
    request = admin_pb2.SetOverrideRequest(serial="eea-0001", action=admin_pb2.OVERRIDE_ACTION_UNLOCK, reason="")
    with pytest.raises(grpc.RpcError) as info:
        stub.SetOverride(request, metadata=auth, timeout=5)
    assert violations(info.value) == [("reason", "required")]
    bulk = admin_pb2.BulkSetOverridesRequest(items=[request], dry_run=True)
    with pytest.raises(grpc.RpcError) as info:
        stub.BulkSetOverrides(bulk, metadata=auth, timeout=5)
    assert violations(info.value) == [("items[0].reason", "required")]


def test_other_errors_carry_no_details(server):
    admin, auth = server.admin, server.auth()
    with pytest.raises(grpc.RpcError) as info:
        admin_pb2_grpc.AdminServiceStub(admin).GetOverride(
            admin_pb2.GetOverrideRequest(serial="eea-0001"), metadata=auth, timeout=5
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_status.from_call(info.value) is None


def test_grpcurl_prints_a_readable_error(server):
    service = server.service
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    result = subprocess.run(
        [
            "grpcurl",
            "-plaintext",
            "-d",
            json.dumps({"serial": "eea-0001", "ip": "not-an-ip"}),
            f"127.0.0.1:{service.check_port}",
            "regionlock.v1.DeviceCheckService/CheckDevice",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
    assert "Message: ip: expected an IPv4 or IPv6 address, got 'not-an-ip'" in result.stderr
    assert "google.rpc.BadRequest" in result.stderr  # the detail, decoded
    assert re.search(r'"field":\s*"ip"', result.stderr), result.stderr


def test_the_edge_imports_no_prometheus_client():
    # auth (and so the edge) is imported by the supervisor of `serve --workers N` before it sets up the
    # multiprocess metrics directory, which must come before prometheus_client is imported (workers.py)
    code = "import sys, regionlock.service.server.auth; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
