"""The override-store contract, run against every implementation through the parametrized `store` fixture."""

from __future__ import annotations

from datetime import timedelta

import pytest

from regionlock.service.errors import InvalidArgument, NotFound
from regionlock.service.overrides.model import Override, OverrideAction, OverrideChange
from regionlock.service.overrides.store import MAX_BULK_ITEMS

UNLOCK, LOCK = OverrideAction.UNLOCK, OverrideAction.LOCK


def change(serial="SN-1", action=UNLOCK, reason="customer moved", ticket="SUP-1", expire_time=None):
    return OverrideChange(serial, action, reason, ticket, expire_time)


def all_audit(store, serial=""):
    """Every audit event, newest first, following page tokens."""
    events, token = store.list_audit(7, "", serial)
    while token:
        page, token = store.list_audit(7, token, serial)
        events += page
    return events


def all_listed(store, now, **filters):
    items, token = store.list(3, "", filters.get("action"), filters.get("include_expired", False), now)
    while token:
        page, token = store.list(3, token, filters.get("action"), filters.get("include_expired", False), now)
        items += page
    return items


def test_set_creates_an_override_with_an_audit_event(store, now):
    override, revision = store.set(change(serial="sn-1"), "alice", now)
    assert override == Override("SN-1", UNLOCK, "customer moved", "SUP-1", "alice", now, None, 1)
    assert revision == 1 == store.revision()
    assert store.get("sn-1") == override == store.get("SN-1")
    [event] = all_audit(store)
    assert (event.action, event.serial, event.actor, event.revision) == ("set", "SN-1", "alice", 1)
    assert (event.before, event.after, event.reason, event.ticket, event.time) == (
        None,
        override,
        "customer moved",
        "SUP-1",
        now,
    )


def test_setting_the_same_override_again_changes_nothing_but_is_audited(store, now):
    first, rev1 = store.set(change(), "alice", now)
    again, rev2 = store.set(change(), "bob", now + timedelta(minutes=5))
    assert (again, rev2) == (first, rev1)  # the existing override and its revision
    assert store.revision() == rev1
    assert store.load_all() == ({"SN-1": first}, rev1)
    newest, oldest = all_audit(store)
    assert (oldest.action, newest.action) == ("set", "set_unchanged")
    assert newest.actor == "bob" and newest.before == newest.after == first and newest.revision == rev1


def test_changing_an_override_replaces_it_with_a_new_revision(store, now):
    first, _ = store.set(change(), "alice", now)
    later = now + timedelta(hours=1)
    second, rev = store.set(change(action=LOCK, reason="stolen"), "bob", later)
    assert rev == 2 and second == Override("SN-1", LOCK, "stolen", "SUP-1", "bob", later, None, 2)
    assert store.get("SN-1") == second
    assert all_audit(store)[0].before == first and all_audit(store)[0].after == second
    # an expiry, too, is part of what makes two requests the same
    third, rev3 = store.set(change(action=LOCK, reason="stolen", expire_time=later + timedelta(days=1)), "bob", later)
    assert rev3 == 3 and third.expire_time == later + timedelta(days=1)


def test_get_of_a_serial_without_override_is_none(store):
    assert store.get("NOPE") is None


def test_delete_removes_and_audits(store, now):
    override, _ = store.set(change(), "alice", now)
    revision = store.delete("sn-1", "resolved", "SUP-2", "bob", now)
    assert revision == 2 == store.revision()
    assert store.get("SN-1") is None
    event = all_audit(store)[0]
    assert (event.action, event.before, event.after, event.reason, event.ticket, event.actor) == (
        "delete",
        override,
        None,
        "resolved",
        "SUP-2",
        "bob",
    )
    with pytest.raises(NotFound):
        store.delete("SN-1", "again", "", "bob", now)
    assert store.revision() == 2 and len(all_audit(store)) == 2


@pytest.mark.parametrize(
    ("reason", "ticket", "field"),
    [("", "", "reason"), ("x" * 501, "", "reason"), ("ok", "t" * 201, "ticket")],
)
def test_delete_validates_its_reason(store, now, reason, ticket, field):
    store.set(change(), "alice", now)
    with pytest.raises(InvalidArgument) as caught:
        store.delete("SN-1", reason, ticket, "bob", now)
    assert caught.value.field == field
    assert store.get("SN-1") is not None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"reason": "x" * 501}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"ticket": "t" * 201}, "ticket"),
        ({"action": "maybe"}, "action"),
        ({"action": None}, "action"),
        ({"serial": ""}, "serial"),
        ({"serial": "bad serial!"}, "serial"),
        ({"serial": "x" * 33}, "serial"),
        ({"expire_time": "past"}, "expire_time"),
        ({"expire_time": "now"}, "expire_time"),
        ({"expire_time": "naive"}, "expire_time"),
    ],
)
def test_set_rejects_bad_input_and_writes_nothing(store, now, kwargs, field):
    expiries = {
        "past": now - timedelta(seconds=1),
        "now": now,
        "naive": (now + timedelta(days=1)).replace(tzinfo=None),
    }
    if "expire_time" in kwargs:
        kwargs = {"expire_time": expiries[kwargs["expire_time"]]}
    with pytest.raises(InvalidArgument) as caught:
        store.set(change(**kwargs), "alice", now)
    assert caught.value.field == field
    assert store.revision() == 0 and all_audit(store) == []


def test_limits_are_inclusive(store, now):
    override, _ = store.set(change(reason="r" * 500, ticket="t" * 200, serial="A" * 32), "alice", now)
    assert len(override.reason) == 500 and store.get("A" * 32) == override


def test_revisions_increase_and_the_audit_trail_replays_to_the_stored_state(store, now):
    ops = [
        lambda t: store.set(change("A"), "u", t),
        lambda t: store.set(change("B", LOCK), "u", t),
        lambda t: store.set(change("A"), "u", t),  # unchanged
        lambda t: store.bulk_set([change("C"), change("A", LOCK), change("B", LOCK)], "u", t, False),
        lambda t: store.delete("B", "done", "", "u", t),
        lambda t: store.set(change("B"), "u", t),
    ]
    for i, op in enumerate(ops):
        op(now + timedelta(seconds=i))
    events = list(reversed(all_audit(store)))
    assert [e.action for e in events] == [
        "set",
        "set",
        "set_unchanged",
        "set",
        "set",
        "set_unchanged",
        "delete",
        "set",
    ]
    changes = [e for e in events if e.action != "set_unchanged"]
    revisions = [e.revision for e in changes]
    assert revisions == sorted(revisions) and revisions[-1] == store.revision() == 5
    state: dict[str, Override] = {}
    for event in changes:
        assert state.get(event.serial) == event.before  # each event starts where the last one left off
        if event.after is None:
            del state[event.serial]
        else:
            assert event.after.revision == event.revision
            state[event.serial] = event.after
    assert store.load_all() == (state, 5)


def test_list_is_ordered_by_serial_and_pages_through_everything(store, now):
    serials = [f"S{i:03d}" for i in range(25)]
    store.bulk_set([change(s) for s in reversed(serials)], "u", now, False)
    page1, token = store.list(10, "", None, False, now)
    assert [o.serial for o in page1] == serials[:10] and token
    assert [o.serial for o in all_listed(store, now)] == serials


def test_pagination_is_stable_while_overrides_change(store, now):
    store.bulk_set([change(f"S{i:02d}") for i in range(0, 40, 2)], "u", now, False)  # S00, S02, ... S38
    page, token = store.list(5, "", None, False, now)
    seen = [o.serial for o in page]
    store.set(change("S01"), "u", now)  # sorts before the position: not seen, nothing else disturbed
    store.set(change("S21"), "u", now)  # sorts after: seen
    store.delete("S30", "x", "", "u", now)  # not yet seen, gone: not seen
    while token:
        page, token = store.list(5, token, None, False, now)
        seen += [o.serial for o in page]
    expected = sorted({f"S{i:02d}" for i in range(0, 40, 2)} - {"S30"} | {"S21"})
    assert seen == expected


def test_list_filters_by_action_and_hides_expired_unless_asked(store, now):
    store.set(change("A", UNLOCK), "u", now)
    store.set(change("B", LOCK), "u", now)
    store.set(change("C", UNLOCK, expire_time=now + timedelta(hours=1)), "u", now)
    later = now + timedelta(hours=2)
    assert [o.serial for o in all_listed(store, now)] == ["A", "B", "C"]
    assert [o.serial for o in all_listed(store, later)] == ["A", "B"]
    assert [o.serial for o in all_listed(store, later, include_expired=True)] == ["A", "B", "C"]
    assert [o.serial for o in all_listed(store, later, action=UNLOCK)] == ["A"]
    assert [o.serial for o in all_listed(store, later, action=UNLOCK, include_expired=True)] == ["A", "C"]
    assert [o.serial for o in all_listed(store, later, action=LOCK)] == ["B"]
    expired = store.get("C")  # still stored, no longer live
    assert expired is not None and expired.is_live(now) and not expired.is_live(later)


def test_page_size_defaults_and_limits(store, now):
    store.bulk_set([change(f"S{i:04d}") for i in range(1005)], "u", now, False)
    page, token = store.list(0, "", None, False, now)
    assert len(page) == 100 and token
    page, token = store.list(5000, "", None, False, now)
    assert len(page) == 1000 and token
    page, token = store.list(1005, "", None, False, now)
    assert len(page) == 1000 and token
    with pytest.raises(InvalidArgument) as caught:
        store.list(-1, "", None, False, now)
    assert caught.value.field == "page_size"
    with pytest.raises(InvalidArgument):
        store.list_audit(-5, "", "")


def _tamper(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


@pytest.mark.parametrize("kind", ["list", "audit"])
def test_tampered_or_foreign_page_tokens_are_invalid_arguments(store, now, kind):
    store.bulk_set([change(f"S{i}") for i in range(5)], "u", now, False)
    if kind == "list":
        call = lambda token, action=None: store.list(2, token, action, False, now)  # noqa: E731
        _, token = call("")
        _, foreign = store.list_audit(2, "", "")
        mismatched = lambda: call(token, LOCK)  # noqa: E731
    else:
        call = lambda token: store.list_audit(2, token, "")  # noqa: E731
        _, token = call("")
        _, foreign = store.list(2, "", None, False, now)
        mismatched = lambda: store.list_audit(2, token, "S1")  # noqa: E731
    assert call(token)  # the genuine token works
    for bad in [_tamper(token), token[:-2], "not a token", "%%%", token + "AAAA", foreign]:
        with pytest.raises(InvalidArgument) as caught:
            call(bad)
        assert caught.value.field == "page_token", bad
    with pytest.raises(InvalidArgument) as caught:
        mismatched()  # a token only continues the listing it came from
    assert caught.value.field == "page_token"


def test_bulk_set_counts_created_changed_unchanged_in_one_revision(store, now):
    store.set(change("A"), "u", now)
    store.set(change("B"), "u", now)
    result = store.bulk_set([change("a"), change("b", LOCK), change("c"), change("d")], "bulk", now, False)
    assert (result.created, result.changed, result.unchanged, result.revision) == (2, 1, 1, 3)
    assert store.revision() == 3
    assert {s: o.revision for s, o in store.load_all()[0].items()} == {"A": 1, "B": 3, "C": 3, "D": 3}
    events = all_audit(store)[:4]
    assert sorted((e.serial, e.action) for e in events) == [
        ("A", "set_unchanged"),
        ("B", "set"),
        ("C", "set"),
        ("D", "set"),
    ]
    assert all(e.actor == "bulk" for e in events)
    again = store.bulk_set([change("a")], "bulk", now, False)
    assert (again.unchanged, again.revision) == (1, 3)  # nothing changed: no new revision


def test_bulk_dry_run_counts_and_writes_nothing(store, now):
    store.set(change("A"), "u", now)
    before = (store.load_all(), all_audit(store))
    result = store.bulk_set([change("A"), change("B"), change("C", LOCK)], "u", now, True)
    assert (result.created, result.changed, result.unchanged, result.revision) == (2, 0, 1, 1)
    assert (store.load_all(), all_audit(store)) == before


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (change("C", reason="x" * 501), "items[2].reason"),
        (change("C", action="maybe"), "items[2].action"),
        (change("C", expire_time="past"), "items[2].expire_time"),
        (change("no spaces allowed"), "items[2].serial"),
        (change("a"), "items[2].serial"),  # a duplicate of items[0] once normalized
    ],
)
def test_bulk_with_one_bad_item_writes_nothing(store, now, bad, field):
    if bad.expire_time == "past":
        bad = change("C", expire_time=now - timedelta(days=1))
    store.set(change("Z"), "u", now)
    before = (store.load_all(), all_audit(store))
    with pytest.raises(InvalidArgument) as caught:
        store.bulk_set([change("A"), change("B", LOCK), bad, change("D")], "u", now, False)
    assert caught.value.field == field
    assert (store.load_all(), all_audit(store)) == before


def test_bulk_refuses_more_than_the_maximum(store, now):
    items = [change(f"S{i}") for i in range(MAX_BULK_ITEMS + 1)]
    with pytest.raises(InvalidArgument) as caught:
        store.bulk_set(items, "u", now, True)
    assert caught.value.field == "items"


@pytest.mark.slow
def test_bulk_of_the_maximum_size_is_one_transaction(store, now):
    result = store.bulk_set([change(f"S{i}") for i in range(MAX_BULK_ITEMS)], "u", now, False)
    assert (result.created, result.revision) == (MAX_BULK_ITEMS, 1)
    assert len(store.load_all()[0]) == MAX_BULK_ITEMS


def test_audit_is_newest_first_and_filters_by_serial(store, now):
    for i in range(10):
        store.set(change("A" if i % 2 else "B", reason=f"r{i}"), "u", now + timedelta(seconds=i))
    events = all_audit(store)
    assert [e.reason for e in events] == [f"r{i}" for i in reversed(range(10))]
    only_a = all_audit(store, "a")
    assert [e.reason for e in only_a] == ["r9", "r7", "r5", "r3", "r1"] and {e.serial for e in only_a} == {"A"}
    with pytest.raises(InvalidArgument):
        store.list_audit(10, "", "bad serial!")


def test_changes_since_reports_current_state_and_deletions(store, now):
    store.set(change("A"), "u", now)
    store.set(change("B"), "u", now)
    assert store.changes_since(2) == ({}, 2)
    store.set(change("B", LOCK), "u", now)
    store.delete("A", "done", "", "u", now)
    store.set(change("C"), "u", now)
    store.set(change("C"), "u", now)  # unchanged: not a change
    changes, revision = store.changes_since(2)
    assert revision == 5
    assert changes == {"A": None, "B": store.get("B"), "C": store.get("C")}
    assert store.changes_since(0)[0].keys() == {"A", "B", "C"}


def test_a_second_store_on_the_same_storage_sees_changes(store, other_store, now):
    store.set(change("A"), "u", now)
    items, revision = other_store.load_all()
    assert revision == 1 and items == {"A": store.get("A")}
    other_store.set(change("B"), "v", now)
    store.delete("A", "done", "", "u", now)
    assert store.changes_since(1) == ({"A": None, "B": other_store.get("B")}, 3)
    assert other_store.changes_since(1) == store.changes_since(1)
    assert [e.actor for e in all_audit(other_store)] == ["u", "v", "u"]
