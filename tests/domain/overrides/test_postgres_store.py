"""What only the PostgreSQL store has: its URL, migrations under concurrent start, row locking, NOTIFY, outages."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from regionlock.service.errors import FailedPrecondition, InvalidArgument, Unavailable
from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.index import OverrideIndexRefresher
from regionlock.service.overrides.model import OverrideAction, OverrideChange
from regionlock.service.overrides.pg_schema import MIGRATIONS, parse_url
from regionlock.service.overrides.postgres import PostgresOverrideStore

from support.postgres import POSTGRES_URL, TcpProxy, private_schema, require_postgres, store_url, wait_until


def change(serial, reason="because", action=OverrideAction.UNLOCK):
    return OverrideChange(serial, action, reason, "")


@pytest.fixture
def schema():
    require_postgres()
    with private_schema() as name:
        yield name


@pytest.fixture
def raw(schema):
    """A plain connection into the test's schema, for poking at the tables behind the store's back."""
    with psycopg.connect(POSTGRES_URL, autocommit=True, options=f"-c search_path={schema}") as conn:
        yield conn


@pytest.fixture
def proxy():
    proxy = TcpProxy()
    yield proxy
    proxy.close()


def test_url_parameters_are_ours_or_libpq_and_defaults_fill_the_rest():
    config = parse_url("postgresql://u@db.example:6543/rl?schema=fleet_a&pool_size=7&sslmode=require&connect_timeout=9")
    assert (config.schema, config.pool_size, config.pool_timeout, config.start_timeout) == ("fleet_a", 7, 3.0, 30.0)
    conninfo = config.conninfo
    assert "sslmode=require" in conninfo and "connect_timeout=9" in conninfo and "keepalives=1" in conninfo
    assert "search_path=fleet_a" in conninfo and "schema" not in conninfo.replace("search_path=fleet_a", "")
    own_options = parse_url("postgres://h/db?options=-c%20statement_timeout%3D5000").conninfo
    assert own_options.index("statement_timeout=10000") < own_options.index("statement_timeout=5000")  # theirs wins


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db?schema=Robert'); DROP TABLE x;--",
        "postgresql://h/db?schema=" + "a" * 41,
        "postgresql://h/db?pool_size=0",
        "postgresql://h/db?pool_timeout=soon",
        "postgresql://h/db?no_such_libpq_parameter=1",
    ],
)
def test_bad_urls_are_invalid_arguments_naming_the_store(url):
    with pytest.raises(InvalidArgument) as caught:
        open_store(url)
    assert caught.value.field == "store"


def test_open_store_picks_postgres_for_both_schemes_and_reopening_keeps_data(schema, now):
    for scheme in ("postgresql", "postgres"):
        store = open_store(store_url(schema).replace("postgresql:", f"{scheme}:", 1))
        assert isinstance(store, PostgresOverrideStore) and store.schema == schema
        store.set(change(f"A-{scheme}"), "u", now)
        store.close()
    store = open_store(store_url(schema))
    assert sorted(store.load_all()[0]) == ["A-POSTGRES", "A-POSTGRESQL"] and store.revision() == 2
    store.close()
    with pytest.raises(Unavailable, match="closed"):
        store.get("A")


def test_replicas_starting_together_migrate_once(schema, raw, run_threads):
    barrier = threading.Barrier(6)
    stores = []

    def start(_):
        barrier.wait()
        stores.append(open_store(store_url(schema)))

    errors = run_threads(start, 6, timeout=30)
    assert errors == [] and len(stores) == 6
    assert raw.execute("SELECT version FROM regionlock_schema").fetchall() == [(len(MIGRATIONS),)]
    assert raw.execute("SELECT id, value FROM revision").fetchall() == [(1, 0)]
    for store in stores:
        store.close()
    open_store(store_url(schema)).close()  # and again, on a migrated schema: nothing to do, nothing breaks


def test_a_newer_schema_is_refused(schema, raw):
    open_store(store_url(schema)).close()
    raw.execute("UPDATE regionlock_schema SET version = %s", (len(MIGRATIONS) + 1,))
    with pytest.raises(FailedPrecondition, match="version"):
        open_store(store_url(schema))


def test_the_audit_trail_is_append_only_in_the_database(schema, raw, now):
    store = open_store(store_url(schema))
    store.set(change("A"), "u", now)
    store.close()
    for statement in ["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit"]:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            raw.execute(statement)
    assert raw.execute("SELECT actor FROM audit").fetchall() == [("u",)]


def test_a_failure_mid_bulk_rolls_everything_back(schema, raw, now):
    store = open_store(store_url(schema))
    store.set(change("A"), "u", now)
    raw.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;"
        "CREATE TRIGGER boom BEFORE INSERT ON audit FOR EACH ROW WHEN (NEW.serial = 'BOOM') EXECUTE FUNCTION boom()"
    )
    before = store.load_all()
    with pytest.raises(psycopg.errors.RaiseException, match="boom"):
        store.bulk_set([change("B"), change("A", "new"), change("BOOM")], "u", now, False)
    assert store.load_all() == before and len(store.list_audit(100, "", "")[0]) == 1
    store.set(change("C"), "u", now)  # the failed transaction left no lock or broken connection behind
    assert store.revision() == 2
    store.close()


def test_writers_on_one_serial_through_several_stores_queue_on_the_revision_row(schema, now, run_threads):
    stores = [open_store(store_url(schema)) for _ in range(3)]

    def writer(n):
        for i in range(15):
            action = OverrideAction.LOCK if (n + i) % 2 else OverrideAction.UNLOCK
            stores[n % 3].set(change("SAME", f"w{n}-{i}", action), f"w{n}", now + timedelta(seconds=i))

    assert run_threads(writer, 6, timeout=60) == []
    events, token = stores[0].list_audit(1000, "", "")
    assert token == "" and len(events) == 90 and {e.action for e in events} == {"set"}
    # in commit order each change starts exactly where the previous one left off: no lost update
    replay = list(reversed(events))
    assert [e.revision for e in replay] == list(range(1, 91))
    for previous, current in itertools.pairwise(replay):
        assert current.before == previous.after
    assert stores[1].get("SAME") == replay[-1].after and stores[2].revision() == 90
    for store in stores:
        store.close()


def test_a_commit_through_another_store_wakes_the_watcher_at_once(schema, now):
    watched, writer = open_store(store_url(schema)), open_store(store_url(schema))
    woken = threading.Event()
    watched.watch(woken.set)
    assert watched.listener.listening.wait(5)
    woken.clear()  # the wake-up that follows connecting
    delays = []
    for i in range(5):
        start = time.monotonic()
        writer.set(change(f"N{i}"), "u", now)
        assert woken.wait(1.0), "no notification within 1 s"
        delays.append(time.monotonic() - start)
        woken.clear()
    writer.set(change("N0"), "u", now)  # unchanged: no revision, nothing to announce
    assert not woken.wait(0.3)
    assert max(delays) < 0.5, delays
    watched.close()
    writer.close()


@pytest.mark.slow  # waits out the outage and the reconnection
def test_an_outage_fails_fast_with_unavailable_and_the_store_recovers_and_catches_up(schema, proxy, now):
    direct = open_store(store_url(schema))
    store = open_store(store_url(schema, port=proxy.port, pool_timeout=1.5))
    refresher = OverrideIndexRefresher(store, interval=60.0)  # only notifications make it catch up quickly
    store.watch(refresher.wake)
    refresher.start()
    assert store.listener.listening.wait(5)
    store.set(change("BEFORE"), "u", now)
    assert wait_until(lambda: "BEFORE" in refresher.index, 2)

    proxy.cut()
    assert wait_until(lambda: not store.listener.listening.is_set(), 5)
    for call in (lambda: store.set(change("DURING"), "u", now), lambda: store.get("BEFORE"), store.load_all):
        start = time.monotonic()
        with pytest.raises(Unavailable, match=r"the override store \(PostgreSQL\) is unavailable"):
            call()
        assert time.monotonic() - start < 4.0  # the pool timeout, not a hang
    direct.set(change("ELSEWHERE"), "v", now)  # another replica keeps writing meanwhile
    direct.delete("BEFORE", "gone", "", "v", now)
    assert "BEFORE" in refresher.index and "ELSEWHERE" not in refresher.index  # the last index keeps serving

    proxy.restore()
    # the listener reconnects by itself, wakes the refresher, and that catches up on what it missed
    assert wait_until(lambda: "ELSEWHERE" in refresher.index and "BEFORE" not in refresher.index, 10)
    assert store.listener.connections == 2 and refresher.index.revision == direct.revision() == 3
    assert store.set(change("AFTER"), "u", now)[1] == 4  # and writes work again
    assert [e.serial for e in direct.list_audit(10, "", "")[0]] == ["AFTER", "BEFORE", "ELSEWHERE", "BEFORE"]
    refresher.stop()
    store.close()
    direct.close()


def test_a_server_unreachable_at_start_is_a_clear_error_after_the_start_timeout(schema, proxy):
    proxy.cut()
    start = time.monotonic()
    with pytest.raises(Unavailable, match=r"the override store \(PostgreSQL\) is unavailable: .*refused"):
        open_store(store_url(schema, port=proxy.port, start_timeout=1))
    assert 0.9 < time.monotonic() - start < 5


def test_tables_live_in_the_named_schema_only(schema, now):
    store = open_store(store_url(schema))
    store.set(change("A"), "u", now)
    store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.overrides").format(sql.Identifier(schema))
        assert conn.execute(query).fetchone() == (1,)
        tables = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
        names = ["audit", "overrides", "page_token_key", "regionlock_schema", "revision"]
        assert sorted(row[0] for row in tables) == names
