"""MaxMind DB sources for the geo builder: metadata, the search-tree walk, and each record's region, decoded once."""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from regionlock.core.errors import BuildError
from regionlock.core.geo_aliases import Alias, from_walk
from regionlock.core.geo_compile import MMDBData, region_ids_for_offsets, walk_mmdb_tree

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_SEARCH = 128 * 1024


def is_mmdb(path: str | os.PathLike[str]) -> bool:
    """Whether the file ends with a MaxMind DB metadata section (the marker in its last 128 KiB)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - _METADATA_SEARCH))
        return METADATA_MARKER in f.read()


def _decode(buf: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    """Decode one value of the metadata section (no pointers are allowed there); return it and the next pos."""
    if depth > 32:
        raise BuildError("metadata nested too deeply")
    ctrl = buf[pos]
    pos += 1
    kind = ctrl >> 5
    if kind == 0:
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
class MMDBNetworks:
    """The networks of one MaxMind DB file with their region ids, as arrays for the painters."""

    v4_starts: array
    v4_prefixes: array
    v4_regions: array
    v6_high: array
    v6_low: array
    v6_prefixes: array
    v6_regions: array
    metadata: dict[str, Any]
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


def read_mmdb(path: str | os.PathLike[str], region_id: Callable[[str, str | None], int]) -> MMDBNetworks:
    """Walk a MaxMind DB's search tree; decode each distinct record once; map networks to region ids."""
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
    try:
        v4s, v4p, v4o, v6h, v6l, v6p, v6o, aliases = walk_mmdb_tree(
            view[:tree_size], node_count, record_size, ip_version, marker - data_start
        )
        records = MMDBData(view[data_start:marker])

        def resolve(offset: int) -> int:
            region = region_of_record(records.region_fields(offset))
            return 0 if region is None else region_id(*region)

        v4r = region_ids_for_offsets(v4o, resolve)
        v6r = region_ids_for_offsets(v6o, resolve)
        ipv4_aliases = from_walk(aliases) if ip_version == 6 else None
    except (BuildError, UnicodeDecodeError, OverflowError) as exc:
        raise BuildError(f"{name}: {exc}") from None
    return MMDBNetworks(v4s, v4p, v4r, v6h, v6l, v6p, v6r, metadata, ipv4_aliases)
