"""The allowlist file format: magic, version, the layout of the payload and its records, and the header checks.

Production code (the compiled reader, the builder) and the pure-Python twin (_allowlist_reference.py) both read
the format from here.

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
from typing import Any

from regionlock.core.errors import CorruptFileError
from regionlock.core.fileformat import FileHeader
from regionlock.core.serials import normalize_market

MAGIC = b"RLALLOW\0"
FORMAT_VERSION = 1
HASH_NAME = "rl-b40-fmix64-v1"
SAMPLE_STRIDE = 64
MAX_MARKETS = 2048
MAX_BUCKET_BITS = 40
GROUP_BITS = 6
PACKED_MAX = 22  # bytes of a packed 32-character serial
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-./_"
# A record's uint16 header: (length - 1) << RECORD_LENGTH_SHIFT | market id (below MAX_MARKETS = 2 ** 11).
RECORD_LENGTH_SHIFT = 11
RECORD_MARKET_MASK = (1 << RECORD_LENGTH_SHIFT) - 1


def packed_size(length: int) -> int:
    """Bytes of the packed form of a serial of `length` characters."""
    return 2 * ((length + 2) // 3)


def record_header(length: int, market_id: int) -> int:
    """The uint16 header of a record: its serial's length and its market id."""
    return (length - 1) << RECORD_LENGTH_SHIFT | market_id


def record_length(header: int) -> int:
    """The serial length a record header holds."""
    return (header >> RECORD_LENGTH_SHIFT) + 1


def record_market(header: int) -> int:
    """The market id a record header holds."""
    return header & RECORD_MARKET_MASK


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
