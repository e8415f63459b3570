"""Type stub of regionlock.core.geo_compile, the geo build's compiled table painters."""

from typing_extensions import Buffer, disjoint_base

@disjoint_base
class V4Painter:
    """DIR-24-8 tables painted network by network."""

    def __init__(self) -> None: ...
    def paint(self, starts: Buffer, prefixes: Buffer, region_ids: Buffer) -> None: ...
    def finish(self) -> tuple[bytes, bytes]:
        """(tbl24, tbl8)."""

@disjoint_base
class V6Painter:
    """The IPv6 multibit trie painted network by network."""

    def __init__(self) -> None: ...
    def paint(self, high: Buffer, low: Buffer, prefixes: Buffer, region_ids: Buffer) -> None: ...
    def finish(self) -> tuple[bytes, bytes, bytes]:
        """(direct, nodes, leaves)."""
