"""The batch fast path's outcome table: decide() for every (region id, market id) cell, pre-encoded as protobuf."""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from regionlock.service.decision import decide
from regionlock.service.overrides.index import OverrideIndex
from regionlock.service.server.check.batch_kernel import Table
from regionlock.v1 import device_check_pb2 as pb

if TYPE_CHECKING:
    from regionlock.core.allowlist import Allowlist
    from regionlock.core.geo import GeoDatabase, Region
    from regionlock.service.policy import Policy
    from regionlock.service.snapshot import Snapshot

_NO_OVERRIDES = OverrideIndex.empty()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a cell decides, as the decision metrics count it."""

    verdict: int
    reason: int
    enforced: bool


class _Cell:
    """A stand-in snapshot in which every address is in one region and every serial sold for one market."""

    __slots__ = ("market", "policy", "region")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.region: Region | None = None
        self.market: str | None = None

    @property
    def geo(self) -> _Cell:
        return self

    @property
    def allowlist(self) -> _Cell:
        return self

    @property
    def overrides(self) -> OverrideIndex:
        return _NO_OVERRIDES

    def lookup(self, ip: str) -> Region | None:
        return self.region

    def get(self, serial: str) -> str | None:
        return self.market


@dataclass(frozen=True, slots=True)
class BatchTable:
    """The kernel's table for one (geo, allowlist, policy), and the outcome each of its indexes stands for."""

    geo: GeoDatabase
    allowlist: Allowlist
    policy: Policy
    kernel: Table
    outcomes: tuple[Outcome, ...]

    def serves(self, snapshot: Snapshot) -> bool:
        return snapshot.geo is self.geo and snapshot.allowlist is self.allowlist and snapshot.policy is self.policy


def build_table(geo: GeoDatabase, allowlist: Allowlist, policy: Policy) -> BatchTable:
    """Decide each cell with decide() itself (no override: those are looked at per item), so that the table and
    the reference path can't disagree. Regions alike to the policy (the same restricted rule, the same markets
    covering them) share a row, decided once: decide() looks at a region through these two questions only."""
    cell = _Cell(policy)
    markets: list[str | None] = [*allowlist.markets, None]  # the last column: not in the allowlist
    nregions = len(geo.regions)
    rows: dict[tuple[object, ...], array[int]] = {}
    # (verdict, reason, rule_id, enforced, message, cache_ttl_seconds) -> outcome index
    outcomes: dict[tuple[int, int, str, bool, str, int], int] = {}
    cells = array("H")
    for region_id, (country, subdivision) in enumerate(geo.regions):
        if region_id == 0:
            alike: tuple[object, ...] = (None,)
        else:
            rule = policy.restricted_rule(country, subdivision)
            covered = tuple(m is not None and policy.market_covers(m, country, subdivision) for m in markets)
            alike = (None if rule is None else rule.rule_id, covered)
        row = rows.get(alike)
        if row is None:
            row = rows[alike] = array("H")
            cell.region = None if region_id == 0 else geo.region(region_id)
            for market in markets:
                cell.market = market
                d = decide(cell, "X", "", _EPOCH)  # type: ignore[arg-type]
                key = (int(d.verdict), int(d.reason), d.rule_id, d.enforced, d.message, d.cache_ttl_seconds)
                row.append(outcomes.setdefault(key, len(outcomes)))
        cells.extend(row)
    heads, tails = [], []
    for verdict, reason, rule_id, enforced, message, ttl in outcomes:
        # protoc's .pyi takes only its own enum classes for the enum fields; the numbers are the proto's
        head = pb.CheckDeviceResponse(
            verdict=cast("pb.Verdict", verdict), reason=cast("pb.Reason", reason), rule_id=rule_id
        )
        heads.append(head.SerializeToString())
        tails.append(
            pb.CheckDeviceResponse(enforced=enforced, message=message, cache_ttl_seconds=ttl).SerializeToString()
        )
    regions = [b""] + [pb.Region(country=c, subdivision=s or "").SerializeToString() for c, s in geo.regions[1:]]
    sold = [pb.CheckDeviceResponse(sold_market=m).SerializeToString() for m in allowlist.markets]
    kernel = Table(cells.tobytes(), nregions, len(markets) - 1, heads, tails, regions, sold)
    return BatchTable(geo, allowlist, policy, kernel, tuple(Outcome(v, r, e) for v, r, _, e, _, _ in outcomes))


class TableCache:
    """The table of the snapshot's data: built on first use, kept until geo, allowlist or policy change."""

    def __init__(self) -> None:
        self._table: BatchTable | None = None
        self._lock = threading.Lock()

    def get(self, snapshot: Snapshot) -> BatchTable:
        table = self._table
        if table is not None and table.serves(snapshot):
            return table
        with self._lock:  # one build, not one per waiting thread
            table = self._table
            if table is None or not table.serves(snapshot):
                table = self._table = build_table(snapshot.geo, snapshot.allowlist, snapshot.policy)
            return table
