"""Audit events that are not changes of overrides: reloads and token changes, on every store."""

from __future__ import annotations

import sqlite3

import pytest

from regionlock.service.overrides.model import OverrideChange
from regionlock.service.overrides.sqlite import MIGRATIONS, SqliteOverrideStore


def test_admin_events_are_listed_with_their_details_and_take_no_revision(store, other_store, now):
    store.set(OverrideChange("S1", "unlock", "r"), "u", now)
    details = {"result": "ok", "geo_before": "g1", "geo_after": "g2"}
    assert store.record_event("reload", "alice", now, details)
    events, _ = other_store.list_audit(10, "", "")
    assert [(e.action, e.serial, e.actor, e.details) for e in events] == [
        ("reload", "", "alice", details),
        ("set", "S1", "u", None),
    ]
    assert events[0].revision == 1 and store.revision() == 1
    assert other_store.changes_since(0)[0].keys() == {"S1"}  # not a change of overrides
    assert other_store.list_audit(10, "", "S1")[0][0].action == "set"


def test_once_records_a_token_change_once_whoever_notices_it(store, other_store, now):
    created = {"name": "bob", "role": "viewer", "token_id": "0123456789abcdef"}
    assert store.record_event("token_create", "token-file", now, created, once=True)
    assert not other_store.record_event("token_create", "token-file", now, created, once=True)
    assert other_store.record_event("token_revoke", "token-file", now, created, once=True)
    assert not store.record_event("token_revoke", "token-file", now, created, once=True)
    other = {**created, "token_id": "fedcba9876543210"}
    assert store.record_event("token_create", "token-file", now, other, once=True)
    actions = [(e.action, e.details["token_id"]) for e in store.list_audit(10, "", "")[0]]
    assert actions == [
        ("token_create", "fedcba9876543210"),
        ("token_revoke", "0123456789abcdef"),
        ("token_create", "0123456789abcdef"),
    ]


def test_an_unknown_admin_action_is_refused(store, now):
    with pytest.raises(ValueError):
        store.record_event("set", "u", now, {})


def test_sqlite_migration_keeps_the_old_trail_and_its_ids_and_stays_append_only(tmp_path, now):
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0] + MIGRATIONS[1]:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 2")
    raw.execute(
        "INSERT INTO audit (revision, time_us, actor, action, serial, reason, ticket)"
        " VALUES (1, 0, 'u', 'delete', 'A', 'r', '')"
    )
    raw.close()
    store = SqliteOverrideStore(str(path))
    try:
        store.record_event("reload", "u", now, {"result": "ok"})
        events = store.list_audit(10, "", "")[0]
        assert [(e.event_id, e.action) for e in events] == [(2, "reload"), (1, "delete")]
        raw = sqlite3.connect(path, isolation_level=None)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit")
        raw.close()
    finally:
        store.close()
