"""IPv6 ranges that alias the IPv4 space, as MaxMind DB search trees have them: names, checks and merging.

An alias is an IPv6 network of prefix length L <= 96 whose addresses stand for the IPv4 address held in
their bits L..L+31 (MaxMind's reader walks on into the IPv4 tree after the alias's L bits). A compiled
database lists its aliases in the header metadata under "ipv4_aliases", in address order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from regionlock.core.errors import BuildError

METADATA_KEY = "ipv4_aliases"
MAX_ALIASES = 16
# what MaxMind's writers give an IPv6 tree: the IPv4 subtree itself at ::/96 (IPv4-compatible), the IPv4-mapped
# range, the Teredo range (MaxMind aliases the 32 bits after the prefix) and 6to4
MAXMIND_ALIASES = ("::/96", "::ffff:0:0/96", "2001::/32", "2002::/16")

Alias = ipaddress.IPv6Network


def parse_aliases(value: object) -> tuple[Alias, ...]:
    """Validate a metadata list of aliases: at most MAX_ALIASES, CIDR text, /96 or shorter, disjoint, in
    address order. Raise ValueError saying what is wrong."""
    if not isinstance(value, list) or len(value) > MAX_ALIASES or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{METADATA_KEY} is not a list of at most {MAX_ALIASES} strings")
    aliases: list[Alias] = []
    for text in value:
        try:
            network = ipaddress.IPv6Network(text)  # strict: host bits set is an error
        except ValueError as exc:
            raise ValueError(f"IPv4 alias {text!r}: {exc}") from None
        if network.prefixlen > 96:
            raise ValueError(f"IPv4 alias {text} is longer than /96")
        if aliases and int(network.network_address) <= int(aliases[-1].broadcast_address):
            raise ValueError(f"IPv4 alias {text} overlaps or precedes {aliases[-1]}")
        aliases.append(network)
    return tuple(aliases)


def from_walk(found: Iterable[tuple[int, int, int]]) -> tuple[Alias, ...]:
    """The aliases that walk_mmdb_tree found, as (high, low, prefix length), as networks in address order."""
    networks = sorted(ipaddress.IPv6Network(((hi << 64) | lo, prefix)) for hi, lo, prefix in found)
    if len(networks) > MAX_ALIASES:
        raise BuildError(f"more than {MAX_ALIASES} IPv4 aliases in the search tree")
    return tuple(networks)


def merge_source_aliases(sources: Sequence[tuple[str, tuple[Alias, ...] | None]]) -> tuple[Alias, ...]:
    """The aliases of a build from (source name, its aliases or None) pairs.

    A source with None (CSV, an IPv4-only MaxMind DB) holds no IPv6 spelling of its own and takes the others'.
    MaxMind DB sources with IPv6 trees must agree: each resolves IPv6 spellings of IPv4 addresses its own way,
    and one compiled file can't honour both. With none of them, MaxMind's set applies, so that a 6to4 or
    IPv4-compatible spelling of an IPv4 address resolves as the IPv4 address does.
    """
    first: tuple[str, tuple[Alias, ...]] | None = None
    for name, aliases in sources:
        if aliases is None:
            continue
        if first is None:
            first = (name, aliases)
            continue
        if aliases != first[1]:
            extra = sorted(set(aliases) - set(first[1]))
            if extra:
                owner, other, alias = name, first[0], extra[0]
            else:
                owner, other, alias = first[0], name, sorted(set(first[1]) - set(aliases))[0]
            raise BuildError(
                f"{owner}: aliases {alias} to IPv4 and {other} does not: the two sources resolve IPv6 spellings "
                "of IPv4 addresses differently; build them separately or from sources that agree"
            )
    if first is None:
        return tuple(ipaddress.IPv6Network(text) for text in MAXMIND_ALIASES)
    return first[1]


def check_outside_aliases(
    name: str, high: Sequence[int], low: Sequence[int], prefixes: Sequence[int], aliases: Sequence[Alias]
) -> None:
    """Refuse an IPv6 network (high and low 64 bits, prefix length) inside an alias: a lookup there takes the
    IPv4 answer, so the network could never match."""
    for hi, lo, prefix in zip(high, low, prefixes, strict=True):
        for alias in aliases:
            length = alias.prefixlen
            if prefix >= length and ((hi << 64) | lo) >> (128 - length) == int(alias.network_address) >> (128 - length):
                network = ipaddress.IPv6Network(((hi << 64) | lo, prefix))
                raise BuildError(
                    f"{name}: IPv6 network {network} is inside {alias}, which aliases IPv4 addresses "
                    "(an address there resolves as the IPv4 address it holds); write the IPv4 network instead"
                )
