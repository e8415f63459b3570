"""CheckDevice through the batch kernel (a batch of one) answers as the protobuf reference path does."""

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from test_batch_fastpath import (  # the twins share the batch tests' worlds and strategies
    DECISION_ID,
    HYPOTHESIS,
    SMALL_IPS,
    SMALL_SERIALS,
    _decisions,
    items,
    small_pair,
)

from regionlock.service.errors import InvalidArgument, ServiceError
from regionlock.v1 import device_check_pb2 as pb

twins = small_pair  # the batch tests' fixture: a fast and a reference servicer over one small world with overrides


def assert_unary_twins(data: bytes, fast, reference) -> None:
    try:
        request = pb.CheckDeviceRequest.FromString(data)
    except DecodeError:
        with pytest.raises(InvalidArgument) as info:
            fast.check_device_fast(data)
        assert info.value.message.startswith("request: ")
        return
    try:
        expected = reference.check_device_reference(request)
    except ServiceError as exc:
        with pytest.raises(type(exc)) as info:
            fast.check_device_fast(data)
        assert info.value.message == exc.message
        return
    raw = fast.check_device_fast(data)
    got = pb.CheckDeviceResponse.FromString(raw)
    assert DECISION_ID.match(got.decision_id)
    assert got.decision_id.split("-")[0] == fast.ids.prefix
    got.decision_id = expected.decision_id = ""
    assert got == expected, (request, got, expected)
    assert got.SerializeToString() == expected.SerializeToString()
    assert _decisions(fast) == _decisions(reference)


@HYPOTHESIS
@given(data=st.data())
def test_small_world_random_items(twins, data):
    fast, reference = twins
    assert_unary_twins(data.draw(items(SMALL_SERIALS, SMALL_IPS)), fast, reference)


@pytest.mark.parametrize(
    ("serial", "ip"),
    [("EEA-0001", "5.0.1.1"), ("STRANGER", "5.0.1.1"), ("CN-0001", "5.3.1.1"), ("GLOBAL-0001", "5.2.1.1")],
)
def test_message_only_for_a_blocked_device(twins, serial, ip):
    fast, _ = twins
    request = pb.CheckDeviceRequest(serial=serial, ip=ip).SerializeToString()
    response = pb.CheckDeviceResponse.FromString(fast.check_device_fast(request))
    assert bool(response.message) == (response.verdict == pb.VERDICT_BLOCK)


def test_decision_ids_are_unique_across_unary_calls(twins):
    fast, _ = twins
    request = pb.CheckDeviceRequest(serial="GLOBAL-0001", ip="5.0.1.1").SerializeToString()
    ids = {pb.CheckDeviceResponse.FromString(fast.check_device_fast(request)).decision_id for _ in range(100)}
    assert len(ids) == 100


def test_malformed_unary_request_is_invalid_argument(running):
    raw = running.raw_check("CheckDevice")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request: ")
