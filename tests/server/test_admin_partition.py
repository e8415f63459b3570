"""Two replicas (in-process servers on port 0) on one PostgreSQL; one is partitioned from it by a TcpProxy that
stops forwarding without closing: its Admin writes fail with UNAVAILABLE within its call deadline, the other
replica's writes go on, and its checks keep answering from the last index."""

from __future__ import annotations

import dataclasses
import time

import grpc
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.server.auth import create_token
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.postgres import TcpProxy, private_schema, require_postgres, store_url
from support.service import IP_BERLIN

CALL_TIMEOUT = 3.0


@pytest.fixture
def two_replicas(world):
    from regionlock.service.server.lifecycle import Service

    require_postgres()
    token = create_token(world.tokens_path, "alice", "operator")
    proxy = TcpProxy()
    services, channels = [], []
    with private_schema() as schema:
        try:
            for url in (store_url(schema), store_url(schema, port=proxy.port, call_timeout=CALL_TIMEOUT)):
                service = Service(dataclasses.replace(world, store=url))
                services.append(service)
                service.start()
                service.reload()
                channels.append(
                    (
                        grpc.insecure_channel(f"127.0.0.1:{service.admin_port}"),
                        grpc.insecure_channel(f"127.0.0.1:{service.check_port}"),
                    )
                )
            yield [(apb_grpc.AdminServiceStub(a), pb_grpc.DeviceCheckServiceStub(c)) for a, c in channels], token, proxy
        finally:
            proxy.cut()
            for admin, check in channels:
                admin.close()
                check.close()
            for service in services:
                service.stop(0)


def _set(stub, token, serial, timeout=20):
    request = apb.SetOverrideRequest(serial=serial, action=apb.OVERRIDE_ACTION_UNLOCK, reason="partition test")
    return stub.SetOverride(request, metadata=[("authorization", f"Bearer {token}")], timeout=timeout)


def test_the_partitioned_replica_fails_fast_and_the_healthy_one_writes_on(two_replicas):
    stubs, token, proxy = two_replicas
    (healthy, _), (cut_off, cut_off_check) = stubs
    _set(cut_off, token, "BEFORE-1")
    proxy.black_hole()
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        _set(cut_off, token, "DURING-1")
    elapsed = time.monotonic() - start
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    assert elapsed < CALL_TIMEOUT + 1.5, elapsed
    start = time.monotonic()
    assert _set(healthy, token, "DURING-2").override.serial == "DURING-2"
    assert time.monotonic() - start < 3.0
    verdict = cut_off_check.CheckDevice(pb.CheckDeviceRequest(serial="BEFORE-1", ip=IP_BERLIN), timeout=5)
    assert verdict.verdict == pb.VERDICT_ALLOW  # the last index it has keeps serving
