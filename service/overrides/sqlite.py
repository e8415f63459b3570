"""The SQLite override store: stdlib sqlite3, WAL, synchronous=FULL, versioned schema, multi-process safe."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime

from regionlock.service.errors import FailedPrecondition, InvalidArgument, Unavailable
from regionlock.service.overrides.model import (
    AuditEvent,
    BulkResult,
    Override,
    OverrideAction,
    OverrideChange,
    from_micros,
    to_micros,
    validate_reason_ticket,
    validate_serial,
)
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

# MIGRATIONS[i] takes the schema from version i to i + 1 (PRAGMA user_version); append, never edit.
MIGRATIONS: list[list[str]] = [
    [
        # one row; every change increments it in its own transaction (the write lock orders them)
        "CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
        "INSERT INTO revision (id, value) VALUES (1, 0)",
        """CREATE TABLE overrides (
            serial TEXT PRIMARY KEY,
            action TEXT NOT NULL CHECK (action IN ('unlock', 'lock')),
            reason TEXT NOT NULL,
            ticket TEXT NOT NULL,
            actor TEXT NOT NULL,
            create_us INTEGER NOT NULL,
            expire_us INTEGER,
            revision INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            revision INTEGER NOT NULL,
            time_us INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('set', 'set_unchanged', 'delete')),
            serial TEXT NOT NULL,
            before TEXT,
            after TEXT,
            reason TEXT NOT NULL,
            ticket TEXT NOT NULL
        )""",
        "CREATE INDEX audit_by_serial ON audit (serial, id)",
        "CREATE INDEX audit_by_revision ON audit (revision)",
        # the trail is append-only even for someone poking at the file with the sqlite3 shell
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'append-only'); END",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'append-only'); END",
    ],
]

_COLUMNS = "serial, action, reason, ticket, actor, create_us, expire_us, revision"
_UPSERT = f"INSERT OR REPLACE INTO overrides ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_AUDIT = (
    "INSERT INTO audit (revision, time_us, actor, action, serial, before, after, reason, ticket)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MAX_IDLE = 8
_IN_CHUNK = 500  # serials per IN (...) query; well under SQLite's variable limit


def _override(row: Sequence) -> Override:
    serial, action, reason, ticket, actor, create_us, expire_us, rev = row
    expire = None if expire_us is None else from_micros(expire_us)
    return Override(serial, OverrideAction(action), reason, ticket, actor, from_micros(create_us), expire, rev)


def _params(o: Override) -> tuple:
    expire = None if o.expire_time is None else to_micros(o.expire_time)
    created = to_micros(o.create_time)
    return (o.serial, o.action.value, o.reason, o.ticket, o.actor, created, expire, o.revision)


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps(**options) builds one per call


def _json(o: Override | None) -> str | None:
    return None if o is None else _ENCODER.encode(o.to_dict())


def _audit_params(e: AuditEvent) -> tuple:
    before, after = _json(e.before), _json(e.after)
    return (e.revision, to_micros(e.time), e.actor, e.action, e.serial, before, after, e.reason, e.ticket)


class SqliteOverrideStore(OverrideStore):
    """Overrides in one SQLite file. Thread-safe through a small pool: each call borrows one connection."""

    def __init__(self, path: str, busy_timeout_s: float = 10.0) -> None:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise InvalidArgument("store", f"directory {directory} does not exist")
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        with self._connection() as conn:
            self._migrate(conn)

    # -- connections and transactions --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each transaction is exactly what we say
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            logger.warning("override store %s: journal mode is %s, not wal", self._path, mode)
        # FULL: an acknowledged change survives power loss, not just a process crash
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise Unavailable("override store is closed")
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
            yield conn
        except sqlite3.OperationalError as exc:
            # locked past the busy timeout, disk full, file unreadable: the client may retry later
            logger.warning("override store %s: %s", self._path, exc)
            raise Unavailable(f"override store: {exc}") from exc
        finally:
            if conn is not None:
                with self._lock:
                    keep = not self._closed and len(self._idle) < _MAX_IDLE and not conn.in_transaction
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a read-then-write never fails half-way with
        # SQLITE_BUSY; a plain BEGIN gives readers one consistent WAL snapshot across several SELECTs.
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # some errors (disk full, I/O) already rolled it back
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # processes starting together: one migrates, the others wait
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise FailedPrecondition(
                    f"override store {self._path} has schema version {version}; this build knows up to "
                    f"{len(MIGRATIONS)}"
                )
            for step in range(version, len(MIGRATIONS)):
                logger.info("override store %s: migrating schema %d -> %d", self._path, step, step + 1)
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- the interface -----------------------------------------------------------------------------------

    def set(self, change: OverrideChange, actor: str, now: datetime) -> tuple[Override, int]:
        change = change.validate(now)
        check_actor(actor)
        with self._transaction(write=True) as conn:
            return write_set(_Writer(conn), change, actor, now)

    def get(self, serial: str) -> Override | None:
        serial = validate_serial(serial)
        with self._connection() as conn:
            return _Writer(conn).get_many([serial]).get(serial)

    def delete(self, serial: str, reason: str, ticket: str, actor: str, now: datetime) -> int:
        serial = validate_serial(serial)
        validate_reason_ticket(reason, ticket)
        check_actor(actor)
        with self._transaction(write=True) as conn:
            return write_delete(_Writer(conn), serial, reason, ticket, actor, now)

    def list(
        self,
        page_size: int,
        page_token: str,
        action: OverrideAction | None,
        include_expired: bool,
        now: datetime,
    ) -> tuple[list[Override], str]:
        size, filters, after = list_request(page_size, page_token, action, include_expired)
        sql = f"SELECT {_COLUMNS} FROM overrides WHERE serial > ?"
        args: list = [after]
        if action is not None:
            sql += " AND action = ?"
            args.append(action.value)
        if not include_expired:
            sql += " AND (expire_us IS NULL OR expire_us > ?)"
            args.append(to_micros(now))
        sql += " ORDER BY serial LIMIT ?"
        args.append(size + 1)
        with self._connection() as conn:
            items = [_override(row) for row in conn.execute(sql, args)]
        return cut_page(items, size, "overrides", filters, lambda o: o.serial)

    def bulk_set(self, changes: Sequence[OverrideChange], actor: str, now: datetime, dry_run: bool) -> BulkResult:
        items = check_bulk(changes, now)
        check_actor(actor)
        with self._transaction(write=not dry_run) as conn:
            return write_bulk(_Writer(conn), items, actor, now, dry_run)

    def list_audit(self, page_size: int, page_token: str, serial: str) -> tuple[list[AuditEvent], str]:
        size, serial, before_id = audit_request(page_size, page_token, serial)
        sql = "SELECT id, revision, time_us, actor, action, serial, before, after, reason, ticket FROM audit"
        conditions, args = [], []
        if before_id is not None:
            conditions.append("id < ?")
            args.append(before_id)
        if serial:
            conditions.append("serial = ?")
            args.append(serial)
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(size + 1)
        with self._connection() as conn:
            events = [_event(row) for row in conn.execute(sql, args)]
        return cut_page(events, size, "audit", {"serial": serial}, lambda e: e.event_id)

    def revision(self) -> int:
        with self._connection() as conn:
            return _Writer(conn).current()

    def load_all(self) -> tuple[dict[str, Override], int]:
        with self._transaction(write=False) as conn:
            rev = _Writer(conn).current()
            rows = conn.execute(f"SELECT {_COLUMNS} FROM overrides").fetchall()
        return {row[0]: _override(row) for row in rows}, rev

    def changes_since(self, revision: int) -> tuple[dict[str, Override | None], int]:
        with self._transaction(write=False) as conn:
            current = _Writer(conn).current()
            if current <= revision:
                return {}, current  # the cheap common case of a poll: nothing new
            rows = conn.execute(
                f"SELECT c.serial, {', '.join('o.' + c for c in _COLUMNS.split(', '))}"
                " FROM (SELECT DISTINCT serial FROM audit WHERE revision > ? AND action != 'set_unchanged') c"
                " LEFT JOIN overrides o ON o.serial = c.serial",
                (revision,),
            ).fetchall()
        return {row[0]: None if row[1] is None else _override(row[1:]) for row in rows}, current

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Writer:
    """The StoreWriter of one SQLite transaction (see store.write_set and friends)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def current(self) -> int:
        return self.conn.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0]

    def next_revision(self) -> int:
        (value,) = self.conn.execute("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value").fetchone()
        return value

    def get_many(self, serials: list[str]) -> dict[str, Override]:
        found: dict[str, Override] = {}
        for start in range(0, len(serials), _IN_CHUNK):
            chunk = serials[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(f"SELECT {_COLUMNS} FROM overrides WHERE serial IN ({marks})", chunk):
                found[row[0]] = _override(row)
        return found

    def put(self, overrides: list[Override]) -> None:
        self.conn.executemany(_UPSERT, map(_params, overrides))

    def remove(self, serial: str) -> None:
        self.conn.execute("DELETE FROM overrides WHERE serial = ?", (serial,))

    def append(self, events: list[AuditEvent]) -> None:
        self.conn.executemany(_AUDIT, map(_audit_params, events))


def _event(row: Sequence) -> AuditEvent:
    event_id, rev, time_us, actor, action, serial, before, after, reason, ticket = row
    return AuditEvent(
        revision=rev,
        time=from_micros(time_us),
        actor=actor,
        action=action,
        serial=serial,
        before=None if before is None else Override.from_dict(json.loads(before)),
        after=None if after is None else Override.from_dict(json.loads(after)),
        reason=reason,
        ticket=ticket,
        event_id=event_id,
    )
