"""The PostgreSQL override store: shared by every replica, with LISTEN/NOTIFY to propagate changes.

- Same semantics as the SQLite store (store.py's module docstring); the write logic is shared (store.write_*).
- Every write transaction starts by locking the revision row (SELECT ... FOR UPDATE): writers of all
  replicas queue there, so revisions and audit event ids commit in order and catch-up by revision never
  skips one. A change sends NOTIFY regionlock_overrides (per schema, see pg_schema.channel_for) with
  the new revision in its own transaction, so the notification goes out exactly when the change commits.
- `watch(callback)` starts a daemon thread holding one dedicated connection (outside the pool) that
  LISTENs and calls back on every notification, and once after each (re)connection: the refresher then
  catches up with changes_since from the revision it has, so nothing committed while the listener was
  disconnected is missed. The listener reconnects by itself with exponential backoff.
- Connection problems raise Unavailable ("the override store (PostgreSQL) is unavailable: ...") within
  the pool timeout (3 s by default), so Admin writes fail fast with UNAVAILABLE instead of hanging;
  the check path never touches the store and keeps serving the last index.
- Opening the store (at server start) retries an unreachable server for `start_timeout` seconds (30 by
  default) and then raises Unavailable: a replica without any override index must not serve checks, so
  `regionlock serve` exits with an error and the orchestrator restarts it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import psycopg
from psycopg_pool import ConnectionPool

from regionlock.service.errors import FailedPrecondition, ServiceError, Unavailable
from regionlock.service.overrides.model import (
    AuditEvent,
    BulkResult,
    Override,
    OverrideAction,
    OverrideChange,
    validate_reason_ticket,
    validate_serial,
)
from regionlock.service.overrides.pg_listener import ChangeListener, unavailable
from regionlock.service.overrides.pg_schema import PgConfig, channel_for, migrate, parse_url
from regionlock.service.overrides.store import (
    OverrideStore,
    audit_request,
    check_actor,
    check_bulk,
    cut_page,
    list_request,
    write_bulk,
    write_delete,
    write_set,
)

logger = logging.getLogger(__name__)

_COLUMNS = "serial, action, reason, ticket, actor, create_time, expire_time, revision"
_UPSERT = (
    f"INSERT INTO overrides ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (serial) DO UPDATE SET"
    " action = EXCLUDED.action, reason = EXCLUDED.reason, ticket = EXCLUDED.ticket, actor = EXCLUDED.actor,"
    " create_time = EXCLUDED.create_time, expire_time = EXCLUDED.expire_time, revision = EXCLUDED.revision"
)
_UPSERT_FROM_SCRATCH = (
    f"INSERT INTO overrides ({_COLUMNS}) SELECT {_COLUMNS} FROM overrides_in" + _UPSERT[_UPSERT.index(" ON CONFLICT") :]
)
_COPY_FROM = 100  # rows; fewer are upserted with one pipelined statement each
_AUDIT_COPY = "COPY audit (revision, time, actor, action, serial, before, after, reason, ticket) FROM STDIN"
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0  # retrying to open the store at start


def open_postgres_store(url: str) -> PostgresOverrideStore:
    """The store a postgresql:// URL names (see pg_schema for its parameters), migrated and ready."""
    return PostgresOverrideStore(parse_url(url))


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _override(row: Sequence) -> Override:
    serial, action, reason, ticket, actor, created, expires, rev = row
    return Override(serial, OverrideAction(action), reason, ticket, actor, _utc(created), _utc(expires), rev)


def _params(o: Override) -> tuple:
    return (o.serial, o.action.value, o.reason, o.ticket, o.actor, o.create_time, o.expire_time, o.revision)


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps(**options) builds one per call


def _json(o: Override | None) -> str | None:
    """An override as JSON text for a jsonb column in COPY (the server parses it)."""
    return None if o is None else _ENCODER.encode(o.to_dict())


def _event(row: Sequence) -> AuditEvent:
    event_id, rev, time_, actor, action, serial, before, after, reason, ticket = row
    return AuditEvent(
        revision=rev,
        time=_utc(time_),
        actor=actor,
        action=action,
        serial=serial,
        before=None if before is None else Override.from_dict(before),
        after=None if after is None else Override.from_dict(after),
        reason=reason,
        ticket=ticket,
        event_id=event_id,
    )


class _Writer:
    """The StoreWriter of one PostgreSQL transaction (see store.write_set and friends)."""

    __slots__ = ("bumped", "conn")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.bumped: int | None = None

    def current(self) -> int:
        return self.conn.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0]

    def next_revision(self) -> int:
        (value,) = self.conn.execute("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value").fetchone()
        self.bumped = value
        return value

    def get_many(self, serials: list[str]) -> dict[str, Override]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM overrides WHERE serial = ANY(%s)", (serials,))
        return {row[0]: _override(row) for row in rows}

    def put(self, overrides: list[Override]) -> None:
        if len(overrides) <= _COPY_FROM:
            if overrides:
                with self.conn.cursor() as cur:
                    cur.executemany(_UPSERT, [_params(o) for o in overrides])
            return
        # many rows (a bulk set): COPY into a scratch table, then one upsert from it
        self.conn.execute("CREATE TEMPORARY TABLE overrides_in (LIKE overrides) ON COMMIT DROP")
        with self.conn.cursor() as cur, cur.copy(f"COPY overrides_in ({_COLUMNS}) FROM STDIN") as copy:
            for o in overrides:
                copy.write_row(_params(o))
        self.conn.execute(_UPSERT_FROM_SCRATCH)

    def remove(self, serial: str) -> None:
        self.conn.execute("DELETE FROM overrides WHERE serial = %s", (serial,))

    def append(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        with self.conn.cursor() as cur, cur.copy(_AUDIT_COPY) as copy:
            for e in events:
                before, after = _json(e.before), _json(e.after)
                copy.write_row((e.revision, e.time, e.actor, e.action, e.serial, before, after, e.reason, e.ticket))


class PostgresOverrideStore(OverrideStore):
    """Overrides in one PostgreSQL schema, shared by every replica; thread-safe (a connection pool)."""

    def __init__(self, config: PgConfig) -> None:
        self._config = config
        self.schema = self._open_and_migrate()
        self.channel = channel_for(self.schema)
        self._pool = ConnectionPool(
            config.conninfo,
            min_size=1,
            max_size=config.pool_size,
            timeout=config.pool_timeout,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,  # a connection broken by an outage is replaced, not used
            name="regionlock-overrides",
            open=False,
        )
        self._pool.open(wait=False)
        self._closed = False
        self._lock = threading.Lock()
        self.listener = ChangeListener(config.conninfo, self.channel)

    def _open_and_migrate(self) -> str:
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

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self._closed:
            raise Unavailable("override store is closed")
        try:
            with self._pool.connection() as conn:
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

    # -- the interface -----------------------------------------------------------------------------------

    def set(self, change: OverrideChange, actor: str, now: datetime) -> tuple[Override, int]:
        change = change.validate(now)
        check_actor(actor)
        with self._write() as writer:
            return write_set(writer, change, actor, now)

    def get(self, serial: str) -> Override | None:
        serial = validate_serial(serial)
        with self._connection() as conn:
            return _Writer(conn).get_many([serial]).get(serial)

    def delete(self, serial: str, reason: str, ticket: str, actor: str, now: datetime) -> int:
        serial = validate_serial(serial)
        validate_reason_ticket(reason, ticket)
        check_actor(actor)
        with self._write() as writer:
            return write_delete(writer, serial, reason, ticket, actor, now)

    def list(
        self,
        page_size: int,
        page_token: str,
        action: OverrideAction | None,
        include_expired: bool,
        now: datetime,
    ) -> tuple[list[Override], str]:
        size, filters, after = list_request(page_size, page_token, action, include_expired)
        query = f"SELECT {_COLUMNS} FROM overrides WHERE serial > %s"
        args: list = [after]
        if action is not None:
            query += " AND action = %s"
            args.append(action.value)
        if not include_expired:
            query += " AND (expire_time IS NULL OR expire_time > %s)"
            args.append(now)
        query += " ORDER BY serial LIMIT %s"
        args.append(size + 1)
        with self._connection() as conn:
            items = [_override(row) for row in conn.execute(query, args)]
        return cut_page(items, size, "overrides", filters, lambda o: o.serial)

    def bulk_set(self, changes: Sequence[OverrideChange], actor: str, now: datetime, dry_run: bool) -> BulkResult:
        items = check_bulk(changes, now)
        check_actor(actor)
        if dry_run:
            with self._snapshot() as conn:
                return write_bulk(_Writer(conn), items, actor, now, dry_run=True)
        with self._write() as writer:
            return write_bulk(writer, items, actor, now, dry_run=False)

    def list_audit(self, page_size: int, page_token: str, serial: str) -> tuple[list[AuditEvent], str]:
        size, serial, before_id = audit_request(page_size, page_token, serial)
        query = "SELECT id, revision, time, actor, action, serial, before, after, reason, ticket FROM audit"
        conditions, args = [], []
        if before_id is not None:
            conditions.append("id < %s")
            args.append(before_id)
        if serial:
            conditions.append("serial = %s")
            args.append(serial)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY id DESC LIMIT %s"
        args.append(size + 1)
        with self._connection() as conn:
            events = [_event(row) for row in conn.execute(query, args)]
        return cut_page(events, size, "audit", {"serial": serial}, lambda e: e.event_id)

    def revision(self) -> int:
        with self._connection() as conn:
            return _Writer(conn).current()

    def load_all(self) -> tuple[dict[str, Override], int]:
        with self._snapshot() as conn:
            rev = _Writer(conn).current()
            rows = conn.execute(f"SELECT {_COLUMNS} FROM overrides").fetchall()
        return {row[0]: _override(row) for row in rows}, rev

    def changes_since(self, revision: int) -> tuple[dict[str, Override | None], int]:
        current = self.revision()  # the cheap common case of a poll: one round trip, nothing new
        if current <= revision:
            return {}, current
        columns = ", ".join("o." + c for c in _COLUMNS.split(", "))
        with self._snapshot() as conn:
            current = _Writer(conn).current()
            rows = conn.execute(
                f"SELECT c.serial, {columns}"
                " FROM (SELECT DISTINCT serial FROM audit WHERE revision > %s AND action <> 'set_unchanged') c"
                " LEFT JOIN overrides o ON o.serial = c.serial",
                (revision,),
            ).fetchall()
        return {row[0]: None if row[1] is None else _override(row[1:]) for row in rows}, current

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
