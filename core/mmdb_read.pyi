"""Type stub of regionlock.core.mmdb_read, the geo build's compiled MaxMind DB reading loops."""

from array import array
from collections.abc import Callable

from typing_extensions import Buffer, disjoint_base

def walk_mmdb_tree(
    tree: Buffer, node_count: int, record_size: int, ip_version: int, data_size: int
) -> tuple[
    array[int], array[int], array[int], array[int], array[int], array[int], array[int], list[tuple[int, int, int]]
]:
    """(v4_starts, v4_prefixes, v4_offsets, v6_high, v6_low, v6_prefixes, v6_offsets, ipv4 aliases as
    (high, low, prefix length)), in address order."""

def region_ids_for_offsets(offsets: Buffer, resolve: Callable[[int], int]) -> array[int]:
    """Each data offset's region id, `resolve` called once per distinct offset."""

@disjoint_base
class MMDBData:
    """The data section of a MaxMind DB file, decoded field by field."""

    def __init__(self, data: Buffer) -> None: ...
    def region_fields(self, offset: int) -> tuple[str | None, bool, str | None, str | None]:
        """(country.iso_code, has country, registered_country.iso_code, subdivisions[0].iso_code)."""
    def path_string(self, offset: int, path: tuple[bytes | int, ...]) -> str | None:
        """The string at `path` (map keys as bytes, array indexes as ints) in the record at offset, or None."""
    def keys(self, offset: int) -> list[str]:
        """The keys of the map at offset; empty if the value is not a map."""
