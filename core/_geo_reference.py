"""Pure-Python twin of the geo database (longest-prefix match over ipaddress networks), for differential tests."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from regionlock.core.geo import Region
from regionlock.core.geo_aliases import MAXMIND_ALIASES

Row = tuple[str, str, "str | None"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def reference_address(ip: str | bytes | int) -> IPAddress:
    """Parse an address as GeoDatabase.lookup does, with ipaddress: IPv4-mapped IPv6 becomes IPv4."""
    if isinstance(ip, str) and "%" in ip:
        raise ValueError(f"invalid IP address: {ip!r}")  # zone ids are refused
    if isinstance(ip, bytes) and len(ip) not in (4, 16):
        raise ValueError(f"invalid IP address: {ip!r}")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"invalid IP address: {ip!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _piece(value: int, first: int, last: int, bits: int) -> int:
    """The prefix of the largest aligned block holding `value` that lies inside [first, last]."""
    prefix = bits
    while prefix > 0:
        size = 1 << (bits - prefix + 1)
        start = value & ~(size - 1)
        if start < first or start + size - 1 > last:
            break
        prefix -= 1
    return prefix


class ReferenceGeoDatabase:
    """Sources are lists of (network, country, subdivision) rows, already normalized; later sources win.

    A network is CIDR, or an inclusive range `first-last`, which holds an address with the largest aligned
    block around it that the range contains (as the builder compiles a range: the CIDRs that cover it).
    An address takes the last source with a network holding it, and that source's longest such prefix;
    a prefix repeated within one source takes its last row. An IPv6 address inside one of `aliases` (by
    default MaxMind's, as a build from CSV sources has them) is the IPv4 address of the 32 bits after the
    alias's prefix: it takes that address's region, its network the IPv6 one of the alias's prefix length plus
    the IPv4 network's.
    """

    def __init__(self, sources: Sequence[Iterable[Row]], aliases: Iterable[str] = MAXMIND_ALIASES) -> None:
        self.aliases = [ipaddress.IPv6Network(alias) for alias in aliases]
        self._sources: list[dict[tuple[int, int, int], tuple[int, tuple[str, str | None]]]] = []
        self._ranges: list[list[tuple[int, int, int, int, tuple[str, str | None]]]] = []
        self.regions: list[tuple[str, str | None]] = [("", None)]
        ids: dict[tuple[str, str | None], int] = {}
        for rows in sources:
            table: dict[tuple[int, int, int], tuple[int, tuple[str, str | None]]] = {}
            ranges: list[tuple[int, int, int, int, tuple[str, str | None]]] = []
            for row, (network, country, subdivision) in enumerate(rows):
                region = (country, subdivision or None)
                if region not in ids:
                    ids[region] = len(self.regions)
                    self.regions.append(region)
                if "-" in network:
                    first, last = (ipaddress.ip_address(end) for end in network.split("-"))
                    ranges.append((first.version, int(first), int(last), row, region))
                else:
                    net = ipaddress.ip_network(network)
                    table[(net.version, int(net.network_address), net.prefixlen)] = (row, region)
            self._sources.append(table)
            self._ranges.append(ranges)
        self._ids = ids

    def lookup(self, ip: str | bytes | int) -> Region | None:
        """The Region of an address, or None; by brute force over every prefix length and every range."""
        address = reference_address(ip)
        for alias in self.aliases if address.version == 6 else ():  # (`in` would mix IPv4 into ::/96)
            if address in alias:
                shift = 96 - alias.prefixlen
                mapped = self.lookup(ipaddress.IPv4Address((int(address) >> shift) & 0xFFFFFFFF).packed)
                if mapped is None or mapped.network is None:
                    return mapped
                length = alias.prefixlen + ipaddress.IPv4Network(mapped.network).prefixlen
                network = ipaddress.IPv6Network((int(address), length), strict=False)
                return Region(mapped.country, mapped.subdivision, str(network))
        value, bits = int(address), address.max_prefixlen
        for table, ranges in zip(reversed(self._sources), reversed(self._ranges), strict=True):
            pieces: dict[int, tuple[int, tuple[str, str | None]]] = {}
            for version, first, last, row, region in ranges:
                if version == address.version and first <= value <= last:
                    prefix = _piece(value, first, last, bits)
                    pieces[prefix] = max(pieces.get(prefix, (row, region)), (row, region))
            for prefix in range(bits, -1, -1):
                start = value & ~((1 << (bits - prefix)) - 1)
                found = [hit for hit in (table.get((address.version, start, prefix)), pieces.get(prefix)) if hit]
                if found:
                    region = max(found)[1]
                    kind = ipaddress.IPv4Network if address.version == 4 else ipaddress.IPv6Network
                    return Region(region[0], region[1], str(kind((start, prefix))))
        return None

    def lookup_many(self, ips: Iterable[str | bytes | int]) -> list[Region | None]:
        return [self.lookup(ip) for ip in ips]

    def region_id(self, ip: str | bytes | int) -> int:
        """Ids in first-seen order of the rows, as the builder numbers the regions of CSV sources."""
        region = self.lookup(ip)
        return 0 if region is None else self._ids[(region.country, region.subdivision)]
