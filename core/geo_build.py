"""Building a region database: MaxMind DB and CSV sources, overlaid in order, compiled and written atomically.

Semantics (the pure-Python twin in _geo_reference.py implements the same):
- Within one source an address takes the longest prefix that holds it (MaxMind DB trees never overlap).
- A later source overrides earlier ones wherever one of its networks holds the address, whatever the prefix
  lengths: an address takes the last source that has a network holding it, and that source's longest prefix.
- An address's region is the matched network's; `Region.network` is that network (its CIDR).
- A MaxMind record's country is `country.iso_code`, falling back to `registered_country.iso_code` only when
  the record has no `country`; its subdivision is the first of `subdivisions`, written in full (`UA-43`).
  Records with neither country are left out: they hold no region and override nothing.
- A CSV source has the header `network,country,subdivision` (the last column may be absent); network is
  CIDR with no host bits set; country two letters; subdivision empty, full (`UA-43`) or bare (`43`).
- IPv6 spellings of IPv4 addresses resolve as MaxMind's reader resolves them (geo_aliases.py): the compiled
  file takes the IPv4 aliases of its MaxMind DB sources with IPv6 trees, which must agree, or MaxMind's set
  (::/96, ::ffff:0:0/96, 2001::/32, 2002::/16) when there are none (CSV and IPv4-only sources hold no alias
  of their own). An IPv6 network of a CSV source inside an alias could never match: it is refused.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import os
import re
import time
from array import array
from collections.abc import Callable, Iterable

from regionlock.core.errors import BuildError
from regionlock.core.fileformat import FileHeader, atomic_output, build_time, source_info, write_data_file
from regionlock.core.geo import FORMAT_VERSION, MAGIC, MAX_REGIONS
from regionlock.core.geo_aliases import METADATA_KEY as ALIASES_KEY
from regionlock.core.geo_aliases import check_outside_aliases, merge_source_aliases
from regionlock.core.geo_compile import V4Painter, V6Painter
from regionlock.core.geo_mmdb import is_mmdb, read_mmdb

log = logging.getLogger(__name__)

CSV_HEADER = ("network", "country", "subdivision")
_COUNTRY = re.compile(r"[A-Z]{2}\Z")
_SUBDIVISION = re.compile(r"[A-Z0-9]{1,3}\Z")

Progress = Callable[[str], None]


class _RegionTable:
    """Assigns region ids 1, 2, ... to (country, subdivision) pairs in the order they are first seen."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str | None], int] = {}

    def __call__(self, country: str, subdivision: str | None) -> int:
        key = (country, subdivision)
        rid = self.ids.get(key)
        if rid is None:
            if len(self.ids) >= MAX_REGIONS:
                raise BuildError(f"more than {MAX_REGIONS} distinct regions")
            rid = self.ids[key] = len(self.ids) + 1
        return rid

    def table(self) -> list[list[str | None]]:
        return [[country, subdivision] for country, subdivision in self.ids]


def normalize_region(country: str, subdivision: str | None) -> tuple[str, str | None]:
    """Validate and normalize a CSV row's country and subdivision; raise ValueError if malformed."""
    country = country.strip().upper()
    if not _COUNTRY.match(country):
        raise ValueError(f"country {country!r} is not two letters")
    subdivision = (subdivision or "").strip().upper() or None
    if subdivision is not None:
        code = subdivision.removeprefix(country + "-")
        if "-" in code:
            raise ValueError(f"subdivision {subdivision!r} is not of country {country}")
        if not _SUBDIVISION.match(code):
            raise ValueError(f"subdivision {subdivision!r} is not an ISO 3166-2 code")
        subdivision = f"{country}-{code}"
    return country, subdivision


class _Networks:
    """One source's networks as arrays, split by family."""

    def __init__(self) -> None:
        self.v4 = (array("I"), array("B"), array("I"))
        self.v6 = (array("Q"), array("Q"), array("B"), array("I"))

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, rid: int) -> None:
        value = int(network.network_address)
        if network.version == 4:
            for column, item in zip(self.v4, (value, network.prefixlen, rid), strict=True):
                column.append(item)
        else:
            for column, item in zip(self.v6, (value >> 64, value & (2**64 - 1), network.prefixlen, rid), strict=True):
                column.append(item)


def read_csv(path: str | os.PathLike[str], region_id: Callable[[str, str | None], int]) -> _Networks:
    """Parse a `network,country,subdivision` CSV; raise BuildError naming file and line on a bad row."""
    name = os.fspath(path)
    networks = _Networks()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = tuple(column.strip().lower() for column in next(reader, ()))
        if header not in (CSV_HEADER, CSV_HEADER[:2]):
            raise BuildError(f"{name}:1: expected the header {','.join(CSV_HEADER)}, got {','.join(header)!r}")
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                if len(row) not in (2, 3) or len(row) > len(header):
                    raise ValueError(f"expected {len(header)} columns, got {len(row)}")
                network = ipaddress.ip_network(row[0].strip())
                country, subdivision = normalize_region(row[1], row[2] if len(row) == 3 else None)
            except ValueError as exc:
                raise BuildError(f"{name}:{reader.line_num}: {exc}") from None
            networks.add(network, region_id(country, subdivision))
    return networks


def write_geo_csv(path: str | os.PathLike[str], rows: Iterable[tuple[str, str, str | None]]) -> None:
    """Write (network, country, subdivision or None) rows as a source CSV, atomically."""
    with atomic_output(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for network, country, subdivision in rows:
            writer.writerow((network, country, subdivision or ""))
        text.flush()
        text.detach()


def build_geo_database(
    sources: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    progress: Progress | None = None,
) -> FileHeader:
    """Compile sources (MaxMind DB or CSV, told apart by content; later ones override) into `output`."""
    sources = list(sources)
    if not sources:
        raise BuildError("no sources given")
    started = time.monotonic()

    def step(message: str) -> None:
        log.info("%s (%.1f s)", message, time.monotonic() - started)
        if progress is not None:
            progress(f"{message} ({time.monotonic() - started:.1f} s)")

    regions = _RegionTable()
    v4, v6 = V4Painter(), V6Painter()
    counts = {"ipv4": 0, "ipv6": 0}
    kinds = []
    source_aliases, csv_v6 = [], []
    for path in sources:
        name = os.fspath(path)
        if not os.path.isfile(name):
            raise BuildError(f"{name}: no such file")
        if is_mmdb(name):
            step(f"reading MaxMind DB {name}")
            mm = read_mmdb(name, regions)
            v4_arrays = (mm.v4_starts, mm.v4_prefixes, mm.v4_regions)
            v6_arrays = (mm.v6_high, mm.v6_low, mm.v6_prefixes, mm.v6_regions)
            kinds.append({"kind": "mmdb", "database_type": mm.metadata.get("database_type")})
            source_aliases.append((name, mm.ipv4_aliases))
        else:
            step(f"reading CSV {name}")
            networks = read_csv(name, regions)
            v4_arrays, v6_arrays = networks.v4, networks.v6
            kinds.append({"kind": "csv"})
            source_aliases.append((name, None))
            csv_v6.append((name, v6_arrays))
        counts["ipv4"] += len(v4_arrays[2]) - v4_arrays[2].count(0)
        counts["ipv6"] += len(v6_arrays[3]) - v6_arrays[3].count(0)
        step(f"painting {len(v4_arrays[0])} IPv4 and {len(v6_arrays[0])} IPv6 networks")
        v4.paint(*v4_arrays)
        v6.paint(*v6_arrays)
    aliases = merge_source_aliases(source_aliases)
    for name, (high, low, prefixes, _) in csv_v6:
        check_outside_aliases(name, high, low, prefixes, aliases)
    step("compiling")
    tbl24, tbl8 = v4.finish()
    direct, nodes, leaves = v6.finish()
    del v4, v6
    infos = source_info(sources)
    for info, kind in zip(infos, kinds, strict=True):
        info.update(kind)
    metadata = {
        "build_time": build_time(),
        "sources": infos,
        "networks": counts,
        "regions": regions.table(),
        ALIASES_KEY: [str(alias) for alias in aliases],
        "layout": {"tbl8_groups": len(tbl8) // 1024, "v6_nodes": len(nodes) // 24, "v6_leaves": len(leaves) // 4},
    }
    step(f"writing {os.fspath(output)}")
    header = write_data_file(output, MAGIC, FORMAT_VERSION, metadata, [tbl24, tbl8, direct, nodes, leaves])
    step("done")
    return header
