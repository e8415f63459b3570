"""Property tests: compiled databases against the pure-Python reference on random overlaid prefix sets."""

from __future__ import annotations

import ipaddress
import random
import re
import tempfile
from array import array
from pathlib import Path

import maxminddb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionlock.core._geo_reference import ReferenceGeoDatabase
from regionlock.core.errors import BuildError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_aliases import MAXMIND_ALIASES
from regionlock.core.geo_build import build_geo_database, write_geo_csv

from support.geo import IPV4_SPELLINGS, ipv4_spelling, maxminddb_lookup
from support.mmdb_writer import write_mmdb

# a few base addresses so that random prefixes nest and overlap
V4_BASES = [0, 0x05020300, 0x05020380, 0xFFFFFFFF, 0x7F000001]
V6_BASES = [0, 0x20010DB8 << 96, (0x20010DB8 << 96) | (1 << 80) | 1, 2**128 - 1, 0xFFFF << 32, 0x2002 << 112]
REGIONS = [("US", None), ("UA", "UA-43"), ("UA", "UA-40"), ("DE", "DE-BE"), ("CN", None)]


@st.composite
def networks(draw) -> str:
    if draw(st.booleans()):
        base = draw(st.sampled_from(V4_BASES) | st.integers(0, 2**32 - 1))
        prefix = draw(st.sampled_from([0, 1, 8, 16, 23, 24, 25, 31, 32]) | st.integers(0, 32))
        return str(ipaddress.IPv4Network((base, prefix), strict=False))
    base = draw(st.sampled_from(V6_BASES) | st.integers(0, 2**128 - 1))
    prefix = draw(st.sampled_from([0, 1, 16, 17, 22, 23, 32, 48, 64, 96, 127, 128]) | st.integers(0, 128))
    return str(ipaddress.IPv6Network((base, prefix), strict=False))


@st.composite
def ranges(draw) -> str:
    """An inclusive range `first-last`, short or long, often starting at a base."""
    bits, bases, kind = draw(
        st.sampled_from([(32, V4_BASES, ipaddress.IPv4Address), (128, V6_BASES, ipaddress.IPv6Address)])
    )
    first = draw(st.sampled_from(bases) | st.integers(0, 2**bits - 1))
    last = min(first + draw(st.integers(0, 600) | st.integers(0, 2**bits - 1)), 2**bits - 1)
    return f"{kind(first)}-{kind(last)}"


def _rows(network: st.SearchStrategy[str], size: int) -> st.SearchStrategy[list[tuple[str, str, str | None]]]:
    return st.lists(st.tuples(network, st.sampled_from(REGIONS)).map(lambda t: (t[0], *t[1])), max_size=size)


rows = _rows(networks(), 12) | _rows(ranges(), 6)  # a CSV holds networks or ranges


def probes(sources: list[list[tuple[str, str, str | None]]], seed: int) -> list[str]:
    """First, last, inside and just outside every network; plus random addresses and IPv6 spellings of IPv4."""
    rng = random.Random(seed)
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for source in sources:
        for network, _, _ in source:
            if "-" in network:
                ends = [ipaddress.ip_address(end) for end in network.split("-")]
            else:
                net = ipaddress.ip_network(network)
                ends = [net.network_address, net.broadcast_address]
            first, last = int(ends[0]), int(ends[-1])
            top = 2 ** ends[0].max_prefixlen - 1
            for value in (first, last, rng.randint(first, last), max(first - 1, 0), min(last + 1, top)):
                found.append(ipaddress.IPv6Address(value) if ends[0].version == 6 else ipaddress.IPv4Address(value))
    found += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(20)]
    found += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(20)]
    texts = [str(a) for a in found]
    texts += [f"::ffff:{a}" for a in found if a.version == 4][:20]
    texts += [
        str(ipv4_spelling(int(a), kind, rng.getrandbits(96)))
        for a in found[:40]
        if a.version == 4
        for kind in IPV4_SPELLINGS
    ]
    return texts


def pieces_inside_aliases(network: str) -> list[str]:
    """The CIDR networks a CSV row compiles to (a range: those that cover it) that lie inside one of MaxMind's
    aliases, in the order the builder checks them."""
    if "-" in network:
        first, last = (ipaddress.ip_address(end) for end in network.split("-"))
        nets = list(ipaddress.summarize_address_range(first, last))
    else:
        nets = [ipaddress.ip_network(network)]
    aliases = [ipaddress.IPv6Network(alias) for alias in MAXMIND_ALIASES]
    return [str(net) for net in nets if net.version == 6 and any(net.subnet_of(alias) for alias in aliases)]


@pytest.mark.slow  # 15 builds of a 64 MiB database
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, min_size=1, max_size=3), st.integers(0, 2**32))
def test_compiled_database_agrees_with_reference(sources, seed):
    """CSV sources: the build takes MaxMind's aliases, refuses the first IPv6 network inside one, and, without
    those, agrees with the reference on every address and spelling."""
    with tempfile.TemporaryDirectory() as directory:
        paths = [Path(directory) / f"source{index}.csv" for index in range(len(sources))]
        refused = [piece for source in sources for row in source for piece in pieces_inside_aliases(row[0])]
        if refused:
            for path, source in zip(paths, sources, strict=True):
                write_geo_csv(path, source)
            with pytest.raises(BuildError, match=re.escape(f"IPv6 network {refused[0]} is inside")):
                build_geo_database(paths, Path(directory) / "db.rlgeo")
            sources = [[row for row in source if not pieces_inside_aliases(row[0])] for source in sources]
        reference = ReferenceGeoDatabase(sources)
        for path, source in zip(paths, sources, strict=True):
            write_geo_csv(path, source)
        if not any(sources):
            with pytest.raises(BuildError, match="no network with a region"):
                build_geo_database(paths, Path(directory) / "db.rlgeo")
            return
        build_geo_database(paths, Path(directory) / "db.rlgeo")
        db = GeoDatabase.open(Path(directory) / "db.rlgeo", verify=False)
        texts = probes(sources, seed)
        expected = [reference.lookup(text) for text in texts]
        for text, region in zip(texts, expected, strict=True):
            got = db.lookup(text)
            assert got == region, text
            assert (got and got.network) == (region and region.network), text
        assert db.lookup_many(texts) == expected
        ids = [reference.region_id(text) for text in texts]
        assert list(db.region_ids(texts)) == ids
        assert [db.region_id(text) for text in texts] == ids
        assert [db.region(i) for i in ids] == [
            None if r is None else type(r)(r.country, r.subdivision) for r in expected
        ]
        assert db.regions == reference.regions
        v4 = [ipaddress.ip_address(t) for t in texts if ":" not in t]
        assert list(db.region_ids_v4(array("I", [int(a) for a in v4]))) == [reference.region_id(str(a)) for a in v4]
        v6 = [ipaddress.ip_address(t) for t in texts if ":" in t]
        assert list(db.region_ids_v6(b"".join(a.packed for a in v6))) == [reference.region_id(str(a)) for a in v6]


# disjoint candidates: MaxMind's, NAT64's well-known prefix, and two that no writer uses but a tree may hold
ALIAS_CANDIDATES = ["::ffff:0:0/96", "64:ff9b::/96", "2001::/32", "2001:db8::/32", "2002::/16", "3ffe::/16"]
v4_networks = st.tuples(
    st.sampled_from(V4_BASES) | st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from(REGIONS)
).map(lambda t: (str(ipaddress.IPv4Network(t[:2], strict=False)), *t[2]))


@pytest.mark.slow  # builds of 64 MiB databases from generated MaxMind DB files
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(v4_networks, max_size=10),
    st.lists(st.sampled_from(ALIAS_CANDIDATES), unique=True),
    st.sampled_from([24, 28, 32]),
    st.integers(0, 2**32),
)
def test_mmdb_aliases_agree_with_reference(rows, aliases, record_size, seed):
    """A MaxMind DB with any aliases: every spelling, through every candidate alias, in the region the reference
    given the aliases written (and ::/96, the IPv4 subtree itself) finds, and in maxminddb's network (the tree
    splits a network around longer ones, so its networks are not the rows')."""
    rows = sorted([*rows, ("5.101.208.0/21", "UA", "UA-43")], key=lambda row: ipaddress.ip_network(row[0]).prefixlen)
    records = {region: {"country": {"iso_code": region[0]}} for region in REGIONS}
    for (_, subdivision), record in records.items():
        if subdivision:
            record["subdivisions"] = [{"iso_code": subdivision.split("-")[1]}]
    written = sorted([ipaddress.IPv6Network(a) for a in ["::/96", *aliases]])
    reference = ReferenceGeoDatabase([rows], aliases=[str(a) for a in written])
    rng = random.Random(seed)
    v4 = [int(a) for a in (ipaddress.ip_address(t) for t in probes([rows], seed)) if a.version == 4]
    texts = []
    for alias in map(ipaddress.IPv6Network, ["::/96", *ALIAS_CANDIDATES]):
        length = alias.prefixlen
        for a in v4:
            texts.append(
                str(
                    ipaddress.IPv6Address(
                        int(alias.network_address) | (a << (96 - length)) | rng.getrandbits(96 - length)
                    )
                )
            )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "a.mmdb"
        write_mmdb(
            path, [(network, records[(c, s)]) for network, c, s in rows], record_size=record_size, ipv4_aliases=aliases
        )
        build_geo_database([path], Path(directory) / "db.rlgeo")
        db = GeoDatabase.open(Path(directory) / "db.rlgeo", verify=False)
        assert db.ipv4_aliases == tuple(str(a) for a in written)
        expected = [reference.lookup(text) for text in texts]
        assert any(r is not None for r in expected)  # 5.101.208.0/21's spellings through ::/96 at least
        with maxminddb.open_database(str(path), maxminddb.MODE_FILE) as reader:
            for text, region in zip(texts, expected, strict=True):
                got = db.lookup(text)
                assert (got and (got.country, got.subdivision)) == (region and (region.country, region.subdivision))
                if got is not None:
                    assert got.network == maxminddb_lookup(reader, text, db.ipv4_aliases)[1], text
        assert db.lookup_many(texts) == [db.lookup(text) for text in texts]
        ids = [0 if r is None else db.regions.index((r.country, r.subdivision)) for r in expected]
        assert list(db.region_ids(texts)) == ids
        assert list(db.region_ids_v6(b"".join(ipaddress.IPv6Address(t).packed for t in texts))) == ids
