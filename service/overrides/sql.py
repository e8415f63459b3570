"""What the SQLite and PostgreSQL override stores share: rows, queries and the read side, per SQL dialect."""

from __future__ import annotations

import abc
import builtins
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, cast

from regionlock.service.overrides.model import (
    ADMIN_ACTIONS,
    AuditEvent,
    BulkResult,
    Override,
    OverrideAction,
    OverrideChange,
    validate_reason_ticket,
    validate_serial,
)
from regionlock.service.overrides.store import (
    OverrideStore,
    StoreWriter,
    audit_request,
    check_actor,
    check_bulk,
    cut_page,
    list_request,
    write_bulk,
    write_delete,
    write_set,
)

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps(**options) builds one per call


def override_json(o: Override | None) -> str | None:
    """An override as JSON text for the before/after columns of the audit table."""
    return None if o is None else _ENCODER.encode(o.to_dict())


class Dialect:
    """How one database spells the overrides and audit tables: its placeholder, time columns and conversions."""

    def __init__(
        self,
        mark: str,
        create_column: str,
        expire_column: str,
        time_column: str,
        time_to_db: Callable[[datetime], Any],
        time_from_db: Callable[[Any], datetime],
        json_from_db: Callable[[Any], dict[str, Any]],
    ) -> None:
        self.mark = mark
        self.expire_column = expire_column
        self.time_to_db = time_to_db
        self.time_from_db = time_from_db
        self.json_from_db = json_from_db
        self.columns = f"serial, action, reason, ticket, actor, {create_column}, {expire_column}, revision"
        self.select = f"SELECT {self.columns} FROM overrides"
        self.audit_columns = f"revision, {time_column}, actor, action, serial, before, after, reason, ticket, details"
        self.audit_select = f"SELECT id, {self.audit_columns} FROM audit"
        # the serials a change after a revision touched, each with its override now (NULLs: deleted)
        self.changed_since = (
            f"SELECT c.serial, {', '.join('o.' + c for c in self.columns.split(', '))}"
            f" FROM (SELECT DISTINCT serial FROM audit WHERE revision > {mark} AND action IN ('set', 'delete')) c"
            " LEFT JOIN overrides o ON o.serial = c.serial"
        )

    def override(self, row: Sequence[Any]) -> Override:
        """The Override of a row of `columns`."""
        serial, action, reason, ticket, actor, created, expires, rev = row
        expire = None if expires is None else self.time_from_db(expires)
        return Override(serial, OverrideAction(action), reason, ticket, actor, self.time_from_db(created), expire, rev)

    def override_params(self, o: Override) -> tuple[Any, ...]:
        """The values of `columns` for an override."""
        expire = None if o.expire_time is None else self.time_to_db(o.expire_time)
        created = self.time_to_db(o.create_time)
        return (o.serial, o.action.value, o.reason, o.ticket, o.actor, created, expire, o.revision)

    def event(self, row: Sequence[Any]) -> AuditEvent:
        """The AuditEvent of a row of `audit_select`."""
        event_id, rev, time_, actor, action, serial, before, after, reason, ticket, details = row
        return AuditEvent(
            revision=rev,
            time=self.time_from_db(time_),
            actor=actor,
            action=action,
            serial=serial,
            before=None if before is None else Override.from_dict(self.json_from_db(before)),
            after=None if after is None else Override.from_dict(self.json_from_db(after)),
            reason=reason,
            ticket=ticket,
            event_id=event_id,
            details=None if details is None else self.json_from_db(details),
        )

    def event_params(self, e: AuditEvent) -> tuple[Any, ...]:
        """The values of `audit_columns` for an event."""
        before, after = override_json(e.before), override_json(e.after)
        details = None if e.details is None else _ENCODER.encode(e.details)
        time_ = self.time_to_db(e.time)
        return (e.revision, time_, e.actor, e.action, e.serial, before, after, e.reason, e.ticket, details)

    def list_query(
        self, after: str, action: OverrideAction | None, include_expired: bool, now: datetime, limit: int
    ) -> tuple[str, list[Any]]:
        """The query and arguments of up to `limit` overrides after serial `after`, in serial order."""
        mark = self.mark
        query = f"{self.select} WHERE serial > {mark}"
        args: list[Any] = [after]
        if action is not None:
            query += f" AND action = {mark}"
            args.append(action.value)
        if not include_expired:
            query += f" AND ({self.expire_column} IS NULL OR {self.expire_column} > {mark})"
            args.append(self.time_to_db(now))
        query += f" ORDER BY serial LIMIT {mark}"
        args.append(limit)
        return query, args

    def audit_query(self, before_id: int | None, serial: str, limit: int) -> tuple[str, list[Any]]:
        """The query and arguments of up to `limit` audit events before `before_id` (of `serial`), newest first."""
        query = self.audit_select
        conditions: list[str] = []
        args: list[Any] = []
        if before_id is not None:
            conditions.append(f"id < {self.mark}")
            args.append(before_id)
        if serial:
            conditions.append(f"serial = {self.mark}")
            args.append(serial)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += f" ORDER BY id DESC LIMIT {self.mark}"
        args.append(limit)
        return query, args


class SqlWriter:
    """The StoreWriter statements that read the same in every dialect; a subclass adds get_many, put and append."""

    __slots__ = ("conn",)
    dialect: Dialect

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def current(self) -> int:
        return int(self.conn.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0])

    def next_revision(self) -> int:
        (value,) = self.conn.execute("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value").fetchone()
        return int(value)

    def remove(self, serial: str) -> None:
        self.conn.execute(f"DELETE FROM overrides WHERE serial = {self.dialect.mark}", (serial,))


class SqlOverrideStore(OverrideStore):
    """The OverrideStore calls that are the same SQL in every dialect; a subclass supplies the connections."""

    dialect: Dialect
    # the StoreWriter class of a connection: called for writes in _write, and for its reads anywhere
    _writer: Callable[[Any], StoreWriter]
    # this store's page token key (store.encode_page_token): read from table page_token_key when opened
    _page_key: bytes

    @abc.abstractmethod
    def _connection(self) -> AbstractContextManager[Any]:
        """A pooled connection, each statement in a transaction of its own."""

    @abc.abstractmethod
    def _snapshot(self) -> AbstractContextManager[Any]:
        """A connection in a read-only transaction whose statements all see one snapshot."""

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[StoreWriter]:
        """The writer of a transaction holding the store's write lock (see store.StoreWriter)."""

    def set(self, change: OverrideChange, actor: str, now: datetime) -> tuple[Override, int]:
        change = change.validate(now)
        check_actor(actor)
        with self._write() as writer:
            return write_set(writer, change, actor, now)

    def get(self, serial: str) -> Override | None:
        serial = validate_serial(serial)
        with self._connection() as conn:
            return self._writer(conn).get_many([serial]).get(serial)

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
        size, filters, after = list_request(self._page_key, page_size, page_token, action, include_expired)
        query, args = self.dialect.list_query(after, action, include_expired, now, size + 1)
        with self._connection() as conn:
            items = [self.dialect.override(row) for row in conn.execute(query, args)]
        return cut_page(self._page_key, items, size, "overrides", filters, lambda o: o.serial)

    def bulk_set(self, changes: Sequence[OverrideChange], actor: str, now: datetime, dry_run: bool) -> BulkResult:
        items = check_bulk(changes, now)
        check_actor(actor)
        if dry_run:
            with self._snapshot() as conn:
                return write_bulk(self._writer(conn), items, actor, now, dry_run=True)
        with self._write() as writer:
            return write_bulk(writer, items, actor, now, dry_run=False)

    def list_audit(self, page_size: int, page_token: str, serial: str) -> tuple[builtins.list[AuditEvent], str]:
        size, serial, before_id = audit_request(self._page_key, page_size, page_token, serial)
        query, args = self.dialect.audit_query(before_id, serial, size + 1)
        with self._connection() as conn:
            events = [self.dialect.event(row) for row in conn.execute(query, args)]
        return cut_page(self._page_key, events, size, "audit", {"serial": serial}, lambda e: e.event_id)

    # how the dialect reads the token id out of an event's details (see record_event's `once`)
    _details_token_id: str

    def record_event(self, action: str, actor: str, now: datetime, details: dict[str, str], once: bool = False) -> bool:
        check_actor(actor)
        if action not in ADMIN_ACTIONS:
            raise ValueError(f"not an admin event: {action!r}")
        with self._write() as writer:  # the write lock: replicas noticing one change record it once
            if once:
                query = f"SELECT 1 FROM audit WHERE action = {self.dialect.mark} AND {self._details_token_id} = "
                args = (action, details["token_id"])
                # every writer of an SQL store is an SqlWriter: its connection runs the lookup
                if cast(SqlWriter, writer).conn.execute(query + self.dialect.mark + " LIMIT 1", args).fetchone():
                    return False
            writer.append([AuditEvent(writer.current(), now, actor, action, "", None, None, "", "", 0, details)])
        return True

    def revision(self) -> int:
        with self._connection() as conn:
            return self._writer(conn).current()

    def load_all(self) -> tuple[dict[str, Override], int]:
        with self._snapshot() as conn:
            rev = self._writer(conn).current()
            rows = conn.execute(self.dialect.select).fetchall()
        return {row[0]: self.dialect.override(row) for row in rows}, rev

    @staticmethod
    def _read_page_key(conn: Any) -> bytes:
        """The page token key kept in the store (made by the migration that created its table)."""
        return bytes(conn.execute("SELECT key FROM page_token_key WHERE id = 1").fetchone()[0])

    def _changed_since(self, conn: Any, revision: int) -> dict[str, Override | None]:
        """Inside a snapshot: the current state (None = deleted) of every serial changed after `revision`."""
        rows = conn.execute(self.dialect.changed_since, (revision,)).fetchall()
        return {row[0]: None if row[1] is None else self.dialect.override(row[1:]) for row in rows}
