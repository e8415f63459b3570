"""The override store interface every backend implements, and page tokens (open one: overrides.factory).

Semantics every implementation keeps (the shared test suite in tests/overrides checks them):

- Revisions: one store-wide counter, incremented in the same transaction as the change it numbers. A
  single-item set or delete takes one revision; a bulk set takes ONE revision for the whole call (it is one
  atomic change, and the index catches up in one step). Writers serialize on the counter (SQLite's write
  lock, a row lock in PostgreSQL), so revisions commit in order and catch-up by revision never skips one.
- Idempotency: setting an override identical to the stored one (same action, reason, ticket and expiry;
  actor and time don't count) changes nothing and takes no revision; it still writes a "set_unchanged"
  audit event, carrying and returning the revision of the override that stays in force.
- Audit: every set, set_unchanged and delete writes exactly one event, in the change's transaction.
- Expired overrides stay stored (and visible to get/load_all) until replaced or deleted; deciding whether
  one applies is `Override.is_live(now)`'s job. `list` hides them unless asked.
"""

from __future__ import annotations

import abc
import base64
import builtins
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from regionlock.service.errors import InvalidArgument, NotFound
from regionlock.service.overrides.model import (
    AuditEvent,
    BulkResult,
    Override,
    OverrideAction,
    OverrideChange,
    validate_serial,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_BULK_ITEMS = 100_000


class OverrideStore(abc.ABC):
    """Durable overrides with their audit trail; thread-safe; all times are UTC-aware datetimes."""

    @abc.abstractmethod
    def set(self, change: OverrideChange, actor: str, now: datetime) -> tuple[Override, int]:
        """Upsert one override; returns it as stored and the revision of the change (see module doc)."""

    @abc.abstractmethod
    def get(self, serial: str) -> Override | None:
        """The stored override of `serial` (normalized here), expired or not; None when there is none."""

    @abc.abstractmethod
    def delete(self, serial: str, reason: str, ticket: str, actor: str, now: datetime) -> int:
        """Remove the override of `serial`; returns the new revision; NotFound when there is none."""

    @abc.abstractmethod
    def list(
        self,
        page_size: int,
        page_token: str,
        action: OverrideAction | None,
        include_expired: bool,
        now: datetime,
    ) -> tuple[list[Override], str]:
        """One page ordered by serial, and the next page token ("" on the last page)."""

    @abc.abstractmethod
    def bulk_set(self, changes: Sequence[OverrideChange], actor: str, now: datetime, dry_run: bool) -> BulkResult:
        """Set all changes in one transaction, or none; dry_run counts and writes nothing."""

    @abc.abstractmethod
    def list_audit(self, page_size: int, page_token: str, serial: str) -> tuple[builtins.list[AuditEvent], str]:
        """One page of audit events, newest first, optionally only those of `serial` ("" for all)."""

    @abc.abstractmethod
    def record_event(self, action: str, actor: str, now: datetime, details: dict[str, str], once: bool = False) -> bool:
        """Append an audit event that is not a change of overrides (model.ADMIN_ACTIONS: serial "", no
        before/after, no new revision) with its `details`. With `once`, nothing is written if an event of
        this action with the same details["token_id"] is already in the trail (every replica noticing one
        change to a shared token file records it once). True when written."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The latest committed revision (0 for an empty store)."""

    @abc.abstractmethod
    def load_all(self) -> tuple[dict[str, Override], int]:
        """Every stored override and the revision they are consistent with, read in one snapshot."""

    @abc.abstractmethod
    def changes_since(self, revision: int) -> tuple[dict[str, Override | None], int]:
        """The current state (None = deleted) of every serial changed after `revision`, and the revision
        that state is consistent with. A returned revision below `revision` means the store went back
        (e.g. restored from a backup): the caller should load_all."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; further calls fail."""

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from a background thread, cheaply) whenever the store learns that another
        process or replica may have committed a change, and after reconnecting. A hint to catch up with
        changes_since sooner, not a substitute for polling: stores without notifications do nothing."""
        return None


class StoreWriter(Protocol):
    """What the shared write logic below needs from an open transaction of a store.

    For writes (not dry runs) the transaction holds the store's write lock from its start (SQLite's
    BEGIN IMMEDIATE, PostgreSQL's row lock on the revision counter), so what it reads stays true until it
    commits and audit events are appended in commit order.
    """

    def current(self) -> int:
        """The latest committed revision."""
        ...

    def next_revision(self) -> int:
        """Increment the revision counter; the new value."""
        ...

    def get_many(self, serials: list[str]) -> dict[str, Override]:
        """The stored overrides of those (normalized) serials that have one."""
        ...

    def put(self, overrides: list[Override]) -> None:
        """Insert or replace these overrides."""
        ...

    def remove(self, serial: str) -> None:
        """Delete the override of `serial`."""
        ...

    def append(self, events: list[AuditEvent]) -> None:
        """Append these events to the audit trail, in order."""
        ...


def check_bulk(changes: Sequence[OverrideChange], now: datetime) -> list[OverrideChange]:
    """Validate a bulk request before any I/O: size, each item (errors name items[i].field), duplicates."""
    if len(changes) > MAX_BULK_ITEMS:
        raise InvalidArgument("items", f"at most {MAX_BULK_ITEMS} items per call, got {len(changes)}")
    valid: list[OverrideChange] = []
    first_index: dict[str, int] = {}
    for i, change in enumerate(changes):
        item = change.validate(now, prefix=f"items[{i}].")
        # two items for one serial would make the outcome depend on their order: refuse, don't guess
        if item.serial in first_index:
            raise InvalidArgument(f"items[{i}].serial", f"duplicate of items[{first_index[item.serial]}]")
        first_index[item.serial] = i
        valid.append(item)
    return valid


def check_actor(actor: str) -> None:
    """The actor is the token name the interceptor found; a store never writes an anonymous change."""
    if not isinstance(actor, str) or not actor:
        raise InvalidArgument("actor", "required")


def count_bulk(items: Sequence[OverrideChange], existing: dict[str, Override], revision: int) -> BulkResult:
    """What a bulk set of validated `items` does to the `existing` overrides of their serials."""
    created = sum(1 for item in items if item.serial not in existing)
    unchanged = sum(1 for item in items if (o := existing.get(item.serial)) and o.same_request(item))
    return BulkResult(created, len(items) - created - unchanged, unchanged, revision)


def plan_sets(
    items: Sequence[OverrideChange], existing: dict[str, Override], actor: str, now: datetime, revision: int
) -> tuple[list[Override], list[AuditEvent]]:
    """The overrides to write and the audit events to append for setting `items` at `revision`."""
    writes: list[Override] = []
    events: list[AuditEvent] = []
    for item in items:
        before = existing.get(item.serial)
        if before is not None and before.same_request(item):
            events.append(_event(before.revision, now, actor, "set_unchanged", before, before, item))
            continue
        after = item.to_override(actor, now, revision)
        writes.append(after)
        events.append(_event(revision, now, actor, "set", before, after, item))
    return writes, events


def write_set(tx: StoreWriter, change: OverrideChange, actor: str, now: datetime) -> tuple[Override, int]:
    """OverrideStore.set of a validated change inside a write transaction."""
    existing = tx.get_many([change.serial])
    before = existing.get(change.serial)
    changed = before is None or not before.same_request(change)
    rev = tx.next_revision() if changed or before is None else before.revision
    writes, events = plan_sets([change], existing, actor, now, rev)
    tx.put(writes)
    tx.append(events)
    if writes:
        return writes[0], rev
    assert before is not None  # nothing written: the change is the override already stored
    return before, rev


def write_delete(tx: StoreWriter, serial: str, reason: str, ticket: str, actor: str, now: datetime) -> int:
    """OverrideStore.delete of a validated serial inside a write transaction."""
    before = tx.get_many([serial]).get(serial)
    if before is None:
        raise NotFound(f"no override for serial {serial}")
    rev = tx.next_revision()
    tx.remove(serial)
    tx.append([AuditEvent(rev, now, actor, "delete", serial, before, None, reason, ticket)])
    return rev


def write_bulk(
    tx: StoreWriter, items: Sequence[OverrideChange], actor: str, now: datetime, dry_run: bool
) -> BulkResult:
    """OverrideStore.bulk_set of checked items inside a transaction (a read-only one will do for dry_run)."""
    existing = tx.get_many([item.serial for item in items])
    result = count_bulk(items, existing, tx.current())
    if dry_run:
        return result
    if not (result.created or result.changed):  # no new revision, but the trail still says what was asked
        tx.append(plan_sets(items, existing, actor, now, 0)[1])
        return result
    rev = tx.next_revision()  # one revision for the whole call
    writes, events = plan_sets(items, existing, actor, now, rev)
    tx.put(writes)
    tx.append(events)
    return BulkResult(result.created, result.changed, result.unchanged, rev)


def list_request(
    key: bytes, page_size: int, page_token: str, action: OverrideAction | None, include_expired: bool
) -> tuple[int, dict[str, Any], str]:
    """The page size, the token filters and the serial to list after ("" from the start) of a list call."""
    size = page_size_or_default(page_size)
    filters = {"action": None if action is None else action.value, "include_expired": include_expired}
    return size, filters, decode_page_token(key, page_token, "overrides", filters) or ""


def audit_request(key: bytes, page_size: int, page_token: str, serial: str) -> tuple[int, str, int | None]:
    """The page size, the normalized serial filter ("" for all) and the event id to list before."""
    size = page_size_or_default(page_size)
    serial = validate_serial(serial) if serial else ""
    return size, serial, decode_page_token(key, page_token, "audit", {"serial": serial})


def _event(
    revision: int,
    now: datetime,
    actor: str,
    action: str,
    before: Override | None,
    after: Override | None,
    item: OverrideChange,
) -> AuditEvent:
    return AuditEvent(revision, now, actor, action, item.serial, before, after, item.reason, item.ticket)


_Row = TypeVar("_Row")


def cut_page(
    key: bytes, rows: list[_Row], size: int, kind: str, filters: dict[str, Any], position: Callable[[_Row], Any]
) -> tuple[list[_Row], str]:
    """Given up to size + 1 rows, the page and the token of the next one ("" when this is the last)."""
    if len(rows) <= size:
        return rows, ""
    return rows[:size], encode_page_token(key, kind, filters, position(rows[size - 1]))


def page_size_or_default(page_size: int) -> int:
    """0 means the default; above the maximum is coerced to it (as AIP-158 suggests); negative is an error."""
    if page_size < 0:
        raise InvalidArgument("page_size", f"must not be negative, got {page_size}")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


# Page tokens hold only a keyset position and the filters they were made for. The keyed digest rejects
# damaged, hand-edited or forged tokens (and those of another deployment, or of a store re-created since)
# with INVALID_ARGUMENT instead of serving a surprising page or failing in SQL. The key is generated per
# deployment when the store is first opened and kept in the store itself (table page_token_key of both
# backends), so every replica of one store shares it without configuration; see page_token_key below.
_TOKEN_VERSION = 1
_DIGEST_SIZE = 12
PAGE_TOKEN_KEY_BYTES = 32
_MAX_AUDIT_ID = (1 << 63) - 1


def _token_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("page token key must be at least 16 bytes")  # a bug of ours, never a client's
    return key


def encode_page_token(key: bytes, kind: str, filters: dict[str, Any], position: Any) -> str:
    """An opaque token for the page after `position` of a `kind` listing made with `filters`."""
    payload = json.dumps(
        {"v": _TOKEN_VERSION, "k": kind, "f": filters, "p": position}, separators=(",", ":"), sort_keys=True
    ).encode()
    digest = hmac.new(_token_key(key), payload, hashlib.sha256).digest()[:_DIGEST_SIZE]
    return base64.urlsafe_b64encode(digest + payload).rstrip(b"=").decode("ascii")


def decode_page_token(key: bytes, token: str, kind: str, filters: dict[str, Any]) -> Any:
    """The position a token carries; None for ""; InvalidArgument('page_token') when it is not ours, was
    made for other filters, or carries a position that isn't one of a `kind` listing."""
    if not token:
        return None
    malformed = InvalidArgument("page_token", "malformed or expired; pass next_page_token unchanged")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        raise malformed from None
    digest, payload = raw[:_DIGEST_SIZE], raw[_DIGEST_SIZE:]
    expected = hmac.new(_token_key(key), payload, hashlib.sha256).digest()[:_DIGEST_SIZE]
    if len(digest) != _DIGEST_SIZE or not hmac.compare_digest(digest, expected):
        raise malformed
    try:  # signed by us, so well-formed; checked anyway, as a key that leaked must not reach the SQL
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise malformed from None
    if not isinstance(data, dict) or data.get("v") != _TOKEN_VERSION or data.get("k") != kind:
        raise InvalidArgument("page_token", "was not made by this listing")
    if data.get("f") != filters:
        raise InvalidArgument("page_token", "was made for other filters; start again without a token")
    position = data.get("p")
    if kind == "overrides":
        valid = isinstance(position, str) and "\x00" not in position and len(position) <= 64
    else:
        valid = type(position) is int and 0 < position <= _MAX_AUDIT_ID
    if not valid:
        raise malformed
    return position
