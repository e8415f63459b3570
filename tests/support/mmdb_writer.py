"""A small MaxMind DB writer for tests: record sizes 24, 28 and 32, IPv4 and IPv6 trees, IPv4 aliases."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

MARKER = b"\xab\xcd\xefMaxMind.com"
MAXMIND_ALIASES = ("::ffff:0:0/96", "2001::/32", "2002::/16")  # what MaxMind's writers alias to ::/96


def _control(kind: int, size: int) -> bytes:
    extra = b""
    if size < 29:
        bits = size
    elif size < 285:
        bits, extra = 29, bytes([size - 29])
    elif size < 65821:
        bits, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        bits, extra = 31, (size - 65821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([(kind << 5) | bits]) + extra
    return bytes([bits, kind - 7]) + extra


def encode(value: Any) -> bytes:
    """Encode a value of the MaxMind DB data section (no pointers)."""
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        raw = value.to_bytes(8, "big").lstrip(b"\0")
        return _control(6 if value < 2**32 else 9, len(raw)) + raw
    raise TypeError(type(value))


def pointer(target: int, width: int | None = None) -> bytes:
    """A pointer to `target` (in the metadata: an offset from its start), `width` bytes long (the least)."""
    width = width or next(w for w, end in ((1, 2048), (2, 526336), (3, 526336 + 2**27), (4, 2**32)) if target < end)
    value = target - (0, 0, 2048, 526336, 0)[width]
    top = 0 if width == 4 else value >> (8 * width)
    return bytes([0x20 | ((width - 1) << 3) | top]) + (value & (2 ** (8 * min(width, 4)) - 1)).to_bytes(width, "big")


def _typed(kind: int, value: int, width: int) -> bytes:
    raw = value.to_bytes(width, "big").lstrip(b"\0")
    return _control(kind, len(raw)) + raw


def write_mmdb(
    path,
    networks: list[tuple[str, dict[str, Any]]],
    ip_version: int = 6,
    record_size: int = 28,
    ipv4_aliases: bool | Sequence[str] = True,
    extra_metadata: list[tuple[str, bytes]] = (),
) -> None:
    """Write networks (CIDR, record) as a MaxMind DB; later networks are inserted deeper into earlier ones.

    In an IPv6 tree, each of `ipv4_aliases` (True: MaxMind's) is a record pointing at the IPv4 subtree (::/96).
    The metadata refers to repeated strings by pointer, as MaxMind's writer does (`languages` points into
    `description`). `extra_metadata` (key, raw encoded value) pairs come first in its map, so the first
    value starts at offset 1 + len(encode(key)) of the metadata section.
    """
    aliases = MAXMIND_ALIASES if ipv4_aliases is True else ipv4_aliases or ()
    bits = 128 if ip_version == 6 else 32
    nodes: list[list[Any]] = [[None, None]]
    data = bytearray()
    offsets: dict[int, int] = {}

    def data_offset(record: dict[str, Any]) -> int:
        key = id(record)
        if key not in offsets:
            offsets[key] = len(data)
            data.extend(encode(record))
        return offsets[key]

    def path_bits(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
        value, prefix = int(net.network_address), net.prefixlen
        if net.version == 4 and ip_version == 6:
            prefix += 96
        if net.version == 6 and ip_version == 4:
            raise ValueError("IPv6 network in an IPv4 tree")
        return value, prefix

    for text, record in networks:
        value, prefix = path_bits(ipaddress.ip_network(text))
        node = 0
        for depth in range(prefix):
            bit = (value >> (bits - 1 - depth)) & 1
            if depth == prefix - 1:
                nodes[node][bit] = ("data", data_offset(record))
            else:
                child = nodes[node][bit]
                if not (isinstance(child, tuple) and child[0] == "node"):
                    nodes.append([child, child])  # push an existing leaf down
                    nodes[node][bit] = ("node", len(nodes) - 1)
                node = nodes[node][bit][1]
    if ip_version == 6 and aliases:
        node = 0
        for _ in range(96):
            child = nodes[node][0]
            if not (isinstance(child, tuple) and child[0] == "node"):
                break
            node = child[1]
        else:
            for text in aliases:
                net = ipaddress.IPv6Network(text)
                alias, length = int(net.network_address), net.prefixlen
                walk = 0
                for depth in range(length - 1):
                    bit = (alias >> (127 - depth)) & 1
                    child = nodes[walk][bit]
                    if not (isinstance(child, tuple) and child[0] == "node"):
                        nodes.append([child, child])  # a network around the alias keeps the rest of its range
                        nodes[walk][bit] = ("node", len(nodes) - 1)
                    walk = nodes[walk][bit][1]
                nodes[walk][(alias >> (128 - length)) & 1] = ("node", node)
    count = len(nodes)

    def value_of(record: Any) -> int:
        if record is None:
            return count
        kind, number = record
        return number if kind == "node" else count + 16 + number

    tree = bytearray()
    for left, right in nodes:
        a, b = value_of(left), value_of(right)
        if record_size == 24:
            tree += a.to_bytes(3, "big") + b.to_bytes(3, "big")
        elif record_size == 28:
            tree += a.to_bytes(4, "big")[1:] + bytes([((a >> 24) << 4) | (b >> 24)]) + b.to_bytes(4, "big")[1:]
        else:
            tree += a.to_bytes(4, "big") + b.to_bytes(4, "big")
    metadata = _control(7, 9 + len(extra_metadata)) + b"".join(encode(key) + raw for key, raw in extra_metadata)
    metadata += (
        encode("binary_format_major_version")
        + _typed(5, 2, 2)
        + encode("binary_format_minor_version")
        + _typed(5, 0, 2)
        + encode("build_epoch")
        + _typed(9, 1_700_000_000, 8)
        + encode("database_type")
        + encode("Test-City")
        + encode("description")
        + _control(7, 1)
    )
    language = len(metadata)  # where the string "en" is, for the pointer of `languages`
    metadata += (
        encode("en")
        + encode("test")
        + encode("ip_version")
        + _typed(5, ip_version, 2)
        + encode("languages")
        + _control(11, 1)
        + pointer(language)
        + encode("node_count")
        + _typed(6, count, 4)
        + encode("record_size")
        + _typed(5, record_size, 2)
    )
    with open(path, "wb") as f:
        f.write(bytes(tree) + bytes(16) + bytes(data) + MARKER + metadata)
