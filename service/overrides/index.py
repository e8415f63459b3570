"""The in-memory override index the check path reads, and the refresher that keeps it caught up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import MappingProxyType

from regionlock.service.overrides.model import Override
from regionlock.service.overrides.store import OverrideStore

logger = logging.getLogger(__name__)

# While the store stays unreachable, repeat the warning this often rather than on every poll.
_WARN_EVERY_S = 30.0


class OverrideIndex(Mapping[str, Override]):
    """An immutable snapshot of every stored override (expired ones too), keyed by normalized serial."""

    __slots__ = ("_items", "revision")

    def __init__(self, items: Mapping[str, Override] | None = None, revision: int = 0) -> None:
        self._items: Mapping[str, Override] = MappingProxyType(dict(items or {}))
        self.revision = revision

    @classmethod
    def empty(cls) -> OverrideIndex:
        """The index of a store with no overrides at revision 0 (before the first load)."""
        return cls()

    def get(self, serial: str, default: Override | None = None) -> Override | None:  # type: ignore[override]
        """The override of a normalized serial, or None; whether it applies now is Override.is_live's call."""
        return self._items.get(serial, default)

    def __getitem__(self, serial: str) -> Override:
        return self._items[serial]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def count_live(self, now: datetime) -> int:
        """How many overrides are in force at `now` (for GetStatus)."""
        return sum(1 for o in self._items.values() if o.is_live(now))

    def with_changes(self, changes: Mapping[str, Override | None], revision: int) -> OverrideIndex:
        """A new index with `changes` applied (None = deleted); this one is left as it is."""
        items = dict(self._items)
        for serial, override in changes.items():
            if override is None:
                items.pop(serial, None)
            else:
                items[serial] = override
        return OverrideIndex(items, revision)

    def __repr__(self) -> str:
        return f"OverrideIndex(len={len(self)}, revision={self.revision})"


class OverrideIndexRefresher:
    """Holds the current OverrideIndex and keeps it caught up with the store.

    Readers take `refresher.index` (one attribute read, no lock). Updates come from `apply` (the writing
    process, at once) and from a daemon thread polling `store.changes_since`, both under one lock so that
    revisions only move forward. `on_update(index)` is called, under that lock and in revision order,
    after every swap: keep it cheap (swap a reference).
    """

    def __init__(
        self,
        store: OverrideStore,
        interval: float = 0.2,
        on_update: Callable[[OverrideIndex], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._interval = interval
        self._on_update = on_update
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = float("-inf")
        self.index = OverrideIndex()
        self.failures = 0  # polls that failed since start
        self.consecutive_failures = 0
        self.last_success_monotonic: float | None = None

    def load(self) -> OverrideIndex:
        """Load every override from the store (raises when it is unreachable); used at start."""
        items, revision = self._store.load_all()
        with self._lock:
            self._swap(OverrideIndex(items, revision))
            self._succeeded()
        return self.index

    def start(self) -> OverrideIndex:
        """Load the index, then poll in a daemon thread until stop()."""
        index = self.load()
        self._thread = threading.Thread(target=self._run, name="override-index-refresher", daemon=True)
        self._thread.start()
        return index

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and wait for the thread to finish."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def apply(self, changes: Mapping[str, Override | None], revision: int) -> None:
        """Record a change this process just committed as `revision`, so the check path sees it at once.

        If other processes committed revisions we have not seen yet, jumping to `revision` would skip
        theirs; then we catch up from the store instead (which includes this change).
        """
        with self._lock:
            current = self.index.revision
            if revision <= current:
                return  # the poller got there first
            if revision == current + 1:
                self._swap(self.index.with_changes(changes, revision))
                return
        if not self.refresh():
            self._wake.set()  # the store just failed us; let the poller retry without waiting

    def refresh(self) -> bool:
        """Catch up with the store once; True on success. Failures keep the last index and are counted."""
        since = self.index.revision
        try:
            changes, revision = self._store.changes_since(since)
            reload = revision < since
            if reload:
                logger.warning("override store went back from revision %d to %d: reloading", since, revision)
                items, revision = self._store.load_all()
        except Exception as exc:
            with self._lock:
                self._failed(exc)
            return False
        with self._lock:
            if reload:
                self._swap(OverrideIndex(items, revision))
            elif revision > self.index.revision:
                # changes hold each serial's state as of `revision`, so they are right to apply to any
                # index between `since` and `revision`, even if apply() moved it meanwhile
                self._swap(self.index.with_changes(changes, revision))
            self._succeeded()
        return True

    def wake(self) -> None:
        """Catch up now rather than at the next poll (the store's change notifications call this)."""
        self._wake.set()

    def staleness_seconds(self) -> float:
        """Seconds since the index last caught up with the store (infinity before the first success)."""
        if self.last_success_monotonic is None:
            return float("inf")
        return max(0.0, self._clock() - self.last_success_monotonic)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except Exception:  # a bug in on_update must not end polling for the life of the process
                logger.exception("override index refresh failed unexpectedly")

    def _swap(self, index: OverrideIndex) -> None:
        self.index = index
        if self._on_update is not None:
            self._on_update(index)

    def _succeeded(self) -> None:
        if self.consecutive_failures:
            logger.info("override store reachable again after %d failed polls", self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_success_monotonic = self._clock()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        now = self._clock()
        if self.consecutive_failures == 1 or now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            logger.warning(
                "override store unreachable (%d polls failed in a row), serving the index at revision %d: %s",
                self.consecutive_failures,
                self.index.revision,
                exc,
            )
