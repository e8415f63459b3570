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


class ReferenceGeoDatabase:
    """Sources are lists of (network, country, subdivision) rows, already normalized; later sources win.

    An address takes the last source with a network holding it, and that source's longest such prefix;
    a prefix repeated within one source takes its last row. An IPv6 address inside one of `aliases` (by
    default MaxMind's, as a build from CSV sources has them) is the IPv4 address of the 32 bits after the
    alias's prefix: it takes that address's region, its network the IPv6 one of the alias's prefix length plus
    the IPv4 network's.
    """

    def __init__(self, sources: Sequence[Iterable[Row]], aliases: Iterable[str] = MAXMIND_ALIASES) -> None:
        self.aliases = [ipaddress.IPv6Network(alias) for alias in aliases]
        self._sources: list[dict[tuple[int, int, int], tuple[str, str | None]]] = []
        self.regions: list[tuple[str, str | None]] = [("", None)]
        ids: dict[tuple[str, str | None], int] = {}
        for rows in sources:
            table = {}
            for network, country, subdivision in rows:
                net = ipaddress.ip_network(network)
                region = (country, subdivision or None)
                if region not in ids:
                    ids[region] = len(self.regions)
                    self.regions.append(region)
                table[(net.version, int(net.network_address), net.prefixlen)] = region
            self._sources.append(table)
        self._ids = ids

    def lookup(self, ip: str | bytes | int) -> Region | None:
        """The Region of an address, or None; by brute force over every prefix length."""
        address = reference_address(ip)
        for alias in self.aliases if address.version == 6 else ():  # (`in` would mix IPv4 into ::/96)
            if address in alias:
                shift = 96 - alias.prefixlen
                region = self.lookup(ipaddress.IPv4Address((int(address) >> shift) & 0xFFFFFFFF))
                if region is None or region.network is None:
                    return region
                length = alias.prefixlen + ipaddress.IPv4Network(region.network).prefixlen
                network = ipaddress.IPv6Network((int(address), length), strict=False)
                return Region(region.country, region.subdivision, str(network))
        value, bits = int(address), address.max_prefixlen
        for table in reversed(self._sources):
            for prefix in range(bits, -1, -1):
                start = value & ~((1 << (bits - prefix)) - 1)
                region = table.get((address.version, start, prefix))
                if region is not None:
                    kind = ipaddress.IPv4Network if address.version == 4 else ipaddress.IPv6Network
                    network = kind((start, prefix))
                    return Region(region[0], region[1], str(network))
        return None

    def lookup_many(self, ips: Iterable[str | bytes | int]) -> list[Region | None]:
        return [self.lookup(ip) for ip in ips]

    def region_id(self, ip: str | bytes | int) -> int:
        """Ids in first-seen order of the rows, as the builder numbers the regions of CSV sources."""
        region = self.lookup(ip)
        return 0 if region is None else self._ids[(region.country, region.subdivision)]
