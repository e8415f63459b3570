"""The PostgreSQL override store: shared by every replica, with LISTEN/NOTIFY to propagate changes.

- Same semantics as the SQLite store (store.py's module docstring); the logic is shared (store.write_*, sql.py).
- Every write transaction starts by locking the revision row (SELECT ... FOR UPDATE): writers of all
  replicas queue there, so revisions and audit event ids commit in order and catch-up by revision never
  skips one. A change sends NOTIFY regionlock_overrides (per schema, see pg_schema.channel_for) with
  the new revision in its own transaction, so the notification goes out exactly when the change commits.
- `watch(callback)` starts a daemon thread holding one dedicated connection (outside the pool) that
  LISTENs and calls back on every notification, and once after each (re)connection: the refresher then
  catches up with changes_since from the revision it has, so nothing committed while the listener was
  disconnected is missed. The listener reconnects by itself with exponential backoff.
- Connection problems raise Unavailable ("the override store (PostgreSQL) is unavailable: ...") within
  the pool timeout (3 s by default) when the server refuses or resets connections, and within the call
  deadline (call_timeout, 12 s by default; see `deadline`) when it stops answering (a partition); a
  replica cut off mid-transaction holds the revision lock for at most idle_in_transaction_session_timeout
  (3 s), so the other replicas' writes go through (pg_schema's docstring lists the timeouts). Admin
  writes fail with UNAVAILABLE instead of hanging;
  the check path never touches the store and keeps serving the last index.
- Opening the store (at server start) retries an unreachable server for `start_timeout` seconds (30 by
  default) and then raises Unavailable: a replica without any override index must not serve checks, so
  `regionlock serve` exits with an error and the orchestrator restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from regionlock.service.errors import FailedPrecondition, ServiceError, Unavailable
from regionlock.service.overrides.model import AuditEvent, Override
from regionlock.service.overrides.pg_listener import ChangeListener, unavailable
from regionlock.service.overrides.pg_schema import PgConfig, channel_for, migrate, parse_url
from regionlock.service.overrides.sql import Dialect, SqlOverrideStore, SqlWriter

logger = logging.getLogger(__name__)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _as_is(value: Any) -> Any:
    return value


# psycopg adapts datetimes to timestamptz itself and reads jsonb back as dicts
POSTGRES = Dialect("%s", "create_time", "expire_time", "time", _as_is, _utc, _as_is)
_COLUMNS = POSTGRES.columns
_UPSERT = (
    f"INSERT INTO overrides ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (serial) DO UPDATE SET"
    " action = EXCLUDED.action, reason = EXCLUDED.reason, ticket = EXCLUDED.ticket, actor = EXCLUDED.actor,"
    " create_time = EXCLUDED.create_time, expire_time = EXCLUDED.expire_time, revision = EXCLUDED.revision"
)
_UPSERT_FROM_SCRATCH = (
    f"INSERT INTO overrides ({_COLUMNS}) SELECT {_COLUMNS} FROM overrides_in" + _UPSERT[_UPSERT.index(" ON CONFLICT") :]
)
_COPY_FROM = 100  # rows; fewer are upserted with one pipelined statement each
_AUDIT_COPY = f"COPY audit ({POSTGRES.audit_columns}) FROM STDIN"
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0  # retrying to open the store at start


def open_postgres_store(url: str) -> PostgresOverrideStore:
    """The store a postgresql:// URL names (see pg_schema for its parameters), migrated and ready."""
    return PostgresOverrideStore(parse_url(url))


@contextlib.contextmanager
def deadline(conn: psycopg.Connection, seconds: float) -> Iterator[None]:
    """Shut the connection's socket down if the block is still running after `seconds`.

    libpq waits for a reply as long as the socket stays open, and a partition that drops packets (or a
    proxy that stops forwarding) keeps it open: statement_timeout is the server's and never arrives, and
    keepalives take many seconds. Shutting the socket down makes the waiting call fail at once with an
    OperationalError (UNAVAILABLE), and the pool discards the broken connection. One timer thread per
    call: store calls are Admin calls and polls, never on the check path.
    """
    lock = threading.Lock()
    done = False

    def expire() -> None:
        with lock:  # never shut down a connection that finished in time and went back to the pool
            if done:
                return
            try:
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                return
        logger.warning("override store (PostgreSQL): no reply within %.1fs, connection dropped", seconds)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            done = True
        timer.cancel()


class _Writer(SqlWriter):
    """The StoreWriter of one PostgreSQL transaction (see store.write_set and friends)."""

    __slots__ = ("bumped",)
    dialect = POSTGRES

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn)
        self.bumped: int | None = None

    def next_revision(self) -> int:
        self.bumped = super().next_revision()
        return self.bumped

    def get_many(self, serials: list[str]) -> dict[str, Override]:
        rows = self.conn.execute(f"{POSTGRES.select} WHERE serial = ANY(%s)", (serials,))
        return {row[0]: POSTGRES.override(row) for row in rows}

    def put(self, overrides: list[Override]) -> None:
        if len(overrides) <= _COPY_FROM:
            if overrides:
                with self.conn.cursor() as cur:
                    cur.executemany(_UPSERT, [POSTGRES.override_params(o) for o in overrides])
            return
        # many rows (a bulk set): COPY into a scratch table, then one upsert from it
        self.conn.execute("CREATE TEMPORARY TABLE overrides_in (LIKE overrides) ON COMMIT DROP")
        with self.conn.cursor() as cur, cur.copy(f"COPY overrides_in ({_COLUMNS}) FROM STDIN") as copy:
            for o in overrides:
                copy.write_row(POSTGRES.override_params(o))
        self.conn.execute(_UPSERT_FROM_SCRATCH)

    def append(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        with self.conn.cursor() as cur, cur.copy(_AUDIT_COPY) as copy:
            for e in events:
                copy.write_row(POSTGRES.event_params(e))


class PostgresOverrideStore(SqlOverrideStore):
    """Overrides in one PostgreSQL schema, shared by every replica; thread-safe (a connection pool)."""

    dialect = POSTGRES
    _writer = _Writer
    _details_token_id = "details->>'token_id'"

    def __init__(self, config: PgConfig) -> None:
        self._config = config
        self.schema, self._page_key = self._open_and_migrate()
        self.channel = channel_for(self.schema)
        self._pool = ConnectionPool(
            config.conninfo,
            min_size=1,
            max_size=config.pool_size,
            timeout=config.pool_timeout,
            kwargs={"autocommit": True},
            check=self._check,  # a connection broken by an outage is replaced, not used
            name="regionlock-overrides",
            open=False,
        )
        self._pool.open(wait=False)
        self._closed = False
        self._lock = threading.Lock()
        self.listener = ChangeListener(config.conninfo, self.channel)

    def _open_and_migrate(self) -> tuple[str, bytes]:
        deadline = time.monotonic() + self._config.start_timeout
        delay = _BACKOFF_MIN
        while True:
            try:
                with psycopg.connect(self._config.conninfo, autocommit=True) as conn:
                    return migrate(conn, self._config.schema)
            except ServiceError:
                raise
            except psycopg.OperationalError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise unavailable(exc) from None
                logger.warning("override store (PostgreSQL) unreachable at start, retrying: %s", unavailable(exc))
            except psycopg.Error as exc:  # privileges, a damaged schema: retrying won't help
                raise FailedPrecondition(f"override store (PostgreSQL): can't prepare the schema: {exc}") from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _BACKOFF_MAX)

    # -- connections and transactions --------------------------------------------------------------------

    def _check(self, conn: psycopg.Connection) -> None:
        """The pool's check of a connection before lending it, which a black-holed one must not hang."""
        with deadline(conn, min(self._config.pool_timeout, self._config.call_timeout)):
            ConnectionPool.check_connection(conn)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self._closed:
            raise Unavailable("override store is closed")
        try:
            with self._pool.connection() as conn, deadline(conn, self._config.call_timeout):
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            logger.warning("%s", unavailable(exc))
            raise unavailable(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Writer]:
        """A transaction holding the revision row lock; NOTIFY goes out with the commit if it took a revision."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")
            writer = _Writer(conn)
            yield writer
            if writer.bumped is not None:
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, str(writer.bumped)))

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection]:
        """A read-only transaction whose statements all see one snapshot."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    # -- the interface (the rest is SqlOverrideStore's) --------------------------------------------------

    def changes_since(self, revision: int) -> tuple[dict[str, Override | None], int]:
        current = self.revision()  # the cheap common case of a poll: one round trip, nothing new
        if current <= revision:
            return {}, current
        with self._snapshot() as conn:
            current = _Writer(conn).current()
            return self._changed_since(conn, revision), current

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.listener.stop()
        self._pool.close(timeout=5.0)

    # -- change notifications ----------------------------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback()` on every change committed through any replica, and after each (re)connection."""
        with self._lock:
            if self._closed:
                raise Unavailable("override store is closed")
            self.listener.add(callback)
