"""The builder: CSV validation, source detection, atomic output, and the MaxMind DB reader against maxminddb."""

from __future__ import annotations

import ipaddress
import random

import maxminddb
import pytest

from regionlock.core._geo_reference import ReferenceGeoDatabase
from regionlock.core.errors import BuildError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_aliases import MAXMIND_ALIASES as MAXMIND_SET
from regionlock.core.geo_build import build_geo_database, write_geo_csv

from support.geo import IPV4_SPELLINGS, as_built_before_aliases, ipv4_spelling, maxminddb_lookup
from support.mmdb_writer import MAXMIND_ALIASES, write_mmdb


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


ALIAS_WORLD = [
    ("1.0.0.0/8", RECORDS[0]),
    ("5.101.208.0/21", RECORDS[1]),
    ("5.101.210.128/25", RECORDS[2]),
    ("2001:db8::/32", RECORDS[3]),
    ("2000::/3", RECORDS[0]),  # around 2001::/32 and 2002::/16: the aliases win inside it, as in maxminddb
]


def _spelling_probes(rng: random.Random, networks) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every IPv6 spelling of IPv4 addresses in, around and outside the networks, and random IPv6."""
    v4 = [rng.getrandbits(32) for _ in range(200)]
    for network, _ in networks:
        net = ipaddress.ip_network(network)
        if net.version == 4:
            first, last = int(net.network_address), int(net.broadcast_address)
            v4 += [first, last, max(first - 1, 0), min(last + 1, 2**32 - 1)]
            v4 += [rng.randint(first, last) for _ in range(20)]
    probes = [ipaddress.IPv4Address(a) for a in v4]
    probes += [ipv4_spelling(a, kind, rng.getrandbits(96)) for a in v4 for kind in IPV4_SPELLINGS]
    return probes + [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(200)]


@pytest.mark.parametrize("record_size", [24, 28, 32])
@pytest.mark.parametrize(
    "aliases", [True, (), ("2002::/16",), ("::ffff:0:0/96", "2002::/16", "2001::/32", "3ffe:831f::/32")]
)
def test_mmdb_ipv4_aliases_resolve_as_maxminddb(tmp_path, request, record_size, aliases):
    """MaxMind's aliases, none, and others: every spelling gets maxminddb's record and prefix length."""
    path = tmp_path / "alias.mmdb"
    write_mmdb(path, ALIAS_WORLD, ip_version=6, record_size=record_size, ipv4_aliases=aliases)
    build_geo_database([path], tmp_path / "out.rlgeo")
    db = GeoDatabase.open(tmp_path / "out.rlgeo")
    written = MAXMIND_ALIASES if aliases is True else aliases
    assert db.ipv4_aliases == tuple(sorted(["::/96", *written], key=lambda a: ipaddress.IPv6Network(a)))
    reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)
    request.addfinalizer(reader.close)
    probes = _spelling_probes(random.Random(record_size), ALIAS_WORLD)
    regions = db.lookup_many(probes)
    leaves = db.leaves_v6(b"".join(a.packed for a in probes if a.version == 6))
    found = 0
    for address, region in zip(probes, regions, strict=True):
        record, network = maxminddb_lookup(reader, address, db.ipv4_aliases)
        assert (region and (region.country, region.subdivision)) == _expected(record), address
        assert region == db.lookup(address) == db.lookup(str(address)), address
        if region is not None:
            found += address.version == 6
            assert region.network == network, address
    assert found > 100
    assert list(db.region_ids(probes)) == [
        0 if r is None else db.regions.index((r.country, r.subdivision)) for r in regions
    ]
    assert [leaf & 0xFFFF for leaf in leaves] == [db.region_id(a) for a in probes if a.version == 6]


def test_aliases_of_a_file_without_the_key_are_none(tmp_path):
    """A file built before aliases answers as it did: IPv6 spellings other than IPv4-mapped find nothing."""
    write_geo_csv(tmp_path / "a.csv", [("5.101.208.0/21", "UA", "UA-43")])
    build_geo_database([tmp_path / "a.csv"], tmp_path / "old.rlgeo")
    assert GeoDatabase.open(tmp_path / "old.rlgeo").lookup("2002:565:d001::1").network == "2002:565:d000::/37"
    as_built_before_aliases(tmp_path / "old.rlgeo")
    db = GeoDatabase.open(tmp_path / "old.rlgeo")
    assert db.ipv4_aliases == () and "ipv4_aliases" not in db.info
    assert db.lookup("::ffff:5.101.208.1").subdivision == "UA-43"
    for ip in ("2002:565:d001::1", "::5.101.208.1", "2001:0:565:d001::1"):
        assert db.lookup(ip) is None and list(db.region_ids([ip])) == [0]


@pytest.mark.parametrize("ip_version", [4, 6])
def test_csv_and_ipv4_sources_take_maxminds_aliases(tmp_path, ip_version):
    """No source with an IPv6 tree: MaxMind's set, so a 6to4 spelling of a restricted address can't slip by."""
    write_geo_csv(tmp_path / "a.csv", [("5.101.208.0/21", "UA", "UA-43"), ("2a00::/16", "DE", None)])
    sources = [tmp_path / "a.csv"]
    if ip_version == 4:
        write_mmdb(tmp_path / "v4.mmdb", [("1.0.0.0/8", RECORDS[0])], ip_version=4)
        sources.insert(0, tmp_path / "v4.mmdb")
    build_geo_database(sources, tmp_path / "out.rlgeo")
    db = GeoDatabase.open(tmp_path / "out.rlgeo")
    assert db.ipv4_aliases == MAXMIND_SET
    reference = ReferenceGeoDatabase([[("5.101.208.0/21", "UA", "UA-43"), ("2a00::/16", "DE", None)]])
    for ip in ("2002:565:d001::1", "::5.101.208.1", "2001:0:565:d001:ffff::", "::ffff:5.101.208.1", "2a00::1"):
        assert db.lookup(ip) == reference.lookup(ip) and db.lookup(ip) is not None, ip
    assert db.lookup("2002:565:d001::1").network == "2002:565:d000::/37"
    if ip_version == 4:
        assert db.lookup("2002:101:101::").country == "US"


def test_csv_over_mmdb_takes_the_mmdbs_aliases(tmp_path):
    write_mmdb(tmp_path / "a.mmdb", ALIAS_WORLD, ipv4_aliases=("2002::/16",))
    write_geo_csv(tmp_path / "fix.csv", [("2001::/32", "FR", None), ("5.101.208.0/24", "UA", "UA-40")])
    build_geo_database([tmp_path / "a.mmdb", tmp_path / "fix.csv"], tmp_path / "out.rlgeo")
    db = GeoDatabase.open(tmp_path / "out.rlgeo")
    assert db.ipv4_aliases == ("::/96", "2002::/16")
    assert db.lookup("2001:0:565:d001::1").country == "FR"  # no Teredo alias in this build: the CSV network
    assert db.lookup("2002:565:d001::1").subdivision == "UA-40"  # the CSV overlay, through the alias


@pytest.mark.parametrize(
    ("network", "alias"),
    [
        ("2002:565:d000::/36", "2002::/16"),
        ("::565:d000/116", "::/96"),
        ("2001::/32", "2001::/32"),
        ("::ffff:0:0/96", "::ffff:0:0/96"),
    ],
)
def test_csv_ipv6_network_inside_an_alias_is_refused(tmp_path, network, alias):
    write_geo_csv(tmp_path / "a.csv", [("1.0.0.0/8", "US", None), (network, "UA", "UA-43")])
    with pytest.raises(BuildError, match=rf"a\.csv: IPv6 network {network} is inside {alias}, which aliases IPv4"):
        build_geo_database([tmp_path / "a.csv"], tmp_path / "out.rlgeo")
    assert not (tmp_path / "out.rlgeo").exists()


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        (("2001:db8::/100",), "an IPv4 alias at depth 100"),  # past /96: no room for an IPv4 address
        (tuple(f"3ffe:{i:x}::/32" for i in range(16)), "more than 16 IPv4 aliases"),  # with ::/96, 17
    ],
)
def test_mmdb_with_impossible_aliases_is_refused(tmp_path, aliases, message):
    write_mmdb(tmp_path / "odd.mmdb", ALIAS_WORLD, ipv4_aliases=aliases)
    with pytest.raises(BuildError, match=rf"odd\.mmdb: .*{message}"):
        build_geo_database([tmp_path / "odd.mmdb"], tmp_path / "out.rlgeo")
    write_mmdb(tmp_path / "odd.mmdb", ALIAS_WORLD, ipv4_aliases=aliases[1:])
    build_geo_database([tmp_path / "odd.mmdb"], tmp_path / "out.rlgeo")  # one fewer: fine


def test_sources_that_alias_differently_are_refused(tmp_path):
    write_mmdb(tmp_path / "maxmind.mmdb", ALIAS_WORLD)
    write_mmdb(tmp_path / "other.mmdb", ALIAS_WORLD, ipv4_aliases=("::ffff:0:0/96", "2002::/16"))
    write_geo_csv(tmp_path / "fix.csv", [("1.0.0.0/8", "US", None)])
    for order in ((0, 1), (1, 0)):
        sources = [[tmp_path / "maxmind.mmdb", tmp_path / "other.mmdb"][i] for i in order] + [tmp_path / "fix.csv"]
        with pytest.raises(BuildError, match=r"maxmind\.mmdb: aliases 2001::/32 to IPv4 and .*other\.mmdb does not"):
            build_geo_database(sources, tmp_path / "out.rlgeo")
    build_geo_database(
        [tmp_path / "maxmind.mmdb", tmp_path / "fix.csv", tmp_path / "maxmind.mmdb"], tmp_path / "out.rlgeo"
    )


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
