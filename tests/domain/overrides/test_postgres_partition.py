"""PostgreSQL under a partition: a replica whose connection black-holes mid-transaction (a TcpProxy that stops
forwarding without closing anything) neither blocks the healthy replicas' writes for more than a few seconds
nor hangs itself: its own calls fail with Unavailable (UNAVAILABLE) within its call deadline."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from regionlock.service.errors import Unavailable
from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.model import OverrideChange
from regionlock.service.overrides.pg_schema import parse_url

from support.postgres import TcpProxy, private_schema, require_postgres, store_url

CALL_TIMEOUT = 4.0  # the cut-off replica's deadline (default 12 s), short to keep the test quick


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def replicas():
    require_postgres()
    proxy = TcpProxy()
    with private_schema() as schema:
        healthy = open_store(store_url(schema))  # default timeouts, as deployed
        cut_off = open_store(store_url(schema, port=proxy.port, call_timeout=CALL_TIMEOUT))
        try:
            yield healthy, cut_off, proxy
        finally:
            proxy.cut()
            cut_off.close()
            healthy.close()


def test_the_defaults_bound_locks_idle_transactions_and_statements():
    conninfo = parse_url("postgresql://u@h/db").conninfo
    for setting in (
        "lock_timeout=5000",
        "idle_in_transaction_session_timeout=3000",
        "statement_timeout=10000",
        "tcp_keepalives_idle=5",
    ):
        assert setting in conninfo
    assert "keepalives_idle=5" in conninfo and "tcp_user_timeout=10000" in conninfo
    assert parse_url("postgresql://u@h/db").call_timeout == 12.0


def test_a_replica_black_holed_mid_transaction_does_not_block_the_others(replicas):
    healthy, cut_off, proxy = replicas
    cut_off.set(OverrideChange("BEFORE", "unlock", "r"), "u", _now())
    in_transaction, go_on = threading.Event(), threading.Event()
    outcome: list[object] = []

    def stuck_writer() -> None:
        started = time.monotonic()
        try:
            with cut_off._write() as writer:  # holds the revision row lock from here
                writer.next_revision()
                in_transaction.set()
                go_on.wait(10)
                writer.current()  # sent into the black hole
            outcome.append("committed")
        except Exception as exc:
            outcome.append((exc, time.monotonic() - started))

    thread = threading.Thread(target=stuck_writer)
    thread.start()
    assert in_transaction.wait(10)
    proxy.black_hole()
    go_on.set()
    start = time.monotonic()
    healthy.set(OverrideChange("AFTER", "unlock", "r"), "u", _now())  # waits for the lock, then goes through
    waited = time.monotonic() - start
    assert waited < 5.0, waited
    assert healthy.get("AFTER") is not None and healthy.revision() == 2  # the stuck write never committed

    thread.join(CALL_TIMEOUT + 5)
    (result,) = outcome
    assert isinstance(result, tuple) and isinstance(result[0], Unavailable), result
    assert result[1] < CALL_TIMEOUT + 1.5
    assert "override store (PostgreSQL) is unavailable" in result[0].message

    for call in (  # the cut-off replica's later calls fail within its deadline too, pooled or new connection
        lambda: cut_off.set(OverrideChange("CUT", "unlock", "r"), "u", _now()),
        lambda: cut_off.get("BEFORE"),
    ):
        start = time.monotonic()
        with pytest.raises(Unavailable):
            call()
        assert time.monotonic() - start < CALL_TIMEOUT + 1.5
    proxy.restore()
    assert healthy.get("CUT") is None
