"""Property tests: compiled databases against the pure-Python reference on random overlaid prefix sets."""

from __future__ import annotations

import ipaddress
import random
import tempfile
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionlock.core._geo_reference import ReferenceGeoDatabase
from regionlock.core.errors import BuildError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_build import build_geo_database, write_geo_csv

# a few base addresses so that random prefixes nest and overlap
V4_BASES = [0, 0x05020300, 0x05020380, 0xFFFFFFFF, 0x7F000001]
V6_BASES = [0, 0x20010DB8 << 96, (0x20010DB8 << 96) | (1 << 80) | 1, 2**128 - 1, 0xFFFF << 32]
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
    """First, last, inside and just outside every network; plus random and IPv4-mapped addresses."""
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
    return texts


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, min_size=1, max_size=3), st.integers(0, 2**32))
def test_compiled_database_agrees_with_reference(sources, seed):
    reference = ReferenceGeoDatabase(sources)
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for index, source in enumerate(sources):
            paths.append(Path(directory) / f"source{index}.csv")
            write_geo_csv(paths[-1], source)
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
