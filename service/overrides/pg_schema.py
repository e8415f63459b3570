"""The PostgreSQL store's URL, connection settings and versioned schema (see postgres.py for the store).

URL: any libpq URI (postgresql://user:password@host:port/dbname?sslmode=...) plus these parameters of
our own, removed before libpq sees the rest:

- `schema=NAME`: keep the tables in schema NAME (created if missing) instead of the first schema of the
  search_path; several deployments (or tests) can share one database this way.
- `pool_size=N` (default 4): the most pooled connections per process (plus one for LISTEN).
- `pool_timeout=S` (default 3): how long a call waits for a connection before it fails with UNAVAILABLE.
- `start_timeout=S` (default 30): how long opening the store keeps retrying an unreachable server.

- `call_timeout=S` (default 12): the most one store call may wait on its connection (postgres.py's
  deadline: past it the socket is shut down and the call fails with UNAVAILABLE).

Unless the URL says otherwise, connections get these, chosen so that a network partition costs seconds,
not minutes (see "Deployment" in the README):

- `lock_timeout=5s`: a write waiting for the revision row lock gives up after 5 s (UNAVAILABLE) rather
  than queueing behind a replica that may be gone.
- `idle_in_transaction_session_timeout=3s`: the server ends a session that sits in a transaction without
  sending anything for 3 s, releasing its locks: a replica cut off mid-transaction holds the revision lock
  for at most 3 s, and the healthy replicas' writes (waiting up to lock_timeout) then go through. Our
  transactions send their statements back to back, so a live one is never idle that long.
- `statement_timeout=10s`: no statement runs longer on the server.
- TCP keepalives (idle 5 s, interval 2 s, 3 probes) on both ends (libpq's and, via `options`, the
  server's tcp_keepalives_*), and `tcp_user_timeout=10000`: a silently dropped connection is noticed in
  about 11 s by the kernel, even with no call running; the call_timeout deadline covers a call in flight.
- `connect_timeout=3`, `application_name=regionlock`, `TimeZone=UTC`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from regionlock.service.errors import FailedPrecondition, InvalidArgument

logger = logging.getLogger(__name__)

CHANNEL = "regionlock_overrides"
# pg_advisory_xact_lock(class, key): the class is ours ("RGLK"), the key a hash of the schema name
_LOCK_CLASS = 0x52474C4B
_OUR_PARAMETERS = ("schema", "pool_size", "pool_timeout", "start_timeout", "call_timeout")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
_LIBPQ_DEFAULTS = {
    "connect_timeout": "3",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "application_name": "regionlock",
}
_SERVER_OPTIONS = (
    "-c lock_timeout=5000 -c idle_in_transaction_session_timeout=3000 -c statement_timeout=10000"
    " -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c TimeZone=UTC"
)

# MIGRATIONS[i] takes the schema from version i to i + 1 (table regionlock_schema); append, never edit.
MIGRATIONS: list[list[str]] = [
    [
        # one row; every change increments it holding its row lock, so revisions commit in order
        "CREATE TABLE revision (id integer PRIMARY KEY CHECK (id = 1), value bigint NOT NULL)",
        "INSERT INTO revision (id, value) VALUES (1, 0)",
        # COLLATE "C": ordered by bytes like SQLite, so page tokens (serial > last) mean the same everywhere
        """CREATE TABLE overrides (
            serial text COLLATE "C" PRIMARY KEY,
            action text NOT NULL CHECK (action IN ('unlock', 'lock')),
            reason text NOT NULL,
            ticket text NOT NULL,
            actor text NOT NULL,
            create_time timestamptz NOT NULL,
            expire_time timestamptz,
            revision bigint NOT NULL
        )""",
        """CREATE TABLE audit (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            revision bigint NOT NULL,
            time timestamptz NOT NULL,
            actor text NOT NULL,
            action text NOT NULL CHECK (action IN ('set', 'set_unchanged', 'delete')),
            serial text COLLATE "C" NOT NULL,
            before jsonb,
            after jsonb,
            reason text NOT NULL,
            ticket text NOT NULL
        )""",
        "CREATE INDEX audit_by_serial ON audit (serial, id)",
        "CREATE INDEX audit_by_revision ON audit (revision)",
        # the trail is append-only even for someone with psql (short of dropping the trigger)
        """CREATE FUNCTION regionlock_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
        """CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION regionlock_audit_append_only()""",
        """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
            FOR EACH STATEMENT EXECUTE FUNCTION regionlock_audit_append_only()""",
    ],
    [
        # the key that signs page tokens (store.encode_page_token): one per store, made on first open from
        # two gen_random_uuid() (PostgreSQL 13+, from the server's strong random source), never sent out
        "CREATE TABLE page_token_key (id integer PRIMARY KEY CHECK (id = 1), key bytea NOT NULL)",
        "INSERT INTO page_token_key (id, key) VALUES (1, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))",
    ],
    [
        # the trail also records reloads and token changes (model.ADMIN_ACTIONS), with their details
        "ALTER TABLE audit ADD COLUMN details jsonb",
        "ALTER TABLE audit DROP CONSTRAINT audit_action_check",
        """ALTER TABLE audit ADD CONSTRAINT audit_action_check CHECK (action IN
            ('set', 'set_unchanged', 'delete', 'reload', 'token_create', 'token_revoke'))""",
        "CREATE INDEX audit_by_action ON audit (action, id)",
    ],
]


@dataclass(frozen=True)
class PgConfig:
    """What a postgresql:// URL says: the libpq connection string and our own parameters."""

    conninfo: str
    schema: str | None = None
    pool_size: int = 4
    pool_timeout: float = 3.0
    start_timeout: float = 30.0
    call_timeout: float = 12.0


def parse_url(url: str) -> PgConfig:
    """The PgConfig of a postgresql:// or postgres:// URL; InvalidArgument('store') when it is malformed."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OUR_PARAMETERS:
            ours[key] = value
        else:
            rest.append((key, value))
    try:
        params = conninfo_to_dict(urlunsplit(parts._replace(query=urlencode(rest))))
    except psycopg.ProgrammingError as exc:
        raise InvalidArgument("store", f"not a valid PostgreSQL URL: {exc}") from None
    schema = ours.get("schema") or None
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise InvalidArgument("store", f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
    for key, value in _LIBPQ_DEFAULTS.items():
        params.setdefault(key, value)
    options = _SERVER_OPTIONS + (f" -c search_path={schema}" if schema else "")
    params["options"] = f"{options} {params.get('options', '')}".strip()  # the URL's own options win
    try:
        pool_size = int(ours.get("pool_size", 4))
        pool_timeout = float(ours.get("pool_timeout", 3.0))
        start_timeout = float(ours.get("start_timeout", 30.0))
        call_timeout = float(ours.get("call_timeout", 12.0))
    except ValueError as exc:
        raise InvalidArgument("store", f"bad pool_size, pool_timeout, start_timeout or call_timeout: {exc}") from None
    if pool_size < 1 or pool_timeout <= 0 or start_timeout < 0 or not call_timeout > 0:
        raise InvalidArgument(
            "store", "pool_size, pool_timeout and call_timeout must be positive, start_timeout not negative"
        )
    return PgConfig(make_conninfo("", **params), schema, pool_size, pool_timeout, start_timeout, call_timeout)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the store in `schema` (channels are per database, so the schema is in it)."""
    return CHANNEL if schema == "public" else f"{CHANNEL}.{schema}"


def _first(row: tuple[Any, ...] | None) -> Any:
    """The first column of the row of a query that always returns one."""
    assert row is not None
    return row[0]


def migrate(conn: psycopg.Connection, schema: str | None) -> tuple[str, bytes]:
    """Create or upgrade the schema, one process at a time; returns the schema name the tables are in.

    Everything happens in one transaction holding an advisory lock keyed by the schema: replicas starting
    together queue on it, the first one migrates, the others find the work done. Safe to run again.
    Also returns the store's page token key (table page_token_key).
    """
    with conn.transaction():
        name = schema or _first(conn.execute("SELECT current_schema()").fetchone())
        if name is None:
            raise FailedPrecondition("override store (PostgreSQL): no schema on the search_path; add ?schema=NAME")
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, name))
        if schema is not None:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS regionlock_schema (id integer PRIMARY KEY CHECK (id = 1), version integer)"
        )
        conn.execute("INSERT INTO regionlock_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
        version = _first(conn.execute("SELECT version FROM regionlock_schema WHERE id = 1").fetchone())
        if version > len(MIGRATIONS):
            raise FailedPrecondition(
                f"override store (PostgreSQL) schema {name} has version {version}; this build knows up to "
                f"{len(MIGRATIONS)}"
            )
        for step in range(version, len(MIGRATIONS)):
            logger.info("override store (PostgreSQL) schema %s: migrating %d -> %d", name, step, step + 1)
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute("UPDATE regionlock_schema SET version = %s WHERE id = 1", (len(MIGRATIONS),))
        key = bytes(_first(conn.execute("SELECT key FROM page_token_key WHERE id = 1").fetchone()))
    return name, key
