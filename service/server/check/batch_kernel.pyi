"""Type stub of regionlock.service.server.check.batch_kernel, the compiled CheckDevices fast path."""

from datetime import datetime
from typing import Any, final

from regionlock.core.allowlist import Allowlist
from regionlock.core.geo import GeoDatabase

MAX_DEPTH: int

class TooManyItems(ValueError):
    """A CheckDevicesRequest with more items than the caller allows; the parse stopped at the first one over."""

@final
class Blobs:
    """A list of byte strings as one buffer and offsets, readable without the GIL."""

    def __init__(self, items: list[bytes]) -> None: ...
    def __len__(self) -> int: ...

@final
class Table:
    """The policy's outcome for every (region id, market id) cell, with the pre-encoded response parts."""

    def __init__(
        self,
        cells: bytes,
        nregions: int,
        nmarkets: int,
        heads: list[bytes],
        tails: list[bytes],
        regions: list[bytes],
        markets: list[bytes],
    ) -> None: ...
    @property
    def outcomes(self) -> int: ...

@final
class Batch:
    """A CheckDevicesRequest read from its wire format (ValueError if malformed, TooManyItems past max_items);
    looked up, then encoded."""

    def __init__(self, data: bytes, max_items: int = ...) -> None: ...
    def __len__(self) -> int: ...
    def item(self, i: int) -> tuple[str, str, str, bool]: ...
    def look_up(self, geo: GeoDatabase, allowlist: Allowlist) -> None: ...
    def apply_overrides(self, overrides: dict[str, Any], now: datetime) -> None: ...
    def slow_items(self) -> list[int]: ...
    def encode(
        self, table: Table, versions: bytes, id_prefix: bytes, first_id: int, slow_results: list[bytes]
    ) -> bytes: ...
    def outcome_counts(self) -> list[int]: ...

def check_one(
    request: bytes,
    geo: GeoDatabase,
    allowlist: Allowlist,
    table: Table,
    versions: bytes,
    id_prefix: bytes,
    decision_id: int,
    overrides: dict[str, Any] | None,
    now: datetime | None,
) -> tuple[bytes, int] | None:
    """CheckDevice in one call: the response's wire bytes and outcome index, or None if Python must decide."""
