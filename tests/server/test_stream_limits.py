"""Open streams: their own threads, a per-worker limit refused with RESOURCE_EXHAUSTED, client cancels counted."""

import dataclasses
import queue
import time
import urllib.request

import grpc
import pytest

from regionlock.service.server.lifecycle import Service
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.service import IP_BERLIN

REQUEST = pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN)


class OpenStream:
    """A StreamCheckDevices call whose requests the test sends one at a time."""

    def __init__(self, channel: grpc.Channel):
        self.requests: queue.Queue = queue.Queue()
        self.call = pb_grpc.DeviceCheckServiceStub(channel).StreamCheckDevices(
            iter(self.requests.get, None), timeout=60
        )

    def check(self, request: pb.CheckDeviceRequest = REQUEST) -> pb.CheckDeviceResponse:
        self.requests.put(request)
        return next(self.call)

    def close(self) -> None:
        """Cancel (the server sees a cancel, not a half-close), then end the client's request thread."""
        self.call.cancel()
        self.requests.put(None)


def _metrics(service) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.fixture
def limited(world):
    """A server that serves at most 2 open streams, and a channel to it."""
    service = Service(dataclasses.replace(world, max_streams=2))
    service.start()
    service.reload()
    channel = grpc.insecure_channel(f"127.0.0.1:{service.check_port}")
    try:
        yield service, channel
    finally:
        channel.close()
        service.stop(0)


def test_open_streams_leave_threads_for_unary_and_batch_calls(running):
    # the server's shared pool has 16 threads: with streams on it, 20 open streams left none for other calls
    streams = [OpenStream(running.check) for _ in range(20)]
    try:
        assert all(s.check().reason == pb.REASON_AUTHORIZED for s in streams)
        stub = pb_grpc.DeviceCheckServiceStub(running.check)
        assert stub.CheckDevice(REQUEST, timeout=5).reason == pb.REASON_AUTHORIZED
        batch = stub.CheckDevices(pb.CheckDevicesRequest(checks=[REQUEST] * 3), timeout=5)
        assert [r.response.reason for r in batch.results] == [pb.REASON_AUTHORIZED] * 3
        assert all(s.check().reason == pb.REASON_AUTHORIZED for s in streams)  # and the streams go on
    finally:
        for s in streams:
            s.close()


def test_a_stream_over_max_streams_is_refused_and_a_freed_slot_is_taken_again(limited):
    service, channel = limited
    first, second = OpenStream(channel), OpenStream(channel)
    assert first.check().reason == second.check().reason == pb.REASON_AUTHORIZED
    third = OpenStream(channel)
    with pytest.raises(grpc.RpcError) as info:
        third.check()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 streams (max_streams)" in info.value.details()
    assert first.check().reason == pb.REASON_AUTHORIZED  # the open ones are unharmed
    second.close()
    for _ in range(50):  # the slot is freed when the server sees the cancel, a moment after the client sends it
        fourth = OpenStream(channel)
        try:
            assert fourth.check().reason == pb.REASON_AUTHORIZED
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        pytest.fail("the cancelled stream's slot was never freed")
    fourth.close()
    first.close()
    text = _metrics(service)
    assert 'regionlock_rpc_errors_total{code="RESOURCE_EXHAUSTED",method="StreamCheckDevices"}' in text


def test_a_cancelled_stream_is_counted_as_cancelled_not_as_an_internal_error(limited, caplog):
    service, channel = limited
    stream = OpenStream(channel)
    assert stream.check().reason == pb.REASON_AUTHORIZED
    stream.close()
    for _ in range(100):
        text = _metrics(service)
        if 'regionlock_rpc_errors_total{code="CANCELLED",method="StreamCheckDevices"} 1.0' in text:
            break
        time.sleep(0.05)  # the server sees the cancel a moment after the client sends it
    else:
        pytest.fail("the cancel was not counted:\n" + text)
    assert 'code="INTERNAL"' not in text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_stream_the_client_ends_normally_is_not_counted_as_an_error(limited):
    service, channel = limited
    stub = pb_grpc.DeviceCheckServiceStub(channel)
    for _ in range(20):
        responses = list(stub.StreamCheckDevices(iter([REQUEST] * 3), timeout=10))
        assert [r.reason for r in responses] == [pb.REASON_AUTHORIZED] * 3
    time.sleep(0.2)  # a miscounted end would be counted as the server finishes the call
    assert "regionlock_rpc_errors_total{" not in _metrics(service)
