"""The immutable snapshot the check path reads (geo, allowlist, policy, overrides) and its holder."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from regionlock.core.allowlist import Allowlist
from regionlock.core.errors import DataFileError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_aliases import METADATA_KEY as ALIASES_KEY
from regionlock.service.errors import FailedPrecondition
from regionlock.service.overrides.index import OverrideIndex
from regionlock.service.policy import Policy, PolicyError, load_policy

if TYPE_CHECKING:
    from collections.abc import Callable

    from regionlock.service.settings import Settings

log = logging.getLogger(__name__)


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


def load_data(settings: Settings) -> tuple[GeoDatabase, Allowlist, Policy]:
    """Open and verify the data files and the policy; raise FailedPrecondition naming what is wrong."""
    try:
        geo = GeoDatabase.open(settings.geo_path, verify=True)
        allowlist = Allowlist.open(settings.allowlist_path, verify=True)
        policy = load_policy(settings.policy_path)
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
    undefined = sorted(set(allowlist.markets) - set(policy.markets))
    if undefined:
        log.warning(
            "allowlist markets not defined in the policy (their devices count as gray imports): %s",
            ", ".join(undefined),
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
        self._overrides = OverrideIndex.empty()
        self._lock = threading.Lock()
        self._on_swap = on_swap

    def _swap(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        if self._on_swap is not None:
            self._on_swap(snapshot)

    def reload(self, settings: Settings) -> Snapshot:
        """Build a complete new snapshot from the configured files, validate it, then swap; keep the old on failure."""
        started = time.monotonic()
        try:
            geo, allowlist, policy = load_data(settings)
        except FailedPrecondition as exc:
            with self._lock:
                self.reloads_failed += 1
            log.error("reload failed, the previous data keeps serving: %s", exc.message)
            raise
        with self._lock:
            snapshot = Snapshot(geo, allowlist, policy, self._overrides, time.time())
            self.reloads_ok += 1
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
        return snapshot

    def set_overrides(self, index: OverrideIndex) -> None:
        """Swap in a newer override index (never an older one: refresher and writer may race)."""
        with self._lock:
            if index.revision < self._overrides.revision:
                return
            self._overrides = index
            if self.current is not None:
                self._swap(replace(self.current, overrides=index))
