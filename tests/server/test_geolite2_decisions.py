"""On the real GeoLite2 data with the default policy: Crimea and Sevastopol are blocked, Kyiv is not."""

import ipaddress
import json
import subprocess
from array import array

import grpc
import maxminddb
import pytest

from regionlock.core.geo import GeoDatabase
from regionlock.service.policy import default_policy_text
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.allowlist import build_allowlist_from_rows
from support.geo import ipv4_spelling, maxminddb_network
from support.service import regionlock_command

# 5.101.208.1 (Crimea in GeoLite2-City 2018) as 6to4, IPv4-compatible and MaxMind's Teredo alias spell it
CRIMEA_SPELLINGS = ["2002:565:d001::1", "::5.101.208.1", "2001:0:565:d001::1"]


def _addresses_in(db: GeoDatabase, country: str, subdivision: str, limit: int = 3) -> list[str]:
    """Addresses the compiled database places in the region, found by sweeping the IPv4 space by /24."""
    rid = db.regions.index((country, subdivision))
    found = []
    for top in range(1 << 16):
        probe = array("I", [(top << 16) | (k << 8) | 1 for k in range(256)])
        for address, got in zip(probe, db.region_ids_v4(probe), strict=True):
            if got == rid:
                found.append(str(ipaddress.IPv4Address(address)))
                if len(found) == limit:
                    return found
    return found


@pytest.fixture(scope="module")
def geolite2_service(geolite2_db, geolite2_mmdb_path, tmp_path_factory):
    from regionlock.service.server.lifecycle import Service
    from regionlock.service.server.settings import Settings

    data = tmp_path_factory.mktemp("geolite2-service")
    policy = data / "policy.toml"
    policy.write_text(default_policy_text())
    allowlist = build_allowlist_from_rows(data, [("GLOBAL-0001", "GLOBAL"), ("EEA-0001", "EEA")])
    settings = Settings(
        data_dir=data,
        geo=geolite2_db,
        allowlist=allowlist,
        policy=policy,
        check_addr="127.0.0.1:0",
        admin_addr="127.0.0.1:0",
        metrics_addr="",
        workers=1,
    )
    service = Service(settings)
    service.start()
    service.reload()
    reader = maxminddb.open_database(str(geolite2_mmdb_path))
    channel = grpc.insecure_channel(f"127.0.0.1:{service.check_port}")
    try:
        yield pb_grpc.DeviceCheckServiceStub(channel), GeoDatabase.open(geolite2_db, verify=False), reader
    finally:
        channel.close()
        reader.close()
        service.stop(0)


@pytest.mark.parametrize(
    ("subdivision", "verdict", "reason"),
    [
        ("UA-43", pb.VERDICT_BLOCK, pb.REASON_REGION_RESTRICTED),  # Crimea
        ("UA-40", pb.VERDICT_BLOCK, pb.REASON_REGION_RESTRICTED),  # Sevastopol
        ("UA-30", pb.VERDICT_ALLOW, pb.REASON_AUTHORIZED),  # Kyiv
    ],
)
def test_ukraine_by_subdivision(geolite2_service, subdivision, verdict, reason):
    stub, db, reader = geolite2_service
    addresses = _addresses_in(db, "UA", subdivision)
    assert addresses, f"GeoLite2 has networks in {subdivision}"
    for ip in addresses:
        record = reader.get(ip)
        assert record["country"]["iso_code"] == "UA"  # maxminddb's own reader agrees on the place
        assert f"UA-{record['subdivisions'][0]['iso_code']}" == subdivision
        response = stub.CheckDevice(pb.CheckDeviceRequest(serial="GLOBAL-0001", ip=ip), timeout=5)
        assert (response.verdict, response.reason) == (verdict, reason), ip
        assert response.region.subdivision == subdivision
        if verdict == pb.VERDICT_BLOCK:
            assert response.rule_id == "restricted:sanctions"


@pytest.fixture(scope="module")
def crimea_spellings(geolite2_service) -> list[str]:
    """The spellings above, and those of more Crimean addresses the compiled data finds; maxminddb vouches."""
    _, db, reader = geolite2_service
    spellings = list(CRIMEA_SPELLINGS)
    for ip in _addresses_in(db, "UA", "UA-43", limit=2):
        v4 = int(ipaddress.IPv4Address(ip))
        spellings += [str(ipv4_spelling(v4, kind, 0xABCD)) for kind in ("compatible", "teredo", "6to4")]
    for ip in spellings:
        record = reader.get(ip)
        assert (record["country"]["iso_code"], record["subdivisions"][0]["iso_code"]) == ("UA", "43"), ip
    return spellings


def test_ipv6_spellings_of_crimea_are_blocked_by_every_method(geolite2_service, crimea_spellings):
    stub, _, reader = geolite2_service
    requests = [
        pb.CheckDeviceRequest(serial="GLOBAL-0001", ip=ip, request_id=str(i)) for i, ip in enumerate(crimea_spellings)
    ]
    unary = [stub.CheckDevice(request, timeout=5) for request in requests]
    batch = [r.response for r in stub.CheckDevices(pb.CheckDevicesRequest(checks=requests), timeout=5).results]
    stream = list(stub.StreamCheckDevices(iter(requests), timeout=10))
    for method, responses in (("CheckDevice", unary), ("CheckDevices", batch), ("StreamCheckDevices", stream)):
        assert len(responses) == len(crimea_spellings), method
        for ip, response in zip(crimea_spellings, responses, strict=True):
            assert (response.verdict, response.reason) == (pb.VERDICT_BLOCK, pb.REASON_REGION_RESTRICTED), (method, ip)
            assert response.rule_id == "restricted:sanctions"
            assert (response.region.country, response.region.subdivision) == ("UA", "UA-43")
            _, prefix = reader.get_with_prefix_len(ip)
            assert response.region.network == maxminddb_network(ipaddress.IPv6Address(ip), prefix), (method, ip)


def test_geo_lookup_command_prints_crimea_for_the_spellings(geolite2_db, crimea_spellings):
    result = subprocess.run(
        [*regionlock_command(), "geo", "lookup", str(geolite2_db), *crimea_spellings],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["ip"] for line in lines] == crimea_spellings
    assert {(line["country"], line["subdivision"]) for line in lines} == {("UA", "UA-43")}
    assert lines[0]["network"] == "2002:565:d000::/37"
