"""The allowlist file format in pure Python: constants, codec, layout checks and a dict-backed reader.

The compiled reader (allowlist.pyx) and the builder import the constants and `check_layout` from here;
the codec and the reader are the slow, obvious twins that differential tests compare the fast paths with.

Payload layout (all integers little-endian, sections 8-byte aligned, offsets relative to the payload):

    coarse     uint64[B / G + 1]  byte offset in `records` of the first record of each group of G = 2**group_bits
                                  buckets; the last entry is the records' length
    fine       uint16[B]       offset of bucket b's first record from its group's start (zero-padded to 8)
    samples    uint64[ceil(n / 64)]  byte offset of record 64 * k, for entry(i) in O(64)

Bucket b spans records[coarse[g] + fine[b] : end], g = b >> group_bits, end = coarse[g] + fine[b + 1] inside the
group and coarse[g + 1] for its last bucket. The coarse table is small enough to stay in the CPU cache, the fine
one a quarter of a plain uint64 directory: a lookup reads about one cache line of directory and one of records.
    records    bytes            the records, sorted by (hash, length, packed serial), zero-padded to 8

A record is a uint16 header `(length - 1) << 11 | market_id` followed by the packed serial: the serial's
characters as base-40 digits, three per little-endian uint16 (`c0 * 1600 + c1 * 40 + c2`, zero-padded), so
2 * ceil(length / 3) bytes: 16 bytes in all for a 20-character serial. A serial's hash is `serial_hash` of its
packed form; its bucket is the top `bucket_bits` bits of the hash; lookups scan the bucket's records.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

from regionlock.core.errors import CorruptFileError
from regionlock.core.fileformat import FileHeader, load_data_file
from regionlock.core.serials import MARKET_MAX_LENGTH, SERIAL_MAX_LENGTH, normalize_market, normalize_serial

MAGIC = b"RLALLOW\0"
FORMAT_VERSION = 1
HASH_NAME = "rl-b40-fmix64-v1"
SAMPLE_STRIDE = 64
MAX_MARKETS = 2048
MAX_BUCKET_BITS = 40
GROUP_BITS = 6
PACKED_MAX = 22  # bytes of a packed 32-character serial
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-./_"
_CODE = {c: i for i, c in enumerate(ALPHABET)}
_M64 = (1 << 64) - 1


def packed_size(length: int) -> int:
    """Bytes of the packed form of a serial of `length` characters."""
    return 2 * ((length + 2) // 3)


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


def bucket_bits_for(count: int) -> int:
    """Buckets for `count` records: the largest power of two <= count / 2 (2 to 4 records per bucket)."""
    return max(0, (count // 2).bit_length() - 1)


def check_layout(header: FileHeader, name: str) -> dict[str, Any]:
    """Validate the metadata's layout against the payload size (constant time); return the parsed fields."""
    meta = header.metadata

    def fail(what: str) -> CorruptFileError:
        return CorruptFileError(f"{name}: corrupt allowlist metadata: {what}")

    def integer(key: str) -> int:
        value = meta.get(key)
        if type(value) is not int or value < 0:
            raise fail(f"{key} is not a non-negative integer")
        return value

    def section(key: str) -> tuple[int, int]:
        value = meta.get(key)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(type(v) is not int or v < 0 for v in value)
            or value[0] % 8
            or value[0] + value[1] > header.payload_length
        ):
            raise fail(f"{key} section is out of bounds")
        return value[0], value[1]

    if meta.get("hash") != HASH_NAME or meta.get("sample_stride") != SAMPLE_STRIDE:
        raise fail("unknown hash or sample stride")
    count = integer("count")
    bits = integer("bucket_bits")
    if bits > MAX_BUCKET_BITS:
        raise fail("bucket_bits too large")
    markets = meta.get("markets")
    if not isinstance(markets, list) or len(markets) > MAX_MARKETS:
        raise fail("markets is not a list of at most 2048 markets")
    for market in markets:
        try:
            if not isinstance(market, str) or normalize_market(market) != market:
                raise ValueError
        except ValueError:
            raise fail(f"bad market {market!r}") from None
    gbits = integer("group_bits")
    if gbits > bits:
        raise fail("group_bits larger than bucket_bits")
    coarse_off, coarse_len = section("coarse")
    fine_off, fine_len = section("fine")
    smp_off, smp_len = section("samples")
    rec_off, rec_len = section("records")
    if coarse_len != ((1 << (bits - gbits)) + 1) * 8 or fine_len != (2 * (1 << bits) + 7) // 8 * 8:
        raise fail("directory length does not match bucket_bits")
    if smp_len != (count + SAMPLE_STRIDE - 1) // SAMPLE_STRIDE * 8:
        raise fail("samples length does not match count")
    if count * 4 > rec_len or (count == 0 and rec_len != 0) or rec_len > count * (2 + PACKED_MAX):
        raise fail("records length does not match count")
    spans = sorted([(coarse_off, coarse_len), (fine_off, fine_len), (smp_off, smp_len), (rec_off, rec_len)])
    if any(a + alen > b for (a, alen), (b, _) in itertools.pairwise(spans)):
        raise fail("sections overlap")
    return {
        "count": count,
        "bucket_bits": bits,
        "group_bits": gbits,
        "markets": list(markets),
        "coarse": (coarse_off, coarse_len),
        "fine": (fine_off, fine_len),
        "samples": (smp_off, smp_len),
        "records": (rec_off, rec_len),
    }


def decode_records(records: bytes | memoryview, markets: list[str], name: str) -> list[tuple[str, str]]:
    """All (serial, market) records of a records section, in file order."""
    out = []
    pos = 0
    while pos < len(records):
        if pos + 2 > len(records):
            raise CorruptFileError(f"{name}: corrupt: record header out of bounds")
        (hdr,) = struct.unpack_from("<H", records, pos)
        length = (hdr >> 11) + 1
        size = packed_size(length)
        market_id = hdr & 0x7FF
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


def info_dict(path: str, header: FileHeader) -> dict[str, Any]:
    """The header of an allowlist file as a JSON-ready dict (what `regionlock allowlist info` prints)."""
    return {
        "path": path,
        "magic": header.magic.rstrip(b"\0").decode("ascii", "replace"),
        "format_version": header.version,
        "build_id": header.build_id,
        "payload_bytes": header.payload_length,
        "payload_sha256": header.payload_sha256.hex(),
        **header.metadata,
    }


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MARKET_MAX_LENGTH",
    "SERIAL_MAX_LENGTH",
    "Allowlist",
    "check_layout",
    "pack_serial",
    "serial_hash",
]
