"""The SQLite override store: stdlib sqlite3, WAL, synchronous=FULL, versioned schema, multi-process safe."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

from regionlock.service.errors import FailedPrecondition, InvalidArgument, Unavailable
from regionlock.service.overrides.model import AuditEvent, Override, from_micros, to_micros
from regionlock.service.overrides.sql import Dialect, SqlOverrideStore, SqlWriter

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
    [
        # the key that signs page tokens (store.encode_page_token): one per store, made on first open
        # (randomblob is SQLite's CSPRNG, seeded from the OS), never sent to a client
        "CREATE TABLE page_token_key (id INTEGER PRIMARY KEY CHECK (id = 1), key BLOB NOT NULL)",
        "INSERT INTO page_token_key (id, key) VALUES (1, randomblob(32))",
    ],
    [
        # the trail also records reloads and token changes (model.ADMIN_ACTIONS), with their details as
        # JSON: SQLite can't change a CHECK constraint, so the table is rebuilt (ids kept, and with them
        # the AUTOINCREMENT sequence; DROP TABLE fires no trigger)
        """CREATE TABLE audit_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            revision INTEGER NOT NULL,
            time_us INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN
                ('set', 'set_unchanged', 'delete', 'reload', 'token_create', 'token_revoke')),
            serial TEXT NOT NULL,
            before TEXT,
            after TEXT,
            reason TEXT NOT NULL,
            ticket TEXT NOT NULL,
            details TEXT
        )""",
        """INSERT INTO audit_new (id, revision, time_us, actor, action, serial, before, after, reason, ticket)
            SELECT id, revision, time_us, actor, action, serial, before, after, reason, ticket FROM audit""",
        "DROP TABLE audit",
        "ALTER TABLE audit_new RENAME TO audit",
        "CREATE INDEX audit_by_serial ON audit (serial, id)",
        "CREATE INDEX audit_by_revision ON audit (revision)",
        "CREATE INDEX audit_by_action ON audit (action, id)",
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'append-only'); END",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'append-only'); END",
    ],
]

SQLITE = Dialect("?", "create_us", "expire_us", "time_us", to_micros, from_micros, json.loads)
_UPSERT = f"INSERT OR REPLACE INTO overrides ({SQLITE.columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_AUDIT = f"INSERT INTO audit ({SQLITE.audit_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_MAX_IDLE = 8
_IN_CHUNK = 500  # serials per IN (...) query; well under SQLite's variable limit


class _Writer(SqlWriter):
    """The StoreWriter of one SQLite transaction (see store.write_set and friends)."""

    __slots__ = ()
    dialect = SQLITE

    def get_many(self, serials: list[str]) -> dict[str, Override]:
        found: dict[str, Override] = {}
        for start in range(0, len(serials), _IN_CHUNK):
            chunk = serials[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(f"{SQLITE.select} WHERE serial IN ({marks})", chunk):
                found[row[0]] = SQLITE.override(row)
        return found

    def put(self, overrides: list[Override]) -> None:
        self.conn.executemany(_UPSERT, map(SQLITE.override_params, overrides))

    def append(self, events: list[AuditEvent]) -> None:
        self.conn.executemany(_AUDIT, map(SQLITE.event_params, events))


class SqliteOverrideStore(SqlOverrideStore):
    """Overrides in one SQLite file. Thread-safe through a small pool: each call borrows one connection."""

    dialect = SQLITE
    _writer = _Writer
    _details_token_id = "json_extract(details, '$.token_id')"

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
            self._page_key = self._read_page_key(conn)

    # -- connections and transactions --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each transaction is exactly what we say
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        mode = self._enable_wal(conn)
        if mode != "wal":
            logger.warning("override store %s: journal mode is %s, not wal", self._path, mode)
        # FULL: an acknowledged change survives power loss, not just a process crash
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL, retrying within the busy timeout: SQLite answers "database is locked" at once, without
        waiting, when several processes open a new file together (workers starting on a fresh data dir)."""
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

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

    def _snapshot(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._transaction(write=False)

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Writer]:
        with self._transaction(write=True) as conn:
            yield _Writer(conn)

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

    # -- the interface (the rest is SqlOverrideStore's) --------------------------------------------------

    def changes_since(self, revision: int) -> tuple[dict[str, Override | None], int]:
        with self._snapshot() as conn:
            current = _Writer(conn).current()
            if current <= revision:
                return {}, current  # the cheap common case of a poll: nothing new
            return self._changed_since(conn, revision), current

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
