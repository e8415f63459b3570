"""Type stub of regionlock.core.allowlist_sort, the allowlist builder's compiled loops."""

import array
from typing import BinaryIO

from typing_extensions import disjoint_base

REC_SIZE: int

@disjoint_base
class RunBuffer:
    capacity: int
    size: int
    rows: int
    lines: int
    markets: list[str]
    market_ids: dict[str, int]
    def __init__(self, capacity: int) -> None: ...
    def clear(self) -> None: ...
    def market_id(self, market: str) -> int: ...
    def add(self, serial: str, market: str) -> None: ...
    def parse(self, data: bytes, start: int, serial_col: int, market_col: int, ncols: int) -> tuple[int, int]: ...
    def count_line(self, stored: bool) -> None: ...
    def sort_dedup(self) -> tuple[int, list[tuple[str, str, str]]]: ...
    def write_to(self, f: BinaryIO) -> None: ...

@disjoint_base
class Merger:
    count: int
    duplicates: int
    records_len: int
    conflicts: list[tuple[str, str, str]]
    samples: array.array[int]
    market_counts: list[int]
    def __init__(
        self, runs: list[tuple[BinaryIO, int, list[str]]], markets: list[str], fine_bits: int, buf_bytes: int
    ) -> None: ...
    def run(self, records_out: BinaryIO, dir_out: BinaryIO, out_bytes: int = ...) -> None: ...

def split_directory(offsets: memoryview, gbits: int) -> tuple[array.array[int], bytearray] | None: ...
