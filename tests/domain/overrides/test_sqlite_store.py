"""What only the SQLite store has: its file, schema versions, locking, processes and threads on one file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from regionlock.service.errors import FailedPrecondition, InvalidArgument, Unavailable
from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.model import OverrideAction, OverrideChange
from regionlock.service.overrides.sqlite import MIGRATIONS, SqliteOverrideStore


def change(serial, reason="because"):
    return OverrideChange(serial, OverrideAction.UNLOCK, reason, "")


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "overrides.sqlite3")


@pytest.fixture
def sqlite_store(path):
    store = SqliteOverrideStore(path)
    yield store
    store.close()


def test_file_is_wal_full_sync_and_versioned(sqlite_store, path):
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        raw.close()
    with sqlite_store._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_reopening_keeps_data_and_a_newer_schema_is_refused(path, now):
    store = SqliteOverrideStore(path)
    store.set(change("A"), "u", now)
    store.close()
    reopened = SqliteOverrideStore(path)
    assert reopened.get("A") is not None and reopened.revision() == 1
    reopened.close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(FailedPrecondition, match="schema version"):
        SqliteOverrideStore(path)


@pytest.mark.parametrize(
    "url", ["sqlite://relative.db", "sqlite:///no/such/dir/x.db", "mysql://localhost/x", "overrides.db", ""]
)
def test_open_store_rejects_bad_urls(url):
    with pytest.raises(InvalidArgument) as caught:
        open_store(url)
    assert caught.value.field == "store"


def test_the_audit_trail_is_append_only_in_the_file(sqlite_store, path, now):
    sqlite_store.set(change("A"), "u", now)
    raw = sqlite3.connect(path)
    try:
        for statement in ["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"]:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(statement)
    finally:
        raw.close()


def test_a_failure_mid_bulk_rolls_everything_back(sqlite_store, path, now):
    sqlite_store.set(change("A"), "u", now)
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON audit WHEN NEW.serial = 'BOOM' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    raw.commit()
    raw.close()
    before = sqlite_store.load_all()
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        sqlite_store.bulk_set([change("B"), change("A", "new"), change("BOOM")], "u", now, False)
    assert sqlite_store.load_all() == before
    assert len(sqlite_store.list_audit(100, "", "")[0]) == 1


def test_a_locked_file_is_unavailable_not_a_crash(path, now):
    store = SqliteOverrideStore(path, busy_timeout_s=0.1)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="locked"):
            store.set(change("A"), "u", now)
        assert store.get("A") is None  # reads still work beside a writer (WAL)
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    store.set(change("A"), "u", now)
    store.close()
    with pytest.raises(Unavailable, match="closed"):
        store.get("A")


def test_threads_and_store_objects_share_one_file(path, now, run_threads):
    stores = [SqliteOverrideStore(path), SqliteOverrideStore(path)]

    def writer(n):
        for i in range(20):
            stores[n % 2].set(change(f"T{n}-{i}"), f"w{n}", now)

    assert run_threads(writer, 6) == []
    items, revision = stores[0].load_all()
    assert len(items) == revision == 120
    assert sorted(o.revision for o in items.values()) == list(range(1, 121))
    for store in stores:
        store.close()


_CHILD = """
import sys
from datetime import datetime, UTC
from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.model import OverrideChange
store = open_store(sys.argv[1])
for i in range(30):
    store.set(OverrideChange(f"P{sys.argv[2]}-{i}", "lock", "from a process"), "proc", datetime.now(UTC))
store.close()
"""


@pytest.mark.slow
def test_processes_writing_one_file_all_land_with_distinct_revisions(path):
    url = f"sqlite:///{path}"
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, url, str(n)]) for n in range(3)]
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]
    store = open_store(url)
    items, revision = store.load_all()
    assert len(items) == revision == 90
    assert len({o.revision for o in items.values()}) == 90
    store.close()
