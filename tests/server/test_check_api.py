"""DeviceCheck end to end through real channels to a server on port 0."""

import os
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.allowlist import build_allowlist_from_rows
from support.service import (
    ALLOWLIST_ROWS,
    GEO_ROWS,
    IP_BERLIN,
    IP_CRIMEA,
    IP_UNKNOWN,
)


def _stub(running):
    return pb_grpc.DeviceCheckServiceStub(running.check)


def test_check_device(served):
    response = _stub(served).CheckDevice(
        pb.CheckDeviceRequest(serial="eea-0001", ip=IP_BERLIN, request_id="r1"), timeout=5
    )
    assert response.request_id == "r1"
    assert response.verdict == pb.VERDICT_ALLOW
    assert response.reason == pb.REASON_AUTHORIZED
    assert response.rule_id == "markets.EEA"
    assert (response.region.country, response.region.subdivision, response.region.network) == (
        "DE",
        "DE-BE",
        "5.0.0.0/16",
    )
    assert response.sold_market == "EEA"
    assert response.enforced
    assert response.cache_ttl_seconds == 600
    snapshot = served.service.holder.current
    assert response.versions.geo == snapshot.geo.build_id
    assert response.versions.allowlist == snapshot.allowlist.build_id
    assert response.versions.policy == snapshot.policy.version
    assert response.decision_id
    assert list(response.trace) == []


def test_blocked_is_a_verdict_not_an_error(served):
    response = _stub(served).CheckDevice(pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_CRIMEA), timeout=5)
    assert response.verdict == pb.VERDICT_BLOCK
    assert response.reason == pb.REASON_REGION_RESTRICTED
    assert response.rule_id == "restricted:sanctions"
    assert response.message == "Not here."


def test_decision_ids_are_unique(served):
    stub = _stub(served)
    ids = {stub.CheckDevice(pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN)).decision_id for _ in range(50)}
    assert len(ids) == 50


def test_explain(served):
    response = _stub(served).CheckDevice(pb.CheckDeviceRequest(serial="CN-0001", ip=IP_BERLIN, explain=True), timeout=5)
    assert response.reason == pb.REASON_GRAY_IMPORT
    assert any("5.0.0.0/16" in line for line in response.trace)
    assert any("market CN" in line for line in response.trace)


@pytest.mark.parametrize(("serial", "ip", "field"), [("", IP_BERLIN, "serial"), ("EEA-0001", "1.2.3", "ip")])
def test_invalid_argument_names_the_field(served, serial, ip, field):
    with pytest.raises(grpc.RpcError) as info:
        _stub(served).CheckDevice(pb.CheckDeviceRequest(serial=serial, ip=ip), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("serial", "ip", "field"), [("x" * (4 << 20), IP_BERLIN, "serial"), ("A-1", "1" * (4 << 20), "ip")]
)
def test_a_huge_invalid_value_is_echoed_shortened(served, serial, ip, field):
    """Unary, batch and stream: INVALID_ARGUMENT naming the field, the value cut short (a 4 MiB value echoed
    whole would exceed the metadata limit and come back as RESOURCE_EXHAUSTED)."""
    request = pb.CheckDeviceRequest(serial=serial, ip=ip)
    with pytest.raises(grpc.RpcError) as info:
        _stub(served).CheckDevice(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ") and len(info.value.details()) < 200
    [result] = _stub(served).CheckDevices(pb.CheckDevicesRequest(checks=[request]), timeout=10).results
    assert result.error.message == info.value.details()
    [streamed] = _stub(served).StreamCheckDevices(iter([request]), timeout=10)
    assert streamed.error.message == info.value.details()


def test_a_batch_of_millions_of_empty_items_is_refused_as_too_many(served):
    with pytest.raises(grpc.RpcError) as info:
        served.raw_check("CheckDevices")(b"\x0a\x00" * (16 << 20), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    limit = served.service.settings.max_batch
    assert info.value.details() == f"checks: at most {limit} items per call, got more"


def test_batch_in_order_with_per_item_errors(served):
    checks = [
        pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN, request_id="a"),
        pb.CheckDeviceRequest(serial="bad serial!", ip=IP_BERLIN, request_id="b"),
        pb.CheckDeviceRequest(serial="CN-0001", ip=IP_CRIMEA, request_id="c"),
        pb.CheckDeviceRequest(serial="CN-0001", ip="nowhere", request_id="d"),
        pb.CheckDeviceRequest(serial="NOBODY", ip=IP_UNKNOWN, request_id="e"),
    ]
    response = _stub(served).CheckDevices(pb.CheckDevicesRequest(checks=checks), timeout=5)
    assert [r.request_id for r in response.results] == ["a", "b", "c", "d", "e"]
    assert [r.WhichOneof("outcome") for r in response.results] == [
        "response",
        "error",
        "response",
        "error",
        "response",
    ]
    assert response.results[0].response.reason == pb.REASON_AUTHORIZED
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.results[1].error.message.startswith("serial: ")
    assert response.results[2].response.reason == pb.REASON_REGION_RESTRICTED
    assert response.results[3].error.message.startswith("ip: ")
    assert response.results[4].response.reason == pb.REASON_UNKNOWN_REGION


def test_batch_over_the_limit_fails_the_whole_call(served):
    limit = served.service.settings.max_batch
    checks = [pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN)] * (limit + 1)
    with pytest.raises(grpc.RpcError) as info:
        _stub(served).CheckDevices(pb.CheckDevicesRequest(checks=checks), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("checks: ")
    at_limit = _stub(served).CheckDevices(pb.CheckDevicesRequest(checks=checks[:limit]), timeout=30)
    assert len(at_limit.results) == limit


def test_stream_answers_in_order_and_goes_on_after_a_bad_item(served):
    requests = [
        pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN, request_id="1"),
        pb.CheckDeviceRequest(serial="", ip=IP_BERLIN, request_id="2"),
        pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_CRIMEA, request_id="3"),
    ] * 20
    responses = list(_stub(served).StreamCheckDevices(iter(requests), timeout=10))
    assert [r.request_id for r in responses] == [r.request_id for r in requests]
    for response in responses:
        if response.request_id == "2":
            assert response.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert response.verdict == pb.VERDICT_UNSPECIFIED
        else:
            assert not response.HasField("error")
    assert responses[2].reason == pb.REASON_REGION_RESTRICTED


def test_deadline_exceeded_and_server_stays_healthy(running):
    checks = [pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN)] * 10_000
    with pytest.raises(grpc.RpcError) as info:
        _stub(running).CheckDevices(pb.CheckDevicesRequest(checks=checks), timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _stub(running).CheckDevice(pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN), timeout=5).verdict


def test_malformed_message_is_refused_without_harm(served):
    raw = served.raw_check("CheckDevice")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff\x0f\x00garbage", timeout=5)
    assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert _stub(served).CheckDevice(pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN), timeout=5).verdict


def test_stream_answers_a_malformed_message_with_an_error_and_goes_on(served):
    raw = served.check.stream_stream(
        "/regionlock.v1.DeviceCheckService/StreamCheckDevices",
        request_serializer=lambda b: b,
        response_deserializer=pb.CheckDeviceResponse.FromString,
    )
    good = pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN, request_id="ok").SerializeToString()
    responses = list(raw(iter([good, b"\xff\xff\xff\xff\x0f\x00garbage", good]), timeout=10))
    assert [r.request_id for r in responses] == ["ok", "", "ok"]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert responses[1].error.message.startswith("request: ")
    assert responses[0].reason == responses[2].reason == pb.REASON_AUTHORIZED


def test_health_serving_after_load(served):
    stub = health_pb2_grpc.HealthStub(served.check)
    for service in ("", "regionlock.v1.DeviceCheckService"):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_reload_with_a_corrupt_file_keeps_the_old_data(running, world, tmp_path):
    from regionlock.service.errors import FailedPrecondition

    before = running.service.holder.current.versions
    damaged = tmp_path / "damaged"
    data = bytearray(world.geo_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(data)
    os.replace(damaged, world.geo_path)  # a new file swapped in, as a deployment does
    with pytest.raises(FailedPrecondition):
        running.service.reload()
    assert running.service.holder.reloads_failed == 1
    response = _stub(running).CheckDevice(pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN), timeout=5)
    assert response.reason == pb.REASON_AUTHORIZED
    assert response.versions.geo == before.geo
    metrics = _metrics(running)
    assert 'regionlock_reloads_total{result="failed"} 1.0' in metrics


def test_reload_with_new_data_changes_versions(running, world, tmp_path):
    before = running.service.holder.current.versions
    fresh = build_allowlist_from_rows(tmp_path, [*ALLOWLIST_ROWS, ("NEW-0001", "EEA")])
    os.replace(fresh, world.allowlist_path)
    running.service.reload()
    response = _stub(running).CheckDevice(pb.CheckDeviceRequest(serial="NEW-0001", ip=IP_BERLIN), timeout=5)
    assert response.reason == pb.REASON_AUTHORIZED
    assert response.versions.allowlist != before.allowlist
    assert response.versions.geo == before.geo
    assert GEO_ROWS  # the geo data was not touched


def _metrics(running) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.service.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_count_decisions_and_batches(running):
    stub = _stub(running)
    stub.CheckDevice(pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_CRIMEA), timeout=5)
    stub.CheckDevices(
        pb.CheckDevicesRequest(checks=[pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN)] * 3), timeout=5
    )
    text = _metrics(running)
    assert 'regionlock_decisions_total{enforced="true",reason="REGION_RESTRICTED",verdict="BLOCK"} 1.0' in text
    assert 'regionlock_decisions_total{enforced="true",reason="AUTHORIZED",verdict="ALLOW"} 3.0' in text
    assert "regionlock_batch_size_count 1.0" in text
    assert 'regionlock_rpc_duration_seconds_count{method="CheckDevice"} 1.0' in text
    assert "regionlock_snapshot_info{" in text
