"""The immutable snapshot the check path reads (geo, allowlist, policy, overrides) and its holder."""

from __future__ import annotations

import calendar
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from regionlock.core.allowlist import Allowlist
from regionlock.core.errors import DataFileError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_aliases import METADATA_KEY as ALIASES_KEY
from regionlock.service.errors import FailedPrecondition
from regionlock.service.overrides.index import OverrideIndex
from regionlock.service.policy import DataRegions, Policy, PolicyError, load_policy, require_markets_defined

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


class DataSettings(Protocol):
    """The settings a snapshot is loaded from (the server's Settings has them): paths and the age limit."""

    @property
    def geo_path(self) -> Path: ...
    @property
    def allowlist_path(self) -> Path: ...
    @property
    def policy_path(self) -> Path: ...
    @property
    def geo_max_age_days(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DataVersions:
    """Identifiers of the data a decision was made with."""

    geo: str
    allowlist: str
    policy: str
    overrides_revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one check reads; never mutated, replaced whole."""

    geo: GeoDatabase
    allowlist: Allowlist
    policy: Policy
    overrides: OverrideIndex
    loaded_at: float

    @property
    def versions(self) -> DataVersions:
        return DataVersions(self.geo.build_id, self.allowlist.build_id, self.policy.version, self.overrides.revision)

    @property
    def geo_provenance(self) -> GeoProvenance:
        return GeoProvenance.of(self.geo.info)


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch of a header's RFC 3339 `build_time` (None if absent or malformed)."""
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class GeoSource:
    """One source a region database was built from, as its header lists it."""

    name: str
    database_type: str  # a MaxMind DB's database_type ("GeoLite2-City"); "" for CSV
    build_epoch: int | None  # a MaxMind DB's build_epoch; None for CSV, or a file compiled before it was recorded


@dataclass(frozen=True, slots=True)
class GeoProvenance:
    """Where a region database's data comes from and how old it is."""

    sources: tuple[GeoSource, ...]
    built_at: float | None  # the oldest MaxMind DB source's build, else when the file was compiled
    from_sources: bool  # False: built_at is the compile time (the sources carry none), the data may be older

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> GeoProvenance:
        """From a region database's header metadata (`GeoDatabase.info`)."""
        sources = tuple(
            GeoSource(str(s.get("name", "")), str(s.get("database_type") or ""), _whole(s.get("build_epoch")))
            for s in metadata.get("sources", ())
            if isinstance(s, dict)
        )
        source_epoch = _whole(metadata.get("source_build_epoch"))
        if source_epoch is not None:
            return cls(sources, float(source_epoch), True)
        return cls(sources, _epoch(metadata.get("build_time")), False)

    def age_warning(self, now: float, max_age_days: int) -> str:
        """Why the data is too old to trust ("" when it is not, or max_age_days is 0)."""
        if max_age_days == 0:
            return ""
        if self.built_at is None:
            return "the region database carries no build time: its age is unknown"
        days = int((now - self.built_at) // 86400)
        if days <= max_age_days:
            return ""
        built = time.strftime("%Y-%m-%d", time.gmtime(self.built_at))
        what = f"its sources were built {built}" if self.from_sources else f"it was compiled {built} (sources older)"
        return (
            f"the region data is {days} days old, more than geo_max_age_days = {max_age_days} ({what}): addresses "
            "move between regions, so serve current data (README, Production data)"
        )


def allowlist_built_at(allowlist: Allowlist) -> float | None:
    """When the allowlist file was built (its sources, sales records, carry no time of their own)."""
    return _epoch(allowlist.header.metadata.get("build_time"))


def load_data(settings: DataSettings) -> tuple[GeoDatabase, Allowlist, Policy]:
    """Open and verify the data files and the policy; raise FailedPrecondition naming what is wrong.

    The policy is checked against this region database and this allowlist (parse_policy, require_markets_defined);
    a reload refused for it keeps the old data serving.
    """
    try:
        geo = GeoDatabase.open(settings.geo_path, verify=True)
        allowlist = Allowlist.open(settings.allowlist_path, verify=True)
        policy = load_policy(settings.policy_path, DataRegions.of(str(settings.geo_path), geo.regions))
        require_markets_defined(policy, allowlist.markets, str(settings.policy_path), str(settings.allowlist_path))
    except FileNotFoundError as exc:
        raise FailedPrecondition(f"no such file: {exc.filename}") from None
    except OSError as exc:
        raise FailedPrecondition(f"can't read {exc.filename}: {exc.strerror}") from None
    except (DataFileError, PolicyError) as exc:
        raise FailedPrecondition(str(exc)) from None
    if ALIASES_KEY not in geo.info:
        log.warning(
            "%s was built before IPv4 aliases: IPv6 spellings of IPv4 addresses (6to4 2002::/16, ::a.b.c.d, "
            "2001::/32) find no region in it; rebuild it with `regionlock geo build`",
            settings.geo_path,
        )
    return geo, allowlist, policy


class SnapshotHolder:
    """Holds the current snapshot; readers take `current` once per request, writers swap it whole.

    Swaps are serialized by a lock that readers never take. An old snapshot is never closed: the last
    request holding it drops the reference and its mappings go with it.
    """

    def __init__(self, on_swap: Callable[[Snapshot], None] | None = None) -> None:
        self.current: Snapshot | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_error = ""  # why the last reload failed, until one succeeds (GetStatus shows it)
        self._overrides = OverrideIndex.empty()
        self._lock = threading.Lock()
        self._on_swap = on_swap

    def _swap(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        if self._on_swap is not None:
            self._on_swap(snapshot)

    def reload(self, settings: DataSettings) -> Snapshot:
        """Build a complete new snapshot from the configured files, validate it, then swap; keep the old on failure."""
        started = time.monotonic()
        try:
            geo, allowlist, policy = load_data(settings)
        except FailedPrecondition as exc:
            with self._lock:
                self.reloads_failed += 1
                self.last_error = exc.message
            log.error("reload failed, the previous data keeps serving: %s", exc.message)
            raise
        with self._lock:
            snapshot = Snapshot(geo, allowlist, policy, self._overrides, time.time())
            self.reloads_ok += 1
            self.last_error = ""
            self._swap(snapshot)
        log.info(
            "data loaded in %.2fs: geo %s, allowlist %s (%d serials), policy %s (%s mode)",
            time.monotonic() - started,
            geo.build_id,
            allowlist.build_id,
            len(allowlist),
            policy.version,
            policy.mode,
        )
        warning = snapshot.geo_provenance.age_warning(time.time(), settings.geo_max_age_days)
        if warning:
            log.warning("%s", warning)
        return snapshot

    def set_overrides(self, index: OverrideIndex) -> None:
        """Swap in a newer override index (never an older one: refresher and writer may race)."""
        with self._lock:
            if index.revision < self._overrides.revision:
                return
            self._overrides = index
            if self.current is not None:
                self._swap(replace(self.current, overrides=index))
