"""Pytest plugin: geo databases built with the project's own builder (small CSV worlds and real GeoLite2-City)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from regionlock.core.fileformat import map_data_file, write_data_file
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
    mapping, header = map_data_file(path, MAGIC, FORMAT_VERSION, verify=True)
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
