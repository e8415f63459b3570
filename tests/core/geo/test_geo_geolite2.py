"""The compiled GeoLite2-City against maxminddb's own reader: random addresses, every network, Crimea and Kyiv.

maxminddb is the oracle throughout. To keep this fast, one maxminddb query vouches for a whole MaxMind network:
`get_with_prefix_len(a)` says that every address of a's network has a's record, so all sampled addresses inside
it are checked against that one answer (our leaves are compared slice by slice, in C).
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from array import array

import maxminddb
import pycountry
import pytest

from regionlock.core.geo import GeoDatabase
from regionlock.core.mmdb_read import walk_mmdb_tree

from support.geo import IPV4_SPELLINGS, ipv4_spelling, maxminddb_network

pytestmark = pytest.mark.slow


def expected_region(record) -> tuple[str, str | None] | None:
    """The documented rule, applied to maxminddb's decoded record."""
    if record is None:
        return None
    country_map = record.get("country")
    chosen = country_map if country_map is not None else record.get("registered_country")
    country = (chosen or {}).get("iso_code")
    if not country:
        return None
    subdivisions = record.get("subdivisions") or []
    code = subdivisions[0].get("iso_code") if subdivisions and country_map is not None else None
    return country, (f"{country}-{code}" if code else None)


@pytest.fixture(scope="module")
def oracle(geolite2_db, geolite2_mmdb_path):
    db = GeoDatabase.open(geolite2_db)
    reader = maxminddb.open_database(str(geolite2_mmdb_path), maxminddb.MODE_MMAP_EXT)
    ids = {region: rid for rid, region in enumerate(db.regions)}
    yield db, reader, ids
    reader.close()


def expected_leaf(ids, record, prefix: int) -> int:
    region = expected_region(record)
    return 0 if region is None else ids[region] | (prefix << 16)


def check_sorted(db, reader, ids, addresses: list[int], leaves: array, version: int) -> int:
    """addresses sorted; leaves ours for them. Return how many maxminddb queries it took."""
    bits = 32 if version == 4 else 128
    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    i, queries = 0, 0
    while i < len(addresses):
        record, prefix = reader.get_with_prefix_len(kind(addresses[i]))
        queries += 1
        end_of_network = (addresses[i] | ((1 << (bits - prefix)) - 1)) + 1
        j = bisect.bisect_left(addresses, end_of_network, i)
        want = expected_leaf(ids, record, prefix)
        if leaves[i:j].count(want) != j - i:
            bad = next(k for k in range(i, j) if leaves[k] != want)
            pytest.fail(
                f"{kind(addresses[bad])}: ours {leaves[bad]:#x} ({db.lookup(addresses[bad])}), "
                f"maxminddb {expected_region(record)} /{prefix}"
            )
        i = j
    return queries


def test_one_million_random_ipv4(oracle):
    db, reader, ids = oracle
    rng = random.Random(4)
    addresses = sorted(rng.getrandbits(32) for _ in range(1_000_000))
    leaves = db.leaves_v4(array("I", addresses))
    assert check_sorted(db, reader, ids, addresses, leaves, 4) > 1000
    assert list(db.region_ids_v4(array("I", addresses[:100_000]))) == [leaf & 0xFFFF for leaf in leaves[:100_000]]


def test_one_million_ipv6_inside_networks(oracle, geolite2_mmdb_path):
    db, reader, ids = oracle
    _, _, _, hi, lo, prefixes, _, _ = _walk(geolite2_mmdb_path)
    rng = random.Random(6)
    addresses = []
    for _ in range(1_000_000):
        k = rng.randrange(len(hi))
        addresses.append(((hi[k] << 64) | lo[k]) | rng.getrandbits(128 - prefixes[k]))
    addresses.sort()
    packed = b"".join(a.to_bytes(16, "big") for a in addresses)
    leaves = db.leaves_v6(packed)
    check_sorted(db, reader, ids, addresses, leaves, 6)
    sample = rng.sample(range(len(addresses)), 2000)
    assert [db.lookup(ipaddress.IPv6Address(addresses[k])) for k in sample] == [
        db.lookup(str(ipaddress.IPv6Address(addresses[k]))) for k in sample
    ]


_WALK = {}


def _walk(path):
    if path not in _WALK:
        data = path.read_bytes()
        with maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT) as reader:
            meta = reader.metadata()
        tree = memoryview(data)[: meta.node_count * meta.record_size // 4]
        _WALK[path] = walk_mmdb_tree(tree, meta.node_count, meta.record_size, meta.ip_version, len(data))
    return _WALK[path]


def test_first_and_last_address_of_every_network(oracle, geolite2_mmdb_path):
    """Every network our walker found: its record checked with maxminddb once per distinct record (its first
    network found with that record, whose prefix maxminddb must confirm), and every first and last address."""
    db, reader, ids = oracle
    v4s, v4p, v4o, hi, lo, v6p, v6o, _ = _walk(geolite2_mmdb_path)
    assert len(v4s) > 3_000_000 and len(hi) > 300_000
    by_offset: dict[int, tuple[str, str | None] | None] = {}

    def region_of(offset, address, prefix):
        record, found = reader.get_with_prefix_len(address)
        assert found == prefix, (address, found, prefix)
        region = by_offset[offset] = expected_region(record)
        return region

    want = array("I")
    for start, prefix, offset in zip(v4s, v4p, v4o, strict=True):
        region = by_offset[offset] if offset in by_offset else region_of(offset, ipaddress.IPv4Address(start), prefix)
        want.append(0 if region is None else ids[region] | (prefix << 16))
    first = db.leaves_v4(v4s)
    last = db.leaves_v4(array("I", [s | ((1 << (32 - p)) - 1) for s, p in zip(v4s, v4p, strict=True)]))
    assert first == want and last == want
    want6 = array("I")
    firsts, lasts = bytearray(), bytearray()
    for high, low, prefix, offset in zip(hi, lo, v6p, v6o, strict=True):
        value = (high << 64) | low
        region = by_offset[offset] if offset in by_offset else region_of(offset, ipaddress.IPv6Address(value), prefix)
        want6.append(0 if region is None else ids[region] | (prefix << 16))
        firsts += value.to_bytes(16, "big")
        lasts += (value | ((1 << (128 - prefix)) - 1)).to_bytes(16, "big")
    assert db.leaves_v6(firsts) == want6 and db.leaves_v6(lasts) == want6


def _networks_of(reader, db, country: str, subdivision: str, limit: int = 200):
    """Networks of the compiled database whose region is (country, subdivision), found by a sweep of /16s."""
    rid = db.regions.index((country, subdivision))
    found = []
    for top in range(1 << 16):
        probe = array("I", [(top << 16) | (k << 8) for k in range(256)])
        for address, got in zip(probe, db.region_ids_v4(probe), strict=True):
            if got == rid:
                found.append(address)
                if len(found) >= limit:
                    return found
    return found


@pytest.mark.parametrize(("code", "minimum"), [("UA-43", 20), ("UA-40", 5), ("UA-30", 100)])
def test_crimea_sevastopol_and_kyiv(oracle, code, minimum):
    db, reader, _ = oracle
    addresses = _networks_of(reader, db, "UA", code)
    assert len(addresses) >= minimum
    for address in addresses:
        ip = str(ipaddress.IPv4Address(address))
        record = reader.get(ip)
        assert expected_region(record) == ("UA", code), ip  # maxminddb says so too
        region = db.lookup(ip)
        assert (region.country, region.subdivision) == ("UA", code)
        assert db.lookup(f"::ffff:{ip}") == region


def test_codes_not_in_current_iso_are_kept_and_counted(oracle, geolite2_mmdb_path):
    """The 2018 file carries subdivision codes ISO 3166-2 has since withdrawn, and XK: kept (the tests above
    check every network against maxminddb), and counted in the header, as maxminddb and pycountry say."""
    db, reader, _ = oracle
    v4s, _, v4o, hi, lo, _, v6o, _ = _walk(geolite2_mmdb_path)
    one_address: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}  # per distinct record
    for start, offset in zip(v4s, v4o, strict=True):
        one_address.setdefault(offset, ipaddress.IPv4Address(start))
    for high, low, offset in zip(hi, lo, v6o, strict=True):
        one_address.setdefault(offset, ipaddress.IPv6Address((high << 64) | low))
    codes = set()
    for address in one_address.values():
        region = expected_region(reader.get(address))
        if region is not None:
            codes.update(code for code in region if code)
    current = {c.alpha_2 for c in pycountry.countries} | {s.code for s in pycountry.subdivisions}
    stale = sorted(codes - current)
    assert "XK" in stale and "FR-COR" in stale and len(stale) > 100
    assert db.info["regions_not_current_iso"] == len(stale)
    assert db.info["regions_not_current_iso_examples"] == stale[:5]
    assert db.info["sources"][0]["database_type"] == reader.metadata().database_type == "GeoLite2-City"
    assert db.info["source_build_epoch"] == db.info["sources"][0]["build_epoch"] == reader.metadata().build_epoch
    assert "invalid_region_codes" not in db.info["sources"][0]


def test_every_spelling_of_ipv4_and_random_ipv6_agree_with_maxminddb(oracle, geolite2_mmdb_path):
    """IPv4 addresses (random, and in Crimea, Sevastopol and Kyiv) in every IPv6 spelling MaxMind's tree aliases,
    and random IPv6: region and prefix length as maxminddb's reader gives them, by every lookup path."""
    db, reader, ids = oracle
    rng = random.Random(13)
    v4 = [rng.getrandbits(32) for _ in range(10_000)]
    for code in ("UA-43", "UA-40", "UA-30"):
        v4 += _networks_of(reader, db, "UA", code, limit=50)
    probes = [ipaddress.IPv4Address(a) for a in v4]
    probes += [ipv4_spelling(a, kind, rng.getrandbits(96)) for a in v4 for kind in IPV4_SPELLINGS]
    probes += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(10_000)]
    probes += [
        ipaddress.IPv6Address((rng.choice([0x2001, 0x2002, 0x2A02]) << 112) | rng.getrandbits(112))
        for _ in range(10_000)
    ]
    assert set(db.ipv4_aliases) >= {"::/96", "::ffff:0:0/96", "2001::/32", "2002::/16"}
    texts = [str(a) for a in probes]
    regions = db.lookup_many(texts)
    packed6 = b"".join(a.packed for a in probes if a.version == 6)
    leaves6 = iter(db.leaves_v6(packed6))
    want_ids = array("H")
    spelled = 0
    for address, region in zip(probes, regions, strict=True):
        record, prefix = reader.get_with_prefix_len(address)
        want = expected_region(record)
        assert (region and (region.country, region.subdivision)) == want, address
        if region is not None:
            assert region.network == maxminddb_network(address, prefix), address
            spelled += address.version == 6 and int(address) >> 112 in (0, 0x2001, 0x2002)
        if address.version == 6:
            leaf = next(leaves6)
            assert leaf == (0 if want is None else ids[want] | (int(region.network.split("/")[1]) << 16)), address
        want_ids.append(0 if want is None else ids[want])
    assert spelled > 4 * 5000  # most random IPv4 addresses have a record, and so do their spellings
    assert db.region_ids(texts) == want_ids
    assert db.region_ids(probes) == want_ids
    assert [db.region_ids_v6(packed6)] == [
        array("H", [i for a, i in zip(probes, want_ids, strict=True) if a.version == 6])
    ]
    sample = rng.sample(range(len(probes)), 3000)
    assert [db.lookup(probes[k]) for k in sample] == [regions[k] for k in sample]
    crimea = _networks_of(reader, db, "UA", "UA-43", limit=20)
    for kind in IPV4_SPELLINGS:  # each spelling of a Crimean address is in Crimea, as it is to maxminddb above
        spellings = [ipv4_spelling(a, kind, rng.getrandbits(96)) for a in crimea]
        assert {(r.country, r.subdivision) for r in db.lookup_many(spellings)} == {("UA", "UA-43")}, kind
