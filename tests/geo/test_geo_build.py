"""The builder: CSV validation, source detection, atomic output, and the MaxMind DB reader against maxminddb."""

from __future__ import annotations

import ipaddress
import random

import maxminddb
import pytest
from mmdb_writer import write_mmdb

from regionlock.core.errors import BuildError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_build import build_geo_database, write_geo_csv


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("net,country\n1.0.0.0/8,US\n", ":1: expected the header"),
        ("network,country,subdivision\n1.0.0.1/8,US,\n", ":2: .*host bits"),
        ("network,country,subdivision\n1.0.0.0/8,USA,\n", ":2: country 'USA'"),
        ("network,country,subdivision\n1.0.0.0/8,US,\n2.0.0.0/33,US,\n", ":3: "),
        ("network,country,subdivision\n1.0.0.0/8,UA,RU-43\n", ":2: subdivision 'RU-43' is not of country UA"),
        ("network,country,subdivision\n1.0.0.0/8,UA,43,9\n", ":2: expected 3 columns"),
    ],
)
def test_bad_csv_rows_are_refused_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(BuildError, match=message) as info:
        build_geo_database([tmp_path / "bad.csv"], tmp_path / "out.rlgeo")
    assert "bad.csv" in str(info.value)
    assert not (tmp_path / "out.rlgeo").exists()


def test_csv_forms(tmp_path, geo_builder):
    (tmp_path / "two.csv").write_text("network,country\n1.0.0.0/8,us\n")
    build_geo_database([tmp_path / "two.csv"], tmp_path / "two.rlgeo")
    assert GeoDatabase.open(tmp_path / "two.rlgeo").lookup("1.1.1.1").country == "US"
    db = GeoDatabase.open(
        geo_builder([("5.2.0.0/16", "UA", "43"), ("5.3.0.0/16", "UA", "UA-30"), ("5.4.0.0/16", "CU", "")])
    )
    assert [db.lookup(ip).subdivision for ip in ("5.2.0.1", "5.3.0.1", "5.4.0.1")] == ["UA-43", "UA-30", None]


def test_failed_build_leaves_the_old_file(tmp_path, geo_builder):
    path = geo_builder([("1.0.0.0/8", "US", None)])
    before = path.read_bytes()
    (tmp_path / "bad.csv").write_text("network,country,subdivision\nnope,US,\n")
    with pytest.raises(BuildError):
        build_geo_database([tmp_path / "bad.csv"], path)
    assert path.read_bytes() == before
    with pytest.raises(BuildError, match="no sources"):
        build_geo_database([], path)
    with pytest.raises(BuildError, match="no such file"):
        build_geo_database([tmp_path / "missing.mmdb"], path)


RECORDS = [
    {"country": {"iso_code": "US", "names": {"en": "United States"}}, "registered_country": {"iso_code": "US"}},
    {"country": {"iso_code": "UA"}, "subdivisions": [{"iso_code": "43", "names": {"en": "Crimea"}}, {"iso_code": "X"}]},
    {"country": {"iso_code": "UA"}, "subdivisions": [{"iso_code": "40"}], "location": {"latitude": 44.6}},
    {"registered_country": {"iso_code": "DE"}},  # no country: falls back to the registered country
    {"continent": {"code": "EU"}},  # no country at all: in no region
    {"country": {"names": {"en": "?"}}, "registered_country": {"iso_code": "FR"}},  # country without iso_code
    {"country": {"names": {"en": "X" * 40}, "iso_code": "CU"}, "traits": {"is_anonymous_proxy": True, "n": 2**40}},
]


def _expected(record):
    if record is None:
        return None
    country_map = record.get("country")
    country = (country_map if country_map is not None else record.get("registered_country") or {}).get("iso_code")
    if not country:
        return None
    subdivisions = record.get("subdivisions") or []
    sub = subdivisions[0].get("iso_code") if subdivisions and country_map is not None else None
    return country, (f"{country}-{sub}" if sub else None)


@pytest.mark.parametrize("record_size", [24, 28, 32])
@pytest.mark.parametrize("ip_version", [4, 6])
def test_mmdb_reader_agrees_with_maxminddb(tmp_path, request, record_size, ip_version):
    rng = random.Random(record_size * 10 + ip_version)
    networks = []
    for _ in range(300):
        if ip_version == 6 and rng.random() < 0.5:
            net = ipaddress.IPv6Network(
                (rng.getrandbits(128), rng.choice([16, 20, 32, 48, 64, 100, 128])), strict=False
            )
        else:
            net = ipaddress.IPv4Network((rng.getrandbits(32), rng.choice([1, 8, 12, 16, 24, 28, 32])), strict=False)
        networks.append((str(net), rng.choice(RECORDS)))
    path = tmp_path / "test.mmdb"
    write_mmdb(path, networks, ip_version=ip_version, record_size=record_size)
    build_geo_database([path], tmp_path / "out.rlgeo")
    db = GeoDatabase.open(tmp_path / "out.rlgeo")
    reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)  # the pure-Python reader
    request.addfinalizer(reader.close)
    probes = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(2000)]
    for network, _ in networks:
        net = ipaddress.ip_network(network)
        probes += [net.network_address, net.broadcast_address]
    if ip_version == 6:
        probes += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(2000)]
    for address in probes:
        record, prefix = reader.get_with_prefix_len(address)
        region = db.lookup(str(address))
        assert (region and (region.country, region.subdivision)) == _expected(record), address
        if region is not None:
            assert region.network == str(ipaddress.ip_network((int(address), prefix), strict=False)), address


def test_mmdb_ipv4_aliases_are_not_ipv6_networks(tmp_path):
    path = tmp_path / "alias.mmdb"
    write_mmdb(path, [("1.0.0.0/8", RECORDS[0])], ip_version=6, record_size=28)
    build_geo_database([path], tmp_path / "out.rlgeo")
    db = GeoDatabase.open(tmp_path / "out.rlgeo")
    assert db.lookup("1.2.3.4").network == "1.0.0.0/8"
    assert db.lookup("::ffff:1.2.3.4").network == "1.0.0.0/8"  # mapped: looked up as IPv4
    assert db.lookup("2002:102:304::") is None  # 6to4 alias: not compiled as IPv6 (documented)
    assert db.network_count == 1


def test_corrupt_mmdb_is_refused(tmp_path):
    path = tmp_path / "x.mmdb"
    write_mmdb(path, [("1.0.0.0/8", RECORDS[0])], ip_version=4, record_size=24)
    data = path.read_bytes()
    marker = data.rindex(b"\xab\xcd\xefMaxMind.com")
    path.write_bytes(data[:20] + data[marker:])  # tree cut short
    with pytest.raises(BuildError, match=r"x\.mmdb"):
        build_geo_database([path], tmp_path / "out.rlgeo")
    path.write_bytes(b"\xff" * 60 + data[60:])  # tree pointing outside
    with pytest.raises(BuildError, match=r"x\.mmdb"):
        build_geo_database([path], tmp_path / "out.rlgeo")


def test_overlay_of_mmdb_by_csv(tmp_path):
    path = tmp_path / "base.mmdb"
    write_mmdb(path, [("5.0.0.0/8", RECORDS[0])], ip_version=6)
    write_geo_csv(tmp_path / "fix.csv", [("5.2.0.0/16", "UA", "UA-43")])
    build_geo_database([path, tmp_path / "fix.csv"], tmp_path / "out.rlgeo")
    db = GeoDatabase.open(tmp_path / "out.rlgeo")
    assert db.lookup("5.2.9.9").subdivision == "UA-43" and db.lookup("5.3.9.9").country == "US"
    assert [s["kind"] for s in db.info["sources"]] == ["mmdb", "csv"]
