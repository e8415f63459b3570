"""Building a region database: MaxMind DB and CSV sources, overlaid in order, compiled and written atomically.

Semantics (the pure-Python twin in _geo_reference.py implements the same):
- Within one source an address takes the longest prefix that holds it (MaxMind DB trees never overlap).
- A later source overrides earlier ones wherever one of its networks holds the address, whatever the prefix
  lengths: an address takes the last source that has a network holding it, and that source's longest prefix.
- An address's region is the matched network's; `Region.network` is that network (its CIDR).
- A MaxMind record's country is `country.iso_code`, falling back to `registered_country.iso_code` only when
  the record has no `country`; its subdivision is the first of `subdivisions`, written in full (`UA-43`).
  Records with neither country are left out: they hold no region and override nothing. Flat layouts (IPinfo,
  ip-location-db) are read from named fields instead (RecordLayout); a MaxMind DB source whose records hold
  no region at all is refused, naming the fields they have.
- A CSV source has the header `network,country,subdivision` (the last column may be absent), network being
  CIDR with no host bits set; or `start,end,country,subdivision`, an inclusive address range, compiled as the
  CIDR networks that cover it exactly. Country two letters; subdivision empty, full (`UA-43`) or bare (`43`).
- Region codes are normalized (case, padding) and checked against ISO 3166 (pycountry): a country must be an
  ISO 3166-1 code (or `XK`, Kosovo, which MaxMind uses); a well-formed subdivision of such a country is kept
  even when ISO 3166-2 no longer lists it (data files carry codes valid when they were built). A record with
  any other code is counted and loses the bad part (a bad subdivision: the record keeps its country; a bad
  country: the record holds no region); a source where more than MAX_INVALID_FRACTION of the networks (CSV:
  rows) carry such codes is refused. The build fails if no source yields a network with a region.
- IPv6 spellings of IPv4 addresses resolve as MaxMind's reader resolves them (geo_aliases.py): the compiled
  file takes the IPv4 aliases of its MaxMind DB sources with IPv6 trees, which must agree, or MaxMind's set
  (::/96, ::ffff:0:0/96, 2001::/32, 2002::/16) when there are none (CSV and IPv4-only sources hold no alias
  of their own). An IPv6 network of a CSV source inside an alias could never match: it is refused.
"""

from __future__ import annotations

import csv
import functools
import io
import ipaddress
import logging
import os
import re
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import pycountry

from regionlock.core.errors import BuildError, RegionCodeError
from regionlock.core.fileformat import FileHeader, atomic_output, build_time, source_info, write_data_file
from regionlock.core.geo import FORMAT_VERSION, MAGIC, MAX_REGIONS
from regionlock.core.geo_aliases import METADATA_KEY as ALIASES_KEY
from regionlock.core.geo_aliases import check_outside_aliases, merge_source_aliases
from regionlock.core.geo_compile import V4Painter, V6Painter
from regionlock.core.geo_mmdb import RecordLayout, is_mmdb, read_mmdb

log = logging.getLogger(__name__)

CSV_HEADER = ("network", "country", "subdivision")
CSV_RANGE_HEADER = ("start", "end", "country", "subdivision")
# Vendors mark a few networks with codes of their own (`EU`, `AP`, `ZZ` for unknown): those networks are
# left without a region and counted; beyond one in a thousand, the source is taken to be misread.
MAX_INVALID_FRACTION = 0.001
NON_ISO_COUNTRIES = frozenset({"XK"})  # Kosovo: user-assigned in ISO 3166, used by MaxMind and the EU
_EXAMPLES = 5
_COUNTRY = re.compile(r"[A-Z]{2}\Z")
_SUBDIVISION = re.compile(r"[A-Z0-9]{1,3}\Z")

Progress = Callable[[str], None]


@functools.cache
def _iso_3166() -> tuple[frozenset[str], frozenset[str]]:
    """(ISO 3166-1 alpha-2 codes, ISO 3166-2 codes) as pycountry has them today."""
    return frozenset(c.alpha_2 for c in pycountry.countries), frozenset(s.code for s in pycountry.subdivisions)


def not_current_iso(regions: Iterable[tuple[str, str | None]]) -> list[str]:
    """The distinct codes of a region table that current ISO 3166 does not list (withdrawn ones, `XK`)."""
    countries, subdivisions = _iso_3166()
    found: dict[str, None] = {}
    for country, subdivision in regions:
        if country not in countries:
            found[country] = None
        if subdivision is not None and subdivision not in subdivisions:
            found[subdivision] = None
    return sorted(found)


class _RegionTable:
    """Assigns region ids 1, 2, ... to (country, subdivision) pairs in the order they are first seen.

    Called with a source's raw codes: normalizes them, and raises RegionCodeError for a code that is not
    ISO 3166, with the id the record keeps instead (its country's, if only the subdivision is bad).
    """

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str | None], int] = {}

    def __call__(self, country: str, subdivision: str | None) -> int:
        try:
            country = normalize_country(country)
        except ValueError as exc:
            raise RegionCodeError(str(exc)) from None
        try:
            subdivision = normalize_subdivision(country, subdivision)
        except ValueError as exc:
            raise RegionCodeError(str(exc), self._id(country, None)) from None
        return self._id(country, subdivision)

    def _id(self, country: str, subdivision: str | None) -> int:
        key = (country, subdivision)
        rid = self.ids.get(key)
        if rid is None:
            if len(self.ids) >= MAX_REGIONS:
                raise BuildError(f"more than {MAX_REGIONS} distinct regions")
            rid = self.ids[key] = len(self.ids) + 1
        return rid

    def table(self) -> list[list[str | None]]:
        return [[country, subdivision] for country, subdivision in self.ids]


def normalize_country(country: str) -> str:
    """An ISO 3166-1 alpha-2 code (or `XK`), upper-cased and stripped; raise ValueError naming the problem."""
    country = country.strip().upper()
    if not _COUNTRY.match(country):
        raise ValueError(f"country {country!r} is not two letters")
    if country not in _iso_3166()[0] and country not in NON_ISO_COUNTRIES:
        raise ValueError(f"country {country!r} is not an ISO 3166-1 country")
    return country


def normalize_subdivision(country: str, subdivision: str | None) -> str | None:
    """The full code (`UA-43`) of an empty, bare (`43`) or full subdivision of a normalized country, or None.

    Well-formed codes that ISO 3166-2 has withdrawn are kept: a data file carries the codes of its day.
    """
    subdivision = (subdivision or "").strip().upper() or None
    if subdivision is None:
        return None
    code = subdivision.removeprefix(country + "-")
    if "-" in code:
        raise ValueError(f"subdivision {subdivision!r} is not of country {country}")
    if not _SUBDIVISION.match(code):
        raise ValueError(f"subdivision {subdivision!r} is not an ISO 3166-2 code")
    return f"{country}-{code}"


class _Networks:
    """One source's networks as arrays, split by family, and its count of records with bad region codes."""

    def __init__(self) -> None:
        self.v4 = (array("I"), array("B"), array("I"))
        self.v6 = (array("Q"), array("Q"), array("B"), array("I"))
        self.rows = 0
        self.invalid = 0
        self.invalid_examples: list[str] = []

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, rid: int) -> None:
        value = int(network.network_address)
        if network.version == 4:
            for column, item in zip(self.v4, (value, network.prefixlen, rid), strict=True):
                column.append(item)
        else:
            for column, item in zip(self.v6, (value >> 64, value & (2**64 - 1), network.prefixlen, rid), strict=True):
                column.append(item)


def _csv_networks(row: list[str], ranged: bool) -> Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if not ranged:
        return [ipaddress.ip_network(row[0].strip())]
    first, last = ipaddress.ip_address(row[0].strip()), ipaddress.ip_address(row[1].strip())
    if first.version != last.version:
        raise ValueError(f"range {first} to {last} mixes IPv4 and IPv6")
    if int(first) > int(last):  # the same version, but a union to the type checker
        raise ValueError(f"range {first} to {last} ends before it starts")
    return list(ipaddress.summarize_address_range(first, last))


def read_csv(path: str | os.PathLike[str], region_id: Callable[[str, str | None], int]) -> _Networks:
    """Parse a `network,country,subdivision` or `start,end,country,subdivision` CSV.

    A malformed row raises BuildError naming file and line; a row whose region code is not ISO 3166 is
    counted (with its file and line among the examples) and keeps what region_id leaves it.
    """
    name = os.fspath(path)
    networks = _Networks()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = tuple(column.strip().lower() for column in next(reader, ()))
        if header not in (CSV_HEADER, CSV_HEADER[:2], CSV_RANGE_HEADER, CSV_RANGE_HEADER[:3]):
            raise BuildError(
                f"{name}:1: expected the header {','.join(CSV_HEADER)} or {','.join(CSV_RANGE_HEADER)}, "
                f"got {','.join(header)!r}"
            )
        ranged = header[0] == "start"
        first_region = 2 if ranged else 1
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                if len(row) not in (first_region + 1, first_region + 2) or len(row) > len(header):
                    raise ValueError(f"expected {len(header)} columns, got {len(row)}")
                found = _csv_networks(row, ranged)
            except ValueError as exc:
                raise BuildError(f"{name}:{reader.line_num}: {exc}") from None
            networks.rows += 1
            try:
                rid = region_id(row[first_region], row[first_region + 1] if len(row) > first_region + 1 else None)
            except RegionCodeError as exc:
                networks.invalid += 1
                if len(networks.invalid_examples) < _EXAMPLES:
                    networks.invalid_examples.append(f"{name}:{reader.line_num}: {exc}")
                rid = exc.fallback
            for network in found:
                networks.add(network, rid)
    return networks


def write_geo_csv(path: str | os.PathLike[str], rows: Iterable[tuple[str, str, str | None]]) -> None:
    """Write (network, country, subdivision or None) rows as a source CSV, atomically.

    Networks written as inclusive ranges `first-last` (all of them, or none) make a range CSV.
    """
    rows = list(rows)
    ranged = bool(rows) and "-" in rows[0][0]
    with atomic_output(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_RANGE_HEADER if ranged else CSV_HEADER)
        for network, country, subdivision in rows:
            if ("-" in network) != ranged:
                raise ValueError("a CSV holds either networks or ranges")
            writer.writerow((*network.split("-"), country, subdivision or ""))
        text.flush()
        text.detach()


def _check_codes(name: str, total: int, invalid: int, examples: list[str], unit: str) -> dict[str, Any]:
    """Refuse a source with too many bad region codes; otherwise the `invalid_region_codes` entry (or none)."""
    if not invalid:
        return {}
    share = invalid / max(total, 1)
    summary = f"{invalid:,} of {total:,} {unit} ({share:.2%}) carry a region code that is not ISO 3166"
    if share > MAX_INVALID_FRACTION:
        raise BuildError(
            f"{name}: {summary}, more than the {MAX_INVALID_FRACTION:.1%} allowed; e.g. {'; '.join(examples)}"
        )
    log.warning("%s: %s (those codes left out); e.g. %s", name, summary, "; ".join(examples))
    return {"invalid_region_codes": {"count": invalid, "examples": examples}}


def _mmdb_info(metadata: dict[str, Any]) -> dict[str, Any]:
    """The source's own `database_type` and `build_epoch` (with its RFC 3339 form), when the file has them."""
    info: dict[str, Any] = {"kind": "mmdb"}
    if isinstance(metadata.get("database_type"), str):
        info["database_type"] = metadata["database_type"]
    epoch = metadata.get("build_epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch < 2**63:
        info["build_epoch"] = epoch
        info["build_time"] = build_time(min(epoch, 253402300799))  # 9999-12-31: gmtime's range
    return info


def build_geo_database(
    sources: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    progress: Progress | None = None,
    layout: RecordLayout = RecordLayout(),
) -> FileHeader:
    """Compile sources (MaxMind DB or CSV, told apart by content; later ones override) into `output`.

    `layout` says which fields of the MaxMind DB sources' records hold the region (GeoIP2's by default).
    """
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
            mm = read_mmdb(name, regions, layout)
            v4_arrays = (mm.v4_starts, mm.v4_prefixes, mm.v4_regions)
            v6_arrays = (mm.v6_high, mm.v6_low, mm.v6_prefixes, mm.v6_regions)
            kind = _mmdb_info(mm.metadata)
            total = len(mm.v4_starts) + len(mm.v6_high)
            kind.update(_check_codes(name, total, mm.invalid, mm.invalid_examples, "networks"))
            source_aliases.append((name, mm.ipv4_aliases))
        else:
            step(f"reading CSV {name}")
            networks = read_csv(name, regions)
            v4_arrays, v6_arrays = networks.v4, networks.v6
            kind = {
                "kind": "csv",
                **_check_codes(name, networks.rows, networks.invalid, networks.invalid_examples, "rows"),
            }
            source_aliases.append((name, None))
            csv_v6.append((name, v6_arrays))
        kinds.append(kind)
        counts["ipv4"] += len(v4_arrays[2]) - v4_arrays[2].count(0)
        counts["ipv6"] += len(v6_arrays[3]) - v6_arrays[3].count(0)
        step(f"painting {len(v4_arrays[0])} IPv4 and {len(v6_arrays[0])} IPv6 networks")
        v4.paint(*v4_arrays)
        v6.paint(*v6_arrays)
    if layout.country_field is not None and not any(kind["kind"] == "mmdb" for kind in kinds):
        raise BuildError("record fields were named, but no source is a MaxMind DB")
    if not counts["ipv4"] and not counts["ipv6"]:
        raise BuildError("the sources hold no network with a region")
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
    stale = not_current_iso(regions.ids)
    metadata = {
        "build_time": build_time(),
        "sources": infos,
        "networks": counts,
        "regions": regions.table(),
        "regions_not_current_iso": len(stale),
        "regions_not_current_iso_examples": stale[:_EXAMPLES],
        ALIASES_KEY: [str(alias) for alias in aliases],
        "layout": {"tbl8_groups": len(tbl8) // 1024, "v6_nodes": len(nodes) // 24, "v6_leaves": len(leaves) // 4},
    }
    epochs = [info["build_epoch"] for info in infos if "build_epoch" in info]
    if epochs:
        metadata["source_build_epoch"] = min(epochs)
    step(f"writing {os.fspath(output)}")
    header = write_data_file(output, MAGIC, FORMAT_VERSION, metadata, [tbl24, tbl8, direct, nodes, leaves])
    step("done")
    return header
