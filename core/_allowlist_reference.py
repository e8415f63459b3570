"""The allowlist reader's pure-Python twin: the serial codec and a dict-backed reader, slow and obvious.

Differential tests compare the compiled reader (allowlist.pyx) and its C codec with these; the format itself,
its constants and header checks, is allowlist_format.py's.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from regionlock.core.allowlist_format import (
    ALPHABET,
    FORMAT_VERSION,
    MAGIC,
    check_layout,
    info_dict,
    packed_size,
    record_length,
    record_market,
)
from regionlock.core.errors import CorruptFileError
from regionlock.core.fileformat import FileHeader, load_data_file
from regionlock.core.serials import normalize_serial

_CODE = {c: i for i, c in enumerate(ALPHABET)}
_M64 = (1 << 64) - 1


def pack_serial(serial: str) -> bytes:
    """The packed form of a normalized serial (no header)."""
    out = bytearray()
    for i in range(0, len(serial), 3):
        group = [_CODE[c] for c in serial[i : i + 3]] + [0, 0]
        out += struct.pack("<H", group[0] * 1600 + group[1] * 40 + group[2])
    return bytes(out)


def unpack_serial(packed: bytes, length: int) -> str:
    """The serial of `length` characters whose packed form is `packed`."""
    chars = []
    for (value,) in struct.iter_unpack("<H", packed):
        chars += [ALPHABET[value // 1600 % 40], ALPHABET[value // 40 % 40], ALPHABET[value % 40]]
    return "".join(chars[:length])


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h


def serial_hash(serial: str) -> int:
    """The 64-bit hash of a normalized serial: fmix64 rounds over its packed form padded to 24 bytes."""
    words = struct.unpack("<3Q", pack_serial(serial).ljust(24, b"\0"))
    h = (len(serial) * 0x9E3779B97F4A7C15) & _M64
    for word in words:
        h = _fmix64(h ^ word)
    return h


def decode_records(records: bytes | memoryview, markets: list[str], name: str) -> list[tuple[str, str]]:
    """All (serial, market) records of a records section, in file order."""
    out = []
    pos = 0
    while pos < len(records):
        if pos + 2 > len(records):
            raise CorruptFileError(f"{name}: corrupt: record header out of bounds")
        (hdr,) = struct.unpack_from("<H", records, pos)
        length = record_length(hdr)
        size = packed_size(length)
        market_id = record_market(hdr)
        if pos + 2 + size > len(records) or market_id >= len(markets):
            raise CorruptFileError(f"{name}: corrupt: record out of bounds")
        out.append((unpack_serial(bytes(records[pos + 2 : pos + 2 + size]), length), markets[market_id]))
        pos += 2 + size
    return out


def bucket_contents(path: str | os.PathLike[str]) -> list[list[tuple[str, str]]]:
    """The records of each bucket, walking the directory as the compiled reader does: for layout tests."""
    mapping, header = load_data_file(path, MAGIC, FORMAT_VERSION, True)
    try:
        layout = check_layout(header, os.fspath(path))
        payload = bytes(mapping[header.payload_offset :])
    finally:
        mapping.close()
    bits, gbits = layout["bucket_bits"], layout["group_bits"]
    coarse = struct.unpack_from(f"<{(1 << (bits - gbits)) + 1}Q", payload, layout["coarse"][0])
    fine = struct.unpack_from(f"<{1 << bits}H", payload, layout["fine"][0])
    start = layout["records"][0]
    buckets = []
    for b in range(1 << bits):
        g = b >> gbits
        lo = coarse[g] + fine[b]
        hi = coarse[g + 1] if (b + 1) % (1 << gbits) == 0 else coarse[g] + fine[b + 1]
        buckets.append(decode_records(payload[start + lo : start + hi], layout["markets"], "bucket"))
    return buckets


class Allowlist:
    """Dict-backed reader of an allowlist file: same API as regionlock.core.allowlist.Allowlist."""

    def __init__(self, path: str, header: FileHeader, layout: dict[str, Any], entries: list[tuple[str, str]]):
        self.path = path
        self._header = header
        self._layout = layout
        self._entries = entries
        self._dict = dict(entries)

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> Allowlist:
        """Read the whole file (O(n)): for tests only."""
        name = os.fspath(path)
        mapping, header = load_data_file(path, MAGIC, FORMAT_VERSION, verify)
        try:
            layout = check_layout(header, name)
            off, length = layout["records"]
            start = header.payload_offset + off
            entries = decode_records(bytes(mapping[start : start + length]), layout["markets"], name)
        finally:
            mapping.close()
        if len(entries) != layout["count"]:
            raise CorruptFileError(f"{name}: corrupt: {len(entries)} records, the header says {layout['count']}")
        return cls(name, header, layout, entries)

    def get(self, serial: str) -> str | None:
        """The market the serial was sold for, or None; ValueError for an invalid serial."""
        return self._dict.get(normalize_serial(serial))

    def get_many(self, serials: Any) -> list[str | None]:
        """get() for each serial."""
        return [self.get(s) for s in serials]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, str) and self.get(serial) is not None

    def entry(self, i: int) -> tuple[str, str]:
        """The i-th stored (serial, market)."""
        if not 0 <= i < len(self._entries):
            raise IndexError("allowlist entry index out of range")
        return self._entries[i]

    @property
    def markets(self) -> list[str]:
        return list(self._layout["markets"])

    @property
    def build_id(self) -> str:
        return self._header.build_id

    @property
    def info(self) -> dict[str, Any]:
        return info_dict(self.path, self._header)
