"""MaxMind DB sources for the geo builder: metadata, the search-tree walk, and each record's region, decoded once."""

from __future__ import annotations

import itertools
import os
import struct
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from regionlock.core.errors import BuildError, RegionCodeError
from regionlock.core.geo_aliases import Alias, from_walk
from regionlock.core.mmdb_read import MMDBData, region_ids_for_offsets, walk_mmdb_tree

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_SEARCH = 128 * 1024
_FIELDS_SAMPLE = 1000  # distinct records whose keys are listed when a source yields no region


def is_mmdb(path: str | os.PathLike[str]) -> bool:
    """Whether the file ends with a MaxMind DB metadata section (the marker in its last 128 KiB)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - _METADATA_SEARCH))
        return METADATA_MARKER in f.read()


_MAX_METADATA_DEPTH = 32  # real metadata nests 3 deep (description -> language -> text)
_POINTER_BIAS = (0, 0, 2048, 526336, 0)  # by pointer size in bytes, as the spec adds them


def _decode(buf: bytes, pos: int, depth: int = 0, pointed: bool = False) -> tuple[Any, int]:
    """Decode one value of the metadata section; return it and the position after it.

    Pointers are followed as maxminddb's reader follows them (relative to the start of the metadata section,
    the start of `buf`); a pointer to a pointer is refused (the spec makes it illegal), and every pointer
    followed counts as one level of nesting, so a pointer loop ends at the depth limit.
    """
    if depth > _MAX_METADATA_DEPTH:
        raise BuildError(f"metadata nested deeper than {_MAX_METADATA_DEPTH}")
    if pos >= len(buf):
        raise BuildError("metadata truncated")
    ctrl = buf[pos]
    pos += 1
    kind = ctrl >> 5
    if kind == 1:
        if pointed:
            raise BuildError("a pointer to a pointer in the metadata")
        width = ((ctrl >> 3) & 3) + 1
        raw = buf[pos : pos + width]
        if len(raw) != width:
            raise BuildError("metadata truncated")
        target = int.from_bytes(raw, "big") + _POINTER_BIAS[width]
        if width < 4:
            target += (ctrl & 7) << (8 * width)
        value, _ = _decode(buf, target, depth + 1, pointed=True)
        return value, pos + width
    if kind == 0:
        if pos >= len(buf):
            raise BuildError("metadata truncated")
        kind = 7 + buf[pos]
        pos += 1
    size = ctrl & 0x1F
    if size >= 29:
        extra = size - 28
        value = int.from_bytes(buf[pos : pos + extra], "big")
        size = (29, 285, 65821)[extra - 1] + value
        pos += extra
    if kind == 7:
        result = {}
        for _ in range(size):
            key, pos = _decode(buf, pos, depth + 1)
            result[key], pos = _decode(buf, pos, depth + 1)
        return result, pos
    if kind == 11:
        items = []
        for _ in range(size):
            item, pos = _decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if kind == 14:
        return bool(size), pos
    payload = buf[pos : pos + size]
    if len(payload) != size:
        raise BuildError("metadata truncated")
    pos += size
    if kind == 2:
        return payload.decode(), pos
    if kind == 3:
        return struct.unpack(">d", payload)[0], pos
    if kind == 15:
        return struct.unpack(">f", payload)[0], pos
    if kind in (5, 6, 9, 10):
        return int.from_bytes(payload, "big"), pos
    if kind == 8:
        return int.from_bytes(payload, "big", signed=True), pos
    if kind == 4:
        return bytes(payload), pos
    raise BuildError(f"unexpected type {kind} in the metadata")


@dataclass(frozen=True)
class RecordLayout:
    """Which fields of a record hold its region: GeoIP2's nested maps (the default), or named fields.

    A named field is a path of map keys and array indexes joined by dots (`country_code`, `country`,
    `location.country`, `subdivisions.0.iso_code`); its value must be a string.
    """

    country_field: str | None = None
    subdivision_field: str | None = None

    def __post_init__(self) -> None:
        if self.subdivision_field is not None and self.country_field is None:
            raise BuildError("a subdivision field needs a country field")
        for name in (self.country_field, self.subdivision_field):
            if name is not None and not all(name.split(".")):
                raise BuildError(f"bad field name {name!r}")

    def describe(self) -> str:
        return "country.iso_code or registered_country.iso_code" if self.country_field is None else self.country_field


def _field_path(name: str) -> tuple[bytes | int, ...]:
    return tuple(int(part) if part.isdigit() else part.encode() for part in name.split("."))


@dataclass(frozen=True)
class MMDBNetworks:
    """The networks of one MaxMind DB file with their region ids, as arrays for the painters."""

    v4_starts: array[int]
    v4_prefixes: array[int]
    v4_regions: array[int]
    v6_high: array[int]
    v6_low: array[int]
    v6_prefixes: array[int]
    v6_regions: array[int]
    metadata: dict[str, Any]
    invalid: int  # networks whose record carries a region code that is not ISO 3166
    invalid_examples: list[str]
    ipv4_aliases: tuple[Alias, ...] | None  # None for an IPv4 tree: it holds no IPv6 spelling at all


def region_of_record(fields: tuple[str | None, bool, str | None, str | None]) -> tuple[str, str | None] | None:
    """The (country, full subdivision) of a record's fields, or None if it names no country.

    The country is `country.iso_code`, falling back to `registered_country.iso_code` only when the record
    has no `country`; the subdivision is country + "-" + `subdivisions[0].iso_code`, only with a `country`.
    """
    country_iso, has_country, registered_iso, subdivision_iso = fields
    country = country_iso if has_country else registered_iso
    if not country:
        return None
    subdivision = f"{country}-{subdivision_iso}" if has_country and subdivision_iso else None
    return country, subdivision


def _region_reader(records: MMDBData, layout: RecordLayout) -> Callable[[int], tuple[str, str | None] | None]:
    if layout.country_field is None:
        return lambda offset: region_of_record(records.region_fields(offset))
    country_path = _field_path(layout.country_field)
    subdivision_path = _field_path(layout.subdivision_field) if layout.subdivision_field else None

    def region_of(offset: int) -> tuple[str, str | None] | None:
        country = records.path_string(offset, country_path)
        if not country:
            return None
        return country, records.path_string(offset, subdivision_path) if subdivision_path else None

    return region_of


def _fields_seen(records: MMDBData, offsets: Iterable[int]) -> str:
    """The top-level keys of the first distinct records, in the order first seen."""
    seen: dict[str, None] = {}
    for offset in itertools.islice(dict.fromkeys(offsets), _FIELDS_SAMPLE):
        seen.update(dict.fromkeys(records.keys(offset)))
    return ", ".join(seen) or "none (the records are not maps)"


def read_mmdb(
    path: str | os.PathLike[str],
    region_id: Callable[[str, str | None], int],
    layout: RecordLayout = RecordLayout(),
) -> MMDBNetworks:
    """Walk a MaxMind DB's search tree; decode each distinct record once; map networks to region ids.

    `region_id` raises RegionCodeError for a code that is not ISO 3166: such networks are counted (the
    caller decides whether the source is usable). A source whose records hold no region at all is refused,
    naming the fields its records have.
    """
    name = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()  # a copy, not a mapping: no buffer exports to release, and fast for any real file
    view = memoryview(content)
    marker = content.rfind(METADATA_MARKER, max(0, len(content) - _METADATA_SEARCH))
    if marker < 0:
        raise BuildError(f"{name}: not a MaxMind DB file (no metadata marker)")
    try:
        metadata, _ = _decode(content[marker + len(METADATA_MARKER) :], 0)
        node_count = int(metadata["node_count"])
        record_size = int(metadata["record_size"])
        ip_version = int(metadata["ip_version"])
    except (BuildError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise BuildError(f"{name}: bad MaxMind DB metadata ({exc})") from None
    tree_size = node_count * record_size // 4
    data_start = tree_size + 16
    if data_start > marker or node_count <= 0:
        raise BuildError(f"{name}: truncated: the search tree runs past the metadata")
    refused: dict[int, str] = {}
    try:
        v4s, v4p, v4o, v6h, v6l, v6p, v6o, aliases = walk_mmdb_tree(
            view[:tree_size], node_count, record_size, ip_version, marker - data_start
        )
        records = MMDBData(view[data_start:marker])
        region_of = _region_reader(records, layout)

        def resolve(offset: int) -> int:
            region = region_of(offset)
            if region is None:
                return 0
            try:
                return region_id(*region)
            except RegionCodeError as exc:
                refused[offset] = str(exc)
                return exc.fallback

        v4r = region_ids_for_offsets(v4o, resolve)
        v6r = region_ids_for_offsets(v6o, resolve)
        if not len(v4o) and not len(v6o):
            raise BuildError("no networks in the search tree")
        if not any(v4r) and not any(v6r):
            if refused:
                some = "; ".join(list(dict.fromkeys(refused.values()))[:5])
                raise BuildError(f"no record holds an ISO 3166 region code; e.g. {some}")
            raise BuildError(
                f"no {layout.describe()} in any record; fields seen: {_fields_seen(records, itertools.chain(v4o, v6o))}"
                " (geo build --country-field NAME reads a flat field)"
            )
        ipv4_aliases = from_walk(aliases) if ip_version == 6 else None
    except (BuildError, UnicodeDecodeError, OverflowError) as exc:
        raise BuildError(f"{name}: {exc}") from None
    invalid = sum(offset in refused for offset in itertools.chain(v4o, v6o)) if refused else 0
    examples = list(dict.fromkeys(refused.values()))[:5]
    return MMDBNetworks(v4s, v4p, v4r, v6h, v6l, v6p, v6r, metadata, invalid, examples, ipv4_aliases)
