"""On the real GeoLite2 data with the default policy: Crimea and Sevastopol are blocked, Kyiv is not."""

import ipaddress
from array import array

import grpc
import maxminddb
import pytest

from regionlock.core.geo import GeoDatabase
from regionlock.service.policy import default_policy_text
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from fixtures_allowlist import build_allowlist_from_rows


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
    from regionlock.service.server import Service
    from regionlock.service.settings import Settings

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
