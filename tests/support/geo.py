"""Pytest plugin: geo databases built with the project's own builder (small CSV worlds and real GeoLite2-City)."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from regionlock.core.fileformat import load_data_file, parse_header, write_data_file
from regionlock.core.geo import FORMAT_VERSION, MAGIC
from regionlock.core.geo_build import build_geo_database, write_geo_csv


def write_nested_header(path: Path, magic: bytes, version: int, depth: int = 3000) -> Path:
    """A data file of the given kind, written by the project's writer, whose metadata JSON nests `depth` deep."""
    nested: dict = {}
    for _ in range(depth):
        nested = {"k": nested}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2 * depth)  # json.dumps recurses once per level, as json.loads would
    try:
        write_data_file(path, magic, version, {"deep": nested}, [b""])
    finally:
        sys.setrecursionlimit(limit)
    return path


def build_geo_from_rows(tmp_path: Path, rows: Iterable[tuple[str, str, str | None]], name: str = "geo") -> Path:
    """Write (network, country, subdivision or ""/None) rows as a source CSV under tmp_path with the project's
    writer, build `<name>.rlgeo` from it, and return the database's path."""
    tmp_path = Path(tmp_path)
    source = tmp_path / f"{name}.csv"
    write_geo_csv(source, rows)
    output = tmp_path / f"{name}.rlgeo"
    build_geo_database([source], output)
    return output


def stamp_source_build(path: Path, build_epoch: int, database_type: str) -> Path:
    """Re-write a built region database with the header keys the builder adds for MaxMind DB sources (top-level
    `source_build_epoch`; `build_epoch` and `database_type` on each source), through the project's own writer:
    the same payload under the new header, for tests of the data's age before the builder writes them."""
    mapping, header = load_data_file(path, MAGIC, FORMAT_VERSION, verify=True)
    try:
        payload = bytes(mapping[header.payload_offset : header.payload_offset + header.payload_length])
    finally:
        mapping.close()
    metadata = dict(header.metadata, source_build_epoch=build_epoch)
    metadata["sources"] = [
        dict(source, build_epoch=build_epoch, database_type=database_type) for source in metadata["sources"]
    ]
    write_data_file(path, MAGIC, FORMAT_VERSION, metadata, [payload])
    return path


# the IPv6 spellings of an IPv4 address that MaxMind's trees alias to it: (prefix, length); the address follows
IPV4_SPELLINGS = {
    "compatible": (0, 96),
    "mapped": (0xFFFF << 32, 96),
    "teredo": (0x2001 << 112, 32),
    "6to4": (0x2002 << 112, 16),
}


def ipv4_spelling(v4: int, kind: str, rest: int = 0) -> ipaddress.IPv6Address:
    """IPv4 address v4 spelled as IPv6 of `kind` (IPV4_SPELLINGS), `rest` in the bits after it."""
    prefix, length = IPV4_SPELLINGS[kind]
    return ipaddress.IPv6Address(prefix | (v4 << (96 - length)) | (rest & ((1 << (96 - length)) - 1)))


def maxminddb_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> str:
    """The network lookup() reports where maxminddb's get_with_prefix_len reports prefix: an IPv4-mapped
    address is looked up as the IPv4 address it is, so its network is IPv4 (96 bits shorter)."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(ipaddress.IPv4Network((address.ipv4_mapped, prefix - 96), strict=False))
    return str(ipaddress.ip_network((address, prefix), strict=False))


def as_built_before_aliases(path: Path) -> None:
    """Rewrite a geo database as a build from before IPv4 aliases wrote it: the same, without `ipv4_aliases`."""
    data = Path(path).read_bytes()
    header = parse_header(data, MAGIC, FORMAT_VERSION, str(path))
    metadata = {k: v for k, v in header.metadata.items() if k != "ipv4_aliases"}
    write_data_file(path, MAGIC, FORMAT_VERSION, metadata, [data[header.payload_offset :]])


def maxminddb_lookup(reader, address, aliases: tuple[str, ...]) -> tuple[object, str]:
    """maxminddb's record for an address and its network as lookup() reports it. lookup() takes an IPv4-mapped
    address as IPv4 in any file (a dual-stack socket's view), so where the tree has no such alias maxminddb is
    asked for the IPv4 address."""
    address = ipaddress.ip_address(address)
    if address.version == 6 and address.ipv4_mapped is not None and "::ffff:0:0/96" not in aliases:
        address = address.ipv4_mapped
    record, prefix = reader.get_with_prefix_len(address)
    return record, maxminddb_network(address, prefix)


@pytest.fixture
def geo_builder(tmp_path: Path):
    """A function rows -> path of a geo database built from them (in this test's tmp_path)."""
    counter = iter(range(1_000_000))

    def build(rows: Iterable[tuple[str, str, str | None]]) -> Path:
        return build_geo_from_rows(tmp_path, rows, name=f"geo{next(counter)}")

    return build


@pytest.fixture(scope="session")
def geolite2_mmdb_path() -> Path:
    """Path of the real GeoLite2-City MaxMind DB (2018) shipped by the maxminddb-geolite2 package."""
    geolite2 = pytest.importorskip("geolite2")
    return Path(geolite2.geolite2_database())


@pytest.fixture(scope="session")
def geolite2_db(tmp_path_factory: pytest.TempPathFactory, geolite2_mmdb_path: Path) -> Path:
    """Path of a regionlock geo database compiled from GeoLite2-City, built once per test session."""
    output = tmp_path_factory.mktemp("geolite2") / "geolite2-city.rlgeo"
    build_geo_database([geolite2_mmdb_path], output)
    return output
