"""Type stub of regionlock.core.geo, the compiled IP-to-region database."""

import os
from array import array
from collections.abc import Iterable
from typing import Any, ClassVar, final

MAGIC: bytes
FORMAT_VERSION: int
MAX_REGIONS: int
TBL24_ENTRIES: int
DIRECT_ENTRIES: int
NODE_SIZE: int

_IPInput = str | bytes | int
_Buffer = bytes | bytearray | memoryview | array[int]  # packed addresses

def parse_ip(ip: _IPInput) -> tuple[int, int]:
    """(4, int) or (6, int); IPv4-mapped IPv6 gives (4, ...); ValueError naming the input if malformed."""

@final
class Region:
    """Where an address is; immutable, hashable, picklable."""

    country: str
    subdivision: str | None
    @property
    def network(self) -> str | None: ...
    def __init__(self, country: str, subdivision: str | None = None, network: str | None = None) -> None: ...
    __hash__: ClassVar[Any]

@final
class GeoDatabase:
    """An opened region database (a private copy of its file in memory); thread-safe; batch lookups release the GIL."""

    path: str | os.PathLike[str]
    regions: list[tuple[str, str | None]]
    ipv4_aliases: tuple[str, ...]  # IPv6 networks resolved as the IPv4 address they hold; () in older files
    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> GeoDatabase: ...
    def lookup(self, ip: _IPInput) -> Region | None: ...
    def region_id(self, ip: _IPInput) -> int: ...
    def region(self, region_id: int) -> Region | None: ...
    def lookup_many(self, ips: Iterable[_IPInput]) -> list[Region | None]: ...
    def region_ids(self, ips: Iterable[_IPInput]) -> array[int]: ...
    def region_ids_v4(self, buffer: _Buffer) -> array[int]: ...
    def region_ids_v6(self, buffer: _Buffer) -> array[int]: ...
    def leaves_v4(self, buffer: _Buffer) -> array[int]: ...
    def leaves_v6(self, buffer: _Buffer) -> array[int]: ...
    @property
    def info(self) -> dict[str, Any]: ...
    @property
    def build_id(self) -> str: ...
    @property
    def network_count(self) -> int: ...
