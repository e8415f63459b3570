"""The in-memory override index and its refresher: immediate apply, polling, failures, staleness."""

from __future__ import annotations

import logging
import time

import pytest

from regionlock.service.errors import Unavailable
from regionlock.service.overrides.index import OverrideIndex, OverrideIndexRefresher
from regionlock.service.overrides.model import OverrideAction, OverrideChange


def change(serial, action=OverrideAction.UNLOCK):
    return OverrideChange(serial, action, "because", "")


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def refresher(store):
    updates = []
    refresher = OverrideIndexRefresher(store, interval=0.05, on_update=updates.append)
    refresher.updates = updates
    yield refresher
    refresher.stop()


def test_index_is_an_immutable_snapshot(store, now):
    a, _ = store.set(change("A"), "u", now)
    index = OverrideIndex({"A": a}, 1)
    newer = index.with_changes({"A": None, "B": a}, 2)
    assert (index.get("A"), len(index), index.revision) == (a, 1, 1)
    assert (newer.get("A"), newer.get("B"), len(newer), newer.revision) == (None, a, 1, 2)
    assert OverrideIndex.empty().revision == 0 and len(OverrideIndex.empty()) == 0
    with pytest.raises(TypeError):
        index["B"] = a  # type: ignore[index]
    assert index.count_live(now) == 1


def test_apply_updates_at_once_and_tells_the_holder(store, refresher, now):
    refresher.start()
    assert refresher.index.revision == 0 and refresher.updates[-1] is refresher.index
    override, revision = store.set(change("A"), "u", now)
    refresher.apply({"A": override}, revision)
    assert refresher.index.get("A") == override and refresher.index.revision == 1
    assert refresher.updates[-1] is refresher.index
    refresher.apply({"A": None}, 1)  # an old revision: ignored
    assert refresher.index.get("A") == override


def test_apply_after_a_gap_catches_up_from_the_store(store, other_store, now):
    refresher = OverrideIndexRefresher(store, interval=60)  # no poll will come to the rescue
    refresher.start()
    try:
        other_store.set(change("B"), "v", now)  # another process: revision 1, not seen yet
        override, revision = store.set(change("A"), "u", now)
        refresher.apply({"A": override}, revision)
        assert refresher.index.revision == 2 and set(refresher.index) == {"A", "B"}
    finally:
        refresher.stop()


def test_a_change_from_another_store_object_is_seen_within_a_second(store, other_store, now):
    refresher = OverrideIndexRefresher(store)  # the default interval
    refresher.start()
    try:
        started = time.monotonic()
        other_store.set(change("A", OverrideAction.LOCK), "v", now)
        assert wait_for(lambda: refresher.index.get("A") is not None, timeout=1.0)
        assert time.monotonic() - started < 1.0
        other_store.delete("A", "done", "", "v", now)
        assert wait_for(lambda: refresher.index.get("A") is None, timeout=1.0)
        assert refresher.staleness_seconds() < 1.0
    finally:
        refresher.stop()


class FlakyStore:
    """Delegates to a real store, but fails changes_since while `down` is set."""

    def __init__(self, store):
        self.store, self.down = store, False

    def load_all(self):
        return self.store.load_all()

    def changes_since(self, revision):
        if self.down:
            raise Unavailable("override store: connection refused")
        return self.store.changes_since(revision)


def test_an_unreachable_store_keeps_the_last_index_and_reports_staleness(store, now, caplog):
    clock = [100.0]
    flaky = FlakyStore(store)
    refresher = OverrideIndexRefresher(flaky, interval=60, clock=lambda: clock[0])
    store.set(change("A"), "u", now)
    index = refresher.load()
    flaky.down = True
    store.set(change("B"), "u", now)
    clock[0] += 7.5
    with caplog.at_level(logging.WARNING, logger="regionlock.service.overrides.index"):
        assert refresher.refresh() is False
        assert refresher.refresh() is False
    assert refresher.index is index and refresher.failures == 2 == refresher.consecutive_failures
    assert refresher.staleness_seconds() == pytest.approx(7.5)
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1  # not once per poll
    flaky.down = False
    assert refresher.refresh() is True
    assert set(refresher.index) == {"A", "B"} and refresher.consecutive_failures == 0
    assert refresher.staleness_seconds() == 0.0


def test_a_store_that_went_back_is_reloaded(store, now):
    refresher = OverrideIndexRefresher(store, interval=60)
    store.set(change("A"), "u", now)
    refresher.load()
    refresher.index = OverrideIndex({}, 99)  # as if the store had been restored from an older backup
    assert refresher.refresh() is True
    assert refresher.index.revision == 1 and set(refresher.index) == {"A"}


def test_staleness_is_infinite_before_the_first_load(store):
    assert OverrideIndexRefresher(store).staleness_seconds() == float("inf")
